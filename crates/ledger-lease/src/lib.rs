//! Leases with fencing tokens over SQL, shared by AXS (one fenced leader per partition) and
//! the nonce manager (one node owns a signer at a time).
//!
//! A [`Lease`] is `(resource, holder, fencing token, expires_at)`. [`LeaseStore`] grants,
//! renews and releases leases; [`LeaseManager`] keeps one alive in the background and reports
//! its loss on a watch channel. Two stores: [`sqlite::SqliteLeaseStore`] (the embedded
//! default, one file in WAL mode) and [`postgres::PostgresLeaseStore`] (scale-out).
//!
//! # Fencing: what makes it safe
//!
//! Leases expire by time, and time lies (GC pauses, skewed clocks, a stalled VM). Safety
//! therefore never rests on expiry: every write a holder makes to shared state runs in a
//! transaction that first calls the backend's `fence` function ([`sqlite::fence`],
//! [`postgres::fence`]) with its token. The fence locks the lease row for the rest of the
//! caller's transaction and refuses with [`LeaseError::Fenced`] unless the token is still the
//! current one, so a takeover (which must lock the same row to bump the token) is ordered
//! entirely before or entirely after each fenced write. A stale holder's write is refused;
//! it cannot land after a newer holder's.
//!
//! ```no_run
//! # async fn example(store: ledger_lease::sqlite::SqliteLeaseStore, lease: ledger_lease::Lease)
//! # -> Result<(), ledger_lease::LeaseError> {
//! // Holds the SQLite write lock (BEGIN IMMEDIATE) and has checked the token.
//! let mut tx = store.begin_fenced(&lease.resource, lease.token).await?;
//! sqlx::query("UPDATE nonces SET next = next + 1, fencing_token = ?1 WHERE signer = ?2")
//!     .bind(lease.token.get())
//!     .bind(lease.resource.as_str())
//!     .execute(&mut *tx)
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # Clock choice
//!
//! All expiry decisions use the store's [`Clock`] (the caller's clock), never the database's:
//! the same code runs on SQLite, which has no server clock, and tests drive time with
//! [`ManualClock`]. Assumption: the clocks of the nodes sharing a database differ by less
//! than a bound the operator sets as [`LeaseManagerConfig::safety_margin`], which must be
//! well under the TTL. Skew beyond it can only cost liveness or let two nodes *believe* they
//! hold a lease at once; it cannot let a stale fenced write through, because the fence
//! compares tokens, not times. Side effects outside the database (broadcasting a
//! transaction) are not fenced: a holder stops them when [`LeaseManager`] reports loss,
//! which it does `safety_margin` before the lease's expiry if renewal has not succeeded.

mod clock;
mod error;
pub mod limits;
mod manager;
pub mod postgres;
pub mod sqlite;
mod store;
mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::LeaseError;
pub use manager::{LeaseGuard, LeaseManager, LeaseManagerConfig, LeaseState, LossReason};
pub use store::{fence_verdict, LeaseStore};
pub use types::{FencingToken, HolderId, Lease, ResourceName, UnixMillis};
