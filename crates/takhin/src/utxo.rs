//! `takhin utxo ...`: generate a synthetic WES chain, import it into the durable chain
//! store, query the state, and serve it over gRPC (`serve`, `bench-query`). The chain rules
//! live in `wes_utxo`, storage in `wes_store`, the server in `wes_server`; this module only
//! parses arguments, moves bytes between files and prints results.
//!
//! Chain file format: a sequence of records, each a `u32` big-endian length followed by
//! that many bytes of a protobuf-encoded `wes.v1.Block`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use prost::Message;
use serde_json::{json, Value};
use wes_server::ServerConfig;
use wes_store::{ChainStore, ResourceInfo, StoreConfig};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::model::{self, Address, OutPointKey};
use wes_utxo::{pb, ChainParams, UtxoState};

/// The `takhin utxo` subcommands.
#[derive(Subcommand)]
pub enum UtxoCommand {
    /// Generate a valid synthetic chain and write it to a file of length-prefixed blocks.
    Gen(GenArgs),
    /// Apply every block of a chain file to the chain store (idempotent on re-import).
    Import(ImportArgs),
    /// Print an address's balances per asset as JSON.
    Balance(AddressArgs),
    /// Print an address's live UTXOs as JSON.
    Utxos(UtxosArgs),
    /// Print an address's RESOURCE UTXOs with their reference counts as JSON.
    Resources(AddressArgs),
    /// Print an address's account nonce as JSON.
    Nonce(AddressArgs),
    /// Print the chain store's tip and what the last open recovered, as JSON.
    Status(StoreArgs),
    /// Serve the chain state over gRPC (wes.v1.UtxoService) with Prometheus /metrics.
    Serve(ServeArgs),
    /// Load a chain store (if empty) and measure GetUtxosByAddress and GetBalance over gRPC.
    BenchQuery(BenchQueryArgs),
}

/// `takhin utxo bench-query`.
#[derive(Args)]
pub struct BenchQueryArgs {
    /// Chain store to query; loaded with --utxos over --owners first if empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// UTXOs to load into an empty store (fan-out blocks of 256 outputs per transaction).
    #[arg(long, default_value_t = 1_000_000)]
    pub utxos: usize,
    /// Owners (key holders) the UTXOs are spread over; queries pick them round robin.
    #[arg(long, default_value_t = 100_000)]
    pub owners: usize,
    /// Key derivation seed (same seed, same owners).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Concurrent gRPC clients, one request in flight each.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// HTTP/2 connections the clients share round robin [default: one per client].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seconds each query kind is measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// `takhin utxo serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Prometheus /metrics listener.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub metrics_addr: SocketAddr,
    /// Do not serve /metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Exit when standard input closes (for test harnesses).
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
    /// Test hook: delay every apply of the UTXO system by this many milliseconds.
    #[arg(long, default_value_t = 0, hide = true)]
    pub apply_delay_ms: u64,
}

/// Where the chain store lives.
#[derive(Args)]
pub struct StoreArgs {
    /// Chain store directory [default: <user data dir>/takhin/utxo].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `takhin utxo gen`.
#[derive(Args)]
pub struct GenArgs {
    /// Number of blocks, genesis included.
    #[arg(long, default_value_t = 100)]
    pub blocks: u64,
    /// Number of key holders (at least 2).
    #[arg(long, default_value_t = 100)]
    pub owners: usize,
    /// Transactions per block besides the coinbase (fewer when not enough can be built).
    #[arg(long, default_value_t = 10)]
    pub txs_per_block: usize,
    /// Generator seed: same seed and options, same chain.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Chain file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `takhin utxo import`.
#[derive(Args)]
pub struct ImportArgs {
    /// Chain file written by `takhin utxo gen`.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Queries about one address.
#[derive(Args)]
pub struct AddressArgs {
    /// Owner address: 40 hex characters (20 bytes).
    pub address: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `takhin utxo utxos`.
#[derive(Args)]
pub struct UtxosArgs {
    /// Owner address: 40 hex characters (20 bytes).
    pub address: String,
    /// Only UTXOs of this category.
    #[arg(long, value_enum)]
    pub category: Option<Category>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// A UTXO category on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum Category {
    /// Native coin and tokens.
    Asset,
    /// Content-addressed resources.
    Resource,
    /// State records.
    State,
}

impl From<Category> for pb::UtxoCategory {
    fn from(category: Category) -> Self {
        match category {
            Category::Asset => pb::UtxoCategory::Asset,
            Category::Resource => pb::UtxoCategory::Resource,
            Category::State => pb::UtxoCategory::State,
        }
    }
}

/// Runs one `takhin utxo` subcommand (`runtime` serves the async ones).
pub fn run(command: UtxoCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        UtxoCommand::Serve(args) => runtime.block_on(serve(args)),
        UtxoCommand::BenchQuery(args) => runtime.block_on(bench_query(args)),
        UtxoCommand::Gen(args) => generate(&args),
        UtxoCommand::Import(args) => import(&args),
        UtxoCommand::Balance(args) => {
            let owner = parse_address(&args.address)?;
            let chain = open_store(&args.store)?;
            let balances: Vec<Value> = chain
                .balances(&owner)
                .context("reading balances")?
                .into_iter()
                .map(|(asset, amount)| json!({"asset": asset.to_string(), "amount": amount_json(amount)}))
                .collect();
            print_json(&json!({"address": owner.to_string(), "balances": balances}))
        }
        UtxoCommand::Utxos(args) => {
            let owner = parse_address(&args.address)?;
            let chain = open_store(&args.store)?;
            let utxos = match args.category {
                Some(category) => chain.utxos_by_owner_and_category(&owner, category.into()),
                None => chain.utxos_by_owner(&owner),
            }
            .context("reading UTXOs")?;
            let utxos: Vec<Value> = utxos.iter().map(utxo_json).collect();
            print_json(&json!({"address": owner.to_string(), "utxos": utxos}))
        }
        UtxoCommand::Resources(args) => {
            let owner = parse_address(&args.address)?;
            let chain = open_store(&args.store)?;
            let resources: Vec<Value> = chain
                .resources_by_owner(&owner)
                .context("reading resources")?
                .iter()
                .map(resource_json)
                .collect();
            print_json(&json!({"address": owner.to_string(), "resources": resources}))
        }
        UtxoCommand::Nonce(args) => {
            let owner = parse_address(&args.address)?;
            let chain = open_store(&args.store)?;
            let nonce = chain
                .compute_account_nonce(&owner)
                .context("computing the account nonce")?;
            print_json(&json!({"address": owner.to_string(), "nonce": nonce}))
        }
        UtxoCommand::Status(args) => {
            let dir = data_dir(&args)?;
            let chain = open_at(&dir)?;
            let tip = chain.tip();
            let recovery = chain.recovery();
            let repository_blocks = chain
                .repository()
                .len()
                .context("reading the block repository")?;
            print_json(&json!({
                "data_dir": dir.display().to_string(),
                "tip_height": tip.map(|tip| tip.height),
                "tip_hash": tip.map(|tip| tip.hash.to_string()),
                "tip_timestamp": tip.map(|tip| tip.timestamp),
                // Opening the store ends with a flush, so the flushed height is the tip.
                "flushed_height": tip.map(|tip| tip.height),
                "repository_blocks": repository_blocks,
                "recovery": {
                    "rolled_back_blocks": recovery.n_rolled_back,
                    "replayed_blocks": recovery.n_replayed,
                },
            }))
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(data_dir(&args.store)?, args.grpc_addr);
    config.metrics_addr = (!args.no_metrics).then_some(args.metrics_addr);
    config.apply_delay = Duration::from_millis(args.apply_delay_ms);
    let data = config.data_dir.clone();
    let running = wes_server::serve(config)
        .await
        .with_context(|| format!("starting the utxo server on {}", data.display()))?;
    println!(
        "takhin utxo serve listening grpc={} metrics={} data={}",
        running.grpc_addr,
        running
            .metrics_addr
            .map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        data.display()
    );
    crate::wait_for_stop(args.exit_on_stdin_eof).await;
    running.shutdown().await.context("stopping the utxo server")
}

async fn bench_query(args: BenchQueryArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut generator = ChainGenerator::new(args.seed, args.owners);
    eprintln!(
        "bench-query: derived {} owner keys in {:.1}s",
        args.owners,
        started.elapsed().as_secs_f64()
    );
    let owners: Vec<Address> = generator
        .owners()
        .iter()
        .map(|owner| owner.address)
        .collect();
    let dir = args.data_dir.clone();
    let is_empty = !dir.join("blocks.log").exists();
    let load = if is_empty {
        let n_utxos = args.utxos;
        let report = tokio::task::spawn_blocking(move || {
            wes_server::bench::load_fan_out(&dir, &mut generator, n_utxos, |height| {
                eprintln!("bench-query: loaded block {height}");
            })
        })
        .await
        .context("loader task")?
        .context("loading the chain store")?;
        eprintln!(
            "bench-query: loaded {} UTXOs, height {}, in {:.1}s",
            report.n_utxos,
            report.height,
            report.elapsed.as_secs_f64()
        );
        json!({"utxos": report.n_utxos, "height": report.height, "seconds": report.elapsed.as_secs_f64()})
    } else {
        json!(null)
    };
    let config = ServerConfig::new(args.data_dir.clone(), "127.0.0.1:0".parse()?);
    let running = wes_server::serve(config)
        .await
        .context("starting the utxo server")?;
    let mut results = Vec::new();
    for kind in [
        wes_server::bench::QueryKind::UtxosByAddress,
        wes_server::bench::QueryKind::Balance,
    ] {
        let report = wes_server::bench::query_load(
            running.grpc_addr,
            kind,
            &owners,
            args.clients,
            args.connections.unwrap_or(args.clients),
            Duration::from_secs(args.seconds),
        )
        .await
        .context("connecting the load clients")?;
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        eprintln!(
            "bench-query: {:<18} {} clients on {} connections: {:.0} q/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us, {} errors, {:.1} results/query",
            kind.name(),
            report.n_clients,
            report.n_connections,
            report.queries_per_second,
            micros(report.p50),
            micros(report.p99),
            micros(report.p999),
            micros(report.max),
            report.n_errors,
            report.mean_results
        );
        results.push(json!({
            "query": kind.name(),
            "clients": report.n_clients,
            "connections": report.n_connections,
            "ok": report.n_ok,
            "errors": report.n_errors,
            "seconds": report.elapsed.as_secs_f64(),
            "queries_per_second": report.queries_per_second,
            "p50_us": micros(report.p50),
            "p99_us": micros(report.p99),
            "p999_us": micros(report.p999),
            "max_us": micros(report.max),
            "mean_results": report.mean_results,
        }));
    }
    running
        .shutdown()
        .await
        .context("stopping the utxo server")?;
    print_json(
        &json!({"data_dir": args.data_dir.display().to_string(), "load": load, "results": results}),
    )
}

/// Starts the utxo server of `takhin dev` (data in `dir`, gRPC on the default port, metrics
/// through the broker's recorder) and prints its line of the banner.
pub async fn start_dev(
    dir: PathBuf,
    listen: std::net::SocketAddr,
) -> anyhow::Result<wes_server::Running> {
    let config = ServerConfig::new(dir.clone(), listen);
    let running = wes_server::serve(config)
        .await
        .with_context(|| format!("starting the utxo server on {}", dir.display()))?;
    println!(
        "  utxo: grpc={} (wes.v1.UtxoService; metrics on the broker's /metrics) data={}",
        running.grpc_addr,
        dir.display()
    );
    Ok(running)
}

fn generate(args: &GenArgs) -> anyhow::Result<()> {
    if args.blocks == 0 {
        bail!("--blocks must be at least 1 (the genesis block)");
    }
    let file = File::create(&args.out)
        .with_context(|| format!("creating chain file {}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    let mut generator = ChainGenerator::new(args.seed, args.owners);
    let mut state = UtxoState::new(ChainParams::default());
    let started = Instant::now();
    let step = (args.blocks / 10).max(1);
    let (mut n_transactions, mut n_bytes) = (0u64, 0u64);
    let mut buffer = Vec::new();
    for index in 0..args.blocks {
        let block = generator.next_block(&state, args.txs_per_block);
        state
            .apply_block(&block)
            .with_context(|| format!("generated block {index} does not apply (generator bug)"))?;
        buffer.clear();
        block
            .encode(&mut buffer)
            .context("encoding a generated block")?;
        let length = u32::try_from(buffer.len()).context("a generated block exceeds 4 GiB")?;
        out.write_all(&length.to_be_bytes())
            .and_then(|()| out.write_all(&buffer))
            .with_context(|| format!("writing {}", args.out.display()))?;
        n_transactions += block.transactions.len() as u64;
        n_bytes += 4 + buffer.len() as u64;
        if (index + 1) % step == 0 || index + 1 == args.blocks {
            eprintln!(
                "gen: {}/{} blocks ({}%), {n_transactions} transactions",
                index + 1,
                args.blocks,
                (index + 1) * 100 / args.blocks
            );
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let tip = state.tip().context("generated chain has no tip")?;
    let owners: Vec<String> = generator
        .owners()
        .iter()
        .map(|owner| owner.address.to_string())
        .collect();
    print_json(&json!({
        "file": args.out.display().to_string(),
        "blocks": args.blocks,
        "transactions": n_transactions,
        "bytes": n_bytes,
        "seconds": seconds,
        "seed": args.seed,
        "tip_height": tip.height,
        "tip_hash": tip.hash.to_string(),
        "owners": owners,
    }))
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let file = File::open(&args.file)
        .with_context(|| format!("opening chain file {}", args.file.display()))?;
    let mut reader = BufReader::new(file);
    let dir = data_dir(&args.store)?;
    let mut chain = open_at(&dir)?;
    let started = Instant::now();
    let (mut n_applied, mut n_skipped, mut n_ops) = (0u64, 0u64, 0u64);
    let mut index = 0u64;
    let outcome = loop {
        let block = match read_record(&mut reader, index, &args.file) {
            Ok(Some(block)) => block,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        match apply_one(&mut chain, &block, index) {
            Ok(true) => {
                n_applied += 1;
                n_ops += block
                    .transactions
                    .iter()
                    .map(|tx| (tx.inputs.len() + tx.outputs.len()) as u64)
                    .sum::<u64>();
            }
            Ok(false) => n_skipped += 1,
            Err(error) => break Err(error),
        }
        index += 1;
    };
    // Keep what was applied before a bad record durable, then report the failure.
    let flushed = chain.flush().context("flushing the chain store");
    outcome?;
    flushed?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let tip = chain.tip();
    eprintln!(
        "import: {n_applied} blocks applied, {n_skipped} already present, {:.0} blocks/s, {:.0} UTXO ops/s",
        n_applied as f64 / seconds,
        n_ops as f64 / seconds
    );
    print_json(&json!({
        "data_dir": dir.display().to_string(),
        "applied_blocks": n_applied,
        "skipped_blocks": n_skipped,
        "utxo_ops": n_ops,
        "seconds": seconds,
        "blocks_per_second": n_applied as f64 / seconds,
        "utxo_ops_per_second": n_ops as f64 / seconds,
        "tip_height": tip.map(|tip| tip.height),
        "tip_hash": tip.map(|tip| tip.hash.to_string()),
    }))
}

/// Applies `block` unless it is already in the store; `Ok(false)` when skipped.
fn apply_one(chain: &mut ChainStore, block: &pb::Block, index: u64) -> anyhow::Result<bool> {
    let header = block
        .header
        .as_ref()
        .with_context(|| format!("record {index}: block has no header"))?;
    if let Some(tip) = chain.tip() {
        if header.height <= tip.height {
            let hash = model::block_hash(header);
            let stored = chain
                .repository()
                .hash_at(header.height)
                .context("reading the block repository")?;
            if stored == Some(hash) {
                return Ok(false);
            }
            bail!(
                "record {index}: block {} at height {} conflicts with the stored block {} \
                 (the store holds a different chain; import into an empty --data-dir)",
                hash,
                header.height,
                stored.map_or("<none>".to_owned(), |stored| stored.to_string()),
            );
        }
    }
    chain
        .apply_block(block)
        .with_context(|| format!("record {index}: block at height {} rejected", header.height))?;
    Ok(true)
}

/// Reads record `index`; `None` at a clean end of file.
fn read_record(
    reader: &mut impl Read,
    index: u64,
    path: &Path,
) -> anyhow::Result<Option<pb::Block>> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        let n = reader
            .read(&mut prefix[filled..])
            .with_context(|| format!("reading record {index} of {}", path.display()))?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            bail!(
                "record {index} of {}: truncated length prefix ({filled} of 4 bytes)",
                path.display()
            );
        }
        filled += n;
    }
    let length = u32::from_be_bytes(prefix) as usize;
    if length > wes_store::limits::MAX_BLOCK_BYTES {
        bail!(
            "record {index} of {}: length {length} exceeds the maximum block size {} (not a chain file?)",
            path.display(),
            wes_store::limits::MAX_BLOCK_BYTES
        );
    }
    let mut body = Vec::with_capacity(length);
    let read = reader
        .take(length as u64)
        .read_to_end(&mut body)
        .with_context(|| format!("reading record {index} of {}", path.display()))?;
    if read < length {
        bail!(
            "record {index} of {}: truncated ({read} of {length} bytes)",
            path.display()
        );
    }
    let block = pb::Block::decode(body.as_slice()).with_context(|| {
        format!(
            "record {index} of {}: not a protobuf-encoded block",
            path.display()
        )
    })?;
    Ok(Some(block))
}

fn data_dir(args: &StoreArgs) -> anyhow::Result<PathBuf> {
    match &args.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(dirs::data_dir()
            .context("no user data directory on this system; pass --data-dir")?
            .join("takhin")
            .join("utxo")),
    }
}

fn open_store(args: &StoreArgs) -> anyhow::Result<ChainStore> {
    open_at(&data_dir(args)?)
}

fn open_at(dir: &Path) -> anyhow::Result<ChainStore> {
    ChainStore::open(dir, ChainParams::default(), StoreConfig::default())
        .with_context(|| format!("opening the chain store in {}", dir.display()))
}

/// Parses a 40-character hex address.
fn parse_address(text: &str) -> anyhow::Result<Address> {
    let bytes = text.as_bytes();
    if bytes.len() != 40 {
        bail!(
            "invalid address {text:?}: expected 40 hex characters (20 bytes), got {}",
            text.chars().count()
        );
    }
    let mut address = [0u8; 20];
    for (byte, pair) in address.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(high), Some(low)) => *byte = (high * 16 + low) as u8,
            _ => bail!("invalid address {text:?}: not hexadecimal"),
        }
    }
    Ok(Address(address))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A u128 amount as a JSON number when it fits in u64, else as a decimal string.
fn amount_json(amount: u128) -> Value {
    u64::try_from(amount).map_or_else(|_| json!(amount.to_string()), |amount| json!(amount))
}

fn outpoint_string(utxo: &pb::Utxo) -> Value {
    utxo.outpoint
        .as_ref()
        .and_then(|outpoint| OutPointKey::from_proto(outpoint).ok())
        .map_or(Value::Null, |outpoint| json!(outpoint.to_string()))
}

fn utxo_json(utxo: &pb::Utxo) -> Value {
    let category = pb::UtxoCategory::try_from(utxo.category).map_or_else(
        |_| utxo.category.to_string(),
        |c| c.as_str_name().to_owned(),
    );
    let status = pb::UtxoLifecycleStatus::try_from(utxo.status)
        .map_or_else(|_| utxo.status.to_string(), |s| s.as_str_name().to_owned());
    let mut value = json!({
        "outpoint": outpoint_string(utxo),
        "category": category,
        "status": status,
        "owner": hex(&utxo.owner_address),
        "block_height": utxo.block_height,
        "created_timestamp": utxo.created_timestamp,
    });
    let Some(output) = utxo.output() else {
        value["content"] = json!("reference_only");
        return value;
    };
    match &output.output_content {
        Some(pb::tx_output::OutputContent::Asset(_)) => {
            if let Ok(Some((asset, amount))) = model::asset_amount(output) {
                value["asset"] = json!(asset.to_string());
                value["amount"] = json!(amount);
            }
        }
        Some(pb::tx_output::OutputContent::Resource(resource)) => {
            value["resource"] = json!({
                "content_hash": hex(&resource.content_hash),
                "name": resource.name,
                "category": pb::ResourceCategory::try_from(resource.category)
                    .map_or_else(|_| resource.category.to_string(), |c| c.as_str_name().to_owned()),
                "max_concurrent_references": resource.max_concurrent_references,
            });
        }
        Some(pb::tx_output::OutputContent::State(state)) => {
            value["state"] = json!({
                "state_id": hex(&state.state_id),
                "payload_bytes": state.payload.len(),
                "ttl_seconds": state.ttl_seconds,
                "expires_at_timestamp": utxo.state_constraints().map(|c| c.expires_at_timestamp),
            });
        }
        None => {}
    }
    value
}

fn resource_json(info: &ResourceInfo) -> Value {
    json!({
        "utxo": utxo_json(&info.utxo),
        "reference_count": info.reference_count,
        "max_concurrent_references": info.max_concurrent_references,
        "total_reference_count": info.total_reference_count,
        "consumable": info.consumable,
    })
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    println!("{text}");
    Ok(())
}
