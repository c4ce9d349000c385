//! The pieces of `takhin utxo bench-query` on a small store: the fan-out loader builds the
//! UTXOs it says over the owners, and the load generator's answers agree with the store.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wes_server::bench::{self, QueryKind, QueryReport};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::model::Address;

/// Runs 300 ms query loads until one answered a query: on a stalled machine a run can end
/// before its clients got to send anything.
async fn query_load_answered(
    addr: SocketAddr,
    kind: QueryKind,
    owners: &[Address],
    n_clients: usize,
    n_connections: usize,
) -> QueryReport {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let report = bench::query_load(
            addr,
            kind,
            owners,
            n_clients,
            n_connections,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert_eq!(report.n_errors, 0, "{report:?}");
        if report.n_ok > 0 {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a {kind:?} query load to answer a query"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_and_query_load_agree_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = ChainGenerator::new(3, 300);
    let owners: Vec<Address> = generator.owners().iter().map(|o| o.address).collect();
    let path = dir.path().to_path_buf();
    let (report, generator) = tokio::task::spawn_blocking(move || {
        let report = bench::load_fan_out(&path, &mut generator, 2_000, |_| {}).unwrap();
        (report, generator)
    })
    .await
    .unwrap();
    assert!(report.n_utxos >= 2_000, "{report:?}");
    assert!(
        bench::load_fan_out(dir.path(), &mut ChainGenerator::new(3, 300), 10, |_| {}).is_err(),
        "a loaded store is not loaded again"
    );
    drop(generator);

    let (running, _client) = common::start(dir.path(), false).await;
    assert_eq!(
        running.n_adopted,
        report.height + 1,
        "imported blocks copied to the repository"
    );
    let utxos =
        query_load_answered(running.grpc_addr, QueryKind::UtxosByAddress, &owners, 2, 1).await;
    assert_eq!((utxos.n_clients, utxos.n_connections), (2, 1));
    assert!(utxos.n_ok > 0 && utxos.p50 <= utxos.p99 && utxos.p99 <= utxos.max);
    // Each owner holds report.n_utxos / 300 on average; round robin visits them evenly.
    let mean = report.n_utxos as f64 / owners.len() as f64;
    assert!(
        (utxos.mean_results - mean).abs() < mean * 0.5,
        "{} vs {mean}",
        utxos.mean_results
    );
    let balances = query_load_answered(running.grpc_addr, QueryKind::Balance, &owners, 2, 2).await;
    assert!(balances.n_ok > 0);
    running.shutdown().await.unwrap();
}
