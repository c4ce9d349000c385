//! The nonce manager's multi-node acceptance test: three `takhin nonce serve` processes
//! share one signer and one store (SQLite file, then PostgreSQL) against a real anvil
//! (1 s blocks, 300M gas limit). SubmitTransaction requests are spread over the nodes,
//! every tenth request id is sent twice at once to two different nodes, and the lease
//! holder is killed with SIGKILL part-way. Checked: another node takes the signer within
//! the lease TTL plus one tick; a write with the dead holder's fencing token is refused
//! and leaves nothing behind; retried ids got the same nonce and hash; the nonces are
//! exactly 0..N; the chain's nonce for the signer reaches N with every hash mined; every
//! record ends Confirmed; /metrics serves the nonce_manager_* and nonce_server_* series.
//!
//! Needs anvil (`npm install --prefix tests/evm --ignore-scripts`) and, for the PostgreSQL
//! run, PostgreSQL 14+; skipped when missing unless TAKHIN_REQUIRE_ALL_CLIENTS=1.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256};
use ledger_lease::{FencingToken, SystemClock};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::chain::ChainClient;
use nonce_manager::store::postgres::PostgresNonceStore;
use nonce_manager::store::sqlite::SqliteNonceStore;
use nonce_manager::store::{NewAllocation, NonceStore};
use nonce_manager::{RequestId, TxPayload};
use nonce_server::proto::nonce_manager_client::NonceManagerClient;
use nonce_server::proto::{GetSignerViewRequest, GetSignerViewResponse, SubmitTransactionRequest};
use test_support::anvil::{Anvil, DEV_KEY_0};
use test_support::postgres::PostgresServer;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const NODES: usize = 3;
const LEASE_TTL: Duration = Duration::from_secs(3);
/// The node's ownership tick (a quarter of the TTL).
const TICK: Duration = Duration::from_millis(750);
const CONCURRENCY: usize = 64;
/// Fraction of responses after which the holder is killed.
const KILL_AT_PERCENT: u64 = 40;
const SIGNER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
/// How long a test waits for a node or the chain before it gives up (the load phases have
/// their own, longer deadlines).
const WAIT: Duration = Duration::from_secs(30);

struct NodeProcess {
    node_id: String,
    child: Child,
    grpc: String,
    metrics: String,
    log: PathBuf,
    _stdin: Option<std::process::ChildStdin>,
}

impl NodeProcess {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(index: usize, store: &str, rpc_url: &str, dir: &Path) -> NodeProcess {
    spawn_node_with(index, store, rpc_url, dir, &[])
}

fn spawn_node_with(
    index: usize,
    store: &str,
    rpc_url: &str,
    dir: &Path,
    extra: &[&str],
) -> NodeProcess {
    let node_id = format!("node-{index}");
    let log = dir.join(format!("{node_id}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_takhin"))
        .args(["nonce", "serve", "--node-id", &node_id])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--store", store, "--rpc-url", rpc_url])
        .args(["--confirmations", "1", "--finality-poll-ms", "250"])
        .args(["--lease-ttl-ms", &LEASE_TTL.as_millis().to_string()])
        .arg("--exit-on-stdin-eof")
        .args(extra)
        .env("TAKHIN_NONCE_KEYS", DEV_KEY_0)
        .env("TAKHIN_LOG", "warn,nonce_server=info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(name))
            .map(str::to_owned)
    };
    let (Some(grpc), Some(metrics)) = (field("grpc="), field("metrics=")) else {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("{node_id} did not start: {line:?}\n{log_text}");
    };
    NodeProcess {
        node_id,
        _stdin: child.stdin.take(),
        child,
        grpc,
        metrics,
        log,
    }
}

fn client(address: &str) -> NonceManagerClient<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30));
    NonceManagerClient::new(endpoint.connect_lazy())
}

async fn view(client: &NonceManagerClient<Channel>) -> Option<GetSignerViewResponse> {
    let mut client = client.clone();
    client
        .get_signer_view(GetSignerViewRequest {
            signer: SIGNER.to_owned(),
        })
        .await
        .ok()
        .map(|response| response.into_inner())
}

fn scrape(url: &str) -> String {
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// Polls until the node returns a successful receipt for `hash`: the chain's nonce count
/// and its receipts are not promised to become readable together.
async fn mined_eventually(chain: &AlloyChainClient, hash: B256) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(receipt) = chain.receipt(hash).await.unwrap() {
            assert!(receipt.success, "{hash} reverted");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the receipt of {hash}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the chain's (latest) nonce of the signer is `n`.
async fn latest_nonce_eventually(chain: &AlloyChainClient, n: u64, within: Duration) {
    let signer = Address::from_str(SIGNER).unwrap();
    let deadline = Instant::now() + within;
    loop {
        let latest = chain.latest_nonce(signer).await.unwrap();
        if latest >= n {
            assert_eq!(latest, n, "the signer's nonce went past {n}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the signer's latest nonce to reach {n}: at {latest}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until a node reports a lease holder for the signer.
async fn wait_for_holder(client: &NonceManagerClient<Channel>) -> GetSignerViewResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(view) = view(client).await.filter(|v| !v.lease_holder.is_empty()) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a node to take the signer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a request id got.
type Outcome = (u64, String);

async fn submit_until_done(
    clients: Arc<Vec<NonceManagerClient<Channel>>>,
    n: u64,
    first_node: usize,
    max_fee: u64,
) -> Outcome {
    let request = SubmitTransactionRequest {
        request_id: format!("tx-{n}"),
        signer: SIGNER.to_owned(),
        to: "0x7070707070707070707070707070707070707070".to_owned(),
        value: (n + 1).to_string(),
        data: String::new(),
        gas_limit: 21_000,
        max_fee_per_gas: max_fee,
        max_priority_fee_per_gas: 1_000_000_000,
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    for attempt in 0..2000usize {
        let mut client = clients[(first_node + attempt) % clients.len()].clone();
        match client.submit_transaction(request.clone()).await {
            Ok(response) => {
                let record = response.into_inner().transaction.unwrap();
                assert_eq!(record.request_id, request.request_id);
                return (record.nonce, record.tx_hash);
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Aborted
                        | Code::Cancelled
                        | Code::Unknown
                ) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "tx-{n}: still failing after {attempt} attempts: {status}"
                );
                let backoff = 20 * (attempt as u64 + 1).min(10);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            Err(status) => panic!("tx-{n}: {status}"),
        }
    }
    panic!("tx-{n}: too many attempts");
}

enum Backend {
    Sqlite(PathBuf),
    Postgres(PostgresServer),
}

impl Backend {
    fn location(&self) -> String {
        match self {
            Backend::Sqlite(path) => path.display().to_string(),
            Backend::Postgres(server) => server.url().to_owned(),
        }
    }

    async fn store(&self) -> Arc<dyn NonceStore> {
        match self {
            Backend::Sqlite(path) => Arc::new(
                SqliteNonceStore::connect(path, Arc::new(SystemClock))
                    .await
                    .unwrap()
                    .0,
            ),
            Backend::Postgres(server) => Arc::new(
                PostgresNonceStore::connect(server.url(), Arc::new(SystemClock))
                    .await
                    .unwrap()
                    .0,
            ),
        }
    }
}

/// How the lease holder is taken out part-way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: the process is gone.
    Kill,
    /// SIGSTOP until another node holds the signer, then SIGCONT: the old holder comes back
    /// believing it still holds the signer, with requests queued to it, and must be refused.
    Pause,
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} failed");
}

async fn run_cluster(backend: Backend, transactions: u64, fault: Fault) {
    let Some(anvil) = test_support::skip_unless_required(
        "nonce_cluster",
        Anvil::start(&["--block-time", "1", "--gas-limit", "300000000"]),
    ) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let chain = AlloyChainClient::new(anvil.url()).unwrap();
    let signer = Address::from_str(SIGNER).unwrap();
    let base_fee = chain.base_fee().await.unwrap().unwrap_or(1_000_000_000);
    let max_fee = u64::try_from(base_fee * 4 + 2_000_000_000).unwrap();

    let mut nodes: Vec<Option<NodeProcess>> = (0..NODES)
        .map(|index| {
            Some(spawn_node(
                index,
                &backend.location(),
                anvil.url(),
                dir.path(),
            ))
        })
        .collect();
    let clients: Arc<Vec<_>> = Arc::new(
        nodes
            .iter()
            .map(|node| client(&node.as_ref().unwrap().grpc))
            .collect(),
    );
    // Wait until one node holds the signer.
    let first_view = wait_for_holder(&clients[0]).await;
    eprintln!(
        "holder {} (token {:?}) after {:?}",
        first_view.lease_holder,
        first_view.fencing_token,
        started.elapsed()
    );

    // Every id once; every tenth id a second time at once, through another node.
    let mut calls: Vec<(u64, usize)> = Vec::new();
    for n in 0..transactions {
        calls.push((n, n as usize % NODES));
        if n % 10 == 0 {
            calls.push((n, (n as usize + 1) % NODES));
        }
    }
    let total_calls = calls.len() as u64;
    let done = Arc::new(AtomicU64::new(0));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let load_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, first_node) in calls {
        let (clients, done, semaphore) = (clients.clone(), done.clone(), semaphore.clone());
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await.unwrap();
            let outcome = submit_until_done(clients, n, first_node, max_fee).await;
            done.fetch_add(1, Ordering::SeqCst);
            (n, outcome)
        });
    }

    // Kill the holder part-way.
    let kill_deadline = Instant::now() + Duration::from_secs(240);
    while done.load(Ordering::SeqCst) < total_calls * KILL_AT_PERCENT / 100 {
        assert!(
            Instant::now() < kill_deadline,
            "load stalled before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = view(&clients[0]).await.unwrap();
    let victim = nodes
        .iter()
        .position(|node| node.as_ref().unwrap().node_id == before.lease_holder)
        .unwrap_or_else(|| panic!("holder {:?} is not one of ours", before.lease_holder));
    let old_token = FencingToken::new(before.fencing_token.unwrap());
    let mut killed = nodes[victim].take().unwrap();
    match fault {
        Fault::Kill => {
            killed.child.kill().unwrap(); // SIGKILL
            killed.child.wait().unwrap();
        }
        Fault::Pause => signal(&killed.child, "-STOP"),
    }
    let killed_at = Instant::now();
    eprintln!(
        "{fault:?} {} (token {old_token}) after {} of {total_calls} calls",
        killed.node_id,
        done.load(Ordering::SeqCst)
    );
    let survivor = &clients[(victim + 1) % NODES];
    let takeover = loop {
        if let Some(view) = view(survivor).await {
            let newer = view
                .fencing_token
                .is_some_and(|token| token > old_token.get());
            if !view.lease_holder.is_empty() && view.lease_holder != killed.node_id && newer {
                break (view, killed_at.elapsed());
            }
        }
        assert!(
            killed_at.elapsed() < LEASE_TTL * 3,
            "no takeover within {:?}",
            LEASE_TTL * 3
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{} took over after {:?} (token {:?})",
        takeover.0.lease_holder, takeover.1, takeover.0.fencing_token
    );
    // Lease expiry (TTL after the last renewal) plus one membership tick, plus scheduling.
    assert!(
        takeover.1 <= LEASE_TTL + TICK * 2,
        "takeover took {:?}",
        takeover.1
    );
    assert!(takeover.0.fencing_token.unwrap() > old_token.get());
    if fault == Fault::Pause {
        // The old holder wakes up with requests queued to it and its lease taken.
        signal(&killed.child, "-CONT");
    }

    // The dead holder's late write: a fenced allocation with its token is refused whole.
    let store = backend.store().await;
    let late = RequestId::new("late-write-of-the-old-holder").unwrap();
    let refused = store
        .commit_allocations(
            signer,
            old_token,
            0,
            &[NewAllocation {
                request_id: late.clone(),
                payload: TxPayload {
                    to: signer,
                    value: Default::default(),
                    data: Default::default(),
                    gas_limit: 21_000,
                    max_fee_per_gas: 1,
                    max_priority_fee_per_gas: 1,
                },
            }],
        )
        .await
        .expect_err("a stale token must be refused");
    assert!(refused.is_fenced(), "{refused}");
    assert!(store.transaction(&late).await.unwrap().is_none());

    let mut outcomes: BTreeMap<u64, Outcome> = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        let (n, outcome) = result.unwrap();
        if let Some(first) = outcomes.insert(n, outcome.clone()) {
            assert_eq!(
                first, outcome,
                "a retry of tx-{n} got another nonce or hash"
            );
        }
    }
    let load_time = load_started.elapsed();
    eprintln!(
        "{total_calls} calls ({transactions} ids) answered in {load_time:?} ({:.0} calls/s)",
        total_calls as f64 / load_time.as_secs_f64()
    );
    let nonces: BTreeSet<u64> = outcomes.values().map(|(nonce, _)| *nonce).collect();
    assert_eq!(nonces.len() as u64, transactions, "a nonce was given twice");
    assert_eq!(
        nonces,
        (0..transactions).collect::<BTreeSet<u64>>(),
        "nonces have a gap"
    );

    // On chain: the signer's nonce reaches N, and every one of our hashes is mined.
    latest_nonce_eventually(&chain, transactions, Duration::from_secs(120)).await;
    let hashes: Vec<B256> = outcomes
        .values()
        .map(|(_, hash)| B256::from_str(hash).unwrap())
        .collect();
    let chain = Arc::new(chain);
    let mut receipts = tokio::task::JoinSet::new();
    for chunk in hashes.chunks(hashes.len().div_ceil(16)) {
        let (chain, chunk) = (chain.clone(), chunk.to_vec());
        receipts.spawn(async move {
            for hash in chunk {
                mined_eventually(&chain, hash).await;
            }
        });
    }
    while let Some(result) = receipts.join_next().await {
        result.unwrap();
    }

    // In the store: every record final.
    let deadline = Instant::now() + Duration::from_secs(180);
    let final_view = loop {
        let view = view(survivor).await.unwrap();
        if view.in_flight == 0 {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "records still in flight: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(final_view.last_confirmed_nonce, Some(transactions - 1));
    assert_eq!(final_view.next_nonce, transactions);

    let survivor_node = nodes[(victim + 1) % NODES].as_ref().unwrap();
    let metrics = scrape(&survivor_node.metrics);
    for series in [
        "nonce_manager_allocator_tenures_total",
        "nonce_server_requests_total",
        "nonce_server_signers_held",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from /metrics; node log:\n{}",
            survivor_node.log_tail()
        );
    }
    if fault == Fault::Pause {
        // The resumed old holder noticed it lost the lease (its allocator stopped, by a
        // refused fenced commit or by the lease manager) and kept serving as a forwarder;
        // the nonces above are gapless and unique all the same.
        let deadline = Instant::now() + WAIT;
        let lost = loop {
            let lost = scrape(&killed.metrics)
                .lines()
                .find(|line| line.starts_with("nonce_manager_lease_lost_total"))
                .and_then(|line| line.split_whitespace().last())
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0);
            if lost >= 1.0 {
                break lost;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the resumed old holder to give the signer up; its log:\n{}",
                killed.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let fenced = std::fs::read_to_string(&killed.log)
            .unwrap_or_default()
            .matches("fenc")
            .count();
        eprintln!("resumed old holder: lease lost {lost}, {fenced} log lines on fencing");
    }
    eprintln!("cluster run done in {:?}", started.elapsed());
}

fn sqlite() -> (Backend, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Backend::Sqlite(dir.path().join("nonce.sqlite")), dir)
}

fn postgres(test: &str) -> Option<Backend> {
    test_support::skip_unless_required(test, PostgresServer::start()).map(Backend::Postgres)
}

/// The size: 10,000 transactions (11,000 calls with the retries), about 2-3 minutes
/// in a debug build on 2 cores, most of it waiting on anvil's 1 s blocks and fsyncs.
const TRANSACTIONS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_sqlite_kill_holder() {
    let (backend, _dir) = sqlite();
    run_cluster(backend, TRANSACTIONS, Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_postgres_kill_holder() {
    let Some(backend) = postgres("three_nodes_postgres_kill_holder") else {
        return;
    };
    run_cluster(backend, TRANSACTIONS, Fault::Kill).await;
}

/// A paused (not dead) holder comes back after the takeover: its late writes are refused.
/// PostgreSQL only: it ends a session idle in a transaction after 1 s, so a holder paused
/// mid-transaction releases its fence lock and the takeover proceeds. On the embedded SQLite
/// file a holder paused inside its write transaction keeps the file's write lock, so every
/// node waits until it resumes (tried: no takeover within 9 s); fencing still holds there,
/// but a takeover during a pause needs the PostgreSQL deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_postgres_pause_holder() {
    let Some(backend) = postgres("three_nodes_postgres_pause_holder") else {
        return;
    };
    run_cluster(backend, 2_000, Fault::Pause).await;
}

/// WatchConfirmedBlocks over gRPC: one node, anvil mining on demand; the stream carries
/// blocks `confirmations` deep, in order, each the child of the previous and canonical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_confirmed_blocks_streams_canonical_blocks_n_deep() {
    use nonce_server::proto::confirmed_block_event::Event;
    use nonce_server::proto::WatchConfirmedBlocksRequest;

    let Some(anvil) = test_support::skip_unless_required(
        "watch_confirmed_blocks_streams_canonical_blocks_n_deep",
        Anvil::start(&[]),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (backend, _store_dir) = sqlite();
    let node = spawn_node(0, &backend.location(), anvil.url(), dir.path());
    let chain = AlloyChainClient::new(anvil.url()).unwrap();
    let provider = alloy_provider::RootProvider::<alloy_network::Ethereum>::new_http(
        anvil.url().parse().unwrap(),
    );
    let mine = |n: u64| {
        let provider = provider.clone();
        async move {
            alloy_provider::Provider::raw_request::<_, serde_json::Value>(
                &provider,
                "anvil_mine".into(),
                serde_json::json!([n]),
            )
            .await
            .unwrap();
        }
    };
    mine(5).await; // head 5
    let mut stream = client(&node.grpc)
        .watch_confirmed_blocks(WatchConfirmedBlocksRequest {
            confirmations: 3,
            from_height: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let mut blocks = Vec::new();
    while blocks.len() < 9 {
        if blocks.len() == 3 {
            mine(5).await; // head 10: blocks up to 8 are 3 deep
        }
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for confirmed block {}", blocks.len()))
            .unwrap()
            .expect("stream open");
        match event.event {
            Some(Event::Confirmed(block)) => blocks.push(block),
            other => panic!("unexpected {other:?}"),
        }
    }
    let head = chain.block_number().await.unwrap();
    for (height, block) in blocks.iter().enumerate() {
        assert_eq!(block.number, height as u64);
        assert!(head + 1 - block.number >= 3, "block {height} not 3 deep");
        let canonical = chain.block(block.number).await.unwrap().unwrap();
        assert_eq!(block.hash, format!("{:#x}", canonical.hash));
        if height > 0 {
            assert_eq!(block.parent_hash, blocks[height - 1].hash);
        }
    }
    // Nothing beyond the depth: block 9 has 2 confirmations at head 10.
    let early = tokio::time::timeout(Duration::from_millis(600), stream.message()).await;
    assert!(
        early.is_err(),
        "streamed a block less than 3 deep: {early:?}"
    );
}

/// `takhin nonce serve --redis-url`: retries are answered through the Redis cache, and the
/// answers equal the store's (one nonce per request id, gapless).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_serves_retries_through_a_node() {
    let test = "redis_cache_serves_retries_through_a_node";
    let Some(anvil) = test_support::skip_unless_required(test, Anvil::start(&[])) else {
        return;
    };
    let Some(redis) =
        test_support::skip_unless_required(test, test_support::redis::RedisServer::start())
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (backend, _store_dir) = sqlite();
    let node = spawn_node_with(
        0,
        &backend.location(),
        anvil.url(),
        dir.path(),
        &["--redis-url", redis.url()],
    );
    let chain = AlloyChainClient::new(anvil.url()).unwrap();
    let base_fee = chain.base_fee().await.unwrap().unwrap_or(1_000_000_000);
    let max_fee = u64::try_from(base_fee * 4 + 2_000_000_000).unwrap();
    let clients = Arc::new(vec![client(&node.grpc)]);
    wait_for_holder(&clients[0]).await;
    let mut first = BTreeMap::new();
    for n in 0..20 {
        first.insert(n, submit_until_done(clients.clone(), n, 0, max_fee).await);
    }
    for n in 0..20 {
        let again = submit_until_done(clients.clone(), n, 0, max_fee).await;
        assert_eq!(first[&n], again, "a retry of tx-{n} got another answer");
    }
    let nonces: BTreeSet<u64> = first.values().map(|(nonce, _)| *nonce).collect();
    assert_eq!(nonces, (0..20).collect::<BTreeSet<u64>>());
    let metrics = scrape(&node.metrics);
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("nonce_manager_cache_lookups_total")),
        "no cache lookups in /metrics; node log:\n{}",
        node.log_tail()
    );
}

/// AllocateNonce for a caller who signs elsewhere, then ReportSignedTransaction: two nodes
/// (the call reaches the holder from either), the caller signs with its own copy of the
/// key, the report is broadcast by the node and the record reaches Confirmed; bad reports
/// get INVALID_ARGUMENT or FAILED_PRECONDITION and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_then_report_signed_transaction_confirms() {
    use nonce_manager::signer::LocalKey;
    use nonce_server::proto::{
        AllocateNonceRequest, GetTransactionRequest, ReportSignedTransactionRequest,
        TransactionStatus,
    };

    let test = "allocate_then_report_signed_transaction_confirms";
    let Some(anvil) = test_support::skip_unless_required(test, Anvil::start(&[])) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (backend, _store_dir) = sqlite();
    let nodes: Vec<NodeProcess> = (0..2)
        .map(|index| spawn_node(index, &backend.location(), anvil.url(), dir.path()))
        .collect();
    let clients: Vec<_> = nodes.iter().map(|node| client(&node.grpc)).collect();
    wait_for_holder(&clients[0]).await;
    let chain = AlloyChainClient::new(anvil.url()).unwrap();
    let chain_id = chain.chain_id().await.unwrap();
    let base_fee = chain.base_fee().await.unwrap().unwrap_or(1_000_000_000);
    let key = LocalKey::from_hex(DEV_KEY_0).unwrap();
    let payload = |n: u64| TxPayload {
        to: Address::repeat_byte(0x42),
        value: alloy_primitives::U256::from(n + 1),
        data: alloy_primitives::Bytes::new(),
        gas_limit: 21_000,
        max_fee_per_gas: base_fee * 4 + 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
    };
    let mut hashes = Vec::new();
    for n in 0..4u64 {
        let mut client = clients[n as usize % 2].clone();
        let request_id = format!("external-{n}");
        let allocated = client
            .allocate_nonce(AllocateNonceRequest {
                request_id: request_id.clone(),
                signer: SIGNER.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(allocated.nonce, n);
        let signed = key.sign(chain_id, allocated.nonce, &payload(n)).unwrap();
        if n == 0 {
            let wrong = key.sign(chain_id, 9, &payload(n)).unwrap();
            let error = client
                .report_signed_transaction(ReportSignedTransactionRequest {
                    request_id: request_id.clone(),
                    signer: SIGNER.to_owned(),
                    raw_transaction: wrong.raw,
                    broadcast: true,
                })
                .await
                .unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
            assert!(error.message().contains("nonce 9"), "{error:?}");
        }
        let reported = clients[(n as usize + 1) % 2]
            .clone()
            .report_signed_transaction(ReportSignedTransactionRequest {
                request_id,
                signer: SIGNER.to_owned(),
                raw_transaction: signed.raw,
                broadcast: true,
            })
            .await
            .unwrap()
            .into_inner();
        let record = reported.transaction.unwrap();
        assert_eq!(record.nonce, n);
        assert_eq!(record.status(), TransactionStatus::Tracking);
        assert_eq!(record.attempts.len(), 1, "{record:?}");
        hashes.push(format!("{:#x}", signed.hash));
    }
    // SubmitTransaction's records take no reports.
    let max_fee = u64::try_from(base_fee * 4 + 2_000_000_000).unwrap();
    let submitted = submit_until_done(Arc::new(clients.clone()), 4, 0, max_fee).await;
    assert_eq!(submitted.0, 4);
    let stray = key.sign(chain_id, 4, &payload(4)).unwrap();
    let error = clients[0]
        .clone()
        .report_signed_transaction(ReportSignedTransactionRequest {
            request_id: "tx-4".to_owned(),
            signer: SIGNER.to_owned(),
            raw_transaction: stray.raw,
            broadcast: false,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");

    let deadline = Instant::now() + WAIT;
    for (n, hash) in hashes.iter().enumerate() {
        loop {
            let record = clients[0]
                .clone()
                .get_transaction(GetTransactionRequest {
                    request_id: format!("external-{n}"),
                })
                .await
                .unwrap()
                .into_inner()
                .transaction
                .unwrap();
            assert_eq!(&record.attempts[0].hash, hash);
            if record.status() == TransactionStatus::Confirmed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for external-{n} to be confirmed: {record:?}\n{}",
                nodes[0].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // tx-4 is automined after its send returned: wait for it too.
    latest_nonce_eventually(&chain, 5, WAIT).await;
}
