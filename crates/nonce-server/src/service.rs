//! The tonic service. Reads (GetTransaction, ListTransactions, GetSignerView, WatchEvents)
//! are answered from the shared database by any node. Writes (SubmitTransaction,
//! AllocateNonce) run on the node holding the signer's lease: locally when that is this
//! node, else forwarded once to the holder's advertised address (marked with the
//! `x-takhin-nonce-forwarded` header, so a stale view can never bounce a call around).
//! With no live holder (a takeover in progress) the call fails UNAVAILABLE naming the
//! signer's owner; retrying the same request id is always safe.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use alloy_primitives::Address;
use nonce_manager::blocks::{ConfirmedBlockListener, ListenerConfig};
use nonce_manager::reconcile::ReconcileConfig;
use nonce_manager::submit::SubmitRequest;
use nonce_manager::view::{signer_view, DriftSource};
use nonce_manager::{signer_resource, RequestId, TxPayload};
use tokio::time::Instant;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::{
    BASE_FEE_MAX_AGE, FORWARD_CONNECT_TIMEOUT, FORWARD_TIMEOUT, LIST_PAGE_SIZE_DEFAULT,
    LIST_PAGE_SIZE_MAX,
};
use crate::convert;
use crate::events::Events;
use crate::proto;
use crate::proto::nonce_manager_client::NonceManagerClient;
use crate::proto::nonce_manager_server::NonceManager;
use crate::runtime::{Shared, SignerRuntime};
use crate::status;

/// Marks a forwarded call; its value is the forwarding node's id.
pub const FORWARDED_HEADER: &str = "x-takhin-nonce-forwarded";

/// The NonceManager gRPC service of one node.
#[derive(Debug)]
pub struct NonceService {
    shared: Arc<Shared>,
    events: Arc<Events>,
    clients: Mutex<HashMap<String, NonceManagerClient<Channel>>>,
    base_fee: tokio::sync::Mutex<Option<(u128, Instant)>>,
}

/// A boxed call on the holder's side of [`NonceService::on_holder`].
type Call<'a, T> = Pin<Box<dyn std::future::Future<Output = Result<T, Status>> + Send + 'a>>;

enum Route {
    Local(Arc<SignerRuntime>),
    Forward(NonceManagerClient<Channel>),
}

fn observe<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => "ok".to_owned(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics::counter!("nonce_server_requests_total", "method" => method, "code" => code)
        .increment(1);
    result
}

impl NonceService {
    pub(crate) fn new(shared: Arc<Shared>, events: Arc<Events>) -> Self {
        Self {
            shared,
            events,
            clients: Mutex::new(HashMap::new()),
            base_fee: tokio::sync::Mutex::new(None),
        }
    }

    fn node_id(&self) -> String {
        self.shared.me.node_id.clone()
    }

    fn known_signer(&self, signer: Address) -> Result<(), Status> {
        if self.shared.keys.contains_key(&signer) {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "signer {signer:#x} is not managed here: this node has no key for it"
            )))
        }
    }

    fn client(&self, address: &str) -> Result<NonceManagerClient<Channel>, Status> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| Status::internal(format!("bad node address {address:?}: {error}")))?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            .timeout(FORWARD_TIMEOUT);
        let client = NonceManagerClient::new(endpoint.connect_lazy());
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }

    /// Where a write for `signer` runs.
    async fn route(&self, signer: Address, forwarded: bool) -> Result<Route, Status> {
        self.known_signer(signer)?;
        if let Some(runtime) = self.shared.held(signer) {
            return Ok(Route::Local(runtime));
        }
        let lease = self
            .shared
            .leases
            .current(&signer_resource(signer))
            .await
            .map_err(|error| Status::unavailable(format!("lease store: {error}; retry")))?;
        let ring = self.shared.ring();
        let owner = ring.owner(signer).map_or("none".to_owned(), |m| {
            format!("{} at {}", m.node_id, m.address)
        });
        let Some(lease) = lease else {
            return Err(Status::unavailable(format!(
                "signer {signer:#x} has no holder right now (takeover in progress; its owner is {owner}); retry"
            )));
        };
        let holder = lease.holder.as_str();
        if holder == self.shared.me.instance {
            return Err(Status::unavailable(format!(
                "this node is starting or stopping signer {signer:#x}; retry"
            )));
        }
        match ring.by_instance(holder) {
            Some(member) if !forwarded => {
                metrics::counter!("nonce_server_forwarded_total").increment(1);
                Ok(Route::Forward(self.client(&member.address)?))
            }
            Some(member) => Err(Status::unavailable(format!(
                "signer {signer:#x} is held by {} at {}; a forwarded call is not forwarded again; retry there",
                member.node_id, member.address
            ))),
            None => Err(Status::unavailable(format!(
                "signer {signer:#x} is held by {holder}, which is not a live node; its lease lapses within {:?} (owner: {owner}); retry",
                self.shared.config.lease_ttl
            ))),
        }
    }

    fn forward_request<T>(&self, message: T) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        let value = self
            .node_id()
            .parse()
            .map_err(|_| Status::internal("node id is not a valid header value"))?;
        request.metadata_mut().insert(FORWARDED_HEADER, value);
        Ok(request)
    }

    /// FAILED_PRECONDITION when the fee cap cannot pay the latest base fee.
    async fn check_fee(&self, payload: &TxPayload) -> Result<(), Status> {
        let mut cached = self.base_fee.lock().await;
        let base_fee = match *cached {
            Some((fee, read_at)) if read_at.elapsed() < BASE_FEE_MAX_AGE => fee,
            _ => {
                let fee = self
                    .shared
                    .chain
                    .base_fee()
                    .await
                    .map_err(|error| status::chain("reading the base fee", &error))?
                    .unwrap_or(0);
                *cached = Some((fee, Instant::now()));
                fee
            }
        };
        if payload.max_fee_per_gas < base_fee {
            return Err(Status::failed_precondition(format!(
                "max fee per gas {} is below the latest base fee {base_fee}",
                payload.max_fee_per_gas
            )));
        }
        Ok(())
    }

    async fn submit_local(
        &self,
        runtime: &SignerRuntime,
        request_id: RequestId,
        signer: Address,
        payload: TxPayload,
    ) -> Result<proto::SubmitTransactionResponse, Status> {
        let stored = self
            .shared
            .store
            .transaction(&request_id)
            .await
            .map_err(|error| status::store(&error))?;
        if stored.is_none() {
            self.check_fee(&payload).await?;
        }
        let record = runtime
            .submitter
            .submit(SubmitRequest {
                request_id,
                signer,
                payload,
            })
            .await
            .map_err(|error| status::submit(&error))?;
        Ok(proto::SubmitTransactionResponse {
            transaction: Some(convert::transaction(&record)),
            served_by: self.node_id(),
        })
    }

    /// Runs a write for `signer` where its lease is held: `local` on this node (routed once
    /// more when it failed because the lease moved during the call), otherwise `forward`
    /// sends `message`, marked as forwarded, to the holder.
    async fn on_holder<'a, M, T>(
        &'a self,
        signer: Address,
        forwarded: bool,
        message: M,
        local: impl Fn(Arc<SignerRuntime>) -> Call<'a, T>,
        forward: impl FnOnce(NonceManagerClient<Channel>, Request<M>) -> Call<'a, Response<T>>,
    ) -> Result<T, Status> {
        let mut rerouted = false;
        loop {
            match self.route(signer, forwarded).await? {
                Route::Local(runtime) => {
                    let result = local(runtime.clone()).await;
                    if result.is_err() && !runtime.is_active() && !rerouted {
                        rerouted = true;
                        continue;
                    }
                    return result;
                }
                Route::Forward(client) => {
                    let request = self.forward_request(message)?;
                    return Ok(forward(client, request).await?.into_inner());
                }
            }
        }
    }

    async fn submit(
        &self,
        request: Request<proto::SubmitTransactionRequest>,
    ) -> Result<proto::SubmitTransactionResponse, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        let request_id = convert::request_id(&message.request_id).map_err(status::invalid)?;
        let signer = convert::address("signer", &message.signer).map_err(status::invalid)?;
        let payload = convert::payload(&message).map_err(status::invalid)?;
        self.on_holder(
            signer,
            forwarded,
            message,
            |runtime| {
                let (request_id, payload) = (request_id.clone(), payload.clone());
                Box::pin(async move {
                    self.submit_local(&runtime, request_id, signer, payload)
                        .await
                })
            },
            |mut client, request| Box::pin(async move { client.submit_transaction(request).await }),
        )
        .await
    }

    async fn allocate(
        &self,
        request: Request<proto::AllocateNonceRequest>,
    ) -> Result<proto::AllocateNonceResponse, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        let request_id = convert::request_id(&message.request_id).map_err(status::invalid)?;
        let signer = convert::address("signer", &message.signer).map_err(status::invalid)?;
        self.on_holder(
            signer,
            forwarded,
            message,
            |runtime| {
                let request_id = request_id.clone();
                Box::pin(async move {
                    let allocation = runtime
                        .allocator
                        .allocate(request_id, TxPayload::external())
                        .await
                        .map_err(|error| status::allocate(&error))?;
                    Ok(proto::AllocateNonceResponse {
                        nonce: allocation.nonce,
                        existing: allocation.existing,
                        served_by: self.node_id(),
                    })
                })
            },
            |mut client, request| Box::pin(async move { client.allocate_nonce(request).await }),
        )
        .await
    }

    async fn report_signed(
        &self,
        request: Request<proto::ReportSignedTransactionRequest>,
    ) -> Result<proto::ReportSignedTransactionResponse, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let message = request.into_inner();
        let request_id = convert::request_id(&message.request_id).map_err(status::invalid)?;
        let signer = convert::address("signer", &message.signer).map_err(status::invalid)?;
        let (raw, broadcast): (Arc<[u8]>, bool) =
            (message.raw_transaction.as_slice().into(), message.broadcast);
        self.on_holder(
            signer,
            forwarded,
            message,
            |runtime| {
                let (request_id, raw) = (request_id.clone(), raw.clone());
                Box::pin(async move {
                    let record = runtime
                        .submitter
                        .report_signed(&request_id, &raw, broadcast)
                        .await
                        .map_err(|error| status::submit(&error))?;
                    Ok(proto::ReportSignedTransactionResponse {
                        transaction: Some(convert::transaction(&record)),
                        served_by: self.node_id(),
                    })
                })
            },
            |mut client, request| {
                Box::pin(async move { client.report_signed_transaction(request).await })
            },
        )
        .await
    }

    async fn get(
        &self,
        message: proto::GetTransactionRequest,
    ) -> Result<proto::GetTransactionResponse, Status> {
        let request_id = convert::request_id(&message.request_id).map_err(status::invalid)?;
        let record = self
            .shared
            .store
            .transaction(&request_id)
            .await
            .map_err(|error| status::store(&error))?
            .ok_or_else(|| Status::not_found(format!("request {request_id} not found")))?;
        Ok(proto::GetTransactionResponse {
            transaction: Some(convert::transaction(&record)),
        })
    }

    async fn list(
        &self,
        message: proto::ListTransactionsRequest,
    ) -> Result<proto::ListTransactionsResponse, Status> {
        let signer = convert::address("signer", &message.signer).map_err(status::invalid)?;
        let filter = convert::status_filter(message.status).map_err(status::invalid)?;
        let page_size = match message.page_size {
            0 => LIST_PAGE_SIZE_DEFAULT,
            size if size > LIST_PAGE_SIZE_MAX => {
                return Err(Status::invalid_argument(format!(
                    "page size {size} is above {LIST_PAGE_SIZE_MAX}"
                )))
            }
            size => size,
        };
        let from = if message.page_token.is_empty() {
            0
        } else {
            message.page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument(format!("page token {:?} is not ours", message.page_token))
            })?
        };
        let mut ids = self
            .shared
            .db
            .list_request_ids(signer, filter, from, page_size + 1)
            .await
            .map_err(|error| status::store(&error))?;
        let next_page_token = if ids.len() > page_size as usize {
            ids.pop()
                .map(|(_, nonce)| nonce.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut transactions = Vec::with_capacity(ids.len());
        for (id, _) in ids {
            let request_id = RequestId::new(id).map_err(|error| Status::internal(error.0))?;
            // A record is never deleted; one missing here would be a store bug.
            if let Some(record) = self
                .shared
                .store
                .transaction(&request_id)
                .await
                .map_err(|error| status::store(&error))?
            {
                transactions.push(convert::transaction(&record));
            }
        }
        Ok(proto::ListTransactionsResponse {
            transactions,
            next_page_token,
        })
    }

    async fn view(
        &self,
        message: proto::GetSignerViewRequest,
    ) -> Result<proto::GetSignerViewResponse, Status> {
        let signer = convert::address("signer", &message.signer).map_err(status::invalid)?;
        self.known_signer(signer)?;
        let runtime = self.shared.held(signer);
        let stats = runtime.as_ref().map(|runtime| runtime.reconciler.stats());
        let drift = stats.as_deref().map(|stats| DriftSource {
            stats,
            hold: ReconcileConfig::default().alert_hold,
        });
        let view = signer_view(
            self.shared.store.as_ref(),
            self.shared.leases.as_ref(),
            Some(self.shared.chain.as_ref()),
            drift,
            signer,
        )
        .await
        .map_err(|error| status::view(&error))?;
        let ring = self.shared.ring();
        let holder = view
            .lease_holder
            .as_deref()
            .and_then(|instance| ring.by_instance(instance));
        Ok(proto::GetSignerViewResponse {
            signer: format!("{signer:#x}"),
            next_nonce: view.next_nonce,
            in_flight: view.in_flight,
            oldest_pending_age_ms: view.oldest_pending_age_ms,
            last_confirmed_nonce: view.last_confirmed_nonce,
            // A holder id is `node_id/instance`; the node id shows even once the holder
            // has left the ring (its lease not yet lapsed).
            lease_holder: holder
                .map(|member| member.node_id.clone())
                .or(view
                    .lease_holder
                    .as_deref()
                    .map(|instance| instance.split('/').next().unwrap_or(instance).to_owned()))
                .unwrap_or_default(),
            lease_holder_address: holder
                .map(|member| member.address.clone())
                .unwrap_or_default(),
            fencing_token: view.fencing_token,
            drift_alert: view.drift_alert,
            owner: ring
                .owner(signer)
                .map(|m| m.node_id.clone())
                .unwrap_or_default(),
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::TransactionEvent, Status>> + Send>>;
type BlockStream = Pin<Box<dyn Stream<Item = Result<proto::ConfirmedBlockEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NonceManager for NonceService {
    async fn submit_transaction(
        &self,
        request: Request<proto::SubmitTransactionRequest>,
    ) -> Result<Response<proto::SubmitTransactionResponse>, Status> {
        observe("submit_transaction", self.submit(request).await).map(Response::new)
    }

    async fn get_transaction(
        &self,
        request: Request<proto::GetTransactionRequest>,
    ) -> Result<Response<proto::GetTransactionResponse>, Status> {
        observe("get_transaction", self.get(request.into_inner()).await).map(Response::new)
    }

    async fn list_transactions(
        &self,
        request: Request<proto::ListTransactionsRequest>,
    ) -> Result<Response<proto::ListTransactionsResponse>, Status> {
        observe("list_transactions", self.list(request.into_inner()).await).map(Response::new)
    }

    async fn allocate_nonce(
        &self,
        request: Request<proto::AllocateNonceRequest>,
    ) -> Result<Response<proto::AllocateNonceResponse>, Status> {
        observe("allocate_nonce", self.allocate(request).await).map(Response::new)
    }

    async fn report_signed_transaction(
        &self,
        request: Request<proto::ReportSignedTransactionRequest>,
    ) -> Result<Response<proto::ReportSignedTransactionResponse>, Status> {
        observe(
            "report_signed_transaction",
            self.report_signed(request).await,
        )
        .map(Response::new)
    }

    async fn get_signer_view(
        &self,
        request: Request<proto::GetSignerViewRequest>,
    ) -> Result<Response<proto::GetSignerViewResponse>, Status> {
        observe("get_signer_view", self.view(request.into_inner()).await).map(Response::new)
    }

    type WatchEventsStream = EventStream;
    type WatchConfirmedBlocksStream = BlockStream;

    async fn watch_confirmed_blocks(
        &self,
        request: Request<proto::WatchConfirmedBlocksRequest>,
    ) -> Result<Response<Self::WatchConfirmedBlocksStream>, Status> {
        let message = request.into_inner();
        let confirmations = match message.confirmations {
            0 => self.shared.config.confirmations,
            n => n,
        };
        let config = ListenerConfig {
            confirmations,
            start: message.from_height,
            ..ListenerConfig::default()
        };
        let (listener, receiver) = ConfirmedBlockListener::spawn(self.shared.chain.clone(), config);
        // The listener lives as long as the stream: dropping the stream stops it.
        let stream = ReceiverStream::new(receiver).map(move |event| {
            let _listener = &listener;
            Ok(convert::stable_block(event))
        });
        observe(
            "watch_confirmed_blocks",
            Ok(Response::new(Box::pin(stream) as BlockStream)),
        )
    }

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let message = request.into_inner();
        let filter = if message.signer.is_empty() {
            None
        } else {
            let signer = convert::address("signer", &message.signer).map_err(status::invalid)?;
            Some(format!("{signer:#x}"))
        };
        let receiver = self.events.subscribe(&self.shared.db, &self.shared.clock);
        let stream = BroadcastStream::new(receiver).filter_map(move |item| match item {
            Ok(event) if filter.as_ref().is_none_or(|signer| *signer == event.signer) => {
                Some(Ok(event))
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Err(Status::data_loss(format!(
                "this watcher fell {missed} events behind; watch again"
            )))),
        });
        observe(
            "watch_events",
            Ok(Response::new(Box::pin(stream) as EventStream)),
        )
    }
}
