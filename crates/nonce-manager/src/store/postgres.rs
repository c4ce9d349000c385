//! The scale-out nonce store: PostgreSQL 14+, shared by every node. The fence holds the
//! signer's lease row `FOR SHARE` for the writer's transaction, and the signer's
//! `signer_nonce` row is locked `FOR UPDATE` before it is read, so allocations serialize
//! per signer even if two writers ever carried the same token.

use std::sync::Arc;

use alloy_primitives::Address;
use ledger_lease::postgres::PostgresLeaseStore;
use ledger_lease::{Clock, FencingToken};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::error::StoreError;
use crate::types::signer_resource;

/// Most connections one node's store opens.
const POOL_CONNECTIONS_MAX: u32 = 8;

/// Serialises schema creation when several nodes start at once. ASCII "noncemgr".
const MIGRATION_LOCK_KEY: i64 = 0x6e6f_6e63_656d_6772;

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS signer_nonce (
    signer TEXT PRIMARY KEY,
    next_nonce BIGINT NOT NULL CHECK (next_nonce >= 0),
    fencing_token BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
)",
    "CREATE TABLE IF NOT EXISTS managed_tx (
    request_id TEXT PRIMARY KEY,
    signer TEXT NOT NULL,
    nonce BIGINT NOT NULL CHECK (nonce >= 0),
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    fencing_token BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (signer, nonce)
)",
    "CREATE TABLE IF NOT EXISTS tx_attempt (
    seq BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES managed_tx (request_id),
    hash TEXT NOT NULL UNIQUE,
    max_fee TEXT NOT NULL,
    priority_fee TEXT NOT NULL,
    raw BYTEA NOT NULL,
    sent_at_ms BIGINT NOT NULL
)",
    "CREATE INDEX IF NOT EXISTS tx_attempt_request ON tx_attempt (request_id)",
];

/// Nonces and managed transactions in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresNonceStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

impl PostgresNonceStore {
    /// Connects to `url`, applies the lease and nonce schemas, and returns the nonce store
    /// with a lease store on the same pool.
    pub async fn connect(
        url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, PostgresLeaseStore), StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .connect(url)
            .await?;
        let leases = PostgresLeaseStore::from_pool(pool.clone(), Arc::clone(&clock)).await?;
        let store = Self::from_pool(pool, clock).await?;
        Ok((store, leases))
    }

    /// Uses the caller's pool (lease schema applied) and applies the nonce schema.
    pub async fn from_pool(pool: PgPool, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self { pool, clock })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_fenced(
        &self,
        signer: Address,
        token: FencingToken,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        ledger_lease::postgres::fence(&mut tx, &signer_resource(signer), token).await?;
        Ok(tx)
    }
}

crate::store::sql_nonce_store!(PostgresNonceStore, "postgres", " FOR UPDATE");
