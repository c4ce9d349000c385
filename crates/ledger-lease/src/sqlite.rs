//! The embedded lease store: one SQLite file in WAL mode.
//!
//! SQLite has one writer at a time, so every lease operation and every fenced write runs in
//! a `BEGIN IMMEDIATE` transaction, which takes the write lock up front: the check and the
//! write that depends on it cannot be split by another writer. `synchronous=FULL` makes a
//! committed token counter survive power loss; with `NORMAL` the last commits could roll
//! back and a token be issued twice.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

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
    resource TEXT PRIMARY KEY NOT NULL,
    last_token INTEGER NOT NULL CHECK (last_token >= 0)
)",
    "CREATE TABLE IF NOT EXISTS ledger_leases (
    resource TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL CHECK (token > 0),
    expires_at_ms INTEGER NOT NULL
)",
];

/// The connection settings every pool on a lease database must use: WAL, `synchronous=FULL`,
/// a busy timeout. Build the caller's own pool from these to share the file.
pub fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(limits::SQLITE_BUSY_TIMEOUT)
}

/// Starts a transaction holding SQLite's write lock. Fenced writes must run in one: a plain
/// (deferred) `BEGIN` would fail on lock upgrade under contention instead of waiting.
pub async fn begin_immediate(
    pool: &SqlitePool,
) -> Result<Transaction<'static, Sqlite>, LeaseError> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// The fence: inside the caller's `BEGIN IMMEDIATE` transaction, refuses with
/// [`LeaseError::Fenced`] unless `token` is `resource`'s current token. The write lock the
/// transaction holds keeps any takeover out until it commits or rolls back.
///
/// It is a no-op conditional `UPDATE`, so even in a deferred transaction it takes the write
/// lock at once (or fails on a stale snapshot); it never lets a stale token through.
pub async fn fence(
    conn: &mut SqliteConnection,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<(), LeaseError> {
    let updated =
        sqlx::query("UPDATE ledger_leases SET token = token WHERE resource = ?1 AND token = ?2")
            .bind(resource.as_str())
            .bind(token.get())
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if updated == 1 {
        return Ok(());
    }
    let current: Option<i64> =
        sqlx::query_scalar("SELECT token FROM ledger_leases WHERE resource = ?1")
            .bind(resource.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    fence_verdict(resource, token, current)?;
    Err(LeaseError::Corrupt(format!(
        "fence on {resource}: token {token} matched on read but not on update"
    )))
}

/// Creates the lease tables if missing.
pub async fn migrate(pool: &SqlitePool) -> Result<(), LeaseError> {
    let mut tx = begin_immediate(pool).await?;
    // One statement per query: `raw_sql` futures are not provably `Send` for callers.
    for statement in SCHEMA {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Leases in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteLeaseStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
}

impl SqliteLeaseStore {
    /// Opens (creating if missing) the database at `path` and applies the schema.
    pub async fn connect(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, LeaseError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(limits::POOL_CONNECTIONS_MAX)
            .connect_with(connect_options(path))
            .await?;
        Self::from_pool(pool, clock).await
    }

    /// Uses the caller's pool (built from [`connect_options`]) so lease rows and the caller's
    /// rows share transactions; applies the schema.
    pub async fn from_pool(pool: SqlitePool, clock: Arc<dyn Clock>) -> Result<Self, LeaseError> {
        migrate(&pool).await?;
        Ok(Self { pool, clock })
    }

    /// The pool, for the caller's own fenced transactions.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a write transaction that has passed the fence for `token`; run the writes on
    /// `&mut *tx`, then commit.
    pub async fn begin_fenced(
        &self,
        resource: &ResourceName,
        token: FencingToken,
    ) -> Result<Transaction<'static, Sqlite>, LeaseError> {
        let mut tx = begin_immediate(&self.pool).await?;
        fence(&mut tx, resource, token).await?;
        Ok(tx)
    }
}

#[async_trait]
impl LeaseStore for SqliteLeaseStore {
    async fn try_acquire(
        &self,
        resource: &ResourceName,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        check_ttl(ttl)?;
        let mut tx = begin_immediate(&self.pool).await?;
        let last_token: Option<i64> =
            sqlx::query_scalar("SELECT last_token FROM ledger_lease_counters WHERE resource = ?1")
                .bind(resource.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let row = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT holder, token, expires_at_ms FROM ledger_leases WHERE resource = ?1",
        )
        .bind(resource.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(|(holder, token, expires_at_ms)| LeaseRow {
            holder,
            token,
            expires_at_ms,
        });
        // Read after BEGIN IMMEDIATE: nobody can change the rows between this and commit.
        let now = self.clock.now();
        let decision =
            decide_acquire(resource, row.as_ref(), last_token.unwrap_or(0), holder, now)?;
        let lease = match decision {
            AcquireDecision::Refuse => return Ok(None),
            AcquireDecision::Renew(token) => {
                let lease = lease_of(resource, holder, token, now, ttl);
                sqlx::query("UPDATE ledger_leases SET expires_at_ms = ?2 WHERE resource = ?1")
                    .bind(resource.as_str())
                    .bind(lease.expires_at.0)
                    .execute(&mut *tx)
                    .await?;
                lease
            }
            AcquireDecision::Grant(token) => {
                let lease = lease_of(resource, holder, token, now, ttl);
                sqlx::query(
                    "INSERT INTO ledger_lease_counters (resource, last_token) VALUES (?1, ?2)
                     ON CONFLICT (resource) DO UPDATE SET last_token = excluded.last_token",
                )
                .bind(resource.as_str())
                .bind(token.get())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO ledger_leases (resource, holder, token, expires_at_ms)
                     VALUES (?1, ?2, ?3, ?4)
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
        let mut tx = begin_immediate(&self.pool).await?;
        let now = self.clock.now();
        let renewed = lease_of(&lease.resource, &lease.holder, lease.token, now, ttl);
        let updated = sqlx::query(
            "UPDATE ledger_leases SET expires_at_ms = ?4
             WHERE resource = ?1 AND holder = ?2 AND token = ?3",
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
        let mut tx = begin_immediate(&self.pool).await?;
        let deleted = sqlx::query(
            "DELETE FROM ledger_leases WHERE resource = ?1 AND holder = ?2 AND token = ?3",
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
            "SELECT holder, token, expires_at_ms FROM ledger_leases WHERE resource = ?1",
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
            sqlx::query_scalar("SELECT token FROM ledger_leases WHERE resource = ?1")
                .bind(resource.as_str())
                .fetch_optional(&self.pool)
                .await?;
        fence_verdict(resource, token, current)
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;
    fn is_send<T: Send>(_: T) {}
    #[allow(dead_code)]
    fn futures_are_send(
        pool: SqlitePool,
        clock: Arc<dyn Clock>,
        path: &Path,
        conn: &mut SqliteConnection,
        r: &ResourceName,
    ) {
        is_send(migrate(&pool));
        is_send(begin_immediate(&pool));
        is_send(fence(conn, r, FencingToken(1)));
        is_send(SqliteLeaseStore::connect(path, clock.clone()));
        is_send(SqliteLeaseStore::from_pool(pool, clock));
    }
}
