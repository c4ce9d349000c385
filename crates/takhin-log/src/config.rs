//! Per-partition log configuration (the Kafka topic configs the log itself enforces).

use std::time::Duration;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// `cleanup.policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    Delete,
    Compact,
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether retention (time/size based segment deletion) applies.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    /// Whether key-based compaction applies.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }
}

/// `message.timestamp.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// When appended data is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync after every append call.
    EveryBatch,
    /// fsync on the first append after this much time passed since the last fsync.
    Interval(Duration),
    /// fsync once this many bytes were appended since the last fsync.
    Bytes(u64),
    /// Leave it to the OS page cache (Kafka's default); replication is the durability story.
    Never,
}

/// Configuration of one partition log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Roll the active segment when an append would make it larger than this.
    pub segment_bytes: u64,
    /// Roll the active segment when it is older than this (measured from its first append).
    pub segment_ms: Option<u64>,
    /// Delete sealed segments whose largest timestamp is older than this; None keeps forever.
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger than this; None is unlimited.
    pub retention_bytes: Option<u64>,
    pub cleanup_policy: CleanupPolicy,
    /// Largest accepted batch, log overhead included.
    pub max_message_bytes: u32,
    pub min_compaction_lag_ms: u64,
    /// How long tombstones survive once they are eligible for compaction.
    pub delete_retention_ms: u64,
    pub message_timestamp_type: TimestampType,
    /// Bytes between two sparse index entries.
    pub index_interval_bytes: u32,
    pub flush: FlushPolicy,
    /// Idempotent-producer state is dropped this long after the producer's last append
    /// (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            retention_ms: Some((7 * DAY_MS) as i64),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            max_message_bytes: 1_048_588,
            min_compaction_lag_ms: 0,
            delete_retention_ms: DAY_MS,
            message_timestamp_type: TimestampType::CreateTime,
            index_interval_bytes: 4096,
            flush: FlushPolicy::Never,
            producer_id_expiration_ms: DAY_MS,
        }
    }
}
