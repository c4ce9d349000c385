//! Engine choice for the UTXO store: redb against fjall on the store's own access pattern.
//!
//! Measures, per engine: large atomic batches of UTXO writes (a record keyed by a 36-byte
//! outpoint plus its 57-byte owner-index key, as a coins-cache flush writes them) with one
//! fsync per batch; random point reads; owner prefix scans (~10 records each).
//!
//! Run: `cargo bench -p wes-store --bench engine` (figures go to BENCHMARKS.md).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{ReadableDatabase, TableDefinition};

const N_RECORDS: usize = 400_000;
const N_OWNERS: usize = 40_000;
const BATCH: usize = 50_000;
const N_READS: usize = 200_000;
const N_SCANS: usize = 50_000;
const UTXOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("utxos");
const OWNERS: TableDefinition<&[u8], ()> = TableDefinition::new("owners");

fn workload() -> Vec<([u8; 36], [u8; 57], Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..N_RECORDS)
        .map(|_| {
            let mut outpoint = [0u8; 36];
            rng.fill(&mut outpoint[..]);
            let owner = rng.random_range(0..N_OWNERS) as u64;
            let mut index = [0u8; 57];
            index[12..20].copy_from_slice(&owner.to_be_bytes());
            index[20] = 1;
            index[21..].copy_from_slice(&outpoint);
            let value: Vec<u8> = (0..150).map(|_| rng.random()).collect();
            (outpoint, index, value)
        })
        .collect()
}

fn report(engine: &str, what: &str, n: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{engine:6} {what:28} {n:>8} in {seconds:7.3}s = {:>10.0}/s",
        n as f64 / seconds
    );
}

fn owner_prefix(owner: u64) -> [u8; 20] {
    let mut prefix = [0u8; 20];
    prefix[12..20].copy_from_slice(&owner.to_be_bytes());
    prefix
}

fn bench_redb(data: &[([u8; 36], [u8; 57], Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("bench.redb")).unwrap();
    let started = Instant::now();
    for chunk in data.chunks(BATCH) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut utxos = txn.open_table(UTXOS).unwrap();
            let mut owners = txn.open_table(OWNERS).unwrap();
            for (outpoint, index, value) in chunk {
                utxos.insert(&outpoint[..], &value[..]).unwrap();
                owners.insert(&index[..], ()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    report("redb", "write utxo+index, fsync/50k", data.len(), started);
    let mut rng = StdRng::seed_from_u64(1);
    let txn = db.begin_read().unwrap();
    let utxos = txn.open_table(UTXOS).unwrap();
    let owners = txn.open_table(OWNERS).unwrap();
    let started = Instant::now();
    for _ in 0..N_READS {
        let (outpoint, _, _) = &data[rng.random_range(0..data.len())];
        assert!(utxos.get(&outpoint[..]).unwrap().is_some());
    }
    report("redb", "point read", N_READS, started);
    let started = Instant::now();
    let mut found = 0;
    for _ in 0..N_SCANS {
        let owner = rng.random_range(0..N_OWNERS) as u64;
        let start = owner_prefix(owner);
        let end = owner_prefix(owner + 1);
        for entry in owners.range(&start[..]..&end[..]).unwrap() {
            let (key, _) = entry.unwrap();
            found += utxos.get(&key.value()[21..]).unwrap().is_some() as usize;
        }
    }
    report("redb", "owner scan + record reads", N_SCANS, started);
    assert!(found > 0);
}

fn bench_fjall(data: &[([u8; 36], [u8; 57], Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let utxos = keyspace
        .open_partition("utxos", fjall::PartitionCreateOptions::default())
        .unwrap();
    let owners = keyspace
        .open_partition("owners", fjall::PartitionCreateOptions::default())
        .unwrap();
    let started = Instant::now();
    for chunk in data.chunks(BATCH) {
        let mut batch = keyspace.batch();
        for (outpoint, index, value) in chunk {
            batch.insert(&utxos, &outpoint[..], &value[..]);
            batch.insert(&owners, &index[..], b"");
        }
        batch.commit().unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    report("fjall", "write utxo+index, fsync/50k", data.len(), started);
    let mut rng = StdRng::seed_from_u64(1);
    let started = Instant::now();
    for _ in 0..N_READS {
        let (outpoint, _, _) = &data[rng.random_range(0..data.len())];
        assert!(utxos.get(&outpoint[..]).unwrap().is_some());
    }
    report("fjall", "point read", N_READS, started);
    let started = Instant::now();
    let mut found = 0;
    for _ in 0..N_SCANS {
        let owner = rng.random_range(0..N_OWNERS) as u64;
        for entry in owners.prefix(owner_prefix(owner)) {
            let (key, _) = entry.unwrap();
            found += utxos.get(&key[21..]).unwrap().is_some() as usize;
        }
    }
    report("fjall", "owner scan + record reads", N_SCANS, started);
    assert!(found > 0);
}

fn main() {
    let data = workload();
    bench_redb(&data);
    bench_fjall(&data);
}
