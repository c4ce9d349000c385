//! Topic-level configs: the keys we honour, how each is validated and applied to
//! the partition log's [`LogConfig`], and how each is described back to clients.
//! Unknown keys are refused rather than silently stored, so a client never
//! believes a setting took effect when it did not.

use std::collections::BTreeMap;

use takhin_log::{CleanupPolicy, LogConfig, TimestampType};

/// Kafka's DescribeConfigs `config_type` values.
#[derive(Clone, Copy, Debug)]
pub enum ConfigType {
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// One config key we serve: its name, type and documentation.
pub struct ConfigKey {
    pub name: &'static str,
    pub config_type: ConfigType,
    pub doc: &'static str,
}

pub const TOPIC_CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: "cleanup.policy",
        config_type: ConfigType::List,
        doc: "delete, compact, or both",
    },
    ConfigKey {
        name: "delete.retention.ms",
        config_type: ConfigType::Long,
        doc: "how long tombstones survive compaction",
    },
    ConfigKey {
        name: "max.message.bytes",
        config_type: ConfigType::Int,
        doc: "largest record batch accepted",
    },
    ConfigKey {
        name: "message.timestamp.type",
        config_type: ConfigType::String,
        doc: "CreateTime or LogAppendTime",
    },
    ConfigKey {
        name: "min.compaction.lag.ms",
        config_type: ConfigType::Long,
        doc: "records younger than this are not compacted",
    },
    ConfigKey {
        name: "retention.bytes",
        config_type: ConfigType::Long,
        doc: "largest log size before old segments are deleted; -1 unlimited",
    },
    ConfigKey {
        name: "retention.ms",
        config_type: ConfigType::Long,
        doc: "age after which old segments are deleted; -1 forever",
    },
    ConfigKey {
        name: "segment.bytes",
        config_type: ConfigType::Int,
        doc: "size at which a segment is rolled",
    },
    ConfigKey {
        name: "segment.ms",
        config_type: ConfigType::Long,
        doc: "age at which the active segment is rolled",
    },
];

/// The smallest segment we allow: small enough for tests to roll often, large
/// enough that a segment always holds a few batches.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown topic config `{0}`")]
    UnknownKey(String),
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_long(key: &str, value: &str, min: i64) -> Result<i64, ConfigError> {
    let number: i64 = value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not an integer"))?;
    if number < min {
        return Err(invalid(key, value, &format!("must be at least {min}")));
    }
    Ok(number)
}

/// Applies one key to `config`, validating the value.
pub fn apply(config: &mut LogConfig, key: &str, value: &str) -> Result<(), ConfigError> {
    match key {
        "cleanup.policy" => {
            let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
            parts.sort_unstable();
            config.cleanup_policy = match parts.as_slice() {
                ["delete"] => CleanupPolicy::Delete,
                ["compact"] => CleanupPolicy::Compact,
                ["compact", "delete"] => CleanupPolicy::CompactDelete,
                _ => {
                    return Err(invalid(
                        key,
                        value,
                        "expected delete, compact or compact,delete",
                    ))
                }
            };
        }
        "delete.retention.ms" => config.delete_retention_ms = parse_long(key, value, 0)? as u64,
        "max.message.bytes" => {
            let bytes = parse_long(key, value, 0)?;
            config.max_message_bytes =
                u32::try_from(bytes).map_err(|_| invalid(key, value, "too large"))?;
        }
        "message.timestamp.type" => {
            config.message_timestamp_type = match value {
                "CreateTime" => TimestampType::CreateTime,
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => return Err(invalid(key, value, "expected CreateTime or LogAppendTime")),
            }
        }
        "min.compaction.lag.ms" => config.min_compaction_lag_ms = parse_long(key, value, 0)? as u64,
        "retention.bytes" => {
            let bytes = parse_long(key, value, -1)?;
            config.retention_bytes = (bytes >= 0).then_some(bytes as u64);
        }
        "retention.ms" => {
            let ms = parse_long(key, value, -1)?;
            config.retention_ms = (ms >= 0).then_some(ms);
        }
        "segment.bytes" => {
            let bytes = parse_long(key, value, MIN_SEGMENT_BYTES as i64)?;
            if bytes > i64::from(i32::MAX) {
                return Err(invalid(key, value, "must fit in a 32-bit int"));
            }
            config.segment_bytes = bytes as u64;
        }
        "segment.ms" => config.segment_ms = Some(parse_long(key, value, 1)? as u64),
        _ => return Err(ConfigError::UnknownKey(key.to_owned())),
    }
    Ok(())
}

/// The effective log config of a topic: broker defaults with its overrides.
pub fn effective(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, ConfigError> {
    let mut config = defaults.clone();
    for (key, value) in overrides {
        apply(&mut config, key, value)?;
    }
    Ok(config)
}

/// The value of `key` in `config`, as Kafka prints it.
pub fn describe(config: &LogConfig, key: &str) -> Option<String> {
    let value = match key {
        "cleanup.policy" => match config.cleanup_policy {
            CleanupPolicy::Delete => "delete".to_owned(),
            CleanupPolicy::Compact => "compact".to_owned(),
            CleanupPolicy::CompactDelete => "compact,delete".to_owned(),
        },
        "delete.retention.ms" => config.delete_retention_ms.to_string(),
        "max.message.bytes" => config.max_message_bytes.to_string(),
        "message.timestamp.type" => match config.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime".to_owned(),
            TimestampType::LogAppendTime => "LogAppendTime".to_owned(),
        },
        "min.compaction.lag.ms" => config.min_compaction_lag_ms.to_string(),
        "retention.bytes" => config
            .retention_bytes
            .map_or("-1".to_owned(), |bytes| bytes.to_string()),
        "retention.ms" => config
            .retention_ms
            .map_or("-1".to_owned(), |ms| ms.to_string()),
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.ms" => config
            .segment_ms
            .map_or(i64::MAX.to_string(), |ms| ms.to_string()),
        _ => return None,
    };
    Some(value)
}

/// One served config of a topic as clients see it.
pub struct DescribedConfig {
    pub key: &'static ConfigKey,
    pub value: String,
    /// Set on the topic rather than inherited from the broker defaults.
    pub is_override: bool,
}

/// Every served config of a topic with its effective value.
pub fn describe_all(
    config: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<DescribedConfig> {
    TOPIC_CONFIG_KEYS
        .iter()
        .filter_map(|key| {
            Some(DescribedConfig {
                key,
                value: describe(config, key.name)?,
                is_override: overrides.contains_key(key.name),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, value: &str, expect_ok: bool) {
        let mut config = LogConfig::default();
        let result = apply(&mut config, key, value);
        assert_eq!(result.is_ok(), expect_ok, "{key}={value}: {result:?}");
        if expect_ok {
            // What we describe must parse back to the same effect.
            let described = describe(&config, key).unwrap();
            let mut again = LogConfig::default();
            apply(&mut again, key, &described).unwrap();
            assert_eq!(describe(&again, key), Some(described));
        }
    }

    #[test]
    fn values_are_validated() {
        check("retention.ms", "60000", true);
        check("retention.ms", "-1", true);
        check("retention.ms", "-2", false);
        check("retention.ms", "soon", false);
        check("retention.bytes", "1048576", true);
        check("segment.bytes", "16384", true);
        check("segment.bytes", "10", false);
        check("segment.bytes", "9999999999", false);
        check("segment.ms", "0", false);
        check("cleanup.policy", "compact", true);
        check("cleanup.policy", "delete,compact", true);
        check("cleanup.policy", "shred", false);
        check("max.message.bytes", "2000000", true);
        check("message.timestamp.type", "LogAppendTime", true);
        check("message.timestamp.type", "Tuesday", false);
        check("min.compaction.lag.ms", "0", true);
        check("delete.retention.ms", "100", true);
        check("no.such.key", "1", false);
    }

    #[test]
    fn every_key_is_described() {
        let config = LogConfig::default();
        for key in TOPIC_CONFIG_KEYS {
            assert!(describe(&config, key.name).is_some(), "{}", key.name);
        }
    }
}
