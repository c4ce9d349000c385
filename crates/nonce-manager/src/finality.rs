//! Finality: from `Tracking` to `Confirmed` at N confirmations, across reorgs.
//!
//! Two stages joined by a bounded channel:
//!
//! - the **receipt checker** scans the signer's `Tracking` records every poll, and for each
//!   one whose receipt is not known yet asks the node for the receipt of every stored
//!   attempt hash (a replacement, or the original, may be the one mined), at most
//!   [`FinalityConfig::receipt_concurrency`] records at a time;
//! - the **confirmations manager** remembers each receipt's block number and block hash.
//!   It polls the head's height every [`limits::HEAD_POLL_INTERVAL`] (or `poll_interval`
//!   if shorter) and, when the head moved or `poll_interval` passed, reads the canonical
//!   hash at each remembered height: a changed hash is a reorg, so the receipt is forgotten
//!   (the checker fetches it again) and a record already `Confirmed` moves back to
//!   `Tracking`; otherwise at [`FinalityConfig::confirmations`] it writes `Confirmed` (or
//!   `Failed` for a reverted receipt). Confirmed records stay watched for
//!   [`FinalityConfig::reorg_watch_depth`] blocks.
//!
//! Every status write is fenced with the signer's current lease token; a fenced write stops
//! both stages. When the channel is full the checker waits (back-pressure) and counts it in
//! `nonce_manager_finality_backpressure_total`; `nonce_manager_finality_queue_depth` is the
//! channel's fill.
//!
//! The final status and the receipt it rests on (block number and hash) are written in one
//! fenced transaction ([`NonceStore::set_status_with_receipt`]); a reorg rollback clears
//! the stored receipt. At start the manager reloads the stored receipts of `Confirmed`
//! records within the watch depth, so a receipt whose block was reorged away while the
//! node was down is found on the first evaluation: the record goes back to `Tracking`,
//! the checker looks for a new receipt, and the policy loop re-broadcasts it if the node
//! dropped it. `Tracking` records are always fetched again after a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::B256;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::allocator::Allocator;
use crate::chain::{ChainClient, ReceiptSummary};
use crate::error::StoreError;
use crate::limits;
use crate::store::NonceStore;
use crate::types::{ManagedTransaction, RequestId, TxStatus};

/// Finality settings.
#[derive(Debug, Clone)]
pub struct FinalityConfig {
    /// Confirmations for `Confirmed`: 1 means "in the head block".
    pub confirmations: u64,
    /// How often the checker scans and the manager re-reads the head.
    pub poll_interval: Duration,
    /// Records whose receipts are fetched at the same time.
    pub receipt_concurrency: usize,
    /// Capacity of the checker -> manager channel.
    pub queue_capacity: usize,
    /// How many confirmations a `Confirmed` record stays watched for reorgs.
    pub reorg_watch_depth: u64,
    /// Most `Tracking` records read per scan.
    pub scan_limit: usize,
}

impl Default for FinalityConfig {
    fn default() -> Self {
        Self {
            confirmations: 12,
            poll_interval: Duration::from_secs(1),
            receipt_concurrency: 8,
            queue_capacity: 256,
            reorg_watch_depth: 64,
            scan_limit: 1024,
        }
    }
}

/// Counters for tests and reports (the same events also go to the `metrics` recorder).
#[derive(Debug, Default)]
pub struct FinalityStats {
    /// Receipts handed to the manager.
    pub receipts_found: AtomicU64,
    /// `Confirmed`/`Failed` writes.
    pub finalized: AtomicU64,
    /// Remembered receipts whose block left the canonical chain.
    pub reorgs: AtomicU64,
    /// Times the checker found the channel full and waited.
    pub backpressure: AtomicU64,
}

#[derive(Debug, Clone)]
struct Tracked {
    receipt: ReceiptSummary,
    finalized: bool,
}

/// The request ids whose receipts the manager holds (the policy loop leaves those alone).
#[derive(Debug, Clone, Default)]
pub struct FinalityView {
    tracked: Arc<Mutex<HashMap<RequestId, Tracked>>>,
}

impl FinalityView {
    /// The receipt the manager holds for `request_id`, if any.
    pub fn receipt(&self, request_id: &RequestId) -> Option<ReceiptSummary> {
        self.lock().get(request_id).map(|tracked| tracked.receipt)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Tracked>> {
        self.tracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct ReceiptFound {
    request_id: RequestId,
    receipt: ReceiptSummary,
}

/// The running checker and manager for one signer; both stop on drop.
#[derive(Debug)]
pub struct Finality {
    view: FinalityView,
    stats: Arc<FinalityStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Finality {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Shared {
    store: Arc<dyn NonceStore>,
    chain: Arc<dyn ChainClient>,
    allocator: Arc<Allocator>,
    config: FinalityConfig,
    view: FinalityView,
    stats: Arc<FinalityStats>,
}

impl Finality {
    /// Starts both stages for the allocator's signer (its lease token fences the writes).
    pub fn start(
        store: Arc<dyn NonceStore>,
        chain: Arc<dyn ChainClient>,
        allocator: Arc<Allocator>,
        config: FinalityConfig,
    ) -> Self {
        let view = FinalityView::default();
        let stats = Arc::new(FinalityStats::default());
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            store,
            chain,
            allocator,
            config,
            view: view.clone(),
            stats: stats.clone(),
        });
        let tasks = vec![
            tokio::spawn(check_receipts(shared.clone(), sender)),
            tokio::spawn(manage_confirmations(shared, receiver)),
        ];
        Self { view, stats, tasks }
    }

    /// What the manager knows, for the policy loop.
    pub fn view(&self) -> FinalityView {
        self.view.clone()
    }

    /// Event counts.
    pub fn stats(&self) -> &FinalityStats {
        &self.stats
    }
}

/// Sends, counting a full channel as back-pressure before waiting. False once closed.
async fn send_counted(
    sender: &mpsc::Sender<ReceiptFound>,
    item: ReceiptFound,
    stats: &FinalityStats,
) -> bool {
    let sent = match sender.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(item)) => {
            stats.backpressure.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("nonce_manager_finality_backpressure_total").increment(1);
            sender.send(item).await.is_ok()
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    };
    let depth = sender.max_capacity() - sender.capacity();
    metrics::gauge!("nonce_manager_finality_queue_depth").set(depth as f64);
    sent
}

async fn check_receipts(shared: Arc<Shared>, sender: mpsc::Sender<ReceiptFound>) {
    let signer = shared.allocator.signer();
    let semaphore = Arc::new(Semaphore::new(shared.config.receipt_concurrency.max(1)));
    let mut interval = tokio::time::interval(shared.config.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if shared.allocator.is_stopped() || sender.is_closed() {
            return;
        }
        let records = match shared
            .store
            .transactions_with_status(signer, TxStatus::Tracking, shared.config.scan_limit)
            .await
        {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "receipt checker: store scan failed");
                continue;
            }
        };
        let mut checks = JoinSet::new();
        for record in records {
            if shared.view.receipt(&record.request_id).is_some() {
                continue;
            }
            let Ok(permit) = semaphore.clone().acquire_owned().await else {
                return;
            };
            let shared = shared.clone();
            let sender = sender.clone();
            checks.spawn(async move {
                let _permit = permit;
                if let Some(receipt) = find_receipt(shared.chain.as_ref(), &record).await {
                    let found = ReceiptFound {
                        request_id: record.request_id,
                        receipt,
                    };
                    send_counted(&sender, found, &shared.stats).await;
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// The receipt of whichever stored attempt was mined, newest first.
pub(crate) async fn find_receipt(
    chain: &dyn ChainClient,
    record: &ManagedTransaction,
) -> Option<ReceiptSummary> {
    for attempt in record.attempts.iter().rev() {
        match chain.receipt(attempt.hash).await {
            Ok(Some(receipt)) => return Some(receipt),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(request_id = %record.request_id, %error, "receipt lookup failed");
                return None;
            }
        }
    }
    None
}

async fn manage_confirmations(shared: Arc<Shared>, mut receiver: mpsc::Receiver<ReceiptFound>) {
    let head_poll = shared.config.poll_interval.min(limits::HEAD_POLL_INTERVAL);
    let mut interval = tokio::time::interval(head_poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reloaded = false;
    let mut last_head: Option<u64> = None;
    let mut last_full = tokio::time::Instant::now();
    loop {
        tokio::select! {
            found = receiver.recv() => {
                let Some(found) = found else { return };
                metrics::gauge!("nonce_manager_finality_queue_depth").set(receiver.len() as f64);
                shared.stats.receipts_found.fetch_add(1, Ordering::Relaxed);
                shared.view.lock().insert(
                    found.request_id,
                    Tracked { receipt: found.receipt, finalized: false },
                );
                // Evaluate at once rather than one poll later.
                if let Err(error) = evaluate(&shared, None).await {
                    if error.is_fenced() { return; }
                }
            }
            _ = interval.tick() => {
                if shared.allocator.is_stopped() {
                    return;
                }
                let head = match shared.chain.block_number().await {
                    Ok(head) => head,
                    Err(error) => {
                        tracing::warn!(%error, "head unavailable");
                        continue;
                    }
                };
                if !reloaded {
                    match reload_stored(&shared, head).await {
                        Ok(()) => reloaded = true,
                        Err(error) => tracing::warn!(%error, "stored receipts unavailable"),
                    }
                }
                let moved = last_head != Some(head);
                if !moved && last_full.elapsed() < shared.config.poll_interval {
                    continue;
                }
                last_head = Some(head);
                last_full = tokio::time::Instant::now();
                if let Err(error) = evaluate(&shared, Some(head)).await {
                    if error.is_fenced() {
                        tracing::warn!(%error, "confirmations manager fenced; stopping");
                        return;
                    }
                    tracing::warn!(%error, "confirmations manager");
                }
            }
        }
    }
}

/// Puts the stored receipts of `Confirmed` records within the watch depth back under
/// watch, after a restart or a takeover.
async fn reload_stored(shared: &Shared, head: u64) -> Result<(), StoreError> {
    let min_block = head.saturating_sub(shared.config.reorg_watch_depth);
    let stored = shared
        .store
        .stored_receipts(
            shared.allocator.signer(),
            min_block,
            shared.config.scan_limit,
        )
        .await?;
    let mut view = shared.view.lock();
    for (request_id, status, receipt) in stored {
        if status == TxStatus::Confirmed {
            view.entry(request_id).or_insert(Tracked {
                receipt,
                finalized: true,
            });
        }
    }
    Ok(())
}

/// Checks every remembered receipt against the canonical chain at `head` (read here when
/// `None`) and writes what changed.
async fn evaluate(shared: &Shared, head: Option<u64>) -> Result<(), StoreError> {
    let Some(token) = shared.allocator.token() else {
        return Ok(());
    };
    let snapshot: Vec<(RequestId, Tracked)> = shared
        .view
        .lock()
        .iter()
        .map(|(id, tracked)| (id.clone(), tracked.clone()))
        .collect();
    if snapshot.is_empty() {
        return Ok(());
    }
    let head = match head {
        Some(head) => head,
        None => match shared.chain.block_number().await {
            Ok(head) => head,
            Err(error) => {
                tracing::warn!(%error, "head unavailable");
                return Ok(());
            }
        },
    };
    let mut canonical: HashMap<u64, Option<B256>> = HashMap::new();
    for (request_id, tracked) in snapshot {
        let height = tracked.receipt.block_number;
        let hash = match canonical.get(&height) {
            Some(hash) => *hash,
            None => match shared.chain.block(height).await {
                Ok(block) => {
                    let hash = block.map(|block| block.hash);
                    canonical.insert(height, hash);
                    hash
                }
                Err(error) => {
                    tracing::warn!(%error, height, "block unavailable");
                    continue;
                }
            },
        };
        if hash != Some(tracked.receipt.block_hash) {
            tracing::warn!(%request_id, height, "receipt's block left the canonical chain");
            shared.view.lock().remove(&request_id);
            shared.stats.reorgs.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("nonce_manager_reorged_receipts_total").increment(1);
            if tracked.finalized {
                write_status(shared, token, &request_id, TxStatus::Tracking, None).await?;
            }
            continue;
        }
        let confirmations = if head >= height { head - height + 1 } else { 0 };
        if !tracked.finalized && confirmations >= shared.config.confirmations {
            let status = if tracked.receipt.success {
                TxStatus::Confirmed
            } else {
                TxStatus::Failed
            };
            if write_status(shared, token, &request_id, status, Some(&tracked.receipt)).await? {
                shared.stats.finalized.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("nonce_manager_finalized_total", "status" => status.as_str())
                    .increment(1);
                if let Some(entry) = shared.view.lock().get_mut(&request_id) {
                    entry.finalized = true;
                }
            } else {
                shared.view.lock().remove(&request_id);
            }
        } else if tracked.finalized
            && (confirmations > shared.config.reorg_watch_depth || !tracked.receipt.success)
        {
            // Deep enough to stop watching (a Failed record is final anyway).
            shared.view.lock().remove(&request_id);
        }
    }
    metrics::gauge!("nonce_manager_finality_watched").set(shared.view.lock().len() as f64);
    Ok(())
}

/// A fenced status write with the receipt it rests on (`None` clears it). `Ok(false)` when
/// the record moved somewhere the write may not follow (another loop decided first); a
/// fenced write is an error.
async fn write_status(
    shared: &Shared,
    token: ledger_lease::FencingToken,
    request_id: &RequestId,
    status: TxStatus,
    receipt: Option<&ReceiptSummary>,
) -> Result<bool, StoreError> {
    match shared
        .store
        .set_status_with_receipt(
            shared.allocator.signer(),
            token,
            request_id,
            status,
            receipt,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(error @ StoreError::InvalidTransition { .. }) => {
            tracing::warn!(%error, "status write skipped");
            Ok(false)
        }
        Err(error) => Err(error),
    }
}
