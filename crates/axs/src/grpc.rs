//! The gRPC surface (`proto/axs/v1/axs.proto`): maps requests onto the write side and the
//! store, and errors onto status codes with per-field details (google.rpc.BadRequest and
//! PreconditionFailure), so a client can tell exactly which change of a batch is wrong.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ledger_lease::Clock;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

use crate::cache::BalanceCache;
use crate::model::{
    parse_amount, Account, AccountState, BalanceState, ChangeKind, ChangeRecord, ChangeStatus,
    HistoryEntry,
};
use crate::pb;
use crate::pb::ledger_server::{Ledger, LedgerServer};
use crate::store::{HistoryQuery, LedgerStore, StoreError};
use crate::validate::Violation;
use crate::write::{SubmitError, WriteSide};

/// The service; cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerService {
    write: Arc<WriteSide>,
    store: Arc<dyn LedgerStore>,
    cache: Arc<dyn BalanceCache>,
    clock: Arc<dyn Clock>,
    partitions: i32,
}

impl LedgerService {
    pub fn new(
        write: Arc<WriteSide>,
        cache: Arc<dyn BalanceCache>,
        clock: Arc<dyn Clock>,
        partitions: i32,
    ) -> Self {
        Self {
            store: Arc::clone(write.store()),
            write,
            cache,
            clock,
            partitions,
        }
    }

    pub fn into_server(self) -> LedgerServer<Self> {
        LedgerServer::new(self)
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NoAccount(name) => Status::not_found(format!("no account {name}")),
        StoreError::AccountExists(name) => Status::already_exists(format!(
            "account {name} already exists with other assets or shard"
        )),
        StoreError::KeyConflict { key, field } => conflict(&key, field),
        other => {
            tracing::error!(error = %other, "store error");
            Status::unavailable(format!("ledger store: {other}"))
        }
    }
}

fn conflict(key: &str, field: &str) -> Status {
    Status::with_error_details(
        Code::AlreadyExists,
        format!("idempotency key {key} was already used for a different change: {field} differs"),
        ErrorDetails::with_bad_request(vec![FieldViolation::new(
            field,
            format!("differs from the change first submitted under {key}"),
        )]),
    )
}

fn bad_request(message: String, violations: &[Violation]) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(
            violations
                .iter()
                .map(|v| FieldViolation::new(v.path(), v.reason.clone()))
                .collect::<Vec<_>>(),
        ),
    )
}

fn submit_status(error: SubmitError) -> Status {
    let message = error.to_string();
    match error {
        SubmitError::Invalid(violations) => bad_request(message, &violations),
        SubmitError::Precondition(violations) => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            ErrorDetails::with_precondition_failure(
                violations
                    .iter()
                    .map(|v| PreconditionViolation::new(v.field, v.path(), v.reason.clone()))
                    .collect::<Vec<_>>(),
            ),
        ),
        SubmitError::Conflict { key, field } => conflict(&key, field),
        SubmitError::Backlog { .. } => Status::resource_exhausted(message),
        SubmitError::Store(error) => store_status(error),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    let reason = reason.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request(vec![FieldViolation::new(field, reason)]),
    )
}

fn kind_pb(kind: ChangeKind) -> pb::ChangeKind {
    match kind {
        ChangeKind::Immediate => pb::ChangeKind::Immediate,
        ChangeKind::Pending => pb::ChangeKind::Pending,
        ChangeKind::PostPending => pb::ChangeKind::PostPending,
        ChangeKind::VoidPending => pb::ChangeKind::VoidPending,
    }
}

fn status_pb(status: ChangeStatus) -> pb::ChangeStatus {
    match status {
        ChangeStatus::Init => pb::ChangeStatus::Init,
        ChangeStatus::Published => pb::ChangeStatus::Published,
        ChangeStatus::Applied => pb::ChangeStatus::Applied,
        ChangeStatus::Rejected => pb::ChangeStatus::Rejected,
    }
}

fn change_pb(record: ChangeRecord) -> pb::Change {
    let request = record.request;
    let (partition, offset) = record.position.unwrap_or((-1, -1));
    pb::Change {
        change: Some(pb::BalanceChange {
            idempotency_key: request.key,
            account: request.account,
            asset: request.asset,
            amount: if request.amount == 0 {
                String::new()
            } else {
                request.amount.to_string()
            },
            kind: kind_pb(request.kind) as i32,
            pending_key: request.pending_key,
            timeout_ms: request.timeout_ms,
            metadata: request.metadata,
        }),
        status: status_pb(record.status) as i32,
        reason: record.reason,
        shard: record.shard,
        partition,
        offset,
        created_at_ms: record.created_at_ms,
        applied_at_ms: record.applied_at_ms.unwrap_or(0),
    }
}

fn balance_pb(account: &str, asset: &str, state: BalanceState) -> pb::Balance {
    pb::Balance {
        account: account.to_owned(),
        asset: asset.to_owned(),
        balance: state.balance.to_string(),
        available: state
            .available()
            .map_or_else(|| "overflow".to_owned(), |a| a.to_string()),
        pending_debit: state.pending_debit.to_string(),
        pending_credit: state.pending_credit.to_string(),
        version: state.version,
    }
}

fn account_pb(account: Account) -> pb::Account {
    pb::Account {
        account: account.name,
        assets: account
            .assets
            .into_iter()
            .map(|(asset, limit)| pb::AssetLimit {
                asset,
                overdraft_limit: limit.to_string(),
            })
            .collect(),
        shard: account.shard,
        state: match account.state {
            AccountState::Open => pb::AccountState::Open,
            AccountState::Frozen => pb::AccountState::Frozen,
            AccountState::Closed => pb::AccountState::Closed,
        } as i32,
        created_at_ms: account.created_at_ms,
    }
}

fn history_pb(entry: HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        idempotency_key: entry.key,
        asset: entry.asset,
        kind: kind_pb(entry.kind) as i32,
        balance_delta: entry.balance_delta.to_string(),
        pending_debit_delta: entry.pending_debit_delta.to_string(),
        pending_credit_delta: entry.pending_credit_delta.to_string(),
        balance_after: entry.balance_after.to_string(),
        version: entry.version,
        applied_at_ms: entry.applied_at_ms,
    }
}

fn name_field(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, "must be 1-128 printable ASCII characters"));
    }
    Ok(())
}

/// `StreamAppliedChanges` cursors: the last offset delivered per partition, comma-separated
/// (`-1` = nothing yet).
fn parse_cursor(cursor: &str, partitions: i32) -> Result<Vec<i64>, Status> {
    let count = usize::try_from(partitions).unwrap_or(1);
    if cursor.is_empty() {
        return Ok(vec![-1; count]);
    }
    let offsets: Option<Vec<i64>> = cursor.split(',').map(|p| p.parse().ok()).collect();
    match offsets {
        Some(offsets) if offsets.len() == count => Ok(offsets),
        _ => Err(invalid(
            "cursor",
            format!("not a cursor of this ledger ({partitions} partitions)"),
        )),
    }
}

fn format_cursor(offsets: &[i64]) -> String {
    offsets
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

type AppliedStream = Pin<Box<dyn Stream<Item = Result<pb::AppliedChange, Status>> + Send>>;

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn batch_submit_balance_changes(
        &self,
        request: Request<pb::BatchSubmitBalanceChangesRequest>,
    ) -> Result<Response<pb::BatchSubmitBalanceChangesResponse>, Status> {
        let submitted = self
            .write
            .submit(request.into_inner().changes)
            .await
            .map_err(submit_status)?;
        Ok(Response::new(pb::BatchSubmitBalanceChangesResponse {
            results: submitted
                .into_iter()
                .map(|s| pb::SubmitResult {
                    idempotency_key: s.key,
                    status: status_pb(s.status) as i32,
                    duplicate: s.duplicate,
                    created_at_ms: s.created_at_ms,
                })
                .collect(),
        }))
    }

    async fn get_change(
        &self,
        request: Request<pb::GetChangeRequest>,
    ) -> Result<Response<pb::Change>, Status> {
        let key = request.into_inner().idempotency_key;
        name_field("idempotency_key", &key)?;
        match self.store.change(&key).await.map_err(store_status)? {
            Some(record) => Ok(Response::new(change_pb(record))),
            None => Err(Status::not_found(format!("no change {key}"))),
        }
    }

    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let request = request.into_inner();
        name_field("account", &request.account)?;
        if self
            .store
            .account(&request.account)
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(Status::not_found(format!("no account {}", request.account)));
        }
        let before_seq = if request.page_token.is_empty() {
            None
        } else {
            Some(
                request
                    .page_token
                    .parse::<i64>()
                    .map_err(|_| invalid("page_token", "not a token from a previous page"))?,
            )
        };
        let asset = (!request.asset.is_empty()).then_some(request.asset.as_str());
        let as_of_ms = (request.as_of_ms > 0).then_some(request.as_of_ms);
        let page = self
            .store
            .history(&HistoryQuery {
                account: &request.account,
                asset,
                as_of_ms,
                before_seq,
                limit: if request.page_size == 0 {
                    100
                } else {
                    request.page_size.min(1000)
                },
            })
            .await
            .map_err(store_status)?;
        let balance_as_of = match asset {
            Some(asset) => self
                .store
                .balance_as_of(
                    &request.account,
                    asset,
                    as_of_ms.unwrap_or(self.clock.now().0),
                )
                .await
                .map_err(store_status)?
                .unwrap_or(0)
                .to_string(),
            None => String::new(),
        };
        Ok(Response::new(pb::ListChangesResponse {
            entries: page.entries.into_iter().map(history_pb).collect(),
            next_page_token: page.next_seq.map(|s| s.to_string()).unwrap_or_default(),
            balance_as_of,
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let request = request.into_inner();
        name_field("account", &request.account)?;
        name_field("asset", &request.asset)?;
        if let Ok(Some(state)) = self.cache.get(&request.account, &request.asset).await {
            return Ok(Response::new(balance_pb(
                &request.account,
                &request.asset,
                state,
            )));
        }
        let account = self
            .store
            .account(&request.account)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no account {}", request.account)))?;
        if !account.assets.contains_key(&request.asset) {
            return Err(Status::not_found(format!(
                "account {} does not hold {}",
                request.account, request.asset
            )));
        }
        let state = self
            .store
            .balance(&request.account, &request.asset)
            .await
            .map_err(store_status)?
            .unwrap_or_default();
        Ok(Response::new(balance_pb(
            &request.account,
            &request.asset,
            state,
        )))
    }

    async fn get_balances(
        &self,
        request: Request<pb::GetBalancesRequest>,
    ) -> Result<Response<pb::GetBalancesResponse>, Status> {
        let name = request.into_inner().account;
        name_field("account", &name)?;
        let account = self
            .store
            .account(&name)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no account {name}")))?;
        let mut by_asset: BTreeMap<String, BalanceState> = account
            .assets
            .keys()
            .map(|asset| (asset.clone(), BalanceState::default()))
            .collect();
        for balance in self.store.balances(&name).await.map_err(store_status)? {
            by_asset.insert(balance.asset, balance.state);
        }
        Ok(Response::new(pb::GetBalancesResponse {
            balances: by_asset
                .into_iter()
                .map(|(asset, state)| balance_pb(&name, &asset, state))
                .collect(),
        }))
    }

    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        name_field("account", &request.account)?;
        if request.assets.is_empty() {
            return Err(invalid("assets", "an account holds at least one asset"));
        }
        let mut assets = BTreeMap::new();
        for (i, limit) in request.assets.iter().enumerate() {
            let field = format!("assets[{i}]");
            if limit.asset.is_empty()
                || limit.asset.len() > 32
                || !limit.asset.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(
                    &format!("{field}.asset"),
                    "must be 1-32 printable ASCII characters",
                ));
            }
            let overdraft = if limit.overdraft_limit.is_empty() {
                Some(0)
            } else {
                parse_amount(&limit.overdraft_limit).filter(|l| *l >= 0)
            };
            let Some(overdraft) = overdraft else {
                return Err(invalid(
                    &format!("{field}.overdraft_limit"),
                    "must be a non-negative integer of minor units",
                ));
            };
            if assets.insert(limit.asset.clone(), overdraft).is_some() {
                return Err(invalid(&format!("{field}.asset"), "listed twice"));
            }
        }
        let account = Account {
            name: request.account,
            assets,
            shard: request.shard,
            state: AccountState::Open,
            created_at_ms: self.clock.now().0,
        };
        let opened = self
            .store
            .open_account(&account)
            .await
            .map_err(store_status)?;
        Ok(Response::new(account_pb(opened)))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::Account>, Status> {
        let name = request.into_inner().account;
        name_field("account", &name)?;
        match self.store.account(&name).await.map_err(store_status)? {
            Some(account) => Ok(Response::new(account_pb(account))),
            None => Err(Status::not_found(format!("no account {name}"))),
        }
    }

    async fn freeze_account(
        &self,
        request: Request<pb::AccountRef>,
    ) -> Result<Response<pb::Account>, Status> {
        self.set_state(request.into_inner().account, AccountState::Frozen)
            .await
    }

    async fn unfreeze_account(
        &self,
        request: Request<pb::AccountRef>,
    ) -> Result<Response<pb::Account>, Status> {
        self.set_state(request.into_inner().account, AccountState::Open)
            .await
    }

    async fn close_account(
        &self,
        request: Request<pb::AccountRef>,
    ) -> Result<Response<pb::Account>, Status> {
        self.set_state(request.into_inner().account, AccountState::Closed)
            .await
    }

    type StreamAppliedChangesStream = AppliedStream;

    async fn stream_applied_changes(
        &self,
        request: Request<pb::StreamAppliedChangesRequest>,
    ) -> Result<Response<Self::StreamAppliedChangesStream>, Status> {
        let request = request.into_inner();
        let mut offsets = parse_cursor(&request.cursor, self.partitions)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let store = Arc::clone(&self.store);
        let follow = request.follow;
        tokio::spawn(async move {
            loop {
                let mut sent = 0;
                for partition in 0..offsets.len() {
                    let after = offsets[partition];
                    let rows = match store
                        .decided_since(i32::try_from(partition).unwrap_or(0), after, 500)
                        .await
                    {
                        Ok(rows) => rows,
                        Err(error) => {
                            let _ = tx.send(Err(store_status(error))).await;
                            return;
                        }
                    };
                    for row in rows {
                        if let Some((_, offset)) = row.position {
                            offsets[partition] = offset;
                        }
                        let item = pb::AppliedChange {
                            change: Some(change_pb(row)),
                            cursor: format_cursor(&offsets),
                        };
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                        sent += 1;
                    }
                }
                if sent == 0 {
                    if !follow {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl LedgerService {
    async fn set_state(
        &self,
        name: String,
        state: AccountState,
    ) -> Result<Response<pb::Account>, Status> {
        name_field("account", &name)?;
        let account = self
            .store
            .set_account_state(&name, state)
            .await
            .map_err(store_status)?;
        Ok(Response::new(account_pb(account)))
    }
}
