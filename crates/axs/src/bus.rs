//! The ledger topic over the Kafka protocol (librdkafka): the built-in Takhin broker by
//! default, any Kafka-protocol cluster by configuration. The producer is idempotent and
//! picks the partition itself (shard mod partitions). Consumers do not join a consumer
//! group: each owned partition is assigned directly and started at the offset committed in
//! SQL with the last batch, so the offset and the balances can never disagree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::engine::Positioned;
use crate::model::{partition_of, LedgerEvent};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {topic} has no partitions after {waited:?} (is the broker at {bootstrap} up?)")]
    NoPartitions {
        topic: String,
        bootstrap: String,
        waited: Duration,
    },
    #[error("encoding event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Where the ledger topic is.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Kafka bootstrap servers, comma-separated.
    pub bootstrap: String,
    pub topic: String,
    /// Partitions to create the topic with if it does not exist.
    pub partitions: i32,
}

fn client_config(config: &BusConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap)
        .set("client.id", "takhin-axs")
        .set("log_level", "4");
    client
}

/// Creates the topic when missing and returns its partition count, waiting up to `wait` for
/// the broker to answer.
pub async fn ensure_topic(config: &BusConfig, wait: Duration) -> Result<i32, BusError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let started = Instant::now();
    loop {
        let topic = NewTopic::new(
            &config.topic,
            config.partitions.max(1),
            TopicReplication::Fixed(1),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let created = admin.create_topics([&topic], &options).await;
        let ready = match created {
            Ok(results) => results.iter().all(|result| match result {
                Ok(_) => true,
                Err((_, code)) => *code == RDKafkaErrorCode::TopicAlreadyExists,
            }),
            Err(_) => false,
        };
        if ready {
            if let Some(count) = partition_count(config).await? {
                return Ok(count);
            }
        }
        if started.elapsed() >= wait {
            return Err(BusError::NoPartitions {
                topic: config.topic.clone(),
                bootstrap: config.bootstrap.clone(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn partition_count(config: &BusConfig) -> Result<Option<i32>, BusError> {
    let config = config.clone();
    let counted = tokio::task::spawn_blocking(move || -> Result<Option<i32>, KafkaError> {
        let consumer: BaseConsumer = client_config(&config).create()?;
        let metadata = consumer.fetch_metadata(Some(&config.topic), Duration::from_secs(5))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0))
    })
    .await
    .unwrap_or(Ok(None));
    Ok(counted?)
}

/// Publishes ledger events.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    partitions: i32,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl Publisher {
    /// An idempotent producer for `config.topic`, which has `partitions` partitions.
    pub fn new(config: &BusConfig, partitions: i32) -> Result<Self, BusError> {
        let producer: FutureProducer = client_config(config)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            // A message not delivered in 30 s fails back to its row, which stays INIT; the
            // relay sends it again later.
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            partitions,
        })
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Sends each event to its shard's partition; returns (key, partition, offset) for those
    /// delivered and the number that failed.
    pub async fn publish(&self, events: &[LedgerEvent]) -> (Vec<(String, i32, i64)>, usize) {
        let sends = events.iter().map(|event| async move {
            let payload = serde_json::to_vec(event).ok()?;
            let partition = partition_of(event.shard, self.partitions);
            let record = FutureRecord::to(&self.topic)
                .key(event.request.account.as_bytes())
                .payload(&payload)
                .partition(partition);
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(delivery) => Some((
                    event.request.key.clone(),
                    delivery.partition,
                    delivery.offset,
                )),
                Err((error, _)) => {
                    tracing::warn!(key = %event.request.key, %error, "publish failed");
                    None
                }
            }
        });
        let results = join_all(sends).await;
        let failed = results.iter().filter(|r| r.is_none()).count();
        (results.into_iter().flatten().collect(), failed)
    }

    /// Waits for buffered messages to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Reads one partition of the ledger topic in batches.
pub struct PartitionReader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    partition: i32,
}

impl PartitionReader {
    /// Starts at `offset`, or at the beginning when none was committed yet.
    pub fn open(config: &BusConfig, partition: i32, offset: Option<i64>) -> Result<Self, BusError> {
        let consumer: StreamConsumer = client_config(config)
            .set("group.id", "takhin-axs-consumer")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(
            &config.topic,
            partition,
            offset.map_or(Offset::Beginning, Offset::Offset),
        )?;
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: config.topic.clone(),
            partition,
        })
    }

    /// Waits up to `idle` for a first event, then gathers more until `max_count` events,
    /// `max_bytes` of payload or `linger` has passed. Malformed messages are skipped (and
    /// counted) so that one bad record cannot stop a partition; their offsets still advance.
    /// Returns the events and the offset after the last message read.
    pub async fn next_batch(
        &self,
        max_count: usize,
        max_bytes: usize,
        linger: Duration,
        idle: Duration,
    ) -> Result<(Vec<Positioned>, Option<i64>), BusError> {
        let mut batch = Gathered::default();
        let first = match tokio::time::timeout(idle, self.consumer.recv()).await {
            Err(_) => return Ok((batch.events, batch.next)),
            Ok(message) => message?,
        };
        let deadline = tokio::time::Instant::now() + linger;
        batch.take(&first);
        drop(first);
        while batch.events.len() < max_count && batch.bytes < max_bytes {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(message) => batch.take(&message?),
            }
        }
        Ok((batch.events, batch.next))
    }

    /// The partition's high watermark (the offset the next produced record will get).
    pub async fn high_watermark(&self) -> Option<i64> {
        let (topic, partition) = (self.topic.clone(), self.partition);
        let consumer = Arc::clone(&self.consumer);
        // fetch_watermarks blocks (one round trip); it runs once per lag report.
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(2))
                .ok()
                .map(|(_, high)| high)
        })
        .await
        .ok()
        .flatten()
    }
}

#[derive(Default)]
struct Gathered {
    events: Vec<Positioned>,
    bytes: usize,
    next: Option<i64>,
}

impl Gathered {
    fn take(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        self.next = Some(message.offset() + 1);
        let payload = message.payload().unwrap_or_default();
        self.bytes += payload.len();
        match serde_json::from_slice::<LedgerEvent>(payload) {
            Ok(event) => self.events.push(Positioned {
                event,
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err(error) => {
                metrics::counter!(crate::metrics::MALFORMED_EVENTS).increment(1);
                tracing::error!(
                    partition = message.partition(),
                    offset = message.offset(),
                    %error,
                    "skipping a malformed ledger event"
                );
            }
        }
    }
}
