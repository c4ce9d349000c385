//! Fetch and ListOffsets. A fetch reads whole batches as stored (never
//! decompressed), honours max_bytes, partition max_bytes and KIP-74 (the first
//! non-empty partition always yields at least one batch), and long-polls up to
//! max_wait_ms until min_bytes are available, woken by appends.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use kafka_protocol::ResponseError;
use takhin_log::LogError;

use crate::metrics as m;
use crate::produce::log_error_code;
use crate::Broker;

/// Longest a fetch may wait, whatever the client asks, so a connection is never
/// parked for long on a stuck request.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);
/// Most bytes one fetch response carries, whatever the client asks (Kafka's
/// `fetch.max.bytes` default), so a request cannot make the broker buffer a
/// whole segment; also used when a client sends max_bytes <= 0.
const FETCH_MAX_BYTES: usize = 55 * 1024 * 1024;

const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

impl Broker {
    pub(crate) async fn fetch(&self, request: FetchRequest, _version: i16) -> FetchResponse {
        // Fetch sessions (KIP-227) are not kept: answering session id 0 tells the
        // client to keep sending full fetches, which the KIP allows. A client that
        // believes it holds a session is told it does not.
        if request.session_id != 0 {
            return FetchResponse::default()
                .with_error_code(ResponseError::FetchSessionIdNotFound.code());
        }
        if request.session_epoch > 0 {
            return FetchResponse::default()
                .with_error_code(ResponseError::InvalidFetchSessionEpoch.code());
        }
        let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
        let deadline = tokio::time::Instant::now() + max_wait;
        let min_bytes = request.min_bytes.max(0) as usize;
        loop {
            // Register interest before reading, so an append between the read
            // and the wait still wakes us.
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (response, total_bytes, had_error) = self.read_fetch(&request);
            // min_bytes 0 answers at once, as in Kafka.
            if total_bytes >= min_bytes || had_error || tokio::time::Instant::now() >= deadline {
                metrics::counter!(m::BYTES_OUT).increment(total_bytes as u64);
                return response;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Deadline passed: one last read so data that arrived is returned.
                let (response, total_bytes, _) = self.read_fetch(&request);
                metrics::counter!(m::BYTES_OUT).increment(total_bytes as u64);
                return response;
            }
        }
    }

    fn read_fetch(&self, request: &FetchRequest) -> (FetchResponse, usize, bool) {
        let mut remaining = if request.max_bytes > 0 {
            (request.max_bytes as usize).min(FETCH_MAX_BYTES)
        } else {
            FETCH_MAX_BYTES
        };
        let mut total_bytes = 0usize;
        let mut had_error = false;
        let mut topics = Vec::with_capacity(request.topics.len());
        for fetch_topic in &request.topics {
            let topic = self.topics.get(fetch_topic.topic.0.as_str());
            let mut partitions = Vec::with_capacity(fetch_topic.partitions.len());
            for fetch_partition in &fetch_topic.partitions {
                let mut data = PartitionData::default()
                    .with_partition_index(fetch_partition.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_aborted_transactions(Some(Vec::new()))
                    .with_preferred_read_replica((-1).into())
                    .with_records(Some(Bytes::new()));
                let Some(log) = topic
                    .as_ref()
                    .and_then(|t| t.partition(fetch_partition.partition))
                else {
                    had_error = true;
                    partitions
                        .push(data.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                    continue;
                };
                let partition_max = if fetch_partition.partition_max_bytes > 0 {
                    fetch_partition.partition_max_bytes as usize
                } else {
                    remaining
                };
                let limit = partition_max.min(remaining);
                // KIP-74: the first partition with data returns at least one
                // batch even when it is larger than the limits.
                let min_one = total_bytes == 0;
                let read = if limit == 0 && !min_one {
                    Ok(None)
                } else {
                    log.read(fetch_partition.fetch_offset, limit, min_one)
                        .map(Some)
                };
                match read {
                    Ok(Some(result)) => {
                        total_bytes += result.records.len();
                        remaining = remaining.saturating_sub(result.records.len());
                        data = data
                            .with_high_watermark(result.high_watermark)
                            .with_last_stable_offset(result.high_watermark)
                            .with_log_start_offset(result.log_start_offset)
                            .with_records(Some(result.records));
                    }
                    Ok(None) => {
                        let end = log.log_end_offset();
                        data = data
                            .with_high_watermark(end)
                            .with_last_stable_offset(end)
                            .with_log_start_offset(log.log_start_offset());
                    }
                    Err(error) => {
                        had_error = true;
                        if !matches!(error, LogError::OffsetOutOfRange { .. }) {
                            tracing::error!(topic = %fetch_topic.topic.0, partition = fetch_partition.partition, %error, "fetch failed");
                        }
                        let end = log.log_end_offset();
                        data = data
                            .with_error_code(log_error_code(&error).code())
                            .with_high_watermark(end)
                            .with_last_stable_offset(end)
                            .with_log_start_offset(log.log_start_offset());
                    }
                }
                partitions.push(data);
            }
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(fetch_topic.topic.clone())
                    .with_topic_id(fetch_topic.topic_id)
                    .with_partitions(partitions),
            );
        }
        (
            FetchResponse::default().with_responses(topics),
            total_bytes,
            had_error,
        )
    }

    pub(crate) fn list_offsets(
        &self,
        request: ListOffsetsRequest,
        _version: i16,
    ) -> ListOffsetsResponse {
        let topics = request
            .topics
            .into_iter()
            .map(|list_topic| {
                let topic = self.topics.get(list_topic.name.0.as_str());
                let partitions = list_topic
                    .partitions
                    .into_iter()
                    .map(|partition| {
                        let response = ListOffsetsPartitionResponse::default()
                            .with_partition_index(partition.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1)
                            .with_leader_epoch(-1);
                        let Some(log) = topic
                            .as_ref()
                            .and_then(|t| t.partition(partition.partition_index))
                        else {
                            return response
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                        };
                        let found = match partition.timestamp {
                            LATEST_TIMESTAMP => Ok(Some((log.log_end_offset(), -1))),
                            EARLIEST_TIMESTAMP => Ok(Some((log.log_start_offset(), -1))),
                            MAX_TIMESTAMP => Ok(log.max_timestamp().map(|(ts, off)| (off, ts))),
                            ts if ts >= 0 => log.offset_for_timestamp(ts),
                            _ => {
                                return response
                                    .with_error_code(ResponseError::InvalidRequest.code())
                            }
                        };
                        match found {
                            Ok(Some((offset, timestamp))) => {
                                response.with_offset(offset).with_timestamp(timestamp)
                            }
                            Ok(None) => response,
                            Err(error) => {
                                tracing::error!(%error, "list offsets failed");
                                response.with_error_code(log_error_code(&error).code())
                            }
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(list_topic.name)
                    .with_partitions(partitions)
            })
            .collect();
        ListOffsetsResponse::default().with_topics(topics)
    }
}
