//! The processing side (seed steps 5-9). Each consumer heartbeats into the member table;
//! every partition has one designated owner among the live members (rendezvous hashing),
//! which takes the partition's lease (a strictly increasing fencing token) and keeps it
//! alive. The owner reads the partition in batches from the offset committed in SQL, plans
//! the batch in memory ([`crate::engine`]), and commits balances, change states, history,
//! holds and the next offset in one transaction that passes only while its token is
//! current. Only then is the cache written, version-compared.
//!
//! A consumer that dies stops heartbeating; after the lease TTL another member owns its
//! partitions. A paused consumer that wakes up finds its commit fenced and stops at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_lease::{
    Clock, HolderId, LeaseGuard, LeaseManager, LeaseManagerConfig, LeaseState, ResourceName,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::{BusConfig, BusError, PartitionReader};
use crate::cache::BalanceCache;
use crate::engine;
use crate::metrics as m;
use crate::store::{Fence, LedgerStore, StoreError};

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Unique among the consumers sharing a store.
    pub member_id: String,
    pub lease_ttl: Duration,
    pub batch_max_changes: usize,
    pub batch_max_bytes: usize,
    /// How long a batch waits for more events after its first.
    pub batch_linger: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            member_id: format!("axs-consumer-{}", std::process::id()),
            lease_ttl: Duration::from_secs(10),
            batch_max_changes: 2000,
            batch_max_bytes: 4 << 20,
            batch_linger: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Lease(#[from] ledger_lease::LeaseError),
}

/// The partition's lease resource: `axs/<topic>/<partition>`.
pub fn lease_resource(topic: &str, partition: i32) -> Result<ResourceName, ConsumerError> {
    Ok(ResourceName::new(format!("axs/{topic}/{partition}"))?)
}

/// 64-bit FNV-1a with a final avalanche (murmur3's fmix64): stable across builds and
/// machines, so every member computes the same owner; the avalanche keeps names that differ
/// in one character from ranking alike.
fn score(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The member that should own `partition`: the highest rendezvous score.
pub fn owner_of(members: &[String], partition: i32) -> Option<&str> {
    members
        .iter()
        .max_by_key(|member| {
            (
                score(&[member.as_bytes(), &partition.to_be_bytes()]),
                *member,
            )
        })
        .map(String::as_str)
}

/// A running consumer; dropping the handle does not stop it, [`ConsumerHandle::shutdown`]
/// does (releasing its leases so others take over at once).
pub struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ConsumerHandle {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Shared {
    store: Arc<dyn LedgerStore>,
    cache: Arc<dyn BalanceCache>,
    clock: Arc<dyn Clock>,
    bus: BusConfig,
    config: ConsumerConfig,
}

/// Starts a consumer member over `partitions` partitions of `bus.topic`.
pub fn spawn(
    store: Arc<dyn LedgerStore>,
    cache: Arc<dyn BalanceCache>,
    clock: Arc<dyn Clock>,
    bus: BusConfig,
    partitions: i32,
    config: ConsumerConfig,
) -> ConsumerHandle {
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        store,
        cache,
        clock,
        bus,
        config,
    });
    let task = tokio::spawn(membership(shared, partitions, stopped));
    ConsumerHandle { stop, task }
}

struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn membership(shared: Arc<Shared>, partitions: i32, mut stopped: watch::Receiver<bool>) {
    let me = shared.config.member_id.clone();
    let ttl = shared.config.lease_ttl;
    let mut workers: HashMap<i32, Worker> = HashMap::new();
    let mut ticker = tokio::time::interval(ttl / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        let now = shared.clock.now().0;
        let members = match shared
            .store
            .heartbeat(&me, ttl.as_millis() as i64, now)
            .await
        {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(%error, "consumer heartbeat failed");
                continue;
            }
        };
        workers.retain(|_, worker| !worker.task.is_finished());
        for partition in 0..partitions {
            let mine = owner_of(&members, partition) == Some(me.as_str());
            match (mine, workers.contains_key(&partition)) {
                (true, false) => {
                    if let Some(worker) = start_worker(&shared, partition).await {
                        workers.insert(partition, worker);
                    }
                }
                (false, true) => {
                    if let Some(worker) = workers.remove(&partition) {
                        let _ = worker.stop.send(true);
                        let _ = worker.task.await;
                    }
                }
                _ => {}
            }
        }
        metrics::gauge!(m::OWNED_PARTITIONS).set(workers.len() as f64);
    }
    for (_, worker) in workers.drain() {
        let _ = worker.stop.send(true);
        let _ = worker.task.await;
    }
    let _ = shared.store.leave(&me).await;
    metrics::gauge!(m::OWNED_PARTITIONS).set(0.0);
}

async fn start_worker(shared: &Arc<Shared>, partition: i32) -> Option<Worker> {
    let resource = lease_resource(&shared.bus.topic, partition).ok()?;
    let holder = HolderId::new(shared.config.member_id.clone()).ok()?;
    let guard = match LeaseManager::acquire(
        shared.store.leases(),
        &resource,
        &holder,
        LeaseManagerConfig::new(shared.config.lease_ttl),
    )
    .await
    {
        Ok(Some(guard)) => guard,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(partition, %error, "taking the partition lease failed");
            return None;
        }
    };
    metrics::counter!(m::LEASE_CHANGES, "event" => "acquired").increment(1);
    tracing::info!(partition, token = ?guard.lease().map(|l| l.token), "partition acquired");
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::clone(shared);
    let task = tokio::spawn(async move {
        let result = run_partition(&shared, partition, resource, &guard, stopped).await;
        match result {
            Ok(()) => {
                if guard.release().await.unwrap_or(false) {
                    metrics::counter!(m::LEASE_CHANGES, "event" => "released").increment(1);
                }
                tracing::info!(partition, "partition released");
            }
            Err(error) => {
                metrics::counter!(m::LEASE_CHANGES, "event" => "lost").increment(1);
                tracing::warn!(partition, %error, "partition worker stopped");
            }
        }
    });
    Some(Worker { stop, task })
}

#[derive(Debug, thiserror::Error)]
enum PartitionStop {
    #[error("lease lost: {0:?}")]
    Lost(ledger_lease::LossReason),
    #[error("fenced: another consumer holds the partition")]
    Fenced,
    #[error(transparent)]
    Failed(#[from] ConsumerError),
}

async fn run_partition(
    shared: &Shared,
    partition: i32,
    resource: ResourceName,
    guard: &LeaseGuard,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), PartitionStop> {
    let mut lease = guard.subscribe();
    let mut failures = 0u32;
    'reopen: loop {
        let offset = shared
            .store
            .consumed_offset(partition)
            .await
            .map_err(ConsumerError::from)?;
        let reader =
            PartitionReader::open(&shared.bus, partition, offset).map_err(ConsumerError::from)?;
        let mut next_offset = offset.unwrap_or(0);
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        loop {
            if *stopped.borrow() {
                return Ok(());
            }
            let token = match &*lease.borrow_and_update() {
                LeaseState::Held(held) => held.token,
                LeaseState::Lost(reason) => return Err(PartitionStop::Lost(*reason)),
            };
            let batch = tokio::select! {
                batch = reader.next_batch(
                    shared.config.batch_max_changes,
                    shared.config.batch_max_bytes,
                    shared.config.batch_linger,
                    Duration::from_millis(200),
                ) => batch,
                _ = stopped.changed() => return Ok(()),
                // A half-read batch is dropped with the reader: read again from the
                // committed offset, so no event is skipped.
                _ = lease.changed() => continue 'reopen,
            };
            let (events, read_to) = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(partition, %error, "reading the ledger topic");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'reopen;
                }
            };
            let started = Instant::now();
            let now = shared.clock.now().0;
            let fence = Fence {
                resource: resource.clone(),
                token,
            };
            let applied =
                apply_batch(shared, partition, &fence, events, read_to, next_offset, now).await;
            match applied {
                Ok(Some(next)) => {
                    failures = 0;
                    next_offset = next;
                    metrics::histogram!(m::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
                }
                Ok(None) => {}
                Err(error) if error.is_fenced() => {
                    metrics::counter!(m::FENCED_BATCHES).increment(1);
                    return Err(PartitionStop::Fenced);
                }
                Err(error) => {
                    // Nothing was committed: read again from the committed offset.
                    failures += 1;
                    tracing::warn!(partition, %error, failures, "applying a batch failed");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(20))))
                        .await;
                    continue 'reopen;
                }
            }
            if last_lag.elapsed() >= Duration::from_secs(1) {
                last_lag = Instant::now();
                if let Some(high) = reader.high_watermark().await {
                    metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                        .set((high - next_offset).max(0) as f64);
                }
            }
        }
    }
}

/// Plans and commits one batch (and any expired holds); returns the new next offset when
/// something was committed.
async fn apply_batch(
    shared: &Shared,
    partition: i32,
    fence: &Fence,
    events: Vec<engine::Positioned>,
    read_to: Option<i64>,
    next_offset: i64,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let (mut snapshot, expired) = shared.store.snapshot(partition, &events, now).await?;
    if events.is_empty() && expired.is_empty() && read_to.is_none() {
        return Ok(None);
    }
    let count = events.len();
    let plan = engine::plan(&mut snapshot, events, &expired, now);
    let next = read_to.unwrap_or(next_offset).max(next_offset);
    shared.store.apply(fence, partition, &plan, next).await?;
    // Step 7, after the commit (ADR 0003): version-compared, so never newer than SQL's
    // truth is overwritten by an older value.
    let balances: Vec<_> = plan
        .balances
        .iter()
        .map(|(key, state)| (key.clone(), *state))
        .collect();
    match shared.cache.put_newer(&balances).await {
        Ok(stale) if stale > 0 => metrics::counter!(m::CACHE_STALE_WRITES).increment(stale as u64),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cache write failed; reads fall back to SQL"),
    }
    record_outcomes(&plan, count, now);
    Ok(Some(next))
}

fn record_outcomes(plan: &engine::Plan, count: usize, now: i64) {
    metrics::histogram!(m::BATCH_CHANGES).record(count as f64);
    let mut rejected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut applied = 0u64;
    for (decision, positioned) in plan.decisions.iter().zip(&plan.events) {
        match decision.reason {
            Some(reason) => *rejected.entry(reason.as_str()).or_default() += 1,
            None => applied += 1,
        }
        let waited = (now - positioned.event.created_at_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(m::SUBMIT_TO_APPLIED_SECONDS).record(waited);
    }
    metrics::counter!(m::CHANGES, "outcome" => "applied").increment(applied);
    metrics::counter!(m::CHANGES, "outcome" => "duplicate").increment(plan.duplicates as u64);
    for (reason, n) in rejected {
        metrics::counter!(m::CHANGES, "outcome" => "rejected").increment(n);
        metrics::counter!(m::REJECTED, "reason" => reason).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_one_owner_and_the_spread_is_fair() {
        let members: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for p in 0..64 {
            *counts.entry(owner_of(&members, p).unwrap()).or_default() += 1;
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(counts.values().all(|n| (6..=26).contains(n)), "{counts:?}");
        // A member leaving moves only its own partitions.
        let three = &members[..3];
        for p in 0..64 {
            let before = owner_of(&members, p).unwrap();
            if before != "c3" {
                assert_eq!(owner_of(three, p), Some(before));
            }
        }
        assert_eq!(owner_of(&[], 0), None);
    }
}
