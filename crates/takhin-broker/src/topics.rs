//! The topic registry: which topics exist, their ids, partition logs and config
//! overrides, persisted as one small JSON file per topic under `topics/`, with
//! partition logs under `logs/<topic>-<partition>/`.
//!
//! A topic's JSON file is the source of truth: it is written (atomically) before
//! its logs are opened, and removed before its logs are deleted, so a crash in
//! between leaves either a topic whose missing logs are created empty on start, or
//! orphan log directories that start-up removes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use takhin_log::{LogConfig, LogError, PartitionLog};
use uuid::Uuid;

use crate::topic_config::{self, ConfigError};

/// Kafka's limit on topic name length.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Most partitions one topic may have; a bound on files opened per request.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("invalid topic name `{0}`: {1}")]
    InvalidName(String, &'static str),
    #[error("topic `{0}` already exists")]
    AlreadyExists(String),
    #[error("unknown topic `{0}`")]
    Unknown(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("replication factor {0} is not possible on a single node; use 1 or -1")]
    InvalidReplicationFactor(i16),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("topic metadata io: {0}")]
    Io(#[from] std::io::Error),
}

impl TopicError {
    /// The Kafka error code clients understand for this error.
    pub fn code(&self) -> i16 {
        let error = match self {
            TopicError::InvalidName(..) => ResponseError::InvalidTopicException,
            TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
            TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition,
            TopicError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            TopicError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            TopicError::Config(_) => ResponseError::InvalidConfig,
            TopicError::Log(_) | TopicError::Io(_) => ResponseError::KafkaStorageError,
        };
        error.code()
    }
}

/// Checks a topic name by Kafka's rules: 1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| Err(TopicError::InvalidName(name.to_owned(), reason));
    if name.is_empty() {
        return bad("empty");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are reserved");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    id: Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

/// One topic: its id and partitions. Cheap to clone through `Arc`.
pub struct Topic {
    pub name: String,
    pub id: Uuid,
    state: RwLock<TopicState>,
}

struct TopicState {
    partitions: Vec<Arc<PartitionLog>>,
    overrides: BTreeMap<String, String>,
    config: LogConfig,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<Arc<PartitionLog>> {
        let index = usize::try_from(index).ok()?;
        self.state.read().partitions.get(index).cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<PartitionLog>> {
        self.state.read().partitions.clone()
    }

    pub fn partition_count(&self) -> i32 {
        self.state.read().partitions.len() as i32
    }

    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.state.read().overrides.clone()
    }

    pub fn config(&self) -> LogConfig {
        self.state.read().config.clone()
    }
}

/// All topics of this broker.
pub struct TopicRegistry {
    data_dir: PathBuf,
    defaults: LogConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises creates, deletes and alters so files and map agree.
    admin: Mutex<()>,
}

fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("topics")
}

fn logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    logs_dir(data_dir).join(format!("{topic}-{partition}"))
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl TopicRegistry {
    /// Loads every topic under `data_dir`, recovering each partition log, and
    /// removes log directories that belong to no topic.
    pub fn open(data_dir: &Path, defaults: LogConfig) -> Result<Self, TopicError> {
        fs::create_dir_all(meta_dir(data_dir))?;
        fs::create_dir_all(logs_dir(data_dir))?;
        let registry = TopicRegistry {
            data_dir: data_dir.to_owned(),
            defaults,
            topics: RwLock::new(HashMap::new()),
            admin: Mutex::new(()),
        };
        let mut topics = HashMap::new();
        for entry in fs::read_dir(meta_dir(data_dir))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let meta: TopicMeta = match serde_json::from_slice(&fs::read(&path)?) {
                Ok(meta) => meta,
                Err(error) => {
                    // A topic file we cannot read is kept for an operator to
                    // inspect; its logs are kept too (see the orphan check below).
                    tracing::error!(path = %path.display(), %error, "skipping unreadable topic metadata");
                    continue;
                }
            };
            let topic = registry.open_topic(meta)?;
            topics.insert(topic.name.clone(), Arc::new(topic));
        }
        registry.remove_orphan_logs(&topics)?;
        tracing::info!(topics = topics.len(), "topics loaded");
        *registry.topics.write() = topics;
        Ok(registry)
    }

    fn open_topic(&self, meta: TopicMeta) -> Result<Topic, TopicError> {
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&meta.partitions) {
            return Err(TopicError::InvalidPartitions(format!(
                "topic `{}` metadata claims {} partitions",
                meta.name, meta.partitions
            )));
        }
        let config = topic_config::effective(&self.defaults, &meta.configs)?;
        let mut partitions = Vec::with_capacity(meta.partitions as usize);
        for index in 0..meta.partitions {
            let dir = partition_dir(&self.data_dir, &meta.name, index);
            partitions.push(Arc::new(PartitionLog::open(&dir, config.clone())?));
        }
        Ok(Topic {
            name: meta.name,
            id: meta.id,
            state: RwLock::new(TopicState {
                partitions,
                overrides: meta.configs,
                config,
            }),
        })
    }

    fn remove_orphan_logs(&self, topics: &HashMap<String, Arc<Topic>>) -> Result<(), TopicError> {
        let unreadable_meta: Vec<String> = fs::read_dir(meta_dir(&self.data_dir))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_owned)
            })
            .filter(|name| !topics.contains_key(name))
            .collect();
        for entry in fs::read_dir(logs_dir(&self.data_dir))? {
            let entry = entry?;
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            if dir_name.ends_with(".deleted") {
                tracing::info!(dir = %entry.path().display(), "removing log of a deleted topic");
                fs::remove_dir_all(entry.path())?;
                continue;
            }
            let Some((topic, partition)) = dir_name.rsplit_once('-') else {
                continue;
            };
            let Ok(partition) = partition.parse::<i32>() else {
                continue;
            };
            let owned = topics
                .get(topic)
                .is_some_and(|t| partition < t.partition_count());
            if !owned && !unreadable_meta.iter().any(|name| name == topic) {
                tracing::warn!(dir = %entry.path().display(), "removing orphan partition log");
                fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    fn persist(&self, topic: &Topic) -> Result<(), TopicError> {
        let state = topic.state.read();
        let meta = TopicMeta {
            name: topic.name.clone(),
            id: topic.id,
            partitions: state.partitions.len() as i32,
            configs: state.overrides.clone(),
        };
        drop(state);
        let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        write_atomically(
            &meta_dir(&self.data_dir).join(format!("{}.json", topic.name)),
            &json,
        )?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().values().find(|t| t.id == id).cloned()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<PartitionLog>> {
        self.get(topic)?.partition(index)
    }

    /// All topics, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.topics.read().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// Checks a create without doing it, returning the partition count to use.
    pub fn validate_create(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
        default_partitions: i32,
    ) -> Result<i32, TopicError> {
        validate_topic_name(name)?;
        if self.topics.read().contains_key(name) {
            return Err(TopicError::AlreadyExists(name.to_owned()));
        }
        let partitions = if num_partitions == -1 {
            default_partitions
        } else {
            num_partitions
        };
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(TopicError::InvalidPartitions(format!(
                "number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, got {num_partitions}"
            )));
        }
        if replication_factor != -1 && replication_factor != 1 {
            return Err(TopicError::InvalidReplicationFactor(replication_factor));
        }
        topic_config::effective(&self.defaults, configs)?;
        Ok(partitions)
    }

    /// Creates a topic; returns it, or the error for the client.
    pub fn create(
        &self,
        name: &str,
        num_partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        default_partitions: i32,
    ) -> Result<Arc<Topic>, TopicError> {
        let _admin = self.admin.lock();
        let partitions = self.validate_create(
            name,
            num_partitions,
            replication_factor,
            &configs,
            default_partitions,
        )?;
        let meta = TopicMeta {
            name: name.to_owned(),
            id: Uuid::new_v4(),
            partitions,
            configs,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        write_atomically(
            &meta_dir(&self.data_dir).join(format!("{name}.json")),
            &json,
        )?;
        let topic = Arc::new(self.open_topic(meta)?);
        self.topics.write().insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "topic created");
        metrics::counter!("takhin_topics_created_total").increment(1);
        Ok(topic)
    }

    /// Deletes a topic and its logs.
    pub fn delete(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        let _admin = self.admin.lock();
        let topic = self
            .topics
            .write()
            .remove(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        let meta_path = meta_dir(&self.data_dir).join(format!("{name}.json"));
        fs::remove_file(&meta_path)?;
        fs::File::open(meta_dir(&self.data_dir))?.sync_all()?;
        for index in 0..topic.partition_count() {
            let dir = partition_dir(&self.data_dir, name, index);
            // Move the directory out of the way first, so a topic re-created
            // under the same name can never reopen old segments, even if an
            // in-flight append to the old log recreates files meanwhile.
            let doomed = logs_dir(&self.data_dir)
                .join(format!("{name}-{index}.{}.deleted", topic.id.simple()));
            if let Err(error) = fs::rename(&dir, &doomed) {
                tracing::warn!(dir = %dir.display(), %error, "could not move partition log aside");
                continue;
            }
            if let Err(error) = fs::remove_dir_all(&doomed) {
                // Start-up removes it; the topic is gone either way.
                tracing::warn!(dir = %doomed.display(), %error, "could not remove partition log");
            }
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(topic)
    }

    /// Grows a topic to `count` partitions.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _admin = self.admin.lock();
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(TopicError::InvalidPartitions(format!(
                "topic `{name}` has {current} partitions; the new count {count} must be larger"
            )));
        }
        if count > MAX_PARTITIONS_PER_TOPIC {
            return Err(TopicError::InvalidPartitions(format!(
                "at most {MAX_PARTITIONS_PER_TOPIC} partitions per topic"
            )));
        }
        if validate_only {
            return Ok(());
        }
        let config = topic.config();
        let mut added = Vec::new();
        for index in current..count {
            let dir = partition_dir(&self.data_dir, name, index);
            added.push(Arc::new(PartitionLog::open(&dir, config.clone())?));
        }
        topic.state.write().partitions.extend(added);
        self.persist(&topic)?;
        tracing::info!(topic = name, from = current, to = count, "partitions added");
        Ok(())
    }

    /// Replaces the overrides of a topic (already validated by `effective`).
    pub fn set_overrides(
        &self,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _admin = self.admin.lock();
        let topic = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        let config = topic_config::effective(&self.defaults, &overrides)?;
        if validate_only {
            return Ok(());
        }
        {
            let mut state = topic.state.write();
            state.overrides = overrides;
            state.config = config.clone();
            for partition in &state.partitions {
                partition.set_config(config.clone());
            }
        }
        self.persist(&topic)?;
        Ok(())
    }

    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    /// Flushes and closes every partition, writing clean-shutdown markers.
    pub fn close(&self) {
        for topic in self.all() {
            for partition in topic.partitions() {
                if let Err(error) = partition.close() {
                    tracing::error!(topic = %topic.name, %error, "closing partition log");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for good in ["a", "orders", "orders.v1", "my_topic-2", &"x".repeat(249)] {
            validate_topic_name(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/name",
            "ümlaut",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_survive_reopen_and_orphans_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let registry = TopicRegistry::open(dir.path(), LogConfig::default()).unwrap();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_owned(), "1000".to_owned());
        let created = registry.create("t1", 3, 1, configs, 1).unwrap();
        registry.create("t2", -1, -1, BTreeMap::new(), 2).unwrap();
        assert!(matches!(
            registry.create("t1", 1, 1, BTreeMap::new(), 1),
            Err(TopicError::AlreadyExists(_))
        ));
        assert!(matches!(
            registry.create("t3", 1, 3, BTreeMap::new(), 1),
            Err(TopicError::InvalidReplicationFactor(3))
        ));
        registry.create_partitions("t2", 4, false).unwrap();
        registry.close();
        fs::create_dir_all(dir.path().join("logs/ghost-0")).unwrap();
        drop(registry);

        let registry = TopicRegistry::open(dir.path(), LogConfig::default()).unwrap();
        let t1 = registry.get("t1").unwrap();
        assert_eq!(t1.id, created.id);
        assert_eq!(t1.partition_count(), 3);
        assert_eq!(t1.config().retention_ms, Some(1000));
        assert_eq!(registry.get("t2").unwrap().partition_count(), 4);
        assert!(!dir.path().join("logs/ghost-0").exists());

        registry.delete("t1").unwrap();
        assert!(registry.get("t1").is_none());
        assert!(!dir.path().join("logs/t1-0").exists());
    }
}
