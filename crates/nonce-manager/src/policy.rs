//! The policy loop: resubmits `Tracking` transactions that stay unmined too long.
//!
//! Every round it reads the signer's `Tracking` records that the finality stage holds no
//! receipt for, and acts on those whose last action (newest attempt, or last re-broadcast)
//! is older than [`PolicyConfig::resubmit_after`]:
//!
//! - newest attempt **unknown** to the node (dropped from its pool, or lost in a reorg):
//!   re-broadcast its stored bytes, byte for byte;
//! - newest attempt **pending** and its nonce is the next one the chain will mine (later
//!   nonces wait behind it, they are not bumped): sign a replacement with max fee and
//!   priority fee raised by at least [`PolicyConfig::bump_percent`] (rounded up), store the
//!   attempt, then send it. When the raised fee cap would pass
//!   [`PolicyConfig::max_fee_cap`] it stops bumping and raises the alert
//!   ([`PolicyStats::fee_cap_reached`], `nonce_manager_fee_cap_reached`);
//! - newest attempt **mined**: nothing; the finality stage picks it up.
//!
//! Send outcomes: accepted or "already known"/"already imported" -> sent, stays `Tracking`;
//! "replacement underpriced" -> bumped again next round; "nonce too low" -> the receipts
//! of all attempts are checked: one mined -> `Tracking` (finality confirms it), none ->
//! `Reconciling`. Every write is fenced with the signer's lease token.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledger_lease::{Clock, FencingToken, UnixMillis};
use tokio::task::JoinHandle;

use crate::allocator::Allocator;
use crate::chain::{ChainClient, ChainError, TxLookup};
use crate::error::{AllocateError, StoreError, SubmitError};
use crate::finality::{find_receipt, FinalityView};
use crate::signer::LocalKey;
use crate::store::NonceStore;
use crate::types::{ManagedTransaction, RequestId, TxAttempt, TxPayload, TxStatus};

/// Policy settings.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// How long a transaction may stay unmined since its last attempt before it is acted on.
    pub resubmit_after: Duration,
    /// The node's minimum replacement bump, percent (geth, anvil, hardhat: 10).
    pub bump_percent: u32,
    /// The highest fee cap a bump may sign, wei per gas.
    pub max_fee_cap: u128,
    /// Most `Tracking` records read per round.
    pub scan_limit: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            resubmit_after: Duration::from_secs(60),
            bump_percent: 10,
            max_fee_cap: 500_000_000_000,
            scan_limit: 1024,
        }
    }
}

/// `fee` raised by at least `percent` percent, rounded up, and by at least 1 wei.
pub fn bump_fee(fee: u128, percent: u32) -> u128 {
    let raise = fee.saturating_mul(u128::from(percent)).div_ceil(100).max(1);
    fee.saturating_add(raise)
}

/// Counters and the alert flag (the same events also go to the `metrics` recorder).
#[derive(Debug, Default)]
pub struct PolicyStats {
    /// Replacements signed and sent.
    pub bumps: AtomicU64,
    /// Stored bytes re-broadcast.
    pub rebroadcasts: AtomicU64,
    /// Records moved to `Reconciling`.
    pub reconciling: AtomicU64,
    /// Raised when a bump would pass the fee cap; cleared once no record is stuck there.
    pub fee_cap_reached: AtomicBool,
}

/// What one resubmission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resubmitted {
    /// The node took it (or already had it).
    Sent,
    /// The node wants a higher bump; the next round bumps again.
    Underpriced,
    /// The nonce was used; one of our attempts is mined, the record stays `Tracking`.
    Mined,
    /// The nonce was used by something else: the record is now `Reconciling`.
    Reconciling,
    /// The next bump would pass the fee cap: not sent, alert raised.
    Capped,
}

/// The policy loop for one signer, on the node holding its lease.
#[derive(Debug)]
pub struct PolicyLoop {
    store: Arc<dyn NonceStore>,
    chain: Arc<dyn ChainClient>,
    allocator: Arc<Allocator>,
    key: LocalKey,
    chain_id: u64,
    clock: Arc<dyn Clock>,
    config: PolicyConfig,
    finality: Option<FinalityView>,
    stats: Arc<PolicyStats>,
    bump_next: Mutex<HashSet<RequestId>>,
    last_action: Mutex<HashMap<RequestId, UnixMillis>>,
    capped: Mutex<HashSet<RequestId>>,
}

impl PolicyLoop {
    /// Reads the chain id once. `finality`: the receipts already held, left alone.
    pub async fn new(
        store: Arc<dyn NonceStore>,
        chain: Arc<dyn ChainClient>,
        allocator: Arc<Allocator>,
        key: LocalKey,
        clock: Arc<dyn Clock>,
        config: PolicyConfig,
        finality: Option<FinalityView>,
    ) -> Result<Self, SubmitError> {
        let chain_id = chain.chain_id().await.map_err(SubmitError::Chain)?;
        Ok(Self {
            store,
            chain,
            allocator,
            key,
            chain_id,
            clock,
            config,
            finality,
            stats: Arc::new(PolicyStats::default()),
            bump_next: Mutex::new(HashSet::new()),
            last_action: Mutex::new(HashMap::new()),
            capped: Mutex::new(HashSet::new()),
        })
    }

    /// Counters and the alert flag.
    pub fn stats(&self) -> Arc<PolicyStats> {
        self.stats.clone()
    }

    /// Runs rounds every [`PolicyConfig::interval`] until fenced or the lease is lost.
    pub fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        let (allocator, interval) = (self.allocator.clone(), self.config.interval);
        crate::allocator::spawn_rounds(
            allocator,
            interval,
            "policy",
            || {},
            move || {
                let policy = self.clone();
                async move { policy.run_once().await }
            },
        )
    }

    /// One round over the signer's `Tracking` records.
    pub async fn run_once(&self) -> Result<(), SubmitError> {
        let signer = self.allocator.signer();
        let records = self
            .store
            .transactions_with_status(signer, TxStatus::Tracking, self.config.scan_limit)
            .await?;
        let now = self.clock.now();
        let stale_ms = i64::try_from(self.config.resubmit_after.as_millis()).unwrap_or(i64::MAX);
        let mut next_to_mine = None;
        let present: HashSet<RequestId> = records.iter().map(|r| r.request_id.clone()).collect();
        self.lock_last_action().retain(|id, _| present.contains(id));
        self.lock_capped().retain(|id| present.contains(id));
        for record in records {
            if let Some(view) = &self.finality {
                if view.receipt(&record.request_id).is_some() {
                    self.lock_capped().remove(&record.request_id);
                    continue;
                }
            }
            let Some(last) = record.attempts.last() else {
                continue;
            };
            let forced = self.lock_bump_next().remove(&record.request_id);
            let acted = self
                .lock_last_action()
                .get(&record.request_id)
                .copied()
                .unwrap_or(last.sent_at)
                .max(last.sent_at);
            if !forced && now.0.saturating_sub(acted.0) < stale_ms {
                continue;
            }
            let outcome = match self
                .chain
                .transaction_lookup(last.hash)
                .await
                .map_err(SubmitError::Chain)?
            {
                TxLookup::Mined(_) => continue,
                TxLookup::Unknown => self.rebroadcast(&record).await?,
                TxLookup::Pending => {
                    let next = match next_to_mine {
                        Some(next) => next,
                        None => {
                            let next = self
                                .chain
                                .latest_nonce(signer)
                                .await
                                .map_err(SubmitError::Chain)?;
                            next_to_mine = Some(next);
                            next
                        }
                    };
                    if record.nonce != next {
                        continue;
                    }
                    if record.payload.is_external() {
                        // Signed elsewhere: only its signer can replace it.
                        tracing::debug!(request_id = %record.request_id, "externally signed transaction pending; not bumped");
                        continue;
                    }
                    self.bump(&record).await?
                }
            };
            if outcome == Resubmitted::Capped {
                self.lock_capped().insert(record.request_id.clone());
            } else {
                self.lock_capped().remove(&record.request_id);
            }
            self.lock_last_action()
                .insert(record.request_id.clone(), self.clock.now());
        }
        // The alert stays up while any record is stuck at the cap.
        let stuck = !self.lock_capped().is_empty();
        self.set_alert(stuck);
        Ok(())
    }

    /// Re-broadcasts the newest stored attempt byte for byte.
    pub async fn rebroadcast(
        &self,
        record: &ManagedTransaction,
    ) -> Result<Resubmitted, SubmitError> {
        let Some(last) = record.attempts.last() else {
            return Ok(Resubmitted::Sent);
        };
        self.stats.rebroadcasts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("nonce_manager_resubmissions_total", "kind" => "rebroadcast")
            .increment(1);
        tracing::info!(request_id = %record.request_id, hash = %last.hash, "re-broadcasting dropped transaction");
        let result = self.chain.send_raw_transaction(&last.raw).await;
        self.settle(record, &record.attempts, result).await
    }

    /// Signs, stores, then sends a replacement with fees bumped from the newest attempt.
    /// Refuses an external allocation (AllocateNonce): its transactions are signed by the
    /// caller, and the manager holds no payload to sign a replacement from.
    pub async fn bump(&self, record: &ManagedTransaction) -> Result<Resubmitted, SubmitError> {
        if record.payload.is_external() {
            return Err(SubmitError::Precondition(format!(
                "request {} was signed elsewhere; only its signer can replace it",
                record.request_id
            )));
        }
        let (max_fee, priority_fee) = match record.attempts.last() {
            Some(last) => (last.max_fee_per_gas, last.max_priority_fee_per_gas),
            None => (
                record.payload.max_fee_per_gas,
                record.payload.max_priority_fee_per_gas,
            ),
        };
        let new_max = bump_fee(max_fee, self.config.bump_percent);
        if new_max > self.config.max_fee_cap {
            tracing::warn!(request_id = %record.request_id, max_fee, cap = self.config.max_fee_cap, "fee cap reached; not bumping");
            metrics::counter!("nonce_manager_fee_cap_alerts_total").increment(1);
            self.lock_capped().insert(record.request_id.clone());
            self.set_alert(true);
            return Ok(Resubmitted::Capped);
        }
        let new_priority = bump_fee(priority_fee, self.config.bump_percent).min(new_max);
        let payload = TxPayload {
            max_fee_per_gas: new_max,
            max_priority_fee_per_gas: new_priority,
            ..record.payload.clone()
        };
        let signed = self
            .key
            .sign(self.chain_id, record.nonce, &payload)
            .map_err(SubmitError::Sign)?;
        let attempt = TxAttempt {
            hash: signed.hash,
            max_fee_per_gas: new_max,
            max_priority_fee_per_gas: new_priority,
            raw: signed.raw.into(),
            sent_at: self.clock.now(),
        };
        self.store
            .record_attempt(self.signer(), self.token()?, &record.request_id, &attempt)
            .await?;
        self.stats.bumps.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("nonce_manager_resubmissions_total", "kind" => "bump").increment(1);
        tracing::info!(request_id = %record.request_id, nonce = record.nonce, new_max, new_priority, "bumped");
        let result = self.chain.send_raw_transaction(&attempt.raw).await;
        let mut attempts = record.attempts.clone();
        attempts.push(attempt);
        self.settle(record, &attempts, result).await
    }

    async fn settle(
        &self,
        record: &ManagedTransaction,
        attempts: &[TxAttempt],
        result: Result<alloy_primitives::B256, ChainError>,
    ) -> Result<Resubmitted, SubmitError> {
        let outcome = match result {
            Ok(_) | Err(ChainError::AlreadyKnown) => Resubmitted::Sent,
            Err(ChainError::ReplacementUnderpriced) => {
                self.lock_bump_next().insert(record.request_id.clone());
                return Ok(Resubmitted::Underpriced);
            }
            Err(ChainError::NonceTooLow) => {
                let all = ManagedTransaction {
                    attempts: attempts.to_vec(),
                    ..record.clone()
                };
                if find_receipt(self.chain.as_ref(), &all).await.is_some() {
                    Resubmitted::Mined
                } else {
                    tracing::warn!(request_id = %record.request_id, nonce = record.nonce, "nonce used by another transaction");
                    self.stats.reconciling.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("nonce_manager_reconciling_total").increment(1);
                    self.set_status(record, TxStatus::Reconciling).await?;
                    return Ok(Resubmitted::Reconciling);
                }
            }
            Err(error) => return Err(SubmitError::Chain(error)),
        };
        self.set_status(record, TxStatus::Tracking).await?;
        Ok(outcome)
    }

    async fn set_status(
        &self,
        record: &ManagedTransaction,
        status: TxStatus,
    ) -> Result<(), SubmitError> {
        match self
            .store
            .set_status(self.signer(), self.token()?, &record.request_id, status)
            .await
        {
            Ok(_) => Ok(()),
            // Finality moved it on (Confirmed) in between: its decision stands.
            Err(StoreError::InvalidTransition { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn set_alert(&self, on: bool) {
        self.stats.fee_cap_reached.store(on, Ordering::SeqCst);
        metrics::gauge!("nonce_manager_fee_cap_reached").set(if on { 1.0 } else { 0.0 });
    }

    fn signer(&self) -> alloy_primitives::Address {
        self.allocator.signer()
    }

    fn token(&self) -> Result<FencingToken, SubmitError> {
        self.allocator
            .token()
            .ok_or_else(|| AllocateError::LeaseLost(self.signer()).into())
    }

    fn lock_bump_next(&self) -> std::sync::MutexGuard<'_, HashSet<RequestId>> {
        self.bump_next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_capped(&self) -> std::sync::MutexGuard<'_, HashSet<RequestId>> {
        self.capped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_last_action(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, UnixMillis>> {
        self.last_action
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::bump_fee;

    #[test]
    fn bumps_round_up_by_at_least_the_percentage() {
        assert_eq!(bump_fee(100, 10), 110);
        assert_eq!(bump_fee(101, 10), 112);
        assert_eq!(bump_fee(1, 10), 2);
        assert_eq!(bump_fee(0, 10), 1);
        assert_eq!(bump_fee(2_000_000_000, 10), 2_200_000_000);
        assert_eq!(bump_fee(u128::MAX, 10), u128::MAX);
        for fee in [7u128, 999, 123_456_789] {
            assert!(bump_fee(fee, 12) * 100 >= fee * 112);
        }
    }
}
