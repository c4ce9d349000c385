//! Starting and stopping a node: open the shared store, connect the chain, join the ring,
//! serve gRPC and (optionally) Prometheus `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use ledger_lease::{Clock, SystemClock};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::cache::{NonceCache, RedisCache};
use nonce_manager::chain::{ChainClient, ChainError};
use nonce_manager::{InvalidArgument, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::NodeConfig;
use crate::events::Events;
use crate::membership::{Member, Ring};
use crate::proto::nonce_manager_server::NonceManagerServer;
use crate::runtime::{spawn_loop, Shared};
use crate::service::NonceService;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A setting is wrong.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// The shared database could not be opened.
    #[error("opening the nonce store")]
    Store(#[from] StoreError),
    /// The configured Redis cache could not be reached.
    #[error("connecting to the redis cache")]
    Cache(#[from] nonce_manager::cache::CacheError),
    /// The chain did not answer `eth_chainId`.
    #[error("chain rpc")]
    Chain(#[from] ChainError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started node. Dropping it without [`RunningNode::shutdown`] leaves its leases to
/// lapse after their TTL, as a crash would.
#[derive(Debug)]
pub struct RunningNode {
    /// Where gRPC is served.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served, when asked for.
    pub metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// The node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.me.node_id
    }

    /// Stops serving, releases every held signer (so others take it at once) and leaves
    /// the ring.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.shared.stop().await;
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts a node.
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    if config.node_id.is_empty() || config.node_id.contains('/') {
        return Err(InvalidArgument(format!(
            "node id {:?} must be non-empty and without '/'",
            config.node_id
        ))
        .into());
    }
    if config.keys.is_empty() {
        return Err(InvalidArgument("no signing keys given".to_owned()).into());
    }
    if config.confirmations == 0 {
        return Err(InvalidArgument("confirmations must be at least 1".to_owned()).into());
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let chain: Arc<dyn ChainClient> = Arc::new(AlloyChainClient::new(&config.rpc_url)?);
    let chain_id = chain.chain_id().await?;
    let (store, leases, db) = crate::db::open(&config.store, clock.clone()).await?;
    // Configured means required at start: a node silently running without the cache it
    // was given would hide a broken deployment. At run time the cache may come and go.
    let cache: Option<Arc<dyn NonceCache>> = match &config.redis_url {
        Some(url) => Some(Arc::new(RedisCache::connect(url, "takhin-nonce").await?)),
        None => None,
    };

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            what: "grpc",
            addr: config.listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| NodeError::Bind {
        what: "grpc",
        addr: config.listen,
        source,
    })?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr).await?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|(addr, _)| *addr);

    let me = Member {
        node_id: config.node_id.clone(),
        instance: format!("{}/{}", config.node_id, uuid::Uuid::new_v4().simple()),
        address: config
            .advertised
            .clone()
            .unwrap_or_else(|| grpc_addr.to_string()),
    };
    let keys: HashMap<_, _> = config
        .keys
        .iter()
        .map(|key| (key.address(), key.clone()))
        .collect();
    tracing::info!(node_id = %me.node_id, instance = %me.instance, address = %me.address, chain_id, signers = keys.len(), store = ?config.store, "nonce node starting");
    let tick = config.tick();
    let shared = Arc::new(Shared {
        config,
        me,
        store,
        leases,
        db,
        chain,
        clock,
        keys,
        cache,
        held: RwLock::new(HashMap::new()),
        ring: RwLock::new(Arc::new(Ring::default())),
    });
    // Join the ring (and take owned signers) before serving.
    shared.tick().await;

    let (stop, stopped) = watch::channel(false);
    let service = NonceService::new(shared.clone(), Arc::new(Events::default()));
    let mut grpc_stop = stopped.clone();
    let grpc = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(NonceManagerServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = grpc_stop.changed().await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "grpc server stopped");
        }
    });
    let mut tasks = vec![grpc, spawn_loop(shared.clone(), tick, stopped)];
    if let Some((_, task)) = metrics {
        tasks.push(task);
    }
    Ok(RunningNode {
        grpc_addr,
        metrics_addr,
        shared,
        stop,
        tasks,
    })
}

/// Installs the Prometheus recorder (once per process) and serves `GET /metrics`.
async fn serve_metrics(addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>), NodeError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|error| InvalidArgument(format!("metrics recorder already installed: {error}")))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            what: "metrics",
            addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| NodeError::Bind {
        what: "metrics",
        addr,
        source,
    })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(answer_metrics(stream, handle));
        }
    });
    Ok((bound, task))
}

/// Most request bytes read from a metrics scrape.
const METRICS_REQUEST_BYTES_MAX: usize = 8192;

async fn answer_metrics(mut stream: tokio::net::TcpStream, handle: PrometheusHandle) {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n")
        && request.len() < METRICS_REQUEST_BYTES_MAX
    {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer))
            .await
        {
            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buffer[..n]),
            _ => return,
        }
    }
    let (status, body) = if request.starts_with(b"GET /metrics ") {
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
