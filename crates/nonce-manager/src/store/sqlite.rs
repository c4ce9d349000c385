//! The embedded nonce store: the same SQLite file (WAL, `synchronous=FULL`) as the lease
//! tables, so a fenced write and the fence are one `BEGIN IMMEDIATE` transaction.

use std::path::Path;
use std::sync::Arc;

use alloy_primitives::Address;
use ledger_lease::sqlite::SqliteLeaseStore;
use ledger_lease::{Clock, FencingToken};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};

use crate::error::StoreError;
use crate::types::signer_resource;

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
}

crate::store::sql_nonce_store!(SqliteNonceStore, "sqlite", "");
