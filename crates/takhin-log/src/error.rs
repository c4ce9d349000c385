//! The crate's error type, one variant per Kafka error code the broker has to map to.

/// Errors returned by [`crate::PartitionLog`] operations.
#[derive(thiserror::Error, Debug)]
pub enum LogError {
    /// Bad CRC, bad magic, length mismatch (Kafka CORRUPT_MESSAGE).
    #[error("corrupt record: {0}")]
    CorruptRecord(String),
    /// Structurally valid but unacceptable batch (Kafka INVALID_RECORD).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A batch is larger than `max_message_bytes` (Kafka MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds the maximum of {max}")]
    RecordTooLarge { size: usize, max: u32 },
    /// The requested offset is outside `[log_start, log_end]`.
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// Idempotent producer sent a sequence the log did not expect.
    #[error("out of order sequence for producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    /// Idempotent producer used an epoch older than the one the log knows (fenced).
    #[error("invalid producer epoch for producer {producer_id}: current {current}, got {got}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
    /// Underlying file system error.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}
