//! Row decoding shared by both engines. Each engine reads its columns through [`Columns`]
//! (text, integer, nullable integer), so the mapping from a row to a record, and every
//! check that a stored value is well formed, is written once.

use std::collections::BTreeMap;

use sqlx::Row;

use super::StoreError;
use crate::model::{
    parse_amount, Account, AccountState, Amount, BalanceState, ChangeKind, ChangeRecord,
    ChangeRequest, ChangeStatus, HistoryEntry, Hold,
};

/// The three column shapes the ledger tables use. Amounts are read as text (SQLite stores
/// them as TEXT; PostgreSQL's queries cast NUMERIC to text).
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
}

macro_rules! columns_for {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

columns_for!(sqlx::sqlite::SqliteRow);
columns_for!(sqlx::postgres::PgRow);

pub(crate) fn amount(row: &impl Columns, column: &str) -> Result<Amount, StoreError> {
    let text = row.text(column)?;
    parse_amount(&text).ok_or_else(|| StoreError::Corrupt(format!("{column} = {text:?}")))
}

fn unsigned<T: TryFrom<i64>>(row: &impl Columns, column: &str) -> Result<T, StoreError> {
    let value = row.int(column)?;
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} = {value}")))
}

/// An account's assets as stored: a JSON object of asset -> overdraft limit (a decimal
/// string, so limits beyond 64 bits survive).
pub(crate) fn assets_json(account: &Account) -> String {
    let map: BTreeMap<&String, String> = account
        .assets
        .iter()
        .map(|(asset, limit)| (asset, limit.to_string()))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

pub(crate) fn account_from_row(row: &impl Columns) -> Result<Account, StoreError> {
    let assets_json = row.text("assets")?;
    let raw: BTreeMap<String, String> = serde_json::from_str(&assets_json)
        .map_err(|error| StoreError::Corrupt(format!("assets {assets_json:?}: {error}")))?;
    let mut assets = BTreeMap::new();
    for (asset, limit) in raw {
        let limit = parse_amount(&limit)
            .ok_or_else(|| StoreError::Corrupt(format!("overdraft limit {limit:?}")))?;
        assets.insert(asset, limit);
    }
    let state = row.int("state")?;
    Ok(Account {
        name: row.text("account")?,
        assets,
        shard: unsigned(row, "shard")?,
        state: AccountState::from_code(state)
            .ok_or_else(|| StoreError::Corrupt(format!("account state {state}")))?,
        created_at_ms: row.int("created_at_ms")?,
    })
}

pub(crate) fn change_from_row(row: &impl Columns) -> Result<ChangeRecord, StoreError> {
    let kind = row.int("kind")?;
    let status = row.int("status")?;
    let position = match (row.opt_int("partition")?, row.opt_int("offset")?) {
        (Some(partition), Some(offset)) => Some((
            i32::try_from(partition)
                .map_err(|_| StoreError::Corrupt(format!("partition {partition}")))?,
            offset,
        )),
        _ => None,
    };
    Ok(ChangeRecord {
        request: ChangeRequest {
            key: row.text("key")?,
            account: row.text("account")?,
            asset: row.text("asset")?,
            amount: amount(row, "amount")?,
            kind: ChangeKind::from_code(kind)
                .ok_or_else(|| StoreError::Corrupt(format!("change kind {kind}")))?,
            pending_key: row.text("pending_key")?,
            timeout_ms: unsigned(row, "timeout_ms")?,
            metadata: row.text("metadata")?,
        },
        shard: unsigned(row, "shard")?,
        status: ChangeStatus::from_code(status)
            .ok_or_else(|| StoreError::Corrupt(format!("change status {status}")))?,
        reason: row.text("reason")?,
        position,
        created_at_ms: row.int("created_at_ms")?,
        applied_at_ms: row.opt_int("applied_at_ms")?,
    })
}

pub(crate) fn balance_from_row(row: &impl Columns) -> Result<BalanceState, StoreError> {
    Ok(BalanceState {
        balance: amount(row, "balance")?,
        pending_debit: amount(row, "pending_debit")?,
        pending_credit: amount(row, "pending_credit")?,
        version: unsigned(row, "version")?,
    })
}

pub(crate) fn history_from_row(row: &impl Columns) -> Result<HistoryEntry, StoreError> {
    let kind = row.int("kind")?;
    Ok(HistoryEntry {
        account: row.text("account")?,
        asset: row.text("asset")?,
        version: unsigned(row, "version")?,
        key: row.text("key")?,
        kind: ChangeKind::from_code(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("history kind {kind}")))?,
        balance_delta: amount(row, "balance_delta")?,
        pending_debit_delta: amount(row, "pending_debit_delta")?,
        pending_credit_delta: amount(row, "pending_credit_delta")?,
        balance_after: amount(row, "balance_after")?,
        applied_at_ms: row.int("applied_at_ms")?,
    })
}

pub(crate) fn hold_from_row(row: &impl Columns) -> Result<Hold, StoreError> {
    Ok(Hold {
        key: row.text("key")?,
        account: row.text("account")?,
        asset: row.text("asset")?,
        amount: amount(row, "amount")?,
        expires_at_ms: row.opt_int("expires_at_ms")?,
    })
}

pub(crate) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What a batch's snapshot must read: the accounts, balances, holds and change keys its
/// events (and the expired holds voided first) touch. Both engines query these sets.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    pub names: Vec<String>,
    pub pairs: Vec<(String, String)>,
    pub hold_keys: Vec<String>,
    pub keys: Vec<String>,
}

impl Wanted {
    pub fn of(events: &[crate::engine::Positioned], expired: &[Hold]) -> Self {
        let mut names = std::collections::BTreeSet::new();
        let mut pairs = std::collections::BTreeSet::new();
        let mut wanted = Self::default();
        for hold in expired {
            pairs.insert((hold.account.clone(), hold.asset.clone()));
        }
        for positioned in events {
            let request = &positioned.event.request;
            names.insert(request.account.clone());
            pairs.insert((request.account.clone(), request.asset.clone()));
            wanted.keys.push(request.key.clone());
            if !request.pending_key.is_empty() {
                wanted.hold_keys.push(request.pending_key.clone());
            }
        }
        wanted.names = names.into_iter().collect();
        wanted.pairs = pairs.into_iter().collect();
        wanted
    }
}

/// One page of history from rows fetched newest first with `limit + 1` as the SQL limit:
/// the extra row only says that another page exists.
pub(crate) fn history_page<R: Columns>(
    rows: &[R],
    limit: u32,
) -> Result<super::HistoryPage, StoreError> {
    let limit = limit as usize;
    let mut page = super::HistoryPage::default();
    let mut last_seq = None;
    for row in rows.iter().take(limit) {
        page.entries.push(history_from_row(row)?);
        last_seq = Some(row.int("seq")?);
    }
    if rows.len() > limit {
        page.next_seq = last_seq;
    }
    Ok(page)
}

pub(crate) fn balance_with_key(row: &impl Columns) -> Result<crate::model::Balance, StoreError> {
    Ok(crate::model::Balance {
        account: row.text("account")?,
        asset: row.text("asset")?,
        state: balance_from_row(row)?,
    })
}

/// (key, status, kind) of a change row, for the auditor.
pub(crate) fn change_status_from_row(
    row: &impl Columns,
) -> Result<(String, ChangeStatus, ChangeKind), StoreError> {
    let (status, kind) = (row.int("status")?, row.int("kind")?);
    Ok((
        row.text("key")?,
        ChangeStatus::from_code(status)
            .ok_or_else(|| StoreError::Corrupt(format!("change status {status}")))?,
        ChangeKind::from_code(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("change kind {kind}")))?,
    ))
}
