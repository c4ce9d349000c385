//! The `takhin` binary: parses the command line and config, starts tracing and
//! hands over to the libraries. No logic of its own beyond that.

mod axs_cli;
mod config;
mod nonce;
mod utxo;

use std::io::Read;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use config::BrokerArgs;

/// mimalloc instead of glibc malloc: the servers allocate per request (protobuf messages,
/// HTTP/2 frames), and glibc's malloc/free were 7-9% of a gRPC query's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "takhin",
    version,
    about = "Takhin: Kafka-compatible streaming and ledgers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything on embedded defaults (data under the user's data directory).
    Dev(config::DevArgs),
    /// Run the Kafka-compatible broker.
    Broker(BrokerArgs),
    /// Generate, import and query a WES extended-UTXO chain store.
    #[command(subcommand)]
    Utxo(utxo::UtxoCommand),
    /// Run an AXS ledger role: the gRPC write side or a consumer.
    #[command(subcommand)]
    Axs(axs_cli::AxsCommand),
    /// Run a nonce-manager node (gRPC; several nodes share one store).
    #[command(subcommand)]
    Nonce(nonce::NonceCommand),
    /// Measure a Kafka-protocol broker with librdkafka.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Produce records as fast as possible (or at --rate) and report throughput and latency.
    Produce(takhin_bench::ProduceArgs),
    /// Read records from the beginning and report throughput.
    Consume(takhin_bench::ConsumeArgs),
    /// Drive the AXS ledger end to end (gRPC -> outbox -> broker -> consumer -> SQL),
    /// beside the naive one-transaction-per-change baseline and the raw bulk-SQL rate.
    Axs(takhin_bench::axs_bench::AxsBenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TAKHIN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Broker(args) => {
            let exit_on_stdin_eof = args.exit_on_stdin_eof;
            let config = config::broker_config(&args)?;
            let http = args.http.config(args.metrics_listen);
            runtime.block_on(run_broker(config, http, exit_on_stdin_eof, "broker"))
        }
        Command::Bench(BenchCommand::Produce(args)) => takhin_bench::produce(&args),
        Command::Bench(BenchCommand::Consume(args)) => takhin_bench::consume(&args),
        Command::Bench(BenchCommand::Axs(args)) => takhin_bench::axs_bench::run(&args),
        Command::Dev(args) => runtime.block_on(dev(args)),
        Command::Axs(command) => axs_cli::run(command, &runtime),
        Command::Utxo(command) => utxo::run(command, &runtime),
        Command::Nonce(command) => nonce::run(command, &runtime),
    }
}

/// `takhin dev`: the broker, the UTXO service and both AXS roles in one process, on
/// embedded defaults (SQLite, the in-process cache, the built-in broker).
async fn dev(args: config::DevArgs) -> anyhow::Result<()> {
    let root = config::dev_data_dir(&args)?;
    let http = args.http.config(args.metrics_listen);
    let (broker, http) = start_broker(config::dev_config(&args)?, http, "dev").await?;
    let utxo = utxo::start_dev(root.join("utxo"), args.utxo_listen).await?;
    let axs_args = axs_cli::AxsArgs {
        listen: Some(args.axs_listen),
        kafka_bootstrap: Some(broker.kafka_addr.to_string()),
        database: args.axs_database.clone(),
        redis_url: args.axs_redis_url.clone(),
        ..axs_cli::AxsArgs::default()
    };
    let axs_config = axs_cli::axs_config(&axs_args, Some(&root))?;
    let cache = axs::node::open_cache(&axs_config)
        .await
        .context("opening the AXS balance cache")?;
    let ledger = axs_cli::start(&axs_config, axs_cli::Role::Grpc, cache.clone()).await?;
    let consumer_config = axs::AxsConfig {
        node_id: format!("{}-consumer", axs_config.node_id),
        ..axs_config.clone()
    };
    let consumer = axs_cli::start(&consumer_config, axs_cli::Role::Consumer, cache).await?;
    println!(
        "  axs: {} (axs.v1.Ledger, reflection on) database={} cache={}",
        ledger.describe(),
        axs_config.database,
        axs_config.redis_url.as_deref().unwrap_or("in-process")
    );
    println!(
        "  try: kcat -b {} -L    grpcurl -plaintext {} list    (Ctrl-C stops; data is kept)",
        broker.kafka_addr,
        ledger.grpc_addr().unwrap_or(args.axs_listen)
    );
    wait_for_stop(args.exit_on_stdin_eof).await;
    tracing::info!("shutting down");
    consumer.shutdown().await;
    ledger.shutdown().await;
    utxo.shutdown().await.context("stopping the utxo server")?;
    http.shutdown().await;
    broker.shutdown().await;
    Ok(())
}

async fn run_broker(
    config: takhin_broker::BrokerConfig,
    http: takhin_http::HttpConfig,
    exit_on_stdin_eof: bool,
    mode: &str,
) -> anyhow::Result<()> {
    let (running, http) = start_broker(config, http, mode).await?;
    wait_for_stop(exit_on_stdin_eof).await;
    tracing::info!("shutting down");
    http.shutdown().await;
    running.shutdown().await;
    Ok(())
}

/// Starts the broker and its HTTP surfaces. The HTTP crate serves /metrics (on the Admin
/// API, and on `--metrics-listen` when given), so the broker's own exporter is off.
async fn start_broker(
    mut config: takhin_broker::BrokerConfig,
    mut http: takhin_http::HttpConfig,
    mode: &str,
) -> anyhow::Result<(takhin_broker::RunningBroker, takhin_http::RunningHttp)> {
    let data_dir = config.data_dir.clone();
    if http.admin_listen.is_none() && http.metrics_listen.is_none() {
        // Without the Admin API the config's metrics listener (9644 by default) serves.
        http.metrics_listen = config.metrics_listen;
    }
    config.metrics_listen = None;
    let running = takhin_broker::run(config)
        .await
        .context("starting the broker")?;
    let surfaces = takhin_http::start(running.broker.clone(), &http)
        .await
        .context("starting the HTTP surfaces")?;
    let metrics = surfaces.metrics_addr.or(surfaces.admin_addr);
    println!(
        "takhin {mode} listening kafka={} metrics={} data={}",
        running.kafka_addr,
        metrics.map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        data_dir.display(),
    );
    println!(
        "  schema registry: {}    admin: {}",
        surfaces
            .schema_registry_addr
            .map_or("off".to_owned(), |addr| format!("http://{addr}")),
        surfaces.admin_addr.map_or("off".to_owned(), |addr| format!(
            "http://{addr}/v1/status/ready"
        )),
    );
    Ok((running, surfaces))
}

/// Resolves on Ctrl-C, SIGTERM, or (when asked) end of stdin, which lets a test
/// harness tie the broker's life to its own.
async fn wait_for_stop(exit_on_stdin_eof: bool) {
    let (stdin_closed_tx, stdin_closed_rx) = tokio::sync::oneshot::channel::<()>();
    if exit_on_stdin_eof {
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = stdin_closed_tx.send(());
        });
    }
    let stdin_closed = async {
        if exit_on_stdin_eof {
            let _ = stdin_closed_rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
        _ = stdin_closed => tracing::info!("stdin closed"),
    }
}
