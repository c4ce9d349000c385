//! `takhin bench axs`: the AXS pipeline end to end (gRPC submit -> outbox -> broker ->
//! fenced consumer -> SQL), and in the same run the same kind of workload applied the
//! naive way (one change per transaction) and the raw bulk-SQL rate (planned batches
//! committed straight to the store), so the gap to the limit shows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axs::cache::{BalanceCache, MemoryCache};
use axs::engine::{self, Positioned};
use axs::model::{Account, AccountState, ChangeKind, ChangeRequest, LedgerEvent};
use axs::node::{self, AxsConfig};
use axs::pb;
use axs::pb::ledger_client::LedgerClient;
use axs::store::{Fence, LedgerStore};
use clap::Args;
use hdrhistogram::Histogram;
use ledger_lease::{Clock, HolderId, ResourceName, SystemClock};
use parking_lot::Mutex;

#[derive(Args, Clone, Debug)]
pub struct AxsBenchArgs {
    /// Ledger database: a SQLite file path, or a postgres:// URL [default: a SQLite file in
    /// a temporary directory].
    #[arg(long)]
    pub database: Option<String>,
    /// Kafka bootstrap of a running broker [default: start the built-in broker in a
    /// temporary directory].
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Accounts to open.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u32,
    /// Changes to push through the pipeline.
    #[arg(long, default_value_t = 200_000)]
    pub changes: u64,
    /// Percent of accounts that are hot (0 = uniform); the hot ones take half the traffic.
    #[arg(long, default_value_t = 0.0)]
    pub hot_percent: f64,
    /// Changes per submit call.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Changes per second to offer; 0 = as fast as the pipeline takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Ledger topic partitions.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Changes applied one per transaction for the naive baseline (0 skips it).
    #[arg(long, default_value_t = 3_000)]
    pub naive_changes: u64,
    /// Changes committed by the raw bulk-SQL step, 1,000 per transaction (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub raw_changes: u64,
}

/// xorshift64*: fast, seeded, and the same workload on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Picks accounts: uniform, or `hot` accounts taking half the picks.
struct Picker {
    accounts: u64,
    hot: u64,
    rng: Rng,
}

impl Picker {
    fn new(accounts: u32, hot_percent: f64, seed: u64) -> Self {
        let hot = ((f64::from(accounts) * hot_percent / 100.0) as u64).min(u64::from(accounts));
        Self {
            accounts: u64::from(accounts),
            hot,
            rng: Rng(seed | 1),
        }
    }

    fn pick(&mut self) -> u64 {
        if self.hot > 0 && self.rng.next().is_multiple_of(2) {
            self.rng.next() % self.hot
        } else {
            self.rng.next() % self.accounts
        }
    }
}

fn account_name(i: u64) -> String {
    format!("bench-{i}")
}

/// Mostly credits, one in five a small debit (accounts start at zero with an overdraft
/// limit, so some debits are refused: the rules run on the hot path too).
fn amount(rng: &mut Rng) -> i128 {
    let n = i128::from((rng.next() % 1000) as u16) + 1;
    if rng.next().is_multiple_of(5) {
        -n
    } else {
        n
    }
}

fn summarize(name: &str, histogram: &Histogram<u64>, unit_us: bool) -> String {
    let scale = if unit_us { 1000.0 } else { 1.0 };
    format!(
        "{name} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        histogram.value_at_quantile(0.5) as f64 / scale,
        histogram.value_at_quantile(0.99) as f64 / scale,
        histogram.max() as f64 / scale
    )
}

pub fn run(args: &AxsBenchArgs) -> anyhow::Result<()> {
    if args.accounts == 0 || args.batch == 0 || args.clients == 0 {
        bail!("--accounts, --batch and --clients must be positive");
    }
    if !(0.0..=100.0).contains(&args.hot_percent) {
        bail!("--hot-percent must be within 0..=100");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(bench(args.clone()))
}

async fn bench(args: AxsBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let broker = match &args.bootstrap {
        Some(_) => None,
        None => Some(
            takhin_broker::run(takhin_broker::BrokerConfig {
                data_dir: dir.path().join("broker"),
                kafka_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_listen: None,
                ..takhin_broker::BrokerConfig::default()
            })
            .await
            .context("starting the built-in broker")?,
        ),
    };
    let bootstrap = match (&args.bootstrap, &broker) {
        (Some(bootstrap), _) => bootstrap.clone(),
        (None, Some(broker)) => broker.kafka_addr.to_string(),
        (None, None) => unreachable!("a broker is started when no bootstrap is given"),
    };
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| dir.path().join("axs.sqlite").display().to_string());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = node::open_store(&database, Arc::clone(&clock)).await?;
    let engine_name = if database.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    };
    println!(
        "axs bench: {engine_name} ({}), broker {bootstrap}, {} accounts, hot {}%, {} changes in batches of {} from {} clients, rate {}",
        if args.database.is_some() { database.as_str() } else { "temporary file" },
        args.accounts,
        args.hot_percent,
        args.changes,
        args.batch,
        args.clients,
        if args.rate == 0 { "max".to_owned() } else { format!("{}/s", args.rate) }
    );

    let started = Instant::now();
    let accounts: Vec<Account> = (0..u64::from(args.accounts))
        .map(|i| Account {
            name: account_name(i),
            assets: BTreeMap::from([("USD".to_owned(), 1_000_000)]),
            shard: u32::try_from(i).unwrap_or(0),
            state: AccountState::Open,
            created_at_ms: 0,
        })
        .collect();
    let created = store.open_accounts(&accounts).await?;
    println!(
        "  seeded {created} accounts in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let raw = if args.raw_changes > 0 {
        Some(raw_bulk(&store, &args, clock.now().0).await?)
    } else {
        None
    };
    let naive = if args.naive_changes > 0 {
        Some(naive(&store, &args, clock.now().0).await?)
    } else {
        None
    };

    let config = AxsConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: database.clone(),
        kafka_bootstrap: bootstrap,
        topic: format!("axs.bench.{}", std::process::id()),
        partitions: args.partitions,
        node_id: "bench-grpc".into(),
        max_batch: args.batch.max(1_000),
        backlog_limit: i64::MAX,
        ..AxsConfig::default()
    };
    let cache: Arc<dyn BalanceCache> = Arc::new(MemoryCache::default());
    let grpc = node::start_grpc(
        &config,
        Arc::clone(&store),
        Arc::clone(&cache),
        Arc::clone(&clock),
    )
    .await?;
    let consumer = node::start_consumer(
        &AxsConfig {
            node_id: "bench-consumer".into(),
            ..config.clone()
        },
        Arc::clone(&store),
        cache,
        Arc::clone(&clock),
    )
    .await?;
    let e2e = pipeline(&args, grpc.addr, &store, args.partitions).await;
    consumer.shutdown().await;
    grpc.shutdown().await;
    if let Some(broker) = broker {
        broker.shutdown().await;
    }
    let e2e = e2e?;
    println!("results ({engine_name}):");
    if let Some(raw) = raw {
        println!("  raw bulk SQL      {raw:>9.0} changes/s  (planned batches of 1,000, one transaction each)");
    }
    if let Some(naive) = naive {
        println!("  naive             {naive:>9.0} changes/s  (one change per transaction)");
    }
    println!(
        "  pipeline          {:>9.0} changes/s applied end to end  ({} applied, {} rejected)",
        e2e.applied_rate, e2e.applied, e2e.rejected
    );
    if let Some(naive) = naive {
        println!("  pipeline / naive  {:>9.1}x", e2e.applied_rate / naive);
    }
    println!("  {}", summarize("submit", &e2e.submit, true));
    println!(
        "  {}",
        summarize("submit-to-applied", &e2e.submit_to_applied, false)
    );
    Ok(())
}

/// Builds `count` immediate changes for the bench accounts.
fn workload(args: &AxsBenchArgs, prefix: &str, count: u64, seed: u64) -> Vec<ChangeRequest> {
    let mut picker = Picker::new(args.accounts, args.hot_percent, seed);
    let mut rng = Rng(seed.rotate_left(17) | 1);
    (0..count)
        .map(|i| ChangeRequest {
            key: format!("{prefix}-{i}"),
            account: account_name(picker.pick()),
            asset: "USD".into(),
            amount: amount(&mut rng),
            kind: ChangeKind::Immediate,
            pending_key: String::new(),
            timeout_ms: 0,
            metadata: String::new(),
        })
        .collect()
}

/// A lease for the bench's direct writes, on a partition number no topic uses.
async fn bench_fence(store: &Arc<dyn LedgerStore>, name: &str) -> anyhow::Result<Fence> {
    let resource = ResourceName::new(format!("axs/bench/{name}"))?;
    let lease = store
        .leases()
        .try_acquire(
            &resource,
            &HolderId::new("bench")?,
            Duration::from_secs(3600),
        )
        .await?
        .context("bench lease is held elsewhere")?;
    Ok(Fence {
        resource,
        token: lease.token,
    })
}

fn positioned(requests: Vec<ChangeRequest>, partition: i32, now: i64) -> Vec<Positioned> {
    requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| Positioned {
            event: LedgerEvent {
                request,
                shard: 0,
                created_at_ms: now,
            },
            partition,
            offset: i as i64,
        })
        .collect()
}

/// The SQL limit: plan batches of 1,000 and commit each with one fenced transaction.
async fn raw_bulk(
    store: &Arc<dyn LedgerStore>,
    args: &AxsBenchArgs,
    now: i64,
) -> anyhow::Result<f64> {
    const PARTITION: i32 = -1;
    let fence = bench_fence(store, "raw").await?;
    let events = positioned(workload(args, "raw", args.raw_changes, 7), PARTITION, now);
    let started = Instant::now();
    for (i, chunk) in events.chunks(1_000).enumerate() {
        let (mut snapshot, expired) = store.snapshot(PARTITION, chunk, now).await?;
        let plan = engine::plan(&mut snapshot, chunk.to_vec(), &expired, now);
        store
            .apply(&fence, PARTITION, &plan, ((i + 1) * 1_000) as i64)
            .await?;
    }
    let rate = args.raw_changes as f64 / started.elapsed().as_secs_f64();
    println!(
        "  raw bulk SQL: {} changes in {:.1} s",
        args.raw_changes,
        started.elapsed().as_secs_f64()
    );
    Ok(rate)
}

/// The naive baseline: the same statements, one change per transaction.
async fn naive(store: &Arc<dyn LedgerStore>, args: &AxsBenchArgs, now: i64) -> anyhow::Result<f64> {
    const PARTITION: i32 = -2;
    let fence = bench_fence(store, "naive").await?;
    let events = positioned(
        workload(args, "naive", args.naive_changes, 11),
        PARTITION,
        now,
    );
    let started = Instant::now();
    for (i, event) in events.iter().enumerate() {
        let batch = std::slice::from_ref(event);
        let (mut snapshot, expired) = store.snapshot(PARTITION, batch, now).await?;
        let plan = engine::plan(&mut snapshot, batch.to_vec(), &expired, now);
        store.apply(&fence, PARTITION, &plan, i as i64 + 1).await?;
    }
    let rate = args.naive_changes as f64 / started.elapsed().as_secs_f64();
    println!(
        "  naive: {} changes in {:.1} s",
        args.naive_changes,
        started.elapsed().as_secs_f64()
    );
    Ok(rate)
}

struct Pipeline {
    applied_rate: f64,
    applied: u64,
    rejected: u64,
    /// Microseconds per submit call.
    submit: Histogram<u64>,
    /// Milliseconds from INIT to applied, per change.
    submit_to_applied: Histogram<u64>,
}

async fn pipeline(
    args: &AxsBenchArgs,
    addr: SocketAddr,
    store: &Arc<dyn LedgerStore>,
    partitions: i32,
) -> anyhow::Result<Pipeline> {
    let prefix = format!("e2e{}", std::process::id());
    let requests = workload(args, &prefix, args.changes, 3);
    let batches: Vec<Vec<pb::BalanceChange>> = requests
        .chunks(args.batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|r| pb::BalanceChange {
                    idempotency_key: r.key.clone(),
                    account: r.account.clone(),
                    asset: r.asset.clone(),
                    amount: r.amount.to_string(),
                    kind: pb::ChangeKind::Immediate as i32,
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    let batches = Arc::new(Mutex::new(batches.into_iter().enumerate()));
    let submit = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let per_client_rate = args.rate as f64 / args.clients as f64;
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let mut client = LedgerClient::connect(format!("http://{addr}")).await?;
        let (batches, submit, sent) =
            (Arc::clone(&batches), Arc::clone(&submit), Arc::clone(&sent));
        let batch_size = args.batch as f64;
        tasks.push(tokio::spawn(async move {
            let client_started = Instant::now();
            let mut done = 0.0;
            loop {
                let Some((_, changes)) = batches.lock().next() else {
                    break;
                };
                if per_client_rate > 0.0 {
                    let due = Duration::from_secs_f64(done * batch_size / per_client_rate);
                    if let Some(wait) = due.checked_sub(client_started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let count = changes.len() as u64;
                let call = Instant::now();
                let mut attempt = 0;
                loop {
                    let request = pb::BatchSubmitBalanceChangesRequest {
                        changes: changes.clone(),
                    };
                    match client.batch_submit_balance_changes(request).await {
                        Ok(_) => break,
                        Err(status) if attempt < 100 => {
                            attempt += 1;
                            tracing::warn!(%status, "submit failed; retrying the same batch");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(status) => return Err(anyhow::anyhow!("submit failed: {status}")),
                    }
                }
                let _ = submit.lock().record(call.elapsed().as_micros() as u64);
                sent.fetch_add(count, Ordering::Relaxed);
                done += 1.0;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    // Progress while waiting for every change to be decided.
    let mut cursors = vec![-1i64; usize::try_from(partitions).unwrap_or(1)];
    let mut to_applied = Histogram::<u64>::new(3)?;
    let (mut applied, mut rejected) = (0u64, 0u64);
    let mut last_print = Instant::now();
    let deadline_idle = Duration::from_secs(60);
    let mut last_progress = Instant::now();
    while applied + rejected < args.changes {
        let mut progressed = false;
        for (partition, cursor) in cursors.iter_mut().enumerate() {
            let rows = store
                .decided_since(partition as i32, *cursor, 5_000)
                .await?;
            for row in rows {
                if let Some((_, offset)) = row.position {
                    *cursor = offset;
                }
                if !row.request.key.starts_with(&prefix) {
                    continue;
                }
                progressed = true;
                match row.status {
                    axs::model::ChangeStatus::Applied => applied += 1,
                    _ => rejected += 1,
                }
                if let Some(at) = row.applied_at_ms {
                    let _ = to_applied.record((at - row.created_at_ms).max(0) as u64);
                }
            }
        }
        if progressed {
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > deadline_idle {
                bail!(
                    "no change applied for {deadline_idle:?}: {} of {} decided",
                    applied + rejected,
                    args.changes
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "  ... {:.0} s: submitted {}, decided {} of {}",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                applied + rejected,
                args.changes
            );
        }
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    let submit = submit.lock().clone();
    Ok(Pipeline {
        applied_rate: args.changes as f64 / elapsed.as_secs_f64(),
        applied,
        rejected,
        submit,
        submit_to_applied: to_applied,
    })
}
