//! The embedded ledger store: one SQLite file (WAL, `synchronous=FULL`), shared with the
//! lease tables. Amounts are TEXT (SQLite integers stop at 64 bits); arithmetic happens in
//! Rust with checked `i128`. Bulk statements take their rows as one JSON array bound to
//! `json_each`, so a batch of a thousand rows is one statement, not a thousand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ledger_lease::sqlite::{begin_immediate, connect_options, fence};
use ledger_lease::{Clock, LeaseStore};
use serde_json::{json, Value};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;

use super::{Fence, HistoryPage, HistoryQuery, LedgerStore, StoreError, Submitted};
use crate::engine::{Plan, Positioned, Snapshot};
use crate::model::{
    parse_amount, Account, AccountState, Amount, Balance, BalanceState, ChangeKind, ChangeRecord,
    ChangeRequest, ChangeStatus, HistoryEntry, Hold,
};

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

fn amount(row: &SqliteRow, column: &str) -> Result<Amount, StoreError> {
    let text: String = row.try_get(column)?;
    parse_amount(&text).ok_or_else(|| StoreError::Corrupt(format!("{column} = {text:?}")))
}

fn account_from_row(row: &SqliteRow) -> Result<Account, StoreError> {
    let assets_json: String = row.try_get("assets")?;
    let raw: BTreeMap<String, String> = serde_json::from_str(&assets_json)
        .map_err(|error| StoreError::Corrupt(format!("assets {assets_json:?}: {error}")))?;
    let mut assets = BTreeMap::new();
    for (asset, limit) in raw {
        let limit = parse_amount(&limit)
            .ok_or_else(|| StoreError::Corrupt(format!("overdraft limit {limit:?}")))?;
        assets.insert(asset, limit);
    }
    let state: i64 = row.try_get("state")?;
    Ok(Account {
        name: row.try_get("account")?,
        assets,
        shard: u32::try_from(row.try_get::<i64, _>("shard")?)
            .map_err(|_| StoreError::Corrupt("shard".into()))?,
        state: AccountState::from_code(state)
            .ok_or_else(|| StoreError::Corrupt(format!("account state {state}")))?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn assets_json(account: &Account) -> String {
    let map: BTreeMap<&String, String> = account
        .assets
        .iter()
        .map(|(asset, limit)| (asset, limit.to_string()))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

fn change_from_row(row: &SqliteRow) -> Result<ChangeRecord, StoreError> {
    let kind: i64 = row.try_get("kind")?;
    let status: i64 = row.try_get("status")?;
    let partition: Option<i64> = row.try_get("partition")?;
    let offset: Option<i64> = row.try_get("offset")?;
    Ok(ChangeRecord {
        request: ChangeRequest {
            key: row.try_get("key")?,
            account: row.try_get("account")?,
            asset: row.try_get("asset")?,
            amount: amount(row, "amount")?,
            kind: ChangeKind::from_code(kind)
                .ok_or_else(|| StoreError::Corrupt(format!("change kind {kind}")))?,
            pending_key: row.try_get("pending_key")?,
            timeout_ms: u64::try_from(row.try_get::<i64, _>("timeout_ms")?).unwrap_or(0),
            metadata: row.try_get("metadata")?,
        },
        shard: u32::try_from(row.try_get::<i64, _>("shard")?).unwrap_or(0),
        status: ChangeStatus::from_code(status)
            .ok_or_else(|| StoreError::Corrupt(format!("change status {status}")))?,
        reason: row.try_get("reason")?,
        position: match (partition, offset) {
            (Some(p), Some(o)) => Some((i32::try_from(p).unwrap_or(-1), o)),
            _ => None,
        },
        created_at_ms: row.try_get("created_at_ms")?,
        applied_at_ms: row.try_get("applied_at_ms")?,
    })
}

fn balance_from_row(row: &SqliteRow) -> Result<BalanceState, StoreError> {
    Ok(BalanceState {
        balance: amount(row, "balance")?,
        pending_debit: amount(row, "pending_debit")?,
        pending_credit: amount(row, "pending_credit")?,
        version: u64::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0),
    })
}

fn history_from_row(row: &SqliteRow) -> Result<HistoryEntry, StoreError> {
    let kind: i64 = row.try_get("kind")?;
    Ok(HistoryEntry {
        account: row.try_get("account")?,
        asset: row.try_get("asset")?,
        version: u64::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0),
        key: row.try_get("key")?,
        kind: ChangeKind::from_code(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("history kind {kind}")))?,
        balance_delta: amount(row, "balance_delta")?,
        pending_debit_delta: amount(row, "pending_debit_delta")?,
        pending_credit_delta: amount(row, "pending_credit_delta")?,
        balance_after: amount(row, "balance_after")?,
        applied_at_ms: row.try_get("applied_at_ms")?,
    })
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
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
            match existing.get(&request.key) {
                Some(stored) => {
                    if let Some(field) = stored.request.first_difference(request) {
                        return Err(StoreError::KeyConflict {
                            key: request.key.clone(),
                            field,
                        });
                    }
                    answers.push(Submitted {
                        key: request.key.clone(),
                        status: stored.status,
                        duplicate: true,
                        created_at_ms: stored.created_at_ms,
                    });
                }
                None => {
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
                    answers.push(Submitted {
                        key: request.key.clone(),
                        status: ChangeStatus::Init,
                        duplicate: false,
                        created_at_ms: now_ms,
                    });
                }
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
        rows.iter()
            .map(|row| {
                Ok(Balance {
                    account: row.try_get("account")?,
                    asset: row.try_get("asset")?,
                    state: balance_from_row(row)?,
                })
            })
            .collect()
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
        let more = rows.len() > limit as usize;
        let mut entries = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last_seq = None;
        for row in rows.iter().take(limit as usize) {
            entries.push(history_from_row(row)?);
            last_seq = Some(row.try_get::<i64, _>("seq")?);
        }
        Ok(HistoryPage {
            entries,
            next_seq: if more { last_seq } else { None },
        })
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
        let mut snapshot = Snapshot::default();
        let mut expired = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        let mut pairs: HashSet<(String, String)> = HashSet::new();
        let mut hold_keys: Vec<&str> = Vec::new();
        let mut keys: Vec<&str> = Vec::with_capacity(events.len());
        for row in &expired_rows {
            let hold = hold_from_row(row)?;
            pairs.insert((hold.account.clone(), hold.asset.clone()));
            expired.push(hold.key.clone());
            snapshot.holds.insert(hold.key.clone(), hold);
        }
        for positioned in events {
            let request = &positioned.event.request;
            names.insert(&request.account);
            pairs.insert((request.account.clone(), request.asset.clone()));
            keys.push(&request.key);
            if !request.pending_key.is_empty() {
                hold_keys.push(&request.pending_key);
            }
        }
        let account_rows = sqlx::query(
            "SELECT * FROM axs_accounts WHERE account IN (SELECT value FROM json_each(?1))",
        )
        .bind(json!(names).to_string())
        .fetch_all(&mut *conn)
        .await?;
        for row in &account_rows {
            let account = account_from_row(row)?;
            snapshot.accounts.insert(account.name.clone(), account);
        }
        let pair_list: Vec<[&String; 2]> = pairs.iter().map(|(a, b)| [a, b]).collect();
        let balance_rows = sqlx::query(
            "SELECT b.* FROM axs_balances AS b
             JOIN (SELECT json_extract(value, '$[0]') AS account,
                          json_extract(value, '$[1]') AS asset FROM json_each(?1)) AS p
               ON b.account = p.account AND b.asset = p.asset",
        )
        .bind(json!(pair_list).to_string())
        .fetch_all(&mut *conn)
        .await?;
        for row in &balance_rows {
            snapshot.balances.insert(
                (row.try_get("account")?, row.try_get("asset")?),
                balance_from_row(row)?,
            );
        }
        if !hold_keys.is_empty() {
            let rows = sqlx::query(
                "SELECT * FROM axs_holds WHERE key IN (SELECT value FROM json_each(?1))",
            )
            .bind(json!(hold_keys).to_string())
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
        .bind(json!(keys).to_string())
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
}

fn hold_from_row(row: &SqliteRow) -> Result<Hold, StoreError> {
    Ok(Hold {
        key: row.try_get("key")?,
        account: row.try_get("account")?,
        asset: row.try_get("asset")?,
        amount: amount(row, "amount")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    })
}

/// What [`SqliteLedgerStore::audit`] found.
#[derive(Debug, Default)]
pub struct Audit {
    pub balances: usize,
    pub applied: usize,
    pub rejected: usize,
    pub undecided: usize,
    /// Each broken invariant, described; empty when the ledger is sound.
    pub violations: Vec<String>,
}

impl SqliteLedgerStore {
    /// Checks the ledger's invariants straight from its tables:
    /// - every balance equals the sum of its history's deltas, its version their count,
    ///   and each entry's `balance_after` the running sum;
    /// - replaying each history never takes the available balance below the overdraft
    ///   limit on a debit;
    /// - every applied change appears exactly once in history (a hold's expiry is a second
    ///   entry under the hold's key), a rejected or undecided one never.
    pub async fn audit(&self) -> Result<Audit, StoreError> {
        let mut audit = Audit::default();
        let mut limits: HashMap<(String, String), Amount> = HashMap::new();
        for row in sqlx::query("SELECT * FROM axs_accounts")
            .fetch_all(&self.pool)
            .await?
        {
            let account = account_from_row(&row)?;
            for (asset, limit) in &account.assets {
                limits.insert((account.name.clone(), asset.clone()), *limit);
            }
        }
        let kinds: HashMap<String, (ChangeStatus, ChangeKind)> =
            sqlx::query("SELECT key, status, kind FROM axs_changes")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| {
                    let status = ChangeStatus::from_code(row.try_get("status")?)
                        .ok_or_else(|| StoreError::Corrupt("status".into()))?;
                    let kind = ChangeKind::from_code(row.try_get("kind")?)
                        .ok_or_else(|| StoreError::Corrupt("kind".into()))?;
                    Ok((row.try_get("key")?, (status, kind)))
                })
                .collect::<Result<_, StoreError>>()?;
        // (balance, pending_debit, entries) per (account, asset), replayed in version order.
        let mut sums: HashMap<(String, String), (Amount, Amount, u64)> = HashMap::new();
        let mut per_key: HashMap<String, usize> = HashMap::new();
        let history = sqlx::query("SELECT * FROM axs_history ORDER BY account, asset, version")
            .fetch_all(&self.pool)
            .await?;
        for row in &history {
            let entry = history_from_row(row)?;
            let key = (entry.account.clone(), entry.asset.clone());
            let sum = sums.entry(key.clone()).or_default();
            let before = sum.0 - sum.1;
            sum.0 += entry.balance_delta;
            sum.1 += entry.pending_debit_delta;
            sum.2 += 1;
            if sum.0 != entry.balance_after {
                audit.violations.push(format!(
                    "{key:?} v{}: balance_after {} but the deltas sum to {}",
                    entry.version, entry.balance_after, sum.0
                ));
            }
            if sum.2 != entry.version {
                audit.violations.push(format!(
                    "{key:?}: entry {} has version {}",
                    sum.2, entry.version
                ));
            }
            let available = sum.0 - sum.1;
            let limit = limits.get(&key).copied().unwrap_or(0);
            if available < before && available < -limit {
                audit.violations.push(format!(
                    "{key:?} v{}: available {available} is below the overdraft limit -{limit}",
                    entry.version
                ));
            }
            let expiry = entry.kind == ChangeKind::VoidPending
                && kinds.get(&entry.key).map(|k| k.1) == Some(ChangeKind::Pending);
            if !expiry {
                *per_key.entry(entry.key).or_default() += 1;
            }
        }
        let balances = sqlx::query("SELECT * FROM axs_balances")
            .fetch_all(&self.pool)
            .await?;
        audit.balances = balances.len();
        for row in &balances {
            let key: (String, String) = (row.try_get("account")?, row.try_get("asset")?);
            let state = balance_from_row(row)?;
            let (sum, pending, count) = sums.get(&key).copied().unwrap_or_default();
            if state.balance != sum || state.version != count || state.pending_debit != pending {
                audit.violations.push(format!(
                    "{key:?}: row {state:?} but history gives balance {sum}, pending debit {pending}, {count} entries"
                ));
            }
        }
        for (key, (status, _)) in &kinds {
            let seen = per_key.get(key).copied().unwrap_or(0);
            let expected = match status {
                ChangeStatus::Applied => {
                    audit.applied += 1;
                    1
                }
                ChangeStatus::Rejected => {
                    audit.rejected += 1;
                    0
                }
                ChangeStatus::Init | ChangeStatus::Published => {
                    audit.undecided += 1;
                    0
                }
            };
            if seen != expected {
                audit.violations.push(format!(
                    "change {key} ({status:?}) is in history {seen} times"
                ));
            }
        }
        Ok(audit)
    }
}
