//! The server's own SQL next to nonce-manager's tables, on the same pool: the heartbeat
//! table that defines membership, the paged listing, and the change feed for events. The
//! same SQL text runs on both backends (`$N` placeholders work in sqlx's SQLite driver).

use std::sync::Arc;

use alloy_primitives::Address;
use ledger_lease::{Clock, LeaseStore, UnixMillis};
use nonce_manager::store::postgres::PostgresNonceStore;
use nonce_manager::store::sqlite::SqliteNonceStore;
use nonce_manager::store::NonceStore;
use nonce_manager::{StoreError, TxStatus};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::config::StoreLocation;

/// One pool, whichever backend.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS nonce_node (
    node_id TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    address TEXT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL
)",
    "CREATE INDEX IF NOT EXISTS managed_tx_updated ON managed_tx (updated_at_ms)",
];

/// A heartbeat row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRow {
    pub node_id: String,
    pub instance: String,
    pub address: String,
}

/// A changed record, as the event watcher reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChangeRow {
    pub request_id: String,
    pub signer: String,
    pub nonce: u64,
    pub status: TxStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub attempts: u64,
    pub last_hash: Option<String>,
}

/// Opens the nonce and lease stores on one pool and applies the server's schema.
pub(crate) async fn open(
    location: &StoreLocation,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<dyn NonceStore>, Arc<dyn LeaseStore>, Db), StoreError> {
    let (store, leases, db): (Arc<dyn NonceStore>, Arc<dyn LeaseStore>, Db) = match location {
        StoreLocation::Sqlite(path) => {
            let (store, leases) = SqliteNonceStore::connect(path, clock).await?;
            let db = Db::Sqlite(store.pool().clone());
            (Arc::new(store), Arc::new(leases), db)
        }
        StoreLocation::Postgres(url) => {
            let (store, leases) = PostgresNonceStore::connect(url, clock).await?;
            let db = Db::Postgres(store.pool().clone());
            (Arc::new(store), Arc::new(leases), db)
        }
    };
    // `CREATE INDEX IF NOT EXISTS` locks managed_tx before it finds the index exists, which
    // can deadlock with live traffic on PostgreSQL: create only what is missing.
    let present = match &db {
        Db::Sqlite(_) => false,
        Db::Postgres(pool) => {
            sqlx::query_scalar::<_, bool>(
                "SELECT to_regclass('nonce_node') IS NOT NULL
                AND to_regclass('managed_tx_updated') IS NOT NULL",
            )
            .fetch_one(pool)
            .await?
        }
    };
    if !present {
        for statement in SCHEMA {
            on_pool!(&db, pool => sqlx::query(statement).execute(pool).await.map(|_| ()))?;
        }
    }
    Ok((store, leases, db))
}

fn to_u64(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

impl Db {
    /// Writes this node's heartbeat (and address) as of `now`.
    pub async fn beat(&self, member: &MemberRow, now: UnixMillis) -> Result<(), StoreError> {
        let sql = "INSERT INTO nonce_node (node_id, instance, address, heartbeat_at_ms)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (node_id) DO UPDATE SET instance = excluded.instance,
                       address = excluded.address, heartbeat_at_ms = excluded.heartbeat_at_ms";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&member.node_id)
            .bind(&member.instance)
            .bind(&member.address)
            .bind(now.0)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Removes this node's row (a clean stop), so the ring moves its signers at once.
    pub async fn leave(&self, member: &MemberRow) -> Result<(), StoreError> {
        let sql = "DELETE FROM nonce_node WHERE node_id = $1 AND instance = $2";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&member.node_id)
            .bind(&member.instance)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Nodes whose heartbeat is after `since`.
    pub async fn live_members(&self, since: UnixMillis) -> Result<Vec<MemberRow>, StoreError> {
        let sql = "SELECT node_id, instance, address FROM nonce_node
                   WHERE heartbeat_at_ms > $1 ORDER BY node_id";
        let rows: Vec<(String, String, String)> =
            on_pool!(self, pool => sqlx::query_as(sql).bind(since.0).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(node_id, instance, address)| MemberRow {
                node_id,
                instance,
                address,
            })
            .collect())
    }

    /// Request ids of `signer` from nonce `from` on, optionally of one status, by nonce.
    pub async fn list_request_ids(
        &self,
        signer: Address,
        status: Option<TxStatus>,
        from: u64,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let from = i64::try_from(from)
            .map_err(|_| StoreError::Corrupt(format!("nonce {from} exceeds i64")))?;
        let signer = format!("{signer:#x}");
        let rows: Vec<(String, i64)> = match status {
            Some(status) => {
                let sql = "SELECT request_id, nonce FROM managed_tx
                           WHERE signer = $1 AND nonce >= $2 AND status = $3
                           ORDER BY nonce LIMIT $4";
                on_pool!(self, pool => sqlx::query_as(sql)
                    .bind(&signer)
                    .bind(from)
                    .bind(status.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await)?
            }
            None => {
                let sql = "SELECT request_id, nonce FROM managed_tx
                           WHERE signer = $1 AND nonce >= $2 ORDER BY nonce LIMIT $3";
                on_pool!(self, pool => sqlx::query_as(sql)
                    .bind(&signer)
                    .bind(from)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await)?
            }
        };
        rows.into_iter()
            .map(|(id, nonce)| Ok((id, to_u64("nonce", nonce)?)))
            .collect()
    }

    /// Records written at or after `since`, oldest write first, at most
    /// [`crate::config::EVENT_READ_MAX`].
    pub async fn changes_since(&self, since: UnixMillis) -> Result<Vec<ChangeRow>, StoreError> {
        let sql =
            "SELECT m.request_id, m.signer, m.nonce, m.status, m.created_at_ms, m.updated_at_ms,
                       (SELECT COUNT(*) FROM tx_attempt a WHERE a.request_id = m.request_id),
                       (SELECT a.hash FROM tx_attempt a WHERE a.request_id = m.request_id
                        ORDER BY a.seq DESC LIMIT 1)
                   FROM managed_tx m WHERE m.updated_at_ms >= $1
                   ORDER BY m.updated_at_ms LIMIT $2";
        type Row = (String, String, i64, String, i64, i64, i64, Option<String>);
        let rows: Vec<Row> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(since.0)
            .bind(crate::config::EVENT_READ_MAX)
            .fetch_all(pool)
            .await)?;
        rows.into_iter()
            .map(
                |(
                    request_id,
                    signer,
                    nonce,
                    status,
                    created_at_ms,
                    updated_at_ms,
                    attempts,
                    last_hash,
                )| {
                    let status = TxStatus::parse(&status).ok_or_else(|| {
                        StoreError::Corrupt(format!("managed_tx {request_id}: bad status"))
                    })?;
                    Ok(ChangeRow {
                        request_id,
                        signer,
                        nonce: to_u64("nonce", nonce)?,
                        status,
                        created_at_ms,
                        updated_at_ms,
                        attempts: to_u64("count", attempts)?,
                        last_hash,
                    })
                },
            )
            .collect()
    }
}
