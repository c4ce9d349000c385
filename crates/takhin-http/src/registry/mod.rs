//! A Confluent-compatible Schema Registry. State lives in the broker's compacted
//! `_schemas` topic and nowhere else: each write is one produced batch (acks=all), applied
//! to memory only after the broker has it; a start replays the topic. One writer task at a
//! time (a mutex) decides ids and versions, so two racing registrations of one schema get
//! one id.

pub mod avro;
pub mod json;
pub mod routes;
pub mod schema;
pub mod state;

use std::collections::BTreeMap;

use bytes::Bytes;
use parking_lot::RwLock;
use serde_json::Value;

use crate::error::ApiError;
use crate::inproc::{InProcess, Outgoing};
use schema::{Checked, Level, Mode, SchemaType};
use state::{Change, Reference, SchemaValue, State, StoredSchema};

/// The internal topic, as Confluent names it.
pub const TOPIC: &str = "_schemas";

/// Confluent's error codes.
pub mod codes {
    pub const SUBJECT_NOT_FOUND: u32 = 40401;
    pub const VERSION_NOT_FOUND: u32 = 40402;
    pub const SCHEMA_NOT_FOUND: u32 = 40403;
    pub const SUBJECT_SOFT_DELETED: u32 = 40404;
    pub const SUBJECT_NOT_SOFT_DELETED: u32 = 40405;
    pub const VERSION_SOFT_DELETED: u32 = 40406;
    pub const VERSION_NOT_SOFT_DELETED: u32 = 40407;
    pub const SUBJECT_COMPATIBILITY_NOT_CONFIGURED: u32 = 40408;
    pub const SUBJECT_MODE_NOT_CONFIGURED: u32 = 40409;
    /// What confluent-kafka's and Karapace's clients expect for an incompatible schema.
    pub const INCOMPATIBLE: u32 = 409;
    pub const INVALID_SCHEMA: u32 = 42201;
    pub const INVALID_VERSION: u32 = 42202;
    pub const INVALID_COMPATIBILITY: u32 = 42203;
    pub const INVALID_MODE: u32 = 42204;
    pub const NOT_PERMITTED: u32 = 42205;
    pub const STORE_ERROR: u32 = 50001;
}

/// A registration request, as `POST /subjects/{s}/versions` carries it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRequest {
    pub schema: String,
    #[serde(default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Vec<Reference>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub rule_set: Option<Value>,
    /// IMPORT mode only.
    #[serde(default)]
    pub id: Option<i32>,
    /// IMPORT mode only.
    #[serde(default)]
    pub version: Option<i32>,
}

/// A version of a subject, resolved for an answer.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub subject: String,
    pub version: i32,
    pub schema: StoredSchema,
}

pub struct Registry {
    kafka: InProcess,
    state: RwLock<State>,
    writer: tokio::sync::Mutex<()>,
}

fn store_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(codes::STORE_ERROR, format!("schema store: {error}"))
}

impl Registry {
    /// Creates `_schemas` if missing (compacted, one partition) and replays it.
    pub async fn open(kafka: InProcess) -> Result<Self, ApiError> {
        let configs = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
        kafka.ensure_topic(TOPIC, 1, configs).map_err(store_error)?;
        let registry = Self {
            kafka,
            state: RwLock::new(State::default()),
            writer: tokio::sync::Mutex::new(()),
        };
        registry.catch_up().await?;
        let state = registry.state.read();
        tracing::info!(
            schemas = state.schemas.len(),
            subjects = state.subjects.len(),
            next_id = state.next_id,
            "schema registry loaded from {TOPIC}"
        );
        drop(state);
        Ok(registry)
    }

    /// Applies every record past what was applied.
    async fn catch_up(&self) -> Result<(), ApiError> {
        let from = self.state.read().offset;
        let (records, next) = self
            .kafka
            .read_to_end(TOPIC, 0, from)
            .await
            .map_err(store_error)?;
        let mut state = self.state.write();
        for record in records {
            let Some(key) = record.key.as_deref() else {
                continue;
            };
            match Change::decode(key, record.value.as_deref()) {
                Ok(Some(change)) => state.apply(change),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(offset = record.offset, %error, "skipping a malformed {TOPIC} record");
                    metrics::counter!("takhin_schema_registry_malformed_records_total")
                        .increment(1);
                }
            }
        }
        state.offset = state.offset.max(next);
        Ok(())
    }

    /// Writes `changes` as one batch, then applies them (and anything written meanwhile).
    async fn write(&self, changes: Vec<Change>) -> Result<(), ApiError> {
        let records: Vec<Outgoing> = changes
            .iter()
            .map(|change| {
                let (key, value) = change.encode();
                Outgoing {
                    key: Some(Bytes::from(key)),
                    value: value.map(Bytes::from),
                    ..Outgoing::default()
                }
            })
            .collect();
        self.kafka
            .produce(TOPIC, 0, &records)
            .await
            .map_err(store_error)?;
        self.catch_up().await
    }

    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// The texts of `references`, resolved against live versions.
    fn reference_texts(&self, references: &[Reference]) -> Result<Vec<String>, ApiError> {
        let state = self.state.read();
        references
            .iter()
            .map(|r| {
                let version = state
                    .subjects
                    .get(&r.subject)
                    .and_then(|s| {
                        if r.version == -1 {
                            s.live().next_back()
                        } else {
                            s.versions.get(&r.version).filter(|v| !v.deleted)
                        }
                    })
                    .ok_or_else(|| {
                        ApiError::new(
                            codes::INVALID_SCHEMA,
                            format!(
                                "reference {} to {} version {} does not exist",
                                r.name, r.subject, r.version
                            ),
                        )
                    })?;
                Ok(state
                    .schemas
                    .get(&version.id)
                    .map(|s| s.text.clone())
                    .unwrap_or_default())
            })
            .collect()
    }

    /// Parses a request's schema into its checked forms.
    pub fn check(
        &self,
        request: &SchemaRequest,
        normalize: bool,
    ) -> Result<(SchemaType, Checked), ApiError> {
        let schema_type = SchemaType::parse(request.schema_type.as_deref())
            .map_err(|why| ApiError::new(codes::INVALID_SCHEMA, why))?;
        let references = self.reference_texts(&request.references)?;
        let checked = schema::check(schema_type, &request.schema, &references, normalize)
            .map_err(|why| ApiError::new(codes::INVALID_SCHEMA, why))?;
        Ok((schema_type, checked))
    }

    /// Parses a stored schema again (for compatibility checks against it).
    fn parsed(&self, stored: &StoredSchema) -> Result<schema::Parsed, ApiError> {
        let references = self.reference_texts(&stored.references)?;
        schema::check(stored.schema_type, &stored.text, &references, false)
            .map(|c| c.parsed)
            .map_err(|why| {
                store_error(format!(
                    "stored schema {} no longer parses: {why}",
                    stored.id
                ))
            })
    }

    /// The live versions of `subject` a new schema is checked against, oldest first.
    fn previous(&self, subject: &str) -> Result<Vec<schema::Parsed>, ApiError> {
        let stored: Vec<StoredSchema> = {
            let state = self.state.read();
            state
                .subjects
                .get(subject)
                .map(|s| {
                    s.live()
                        .filter_map(|v| state.schemas.get(&v.id).cloned())
                        .collect()
                })
                .unwrap_or_default()
        };
        stored.iter().map(|s| self.parsed(s)).collect()
    }

    /// Why `checked` may not be registered in `subject` under its level (against
    /// `version` only, when given).
    pub fn compatibility(
        &self,
        subject: &str,
        checked: &Checked,
        version: Option<i32>,
    ) -> Result<Vec<String>, ApiError> {
        let level = self.state.read().level_of(subject);
        let previous = match version {
            None => self.previous(subject)?,
            Some(v) => {
                let resolved = self.version(subject, &v.to_string(), false)?;
                vec![self.parsed(&resolved.schema)?]
            }
        };
        let previous: Vec<&schema::Parsed> = previous.iter().collect();
        let level = if version.is_some() && level.transitive() {
            // One named version: the transitive level's direction, against it alone.
            match level {
                Level::BackwardTransitive => Level::Backward,
                Level::ForwardTransitive => Level::Forward,
                _ => Level::Full,
            }
        } else {
            level
        };
        Ok(level.violations(&previous, &checked.parsed))
    }

    /// Why `checked` may not follow every live version of `subject`: the subject's level
    /// made transitive (`POST /compatibility/subjects/{s}/versions`).
    pub fn compatibility_with_all(
        &self,
        subject: &str,
        checked: &Checked,
    ) -> Result<Vec<String>, ApiError> {
        let level = match self.state.read().level_of(subject) {
            Level::Backward => Level::BackwardTransitive,
            Level::Forward => Level::ForwardTransitive,
            Level::Full => Level::FullTransitive,
            other => other,
        };
        let previous = self.previous(subject)?;
        let previous: Vec<&schema::Parsed> = previous.iter().collect();
        Ok(level.violations(&previous, &checked.parsed))
    }

    /// The live version of `subject` whose schema is `checked`, if any.
    pub fn find(
        &self,
        subject: &str,
        schema_type: SchemaType,
        checked: &Checked,
        references: &[Reference],
        deleted: bool,
    ) -> Option<Resolved> {
        let state = self.state.read();
        let id = *state.by_identity.get(&(
            schema_type,
            checked.identity.clone(),
            references.to_vec(),
        ))?;
        let entry = state.subjects.get(subject)?;
        let version = entry
            .versions
            .values()
            .rev()
            .find(|v| v.id == id && (deleted || !v.deleted))?;
        Some(Resolved {
            subject: subject.to_owned(),
            version: version.version,
            schema: state.schemas.get(&id)?.clone(),
        })
    }

    /// Registers a schema in `subject`: the existing id when it is there already, else a
    /// new version after the compatibility check.
    pub async fn register(
        &self,
        subject: &str,
        request: SchemaRequest,
        normalize: bool,
    ) -> Result<(i32, i32), ApiError> {
        let (schema_type, checked) = self.check(&request, normalize)?;
        let _writer = self.writer.lock().await;
        self.catch_up().await?;
        let mode = self.state.read().mode_of(subject);
        if mode == Mode::Readonly {
            return Err(ApiError::new(
                codes::NOT_PERMITTED,
                format!("subject {subject} is in read-only mode"),
            ));
        }
        if mode != Mode::Import
            && (request.id.is_some_and(|id| id >= 0) || request.version.is_some_and(|v| v >= 0))
        {
            return Err(ApiError::new(
                codes::NOT_PERMITTED,
                "an explicit id or version needs IMPORT mode",
            ));
        }
        if request.id.is_none() {
            if let Some(found) =
                self.find(subject, schema_type, &checked, &request.references, false)
            {
                return Ok((found.schema.id, found.version));
            }
        }
        if mode != Mode::Import {
            let reasons = self.compatibility(subject, &checked, None)?;
            if !reasons.is_empty() {
                return Err(ApiError::new(
                    codes::INCOMPATIBLE,
                    format!(
                        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                        reasons.join("; ")
                    ),
                ));
            }
        }
        let (id, version, next_id) = {
            let state = self.state.read();
            let existing = state
                .by_identity
                .get(&(
                    schema_type,
                    checked.identity.clone(),
                    request.references.clone(),
                ))
                .copied();
            let id = match (request.id.filter(|id| *id >= 0), existing) {
                (Some(id), _) => {
                    if let Some(taken) = state.schemas.get(&id) {
                        if state.identity_of.get(&id) != Some(&checked.identity)
                            || taken.schema_type != schema_type
                        {
                            return Err(ApiError::new(
                                codes::NOT_PERMITTED,
                                format!("id {id} is already used by another schema"),
                            ));
                        }
                    }
                    id
                }
                (None, Some(id)) => id,
                (None, None) => state.next_id,
            };
            let last = state
                .subjects
                .get(subject)
                .and_then(|s| s.versions.keys().next_back().copied())
                .unwrap_or(0);
            let version = match request.version.filter(|v| *v >= 0) {
                Some(v)
                    if state
                        .subjects
                        .get(subject)
                        .is_some_and(|s| s.versions.contains_key(&v)) =>
                {
                    return Err(ApiError::new(
                        codes::INVALID_VERSION,
                        format!("version {v} of {subject} exists"),
                    ));
                }
                Some(v) if v >= 1 => v,
                Some(v) => {
                    return Err(ApiError::new(
                        codes::INVALID_VERSION,
                        format!("version {v} is not >= 1"),
                    ))
                }
                None => last + 1,
            };
            (id, version, state.next_id.max(id.saturating_add(1)))
        };
        let value = SchemaValue {
            subject: subject.to_owned(),
            version,
            id,
            schema: checked.text.clone(),
            schema_type: (schema_type != SchemaType::Avro).then(|| schema_type.as_str().to_owned()),
            references: request.references,
            metadata: request.metadata,
            rule_set: request.rule_set,
            deleted: false,
            identity: Some(checked.identity),
        };
        self.write(vec![
            Change::NextId(next_id),
            Change::Schema {
                subject: subject.to_owned(),
                version,
                value: Some(value),
            },
        ])
        .await?;
        metrics::counter!("takhin_schema_registry_registered_total").increment(1);
        Ok((id, version))
    }

    /// Resolves `version` ("latest", "-1" or a number) of `subject`.
    pub fn version(
        &self,
        subject: &str,
        version: &str,
        deleted: bool,
    ) -> Result<Resolved, ApiError> {
        let state = self.state.read();
        let entry = state
            .subjects
            .get(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    codes::SUBJECT_NOT_FOUND,
                    format!("Subject '{subject}' not found."),
                )
            })?;
        if !deleted && !entry.is_live() {
            return Err(ApiError::new(
                codes::SUBJECT_NOT_FOUND,
                format!("Subject '{subject}' not found."),
            ));
        }
        let found = if version == "latest" || version == "-1" {
            if deleted {
                entry.versions.values().next_back()
            } else {
                entry.live().next_back()
            }
        } else {
            let number: i32 = version.parse().map_err(|_| {
                ApiError::new(
                    codes::INVALID_VERSION,
                    format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""),
                )
            })?;
            if number < 1 {
                return Err(ApiError::new(
                    codes::INVALID_VERSION,
                    format!("The specified version '{version}' is not a valid version id."),
                ));
            }
            entry
                .versions
                .get(&number)
                .filter(|v| deleted || !v.deleted)
        };
        let found = found.ok_or_else(|| {
            ApiError::new(
                codes::VERSION_NOT_FOUND,
                format!("Version {version} not found."),
            )
        })?;
        let schema = state.schemas.get(&found.id).cloned().ok_or_else(|| {
            ApiError::new(
                codes::SCHEMA_NOT_FOUND,
                format!("Schema {} not found", found.id),
            )
        })?;
        Ok(Resolved {
            subject: subject.to_owned(),
            version: found.version,
            schema,
        })
    }

    /// Deletes one version: soft first; `permanent` only after a soft delete.
    pub async fn delete_version(
        &self,
        subject: &str,
        version: &str,
        permanent: bool,
    ) -> Result<i32, ApiError> {
        let _writer = self.writer.lock().await;
        self.catch_up().await?;
        if self.state.read().mode_of(subject) == Mode::Readonly {
            return Err(ApiError::new(
                codes::NOT_PERMITTED,
                format!("subject {subject} is in read-only mode"),
            ));
        }
        let resolved = self.version(subject, version, permanent)?;
        let deleted = self
            .state
            .read()
            .subjects
            .get(subject)
            .and_then(|s| s.versions.get(&resolved.version))
            .is_some_and(|v| v.deleted);
        let change = match (permanent, deleted) {
            (false, true) => {
                return Err(ApiError::new(
                    codes::VERSION_SOFT_DELETED,
                    format!(
                        "Version {} of subject {subject} was soft deleted",
                        resolved.version
                    ),
                ))
            }
            (true, false) => {
                return Err(ApiError::new(
                    codes::VERSION_NOT_SOFT_DELETED,
                    format!(
                        "Version {} of subject {subject} must be soft deleted first",
                        resolved.version
                    ),
                ))
            }
            (true, true) => Change::Schema {
                subject: subject.to_owned(),
                version: resolved.version,
                value: None,
            },
            (false, false) => Change::Schema {
                subject: subject.to_owned(),
                version: resolved.version,
                value: Some(self.value_of(&resolved, true)),
            },
        };
        self.write(vec![change]).await?;
        Ok(resolved.version)
    }

    /// Deletes a subject: soft (every live version) or permanent (after a soft delete).
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, ApiError> {
        let _writer = self.writer.lock().await;
        self.catch_up().await?;
        let (versions, live) = {
            let state = self.state.read();
            if state.mode_of(subject) == Mode::Readonly {
                return Err(ApiError::new(
                    codes::NOT_PERMITTED,
                    format!("subject {subject} is in read-only mode"),
                ));
            }
            let entry = state
                .subjects
                .get(subject)
                .filter(|s| !s.versions.is_empty())
                .ok_or_else(|| {
                    ApiError::new(
                        codes::SUBJECT_NOT_FOUND,
                        format!("Subject '{subject}' not found."),
                    )
                })?;
            (
                entry.versions.keys().copied().collect::<Vec<_>>(),
                entry.is_live(),
            )
        };
        let mut changes = Vec::new();
        match (permanent, live) {
            (false, false) => {
                return Err(ApiError::new(
                    codes::SUBJECT_SOFT_DELETED,
                    format!("Subject '{subject}' was soft deleted."),
                ))
            }
            (true, true) => {
                return Err(ApiError::new(
                    codes::SUBJECT_NOT_SOFT_DELETED,
                    format!(
                    "Subject '{subject}' was not deleted first before being permanently deleted"
                ),
                ))
            }
            (true, false) => {
                for version in &versions {
                    changes.push(Change::Schema {
                        subject: subject.to_owned(),
                        version: *version,
                        value: None,
                    });
                }
                changes.push(Change::Config {
                    subject: Some(subject.to_owned()),
                    level: None,
                });
                changes.push(Change::Mode {
                    subject: Some(subject.to_owned()),
                    mode: None,
                });
            }
            (false, true) => {
                for version in &versions {
                    let resolved = self.version(subject, &version.to_string(), true)?;
                    changes.push(Change::Schema {
                        subject: subject.to_owned(),
                        version: *version,
                        value: Some(self.value_of(&resolved, true)),
                    });
                }
            }
        }
        self.write(changes).await?;
        Ok(versions)
    }

    fn value_of(&self, resolved: &Resolved, deleted: bool) -> SchemaValue {
        let identity = self
            .state
            .read()
            .identity_of
            .get(&resolved.schema.id)
            .cloned();
        SchemaValue {
            subject: resolved.subject.clone(),
            version: resolved.version,
            id: resolved.schema.id,
            schema: resolved.schema.text.clone(),
            schema_type: (resolved.schema.schema_type != SchemaType::Avro)
                .then(|| resolved.schema.schema_type.as_str().to_owned()),
            references: resolved.schema.references.clone(),
            metadata: resolved.schema.metadata.clone(),
            rule_set: resolved.schema.rule_set.clone(),
            deleted,
            identity,
        }
    }

    pub async fn set_config(
        &self,
        subject: Option<&str>,
        level: Option<Level>,
    ) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        self.write(vec![Change::Config {
            subject: subject.map(str::to_owned),
            level,
        }])
        .await
    }

    pub async fn set_mode(
        &self,
        subject: Option<&str>,
        mode: Option<Mode>,
    ) -> Result<(), ApiError> {
        let _writer = self.writer.lock().await;
        self.write(vec![Change::Mode {
            subject: subject.map(str::to_owned),
            mode,
        }])
        .await
    }
}
