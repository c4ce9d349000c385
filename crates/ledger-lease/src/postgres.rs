//! The scale-out lease store: PostgreSQL 14+.
//!
//! Each resource has two rows: a token counter (never deleted) and the lease. `try_acquire`
//! locks the counter row `FOR UPDATE`, then the lease row, in one READ COMMITTED
//! transaction; the fence takes the lease row `FOR SHARE` inside the caller's transaction,
//! so a holder's concurrent writers don't block each other but a takeover waits for all of
//! them, and a write that starts after a takeover sees the new token and is refused.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::clock::Clock;
use crate::error::LeaseError;
use crate::limits;
use crate::store::{
    decide_acquire, fence_verdict, lease_from_row, lease_of, AcquireDecision, LeaseRow, LeaseStore,
};
use crate::types::{check_ttl, FencingToken, HolderId, Lease, ResourceName};

/// The schema, applied at connect; idempotent. Counter rows are never deleted: they are what
/// keeps a released resource's next token above every token issued before.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS ledger_lease_counters (
    resource TEXT PRIMARY KEY,
    last_token BIGINT NOT NULL CHECK (last_token >= 0)
)",
    "CREATE TABLE IF NOT EXISTS ledger_leases (
    resource TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL CHECK (token > 0),
    expires_at_ms BIGINT NOT NULL
)",
];

/// Advisory lock key serialising schema creation when several nodes connect at once
/// (`CREATE TABLE IF NOT EXISTS` races on the catalog otherwise). ASCII "ldgrleas".
const MIGRATION_LOCK_KEY: i64 = 0x6c64_6772_6c65_6173;

/// The fence's read: the resource's current token (`$1` is the resource name), share-locked
/// until the transaction ends so no takeover commits in between. [`fence`] runs it alone; a
/// caller may run it as a sub-select of its own first statement and pass the token to
/// [`crate::fence_verdict`], which saves a round trip on a hot path.
pub const FENCE_TOKEN_SELECT: &str =
    "SELECT token FROM ledger_leases WHERE resource = $1 FOR SHARE";

/// The fence: inside the caller's transaction, refuses with [`LeaseError::Fenced`] unless
/// `token` is `resource`'s current token, and holds the lease row `FOR SHARE` until the
/// transaction ends so no takeover can commit in between. Use READ COMMITTED (the default);
/// under REPEATABLE READ a concurrent takeover makes the fence fail with a serialization
/// error instead, which is also safe.
pub async fn fence(
    conn: &mut PgConnection,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<(), LeaseError> {
    let current: Option<i64> = sqlx::query_scalar(FENCE_TOKEN_SELECT)
        .bind(resource.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    fence_verdict(resource, token, current)
}

/// Creates the lease tables if missing.
pub async fn migrate(pool: &PgPool) -> Result<(), LeaseError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    // One statement per query: `raw_sql` futures are not provably `Send` for callers.
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Leases in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresLeaseStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

impl PostgresLeaseStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies the schema.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, LeaseError> {
        let pool = PgPoolOptions::new()
            .max_connections(limits::POOL_CONNECTIONS_MAX)
            .connect(url)
            .await?;
        Self::from_pool(pool, clock).await
    }

    /// Uses the caller's pool so lease rows and the caller's rows share transactions;
    /// applies the schema.
    pub async fn from_pool(pool: PgPool, clock: Arc<dyn Clock>) -> Result<Self, LeaseError> {
        migrate(&pool).await?;
        Ok(Self { pool, clock })
    }

    /// The pool, for the caller's own fenced transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction that has passed the fence for `token`; run the writes on
    /// `&mut *tx`, then commit.
    pub async fn begin_fenced(
        &self,
        resource: &ResourceName,
        token: FencingToken,
    ) -> Result<Transaction<'static, Postgres>, LeaseError> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, resource, token).await?;
        Ok(tx)
    }
}

#[async_trait]
impl LeaseStore for PostgresLeaseStore {
    async fn try_acquire(
        &self,
        resource: &ResourceName,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        check_ttl(ttl)?;
        let mut tx = self.pool.begin().await?;
        // The counter row is the per-resource lock that orders every acquire; inserting it
        // first means two first-ever acquires also meet on it (the second waits on the key).
        sqlx::query(
            "INSERT INTO ledger_lease_counters (resource, last_token) VALUES ($1, 0)
             ON CONFLICT (resource) DO NOTHING",
        )
        .bind(resource.as_str())
        .execute(&mut *tx)
        .await?;
        let last_token: Option<i64> = sqlx::query_scalar(
            "SELECT last_token FROM ledger_lease_counters WHERE resource = $1 FOR UPDATE",
        )
        .bind(resource.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        // FOR UPDATE waits for fenced writers (FOR SHARE) of the current tenure to commit.
        let row = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT holder, token, expires_at_ms FROM ledger_leases WHERE resource = $1 FOR UPDATE",
        )
        .bind(resource.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(|(holder, token, expires_at_ms)| LeaseRow {
            holder,
            token,
            expires_at_ms,
        });
        // Read after the row locks: nobody can change the rows between this and commit.
        let now = self.clock.now();
        let decision =
            decide_acquire(resource, row.as_ref(), last_token.unwrap_or(0), holder, now)?;
        let lease = match decision {
            AcquireDecision::Refuse => return Ok(None),
            AcquireDecision::Renew(token) => {
                let lease = lease_of(resource, holder, token, now, ttl);
                sqlx::query("UPDATE ledger_leases SET expires_at_ms = $2 WHERE resource = $1")
                    .bind(resource.as_str())
                    .bind(lease.expires_at.0)
                    .execute(&mut *tx)
                    .await?;
                lease
            }
            AcquireDecision::Grant(token) => {
                let lease = lease_of(resource, holder, token, now, ttl);
                sqlx::query(
                    "INSERT INTO ledger_lease_counters (resource, last_token) VALUES ($1, $2)
                     ON CONFLICT (resource) DO UPDATE SET last_token = excluded.last_token",
                )
                .bind(resource.as_str())
                .bind(token.get())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO ledger_leases (resource, holder, token, expires_at_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (resource) DO UPDATE SET holder = excluded.holder,
                         token = excluded.token, expires_at_ms = excluded.expires_at_ms",
                )
                .bind(resource.as_str())
                .bind(holder.as_str())
                .bind(token.get())
                .bind(lease.expires_at.0)
                .execute(&mut *tx)
                .await?;
                lease
            }
        };
        tx.commit().await?;
        Ok(Some(lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        check_ttl(ttl)?;
        let mut tx = self.pool.begin().await?;
        let now = self.clock.now();
        let renewed = lease_of(&lease.resource, &lease.holder, lease.token, now, ttl);
        let updated = sqlx::query(
            "UPDATE ledger_leases SET expires_at_ms = $4
             WHERE resource = $1 AND holder = $2 AND token = $3",
        )
        .bind(lease.resource.as_str())
        .bind(lease.holder.as_str())
        .bind(lease.token.get())
        .bind(renewed.expires_at.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(LeaseError::Lost {
                resource: lease.resource.clone(),
                token: lease.token,
            });
        }
        tx.commit().await?;
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM ledger_leases WHERE resource = $1 AND holder = $2 AND token = $3",
        )
        .bind(lease.resource.as_str())
        .bind(lease.holder.as_str())
        .bind(lease.token.get())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn current(&self, resource: &ResourceName) -> Result<Option<Lease>, LeaseError> {
        let row = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT holder, token, expires_at_ms FROM ledger_leases WHERE resource = $1",
        )
        .bind(resource.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((holder, token, expires_at_ms)) = row else {
            return Ok(None);
        };
        let lease = lease_from_row(
            resource,
            LeaseRow {
                holder,
                token,
                expires_at_ms,
            },
        )?;
        Ok(lease.is_live_at(self.clock.now()).then_some(lease))
    }

    async fn check_fence(
        &self,
        resource: &ResourceName,
        token: FencingToken,
    ) -> Result<(), LeaseError> {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT token FROM ledger_leases WHERE resource = $1")
                .bind(resource.as_str())
                .fetch_optional(&self.pool)
                .await?;
        fence_verdict(resource, token, current)
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }
}
