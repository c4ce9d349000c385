//! Where the ledger's truth lives: accounts, the change rows (outbox and idempotency record
//! in one), balances, history, holds and each partition's consumed offset. One trait, two
//! engines: SQLite embedded ([`sqlite`]) and PostgreSQL for scale-out ([`postgres`]). The
//! lease rows that fence the consumers live in the same database, so a batch's writes and
//! its fence check commit in one transaction.

pub mod audit;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ledger_lease::{FencingToken, LeaseError, LeaseStore, ResourceName};

use crate::engine::{Plan, Positioned, Snapshot};
use crate::model::{
    Account, AccountState, Balance, BalanceState, ChangeRecord, ChangeRequest, ChangeStatus,
    HistoryEntry,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("account {0} already exists with other settings")]
    AccountExists(String),
    #[error("no account {0}")]
    NoAccount(String),
    #[error("idempotency key {key} was already used for a different change ({field} differs)")]
    KeyConflict { key: String, field: &'static str },
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The batch's fence failed: another consumer holds the partition now.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Lease(error) if error.is_lost())
    }
}

/// The lease a fenced write carries.
#[derive(Debug, Clone)]
pub struct Fence {
    pub resource: ResourceName,
    pub token: FencingToken,
}

/// The answer for one submitted change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub key: String,
    pub status: ChangeStatus,
    /// The key was stored before with the same payload.
    pub duplicate: bool,
    pub created_at_ms: i64,
}

impl Submitted {
    /// The answer for `request`, given what the store already held under its key: the
    /// first answer again for the same payload, [`StoreError::KeyConflict`] naming the
    /// first differing field for another, a new INIT row when nothing was stored.
    pub(crate) fn answer(
        request: &ChangeRequest,
        stored: Option<&ChangeRecord>,
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let key = request.key.clone();
        match stored {
            Some(stored) => match stored.request.first_difference(request) {
                Some(field) => Err(StoreError::KeyConflict { key, field }),
                None => Ok(Self {
                    key,
                    status: stored.status,
                    duplicate: true,
                    created_at_ms: stored.created_at_ms,
                }),
            },
            None => Ok(Self {
                key,
                status: ChangeStatus::Init,
                duplicate: false,
                created_at_ms: now_ms,
            }),
        }
    }
}

/// A page of an account's history, newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery<'a> {
    pub account: &'a str,
    pub asset: Option<&'a str>,
    /// Only entries applied at or before this time.
    pub as_of_ms: Option<i64>,
    /// Entries strictly older than this cursor (from the previous page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Cursor for the next page, when there may be more.
    pub next_seq: Option<i64>,
}

#[async_trait]
pub trait LedgerStore: Send + Sync + fmt::Debug {
    /// The leases in the same database (fenced writes check them in their transaction).
    fn leases(&self) -> Arc<dyn LeaseStore>;

    /// Opens `account`; opening it again with the same settings returns it unchanged.
    async fn open_account(&self, account: &Account) -> Result<Account, StoreError>;
    /// Opens many new accounts in one transaction (seeding, benchmarks); an account that
    /// exists already is left as it is. Returns how many were created.
    async fn open_accounts(&self, accounts: &[Account]) -> Result<usize, StoreError> {
        let mut created = 0;
        for account in accounts {
            if self.account(&account.name).await?.is_none() {
                self.open_account(account).await?;
                created += 1;
            }
        }
        Ok(created)
    }
    async fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;
    async fn accounts(&self, names: &[String]) -> Result<HashMap<String, Account>, StoreError>;
    async fn set_account_state(
        &self,
        name: &str,
        state: AccountState,
    ) -> Result<Account, StoreError>;

    /// In one transaction: stores each new change in state INIT; a key stored before with
    /// the same payload is answered as it was; a key stored before with another payload
    /// fails the whole call with [`StoreError::KeyConflict`] and writes nothing.
    async fn submit(
        &self,
        changes: &[(ChangeRequest, u32)],
        now_ms: i64,
    ) -> Result<Vec<Submitted>, StoreError>;
    /// INIT -> PUBLISHED with the topic position; rows already further along are untouched.
    async fn mark_published(&self, positions: &[(String, i32, i64)]) -> Result<(), StoreError>;
    async fn change(&self, key: &str) -> Result<Option<ChangeRecord>, StoreError>;
    async fn changes(&self, keys: &[String]) -> Result<HashMap<String, ChangeRecord>, StoreError>;
    /// INIT rows created before `created_before_ms`, oldest first: what the relay re-sends.
    async fn outbox(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError>;
    /// How many rows are in INIT.
    async fn outbox_backlog(&self) -> Result<u64, StoreError>;

    async fn balance(&self, account: &str, asset: &str)
        -> Result<Option<BalanceState>, StoreError>;
    async fn balances(&self, account: &str) -> Result<Vec<Balance>, StoreError>;
    async fn history(&self, query: &HistoryQuery<'_>) -> Result<HistoryPage, StoreError>;
    /// The balance of (account, asset) right after the last change applied at or before
    /// `as_of_ms`.
    async fn balance_as_of(
        &self,
        account: &str,
        asset: &str,
        as_of_ms: i64,
    ) -> Result<Option<i128>, StoreError>;

    /// The next offset to consume on `partition`, as last committed with a batch.
    async fn consumed_offset(&self, partition: i32) -> Result<Option<i64>, StoreError>;
    /// The rows `events` may touch, plus holds of `partition` whose timeout has passed
    /// (returned by key and included in the snapshot).
    async fn snapshot(
        &self,
        partition: i32,
        events: &[Positioned],
        now_ms: i64,
    ) -> Result<(Snapshot, Vec<String>), StoreError>;
    /// Writes `plan` and `next_offset` in one transaction that commits only while `fence`
    /// is the partition's current lease.
    async fn apply(
        &self,
        fence: &Fence,
        partition: i32,
        plan: &Plan,
        next_offset: i64,
    ) -> Result<(), StoreError>;
    /// Changes of `partition` decided (applied or rejected) at offsets above `after`, in
    /// offset order.
    async fn decided_since(
        &self,
        partition: i32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError>;

    /// Refreshes `member`'s heartbeat and returns the live members, sorted.
    async fn heartbeat(
        &self,
        member: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
    async fn leave(&self, member: &str) -> Result<(), StoreError>;

    /// Every row the invariant auditor reads ([`audit::audit`]). Reads the whole ledger:
    /// for tests, fault drills and offline checks, not for a serving path.
    async fn dump(&self) -> Result<audit::Dump, StoreError>;
}
