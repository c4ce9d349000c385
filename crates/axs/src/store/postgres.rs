//! The scale-out ledger store: PostgreSQL 14+, sharing its database (and transactions) with
//! the lease tables. Amounts are NUMERIC(39,0), wide enough for every `i128`; they cross
//! the driver as text (`::text` on read, `::numeric` on write), so no float or 64-bit
//! integer ever holds money. Bulk statements bind one array per column and `UNNEST` them:
//! a batch of a thousand rows is one statement and one round trip.
//!
//! Consistency: READ COMMITTED throughout. Submits insert with `ON CONFLICT DO NOTHING` and
//! then compare the stored payload, so two racing submits of one key meet on its primary
//! key (the second waits for the first to commit) and both get the first answer. A batch's
//! writes run behind [`ledger_lease::postgres::fence`], which share-locks the partition's
//! lease row until the commit: a takeover waits for the batch, and a batch that starts
//! after a takeover is refused.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use ledger_lease::postgres::{fence, PostgresLeaseStore};
use ledger_lease::{Clock, LeaseStore};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::audit::Dump;
use super::rows::{
    account_from_row, amount, assets_json, balance_from_row, balance_with_key, change_from_row,
    change_status_from_row, history_from_row, history_page, hold_from_row, i64_of, Wanted,
};
use super::{Fence, HistoryPage, HistoryQuery, LedgerStore, StoreError, Submitted};
use crate::engine::{Plan, Positioned, Snapshot};
use crate::model::{Account, AccountState, Balance, BalanceState, ChangeRecord, ChangeRequest};

const SCHEMA: [&str; 11] = [
    "CREATE TABLE IF NOT EXISTS axs_accounts (
        account TEXT PRIMARY KEY,
        assets TEXT NOT NULL,
        shard BIGINT NOT NULL,
        state BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS axs_changes (
        key TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount NUMERIC(39, 0) NOT NULL,
        kind BIGINT NOT NULL,
        pending_key TEXT NOT NULL,
        timeout_ms BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        shard BIGINT NOT NULL,
        status BIGINT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        partition BIGINT,
        \"offset\" BIGINT,
        created_at_ms BIGINT NOT NULL,
        applied_at_ms BIGINT)",
    "CREATE INDEX IF NOT EXISTS axs_changes_outbox ON axs_changes (created_at_ms) WHERE status = 1",
    "CREATE INDEX IF NOT EXISTS axs_changes_position ON axs_changes (partition, \"offset\")",
    "CREATE TABLE IF NOT EXISTS axs_balances (
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        balance NUMERIC(39, 0) NOT NULL,
        pending_debit NUMERIC(39, 0) NOT NULL,
        pending_credit NUMERIC(39, 0) NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (account, asset))",
    "CREATE TABLE IF NOT EXISTS axs_history (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        version BIGINT NOT NULL,
        key TEXT NOT NULL,
        kind BIGINT NOT NULL,
        balance_delta NUMERIC(39, 0) NOT NULL,
        pending_debit_delta NUMERIC(39, 0) NOT NULL,
        pending_credit_delta NUMERIC(39, 0) NOT NULL,
        balance_after NUMERIC(39, 0) NOT NULL,
        applied_at_ms BIGINT NOT NULL,
        UNIQUE (account, asset, version))",
    "CREATE INDEX IF NOT EXISTS axs_history_account ON axs_history (account, seq)",
    "CREATE TABLE IF NOT EXISTS axs_holds (
        key TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount NUMERIC(39, 0) NOT NULL,
        partition BIGINT NOT NULL,
        expires_at_ms BIGINT)",
    "CREATE INDEX IF NOT EXISTS axs_holds_expiry ON axs_holds (partition, expires_at_ms)",
    "CREATE TABLE IF NOT EXISTS axs_offsets (
        partition BIGINT PRIMARY KEY,
        next_offset BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS axs_members (
        member TEXT PRIMARY KEY,
        expires_at_ms BIGINT NOT NULL)",
];

/// Serialises schema creation when several nodes start at once (`CREATE ... IF NOT
/// EXISTS` races on the catalog otherwise). ASCII "axsledgr".
const MIGRATION_LOCK_KEY: i64 = 0x6178_736c_6564_6772;

/// Connections per process: the gRPC role's submits and publish marks, the consumer's
/// batches (one per owned partition) and reads share them.
const POOL_CONNECTIONS: u32 = 16;

const CHANGE_COLUMNS: &str = "key, account, asset, amount::text AS amount, kind, pending_key,
    timeout_ms, metadata, shard, status, reason, partition, \"offset\", created_at_ms,
    applied_at_ms";
const BALANCE_COLUMNS: &str = "account, asset, balance::text AS balance,
    pending_debit::text AS pending_debit, pending_credit::text AS pending_credit, version";
const HISTORY_COLUMNS: &str = "seq, account, asset, version, key, kind,
    balance_delta::text AS balance_delta, pending_debit_delta::text AS pending_debit_delta,
    pending_credit_delta::text AS pending_credit_delta, balance_after::text AS balance_after,
    applied_at_ms";
const HOLD_COLUMNS: &str = "key, account, asset, amount::text AS amount, partition, expires_at_ms";

#[derive(Debug, Clone)]
pub struct PostgresLedgerStore {
    pool: PgPool,
    leases: Arc<PostgresLeaseStore>,
}

impl PostgresLedgerStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies the schema.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .connect(url)
            .await?;
        let leases = PostgresLeaseStore::from_pool(pool.clone(), clock).await?;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self {
            pool,
            leases: Arc::new(leases),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn select_changes(&self, keys: &[String]) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE key = ANY($1)"
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }
}

fn accounts_of(rows: &[PgRow]) -> Result<HashMap<String, Account>, StoreError> {
    rows.iter()
        .map(|row| account_from_row(row).map(|a| (a.name.clone(), a)))
        .collect()
}

/// Column vectors of the change rows a batch upserts.
#[derive(Default)]
struct ChangeColumns {
    key: Vec<String>,
    account: Vec<String>,
    asset: Vec<String>,
    amount: Vec<String>,
    kind: Vec<i64>,
    pending_key: Vec<String>,
    timeout_ms: Vec<i64>,
    metadata: Vec<String>,
    shard: Vec<i64>,
    created_at_ms: Vec<i64>,
    status: Vec<i64>,
    reason: Vec<String>,
    partition: Vec<i64>,
    offset: Vec<i64>,
}

impl ChangeColumns {
    fn push(&mut self, request: &ChangeRequest, shard: u32, created_at_ms: i64) {
        self.key.push(request.key.clone());
        self.account.push(request.account.clone());
        self.asset.push(request.asset.clone());
        self.amount.push(request.amount.to_string());
        self.kind.push(request.kind.code());
        self.pending_key.push(request.pending_key.clone());
        self.timeout_ms.push(i64_of(request.timeout_ms));
        self.metadata.push(request.metadata.clone());
        self.shard.push(i64::from(shard));
        self.created_at_ms.push(created_at_ms);
    }
}

#[async_trait]
impl LedgerStore for PostgresLedgerStore {
    fn leases(&self) -> Arc<dyn LeaseStore> {
        self.leases.clone()
    }

    async fn open_accounts(&self, accounts: &[Account]) -> Result<usize, StoreError> {
        let mut created = 0;
        for chunk in accounts.chunks(10_000) {
            let names: Vec<&str> = chunk.iter().map(|a| a.name.as_str()).collect();
            let assets: Vec<String> = chunk.iter().map(assets_json).collect();
            let shards: Vec<i64> = chunk.iter().map(|a| i64::from(a.shard)).collect();
            let states: Vec<i64> = chunk.iter().map(|a| a.state.code()).collect();
            let created_at: Vec<i64> = chunk.iter().map(|a| a.created_at_ms).collect();
            created += sqlx::query(
                "INSERT INTO axs_accounts (account, assets, shard, state, created_at_ms)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                      $5::bigint[])
                 ON CONFLICT (account) DO NOTHING",
            )
            .bind(&names)
            .bind(&assets)
            .bind(&shards)
            .bind(&states)
            .bind(&created_at)
            .execute(&self.pool)
            .await?
            .rows_affected() as usize;
        }
        Ok(created)
    }

    async fn open_account(&self, account: &Account) -> Result<Account, StoreError> {
        // Insert-or-keep, then read back: two racing opens of one name meet on its key.
        sqlx::query(
            "INSERT INTO axs_accounts (account, assets, shard, state, created_at_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account) DO NOTHING",
        )
        .bind(&account.name)
        .bind(assets_json(account))
        .bind(i64::from(account.shard))
        .bind(account.state.code())
        .bind(account.created_at_ms)
        .execute(&self.pool)
        .await?;
        let stored = self
            .account(&account.name)
            .await?
            .ok_or_else(|| StoreError::NoAccount(account.name.clone()))?;
        if stored.assets != account.assets || stored.shard != account.shard {
            return Err(StoreError::AccountExists(account.name.clone()));
        }
        Ok(stored)
    }

    async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query("SELECT * FROM axs_accounts WHERE account = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn accounts(&self, names: &[String]) -> Result<HashMap<String, Account>, StoreError> {
        let rows = sqlx::query("SELECT * FROM axs_accounts WHERE account = ANY($1)")
            .bind(names)
            .fetch_all(&self.pool)
            .await?;
        accounts_of(&rows)
    }

    async fn set_account_state(
        &self,
        name: &str,
        state: AccountState,
    ) -> Result<Account, StoreError> {
        let row = sqlx::query("UPDATE axs_accounts SET state = $2 WHERE account = $1 RETURNING *")
            .bind(name)
            .bind(state.code())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoAccount(name.to_owned()))?;
        account_from_row(&row)
    }

    async fn submit(
        &self,
        changes: &[(ChangeRequest, u32)],
        now_ms: i64,
    ) -> Result<Vec<Submitted>, StoreError> {
        let mut columns = ChangeColumns::default();
        for (request, shard) in changes {
            columns.push(request, *shard, now_ms);
        }
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO axs_changes
               (key, account, asset, amount, kind, pending_key, timeout_ms, metadata, shard,
                status, created_at_ms)
             SELECT k, a, s, m::numeric, kd, pk, t, md, sh, 1, $10
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::bigint[], $8::text[], $9::bigint[])
                  AS u(k, a, s, m, kd, pk, t, md, sh)
             ON CONFLICT (key) DO NOTHING
             RETURNING key",
        )
        .bind(&columns.key)
        .bind(&columns.account)
        .bind(&columns.asset)
        .bind(&columns.amount)
        .bind(&columns.kind)
        .bind(&columns.pending_key)
        .bind(&columns.timeout_ms)
        .bind(&columns.metadata)
        .bind(&columns.shard)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let stored_keys: Vec<&str> = changes
            .iter()
            .map(|(c, _)| c.key.as_str())
            .filter(|key| !inserted.contains(*key))
            .collect();
        let mut existing = HashMap::new();
        if !stored_keys.is_empty() {
            let rows = sqlx::query(&format!(
                "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE key = ANY($1)"
            ))
            .bind(&stored_keys)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let record = change_from_row(row)?;
                existing.insert(record.request.key.clone(), record);
            }
        }
        // A conflict returns early: dropping `tx` rolls the whole call back.
        let answers = changes
            .iter()
            .map(|(request, _)| Submitted::answer(request, existing.get(&request.key), now_ms))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(answers)
    }

    async fn mark_published(&self, positions: &[(String, i32, i64)]) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = positions.iter().map(|p| p.0.as_str()).collect();
        let partitions: Vec<i64> = positions.iter().map(|p| i64::from(p.1)).collect();
        let offsets: Vec<i64> = positions.iter().map(|p| p.2).collect();
        sqlx::query(
            "UPDATE axs_changes AS c SET status = 2, partition = p.partition, \"offset\" = p.off
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS p(key, partition, off)
             WHERE c.key = p.key AND c.status = 1",
        )
        .bind(&keys)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn change(&self, key: &str) -> Result<Option<ChangeRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(change_from_row).transpose()
    }

    async fn changes(&self, keys: &[String]) -> Result<HashMap<String, ChangeRecord>, StoreError> {
        Ok(self
            .select_changes(keys)
            .await?
            .into_iter()
            .map(|c| (c.request.key.clone(), c))
            .collect())
    }

    async fn outbox(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE status = 1 AND created_at_ms < $1
             ORDER BY created_at_ms LIMIT $2"
        ))
        .bind(created_before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM axs_changes WHERE status = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn balance(
        &self,
        account: &str,
        asset: &str,
    ) -> Result<Option<BalanceState>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {BALANCE_COLUMNS} FROM axs_balances WHERE account = $1 AND asset = $2"
        ))
        .bind(account)
        .bind(asset)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(balance_from_row).transpose()
    }

    async fn balances(&self, account: &str) -> Result<Vec<Balance>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BALANCE_COLUMNS} FROM axs_balances WHERE account = $1 ORDER BY asset"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(balance_with_key).collect()
    }

    async fn history(&self, query: &HistoryQuery<'_>) -> Result<HistoryPage, StoreError> {
        let limit = query.limit.clamp(1, 1000);
        let rows = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS} FROM axs_history
             WHERE account = $1 AND ($2::text IS NULL OR asset = $2)
               AND ($3::bigint IS NULL OR applied_at_ms <= $3)
               AND ($4::bigint IS NULL OR seq < $4)
             ORDER BY seq DESC LIMIT $5"
        ))
        .bind(query.account)
        .bind(query.asset)
        .bind(query.as_of_ms)
        .bind(query.before_seq)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        history_page(&rows, limit)
    }

    async fn balance_as_of(
        &self,
        account: &str,
        asset: &str,
        as_of_ms: i64,
    ) -> Result<Option<i128>, StoreError> {
        let row = sqlx::query(
            "SELECT balance_after::text AS balance_after FROM axs_history
             WHERE account = $1 AND asset = $2 AND applied_at_ms <= $3
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(account)
        .bind(asset)
        .bind(as_of_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(|row| amount(row, "balance_after"))
            .transpose()
    }

    async fn consumed_offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT next_offset FROM axs_offsets WHERE partition = $1")
                .bind(i64::from(partition))
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn snapshot(
        &self,
        partition: i32,
        events: &[Positioned],
        now_ms: i64,
    ) -> Result<(Snapshot, Vec<String>), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let expired_holds = sqlx::query(&format!(
            "SELECT {HOLD_COLUMNS} FROM axs_holds WHERE partition = $1 AND expires_at_ms <= $2
             ORDER BY expires_at_ms LIMIT 1000"
        ))
        .bind(i64::from(partition))
        .bind(now_ms)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(hold_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let wanted = Wanted::of(events, &expired_holds);
        let mut snapshot = Snapshot::default();
        let expired = expired_holds.iter().map(|h| h.key.clone()).collect();
        for hold in expired_holds {
            snapshot.holds.insert(hold.key.clone(), hold);
        }
        let rows = sqlx::query("SELECT * FROM axs_accounts WHERE account = ANY($1)")
            .bind(&wanted.names)
            .fetch_all(&mut *conn)
            .await?;
        snapshot.accounts = accounts_of(&rows)?;
        let (accounts, assets): (Vec<&str>, Vec<&str>) = wanted
            .pairs
            .iter()
            .map(|(a, s)| (a.as_str(), s.as_str()))
            .unzip();
        let rows = sqlx::query(&format!(
            "SELECT {BALANCE_COLUMNS} FROM axs_balances
             WHERE (account, asset) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        ))
        .bind(&accounts)
        .bind(&assets)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let balance = balance_with_key(row)?;
            snapshot
                .balances
                .insert((balance.account, balance.asset), balance.state);
        }
        if !wanted.hold_keys.is_empty() {
            let rows = sqlx::query(&format!(
                "SELECT {HOLD_COLUMNS} FROM axs_holds WHERE key = ANY($1)"
            ))
            .bind(&wanted.hold_keys)
            .fetch_all(&mut *conn)
            .await?;
            for row in &rows {
                let hold = hold_from_row(row)?;
                snapshot.holds.insert(hold.key.clone(), hold);
            }
        }
        let done: Vec<String> = sqlx::query_scalar(
            "SELECT key FROM axs_changes WHERE key = ANY($1) AND status IN (3, 4)",
        )
        .bind(&wanted.keys)
        .fetch_all(&mut *conn)
        .await?;
        snapshot.done = done.into_iter().collect();
        Ok((snapshot, expired))
    }

    async fn apply(
        &self,
        fence_: &Fence,
        partition: i32,
        plan: &Plan,
        next_offset: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, &fence_.resource, fence_.token).await?;
        if !plan.balances.is_empty() {
            let mut accounts = Vec::with_capacity(plan.balances.len());
            let mut assets = Vec::with_capacity(plan.balances.len());
            let (mut balance, mut debit, mut credit, mut version) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((account, asset), state) in &plan.balances {
                accounts.push(account.as_str());
                assets.push(asset.as_str());
                balance.push(state.balance.to_string());
                debit.push(state.pending_debit.to_string());
                credit.push(state.pending_credit.to_string());
                version.push(i64_of(state.version));
            }
            sqlx::query(
                "INSERT INTO axs_balances
                   (account, asset, balance, pending_debit, pending_credit, version)
                 SELECT a, s, b::numeric, d::numeric, c::numeric, v
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::bigint[]) AS u(a, s, b, d, c, v)
                 ON CONFLICT (account, asset) DO UPDATE SET
                   balance = excluded.balance, pending_debit = excluded.pending_debit,
                   pending_credit = excluded.pending_credit, version = excluded.version",
            )
            .bind(&accounts)
            .bind(&assets)
            .bind(&balance)
            .bind(&debit)
            .bind(&credit)
            .bind(&version)
            .execute(&mut *tx)
            .await?;
        }
        if !plan.decisions.is_empty() {
            let mut columns = ChangeColumns::default();
            for (decision, positioned) in plan.decisions.iter().zip(&plan.events) {
                let event = &positioned.event;
                columns.push(&event.request, event.shard, event.created_at_ms);
                columns.status.push(decision.status.code());
                columns
                    .reason
                    .push(decision.reason.map(|r| r.as_str()).unwrap_or("").to_owned());
                columns.partition.push(i64::from(decision.partition));
                columns.offset.push(decision.offset);
            }
            sqlx::query(
                "INSERT INTO axs_changes (key, account, asset, amount, kind, pending_key,
                    timeout_ms, metadata, shard, status, reason, partition, \"offset\",
                    created_at_ms, applied_at_ms)
                 SELECT k, a, s, m::numeric, kd, pk, t, md, sh, st, r, p, o, c, $15
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                             $6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[],
                             $11::text[], $12::bigint[], $13::bigint[], $14::bigint[])
                      AS u(k, a, s, m, kd, pk, t, md, sh, st, r, p, o, c)
                 ON CONFLICT (key) DO UPDATE SET status = excluded.status,
                   reason = excluded.reason, partition = excluded.partition,
                   \"offset\" = excluded.\"offset\", applied_at_ms = excluded.applied_at_ms",
            )
            .bind(&columns.key)
            .bind(&columns.account)
            .bind(&columns.asset)
            .bind(&columns.amount)
            .bind(&columns.kind)
            .bind(&columns.pending_key)
            .bind(&columns.timeout_ms)
            .bind(&columns.metadata)
            .bind(&columns.shard)
            .bind(&columns.status)
            .bind(&columns.reason)
            .bind(&columns.partition)
            .bind(&columns.offset)
            .bind(&columns.created_at_ms)
            .bind(plan.now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if !plan.history.is_empty() {
            let h = &plan.history;
            let text = |f: fn(&crate::model::HistoryEntry) -> String| -> Vec<String> {
                h.iter().map(f).collect()
            };
            sqlx::query(
                "INSERT INTO axs_history (account, asset, version, key, kind, balance_delta,
                    pending_debit_delta, pending_credit_delta, balance_after, applied_at_ms)
                 SELECT a, s, v, k, kd, bd::numeric, pd::numeric, pc::numeric, ba::numeric, at
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                             $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[])
                      WITH ORDINALITY AS u(a, s, v, k, kd, bd, pd, pc, ba, at, n)
                 ORDER BY n",
            )
            .bind(text(|e| e.account.clone()))
            .bind(text(|e| e.asset.clone()))
            .bind(h.iter().map(|e| i64_of(e.version)).collect::<Vec<_>>())
            .bind(text(|e| e.key.clone()))
            .bind(h.iter().map(|e| e.kind.code()).collect::<Vec<_>>())
            .bind(text(|e| e.balance_delta.to_string()))
            .bind(text(|e| e.pending_debit_delta.to_string()))
            .bind(text(|e| e.pending_credit_delta.to_string()))
            .bind(text(|e| e.balance_after.to_string()))
            .bind(h.iter().map(|e| e.applied_at_ms).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !plan.holds_closed.is_empty() {
            sqlx::query("DELETE FROM axs_holds WHERE key = ANY($1)")
                .bind(&plan.holds_closed)
                .execute(&mut *tx)
                .await?;
        }
        let opened: Vec<&crate::model::Hold> = plan
            .holds_opened
            .iter()
            .filter(|h| !plan.holds_closed.contains(&h.key))
            .collect();
        if !opened.is_empty() {
            sqlx::query(
                "INSERT INTO axs_holds (key, account, asset, amount, partition, expires_at_ms)
                 SELECT k, a, s, m::numeric, $5, e
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $6::bigint[])
                      AS u(k, a, s, m, e)",
            )
            .bind(opened.iter().map(|h| h.key.as_str()).collect::<Vec<_>>())
            .bind(
                opened
                    .iter()
                    .map(|h| h.account.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(opened.iter().map(|h| h.asset.as_str()).collect::<Vec<_>>())
            .bind(
                opened
                    .iter()
                    .map(|h| h.amount.to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(i64::from(partition))
            .bind(opened.iter().map(|h| h.expires_at_ms).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO axs_offsets (partition, next_offset) VALUES ($1, $2)
             ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
        )
        .bind(i64::from(partition))
        .bind(next_offset)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn decided_since(
        &self,
        partition: i32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes
             WHERE partition = $1 AND \"offset\" > $2 AND status IN (3, 4)
             ORDER BY \"offset\" LIMIT $3"
        ))
        .bind(i64::from(partition))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from_row).collect()
    }

    async fn heartbeat(
        &self,
        member: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        sqlx::query(
            "INSERT INTO axs_members (member, expires_at_ms) VALUES ($1, $2)
             ON CONFLICT (member) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
        )
        .bind(member)
        .bind(now_ms.saturating_add(ttl_ms))
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_scalar(
            "SELECT member FROM axs_members WHERE expires_at_ms > $1 ORDER BY member",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn leave(&self, member: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM axs_members WHERE member = $1")
            .bind(member)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn dump(&self) -> Result<Dump, StoreError> {
        let mut dump = Dump::default();
        let rows = sqlx::query("SELECT * FROM axs_accounts ORDER BY account")
            .fetch_all(&self.pool)
            .await?;
        dump.accounts = rows
            .iter()
            .map(account_from_row)
            .collect::<Result<_, _>>()?;
        for row in sqlx::query("SELECT key, status, kind FROM axs_changes")
            .fetch_all(&self.pool)
            .await?
        {
            dump.changes.push(change_status_from_row(&row)?);
        }
        let rows = sqlx::query(&format!(
            "SELECT {HISTORY_COLUMNS} FROM axs_history ORDER BY account, asset, version"
        ))
        .fetch_all(&self.pool)
        .await?;
        dump.history = rows
            .iter()
            .map(history_from_row)
            .collect::<Result<_, _>>()?;
        let rows = sqlx::query(&format!(
            "SELECT {BALANCE_COLUMNS} FROM axs_balances ORDER BY account, asset"
        ))
        .fetch_all(&self.pool)
        .await?;
        dump.balances = rows
            .iter()
            .map(balance_with_key)
            .collect::<Result<_, _>>()?;
        Ok(dump)
    }
}
