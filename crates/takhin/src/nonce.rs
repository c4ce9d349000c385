//! `takhin nonce serve`: one nonce-manager node (gRPC `proto/nonce/v1`). Several nodes
//! share one store; signers are spread over the live nodes by consistent hashing, and a
//! call reaching the wrong node is forwarded to the signer's holder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use nonce_manager::signer::LocalKey;
use nonce_server::{NodeConfig, StoreLocation};

/// Environment variable holding signing keys (hex, comma-separated), so they stay off the
/// command line.
const KEYS_ENV: &str = "TAKHIN_NONCE_KEYS";

#[derive(Subcommand)]
pub enum NonceCommand {
    /// Run a nonce-manager node.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Unique id of this node in the cluster.
    #[arg(long, env = "TAKHIN_NONCE_NODE_ID", default_value = "node-1")]
    node_id: String,
    /// gRPC listener.
    #[arg(long, env = "TAKHIN_NONCE_LISTEN", default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// HOST:PORT other nodes forward calls to [default: the bound listen address].
    #[arg(long, env = "TAKHIN_NONCE_ADVERTISED")]
    advertised: Option<String>,
    /// Prometheus /metrics listener.
    #[arg(
        long,
        env = "TAKHIN_NONCE_METRICS_LISTEN",
        default_value = "127.0.0.1:9645"
    )]
    metrics_listen: SocketAddr,
    /// Serve no /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Shared store: a SQLite file path (or sqlite://PATH), or a postgres:// URL
    /// [default: the user data directory + /takhin/nonce/nonce.sqlite].
    #[arg(long, env = "TAKHIN_NONCE_STORE")]
    store: Option<String>,
    /// The chain's JSON-RPC endpoint.
    #[arg(
        long,
        env = "TAKHIN_NONCE_RPC_URL",
        default_value = "http://127.0.0.1:8545"
    )]
    rpc_url: String,
    /// File with one hex private key per line ('#' starts a comment). Keys may also come
    /// from TAKHIN_NONCE_KEYS (comma-separated); both are used.
    #[arg(long, env = "TAKHIN_NONCE_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Confirmations before a transaction is Confirmed.
    #[arg(long, env = "TAKHIN_NONCE_CONFIRMATIONS", default_value_t = 12)]
    confirmations: u64,
    /// Lease TTL of a signer, and how long a silent node stays in the ring.
    #[arg(long, env = "TAKHIN_NONCE_LEASE_TTL_MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// How often receipts and the head are polled.
    #[arg(long, env = "TAKHIN_NONCE_FINALITY_POLL_MS", default_value_t = 1_000)]
    finality_poll_ms: u64,
    /// How long a transaction may stay unmined before it is re-sent or fee-bumped.
    #[arg(long, env = "TAKHIN_NONCE_RESUBMIT_AFTER_MS", default_value_t = 60_000)]
    resubmit_after_ms: u64,
    /// Redis URL of an optional cache of committed allocations (redis://127.0.0.1:6379/);
    /// the store stays the source of truth.
    #[arg(long, env = "TAKHIN_NONCE_REDIS_URL")]
    redis_url: Option<String>,
    /// Exit when standard input closes (for test harnesses).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

pub fn run(command: NonceCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        NonceCommand::Serve(args) => {
            let exit_on_stdin_eof = args.exit_on_stdin_eof;
            let config = node_config(args)?;
            runtime.block_on(serve(config, exit_on_stdin_eof))
        }
    }
}

fn keys(key_file: Option<&PathBuf>) -> anyhow::Result<Vec<LocalKey>> {
    let mut keys = Vec::new();
    if let Some(path) = key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?;
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let key = LocalKey::from_hex(line)
                .with_context(|| format!("key file {} line {}", path.display(), index + 1))?;
            keys.push(key);
        }
    }
    if let Ok(list) = std::env::var(KEYS_ENV) {
        for (index, key) in list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
        {
            keys.push(
                LocalKey::from_hex(key)
                    .with_context(|| format!("{KEYS_ENV} entry {}", index + 1))?,
            );
        }
    }
    anyhow::ensure!(
        !keys.is_empty(),
        "no signing keys: pass --key-file or set {KEYS_ENV}"
    );
    Ok(keys)
}

fn node_config(args: ServeArgs) -> anyhow::Result<NodeConfig> {
    let store = match &args.store {
        Some(location) => StoreLocation::parse(location),
        None => {
            let dir = dirs::data_dir()
                .context("no user data directory on this system; pass --store")?
                .join("takhin/nonce");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            StoreLocation::Sqlite(dir.join("nonce.sqlite"))
        }
    };
    let mut config = NodeConfig::new(args.node_id.clone(), store, args.rpc_url.clone());
    config.listen = args.listen;
    config.advertised = args.advertised.clone();
    config.metrics_listen = (!args.no_metrics).then_some(args.metrics_listen);
    config.keys = keys(args.key_file.as_ref())?;
    config.confirmations = args.confirmations;
    config.lease_ttl = Duration::from_millis(args.lease_ttl_ms);
    config.finality_poll = Duration::from_millis(args.finality_poll_ms);
    config.resubmit_after = Duration::from_millis(args.resubmit_after_ms);
    config.redis_url = args.redis_url.clone();
    Ok(config)
}

async fn serve(config: NodeConfig, exit_on_stdin_eof: bool) -> anyhow::Result<()> {
    let signers: Vec<String> = config
        .keys
        .iter()
        .map(|key| format!("{:#x}", key.address()))
        .collect();
    let node = nonce_server::start(config)
        .await
        .context("starting the nonce node")?;
    println!(
        "takhin nonce node={} grpc={} metrics={} signers={}",
        node.node_id(),
        node.grpc_addr,
        node.metrics_addr
            .map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        signers.join(","),
    );
    crate::wait_for_stop(exit_on_stdin_eof).await;
    tracing::info!("shutting down: releasing signers");
    node.shutdown().await;
    Ok(())
}
