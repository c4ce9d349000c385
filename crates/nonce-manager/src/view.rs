//! The per-signer view the API serves: where a signer's nonces stand, who holds its lease,
//! and whether its key was seen used elsewhere.

use std::time::Duration;

use alloy_primitives::Address;
use ledger_lease::{FencingToken, HolderId, LeaseError, LeaseStore, UnixMillis};
use serde::Serialize;

use crate::chain::{ChainClient, ChainError};
use crate::error::StoreError;
use crate::reconcile::{signer_label, ReconcileStats};
use crate::store::NonceStore;
use crate::types::signer_resource;

/// One signer at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignerView {
    /// The signer.
    pub signer: Address,
    /// The next nonce an allocation would get: `max(stored next nonce, chain pending)`
    /// (the chain part only when a chain client was given and answered).
    pub next_nonce: u64,
    /// Records `Pending` or `Tracking`.
    pub in_flight: u64,
    /// Age of the oldest in-flight record (`Pending` or `Tracking`, i.e. not yet final),
    /// from its allocation; `None` when nothing is in flight.
    pub oldest_pending_age_ms: Option<u64>,
    /// Highest nonce of a `Confirmed` record.
    pub last_confirmed_nonce: Option<u64>,
    /// Who holds the signer's lease now.
    pub lease_holder: Option<String>,
    /// The live lease's fencing token.
    pub fencing_token: Option<i64>,
    /// Drift: the chain's pending nonce is past the stored next nonce, a record is
    /// `Reconciling`, or the reconciler's alert is up.
    pub drift_alert: bool,
}

/// Why the view could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The nonce store failed.
    #[error("nonce store")]
    Store(#[from] StoreError),
    /// The lease store failed.
    #[error("lease store")]
    Lease(#[from] LeaseError),
}

/// Where the reconciler's alert comes from, when this node runs one for the signer.
#[derive(Debug, Clone, Copy)]
pub struct DriftSource<'a> {
    /// The reconciler's stats.
    pub stats: &'a ReconcileStats,
    /// [`crate::reconcile::ReconcileConfig::alert_hold`].
    pub hold: Duration,
}

/// Computes the [`SignerView`] of `signer` from the store, the lease store and (optionally)
/// the chain's pending nonce; a chain error is logged and the chain part left out. Also
/// sets the gauges `nonce_manager_in_flight{signer}` and
/// `nonce_manager_oldest_in_flight_age_seconds{signer}`.
pub async fn signer_view(
    store: &dyn NonceStore,
    leases: &dyn LeaseStore,
    chain: Option<&dyn ChainClient>,
    drift: Option<DriftSource<'_>>,
    signer: Address,
) -> Result<SignerView, ViewError> {
    let now = leases.clock().now();
    let stored_next = store.next_nonce(signer).await?;
    let summary = store.signer_summary(signer).await?;
    let lease = leases.current(&signer_resource(signer)).await?;
    let chain_pending = match chain {
        Some(chain) => match chain.pending_nonce(signer).await {
            Ok(pending) => Some(pending),
            Err(error) => {
                log_chain(signer, &error);
                None
            }
        },
        None => None,
    };
    let oldest_pending_age_ms = summary.oldest_in_flight.map(|created| age_ms(now, created));
    let chain_ahead = match (chain_pending, stored_next) {
        (Some(pending), Some(stored)) => pending > stored,
        _ => false,
    };
    let reconciler_alert = drift.is_some_and(|drift| drift.stats.drift_alert(now, drift.hold));
    let label = signer_label(signer);
    metrics::gauge!("nonce_manager_in_flight", "signer" => label.clone())
        .set(summary.in_flight as f64);
    metrics::gauge!("nonce_manager_oldest_in_flight_age_seconds", "signer" => label)
        .set(oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
    Ok(SignerView {
        signer,
        next_nonce: stored_next.unwrap_or(0).max(chain_pending.unwrap_or(0)),
        in_flight: summary.in_flight,
        oldest_pending_age_ms,
        last_confirmed_nonce: summary.last_confirmed_nonce,
        lease_holder: lease
            .as_ref()
            .map(|lease| HolderId::as_str(&lease.holder).to_owned()),
        fencing_token: lease.as_ref().map(|lease| FencingToken::get(lease.token)),
        drift_alert: chain_ahead || summary.reconciling > 0 || reconciler_alert,
    })
}

fn age_ms(now: UnixMillis, then: UnixMillis) -> u64 {
    u64::try_from(now.0.saturating_sub(then.0)).unwrap_or(0)
}

fn log_chain(signer: Address, error: &ChainError) {
    tracing::warn!(%signer, %error, "signer view: chain pending nonce unavailable");
}
