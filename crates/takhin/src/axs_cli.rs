//! `takhin axs grpc` and `takhin axs consumer`: the two AXS roles. Config precedence, lowest
//! first: defaults, the YAML file (`--config` or TAKHIN_AXS_CONFIG), TAKHIN_AXS_* variables
//! (for example TAKHIN_AXS_KAFKA_BOOTSTRAP), then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axs::cache::BalanceCache;
use axs::AxsConfig;
use clap::{Args, Subcommand};
use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use ledger_lease::{Clock, SystemClock};
use serde::Serialize;

#[derive(Subcommand)]
pub enum AxsCommand {
    /// The write side: gRPC API, outbox, publishers and relay.
    Grpc(AxsArgs),
    /// The processing side: fenced per-partition consumers applying batches to SQL.
    Consumer(AxsArgs),
}

#[derive(Args, Serialize, Default, Clone)]
pub struct AxsArgs {
    /// YAML config file; keys are the long flag names with '_' for '-'.
    #[arg(long, env = "TAKHIN_AXS_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listener (role grpc) [default: 127.0.0.1:50071].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Ledger database: a SQLite file path or sqlite://PATH, or a PostgreSQL URL
    /// postgres://USER@HOST:PORT/DB [default: the user data directory +
    /// /takhin/axs/axs.sqlite].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Shared balance cache redis://HOST:PORT/ [default: in-process, one node only].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Key prefix of this ledger in Redis [default: axs].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_prefix: Option<String>,
    /// Kafka bootstrap servers of the ledger topic [default: 127.0.0.1:9092].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_bootstrap: Option<String>,
    /// Ledger topic [default: axs.ledger].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Partitions the topic is created with when missing [default: 8].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Unique id of this node; leases are held under it [default: axs-PID].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Lease TTL of a partition (and of the relay) [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    /// Concurrent publish workers [default: 4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_workers: Option<usize>,
    /// Submits get RESOURCE_EXHAUSTED while more rows wait in INIT [default: 100000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_limit: Option<i64>,
    /// Rows still INIT this long are re-sent by the relay [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_after_ms: Option<u64>,
    /// Most changes in one submit [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    /// Most changes a consumer applies in one transaction [default: 2000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max_changes: Option<usize>,
    /// How long a consumer batch waits for more after its first event [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_linger_ms: Option<u64>,
    /// Prometheus /metrics listener [default: 127.0.0.1:9646 for grpc, 9647 for consumer].
    #[arg(long)]
    #[serde(skip)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve no /metrics.
    #[arg(long)]
    #[serde(skip)]
    pub no_metrics: bool,
    /// Exit when standard input closes (for test harnesses).
    #[arg(long)]
    #[serde(skip)]
    pub exit_on_stdin_eof: bool,
}

/// The names of AxsConfig's fields, so TAKHIN_AXS_* variables that are not config
/// (TAKHIN_AXS_CONFIG) are not mistaken for it.
fn config_keys() -> Vec<String> {
    match serde_json::to_value(AxsConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Layers defaults, file, environment and flags; `data_root` places the default database.
pub fn axs_config(args: &AxsArgs, data_root: Option<&Path>) -> anyhow::Result<AxsConfig> {
    let root = match data_root {
        Some(root) => root.to_owned(),
        None => dirs::data_dir()
            .context("no user data directory on this system; pass --database")?
            .join("takhin"),
    };
    let defaults = AxsConfig {
        database: root.join("axs").join("axs.sqlite").display().to_string(),
        ..AxsConfig::default()
    };
    let keys = config_keys();
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = &args.config {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Yaml::file(path));
    }
    figment = figment
        .merge(
            Env::prefixed("TAKHIN_AXS_").filter(move |key| keys.iter().any(|k| k == key.as_str())),
        )
        .merge(Serialized::defaults(args));
    figment.extract().context("reading axs config")
}

pub fn run(command: AxsCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let (args, role) = match command {
        AxsCommand::Grpc(args) => (args, Role::Grpc),
        AxsCommand::Consumer(args) => (args, Role::Consumer),
    };
    let config = axs_config(&args, None)?;
    runtime.block_on(async {
        let metrics = (!args.no_metrics).then(|| {
            args.metrics_listen.unwrap_or(match role {
                Role::Grpc => SocketAddr::from(([127, 0, 0, 1], 9646)),
                Role::Consumer => SocketAddr::from(([127, 0, 0, 1], 9647)),
            })
        });
        if let Some(addr) = metrics {
            axs::metrics::install(addr)
                .map_err(|error| anyhow::anyhow!("metrics listener {addr}: {error}"))?;
        }
        let cache = axs::node::open_cache(&config)
            .await
            .context("opening the balance cache")?;
        let running = start(&config, role, cache).await?;
        println!(
            "takhin axs {} {} database={} cache={} kafka={} topic={} metrics={}",
            role.name(),
            running.describe(),
            config.database,
            config.redis_url.as_deref().unwrap_or("in-process"),
            config.kafka_bootstrap,
            config.topic,
            metrics.map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        );
        crate::wait_for_stop(args.exit_on_stdin_eof).await;
        tracing::info!("shutting down axs {}", role.name());
        running.shutdown().await;
        Ok(())
    })
}

#[derive(Clone, Copy)]
pub enum Role {
    Grpc,
    Consumer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Grpc => "grpc",
            Role::Consumer => "consumer",
        }
    }
}

pub enum Running {
    Grpc(axs::node::GrpcNode),
    Consumer(axs::consumer::ConsumerHandle),
}

impl Running {
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        match self {
            Running::Grpc(node) => Some(node.addr),
            Running::Consumer(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Running::Grpc(node) => format!("grpc={} partitions={}", node.addr, node.partitions),
            Running::Consumer(_) => "consumer".to_owned(),
        }
    }

    pub async fn shutdown(self) {
        match self {
            Running::Grpc(node) => node.shutdown().await,
            Running::Consumer(handle) => handle.shutdown().await,
        }
    }
}

/// Opens the store and starts one role on it.
pub async fn start(
    config: &AxsConfig,
    role: Role,
    cache: Arc<dyn BalanceCache>,
) -> anyhow::Result<Running> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = axs::node::open_store(&config.database, Arc::clone(&clock))
        .await
        .with_context(|| format!("opening the ledger database {}", config.database))?;
    Ok(match role {
        Role::Grpc => Running::Grpc(
            axs::node::start_grpc(config, store, cache, clock)
                .await
                .context("starting the axs gRPC role")?,
        ),
        Role::Consumer => Running::Consumer(
            axs::node::start_consumer(config, store, cache, clock)
                .await
                .context("starting the axs consumer")?,
        ),
    })
}
