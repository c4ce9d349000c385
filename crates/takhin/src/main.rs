//! The `takhin` binary: parses the command line and config, starts tracing and
//! hands over to the libraries. No logic of its own beyond that.

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
    /// Run a nonce-manager node (gRPC; several nodes share one store).
    #[command(subcommand)]
    Nonce(nonce::NonceCommand),
    /// Measure a Kafka-protocol broker with librdkafka.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[cfg(feature = "bench")]
#[derive(Subcommand)]
enum BenchCommand {
    /// Produce records as fast as possible (or at --rate) and report throughput and latency.
    Produce(takhin_bench::ProduceArgs),
    /// Read records from the beginning and report throughput.
    Consume(takhin_bench::ConsumeArgs),
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
            runtime.block_on(run_broker(config, exit_on_stdin_eof, "broker"))
        }
        #[cfg(feature = "bench")]
        Command::Bench(BenchCommand::Produce(args)) => takhin_bench::produce(&args),
        #[cfg(feature = "bench")]
        Command::Bench(BenchCommand::Consume(args)) => takhin_bench::consume(&args),
        Command::Dev(args) => {
            let config = config::dev_config(&args)?;
            let utxo_dir = config::dev_data_dir(&args)?.join("utxo");
            runtime.block_on(async {
                let utxo = utxo::start_dev(utxo_dir).await?;
                let result = run_broker(config, false, "dev").await;
                utxo.shutdown().await.context("stopping the utxo server")?;
                result
            })
        }
        Command::Utxo(command) => utxo::run(command, &runtime),
        Command::Nonce(command) => nonce::run(command, &runtime),
    }
}

async fn run_broker(
    config: takhin_broker::BrokerConfig,
    exit_on_stdin_eof: bool,
    mode: &str,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let running = takhin_broker::run(config)
        .await
        .context("starting the broker")?;
    println!(
        "takhin {mode} listening kafka={} metrics={} data={}",
        running.kafka_addr,
        running
            .metrics_addr
            .map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        data_dir.display(),
    );
    if mode == "dev" {
        println!(
            "  try: kcat -b {} -L    (Ctrl-C stops; data is kept)",
            running.kafka_addr
        );
    }
    wait_for_stop(exit_on_stdin_eof).await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
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
