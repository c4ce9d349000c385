//! Wiring for the two roles: open the store, reach the topic, start the gRPC server (with
//! reflection) or the consumer. The binary only parses config and calls these.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ledger_lease::Clock;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::bus::{ensure_topic, BusConfig, BusError, Publisher};
use crate::cache::{BalanceCache, CacheError, MemoryCache, RedisCache};
use crate::consumer::{self, ConsumerConfig, ConsumerHandle};
use crate::grpc::LedgerService;
use crate::store::postgres::PostgresLedgerStore;
use crate::store::sqlite::SqliteLedgerStore;
use crate::store::{LedgerStore, StoreError};
use crate::validate::Limits;
use crate::write::{WriteConfig, WriteSide, WriteTasks};

#[derive(Debug, thiserror::Error)]
pub enum AxsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("binding the gRPC listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Config(String),
}

/// Settings of both roles. Keys are the `takhin axs` flag names with `_` for `-`; the
/// binary layers defaults, a YAML file, `TAKHIN_AXS_*` variables and flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AxsConfig {
    /// gRPC listener (role `grpc`).
    pub listen: SocketAddr,
    /// The ledger database: a SQLite file path (or sqlite://PATH), or a PostgreSQL URL
    /// (postgres://user@host:port/db).
    pub database: String,
    /// The shared balance cache, `redis://host:port/`; unset = an in-process cache (one
    /// node only: another node's writes would not reach it).
    pub redis_url: Option<String>,
    /// Namespace of this ledger's keys in Redis.
    pub cache_prefix: String,
    /// Kafka bootstrap servers of the ledger topic.
    pub kafka_bootstrap: String,
    pub topic: String,
    /// Partitions the topic is created with when it does not exist.
    pub partitions: i32,
    /// This node's id: relay and partition leases are held under it.
    pub node_id: String,
    pub lease_ttl_ms: u64,
    pub publish_workers: usize,
    /// Submits get RESOURCE_EXHAUSTED while more rows than this wait in INIT.
    pub backlog_limit: i64,
    /// Rows still INIT this long are re-sent by the relay.
    pub relay_after_ms: u64,
    pub max_batch: usize,
    pub batch_max_changes: usize,
    pub batch_linger_ms: u64,
}

impl Default for AxsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50071)),
            database: "axs.sqlite".into(),
            redis_url: None,
            cache_prefix: "axs".into(),
            kafka_bootstrap: "127.0.0.1:9092".into(),
            topic: "axs.ledger".into(),
            partitions: 8,
            node_id: format!("axs-{}", std::process::id()),
            lease_ttl_ms: 10_000,
            publish_workers: 4,
            backlog_limit: 100_000,
            relay_after_ms: 5_000,
            max_batch: 1_000,
            batch_max_changes: 2_000,
            batch_linger_ms: 5,
        }
    }
}

impl AxsConfig {
    fn bus(&self) -> BusConfig {
        BusConfig {
            bootstrap: self.kafka_bootstrap.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
        }
    }

    fn check(&self) -> Result<(), AxsError> {
        let bad = |why: String| Err(AxsError::Config(why));
        if !(1..=1024).contains(&self.partitions) {
            return bad(format!("partitions {} is not in 1..=1024", self.partitions));
        }
        if self.lease_ttl_ms < 300 {
            return bad(format!("lease_ttl_ms {} is below 300", self.lease_ttl_ms));
        }
        if self.max_batch == 0 || self.batch_max_changes == 0 || self.publish_workers == 0 {
            return bad("max_batch, batch_max_changes and publish_workers must be positive".into());
        }
        Ok(())
    }
}

/// Opens the ledger database named by `database`.
pub async fn open_store(
    database: &str,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn LedgerStore>, AxsError> {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return Ok(Arc::new(
            PostgresLedgerStore::connect(database, clock).await?,
        ));
    }
    let path = PathBuf::from(database.strip_prefix("sqlite://").unwrap_or(database));
    Ok(Arc::new(SqliteLedgerStore::open(&path, clock).await?))
}

/// Opens the balance cache `config` names: Redis when `redis_url` is set, else in-process.
pub async fn open_cache(config: &AxsConfig) -> Result<Arc<dyn BalanceCache>, AxsError> {
    Ok(
        match config.redis_url.as_deref().filter(|url| !url.is_empty()) {
            Some(url) => Arc::new(RedisCache::connect(url, &config.cache_prefix).await?),
            None => Arc::new(MemoryCache::default()),
        },
    )
}

/// How long a role waits for the broker at start.
const BROKER_WAIT: Duration = Duration::from_secs(30);

/// A running gRPC role.
pub struct GrpcNode {
    pub addr: SocketAddr,
    pub partitions: i32,
    pub write: Arc<WriteSide>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    tasks: WriteTasks,
}

impl GrpcNode {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.tasks.shutdown().await;
    }
}

/// Starts the write side and serves the ledger (with reflection) on `config.listen`.
pub async fn start_grpc(
    config: &AxsConfig,
    store: Arc<dyn LedgerStore>,
    cache: Arc<dyn BalanceCache>,
    clock: Arc<dyn Clock>,
) -> Result<GrpcNode, AxsError> {
    config.check()?;
    let bus = config.bus();
    let partitions = ensure_topic(&bus, BROKER_WAIT).await?;
    let publisher = Arc::new(Publisher::new(&bus, partitions)?);
    let (write, tasks) = WriteSide::start(
        store,
        publisher,
        Arc::clone(&clock),
        WriteConfig {
            limits: Limits {
                max_batch: config.max_batch,
                ..Limits::default()
            },
            publish_workers: config.publish_workers,
            backlog_limit: config.backlog_limit,
            relay_after: Duration::from_millis(config.relay_after_ms),
            relay_interval: Duration::from_millis((config.relay_after_ms / 5).clamp(50, 1000)),
            node_id: config.node_id.clone(),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AxsError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AxsError::Bind {
        addr: config.listen,
        source,
    })?;
    // Both reflection versions: grpcurl and grpcio-reflection still speak v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| AxsError::Reflection(error.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|error| AxsError::Reflection(error.to_string()))?;
    let service = LedgerService::new(Arc::clone(&write), cache, clock, partitions);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    tracing::info!(%addr, partitions, topic = %config.topic, "axs gRPC serving");
    Ok(GrpcNode {
        addr,
        partitions,
        write,
        stop,
        server,
        tasks,
    })
}

/// Starts a consumer member.
pub async fn start_consumer(
    config: &AxsConfig,
    store: Arc<dyn LedgerStore>,
    cache: Arc<dyn BalanceCache>,
    clock: Arc<dyn Clock>,
) -> Result<ConsumerHandle, AxsError> {
    config.check()?;
    let bus = config.bus();
    let partitions = ensure_topic(&bus, BROKER_WAIT).await?;
    tracing::info!(partitions, topic = %config.topic, member = %config.node_id, "axs consumer starting");
    Ok(consumer::spawn(
        store,
        cache,
        clock,
        bus,
        partitions,
        ConsumerConfig {
            member_id: config.node_id.clone(),
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
            batch_max_changes: config.batch_max_changes,
            batch_linger: Duration::from_millis(config.batch_linger_ms),
            ..ConsumerConfig::default()
        },
    ))
}
