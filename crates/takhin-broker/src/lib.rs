//! The Takhin broker: a single-node, Kafka-compatible server. This crate owns the
//! topic registry, the request handlers (one module per API family), the group
//! coordinator wiring, background work (retention, compaction, flushing, metrics)
//! and the tokio listeners. Storage is `takhin-log`, the wire codec
//! `takhin-wire`, group state `takhin-group`; nothing here parses bytes by hand
//! except the 4-byte frame prefix.

mod admin;
mod background;
pub mod config;
mod fetch;
mod metadata;
pub mod metrics;
mod produce;
mod producer_ids;
mod server;
pub mod topic_config;
pub mod topics;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use takhin_group::{GroupConfig, GroupCoordinator};
use takhin_log::LogConfig;
use tokio::sync::{watch, Notify};

pub use config::BrokerConfig;
pub use server::{run, RunningBroker};

use producer_ids::ProducerIdAllocator;
use topics::TopicRegistry;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("loading topics: {0}")]
    Topics(#[from] topics::TopicError),
    #[error("opening group coordinator: {0}")]
    Groups(String),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics exporter: {0}")]
    Metrics(String),
}

/// Who sent a request, for group membership and logs.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub client_id: String,
    pub host: String,
}

/// Shared state of a running broker; handlers take `&Broker`.
pub struct Broker {
    config: BrokerConfig,
    cluster_id: String,
    topics: TopicRegistry,
    groups: Arc<GroupCoordinator>,
    producer_ids: ProducerIdAllocator,
    /// Woken on every successful append, so long-polling fetches re-read.
    appended: Notify,
    shutdown: watch::Sender<bool>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

pub(crate) fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn load_cluster_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("cluster-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    topics::write_atomically(&path, id.as_bytes())?;
    Ok(id)
}

impl Broker {
    /// Opens the data directory: topics (recovering every log), committed group
    /// offsets, the producer-id block and the cluster id.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, StartError> {
        let data_dir = config.data_dir.clone();
        let io_error = |source| StartError::DataDir {
            path: data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&data_dir).map_err(io_error)?;
        let cluster_id = load_cluster_id(&data_dir).map_err(io_error)?;
        let defaults = LogConfig {
            segment_bytes: config.log_segment_bytes,
            retention_ms: config.log_retention_ms,
            // Interval flushes are the background flusher's job (background.rs),
            // so a produce never waits for an fsync it did not ask for.
            // every-batch fsyncs are the produce handler's (group commit, see
            // produce.rs), so the log itself never fsyncs on append.
            flush: match config.flush.policy() {
                takhin_log::FlushPolicy::Interval(_) | takhin_log::FlushPolicy::EveryBatch => {
                    takhin_log::FlushPolicy::Never
                }
                policy => policy,
            },
            ..LogConfig::default()
        };
        let topics = TopicRegistry::open(&data_dir, defaults)?;
        let groups = GroupCoordinator::open(
            &data_dir.join("groups"),
            GroupConfig {
                min_session_timeout_ms: config.group_min_session_timeout_ms,
                max_session_timeout_ms: config.group_max_session_timeout_ms,
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
                ..GroupConfig::default()
            },
        )
        .map_err(|error| StartError::Groups(error.to_string()))?;
        let producer_ids = ProducerIdAllocator::open(&data_dir).map_err(io_error)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new(Broker {
            config,
            cluster_id,
            topics,
            groups,
            producer_ids,
            appended: Notify::new(),
            shutdown,
        }))
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn topics(&self) -> &TopicRegistry {
        &self.topics
    }

    /// Asks every task of this broker to stop.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Flushes and closes logs and the group store; call after the tasks stopped.
    pub fn close(&self) {
        self.topics.close();
        if let Err(error) = self.groups.close() {
            tracing::error!(%error, "closing group coordinator");
        }
    }

    /// Handles one decoded request. `None` means no response is sent (acks=0).
    pub async fn handle(
        &self,
        request: RequestKind,
        version: i16,
        client: &ClientInfo,
    ) -> Option<ResponseKind> {
        let groups = &self.groups;
        let response = match request {
            RequestKind::ApiVersions(_) => {
                ResponseKind::ApiVersions(takhin_wire::api_versions_response(0))
            }
            RequestKind::Produce(request) => {
                return self
                    .produce(request, version)
                    .finish()
                    .await
                    .map(ResponseKind::Produce)
            }
            RequestKind::Fetch(request) => ResponseKind::Fetch(self.fetch(request, version).await),
            RequestKind::ListOffsets(request) => {
                ResponseKind::ListOffsets(self.list_offsets(request, version))
            }
            RequestKind::Metadata(request) => {
                ResponseKind::Metadata(self.metadata(request, version))
            }
            RequestKind::DescribeCluster(request) => {
                ResponseKind::DescribeCluster(self.describe_cluster(request, version))
            }
            RequestKind::FindCoordinator(request) => {
                ResponseKind::FindCoordinator(self.find_coordinator(request, version))
            }
            RequestKind::InitProducerId(request) => {
                ResponseKind::InitProducerId(self.init_producer_id(request, version))
            }
            RequestKind::CreateTopics(request) => {
                ResponseKind::CreateTopics(self.create_topics(request, version))
            }
            RequestKind::DeleteTopics(request) => {
                ResponseKind::DeleteTopics(self.delete_topics(request, version))
            }
            RequestKind::CreatePartitions(request) => {
                ResponseKind::CreatePartitions(self.create_partitions(request, version))
            }
            RequestKind::DescribeConfigs(request) => {
                ResponseKind::DescribeConfigs(self.describe_configs(request, version))
            }
            RequestKind::AlterConfigs(request) => {
                ResponseKind::AlterConfigs(self.alter_configs(request, version))
            }
            RequestKind::IncrementalAlterConfigs(request) => ResponseKind::IncrementalAlterConfigs(
                self.incremental_alter_configs(request, version),
            ),
            RequestKind::JoinGroup(request) => ResponseKind::JoinGroup(
                groups
                    .join_group_from(request, version, &client.client_id, &client.host)
                    .await,
            ),
            RequestKind::SyncGroup(request) => {
                ResponseKind::SyncGroup(groups.sync_group(request, version).await)
            }
            RequestKind::Heartbeat(request) => {
                ResponseKind::Heartbeat(groups.heartbeat(request, version))
            }
            RequestKind::LeaveGroup(request) => {
                ResponseKind::LeaveGroup(groups.leave_group(request, version))
            }
            RequestKind::OffsetCommit(request) => {
                // The commit fsyncs; keep it off the runtime threads.
                let groups = groups.clone();
                match tokio::task::spawn_blocking(move || groups.offset_commit(request, version))
                    .await
                {
                    Ok(response) => ResponseKind::OffsetCommit(response),
                    Err(error) => {
                        tracing::error!(%error, "offset commit task failed");
                        return None;
                    }
                }
            }
            RequestKind::OffsetFetch(request) => {
                ResponseKind::OffsetFetch(groups.offset_fetch(request, version))
            }
            RequestKind::ListGroups(request) => {
                ResponseKind::ListGroups(groups.list_groups(request, version))
            }
            RequestKind::DescribeGroups(request) => {
                ResponseKind::DescribeGroups(groups.describe_groups(request, version))
            }
            RequestKind::DeleteGroups(request) => {
                ResponseKind::DeleteGroups(groups.delete_groups(request, version))
            }
            other => {
                // The wire layer only decodes served APIs, so this is a bug in
                // the version table, not bad input.
                tracing::error!(request = ?std::mem::discriminant(&other), "served api without a handler");
                return None;
            }
        };
        Some(response)
    }
}

/// The first error code in a response, for the per-API request metric.
pub(crate) fn response_error_code(response: &ResponseKind) -> i16 {
    fn first(codes: impl IntoIterator<Item = i16>) -> i16 {
        codes.into_iter().find(|&code| code != 0).unwrap_or(0)
    }
    match response {
        ResponseKind::Produce(r) => first(
            r.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Fetch(r) => first(
            std::iter::once(r.error_code).chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            ),
        ),
        ResponseKind::ListOffsets(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Metadata(r) => first(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::CreateTopics(r) => first(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::DeleteTopics(r) => first(r.responses.iter().map(|t| t.error_code)),
        ResponseKind::CreatePartitions(r) => first(r.results.iter().map(|t| t.error_code)),
        ResponseKind::DescribeConfigs(r) => first(r.results.iter().map(|t| t.error_code)),
        ResponseKind::AlterConfigs(r) => first(r.responses.iter().map(|t| t.error_code)),
        ResponseKind::IncrementalAlterConfigs(r) => first(r.responses.iter().map(|t| t.error_code)),
        ResponseKind::InitProducerId(r) => r.error_code,
        ResponseKind::FindCoordinator(r) => {
            first(std::iter::once(r.error_code).chain(r.coordinators.iter().map(|c| c.error_code)))
        }
        ResponseKind::JoinGroup(r) => r.error_code,
        ResponseKind::SyncGroup(r) => r.error_code,
        ResponseKind::Heartbeat(r) => r.error_code,
        ResponseKind::LeaveGroup(r) => r.error_code,
        ResponseKind::OffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::OffsetFetch(r) => {
            first(std::iter::once(r.error_code).chain(r.groups.iter().map(|g| g.error_code)))
        }
        ResponseKind::ListGroups(r) => r.error_code,
        ResponseKind::DescribeGroups(r) => first(r.groups.iter().map(|g| g.error_code)),
        ResponseKind::DeleteGroups(r) => first(r.results.iter().map(|g| g.error_code)),
        ResponseKind::DescribeCluster(r) => r.error_code,
        ResponseKind::ApiVersions(r) => r.error_code,
        _ => 0,
    }
}
