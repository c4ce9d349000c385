//! Per-signer nonce allocation while this node holds the signer's lease.
//!
//! `allocate` queues the request for the signer's batch writer (with a cache, a cached
//! committed allocation answers a retry first). The writer is a group commit: it takes
//! every queued request (up to [`AllocatorConfig::batch_max`]), then yields to the runtime
//! so callers it just answered can queue again, and gathers again while that brings new
//! requests and the oldest has waited less than [`AllocatorConfig::batch_window`]. It never
//! sleeps on a timer: under closed-loop load every caller is back within a few yields, and
//! a 2 ms timer wait per batch cost a third of the throughput. It commits the batch in ONE
//! fenced transaction ([`NonceStore::commit_allocations`], a constant number of statements)
//! from `max(chain pending nonce, cached next nonce, stored next nonce)`, then answers each
//! caller. A request id already stored comes back from that transaction as `existing`;
//! when the writer has stopped, a retry is still answered from the store (no lease needed).
//! One writer per signer per node, and one node per signer through the lease, so nonces
//! are gapless and duplicate-free; the `UNIQUE (signer, nonce)` constraint backs that up.
//!
//! The writer stops for good when the lease is reported lost or a commit is fenced: every
//! queued and later request gets [`AllocateError::LeaseLost`]. A new tenure needs a new
//! allocator, which starts from a fresh chain read and an empty cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use ledger_lease::{FencingToken, LeaseState};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::{payload_digest, CachedAllocation, NonceCache};
use crate::chain::ChainClient;
use crate::error::{AllocateError, InvalidArgument};
use crate::limits;
use crate::store::{Allocation, AllocationBatch, NewAllocation, NonceStore};
use crate::types::{signer_resource, RequestId, TxPayload};

/// How the batch writer batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// The longest a batch keeps gathering after its first request was queued (it stops
    /// sooner when a round of yields brings nothing new).
    pub batch_window: Duration,
    /// Most requests per batch (one transaction).
    pub batch_max: usize,
    /// Queued requests before `allocate` waits for room.
    pub queue_max: usize,
    /// Re-read the chain's pending nonce when the last read is older than this.
    pub chain_refresh: Duration,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            batch_window: limits::BATCH_WINDOW,
            batch_max: limits::BATCH_ALLOCATIONS_MAX,
            queue_max: limits::ALLOCATION_QUEUE_MAX,
            chain_refresh: limits::CHAIN_NONCE_REFRESH,
        }
    }
}

impl AllocatorConfig {
    fn validate(&self) -> Result<(), InvalidArgument> {
        if self.batch_max == 0 || self.batch_max > limits::BATCH_ALLOCATIONS_MAX {
            return Err(InvalidArgument(format!(
                "batch_max must be 1..={}",
                limits::BATCH_ALLOCATIONS_MAX
            )));
        }
        if self.queue_max < self.batch_max {
            return Err(InvalidArgument(
                "queue_max must be at least batch_max".into(),
            ));
        }
        Ok(())
    }
}

struct Job {
    request: NewAllocation,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Allocation, AllocateError>>,
}

/// Allocates nonces for one signer on this node. Dropping it stops the batch writer.
#[derive(Debug)]
pub struct Allocator {
    signer: Address,
    store: Arc<dyn NonceStore>,
    jobs: mpsc::Sender<Job>,
    lease: watch::Receiver<LeaseState>,
    stopped: Arc<AtomicBool>,
    refresh: Arc<AtomicBool>,
    cache: Option<Arc<dyn NonceCache>>,
    task: JoinHandle<()>,
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Allocator {
    /// Starts the batch writer for `signer`. `lease` is the signer's lease state, e.g.
    /// `LeaseGuard::subscribe()` for resource [`signer_resource`]`(signer)`.
    pub fn start(
        store: Arc<dyn NonceStore>,
        chain: Arc<dyn ChainClient>,
        signer: Address,
        lease: watch::Receiver<LeaseState>,
        config: AllocatorConfig,
    ) -> Result<Self, InvalidArgument> {
        Self::start_with_cache(store, chain, signer, lease, config, None)
    }

    /// [`Allocator::start`] with an optional cache ([`crate::cache`]) in front of the store:
    /// retries are answered from it when it holds their committed allocation, and every
    /// committed batch is written to it (in the background, best effort).
    pub fn start_with_cache(
        store: Arc<dyn NonceStore>,
        chain: Arc<dyn ChainClient>,
        signer: Address,
        lease: watch::Receiver<LeaseState>,
        config: AllocatorConfig,
        cache: Option<Arc<dyn NonceCache>>,
    ) -> Result<Self, InvalidArgument> {
        config.validate()?;
        if let LeaseState::Held(held) = &*lease.borrow() {
            if held.resource != signer_resource(signer) {
                return Err(InvalidArgument(format!(
                    "lease is on {}, not on {}",
                    held.resource,
                    signer_resource(signer)
                )));
            }
        }
        let (jobs, queue) = mpsc::channel(config.queue_max);
        let stopped = Arc::new(AtomicBool::new(false));
        let refresh = Arc::new(AtomicBool::new(false));
        let writer = BatchWriter {
            refresh: Arc::clone(&refresh),
            store: Arc::clone(&store),
            chain,
            signer,
            lease: lease.clone(),
            config,
            stopped: Arc::clone(&stopped),
            cache: cache.clone(),
            cache_writes: Arc::new(Semaphore::new(limits::CACHE_WRITES_IN_FLIGHT_MAX)),
        };
        let task = tokio::spawn(writer.run(queue));
        Ok(Self {
            signer,
            store,
            jobs,
            lease,
            stopped,
            refresh,
            cache,
            task,
        })
    }

    /// Makes the next batch re-read the chain's pending nonce whatever the age of the last
    /// read, and forget the cached next nonce (the stored one still counts). Reconciliation
    /// calls this after it found the key used elsewhere, so the next allocation skips
    /// ahead at once instead of up to [`AllocatorConfig::chain_refresh`] later.
    pub fn refresh_chain(&self) {
        self.refresh.store(true, Ordering::SeqCst);
    }

    /// The signer.
    pub fn signer(&self) -> Address {
        self.signer
    }

    /// The token fenced writes for this signer carry, while the allocator runs and the lease
    /// is held.
    pub fn token(&self) -> Option<FencingToken> {
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        match &*self.lease.borrow() {
            LeaseState::Held(lease) => Some(lease.token),
            LeaseState::Lost(_) => None,
        }
    }

    /// True once the writer has stopped (lease lost or fenced).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The nonce for `request_id`: the stored one for a retry (`existing`), else a fresh one
    /// committed with the batch it rides in. A request id already used for another signer
    /// or payload is refused.
    pub async fn allocate(
        &self,
        request_id: RequestId,
        payload: TxPayload,
    ) -> Result<Allocation, AllocateError> {
        if let Some(cache) = &self.cache {
            if let Some(cached) = cache.allocation(&request_id).await {
                // Only a full match answers; anything else is decided by the store.
                if cached.signer == self.signer && cached.payload_digest == payload_digest(&payload)
                {
                    return Ok(Allocation {
                        request_id,
                        signer: cached.signer,
                        nonce: cached.nonce,
                        existing: true,
                    });
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request: NewAllocation {
                request_id: request_id.clone(),
                payload: payload.clone(),
            },
            queued_at: Instant::now(),
            reply,
        };
        let answered = match self.jobs.send(job).await {
            Ok(()) => answer
                .await
                .unwrap_or(Err(AllocateError::LeaseLost(self.signer))),
            Err(_closed) => Err(AllocateError::LeaseLost(self.signer)),
        };
        let allocation = match answered {
            Ok(allocation) => allocation,
            Err(AllocateError::LeaseLost(signer)) => {
                // Not the holder (any more): a retry is still answered from the store.
                return match self.stored(&request_id, &payload).await? {
                    Some(stored) => Ok(stored),
                    None => Err(AllocateError::LeaseLost(signer)),
                };
            }
            Err(error) => return Err(error),
        };
        if allocation.existing {
            // A retry (or a repeat in the same batch): check it asked for the same.
            if let Some(stored) = self.stored(&request_id, &payload).await? {
                return Ok(stored);
            }
        }
        if allocation.signer != self.signer {
            return Err(AllocateError::RequestConflict(request_id));
        }
        Ok(allocation)
    }

    /// The cache this allocator uses, if any.
    pub fn cache(&self) -> Option<&Arc<dyn NonceCache>> {
        self.cache.as_ref()
    }

    /// The stored allocation of `request_id`, checked against this signer and `payload`.
    async fn stored(
        &self,
        request_id: &RequestId,
        payload: &TxPayload,
    ) -> Result<Option<Allocation>, AllocateError> {
        let stored = self
            .store
            .transaction(request_id)
            .await
            .map_err(|error| AllocateError::Store(Arc::new(error)))?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        if stored.signer != self.signer || stored.payload != *payload {
            return Err(AllocateError::RequestConflict(request_id.clone()));
        }
        Ok(Some(Allocation {
            request_id: stored.request_id,
            signer: stored.signer,
            nonce: stored.nonce,
            existing: true,
        }))
    }
}

/// The per-signer task that turns queued requests into fenced batch commits.
struct BatchWriter {
    store: Arc<dyn NonceStore>,
    chain: Arc<dyn ChainClient>,
    signer: Address,
    lease: watch::Receiver<LeaseState>,
    config: AllocatorConfig,
    stopped: Arc<AtomicBool>,
    refresh: Arc<AtomicBool>,
    cache: Option<Arc<dyn NonceCache>>,
    cache_writes: Arc<Semaphore>,
}

/// What the writer knows across batches of one tenure.
struct Tenure {
    token: FencingToken,
    /// The next nonce after the last commit.
    cached_next: Option<u64>,
    /// The last chain pending nonce read, and when.
    chain_pending: Option<(u64, Instant)>,
}

impl BatchWriter {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut tenure: Option<Tenure> = None;
        loop {
            let first = tokio::select! {
                job = queue.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
                changed = self.lease.changed() => {
                    // Mark the value seen, or `changed` fires again at once.
                    let lost = changed.is_err()
                        || matches!(&*self.lease.borrow_and_update(), LeaseState::Lost(_));
                    if lost {
                        break;
                    }
                    continue;
                }
            };
            let batch = self.gather(first, &mut queue).await;
            let token = match &*self.lease.borrow() {
                LeaseState::Held(lease) => lease.token,
                LeaseState::Lost(_) => {
                    self.refuse(batch);
                    break;
                }
            };
            let current = match tenure.take() {
                Some(current) if current.token == token => current,
                _ => {
                    metrics::counter!("nonce_manager_allocator_tenures_total").increment(1);
                    Tenure {
                        token,
                        cached_next: None,
                        chain_pending: None,
                    }
                }
            };
            match self.commit(current, batch).await {
                Some(next) => tenure = Some(next),
                None => break,
            }
        }
        self.stopped.store(true, Ordering::SeqCst);
        metrics::counter!("nonce_manager_lease_lost_total").increment(1);
        tracing::warn!(signer = %self.signer, "nonce allocator stopped: lease lost");
        queue.close();
        while let Some(job) = queue.recv().await {
            let _ = job.reply.send(Err(AllocateError::LeaseLost(self.signer)));
        }
    }

    /// The first job plus every job already queued, then more for as long as a round of
    /// yields brings any and the first has waited less than the batch window; at most
    /// `batch_max`.
    async fn gather(&self, first: Job, queue: &mut mpsc::Receiver<Job>) -> Vec<Job> {
        let deadline = first.queued_at + self.config.batch_window;
        let mut batch = Vec::with_capacity(self.config.batch_max);
        batch.push(first);
        loop {
            while batch.len() < self.config.batch_max {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if batch.len() >= self.config.batch_max || Instant::now() >= deadline {
                break;
            }
            // Let the callers just answered (and any other ready task) run and queue again.
            for _ in 0..limits::GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
            if queue.is_empty() {
                // Nobody came in a round of yields: waiting longer only adds latency.
                break;
            }
        }
        metrics::histogram!("nonce_manager_allocation_batch_size").record(batch.len() as f64);
        batch
    }

    fn refuse(&self, batch: Vec<Job>) {
        self.stopped.store(true, Ordering::SeqCst);
        for job in batch {
            let _ = job.reply.send(Err(AllocateError::LeaseLost(self.signer)));
        }
    }

    /// Commits one batch; `None` when the tenure is over (fenced).
    async fn commit(&self, mut tenure: Tenure, batch: Vec<Job>) -> Option<Tenure> {
        let forced = self.refresh.swap(false, Ordering::SeqCst);
        if forced {
            tenure.cached_next = None;
        }
        let stale = forced
            || tenure
                .chain_pending
                .is_none_or(|(_, read_at)| read_at.elapsed() >= self.config.chain_refresh);
        if stale {
            match self.chain.pending_nonce(self.signer).await {
                Ok(pending) => tenure.chain_pending = Some((pending, Instant::now())),
                Err(error) if tenure.chain_pending.is_none() => {
                    // A tenure must start from the chain: the key may have been used
                    // elsewhere while nobody held the lease.
                    tracing::warn!(signer = %self.signer, %error, "chain pending nonce unavailable");
                    for job in batch {
                        let _ = job.reply.send(Err(AllocateError::Chain(error.clone())));
                    }
                    return Some(tenure);
                }
                Err(error) => {
                    tracing::warn!(signer = %self.signer, %error, "chain pending nonce refresh failed; using the cached one");
                }
            }
        }
        let chain_pending = tenure.chain_pending.map_or(0, |(pending, _)| pending);
        let floor = chain_pending.max(tenure.cached_next.unwrap_or(0));
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            requests.push(job.request);
            replies.push(job.reply);
        }
        match self
            .store
            .commit_allocations(self.signer, tenure.token, floor, &requests)
            .await
        {
            Ok(committed) => {
                debug_assert_eq!(committed.allocations.len(), replies.len());
                debug_assert!(committed.next_nonce >= floor);
                tenure.cached_next = Some(committed.next_nonce);
                self.write_cache(&requests, &committed);
                for (allocation, reply) in committed.allocations.into_iter().zip(replies) {
                    let _ = reply.send(Ok(allocation));
                }
                Some(tenure)
            }
            Err(error) if error.is_fenced() => {
                tracing::warn!(signer = %self.signer, %error, "allocation fenced");
                // Stopped before anyone hears "lease lost", so `is_stopped` agrees with it.
                self.stopped.store(true, Ordering::SeqCst);
                for reply in replies {
                    let _ = reply.send(Err(AllocateError::LeaseLost(self.signer)));
                }
                None
            }
            Err(error) => {
                tracing::warn!(signer = %self.signer, %error, "allocation batch failed");
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(AllocateError::Store(Arc::clone(&error))));
                }
                // The cache may be ahead of a rolled-back commit; the stored value decides.
                tenure.cached_next = None;
                Some(tenure)
            }
        }
    }
}

impl BatchWriter {
    /// Writes a committed batch's new allocations to the cache in the background; skipped
    /// when the cache is slow enough that earlier writes are still in flight.
    fn write_cache(&self, requests: &[NewAllocation], committed: &AllocationBatch) {
        let Some(cache) = &self.cache else { return };
        if committed
            .allocations
            .iter()
            .all(|allocation| allocation.existing)
        {
            return;
        }
        let Ok(permit) = Arc::clone(&self.cache_writes).try_acquire_owned() else {
            metrics::counter!("nonce_manager_cache_writes_skipped_total").increment(1);
            return;
        };
        let entries: Vec<(RequestId, CachedAllocation)> = requests
            .iter()
            .zip(&committed.allocations)
            .filter(|(_, allocation)| !allocation.existing)
            .map(|(request, allocation)| {
                let entry = CachedAllocation {
                    signer: allocation.signer,
                    nonce: allocation.nonce,
                    payload_digest: payload_digest(&request.payload),
                };
                (allocation.request_id.clone(), entry)
            })
            .collect();
        let cache = Arc::clone(cache);
        let signer = self.signer;
        let next_nonce = committed.next_nonce;
        tokio::spawn(async move {
            let _permit = permit;
            cache.put_committed(signer, &entries, next_nonce).await;
        });
    }
}

/// Runs `round` every `interval` for as long as `allocator` holds the signer's
/// lease, for the background loops (policy, reconciliation). A fenced store
/// write means another node took the signer: the loop stops. Other errors are
/// logged (and counted by `on_error`) and the next round tries again.
pub(crate) fn spawn_rounds<F, Fut, T>(
    allocator: Arc<Allocator>,
    interval: std::time::Duration,
    name: &'static str,
    on_error: fn(),
    mut round: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, crate::SubmitError>> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if allocator.is_stopped() {
                return;
            }
            match round().await {
                Ok(_) => {}
                Err(crate::SubmitError::Store(error)) if error.is_fenced() => {
                    tracing::warn!(%error, loop_name = name, "background loop fenced; stopping");
                    return;
                }
                Err(error) => {
                    on_error();
                    tracing::warn!(%error, loop_name = name, "background round failed");
                }
            }
        }
    })
}
