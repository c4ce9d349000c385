//! The [`LeaseStore`] boundary and the pure decision both SQL stores share: given the locked
//! lease row and the per-resource token counter, what does `try_acquire` do.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::error::LeaseError;
use crate::types::{FencingToken, HolderId, Lease, ResourceName, UnixMillis};

/// Grants, renews and releases leases with fencing tokens. One implementation per database;
/// all pass the conformance suite in the `test-support` crate.
///
/// Time is the store's [`Clock`], read after the resource's row lock is taken.
#[async_trait]
pub trait LeaseStore: Send + Sync + std::fmt::Debug {
    /// Takes `resource` for `holder` for `ttl`, or returns `None` while another holder's lease
    /// is live.
    ///
    /// - free, released, or expired (even the same holder's): a new tenure whose token is
    ///   strictly greater than any token ever issued for `resource`;
    /// - live and already `holder`'s: a renewal that keeps the token.
    async fn try_acquire(
        &self,
        resource: &ResourceName,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError>;

    /// Extends `lease` to `now + ttl`, keeping its token. Fails with [`LeaseError::Lost`] when
    /// the token is no longer current (taken over or released). An expired lease that nobody
    /// took over is still the holder's: its token still passes the fence, so it renews.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError>;

    /// Gives `lease` up so another holder may take it at once. Returns false when it was
    /// already lost; the token counter is kept, so the token is never issued again.
    async fn release(&self, lease: &Lease) -> Result<bool, LeaseError>;

    /// The live lease on `resource`, if any.
    async fn current(&self, resource: &ResourceName) -> Result<Option<Lease>, LeaseError>;

    /// Checks outside any transaction that `token` is `resource`'s current token. Advisory
    /// only: the answer can be stale by the time the caller acts. Writes must use the
    /// backend's `fence` inside their own transaction instead.
    async fn check_fence(
        &self,
        resource: &ResourceName,
        token: FencingToken,
    ) -> Result<(), LeaseError>;

    /// The clock every expiry decision of this store uses.
    fn clock(&self) -> Arc<dyn Clock>;
}

/// A lease row as read under lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub holder: String,
    pub token: i64,
    pub expires_at_ms: i64,
}

/// What `try_acquire` does, decided from the locked state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireDecision {
    /// Another holder's lease is live.
    Refuse,
    /// The caller's own live lease: extend it, keep the token.
    Renew(FencingToken),
    /// Free or expired: start a new tenure with this token (also the new counter value).
    Grant(FencingToken),
}

/// Decides `try_acquire`. `last_token` is the per-resource counter; the row's token is
/// folded in too so a counter row edited by hand can never cause a token to be reused.
pub(crate) fn decide_acquire(
    resource: &ResourceName,
    row: Option<&LeaseRow>,
    last_token: i64,
    holder: &HolderId,
    now: UnixMillis,
) -> Result<AcquireDecision, LeaseError> {
    if let Some(row) = row {
        if now.0 < row.expires_at_ms {
            return Ok(if row.holder == holder.as_str() {
                AcquireDecision::Renew(FencingToken(row.token))
            } else {
                AcquireDecision::Refuse
            });
        }
    }
    let highest_issued = row.map_or(last_token, |row| row.token.max(last_token));
    let next = highest_issued
        .checked_add(1)
        .ok_or_else(|| LeaseError::TokenExhausted(resource.clone()))?;
    debug_assert!(next > 0);
    Ok(AcquireDecision::Grant(FencingToken(next)))
}

/// Builds the lease a decision grants or renews.
pub(crate) fn lease_of(
    resource: &ResourceName,
    holder: &HolderId,
    token: FencingToken,
    now: UnixMillis,
    ttl: Duration,
) -> Lease {
    Lease {
        resource: resource.clone(),
        holder: holder.clone(),
        token,
        expires_at: now.saturating_add(ttl),
    }
}

/// Turns a stored row into a [`Lease`], checking what the schema cannot.
pub(crate) fn lease_from_row(resource: &ResourceName, row: LeaseRow) -> Result<Lease, LeaseError> {
    if row.token <= 0 {
        return Err(LeaseError::Corrupt(format!(
            "lease on {resource} has token {}",
            row.token
        )));
    }
    let holder = HolderId::new(row.holder)
        .map_err(|error| LeaseError::Corrupt(format!("lease on {resource}: {error}")))?;
    Ok(Lease {
        resource: resource.clone(),
        holder,
        token: FencingToken(row.token),
        expires_at: UnixMillis(row.expires_at_ms),
    })
}

/// The fence verdict from the current token (`None`: nobody holds the resource). Public for
/// callers that read the token inside a statement of their own (see
/// `postgres::FENCE_TOKEN_SELECT`) to save a round trip.
pub fn fence_verdict(
    resource: &ResourceName,
    presented: FencingToken,
    current: Option<i64>,
) -> Result<(), LeaseError> {
    match current {
        Some(current) if current == presented.0 => Ok(()),
        current => Err(LeaseError::Fenced {
            resource: resource.clone(),
            presented,
            current: current.map(FencingToken),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(row: Option<(&str, i64, i64)>, last_token: i64, now: i64, expect: AcquireDecision) {
        let resource = ResourceName::new("r").expect("valid name");
        let holder = HolderId::new("me").expect("valid id");
        let row = row.map(|(holder, token, expires_at_ms)| LeaseRow {
            holder: holder.to_owned(),
            token,
            expires_at_ms,
        });
        let got = decide_acquire(
            &resource,
            row.as_ref(),
            last_token,
            &holder,
            UnixMillis(now),
        )
        .expect("decision");
        assert_eq!(got, expect, "row {row:?} last {last_token} now {now}");
    }

    #[test]
    fn acquire_decisions() {
        use AcquireDecision::*;
        let t = FencingToken;
        check(None, 0, 100, Grant(t(1)));
        check(None, 7, 100, Grant(t(8)));
        check(Some(("other", 3, 200)), 3, 100, Refuse);
        check(Some(("me", 3, 200)), 3, 100, Renew(t(3)));
        // Expiry is exclusive: at `expires_at` the lease is over.
        check(Some(("other", 3, 200)), 3, 200, Grant(t(4)));
        // The same holder after expiry starts a new tenure too.
        check(Some(("me", 3, 200)), 3, 300, Grant(t(4)));
        // A counter behind the row (edited by hand) cannot make a token repeat.
        check(Some(("other", 9, 200)), 2, 300, Grant(t(10)));
    }

    #[test]
    fn token_exhaustion_is_an_error() {
        let resource = ResourceName::new("r").expect("valid name");
        let holder = HolderId::new("me").expect("valid id");
        let got = decide_acquire(&resource, None, i64::MAX, &holder, UnixMillis(0));
        assert!(matches!(got, Err(LeaseError::TokenExhausted(_))));
    }

    #[test]
    fn fence_verdicts() {
        let resource = ResourceName::new("r").expect("valid name");
        assert!(fence_verdict(&resource, FencingToken(4), Some(4)).is_ok());
        assert!(fence_verdict(&resource, FencingToken(3), Some(4)).is_err());
        assert!(fence_verdict(&resource, FencingToken(5), Some(4)).is_err());
        assert!(fence_verdict(&resource, FencingToken(4), None).is_err());
    }
}
