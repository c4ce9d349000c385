//! Broker settings: where data lives, where it listens, the defaults new topics
//! get, and the intervals of the background work. The binary fills this from
//! flags, TAKHIN_* variables and a YAML file; the library only consumes it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use takhin_log::FlushPolicy;

/// How the log is flushed to disk, in the form users write it:
/// `every-batch`, `interval:MS`, `bytes:N` or `never` (leave it to the OS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FlushSetting(pub FlushPolicyKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicyKind {
    EveryBatch,
    IntervalMs(u64),
    Bytes(u64),
    Never,
}

impl FlushSetting {
    pub fn is_every_batch(&self) -> bool {
        self.0 == FlushPolicyKind::EveryBatch
    }

    pub fn policy(&self) -> FlushPolicy {
        match self.0 {
            FlushPolicyKind::EveryBatch => FlushPolicy::EveryBatch,
            FlushPolicyKind::IntervalMs(ms) => FlushPolicy::Interval(Duration::from_millis(ms)),
            FlushPolicyKind::Bytes(n) => FlushPolicy::Bytes(n),
            FlushPolicyKind::Never => FlushPolicy::Never,
        }
    }
}

impl std::str::FromStr for FlushSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let kind = match text.split_once(':') {
            None if text == "every-batch" => FlushPolicyKind::EveryBatch,
            None if text == "never" => FlushPolicyKind::Never,
            Some(("interval", ms)) => FlushPolicyKind::IntervalMs(
                ms.parse()
                    .map_err(|_| format!("flush interval `{ms}` is not a number of milliseconds"))?,
            ),
            Some(("bytes", n)) => FlushPolicyKind::Bytes(
                n.parse()
                    .map_err(|_| format!("flush byte count `{n}` is not a number"))?,
            ),
            _ => {
                return Err(format!(
                    "unknown flush policy `{text}`: expected every-batch, interval:MS, bytes:N or never"
                ))
            }
        };
        Ok(FlushSetting(kind))
    }
}

impl TryFrom<String> for FlushSetting {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<FlushSetting> for String {
    fn from(setting: FlushSetting) -> String {
        setting.to_string()
    }
}

impl std::fmt::Display for FlushSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            FlushPolicyKind::EveryBatch => write!(f, "every-batch"),
            FlushPolicyKind::IntervalMs(ms) => write!(f, "interval:{ms}"),
            FlushPolicyKind::Bytes(n) => write!(f, "bytes:{n}"),
            FlushPolicyKind::Never => write!(f, "never"),
        }
    }
}

/// Everything the broker needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub kafka_listen: SocketAddr,
    /// Host and port given to clients in Metadata; defaults to `kafka_listen`.
    pub advertised_kafka: Option<String>,
    /// Prometheus `/metrics` listener; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    pub node_id: i32,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub max_request_bytes: usize,
    pub flush: FlushSetting,
    pub log_segment_bytes: u64,
    pub log_retention_ms: Option<i64>,
    pub log_retention_check_interval_ms: u64,
    pub log_cleaner_interval_ms: u64,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// Most connections served at once; further ones are closed on accept.
    pub max_connections: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("takhin-data"),
            kafka_listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_kafka: None,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9644))),
            node_id: 0,
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: takhin_wire::DEFAULT_MAX_REQUEST_BYTES,
            flush: FlushSetting(FlushPolicyKind::IntervalMs(1000)),
            log_segment_bytes: 1024 * 1024 * 1024,
            log_retention_ms: Some(7 * 24 * 3600 * 1000),
            log_retention_check_interval_ms: 60_000,
            log_cleaner_interval_ms: 15_000,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            max_connections: 10_000,
        }
    }
}

impl BrokerConfig {
    /// The `host:port` clients are told to connect to.
    pub fn advertised(&self) -> (String, i32) {
        if let Some(text) = &self.advertised_kafka {
            if let Some((host, port)) = text.rsplit_once(':') {
                if let Ok(port) = port.parse::<u16>() {
                    return (host.to_owned(), i32::from(port));
                }
            }
        }
        (
            self.kafka_listen.ip().to_string(),
            i32::from(self.kafka_listen.port()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_settings_parse_and_print() {
        for text in ["every-batch", "never", "interval:250", "bytes:1048576"] {
            let setting: FlushSetting = text.parse().unwrap();
            assert_eq!(setting.to_string(), text);
        }
        for bad in ["", "always", "interval:", "interval:abc", "bytes:-1"] {
            assert!(bad.parse::<FlushSetting>().is_err(), "{bad}");
        }
    }
}
