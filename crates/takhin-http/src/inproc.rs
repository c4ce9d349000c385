//! The surfaces reach topics through the broker's public in-process API: they build the
//! same Kafka request messages a client sends and hand them to [`Broker::handle`]. No
//! socket and no codec sit in between, and every rule of the produce and fetch paths
//! (validation, the fsync policy, waking long-polling fetches) applies unchanged. See
//! docs/adr/0004-http-surfaces-in-process.md.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, ProduceRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use takhin_broker::{Broker, ClientInfo};

/// Produce v9 and Fetch v12: the newest versions that still address topics by name.
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("{api} to {topic}/{partition} failed with Kafka error code {code}")]
    Code {
        api: &'static str,
        topic: String,
        partition: i32,
        code: i16,
    },
    #[error("encoding records: {0}")]
    Encode(String),
    #[error("decoding records: {0}")]
    Decode(String),
    #[error("the broker sent no {0} response")]
    NoResponse(&'static str),
}

/// One record to append: key and value as bytes (`None` = null, a tombstone value).
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: Option<i64>,
}

/// A record read back, with its position.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// What one fetch returned.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub records: Vec<Incoming>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// A handle on the broker for the HTTP surfaces.
#[derive(Clone)]
pub struct InProcess {
    broker: Arc<Broker>,
    client: ClientInfo,
}

impl InProcess {
    pub fn new(broker: Arc<Broker>, client_id: &str) -> Self {
        Self {
            broker,
            client: ClientInfo {
                client_id: client_id.to_owned(),
                host: "in-process".to_owned(),
            },
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Creates `topic` unless it exists; `configs` are topic overrides.
    pub fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        if self.broker.topics().get(topic).is_some() {
            return Ok(());
        }
        match self
            .broker
            .topics()
            .create(topic, partitions, -1, configs, 1)
        {
            Ok(_) => Ok(()),
            // Created meanwhile by someone else: as good.
            Err(_) if self.broker.topics().get(topic).is_some() => Ok(()),
            Err(error) => Err(KafkaError::Topic {
                topic: topic.to_owned(),
                message: error.to_string(),
            }),
        }
    }

    /// Appends `records` to one partition as one batch with acks=all; returns the base
    /// offset.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &[Outgoing],
    ) -> Result<i64, KafkaError> {
        let now = now_ms();
        let encoded: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, r)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: r.timestamp_ms.unwrap_or(now),
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                    .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            encoded.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|error| KafkaError::Encode(error.to_string()))?;
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(buf.freeze()))])]);
        let response = self
            .broker
            .handle(RequestKind::Produce(request), PRODUCE_VERSION, &self.client)
            .await;
        let Some(ResponseKind::Produce(response)) = response else {
            return Err(KafkaError::NoResponse("produce"));
        };
        let answer = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or(KafkaError::NoResponse("produce partition"))?;
        if answer.error_code != 0 {
            return Err(KafkaError::Code {
                api: "produce",
                topic: topic.to_owned(),
                partition,
                code: answer.error_code,
            });
        }
        Ok(answer.base_offset)
    }

    /// Reads from `offset` (up to about `max_bytes`), waiting up to `max_wait_ms` for data.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetched, KafkaError> {
        let request = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(max_bytes)])]);
        let response = self
            .broker
            .handle(RequestKind::Fetch(request), FETCH_VERSION, &self.client)
            .await;
        let Some(ResponseKind::Fetch(response)) = response else {
            return Err(KafkaError::NoResponse("fetch"));
        };
        let data = response
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or(KafkaError::NoResponse("fetch partition"))?;
        if data.error_code != 0 {
            return Err(KafkaError::Code {
                api: "fetch",
                topic: topic.to_owned(),
                partition,
                code: data.error_code,
            });
        }
        let mut fetched = Fetched {
            records: Vec::new(),
            high_watermark: data.high_watermark,
            log_start_offset: data.log_start_offset,
        };
        if let Some(bytes) = &data.records {
            let mut bytes = bytes.clone();
            while !bytes.is_empty() {
                let set = match RecordBatchDecoder::decode(&mut bytes) {
                    Ok(set) => set,
                    // A batch cut at max_bytes: the next fetch starts there.
                    Err(_) if !fetched.records.is_empty() => break,
                    Err(error) => return Err(KafkaError::Decode(error.to_string())),
                };
                for record in set.records {
                    if record.control || record.offset < offset {
                        continue;
                    }
                    fetched.records.push(Incoming {
                        offset: record.offset,
                        timestamp_ms: record.timestamp,
                        key: record.key,
                        value: record.value,
                        headers: record
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    });
                }
            }
        }
        Ok(fetched)
    }

    /// Every record of a partition from `from` up to its current end, in order.
    pub async fn read_to_end(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<(Vec<Incoming>, i64), KafkaError> {
        let mut records = Vec::new();
        let mut next = from;
        loop {
            let fetched = self.fetch(topic, partition, next, 4 << 20, 0).await?;
            if let Some(last) = fetched.records.last() {
                next = last.offset + 1;
            }
            let done = fetched.records.is_empty() || next >= fetched.high_watermark;
            records.extend(fetched.records);
            if done {
                return Ok((records, next.max(fetched.log_start_offset)));
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
