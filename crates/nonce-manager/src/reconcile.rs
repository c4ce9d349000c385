//! Reconciliation: compares the chain with the store for one signer, on the node holding
//! its lease, and repairs drift.
//!
//! One round ([`Reconciler::run_once`]) reads the chain's latest and pending nonces first,
//! then the signer's open records (`Pending`, `Tracking`, `Reconciling`), so a record read
//! without attempts cannot have been mined by us before the chain read (attempts are
//! stored before they are sent). Then:
//!
//! - **nonce used on chain** (record nonce < latest): when one of our stored attempts has
//!   a receipt the record is ours and goes (back) to `Tracking`, where finality picks it up;
//!   otherwise a transaction that is not ours took the nonce: the record becomes `Failed`
//!   and counts as drift. It is not re-queued under a new nonce: a request id names exactly
//!   one nonce for its whole life (`UNIQUE (request_id)` and the retry contract of
//!   SubmitTransaction), so the caller sees `Failed` and resubmits under a new request id.
//! - **chain ahead of the store** (max(latest, pending) > stored next nonce): another
//!   wallet spent from the key. Drift.
//! - on drift the floor is raised at once: the stored next nonce is lifted to the chain's
//!   (a fenced `commit_allocations` with no requests) and the allocator is told to re-read
//!   the chain before its next batch ([`Allocator::refresh_chain`]).
//! - **abandoned**: a `Pending` record with no signed attempt older than
//!   [`ReconcileConfig::abandon_after`] (the caller allocated and never came back) becomes
//!   `Failed`; its nonce is a gap.
//! - **external allocations** (AllocateNonce, [`TxPayload::is_external`]) whose nonce is
//!   used on chain before any attempt was reported are the caller's own transactions, not
//!   drift: they stay `Pending` for the abandon window (a ReportSignedTransaction then
//!   moves them to `Tracking`) and are closed as `Failed` after it (`unreported`).
//! - **gaps**: every nonce from the chain's pending nonce up to the stored next nonce that
//!   no open record holds (the record is `Failed`, or missing) blocks every later nonce. It
//!   is filled with a zero-value self-transfer signed by the signer. The filler is stored as
//!   an attempt of the nonce's record before it is broadcast (the invariant holds; the
//!   record stays `Failed`); a nonce without any record (not produced by this crate) is
//!   filled without a stored attempt.
//! - a `Reconciling` record whose nonce the pool no longer holds (nonce >= pending) gets its
//!   newest attempt re-broadcast and goes back to `Tracking` when a node takes it.
//!
//! Metrics: `nonce_manager_drift_alert{signer}` (1 while drift was seen within
//! [`ReconcileConfig::alert_hold`]), `nonce_manager_drift_events_total{signer}`,
//! `nonce_manager_reconcile_repairs_total{kind}` (kind: `foreign_nonce`, `adopted`,
//! `floor_raised`, `abandoned`, `unreported`, `gap_filled`, `resent`),
//! `nonce_manager_reconcile_failures_total`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, Bytes, B256, U256};
use ledger_lease::{Clock, FencingToken, UnixMillis};
use tokio::task::JoinHandle;

use crate::allocator::Allocator;
use crate::chain::{ChainClient, ChainError};
use crate::error::{AllocateError, InvalidArgument, StoreError, SubmitError};
use crate::signer::LocalKey;
use crate::store::NonceStore;
use crate::types::{ManagedTransaction, RequestId, TxAttempt, TxPayload, TxStatus};

/// Most gap nonces filled in one round.
pub const GAP_FILLS_PER_ROUND_MAX: u64 = 64;

/// Reconciliation settings.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Time between rounds of [`Reconciler::spawn`].
    pub interval: Duration,
    /// Age after which a `Pending` record with no signed attempt is given up.
    pub abandon_after: Duration,
    /// How long the drift alert stays raised after the last drift seen.
    pub alert_hold: Duration,
    /// Most records read per status per round.
    pub scan_limit: usize,
    /// Tip of a gap filler, wei per gas; its fee cap is twice the base fee plus this.
    pub filler_priority_fee: u128,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            abandon_after: Duration::from_secs(300),
            alert_hold: Duration::from_secs(900),
            scan_limit: 1024,
            filler_priority_fee: 1_000_000_000,
        }
    }
}

/// Counters and the alert (the same events also go to the `metrics` recorder).
#[derive(Debug, Default)]
pub struct ReconcileStats {
    /// Rounds that found drift.
    pub drift_events: AtomicU64,
    /// When drift was last seen (ms since the epoch; 0: never).
    pub last_drift_ms: AtomicI64,
    /// Records failed because a foreign transaction took their nonce.
    pub foreign: AtomicU64,
    /// Gaps filled with a self-transfer.
    pub gaps_filled: AtomicU64,
    /// Floor raises.
    pub floor_raises: AtomicU64,
}

impl ReconcileStats {
    /// Whether the drift alert is up at `now`, held for `hold` after the last drift.
    pub fn drift_alert(&self, now: UnixMillis, hold: Duration) -> bool {
        let last = self.last_drift_ms.load(Ordering::SeqCst);
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        last > 0 && now.0.saturating_sub(last) < hold_ms
    }
}

/// What one round found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// The chain's next nonce counting mined transactions only.
    pub latest_nonce: u64,
    /// The chain's next nonce counting the pool.
    pub pending_nonce: u64,
    /// The stored next nonce at the start of the round.
    pub store_next: Option<u64>,
    /// Another wallet spent from the key.
    pub drift: bool,
    /// Our records whose nonce a foreign transaction took, now `Failed`.
    pub foreign: Vec<(RequestId, u64)>,
    /// Records whose own attempt was found mined, moved to `Tracking`.
    pub adopted: Vec<RequestId>,
    /// `Pending` records without attempts given up, now `Failed`.
    pub abandoned: Vec<(RequestId, u64)>,
    /// External allocations (AllocateNonce) whose nonce was used on chain without a
    /// ReportSignedTransaction within the abandon window: closed as `Failed`, no drift.
    pub unreported: Vec<(RequestId, u64)>,
    /// `Reconciling` records re-broadcast and back in `Tracking`.
    pub resent: Vec<RequestId>,
    /// Gap nonces filled, with the filler's hash.
    pub gaps_filled: Vec<(u64, B256)>,
    /// The stored next nonce after a floor raise.
    pub floor_raised_to: Option<u64>,
}

/// Reconciliation for one signer, on the node holding its lease.
#[derive(Debug)]
pub struct Reconciler {
    store: Arc<dyn NonceStore>,
    chain: Arc<dyn ChainClient>,
    allocator: Arc<Allocator>,
    key: LocalKey,
    chain_id: u64,
    clock: Arc<dyn Clock>,
    config: ReconcileConfig,
    stats: Arc<ReconcileStats>,
}

impl Reconciler {
    /// Reads the chain id once; `key` must be the allocator's signer (gap fillers are signed
    /// with it).
    pub async fn new(
        store: Arc<dyn NonceStore>,
        chain: Arc<dyn ChainClient>,
        allocator: Arc<Allocator>,
        key: LocalKey,
        clock: Arc<dyn Clock>,
        config: ReconcileConfig,
    ) -> Result<Self, SubmitError> {
        if key.address() != allocator.signer() {
            return Err(InvalidArgument(format!(
                "key is for {:#x}, the allocator for {:#x}",
                key.address(),
                allocator.signer()
            ))
            .into());
        }
        let chain_id = chain.chain_id().await.map_err(SubmitError::Chain)?;
        Ok(Self {
            store,
            chain,
            allocator,
            key,
            chain_id,
            clock,
            config,
            stats: Arc::new(ReconcileStats::default()),
        })
    }

    /// Counters and the alert.
    pub fn stats(&self) -> Arc<ReconcileStats> {
        self.stats.clone()
    }

    /// Whether the drift alert is up now.
    pub fn drift_alert(&self) -> bool {
        self.stats
            .drift_alert(self.clock.now(), self.config.alert_hold)
    }

    /// Runs rounds every [`ReconcileConfig::interval`] until fenced or the lease is lost.
    pub fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        let (allocator, interval) = (self.allocator.clone(), self.config.interval);
        let on_error = || metrics::counter!("nonce_manager_reconcile_failures_total").increment(1);
        crate::allocator::spawn_rounds(allocator, interval, "reconcile", on_error, move || {
            let reconciler = self.clone();
            async move { reconciler.run_once().await }
        })
    }

    /// One round: detect drift, repair, fill gaps.
    pub async fn run_once(&self) -> Result<ReconcileReport, SubmitError> {
        let signer = self.allocator.signer();
        let token = self.token()?;
        let latest = self
            .chain
            .latest_nonce(signer)
            .await
            .map_err(SubmitError::Chain)?;
        let pending = self
            .chain
            .pending_nonce(signer)
            .await
            .map_err(SubmitError::Chain)?
            .max(latest);
        let store_next = self.store.next_nonce(signer).await?;
        let mut report = ReconcileReport {
            latest_nonce: latest,
            pending_nonce: pending,
            store_next,
            ..ReconcileReport::default()
        };
        let mut open = Vec::new();
        for status in [TxStatus::Pending, TxStatus::Tracking, TxStatus::Reconciling] {
            open.extend(
                self.store
                    .transactions_with_status(signer, status, self.config.scan_limit)
                    .await?,
            );
        }
        open.sort_by_key(|record| record.nonce);
        let now = self.clock.now();
        let abandon_ms = i64::try_from(self.config.abandon_after.as_millis()).unwrap_or(i64::MAX);
        for record in &open {
            let unreported = record.payload.is_external() && record.attempts.is_empty();
            if record.nonce < latest && unreported {
                // AllocateNonce's caller signed and sent it and has not reported it (yet):
                // expected use of the nonce, not drift. Closed once the report window ends.
                if record.status == TxStatus::Pending
                    && now.0.saturating_sub(record.created_at.0) >= abandon_ms
                    && self.set_status(token, record, TxStatus::Failed).await?
                {
                    tracing::info!(%signer, request_id = %record.request_id, nonce = record.nonce, "external allocation used on chain and never reported; closed");
                    repaired("unreported");
                    report
                        .unreported
                        .push((record.request_id.clone(), record.nonce));
                }
            } else if record.nonce < latest {
                if self.any_attempt_mined(record).await? {
                    if record.status != TxStatus::Tracking
                        && self.set_status(token, record, TxStatus::Tracking).await?
                    {
                        repaired("adopted");
                        report.adopted.push(record.request_id.clone());
                    }
                } else if self.set_status(token, record, TxStatus::Failed).await? {
                    tracing::warn!(%signer, request_id = %record.request_id, nonce = record.nonce, "nonce taken by a foreign transaction");
                    repaired("foreign_nonce");
                    self.stats.foreign.fetch_add(1, Ordering::Relaxed);
                    report
                        .foreign
                        .push((record.request_id.clone(), record.nonce));
                }
            } else if record.status == TxStatus::Pending
                && record.attempts.is_empty()
                && now.0.saturating_sub(record.created_at.0) >= abandon_ms
            {
                if self.set_status(token, record, TxStatus::Failed).await? {
                    tracing::warn!(%signer, request_id = %record.request_id, nonce = record.nonce, "abandoned allocation; its nonce will be filled");
                    repaired("abandoned");
                    report
                        .abandoned
                        .push((record.request_id.clone(), record.nonce));
                }
            } else if record.status == TxStatus::Reconciling && record.nonce >= pending {
                if let Some(last) = record.attempts.last() {
                    match self.chain.send_raw_transaction(&last.raw).await {
                        Ok(_) | Err(ChainError::AlreadyKnown) => {
                            if self.set_status(token, record, TxStatus::Tracking).await? {
                                repaired("resent");
                                report.resent.push(record.request_id.clone());
                            }
                        }
                        Err(error) => {
                            tracing::warn!(request_id = %record.request_id, %error, "re-broadcast of a reconciling record refused");
                        }
                    }
                }
            }
        }

        let chain_next = pending;
        report.drift =
            !report.foreign.is_empty() || store_next.is_some_and(|next| chain_next > next);
        let mut next = store_next.unwrap_or(0);
        if report.drift {
            self.stats.drift_events.fetch_add(1, Ordering::Relaxed);
            self.stats
                .last_drift_ms
                .store(now.0.max(1), Ordering::SeqCst);
            metrics::counter!("nonce_manager_drift_events_total", "signer" => signer_label(signer))
                .increment(1);
            tracing::warn!(%signer, latest, pending, ?store_next, foreign = report.foreign.len(), "drift: the key was used outside this manager");
            self.allocator.refresh_chain();
            if store_next.is_some_and(|stored| chain_next > stored) {
                let batch = self
                    .store
                    .commit_allocations(signer, token, chain_next, &[])
                    .await?;
                next = batch.next_nonce;
                report.floor_raised_to = Some(batch.next_nonce);
                self.stats.floor_raises.fetch_add(1, Ordering::Relaxed);
                repaired("floor_raised");
            }
        }
        let alert = self.drift_alert();
        metrics::gauge!("nonce_manager_drift_alert", "signer" => signer_label(signer))
            .set(if alert { 1.0 } else { 0.0 });

        // Gaps: nonces the chain waits for that no open record will send.
        let end = next.min(pending.saturating_add(GAP_FILLS_PER_ROUND_MAX));
        let mut base_fee = None;
        for nonce in pending..end {
            let owner = self.store.record_at_nonce(signer, nonce).await?;
            let request_id = match owner {
                Some((_, status)) if status != TxStatus::Failed => continue,
                Some((request_id, _)) => Some(request_id),
                None => None,
            };
            let base = match base_fee {
                Some(base) => base,
                None => {
                    let base = self
                        .chain
                        .base_fee()
                        .await
                        .map_err(SubmitError::Chain)?
                        .unwrap_or(1_000_000_000);
                    base_fee = Some(base);
                    base
                }
            };
            if let Some(hash) = self
                .fill_gap(token, nonce, request_id.as_ref(), base)
                .await?
            {
                report.gaps_filled.push((nonce, hash));
            }
        }
        Ok(report)
    }

    /// Signs, stores (when the nonce has a record), then sends a zero-value self-transfer.
    async fn fill_gap(
        &self,
        token: FencingToken,
        nonce: u64,
        request_id: Option<&RequestId>,
        base_fee: u128,
    ) -> Result<Option<B256>, SubmitError> {
        let signer = self.allocator.signer();
        let priority = self.config.filler_priority_fee;
        let payload = TxPayload {
            to: signer,
            value: U256::ZERO,
            data: Bytes::new(),
            gas_limit: 21_000,
            max_fee_per_gas: base_fee.saturating_mul(2).saturating_add(priority),
            max_priority_fee_per_gas: priority,
        };
        let signed = self
            .key
            .sign(self.chain_id, nonce, &payload)
            .map_err(SubmitError::Sign)?;
        if let Some(request_id) = request_id {
            let attempt = TxAttempt {
                hash: signed.hash,
                max_fee_per_gas: payload.max_fee_per_gas,
                max_priority_fee_per_gas: payload.max_priority_fee_per_gas,
                raw: signed.raw.clone().into(),
                sent_at: self.clock.now(),
            };
            self.store
                .record_attempt(signer, token, request_id, &attempt)
                .await?;
        } else {
            tracing::warn!(%signer, nonce, "gap nonce has no record; filler sent unrecorded");
        }
        match self.chain.send_raw_transaction(&signed.raw).await {
            Ok(_) | Err(ChainError::AlreadyKnown) => {
                tracing::info!(%signer, nonce, hash = %signed.hash, "nonce gap filled with a self-transfer");
                repaired("gap_filled");
                self.stats.gaps_filled.fetch_add(1, Ordering::Relaxed);
                Ok(Some(signed.hash))
            }
            Err(ChainError::NonceTooLow | ChainError::ReplacementUnderpriced) => {
                // Something else holds the nonce now: no longer a gap.
                Ok(None)
            }
            Err(error) => Err(SubmitError::Chain(error)),
        }
    }

    /// True when one of the record's attempts has a receipt. A failed lookup is an error,
    /// never "not ours".
    async fn any_attempt_mined(&self, record: &ManagedTransaction) -> Result<bool, SubmitError> {
        for attempt in record.attempts.iter().rev() {
            if self
                .chain
                .receipt(attempt.hash)
                .await
                .map_err(SubmitError::Chain)?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A fenced status write; `Ok(false)` when another loop moved the record first.
    async fn set_status(
        &self,
        token: FencingToken,
        record: &ManagedTransaction,
        status: TxStatus,
    ) -> Result<bool, SubmitError> {
        match self
            .store
            .set_status(self.allocator.signer(), token, &record.request_id, status)
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::InvalidTransition { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn token(&self) -> Result<FencingToken, SubmitError> {
        self.allocator
            .token()
            .ok_or_else(|| AllocateError::LeaseLost(self.allocator.signer()).into())
    }
}

fn repaired(kind: &'static str) {
    metrics::counter!("nonce_manager_reconcile_repairs_total", "kind" => kind).increment(1);
}

/// The `signer` label value: `0x` and lowercase hex.
pub(crate) fn signer_label(signer: Address) -> String {
    format!("{signer:#x}")
}
