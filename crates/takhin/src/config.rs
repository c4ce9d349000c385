//! Command-line flags and config loading. Precedence, lowest first: built-in
//! defaults, the YAML file (`--config` or TAKHIN_CONFIG), TAKHIN_* environment
//! variables (for example TAKHIN_KAFKA_LISTEN), then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::Serialize;
use takhin_broker::config::FlushSetting;
use takhin_broker::BrokerConfig;

#[derive(Args, Serialize, Default)]
pub struct BrokerArgs {
    /// YAML config file; keys are the long flag names with '_' for '-'.
    #[arg(long, env = "TAKHIN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where topics, logs and group offsets are stored.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Kafka protocol listener [default: 127.0.0.1:9092].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_listen: Option<SocketAddr>,
    /// HOST:PORT given to clients in metadata [default: the listen address].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_kafka: Option<String>,
    /// A separate Prometheus /metrics listener. The Admin API serves /metrics on its own
    /// listener; with `--admin-listen none` this defaults to 127.0.0.1:9644.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Flush policy: every-batch, interval:MS, bytes:N or never [default: interval:1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush: Option<FlushSetting>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_partitions: Option<i32>,
    /// Refuse to create topics on produce or metadata requests.
    #[arg(long)]
    #[serde(skip)]
    pub no_auto_create_topics: bool,
    /// Default segment size in bytes [default: 1 GiB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_segment_bytes: Option<u64>,
    /// Default retention in ms; -1 keeps forever [default: 7 days].
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip)]
    pub log_retention_ms: Option<i64>,
    /// How often retention runs [default: 60000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// How often compaction runs [default: 15000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_cleaner_interval_ms: Option<u64>,
    /// Delay before the first rebalance of a new group [default: 3000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Largest request frame in bytes [default: 104857600].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
    #[command(flatten)]
    #[serde(skip)]
    pub http: HttpArgs,
    /// Exit when standard input closes (for test harnesses).
    #[arg(long)]
    #[serde(skip)]
    pub exit_on_stdin_eof: bool,
}

/// A listener address, or `none` to turn the listener off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("none") || text.eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        text.parse()
            .map(|addr| Listen(Some(addr)))
            .map_err(|error| format!("{text:?} is neither HOST:PORT nor none: {error}"))
    }
}

/// The HTTP surfaces' listeners, shared by `takhin broker` and `takhin dev`.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Schema Registry (Confluent API) listener, or none.
    #[arg(
        long,
        env = "TAKHIN_SCHEMA_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub schema_registry_listen: Listen,
    /// Admin API listener (also serves /metrics), or none.
    #[arg(long, env = "TAKHIN_ADMIN_LISTEN", default_value = "127.0.0.1:9644")]
    pub admin_listen: Listen,
}

impl Default for HttpArgs {
    fn default() -> Self {
        Self {
            schema_registry_listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 8081)))),
            admin_listen: Listen(Some(SocketAddr::from(([127, 0, 0, 1], 9644)))),
        }
    }
}

impl HttpArgs {
    /// `metrics_listen` is the `--metrics-listen` flag: a separate /metrics listener,
    /// unless it is the Admin API's own address.
    pub fn config(&self, metrics_listen: Option<SocketAddr>) -> takhin_http::HttpConfig {
        takhin_http::HttpConfig {
            schema_registry_listen: self.schema_registry_listen.0,
            admin_listen: self.admin_listen.0,
            metrics_listen: metrics_listen.filter(|addr| Some(*addr) != self.admin_listen.0),
        }
    }
}

/// `takhin dev` takes every listener's flag, so two can run side by side (port 0 picks a
/// free port; the addresses are printed).
#[derive(Args)]
pub struct DevArgs {
    /// Data directory [default: the user's data directory + /takhin].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Kafka protocol listener [default: 127.0.0.1:9092].
    #[arg(long)]
    pub kafka_listen: Option<SocketAddr>,
    /// A separate /metrics listener (every service's metrics); by default the Admin API
    /// serves them on 127.0.0.1:9644.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub http: HttpArgs,
    /// WES UTXO gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub utxo_listen: SocketAddr,
    /// AXS ledger gRPC listener.
    #[arg(long, default_value = "127.0.0.1:50071")]
    pub axs_listen: SocketAddr,
    /// AXS ledger database: a PostgreSQL URL switches from the SQLite file under the data
    /// directory to PostgreSQL (also TAKHIN_AXS_DATABASE).
    #[arg(long)]
    pub axs_database: Option<String>,
    /// AXS shared balance cache redis://HOST:PORT/ [default: in-process] (also
    /// TAKHIN_AXS_REDIS_URL).
    #[arg(long)]
    pub axs_redis_url: Option<String>,
    /// Exit when standard input closes (for test harnesses).
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
}

/// The names of BrokerConfig's fields, so TAKHIN_* variables that are not
/// config (TAKHIN_LOG, TAKHIN_BIN in tests) are not mistaken for it.
fn config_keys() -> Vec<String> {
    match serde_json::to_value(BrokerConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

pub fn broker_config(args: &BrokerArgs) -> anyhow::Result<BrokerConfig> {
    let keys = config_keys();
    let mut figment = Figment::from(Serialized::defaults(BrokerConfig::default()));
    if let Some(path) = &args.config {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Yaml::file(path));
    }
    figment = figment
        .merge(Env::prefixed("TAKHIN_").filter(move |key| keys.iter().any(|k| k == key.as_str())))
        .merge(Serialized::defaults(args));
    let mut config: BrokerConfig = figment.extract().context("reading broker config")?;
    if args.no_auto_create_topics {
        config.auto_create_topics = false;
    }
    if let Some(ms) = args.log_retention_ms {
        config.log_retention_ms = (ms >= 0).then_some(ms);
    }
    Ok(config)
}

/// The root of `takhin dev`'s data: the broker's and the services' directories are in it.
pub fn dev_data_dir(args: &DevArgs) -> anyhow::Result<PathBuf> {
    match &args.data_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(dirs::data_dir()
            .context("no user data directory on this system; pass --data-dir")?
            .join("takhin")),
    }
}

pub fn dev_config(args: &DevArgs) -> anyhow::Result<BrokerConfig> {
    let data_dir = dev_data_dir(args)?;
    broker_config(&BrokerArgs {
        data_dir: Some(data_dir.join("broker")),
        kafka_listen: args.kafka_listen,
        metrics_listen: args.metrics_listen,
        ..BrokerArgs::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BrokerArgs,
    }

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("takhin-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("takhin.yaml");
        std::fs::write(
            &file,
            "kafka_listen: 127.0.0.1:19092\ndefault_partitions: 4\nflush: every-batch\n",
        )
        .unwrap();
        let wrapper = Wrapper::parse_from([
            "x",
            "--config",
            file.to_str().unwrap(),
            "--kafka-listen",
            "127.0.0.1:29092",
            "--log-retention-ms",
            "-1",
        ]);
        let config = broker_config(&wrapper.args).unwrap();
        assert_eq!(config.kafka_listen.port(), 29092);
        assert_eq!(config.default_partitions, 4);
        assert_eq!(config.flush.to_string(), "every-batch");
        assert_eq!(config.log_retention_ms, None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("takhin-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("takhin.yaml");
        std::fs::write(&file, "kafka_lisen: 127.0.0.1:1\n").unwrap();
        let wrapper = Wrapper::parse_from(["x", "--config", file.to_str().unwrap()]);
        assert!(broker_config(&wrapper.args).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
