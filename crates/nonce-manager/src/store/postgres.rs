//! The scale-out nonce store: PostgreSQL 14+, shared by every node. The fence holds the
//! signer's lease row `FOR SHARE` for the writer's transaction, and the signer's
//! `signer_nonce` row is locked `FOR UPDATE` before it is read, so allocations serialize
//! per signer even if two writers ever carried the same token.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use alloy_primitives::Address;
use ledger_lease::postgres::PostgresLeaseStore;
use ledger_lease::{Clock, FencingToken};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::error::StoreError;
use crate::store::{
    plan_allocations, stored_allocation, to_i64, to_u64, AllocationBatch, NewAllocation,
};
use crate::types::{signer_key, signer_resource, TxStatus};

/// Most connections one node's store opens.
const POOL_CONNECTIONS_MAX: u32 = 8;
/// PostgreSQL ends a session left idle inside a transaction this long (ours take
/// milliseconds), so a holder paused mid-transaction cannot block a lease takeover with its
/// fence lock for longer (see `connect`).
const PG_IDLE_IN_TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serialises schema creation when several nodes start at once. ASCII "noncemgr".
const MIGRATION_LOCK_KEY: i64 = 0x6e6f_6e63_656d_6772;

const SCHEMA: [&str; 8] = [
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
    // Added after the first release: `IF NOT EXISTS` migrates an existing database.
    "ALTER TABLE managed_tx ADD COLUMN IF NOT EXISTS receipt_block_number BIGINT",
    "ALTER TABLE managed_tx ADD COLUMN IF NOT EXISTS receipt_block_hash TEXT",
    "ALTER TABLE managed_tx ADD COLUMN IF NOT EXISTS receipt_tx_hash TEXT",
    "ALTER TABLE managed_tx ADD COLUMN IF NOT EXISTS receipt_success BOOLEAN",
];

/// What [`ALLOCATE_READ`] returns: the lease's current token, the signer's stored next
/// nonce, and the request ids already stored with their signers and nonces.
type AllocateRead = (Option<i64>, Option<i64>, Vec<String>, Vec<String>, Vec<i64>);

/// The first statement of an allocation batch (see `try_commit_allocations`): the lease's
/// fence read, the signer row's upsert (locking it) and the lookup of the batch's request
/// ids, in one round trip. `$1` resource, `$2` signer, `$3` token, `$4` now, `$5` ids.
static ALLOCATE_READ: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH lease AS ({fence}),
         up AS (
             INSERT INTO signer_nonce (signer, next_nonce, fencing_token, updated_at_ms)
             VALUES ($2, 0, $3, $4)
             ON CONFLICT (signer) DO UPDATE SET signer = EXCLUDED.signer
             RETURNING next_nonce
         ),
         found AS (
             SELECT m.request_id, m.signer, m.nonce
             FROM UNNEST($5::text[]) AS ids (id)
             JOIN managed_tx AS m ON m.request_id = ids.id
         )
         SELECT (SELECT token FROM lease),
                (SELECT next_nonce FROM up),
                COALESCE((SELECT array_agg(request_id ORDER BY request_id) FROM found),
                         ARRAY[]::text[]),
                COALESCE((SELECT array_agg(signer ORDER BY request_id) FROM found),
                         ARRAY[]::text[]),
                COALESCE((SELECT array_agg(nonce ORDER BY request_id) FROM found),
                         ARRAY[]::bigint[])",
        fence = ledger_lease::postgres::FENCE_TOKEN_SELECT,
    )
});

/// Nonces and managed transactions in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresNonceStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

/// Whether the last objects [`SCHEMA`] adds exist (a catalog read: no table locks). Keep it
/// in step with `SCHEMA` when that grows.
async fn schema_is_current(pool: &PgPool) -> Result<bool, StoreError> {
    let current: bool = sqlx::query_scalar(
        "SELECT to_regclass('tx_attempt_request') IS NOT NULL
            AND (SELECT count(*) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'managed_tx'
                   AND column_name IN ('receipt_block_number', 'receipt_block_hash',
                                       'receipt_tx_hash', 'receipt_success')) = 4",
    )
    .fetch_one(pool)
    .await?;
    Ok(current)
}

impl PostgresNonceStore {
    /// Connects to `url`, applies the lease and nonce schemas, and returns the nonce store
    /// with a lease store on the same pool.
    pub async fn connect(
        url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, PostgresLeaseStore), StoreError> {
        // A holder paused inside a transaction (a GC pause, a frozen VM, SIGSTOP) keeps its
        // fence's FOR SHARE lock on the lease row, which would block any takeover until it
        // resumed. The server ends such a session after this idle time, so the takeover
        // waits at most that long, and the paused holder's commit is refused when it wakes.
        let idle_ms = PG_IDLE_IN_TRANSACTION_TIMEOUT.as_millis().to_string();
        let options = PgConnectOptions::from_str(url)?.options([
            ("idle_in_transaction_session_timeout", idle_ms.as_str()),
            // Plan every execution with its parameters. A prepared statement's generic
            // plan is chosen once per connection from the statistics of that moment:
            // on a new database (empty tables, no ANALYZE yet) it seq-scans
            // managed_tx for the request-id lookup, and the pooled connection keeps
            // that plan while the table grows (measured: the lookup of 64 ids took
            // 0.2 ms planned fresh, 4-22 ms and rising with the cached plan).
            ("plan_cache_mode", "force_custom_plan"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .connect_with(options)
            .await?;
        let leases = PostgresLeaseStore::from_pool(pool.clone(), Arc::clone(&clock)).await?;
        let store = Self::from_pool(pool, clock).await?;
        Ok((store, leases))
    }

    /// Uses the caller's pool (lease schema applied) and applies the nonce schema.
    pub async fn from_pool(pool: PgPool, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        // `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` takes an ACCESS EXCLUSIVE lock even when
        // the column exists, so a node (or tool) connecting to a live store deadlocked with
        // running allocations (seen in CI). Migrate only when the newest objects are missing.
        if schema_is_current(&pool).await? {
            return Ok(Self { pool, clock });
        }
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

    /// One allocation batch in two statements and a commit whatever its size (a signer's
    /// batches are serial, so every round trip inside the transaction is latency for the
    /// whole queue): (1) fence, lock-and-read the signer's next nonce (an upsert, which
    /// row-locks like `FOR UPDATE`) and look every request id up with `= ANY`; (2) insert
    /// the new rows from `UNNEST` arrays and store the next nonce; commit. Constant SQL
    /// text, so each is prepared once per connection. The insert is a plain INSERT, not
    /// `ON CONFLICT DO NOTHING`: speculative insertion cost a quarter of the throughput
    /// (one-signer bench: 31k -> 41k allocations/s without it), and the only conflict possible,
    /// a request id another signer's writer inserted after our lookup, is rare; its unique
    /// violation rolls the attempt back and the batch is planned again.
    async fn try_commit_allocations(
        &self,
        signer: Address,
        token: FencingToken,
        floor: u64,
        requests: &[NewAllocation],
    ) -> Result<Option<AllocationBatch>, StoreError> {
        let key = signer_key(signer);
        let resource = signer_resource(signer);
        let now = self.clock.now().0;
        let ids: Vec<&str> = requests.iter().map(|r| r.request_id.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        let (current_token, stored_next, found_ids, found_signers, found_nonces): AllocateRead =
            sqlx::query_as(ALLOCATE_READ.as_str())
                .bind(resource.as_str())
                .bind(&key)
                .bind(token.get())
                .bind(now)
                .bind(&ids)
                .fetch_one(&mut *tx)
                .await?;
        if let Err(error) = ledger_lease::fence_verdict(&resource, token, current_token) {
            tx.rollback().await?;
            return Err(error.into());
        }
        let stored_next = stored_next
            .ok_or_else(|| StoreError::Corrupt("signer_nonce upsert returned no row".into()))?;
        if found_ids.len() != found_signers.len() || found_ids.len() != found_nonces.len() {
            return Err(StoreError::Corrupt(
                "request id lookup returned arrays of different lengths".into(),
            ));
        }
        let mut stored = HashMap::with_capacity(found_ids.len());
        for ((request_id, stored_signer), nonce) in
            found_ids.into_iter().zip(found_signers).zip(found_nonces)
        {
            let allocation = stored_allocation(&request_id, &stored_signer, nonce)?;
            stored.insert(request_id, allocation);
        }
        let start = to_u64("next_nonce", stored_next)?.max(floor);
        let (allocations, rows, next) = plan_allocations(signer, start, requests, &stored)?;
        let next_i64 = to_i64("next_nonce", next)?;
        if rows.is_empty() {
            sqlx::query(
                "UPDATE signer_nonce SET next_nonce = $1, fencing_token = $2, updated_at_ms = $3
                 WHERE signer = $4",
            )
            .bind(next_i64)
            .bind(token.get())
            .bind(now)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        } else {
            let mut row_ids = Vec::with_capacity(rows.len());
            let mut nonces = Vec::with_capacity(rows.len());
            let mut payloads = Vec::with_capacity(rows.len());
            for row in rows {
                row_ids.push(row.request_id);
                nonces.push(row.nonce);
                payloads.push(row.payload);
            }
            // A data-modifying WITH runs once and to completion whether or not the main
            // query reads it, so `upd` always stores the next nonce.
            let inserted: Result<(i64,), sqlx::Error> = sqlx::query_as(
                "WITH ins AS (
                     INSERT INTO managed_tx (request_id, signer, nonce, payload, status,
                         fencing_token, created_at_ms, updated_at_ms)
                     SELECT r, $4, n, p, $5, $6, $7, $7
                     FROM UNNEST($1::text[], $2::bigint[], $3::text[]) AS t (r, n, p)
                     RETURNING 1
                 ), upd AS (
                     UPDATE signer_nonce SET next_nonce = $8, fencing_token = $6,
                         updated_at_ms = $7
                     WHERE signer = $4
                 )
                 SELECT count(*) FROM ins",
            )
            .bind(&row_ids)
            .bind(&nonces)
            .bind(&payloads)
            .bind(&key)
            .bind(TxStatus::Pending.as_str())
            .bind(token.get())
            .bind(now)
            .bind(next_i64)
            .fetch_one(&mut *tx)
            .await;
            let inserted = match inserted {
                Ok((inserted,)) => inserted,
                Err(sqlx::Error::Database(error))
                    if error.constraint() == Some("managed_tx_pkey") =>
                {
                    tx.rollback().await?;
                    return Ok(None);
                }
                Err(error) => return Err(error.into()),
            };
            if inserted != row_ids.len() as i64 {
                // Cannot happen with a plain INSERT; kept as the check the plan rests on.
                tx.rollback().await?;
                return Ok(None);
            }
        }
        tx.commit().await?;
        Ok(Some(AllocationBatch {
            allocations,
            next_nonce: next,
        }))
    }
}

crate::store::sql_nonce_store!(PostgresNonceStore, "postgres", " FOR UPDATE");
