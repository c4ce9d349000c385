//! The embedded nonce store: the same SQLite file (WAL, `synchronous=FULL`) as the lease
//! tables, so a fenced write and the fence are one `BEGIN IMMEDIATE` transaction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use alloy_primitives::Address;
use ledger_lease::sqlite::SqliteLeaseStore;
use ledger_lease::{Clock, FencingToken};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};

use crate::error::StoreError;
use crate::store::{
    plan_allocations, stored_allocation, to_i64, to_u64, AllocationBatch, NewAllocation,
};
use crate::types::{signer_key, signer_resource, TxStatus};

/// Most connections the store opens; SQLite has one writer anyway.
const POOL_CONNECTIONS_MAX: u32 = 8;

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS signer_nonce (
    signer TEXT PRIMARY KEY NOT NULL,
    next_nonce INTEGER NOT NULL CHECK (next_nonce >= 0),
    fencing_token INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
)",
    "CREATE TABLE IF NOT EXISTS managed_tx (
    request_id TEXT PRIMARY KEY NOT NULL,
    signer TEXT NOT NULL,
    nonce INTEGER NOT NULL CHECK (nonce >= 0),
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    fencing_token INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (signer, nonce)
)",
    "CREATE TABLE IF NOT EXISTS tx_attempt (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES managed_tx (request_id),
    hash TEXT NOT NULL UNIQUE,
    max_fee TEXT NOT NULL,
    priority_fee TEXT NOT NULL,
    raw BLOB NOT NULL,
    sent_at_ms INTEGER NOT NULL
)",
];

/// `managed_tx` columns added after the first release, with their types.
const RECEIPT_COLUMNS: [(&str, &str); 4] = [
    ("receipt_block_number", "INTEGER"),
    ("receipt_block_hash", "TEXT"),
    ("receipt_tx_hash", "TEXT"),
    ("receipt_success", "BOOLEAN"),
];

/// Nonces and managed transactions in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteNonceStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
}

impl SqliteNonceStore {
    /// Opens (creating if missing) the database at `path` with ledger-lease's connection
    /// settings, applies the lease and nonce schemas, and returns the nonce store with a
    /// lease store on the same pool.
    pub async fn connect(
        path: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, SqliteLeaseStore), StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .connect_with(ledger_lease::sqlite::connect_options(path))
            .await?;
        let leases = SqliteLeaseStore::from_pool(pool.clone(), Arc::clone(&clock)).await?;
        let store = Self::from_pool(pool, clock).await?;
        Ok((store, leases))
    }

    /// Uses the caller's pool (built from `ledger_lease::sqlite::connect_options`, with the
    /// lease schema applied) and applies the nonce schema.
    pub async fn from_pool(pool: SqlitePool, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let mut tx = ledger_lease::sqlite::begin_immediate(&pool).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        // Columns added after the first release; SQLite has no `ADD COLUMN IF NOT EXISTS`.
        for (column, definition) in RECEIPT_COLUMNS {
            let present: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pragma_table_info('managed_tx') WHERE name = $1",
            )
            .bind(column)
            .fetch_one(&mut *tx)
            .await?;
            if present == 0 {
                sqlx::query(&format!(
                    "ALTER TABLE managed_tx ADD COLUMN {column} {definition}"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Self { pool, clock })
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_fenced(
        &self,
        signer: Address,
        token: FencingToken,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        let mut tx = ledger_lease::sqlite::begin_immediate(&self.pool).await?;
        ledger_lease::sqlite::fence(&mut tx, &signer_resource(signer), token).await?;
        Ok(tx)
    }

    /// One allocation batch in six statements whatever its size: fence, read the signer's
    /// next nonce (an upsert; `BEGIN IMMEDIATE` already holds the only write lock), look
    /// every request id up and insert the new rows through `json_each` over one JSON
    /// parameter, store the next nonce, commit. Constant SQL text, so each statement is
    /// prepared once per connection.
    async fn try_commit_allocations(
        &self,
        signer: Address,
        token: FencingToken,
        floor: u64,
        requests: &[NewAllocation],
    ) -> Result<Option<AllocationBatch>, StoreError> {
        let key = signer_key(signer);
        let now = self.clock.now().0;
        let corrupt = |error: serde_json::Error| StoreError::Corrupt(error.to_string());
        let mut tx = self.begin_fenced(signer, token).await?;
        let stored_next: i64 = sqlx::query_scalar(
            "INSERT INTO signer_nonce (signer, next_nonce, fencing_token, updated_at_ms)
             VALUES ($1, 0, $2, $3)
             ON CONFLICT (signer) DO UPDATE SET signer = excluded.signer
             RETURNING next_nonce",
        )
        .bind(&key)
        .bind(token.get())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let ids: Vec<&str> = requests.iter().map(|r| r.request_id.as_str()).collect();
        let found: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT request_id, signer, nonce FROM managed_tx
             WHERE request_id IN (SELECT value FROM json_each($1))",
        )
        .bind(serde_json::to_string(&ids).map_err(corrupt)?)
        .fetch_all(&mut *tx)
        .await?;
        let mut stored = HashMap::with_capacity(found.len());
        for (request_id, stored_signer, nonce) in found {
            let allocation = stored_allocation(&request_id, &stored_signer, nonce)?;
            stored.insert(request_id, allocation);
        }
        let start = to_u64("next_nonce", stored_next)?.max(floor);
        let (allocations, rows, next) = plan_allocations(signer, start, requests, &stored)?;
        if !rows.is_empty() {
            let expected = rows.len() as u64;
            let rows: Vec<(String, i64, String)> = rows
                .into_iter()
                .map(|row| (row.request_id, row.nonce, row.payload))
                .collect();
            // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.
            let inserted = sqlx::query(
                "INSERT INTO managed_tx (request_id, signer, nonce, payload, status,
                     fencing_token, created_at_ms, updated_at_ms)
                 SELECT json_extract(value, '$[0]'), $2, json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), $3, $4, $5, $5
                 FROM json_each($1) WHERE true
                 ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(serde_json::to_string(&rows).map_err(corrupt)?)
            .bind(&key)
            .bind(TxStatus::Pending.as_str())
            .bind(token.get())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted != expected {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        sqlx::query(
            "UPDATE signer_nonce SET next_nonce = $1, fencing_token = $2, updated_at_ms = $3
             WHERE signer = $4",
        )
        .bind(to_i64("next_nonce", next)?)
        .bind(token.get())
        .bind(now)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(AllocationBatch {
            allocations,
            next_nonce: next,
        }))
    }
}

crate::store::sql_nonce_store!(SqliteNonceStore, "sqlite", "");
