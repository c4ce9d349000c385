//! Produce and InitProducerId: validate, append to the partition log (which owns
//! CRC checks, offset assignment and idempotent-producer sequence checks), and
//! wake long-polling fetches.

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

use takhin_log::{LogError, PartitionLog};

use crate::metrics as m;
use crate::{now_ms, str_bytes, Broker};

/// The Kafka error code for a log error on the produce path.
pub(crate) fn log_error_code(error: &LogError) -> ResponseError {
    match error {
        LogError::CorruptRecord(_) => ResponseError::CorruptMessage,
        LogError::InvalidRecord(_) => ResponseError::InvalidRecord,
        LogError::RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        LogError::Io(_) => ResponseError::KafkaStorageError,
    }
}

/// A produce whose records are appended but whose response may still wait for
/// an fsync (`--flush every-batch`). The connection keeps reading requests while
/// it waits, so concurrent producers share fsyncs (group commit); responses are
/// still written in request order.
pub(crate) struct PendingProduce {
    response: Option<ProduceResponse>,
    /// Logs to make durable through an end offset, with where the result goes:
    /// (topic index, partition index) in `response`.
    syncs: Vec<(Arc<PartitionLog>, i64, usize, usize)>,
}

impl PendingProduce {
    /// Waits for durability where the policy asks for it, then yields the
    /// response (`None` for acks=0).
    pub(crate) async fn finish(self) -> Option<ProduceResponse> {
        let PendingProduce {
            mut response,
            syncs,
        } = self;
        for (log, end_offset, topic_idx, partition_idx) in syncs {
            // Usually an fsync for an earlier request already covered these
            // records; skip the trip to the blocking pool then.
            if log.durable_end_offset() >= end_offset {
                continue;
            }
            let synced = tokio::task::spawn_blocking(move || log.sync_through(end_offset))
                .await
                .unwrap_or_else(|join| Err(LogError::Io(std::io::Error::other(join.to_string()))));
            if let Err(error) = synced {
                tracing::error!(%error, "fsync after append failed");
                if let Some(partition) = response.as_mut().and_then(|r| {
                    r.responses
                        .get_mut(topic_idx)
                        .and_then(|t| t.partition_responses.get_mut(partition_idx))
                }) {
                    partition.error_code = ResponseError::KafkaStorageError.code();
                    partition.error_message = Some(str_bytes(&error.to_string()));
                }
            }
        }
        response
    }
}

impl Broker {
    /// Validates and appends every partition's records now, in request order,
    /// and returns what is left: waiting for fsyncs and answering.
    pub(crate) fn produce(&self, request: ProduceRequest, _version: i16) -> PendingProduce {
        let acks = request.acks;
        let refuse_all = if request.transactional_id.is_some() {
            // Transactions are not implemented yet; say so rather than write
            // batches whose commit markers would never come.
            Some(ResponseError::TransactionalIdAuthorizationFailed)
        } else if !matches!(acks, -1..=1) {
            Some(ResponseError::InvalidRequiredAcks)
        } else {
            None
        };
        let sync_on_ack = acks != 0 && self.config.flush.is_every_batch();
        let now = now_ms();
        let mut any_appended = false;
        let mut syncs = Vec::new();
        let mut responses = Vec::with_capacity(request.topic_data.len());
        for (topic_idx, topic_data) in request.topic_data.into_iter().enumerate() {
            let name = topic_data.name.0.to_string();
            let topic = match refuse_all {
                Some(_) => None,
                None => self.topic_for_produce(&name),
            };
            let mut partition_responses = Vec::with_capacity(topic_data.partition_data.len());
            for (partition_idx, partition_data) in topic_data.partition_data.into_iter().enumerate()
            {
                let mut response = PartitionProduceResponse::default()
                    .with_index(partition_data.index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                let log = topic
                    .as_ref()
                    .and_then(|t| t.partition(partition_data.index));
                let outcome = match (refuse_all, &log, partition_data.records) {
                    (Some(error), _, _) => Err((error, None)),
                    (None, None, _) => Err((ResponseError::UnknownTopicOrPartition, None)),
                    (None, Some(_), None) => Err((
                        ResponseError::InvalidRecord,
                        Some("produce request without records".to_owned()),
                    )),
                    // Appends go to the page cache; the fsync, when the policy
                    // wants one per batch, happens in `finish`.
                    (None, Some(log), Some(records)) => log.append(&records, now).map_err(|error| {
                        tracing::debug!(topic = %name, partition = partition_data.index, %error, "produce refused");
                        (log_error_code(&error), Some(error.to_string()))
                    }),
                };
                match outcome {
                    Ok(info) => {
                        any_appended |= !info.duplicate;
                        metrics::counter!(m::BYTES_IN).increment(info.bytes);
                        metrics::counter!(m::RECORDS_IN).increment(info.record_count);
                        response = response
                            .with_base_offset(info.base_offset)
                            .with_log_append_time_ms(info.log_append_time_ms)
                            .with_log_start_offset(info.log_start_offset);
                        if let (true, Some(log)) = (sync_on_ack, log) {
                            // A duplicate's records were appended earlier and
                            // may not be durable yet either.
                            syncs.push((log, info.last_offset + 1, topic_idx, partition_idx));
                        }
                    }
                    Err((error, message)) => {
                        response = response
                            .with_error_code(error.code())
                            .with_error_message(message.map(|m| str_bytes(&m)));
                    }
                }
                partition_responses.push(response);
            }
            responses.push(
                TopicProduceResponse::default()
                    .with_name(topic_data.name)
                    .with_partition_responses(partition_responses),
            );
        }
        if any_appended {
            self.appended.notify_waiters();
        }
        PendingProduce {
            response: (acks != 0).then(|| ProduceResponse::default().with_responses(responses)),
            syncs,
        }
    }

    /// The topic to produce to, created with defaults when auto-creation is on.
    fn topic_for_produce(&self, name: &str) -> Option<std::sync::Arc<crate::topics::Topic>> {
        if let Some(topic) = self.topics.get(name) {
            return Some(topic);
        }
        if !self.config.auto_create_topics {
            return None;
        }
        self.auto_create(name)
    }

    /// Creates `name` with broker defaults; a concurrent creator winning the race
    /// is fine.
    pub(crate) fn auto_create(&self, name: &str) -> Option<std::sync::Arc<crate::topics::Topic>> {
        match self.topics.create(
            name,
            -1,
            -1,
            Default::default(),
            self.config.default_partitions,
        ) {
            Ok(topic) => Some(topic),
            Err(crate::topics::TopicError::AlreadyExists(_)) => self.topics.get(name),
            Err(error) => {
                tracing::debug!(topic = name, %error, "auto-create refused");
                None
            }
        }
    }

    pub(crate) fn init_producer_id(
        &self,
        request: InitProducerIdRequest,
        _version: i16,
    ) -> InitProducerIdResponse {
        let response = InitProducerIdResponse::default()
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        if request.transactional_id.is_some() {
            return response
                .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
        }
        // A producer re-initialising its own id (KIP-360) gets the next epoch,
        // which fences its older incarnation; anyone else gets a fresh id.
        let known = request.producer_id.0 >= 0
            && request.producer_epoch >= 0
            && request.producer_epoch < i16::MAX - 1;
        if known {
            return response
                .with_producer_id(request.producer_id)
                .with_producer_epoch(request.producer_epoch + 1);
        }
        match self.producer_ids.next_id() {
            Ok(id) => response.with_producer_id(id.into()).with_producer_epoch(0),
            Err(error) => {
                tracing::error!(%error, "allocating producer id");
                response.with_error_code(ResponseError::KafkaStorageError.code())
            }
        }
    }
}
