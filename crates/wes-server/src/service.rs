//! The gRPC service (`wes.v1.UtxoService`) over the UTXO client and the hosted store.
//!
//! **SubmitBlock.** Serialized by one lock, in this order, so that a refused block changes
//! nothing:
//! 1. the block must have a header; the same block already in the repository is answered
//!    as `already_present` (a retried submission);
//! 2. it must extend the repository tip: `FAILED_PRECONDITION` for an unknown parent, a
//!    parent that is not the tip (forks are not accepted over the API) or a wrong height;
//! 3. the UTXO system must reach the repository tip (the block's parent) within
//!    `submit_timeout`, so the block is validated on its parent's state; `UNAVAILABLE` if the
//!    breaker opens or time runs out;
//! 4. full validation against the store (signatures, value conservation, double spends,
//!    reference counts); `INVALID_ARGUMENT` with the validation error;
//! 5. append to the block repository (synced: the commit of the block and of its pending
//!    notification, see `wes_utxo_client::repository`), then NotifyBlockAdded. The UTXO
//!    system applies it asynchronously; with `wait_applied` the answer waits for that.
//!
//! Nothing else moves the UTXO tip while the lock is held: the applier only applies blocks
//! of the repository, and the repository only grows here.
//!
//! **Queries** read the store under its read lock. GetUtxosByAddress (without a category)
//! and ComputeAccountNonce are the seed's client operations and go through the client's
//! breaker; the others check the breaker and read the store directly. Either way an open
//! breaker answers `UNAVAILABLE`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Response, Status};
use wes_store::{BlockRepository, ResourceInfo, UtxoPosition};
use wes_utxo::model::{self, Address, AssetId, BlockHash, OutPointKey};
use wes_utxo::pb as model_pb;
use wes_utxo_client::{
    BreakerState, Health, NotifyOutcome, SyncStatus, Tip, UtxoClient, UtxoClientService,
};

use crate::config::ServerConfig;
use crate::error::{client_status, store_status};
use crate::metrics as names;
use crate::pb;
use crate::system::ServedStore;

/// State shared by the service and the server's other tasks.
pub(crate) struct Shared {
    pub(crate) client: UtxoClient<ServedStore>,
    pub(crate) served: ServedStore,
    pub(crate) repository: Arc<BlockRepository>,
    pub(crate) submit_lock: tokio::sync::Mutex<()>,
    pub(crate) submit_timeout: Duration,
    pub(crate) max_results: usize,
}

/// The service implementation (cheap to clone).
#[derive(Clone)]
pub struct UtxoGrpc {
    shared: Arc<Shared>,
}

impl UtxoGrpc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl Shared {
    pub(crate) fn new(
        client: UtxoClient<ServedStore>,
        served: ServedStore,
        repository: Arc<BlockRepository>,
        config: &ServerConfig,
    ) -> Self {
        Self {
            client,
            served,
            repository,
            submit_lock: tokio::sync::Mutex::new(()),
            submit_timeout: config.submit_timeout,
            max_results: config.max_results,
        }
    }

    fn check_breaker(&self) -> Result<(), Status> {
        if self.client.breaker_state() == BreakerState::Open {
            return Err(Status::unavailable(
                "circuit breaker open: utxo system calls are suspended",
            ));
        }
        Ok(())
    }

    fn check_len(&self, n: usize, what: &str) -> Result<(), Status> {
        if n > self.max_results {
            return Err(Status::resource_exhausted(format!(
                "{n} {what}, more than the {} one answer may carry",
                self.max_results
            )));
        }
        Ok(())
    }

    fn repository_tip(&self) -> Result<Option<Tip>, Status> {
        self.repository
            .tip()
            .map(|tip| tip.map(|(height, hash)| Tip { height, hash }))
            .map_err(store_status)
    }

    /// Waits until the UTXO tip is `target` (see the module docs, step 3).
    async fn wait_for_utxo_tip(
        &self,
        target: Option<Tip>,
        deadline: Instant,
    ) -> Result<(), Status> {
        let mut tips = self.served.subscribe_tip();
        loop {
            // Validation reads the UTXO system: an open breaker says it is not to be used.
            self.check_breaker()?;
            if *tips.borrow_and_update() == target {
                return Ok(());
            }
            self.client.wake_coordinator();
            let now = Instant::now();
            if now >= deadline {
                let utxo_len = self.served.tip_now().map_or(0, |tip| tip.height + 1);
                let target_len = target.map_or(0, |tip| tip.height + 1);
                return Err(Status::unavailable(format!(
                    "the utxo system has {utxo_len} blocks, the repository {target_len}; \
                     it did not catch up within {:?}",
                    self.submit_timeout
                )));
            }
            // Re-check the breaker now and then while waiting for the next tip.
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, tips.changed()).await;
        }
    }

    async fn submit_block(
        &self,
        request: pb::SubmitBlockRequest,
    ) -> Result<pb::SubmitBlockResponse, Status> {
        let block = request
            .block
            .ok_or_else(|| Status::invalid_argument("missing block"))?;
        let header = block
            .header
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("block has no header"))?;
        let tip = Tip {
            height: header.height,
            hash: model::block_hash(header),
        };
        let deadline = Instant::now() + self.submit_timeout;
        let _serial = self.submit_lock.lock().await;
        if self.repository.hash_at(tip.height).map_err(store_status)? == Some(tip.hash) {
            let applied = self
                .served
                .tip_now()
                .is_some_and(|utxo| utxo.height >= tip.height);
            return Ok(pb::SubmitBlockResponse {
                position: Some(position(tip)),
                already_present: true,
                outcome: pb::NotifyOutcome::Unspecified as i32,
                applied,
            });
        }
        let repository_tip = self.repository_tip()?;
        let expected_parent = repository_tip.map_or([0u8; 32], |tip| tip.hash.0);
        if header.parent_hash[..] != expected_parent[..] {
            let known = BlockHash::from_slice(&header.parent_hash)
                .ok()
                .map(|parent| self.repository.height_of(&parent))
                .transpose()
                .map_err(store_status)?
                .flatten();
            return Err(Status::failed_precondition(match known {
                Some(height) => format!(
                    "parent {} (height {height}) is not the repository tip {}: forks are not accepted",
                    hex(&header.parent_hash),
                    describe(repository_tip)
                ),
                None => format!(
                    "unknown parent {} (repository tip {})",
                    hex(&header.parent_hash),
                    describe(repository_tip)
                ),
            }));
        }
        let expected_height = repository_tip.map_or(0, |tip| tip.height + 1);
        if header.height != expected_height {
            return Err(Status::failed_precondition(format!(
                "wrong height {}, expected {expected_height}",
                header.height
            )));
        }
        self.wait_for_utxo_tip(repository_tip, deadline).await?;
        let block = Arc::new(block);
        let to_validate = block.clone();
        self.served
            .read(move |store| store.validate_block(&to_validate).map(|_| ()))
            .await
            .map_err(store_status)?;
        let repository = self.repository.clone();
        let to_append = block.clone();
        tokio::task::spawn_blocking(move || repository.append(&to_append))
            .await
            .map_err(|error| Status::internal(format!("append task failed: {error}")))?
            .map_err(store_status)?;
        metrics::counter!(names::BLOCKS_SUBMITTED).increment(1);
        let outcome = self.client.notify(tip).await.map_err(client_status)?;
        let applied = if request.wait_applied {
            self.wait_for_utxo_tip(Some(tip), Instant::now() + self.submit_timeout)
                .await?;
            true
        } else {
            self.served.tip_now() == Some(tip)
        };
        Ok(pb::SubmitBlockResponse {
            position: Some(position(tip)),
            already_present: false,
            outcome: notify_outcome(outcome) as i32,
            applied,
        })
    }

    /// RollbackTo (see the proto): serialised with SubmitBlock. The UTXO state first
    /// catches up with the repository, so the depth check covers every block removed; the
    /// repository is truncated (durable), then the coordinator rolls the state back, as it
    /// does after a crash between the two.
    async fn rollback_to(
        &self,
        request: pb::RollbackToRequest,
    ) -> Result<pb::RollbackToResponse, Status> {
        let height = request.height;
        let deadline = Instant::now() + self.submit_timeout;
        let _serial = self.submit_lock.lock().await;
        let repository_tip = self.repository_tip()?.ok_or_else(|| {
            Status::failed_precondition("the repository is empty: nothing to roll back")
        })?;
        let hash = self
            .repository
            .hash_at(height)
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no block at height {height} (repository tip {})",
                    describe(Some(repository_tip))
                ))
            })?;
        if !request.hash.is_empty() && request.hash[..] != hash.0[..] {
            return Err(Status::failed_precondition(format!(
                "the block at height {height} is {}, not {}",
                hex(&hash.0),
                hex(&request.hash)
            )));
        }
        let target = Tip { height, hash };
        if height == repository_tip.height {
            return Ok(pb::RollbackToResponse {
                position: Some(position(target)),
                removed: 0,
            });
        }
        self.wait_for_utxo_tip(Some(repository_tip), deadline)
            .await?;
        let reachable = self
            .served
            .read(move |store| Ok(store.can_roll_back_to(height)))
            .await
            .map_err(store_status)?;
        if !reachable {
            return Err(Status::failed_precondition(format!(
                "height {height} is deeper than the undo data kept below the tip {} \
                 (max_undo_depth); nothing changed",
                describe(Some(repository_tip))
            )));
        }
        let repository = self.repository.clone();
        tokio::task::spawn_blocking(move || repository.truncate_from(height + 1))
            .await
            .map_err(|error| Status::internal(format!("truncate task failed: {error}")))?
            .map_err(store_status)?;
        metrics::counter!(names::BLOCKS_ROLLED_BACK).increment(repository_tip.height - height);
        tracing::info!(height, from = repository_tip.height, "rollback requested");
        self.wait_for_utxo_tip(Some(target), Instant::now() + self.submit_timeout)
            .await?;
        Ok(pb::RollbackToResponse {
            position: Some(position(target)),
            removed: repository_tip.height - height,
        })
    }

    async fn notify_block_added(
        &self,
        request: pb::NotifyBlockAddedRequest,
    ) -> Result<pb::NotifyBlockAddedResponse, Status> {
        let header = request
            .block
            .and_then(|block| block.header)
            .ok_or_else(|| Status::invalid_argument("missing block header"))?;
        let tip = Tip {
            height: header.height,
            hash: model::block_hash(&header),
        };
        if self.repository.hash_at(tip.height).map_err(store_status)? != Some(tip.hash) {
            return Err(Status::not_found(format!(
                "block {} at height {} is not in the repository (SubmitBlock adds blocks)",
                tip.hash, tip.height
            )));
        }
        let outcome = self.client.notify(tip).await.map_err(client_status)?;
        Ok(pb::NotifyBlockAddedResponse {
            position: Some(position(tip)),
            outcome: notify_outcome(outcome) as i32,
        })
    }

    async fn utxos_by_address(
        &self,
        request: pb::GetUtxosByAddressRequest,
    ) -> Result<pb::GetUtxosByAddressResponse, Status> {
        let owner = address(&request.address)?;
        let category = model_pb::UtxoCategory::try_from(request.category).map_err(|_| {
            Status::invalid_argument(format!("unknown category {}", request.category))
        })?;
        if request.page_size > 0 || !request.page_token.is_empty() {
            return self.utxos_page(owner, category, &request).await;
        }
        let utxos = if category == model_pb::UtxoCategory::Unspecified {
            self.client
                .get_utxos_by_address(&owner)
                .await
                .map_err(client_status)?
        } else {
            self.check_breaker()?;
            self.served
                .read(move |store| store.utxos_by_owner_and_category(&owner, category))
                .await
                .map_err(store_status)?
        };
        self.check_len(utxos.len(), "utxos")?;
        Ok(pb::GetUtxosByAddressResponse {
            utxos,
            next_page_token: Vec::new(),
        })
    }

    /// A paged GetUtxosByAddress: the token is the last answered record's category byte
    /// and outpoint.
    async fn utxos_page(
        &self,
        owner: Address,
        category: model_pb::UtxoCategory,
        request: &pb::GetUtxosByAddressRequest,
    ) -> Result<pb::GetUtxosByAddressResponse, Status> {
        let after = match request.page_token.as_slice() {
            [] => None,
            [category_byte @ 1..=3, outpoint @ ..] => Some(UtxoPosition {
                category: *category_byte,
                outpoint: OutPointKey::from_bytes(outpoint)
                    .map_err(|_| Status::invalid_argument("malformed page token"))?,
            }),
            _ => return Err(Status::invalid_argument("malformed page token")),
        };
        let limit = match request.page_size {
            0 => self.max_results,
            size => (size as usize).min(self.max_results),
        };
        let category = (category != model_pb::UtxoCategory::Unspecified).then_some(category);
        self.check_breaker()?;
        let page = self
            .served
            .read(move |store| store.utxos_by_owner_page(&owner, category, after, limit))
            .await
            .map_err(store_status)?;
        let next_page_token = page.next.map_or_else(Vec::new, |next| {
            let mut token = vec![next.category];
            token.extend_from_slice(&next.outpoint.to_bytes());
            token
        });
        Ok(pb::GetUtxosByAddressResponse {
            utxos: page.utxos,
            next_page_token,
        })
    }

    async fn balance(
        &self,
        request: pb::GetBalanceRequest,
    ) -> Result<pb::GetBalanceResponse, Status> {
        let owner = address(&request.address)?;
        self.check_breaker()?;
        let balances = self
            .served
            .read(move |store| store.balances(&owner))
            .await
            .map_err(store_status)?;
        let mut response = pb::GetBalanceResponse {
            native_coin_balance: "0".to_string(),
            token_balances: Vec::new(),
        };
        for (asset, amount) in balances {
            match asset {
                AssetId::Native => response.native_coin_balance = amount.to_string(),
                AssetId::Token(token) => response.token_balances.push(pb::TokenBalance {
                    token_id: token.0.to_vec(),
                    amount: amount.to_string(),
                }),
            }
        }
        Ok(response)
    }

    async fn resources(
        &self,
        request: pb::GetResourcesRequest,
    ) -> Result<pb::GetResourcesResponse, Status> {
        let owner = address(&request.address)?;
        self.check_breaker()?;
        let resources = self
            .served
            .read(move |store| store.resources_by_owner(&owner))
            .await
            .map_err(store_status)?;
        self.check_len(resources.len(), "resources")?;
        Ok(pb::GetResourcesResponse {
            resources: resources.iter().map(resource_info).collect(),
        })
    }

    async fn utxo(&self, request: pb::GetUtxoRequest) -> Result<pb::GetUtxoResponse, Status> {
        let outpoint = outpoint(request.outpoint.as_ref())?;
        self.check_breaker()?;
        let utxo = self
            .served
            .read(move |store| store.utxo(&outpoint))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no live utxo at {outpoint}")))?;
        Ok(pb::GetUtxoResponse { utxo: Some(utxo) })
    }

    async fn state_expiry(
        &self,
        request: pb::GetStateExpiryRequest,
    ) -> Result<pb::GetStateExpiryResponse, Status> {
        let outpoint = outpoint(request.outpoint.as_ref())?;
        self.check_breaker()?;
        let (utxo, tip) = self
            .served
            .read(move |store| Ok((store.utxo(&outpoint)?, store.tip())))
            .await
            .map_err(store_status)?;
        let utxo = utxo.ok_or_else(|| Status::not_found(format!("no live utxo at {outpoint}")))?;
        if utxo.category != model_pb::UtxoCategory::State as i32 {
            return Err(Status::failed_precondition(format!(
                "utxo {outpoint} is not a state utxo"
            )));
        }
        let now = match request.at_timestamp {
            0 => tip.map_or(0, |tip| tip.timestamp),
            at => at,
        };
        let expires_at = utxo
            .state_constraints()
            .map_or(0, |constraints| constraints.expires_at_timestamp);
        Ok(if expires_at == 0 {
            pb::GetStateExpiryResponse {
                is_expired: false,
                never_expires: true,
                expires_at_timestamp: 0,
                time_to_expiry: 0,
                reference_timestamp: now,
            }
        } else {
            let is_expired = now > expires_at;
            pb::GetStateExpiryResponse {
                is_expired,
                never_expires: false,
                expires_at_timestamp: expires_at,
                time_to_expiry: if is_expired { 0 } else { expires_at - now },
                reference_timestamp: now,
            }
        })
    }

    async fn account_nonce(
        &self,
        request: pb::ComputeAccountNonceRequest,
    ) -> Result<pb::ComputeAccountNonceResponse, Status> {
        let owner = address(&request.address)?;
        let nonce = self
            .client
            .compute_account_nonce(&owner)
            .await
            .map_err(client_status)?;
        Ok(pb::ComputeAccountNonceResponse { nonce })
    }

    async fn sync_status(&self) -> Result<pb::GetSyncStatusResponse, Status> {
        let status = self.client.get_sync_status().await.map_err(client_status)?;
        Ok(sync_status(&status))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn describe(tip: Option<Tip>) -> String {
    tip.map_or("<empty>".to_string(), |tip| {
        format!("{} at height {}", tip.hash, tip.height)
    })
}

fn position(tip: Tip) -> pb::ChainPosition {
    pb::ChainPosition {
        height: tip.height,
        hash: tip.hash.0.to_vec(),
    }
}

fn notify_outcome(outcome: NotifyOutcome) -> pb::NotifyOutcome {
    match outcome {
        NotifyOutcome::Queued => pb::NotifyOutcome::Queued,
        NotifyOutcome::Deferred => pb::NotifyOutcome::Deferred,
    }
}

fn address(bytes: &[u8]) -> Result<Address, Status> {
    Address::from_slice(bytes)
        .map_err(|error| Status::invalid_argument(format!("address: {error}")))
}

fn outpoint(outpoint: Option<&model_pb::OutPoint>) -> Result<OutPointKey, Status> {
    let outpoint = outpoint.ok_or_else(|| Status::invalid_argument("missing outpoint"))?;
    OutPointKey::from_proto(outpoint)
        .map_err(|error| Status::invalid_argument(format!("outpoint: {error}")))
}

fn resource_info(info: &ResourceInfo) -> pb::ResourceInfo {
    let utxo = &info.utxo;
    let resource = utxo
        .output()
        .and_then(|output| match &output.output_content {
            Some(model_pb::tx_output::OutputContent::Resource(resource)) => Some(resource),
            _ => None,
        });
    let usage_percentage = if info.max_concurrent_references > 0 {
        info.reference_count as f64 / info.max_concurrent_references as f64 * 100.0
    } else {
        0.0
    };
    pb::ResourceInfo {
        outpoint: utxo.outpoint.clone(),
        resource_hash: resource.map(|r| r.content_hash.clone()).unwrap_or_default(),
        resource_name: resource.map(|r| r.name.clone()).unwrap_or_default(),
        category: resource.map_or(0, |r| r.category),
        status: utxo.status,
        created_at: utxo.created_timestamp,
        reference_count: info.reference_count,
        max_concurrent_references: info.max_concurrent_references,
        total_reference_count: info.total_reference_count,
        status_description: if info.reference_count > 0 {
            format!("in use by {} transactions", info.reference_count)
        } else {
            "available: may be upgraded or transferred".to_string()
        },
        can_upgrade: info.consumable,
        usage_percentage,
        block_height: utxo.block_height,
    }
}

fn sync_status(status: &SyncStatus) -> pb::GetSyncStatusResponse {
    let stats = status.stats;
    pb::GetSyncStatusResponse {
        health: match status.health {
            Health::Healthy => pb::SyncHealth::Healthy,
            Health::Degraded => pb::SyncHealth::Degraded,
            Health::Unhealthy => pb::SyncHealth::Unhealthy,
        } as i32,
        repository_tip: status.repository_tip.map(position),
        utxo_tip: status.utxo_tip.map(position),
        lag_blocks: status.lag,
        queue_depth: u32::try_from(status.queue_depth).unwrap_or(u32::MAX),
        queue_capacity: u32::try_from(status.queue_capacity).unwrap_or(u32::MAX),
        breaker: breaker_state(status.breaker) as i32,
        last_error: status.last_error.clone().unwrap_or_default(),
        counters: Some(pb::ClientCounters {
            notifications: stats.notifications,
            deferred: stats.deferred,
            batches: stats.batches_notifier + stats.batches_coordinator,
            blocks_applied: stats.blocks_notifier + stats.blocks_coordinator,
            retries: stats.retries,
            call_errors: stats.call_errors,
            calls_rejected: stats.calls_rejected,
            rollbacks: stats.rollbacks,
            coordinator_runs: stats.coordinator_runs,
        }),
    }
}

pub(crate) fn breaker_state(state: BreakerState) -> pb::BreakerState {
    match state {
        BreakerState::Closed => pb::BreakerState::Closed,
        BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
        BreakerState::Open => pb::BreakerState::Open,
    }
}

/// Counts and times one answered RPC.
fn observe<T>(method: &'static str, started: Instant, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!(names::REQUESTS, "method" => method, "code" => code_name(code)).increment(1);
    metrics::histogram!(names::REQUEST_SECONDS, "method" => method)
        .record(started.elapsed().as_secs_f64());
    if method == "SubmitBlock" && code != Code::Ok {
        metrics::counter!(names::BLOCKS_REJECTED, "code" => code_name(code)).increment(1);
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

macro_rules! rpc {
    ($method:literal, $request:ident, $call:expr) => {{
        let started = Instant::now();
        let $request = $request.into_inner();
        let result = $call.await;
        observe($method, started, &result);
        result.map(Response::new)
    }};
}

#[tonic::async_trait]
impl pb::utxo_service_server::UtxoService for UtxoGrpc {
    async fn submit_block(
        &self,
        request: Request<pb::SubmitBlockRequest>,
    ) -> Result<Response<pb::SubmitBlockResponse>, Status> {
        rpc!("SubmitBlock", request, self.shared.submit_block(request))
    }

    async fn rollback_to(
        &self,
        request: Request<pb::RollbackToRequest>,
    ) -> Result<Response<pb::RollbackToResponse>, Status> {
        rpc!("RollbackTo", request, self.shared.rollback_to(request))
    }

    async fn notify_block_added(
        &self,
        request: Request<pb::NotifyBlockAddedRequest>,
    ) -> Result<Response<pb::NotifyBlockAddedResponse>, Status> {
        rpc!(
            "NotifyBlockAdded",
            request,
            self.shared.notify_block_added(request)
        )
    }

    async fn get_utxos_by_address(
        &self,
        request: Request<pb::GetUtxosByAddressRequest>,
    ) -> Result<Response<pb::GetUtxosByAddressResponse>, Status> {
        rpc!(
            "GetUtxosByAddress",
            request,
            self.shared.utxos_by_address(request)
        )
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        rpc!("GetBalance", request, self.shared.balance(request))
    }

    async fn get_resources(
        &self,
        request: Request<pb::GetResourcesRequest>,
    ) -> Result<Response<pb::GetResourcesResponse>, Status> {
        rpc!("GetResources", request, self.shared.resources(request))
    }

    async fn get_utxo(
        &self,
        request: Request<pb::GetUtxoRequest>,
    ) -> Result<Response<pb::GetUtxoResponse>, Status> {
        rpc!("GetUtxo", request, self.shared.utxo(request))
    }

    async fn get_state_expiry(
        &self,
        request: Request<pb::GetStateExpiryRequest>,
    ) -> Result<Response<pb::GetStateExpiryResponse>, Status> {
        rpc!("GetStateExpiry", request, self.shared.state_expiry(request))
    }

    async fn compute_account_nonce(
        &self,
        request: Request<pb::ComputeAccountNonceRequest>,
    ) -> Result<Response<pb::ComputeAccountNonceResponse>, Status> {
        rpc!(
            "ComputeAccountNonce",
            request,
            self.shared.account_nonce(request)
        )
    }

    async fn get_sync_status(
        &self,
        request: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::GetSyncStatusResponse>, Status> {
        rpc!("GetSyncStatus", request, {
            let _ = request;
            self.shared.sync_status()
        })
    }
}
