//! Takhin's partition log: a directory of segments holding Kafka v2 record batches exactly as
//! produced, with sparse offset and time indexes, crash recovery, idempotent-producer state,
//! time/size retention and key-based compaction.
//!
//! On disk: `{base:020}.log` (batches), `.index` (u32 relative offset, u32 position) and
//! `.timeindex` (i64 timestamp, u32 relative offset), plus `recovery_point` and, between a clean
//! close and the next open, `clean_shutdown`.

mod batch;
mod compaction;
mod config;
mod error;
mod log;
mod producer;
mod segment;

pub use batch::HEADER_SIZE as BATCH_HEADER_SIZE;
pub use config::{CleanupPolicy, FlushPolicy, LogConfig, TimestampType};
pub use error::LogError;
pub use log::{AppendInfo, CompactionReport, PartitionLog, ReadResult, RetentionReport};

#[cfg(test)]
mod tests {
    /// The broker shares the log as `Arc<PartitionLog>` across threads.
    #[test]
    fn partition_log_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::PartitionLog>();
    }
}
