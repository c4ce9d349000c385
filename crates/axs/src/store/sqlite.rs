//! The embedded ledger store: one SQLite file (WAL, `synchronous=FULL`), shared with the
//! lease tables. Amounts are TEXT (SQLite integers stop at 64 bits); arithmetic happens in
//! Rust with checked `i128`. Bulk statements take their rows as one JSON array bound to
//! `json_each`, so a batch of a thousand rows is one statement, not a thousand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ledger_lease::sqlite::{begin_immediate, connect_options, fence};
use ledger_lease::{Clock, LeaseStore};
use serde_json::{json, Value};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use super::audit::Dump;
use super::rows::{
    account_from_row, amount, assets_json, balance_from_row, balance_with_key, change_from_row,
    change_status_from_row, history_from_row, history_page, hold_from_row, i64_of, Wanted,
};
use super::{Fence, HistoryPage, HistoryQuery, LedgerStore, StoreError, Submitted};
use crate::engine::{Plan, Positioned, Snapshot};
use crate::model::{Account, AccountState, Balance, BalanceState, ChangeRecord, ChangeRequest};

const SCHEMA: [&str; 9] = [
    "CREATE TABLE IF NOT EXISTS axs_accounts (
        account TEXT PRIMARY KEY NOT NULL,
        assets TEXT NOT NULL,
        shard INTEGER NOT NULL,
        state INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS axs_changes (
        key TEXT PRIMARY KEY NOT NULL,
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount TEXT NOT NULL,
        kind INTEGER NOT NULL,
        pending_key TEXT NOT NULL,
        timeout_ms INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        shard INTEGER NOT NULL,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        partition INTEGER,
        offset INTEGER,
        created_at_ms INTEGER NOT NULL,
        applied_at_ms INTEGER)",
    "CREATE INDEX IF NOT EXISTS axs_changes_outbox ON axs_changes (created_at_ms) WHERE status = 1",
    "CREATE INDEX IF NOT EXISTS axs_changes_position ON axs_changes (partition, offset)",
    "CREATE TABLE IF NOT EXISTS axs_balances (
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        balance TEXT NOT NULL,
        pending_debit TEXT NOT NULL,
        pending_credit TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (account, asset))",
    "CREATE TABLE IF NOT EXISTS axs_history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        version INTEGER NOT NULL,
        key TEXT NOT NULL,
        kind INTEGER NOT NULL,
        balance_delta TEXT NOT NULL,
        pending_debit_delta TEXT NOT NULL,
        pending_credit_delta TEXT NOT NULL,
        balance_after TEXT NOT NULL,
        applied_at_ms INTEGER NOT NULL,
        UNIQUE (account, asset, version))",
    "CREATE TABLE IF NOT EXISTS axs_holds (
        key TEXT PRIMARY KEY NOT NULL,
        account TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount TEXT NOT NULL,
        partition INTEGER NOT NULL,
        expires_at_ms INTEGER)",
    "CREATE TABLE IF NOT EXISTS axs_offsets (
        partition INTEGER PRIMARY KEY NOT NULL,
        next_offset INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS axs_members (
        member TEXT PRIMARY KEY NOT NULL,
        expires_at_ms INTEGER NOT NULL)",
];

/// Connections in the pool: SQLite has one writer, the rest serve reads.
const POOL_CONNECTIONS: u32 = 8;

const CHANGE_COLUMNS: &str = "key, account, asset, amount, kind, pending_key, timeout_ms, metadata, shard, status, reason, partition, offset, created_at_ms, applied_at_ms";

#[derive(Debug, Clone)]
pub struct SqliteLedgerStore {
    pool: SqlitePool,
    leases: Arc<ledger_lease::sqlite::SqliteLeaseStore>,
}

impl SqliteLedgerStore {
    /// Opens (creating if missing) the ledger at `path` and applies the schema.
    pub async fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| StoreError::Database(sqlx::Error::Io(error)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .connect_with(connect_options(path))
            .await?;
        let leases = ledger_lease::sqlite::SqliteLeaseStore::from_pool(pool.clone(), clock).await?;
        let mut tx = begin_immediate(&pool).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self {
            pool,
            leases: Arc::new(leases),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl LedgerStore for SqliteLedgerStore {
    fn leases(&self) -> Arc<dyn LeaseStore> {
        self.leases.clone()
    }

    async fn open_accounts(&self, accounts: &[Account]) -> Result<usize, StoreError> {
        let mut created = 0;
        for chunk in accounts.chunks(10_000) {
            let rows: Vec<Value> = chunk
                .iter()
                .map(|a| {
                    json!([
                        a.name,
                        assets_json(a),
                        a.shard,
                        a.state.code(),
                        a.created_at_ms
                    ])
                })
                .collect();
            let mut tx = begin_immediate(&self.pool).await?;
            created += sqlx::query(
                "INSERT INTO axs_accounts (account, assets, shard, state, created_at_ms)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]')
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (account) DO NOTHING",
            )
            .bind(Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected() as usize;
            tx.commit().await?;
        }
        Ok(created)
    }

    async fn open_account(&self, account: &Account) -> Result<Account, StoreError> {
        let mut tx = begin_immediate(&self.pool).await?;
        let existing = sqlx::query("SELECT * FROM axs_accounts WHERE account = ?1")
            .bind(&account.name)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            let existing = account_from_row(&row)?;
            if existing.assets != account.assets || existing.shard != account.shard {
                return Err(StoreError::AccountExists(account.name.clone()));
            }
            return Ok(existing);
        }
        sqlx::query(
            "INSERT INTO axs_accounts (account, assets, shard, state, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&account.name)
        .bind(assets_json(account))
        .bind(i64::from(account.shard))
        .bind(account.state.code())
        .bind(account.created_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(account.clone())
    }

    async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query("SELECT * FROM axs_accounts WHERE account = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn accounts(&self, names: &[String]) -> Result<HashMap<String, Account>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM axs_accounts WHERE account IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(names).to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| account_from_row(row).map(|a| (a.name.clone(), a)))
            .collect()
    }

    async fn set_account_state(
        &self,
        name: &str,
        state: AccountState,
    ) -> Result<Account, StoreError> {
        let mut tx = begin_immediate(&self.pool).await?;
        let updated = sqlx::query("UPDATE axs_accounts SET state = ?2 WHERE account = ?1")
            .bind(name)
            .bind(state.code())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NoAccount(name.to_owned()));
        }
        let row = sqlx::query("SELECT * FROM axs_accounts WHERE account = ?1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        account_from_row(&row)
    }

    async fn submit(
        &self,
        changes: &[(ChangeRequest, u32)],
        now_ms: i64,
    ) -> Result<Vec<Submitted>, StoreError> {
        let keys: Vec<&str> = changes.iter().map(|(c, _)| c.key.as_str()).collect();
        let mut tx = begin_immediate(&self.pool).await?;
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE key IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json!(keys).to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut existing = HashMap::new();
        for row in &rows {
            let record = change_from_row(row)?;
            existing.insert(record.request.key.clone(), record);
        }
        let mut answers = Vec::with_capacity(changes.len());
        let mut fresh = Vec::new();
        for (request, shard) in changes {
            let stored = existing.get(&request.key);
            answers.push(Submitted::answer(request, stored, now_ms)?);
            if stored.is_none() {
                fresh.push(json!([
                    request.key,
                    request.account,
                    request.asset,
                    request.amount.to_string(),
                    request.kind.code(),
                    request.pending_key,
                    i64_of(request.timeout_ms),
                    request.metadata,
                    shard,
                ]));
            }
        }
        if !fresh.is_empty() {
            sqlx::query(
                "INSERT INTO axs_changes
                   (key, account, asset, amount, kind, pending_key, timeout_ms, metadata, shard,
                    status, created_at_ms)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                        json_extract(value, '$[6]'), json_extract(value, '$[7]'),
                        json_extract(value, '$[8]'), 1, ?2
                 FROM json_each(?1)",
            )
            .bind(Value::Array(fresh).to_string())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(answers)
    }

    async fn mark_published(&self, positions: &[(String, i32, i64)]) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        let rows: Vec<Value> = positions
            .iter()
            .map(|(key, partition, offset)| json!([key, partition, offset]))
            .collect();
        let mut tx = begin_immediate(&self.pool).await?;
        sqlx::query(
            "UPDATE axs_changes SET status = 2, partition = p.partition, offset = p.offset
             FROM (SELECT json_extract(value, '$[0]') AS key,
                          json_extract(value, '$[1]') AS partition,
                          json_extract(value, '$[2]') AS offset
                   FROM json_each(?1)) AS p
             WHERE axs_changes.key = p.key AND axs_changes.status = 1",
        )
        .bind(Value::Array(rows).to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn change(&self, key: &str) -> Result<Option<ChangeRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE key = ?1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(change_from_row).transpose()
    }

    async fn changes(&self, keys: &[String]) -> Result<HashMap<String, ChangeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE key IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json!(keys).to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| change_from_row(row).map(|c| (c.request.key.clone(), c)))
            .collect()
    }

    async fn outbox(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM axs_changes WHERE status = 1 AND created_at_ms < ?1
             ORDER BY created_at_ms LIMIT ?2"
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
        let row = sqlx::query("SELECT * FROM axs_balances WHERE account = ?1 AND asset = ?2")
            .bind(account)
            .bind(asset)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(balance_from_row).transpose()
    }

    async fn balances(&self, account: &str) -> Result<Vec<Balance>, StoreError> {
        let rows = sqlx::query("SELECT * FROM axs_balances WHERE account = ?1 ORDER BY asset")
            .bind(account)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(balance_with_key).collect()
    }

    async fn history(&self, query: &HistoryQuery<'_>) -> Result<HistoryPage, StoreError> {
        let limit = query.limit.clamp(1, 1000);
        let rows = sqlx::query(
            "SELECT * FROM axs_history
             WHERE account = ?1 AND (?2 IS NULL OR asset = ?2)
               AND (?3 IS NULL OR applied_at_ms <= ?3) AND (?4 IS NULL OR seq < ?4)
             ORDER BY seq DESC LIMIT ?5",
        )
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
            "SELECT balance_after FROM axs_history
             WHERE account = ?1 AND asset = ?2 AND applied_at_ms <= ?3
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
            sqlx::query_scalar("SELECT next_offset FROM axs_offsets WHERE partition = ?1")
                .bind(partition)
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
        let expired_rows = sqlx::query(
            "SELECT * FROM axs_holds WHERE partition = ?1 AND expires_at_ms <= ?2
             ORDER BY expires_at_ms LIMIT 1000",
        )
        .bind(partition)
        .bind(now_ms)
        .fetch_all(&mut *conn)
        .await?;
        let expired_holds = expired_rows
            .iter()
            .map(hold_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = Wanted::of(events, &expired_holds);
        let mut snapshot = Snapshot::default();
        let expired = expired_holds.iter().map(|h| h.key.clone()).collect();
        for hold in expired_holds {
            snapshot.holds.insert(hold.key.clone(), hold);
        }
        let account_rows = sqlx::query(
            "SELECT * FROM axs_accounts WHERE account IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(wanted.names).to_string())
        .fetch_all(&mut *conn)
        .await?;
        for row in &account_rows {
            let account = account_from_row(row)?;
            snapshot.accounts.insert(account.name.clone(), account);
        }
        let balance_rows = sqlx::query(
            "SELECT b.* FROM axs_balances AS b
             JOIN (SELECT json_extract(value, '$[0]') AS account,
                          json_extract(value, '$[1]') AS asset FROM json_each(?1)) AS p
               ON b.account = p.account AND b.asset = p.asset",
        )
        .bind(json!(wanted.pairs).to_string())
        .fetch_all(&mut *conn)
        .await?;
        for row in &balance_rows {
            snapshot.balances.insert(
                (row.try_get("account")?, row.try_get("asset")?),
                balance_from_row(row)?,
            );
        }
        if !wanted.hold_keys.is_empty() {
            let rows = sqlx::query(
                "SELECT * FROM axs_holds WHERE key IN (SELECT value FROM json_each(?1))",
            )
            .bind(json!(wanted.hold_keys).to_string())
            .fetch_all(&mut *conn)
            .await?;
            for row in &rows {
                let hold = hold_from_row(row)?;
                snapshot.holds.insert(hold.key.clone(), hold);
            }
        }
        let done: Vec<String> = sqlx::query_scalar(
            "SELECT key FROM axs_changes
             WHERE key IN (SELECT value FROM json_each(?1)) AND status IN (3, 4)",
        )
        .bind(json!(wanted.keys).to_string())
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
        let mut tx = begin_immediate(&self.pool).await?;
        fence(&mut tx, &fence_.resource, fence_.token).await?;
        if !plan.balances.is_empty() {
            let rows: Vec<Value> = plan
                .balances
                .iter()
                .map(|((account, asset), s)| {
                    json!([
                        account,
                        asset,
                        s.balance.to_string(),
                        s.pending_debit.to_string(),
                        s.pending_credit.to_string(),
                        i64_of(s.version)
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO axs_balances (account, asset, balance, pending_debit, pending_credit, version)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]')
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (account, asset) DO UPDATE SET
                   balance = excluded.balance, pending_debit = excluded.pending_debit,
                   pending_credit = excluded.pending_credit, version = excluded.version",
            )
            .bind(Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !plan.decisions.is_empty() {
            let rows: Vec<Value> = plan
                .decisions
                .iter()
                .zip(&plan.events)
                .map(|(d, p)| {
                    let r = &p.event.request;
                    json!([
                        r.key,
                        r.account,
                        r.asset,
                        r.amount.to_string(),
                        r.kind.code(),
                        r.pending_key,
                        i64_of(r.timeout_ms),
                        r.metadata,
                        p.event.shard,
                        d.status.code(),
                        d.reason.map(|r| r.as_str()).unwrap_or(""),
                        d.partition,
                        d.offset,
                        p.event.created_at_ms,
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO axs_changes (key, account, asset, amount, kind, pending_key,
                    timeout_ms, metadata, shard, status, reason, partition, offset,
                    created_at_ms, applied_at_ms)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                        json_extract(value, '$[6]'), json_extract(value, '$[7]'),
                        json_extract(value, '$[8]'), json_extract(value, '$[9]'),
                        json_extract(value, '$[10]'), json_extract(value, '$[11]'),
                        json_extract(value, '$[12]'), json_extract(value, '$[13]'), ?2
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (key) DO UPDATE SET status = excluded.status,
                   reason = excluded.reason, partition = excluded.partition,
                   offset = excluded.offset, applied_at_ms = excluded.applied_at_ms",
            )
            .bind(Value::Array(rows).to_string())
            .bind(plan.now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if !plan.history.is_empty() {
            let rows: Vec<Value> = plan
                .history
                .iter()
                .map(|h| {
                    json!([
                        h.account,
                        h.asset,
                        i64_of(h.version),
                        h.key,
                        h.kind.code(),
                        h.balance_delta.to_string(),
                        h.pending_debit_delta.to_string(),
                        h.pending_credit_delta.to_string(),
                        h.balance_after.to_string(),
                        h.applied_at_ms
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO axs_history (account, asset, version, key, kind, balance_delta,
                    pending_debit_delta, pending_credit_delta, balance_after, applied_at_ms)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]'),
                        json_extract(value, '$[6]'), json_extract(value, '$[7]'),
                        json_extract(value, '$[8]'), json_extract(value, '$[9]')
                 FROM json_each(?1)",
            )
            .bind(Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !plan.holds_closed.is_empty() {
            sqlx::query("DELETE FROM axs_holds WHERE key IN (SELECT value FROM json_each(?1))")
                .bind(json!(plan.holds_closed).to_string())
                .execute(&mut *tx)
                .await?;
        }
        let opened: Vec<Value> = plan
            .holds_opened
            .iter()
            .filter(|h| !plan.holds_closed.contains(&h.key))
            .map(|h| {
                json!([
                    h.key,
                    h.account,
                    h.asset,
                    h.amount.to_string(),
                    partition,
                    h.expires_at_ms
                ])
            })
            .collect();
        if !opened.is_empty() {
            sqlx::query(
                "INSERT INTO axs_holds (key, account, asset, amount, partition, expires_at_ms)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]')
                 FROM json_each(?1)",
            )
            .bind(Value::Array(opened).to_string())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO axs_offsets (partition, next_offset) VALUES (?1, ?2)
             ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
        )
        .bind(partition)
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
             WHERE partition = ?1 AND offset > ?2 AND status IN (3, 4)
             ORDER BY offset LIMIT ?3"
        ))
        .bind(partition)
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
        let mut tx = begin_immediate(&self.pool).await?;
        sqlx::query(
            "INSERT INTO axs_members (member, expires_at_ms) VALUES (?1, ?2)
             ON CONFLICT (member) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
        )
        .bind(member)
        .bind(now_ms.saturating_add(ttl_ms))
        .execute(&mut *tx)
        .await?;
        let live: Vec<String> = sqlx::query_scalar(
            "SELECT member FROM axs_members WHERE expires_at_ms > ?1 ORDER BY member",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(live)
    }

    async fn leave(&self, member: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM axs_members WHERE member = ?1")
            .bind(member)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn dump(&self) -> Result<Dump, StoreError> {
        let mut dump = Dump::default();
        for row in sqlx::query("SELECT * FROM axs_accounts ORDER BY account")
            .fetch_all(&self.pool)
            .await?
        {
            dump.accounts.push(account_from_row(&row)?);
        }
        for row in sqlx::query("SELECT key, status, kind FROM axs_changes")
            .fetch_all(&self.pool)
            .await?
        {
            dump.changes.push(change_status_from_row(&row)?);
        }
        for row in sqlx::query("SELECT * FROM axs_history ORDER BY account, asset, version")
            .fetch_all(&self.pool)
            .await?
        {
            dump.history.push(history_from_row(&row)?);
        }
        for row in sqlx::query("SELECT * FROM axs_balances ORDER BY account, asset")
            .fetch_all(&self.pool)
            .await?
        {
            dump.balances.push(balance_with_key(&row)?);
        }
        Ok(dump)
    }
}
