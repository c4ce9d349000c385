//! `takhin bench produce` and `takhin bench consume`: load generators built on
//! librdkafka (the client most users run), so the figures are what a real client
//! sees against any Kafka-protocol broker, ours or another. They print MB/s,
//! records/s and, for produce, send-to-acknowledgement latency percentiles.
//! `takhin bench axs` (module [`axs_bench`]) drives the AXS ledger end to end.

pub mod axs_bench;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Broker to connect to.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to use; created with --partitions if missing.
    #[arg(long, default_value = "takhin-bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Print the broker's peak resident set size, sampled from /proc/PID/status.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

#[derive(Args, Clone, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Records to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Size of each record value in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "1")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Records per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// librdkafka linger.ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// librdkafka batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    pub batch_bytes: u64,
}

#[derive(Args, Clone, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Records to read (from the beginning of every partition).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Give up after this many seconds without a record.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout_s: u64,
}

/// Samples the broker's VmRSS in the background while a bench runs.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Option<RssSampler> {
        let pid = pid?;
        let peak_kib = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let peak_kib = peak_kib.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak_kib.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Some(RssSampler {
            peak_kib,
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak_kib.load(Ordering::Relaxed)
    }
}

fn ensure_topic(common: &CommonArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &common.bootstrap)
        .create()
        .context("creating admin client")?;
    let topic = NewTopic::new(&common.topic, common.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.create_topics([&topic], &options))
        .context("create topic request")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

struct LatencyContext {
    latencies_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                let micros = sent_at.elapsed().as_micros() as u64;
                let _ = self.latencies_us.lock().record(micros.max(1));
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn report(label: &str, records: u64, bytes: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{label}: {records} records, {:.1} MB/s, {:.0} records/s, {:.2} s",
        bytes as f64 / seconds / 1e6,
        records as f64 / seconds,
        seconds
    );
}

/// Runs the produce benchmark and prints its figures.
pub fn produce(args: &ProduceArgs) -> anyhow::Result<()> {
    ensure_topic(&args.common)?;
    let context = LatencyContext {
        latencies_us: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    };
    let producer: BaseProducer<LatencyContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.common.bootstrap)
        .set("acks", &args.acks)
        .set("compression.type", &args.compression)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_bytes.to_string())
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(context)
        .context("creating producer")?;
    let payload: Vec<u8> = (0..args.record_bytes).map(|i| (i % 251) as u8).collect();
    let rss = RssSampler::start(args.common.broker_pid);
    let started = Instant::now();
    let partitions = args.common.partitions.max(1);
    for index in 0..args.records {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(index as f64 / args.rate as f64);
            while Instant::now() < due {
                producer.poll(Duration::ZERO);
                let wait = due.saturating_duration_since(Instant::now());
                std::thread::sleep(wait.min(Duration::from_micros(200)));
            }
        }
        let key = index.to_be_bytes();
        let mut record = BaseRecord::with_opaque_to(&args.common.topic, Box::new(Instant::now()))
            .key(&key[..])
            .payload(&payload[..])
            .partition((index % partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(1));
                }
                Err((error, _)) => bail!("produce failed: {error}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing producer")?;
    let elapsed = started.elapsed();
    let context = producer.context();
    let delivered = context.delivered.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    report(
        &format!(
            "produce acks={} compression={} record_bytes={} rate={}",
            args.acks,
            args.compression,
            args.record_bytes,
            if args.rate == 0 {
                "max".to_owned()
            } else {
                args.rate.to_string()
            }
        ),
        delivered,
        delivered * args.record_bytes as u64,
        elapsed,
    );
    let latencies = context.latencies_us.lock();
    println!(
        "latency send->ack: p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        latencies.value_at_quantile(0.50) as f64 / 1000.0,
        latencies.value_at_quantile(0.99) as f64 / 1000.0,
        latencies.value_at_quantile(0.999) as f64 / 1000.0,
        latencies.max() as f64 / 1000.0,
    );
    if let Some(rss) = rss {
        println!("broker peak RSS: {:.1} MiB", rss.finish() as f64 / 1024.0);
    }
    if failed > 0 {
        bail!("{failed} records were not acknowledged");
    }
    Ok(())
}

/// Runs the consume benchmark and prints its figures.
pub fn consume(args: &ConsumeArgs) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.common.bootstrap)
        .set("group.id", "takhin-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "1048576")
        .create()
        .context("creating consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..args.common.partitions.max(1) {
        assignment.add_partition_offset(&args.common.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let rss = RssSampler::start(args.common.broker_pid);
    let started = Instant::now();
    let mut last_record = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < args.records {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records += 1;
                bytes += message.payload_len() as u64;
                last_record = Instant::now();
            }
            Some(Err(error)) => bail!("consume failed: {error}"),
            None if last_record.elapsed() > Duration::from_secs(args.idle_timeout_s) => {
                println!("no record for {} s; stopping", args.idle_timeout_s);
                break;
            }
            None => {}
        }
    }
    report("consume", records, bytes, started.elapsed());
    if let Some(rss) = rss {
        println!("broker peak RSS: {:.1} MiB", rss.finish() as f64 / 1024.0);
    }
    Ok(())
}
