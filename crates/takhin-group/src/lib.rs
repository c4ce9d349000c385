//! Takhin's consumer-group coordinator: the classic group protocol
//! (JoinGroup/SyncGroup/Heartbeat/LeaveGroup), group listing/description/deletion,
//! and durable committed offsets. The broker is a single node, so it is the
//! coordinator for every group.
//!
//! Module map: [`group`] owns one group's membership state machine,
//! [`store`] owns the append-only `offsets.log`, and [`coordinator`] maps
//! kafka-protocol request structs onto both.

mod coordinator;
mod group;
mod store;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use coordinator::GroupCoordinator;

/// Tunables of the coordinator; defaults mirror Apache Kafka's broker defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms`: joins asking for less get INVALID_SESSION_TIMEOUT.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: joins asking for more get INVALID_SESSION_TIMEOUT.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first join into an Empty group
    /// waits for more members before the first generation is formed.
    pub initial_rebalance_delay_ms: u64,
    /// `offsets.retention.minutes` in ms: once a group has no members, its
    /// committed offsets are dropped this long after the later of the commit and
    /// the moment the group became empty (KIP-211). `None` keeps them forever.
    pub offsets_retention_ms: Option<i64>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3000,
            offsets_retention_ms: Some(7 * 24 * 60 * 60 * 1000),
        }
    }
}

/// Failures of the coordinator that are not expressible as a Kafka error code.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// Reading, writing or syncing the offset log (or its directory) failed.
    #[error("offset log I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Wall-clock time in ms since the epoch (commit timestamps, retention).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
