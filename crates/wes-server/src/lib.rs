//! The WES chain-state server: `wes.v1.UtxoService` over gRPC (tonic), hosting a
//! `wes_store::ChainStore` through the `wes_utxo_client` pipeline, plus a Prometheus
//! `/metrics` endpoint.
//!
//! **Data path.** SubmitBlock validates a block on its parent's state and appends it to the
//! block repository (`<data>/repository/blocks.log`, the outbox of seed 000); the UTXO
//! client's notifier, batch processor and sync coordinator apply it to the chain store
//! (`<data>/`, the layout `takhin utxo import` writes) asynchronously, through retry and the
//! circuit breaker. Queries read the store. After a crash the store replays its own log and
//! the client's coordinator replays the repository blocks the store lacks, by height and
//! hash, so no block is lost or applied twice.
//!
//! Module map:
//! - [`pb`]: the generated service, client and request/response types (`wes.v1`); the model
//!   types are `wes_utxo::pb`'s.
//! - [`service`]: the RPCs (SubmitBlock's steps are in its docs).
//! - [`system`]: [`ServedStore`], the store as the client's `UtxoSystem`, with fault
//!   injection for tests.
//! - [`error`]: [`ServerError`] and the mapping of every error to a gRPC code.
//! - [`metrics`]: names, the recorder, `/metrics`.
//! - [`config`]: the [`ServerConfig`].
//! - [`bench`]: the store loader and the gRPC query load generator of
//!   `takhin utxo bench-query`.
//!
//! **Architecture Invariant:** a block enters the repository only after it validated on
//! the UTXO state at its parent, so the UTXO system never meets a repository block it must
//! reject; the repository grows only through SubmitBlock and shrinks only through
//! RollbackTo (a reorg within the store's undo depth), after which the coordinator rolls the
//! UTXO state back to the repository's tip.

pub mod bench;
pub mod config;
pub mod error;
pub mod metrics;
pub mod service;
pub mod system;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use wes_store::{BlockRepository, ChainStore, StoreConfig, StoreError};
use wes_utxo::ChainParams;
use wes_utxo_client::{SyncStatus, UtxoClient};

pub use config::{ServerConfig, MAX_MESSAGE_BYTES};
pub use error::ServerError;
pub use system::{FaultInjection, ServedStore};

/// The generated `wes.v1` service types.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/wes.v1.rs"));
}

/// The generated client type.
pub type Client = pb::utxo_service_client::UtxoServiceClient<Channel>;

/// Connects a client to a server at `addr`, with the server's message size limits.
pub async fn connect(addr: SocketAddr) -> Result<Client, tonic::transport::Error> {
    let client = Client::connect(format!("http://{addr}")).await?;
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A running server (see [`serve`]).
pub struct Running {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound `/metrics` address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Blocks copied from the store's log into the repository on start (see [`open`]).
    pub n_adopted: u64,
    shared: Arc<service::Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The fault switches of the hosted UTXO system (tests).
    pub fn faults(&self) -> &Arc<FaultInjection> {
        self.shared.served.faults()
    }

    /// Blocks this process applied to the store.
    pub fn n_applied(&self) -> u64 {
        self.shared.served.n_applied()
    }

    /// The client's sync status, without calling the UTXO system.
    pub fn status(&self) -> Result<SyncStatus, ServerError> {
        Ok(self.shared.client.status()?)
    }

    /// Stops the listeners and the client, then flushes the store.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.shared.client.shutdown().await;
        let served = self.shared.served.clone();
        tokio::task::spawn_blocking(move || served.with_store_mut(|store| store.flush()))
            .await
            .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))??;
        tracing::info!("utxo server stopped");
        Ok(())
    }
}

/// Opens the chain store in `dir` and the block repository in `dir/repository`, and makes
/// the repository hold every block the store has applied: blocks imported straight into the
/// store (`takhin utxo import`) are copied into the repository when it is a prefix of the
/// store's log. Otherwise the client would take the store's tip for one the repository
/// dropped (a reorg) and roll it back. Returns the store, the repository and the number of
/// blocks copied.
pub fn open(
    dir: &Path,
    params: ChainParams,
    store_config: StoreConfig,
) -> Result<(ChainStore, Arc<BlockRepository>, u64), StoreError> {
    let sync = store_config.sync_repository;
    let store = ChainStore::open(dir, params, store_config)?;
    let repository_dir = dir.join("repository");
    std::fs::create_dir_all(&repository_dir)?;
    let repository = Arc::new(BlockRepository::open(
        &repository_dir.join("blocks.log"),
        sync,
    )?);
    let store_log = store.repository();
    let (n_repository, n_store) = (repository.len()?, store_log.len()?);
    let mut n_adopted = 0;
    if n_repository < n_store {
        for height in 0..n_repository {
            if repository.hash_at(height)? != store_log.hash_at(height)? {
                tracing::warn!(
                    height,
                    "block repository and chain store diverge; the client reconciles"
                );
                return Ok((store, repository, 0));
            }
        }
        for height in n_repository..n_store {
            repository.append(&store_log.block_at(height)?)?;
            n_adopted += 1;
        }
        tracing::info!(
            n_adopted,
            "copied blocks imported into the chain store to the repository"
        );
    }
    Ok((store, repository, n_adopted))
}

/// Opens the data, starts the UTXO client and the listeners (see the crate docs).
pub async fn serve(config: ServerConfig) -> Result<Running, ServerError> {
    config.validate()?;
    let handle = match config.metrics_addr {
        Some(_) => Some(metrics::install_recorder()?),
        None => None,
    };
    let (dir, params, store_config) = (
        config.data_dir.clone(),
        config.params.clone(),
        config.store.clone(),
    );
    let (store, repository, n_adopted) =
        tokio::task::spawn_blocking(move || open(&dir, params, store_config))
            .await
            .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))??;
    let served = ServedStore::new(store);
    served.faults().set_apply_delay(config.apply_delay);
    metrics::register_zeroes();
    let client = UtxoClient::start(
        config.client.clone(),
        repository.clone(),
        Arc::new(served.clone()),
    )?;
    let shared = Arc::new(service::Shared::new(client, served, repository, &config));

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.grpc_addr,
            source,
        })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let service =
        pb::utxo_service_server::UtxoServiceServer::new(service::UtxoGrpc::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let mut stop = shutdown_rx.clone();
    let mut tasks = vec![tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(error) = Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stopped)
            .await
        {
            tracing::error!(%error, "grpc server stopped");
        }
    })];

    let mut metrics_addr = None;
    if let (Some(addr), Some(handle)) = (config.metrics_addr, handle) {
        let listener = metrics::bind(addr).await?;
        metrics_addr = Some(
            listener
                .local_addr()
                .map_err(|source| ServerError::Bind { addr, source })?,
        );
        let for_refresh = shared.clone();
        let refresh: metrics::Refresh = Arc::new(move || {
            // status() sets the lag, tip and queue gauges as a side effect.
            let _ = for_refresh.client.status();
            ::metrics::gauge!(wes_utxo_client::metrics::names::BREAKER_STATE).set(f64::from(
                match for_refresh.client.breaker_state() {
                    wes_utxo_client::BreakerState::Closed => 0u8,
                    wes_utxo_client::BreakerState::HalfOpen => 1,
                    wes_utxo_client::BreakerState::Open => 2,
                },
            ));
            ::metrics::gauge!(metrics::UTXO_BLOCKS_APPLIED)
                .set(for_refresh.served.n_applied() as f64);
        });
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            handle,
            refresh,
            shutdown_rx,
        )));
    }
    tracing::info!(%grpc_addr, ?metrics_addr, n_adopted, "utxo server listening");
    Ok(Running {
        grpc_addr,
        metrics_addr,
        n_adopted,
        shared,
        shutdown,
        tasks,
    })
}
