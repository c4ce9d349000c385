//! The registry's state, rebuilt by replaying the `_schemas` topic, and the records that
//! change it. Record keys and values follow the layout Confluent's registry (and Karapace)
//! write, so the topic reads the same in their tools: key `{"keytype":"SCHEMA","subject":
//! S,"version":V,"magic":1}` with the schema as value, `CONFIG` and `MODE` keys with
//! their setting, a null value deleting what the key names. One more key type,
//! `TAKHIN_NEXT_ID`, keeps the id counter, so a hard delete (a tombstone, later compacted
//! away) never lets an id be issued twice.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::schema::{Level, Mode, SchemaType};

/// A reference from one schema to another: the name it is imported under, and which
/// subject and version hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// One registered schema (by id): the same text in two subjects is one id.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    pub id: i32,
    pub schema_type: SchemaType,
    pub text: String,
    pub references: Vec<Reference>,
    pub metadata: Option<Value>,
    pub rule_set: Option<Value>,
}

/// A version of a subject.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: i32,
    pub id: i32,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub versions: BTreeMap<i32, Version>,
    pub compatibility: Option<Level>,
    pub mode: Option<Mode>,
}

impl Subject {
    pub fn live(&self) -> impl DoubleEndedIterator<Item = &Version> {
        self.versions.values().filter(|v| !v.deleted)
    }

    pub fn is_live(&self) -> bool {
        self.live().next().is_some()
    }
}

/// Identity of a schema across subjects.
pub type Identity = (SchemaType, String, Vec<Reference>);

#[derive(Debug, Clone)]
pub struct State {
    pub schemas: BTreeMap<i32, StoredSchema>,
    pub by_identity: HashMap<Identity, i32>,
    /// The identity text of each id (for lookups by schema).
    pub identity_of: HashMap<i32, String>,
    pub subjects: BTreeMap<String, Subject>,
    pub compatibility: Level,
    pub mode: Mode,
    /// Above every id ever issued.
    pub next_id: i32,
    /// The next `_schemas` offset to apply.
    pub offset: i64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            schemas: BTreeMap::new(),
            by_identity: HashMap::new(),
            identity_of: HashMap::new(),
            subjects: BTreeMap::new(),
            compatibility: Level::Backward,
            mode: Mode::Readwrite,
            next_id: 1,
            offset: 0,
        }
    }
}

/// What a `_schemas` record says, decoded.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per write; boxing buys nothing
pub enum Change {
    Schema {
        subject: String,
        version: i32,
        /// `None`: the version is permanently deleted.
        value: Option<SchemaValue>,
    },
    Config {
        subject: Option<String>,
        level: Option<Level>,
    },
    Mode {
        subject: Option<String>,
        mode: Option<Mode>,
    },
    NextId(i32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaValue {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_set: Option<Value>,
    #[serde(default)]
    pub deleted: bool,
    /// The identity text, so a restart rebuilds lookups without re-parsing.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "takhinIdentity"
    )]
    pub identity: Option<String>,
}

impl Change {
    /// The record's key and value bytes.
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let (key, value) = match self {
            Change::Schema {
                subject,
                version,
                value,
            } => (
                json!({"keytype": "SCHEMA", "subject": subject, "version": version, "magic": 1}),
                value
                    .as_ref()
                    .map(|v| serde_json::to_value(v).unwrap_or(Value::Null)),
            ),
            Change::Config { subject, level } => (
                json!({"keytype": "CONFIG", "subject": subject, "magic": 0}),
                level.map(|l| json!({"compatibilityLevel": l})),
            ),
            Change::Mode { subject, mode } => (
                json!({"keytype": "MODE", "subject": subject, "magic": 0}),
                mode.map(|m| json!({"mode": m})),
            ),
            Change::NextId(next) => (
                json!({"keytype": "TAKHIN_NEXT_ID", "magic": 0}),
                Some(json!({"nextId": next})),
            ),
        };
        (
            key.to_string().into_bytes(),
            value.map(|v| v.to_string().into_bytes()),
        )
    }

    /// Decodes one record; `None` for key types this registry does not keep (NOOP, and
    /// anything newer).
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Change>, String> {
        let key: Value =
            serde_json::from_slice(key).map_err(|error| format!("record key: {error}"))?;
        let value: Option<Value> = match value {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice(bytes).map_err(|error| format!("record value: {error}"))?,
            ),
        };
        let subject = key
            .get("subject")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Some(match key.get("keytype").and_then(Value::as_str) {
            Some("SCHEMA") => Change::Schema {
                subject: subject.ok_or("SCHEMA key without a subject")?,
                version: key
                    .get("version")
                    .and_then(Value::as_i64)
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or("SCHEMA key without a version")?,
                value: value
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|error| format!("schema value: {error}"))?,
            },
            Some("CONFIG") => Change::Config {
                subject,
                level: value
                    .as_ref()
                    .and_then(|v| {
                        v.get("compatibilityLevel")
                            .or_else(|| v.get("compatibility"))
                    })
                    .and_then(Value::as_str)
                    .map(|text| Level::parse(text).ok_or(format!("compatibility {text:?}")))
                    .transpose()?,
            },
            Some("MODE") => Change::Mode {
                subject,
                mode: value
                    .as_ref()
                    .and_then(|v| v.get("mode"))
                    .and_then(Value::as_str)
                    .map(|text| Mode::parse(text).ok_or(format!("mode {text:?}")))
                    .transpose()?,
            },
            Some("TAKHIN_NEXT_ID") => Change::NextId(
                value
                    .as_ref()
                    .and_then(|v| v.get("nextId"))
                    .and_then(Value::as_i64)
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or("TAKHIN_NEXT_ID without nextId")?,
            ),
            _ => return Ok(None),
        }))
    }
}

impl State {
    /// Applies one change; every change is applied the same way at start (replay) and
    /// after a write, so what a restart rebuilds is what was served.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Schema {
                subject,
                version,
                value: None,
            } => {
                if let Some(entry) = self.subjects.get_mut(&subject) {
                    entry.versions.remove(&version);
                    if entry.versions.is_empty()
                        && entry.compatibility.is_none()
                        && entry.mode.is_none()
                    {
                        self.subjects.remove(&subject);
                    }
                }
                self.forget_unused();
            }
            Change::Schema {
                subject,
                version,
                value: Some(value),
            } => {
                let schema_type =
                    SchemaType::parse(value.schema_type.as_deref()).unwrap_or(SchemaType::Avro);
                let identity = value
                    .identity
                    .clone()
                    .unwrap_or_else(|| value.schema.clone());
                self.next_id = self.next_id.max(value.id.saturating_add(1));
                self.by_identity
                    .entry((schema_type, identity.clone(), value.references.clone()))
                    .or_insert(value.id);
                self.identity_of.entry(value.id).or_insert(identity);
                self.schemas
                    .entry(value.id)
                    .or_insert_with(|| StoredSchema {
                        id: value.id,
                        schema_type,
                        text: value.schema.clone(),
                        references: value.references.clone(),
                        metadata: value.metadata.clone(),
                        rule_set: value.rule_set.clone(),
                    });
                self.subjects.entry(subject).or_default().versions.insert(
                    version,
                    Version {
                        version,
                        id: value.id,
                        deleted: value.deleted,
                    },
                );
            }
            Change::Config {
                subject: None,
                level,
            } => {
                self.compatibility = level.unwrap_or(Level::Backward);
            }
            Change::Config {
                subject: Some(subject),
                level,
            } => {
                self.subjects.entry(subject).or_default().compatibility = level;
            }
            Change::Mode {
                subject: None,
                mode,
            } => self.mode = mode.unwrap_or(Mode::Readwrite),
            Change::Mode {
                subject: Some(subject),
                mode,
            } => self.subjects.entry(subject).or_default().mode = mode,
            Change::NextId(next) => self.next_id = self.next_id.max(next),
        }
    }

    /// Drops schemas no version refers to any more (after permanent deletes). Their ids
    /// stay retired: `next_id` never goes down.
    fn forget_unused(&mut self) {
        let used: std::collections::HashSet<i32> = self
            .subjects
            .values()
            .flat_map(|s| s.versions.values().map(|v| v.id))
            .collect();
        self.schemas.retain(|id, _| used.contains(id));
        self.identity_of.retain(|id, _| used.contains(id));
        self.by_identity.retain(|_, id| used.contains(id));
    }

    pub fn level_of(&self, subject: &str) -> Level {
        self.subjects
            .get(subject)
            .and_then(|s| s.compatibility)
            .unwrap_or(self.compatibility)
    }

    pub fn mode_of(&self, subject: &str) -> Mode {
        self.subjects
            .get(subject)
            .and_then(|s| s.mode)
            .unwrap_or(self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(subject: &str, version: i32, id: i32, deleted: bool) -> Change {
        Change::Schema {
            subject: subject.into(),
            version,
            value: Some(SchemaValue {
                subject: subject.into(),
                version,
                id,
                schema: format!("\"s{id}\""),
                schema_type: None,
                references: Vec::new(),
                metadata: None,
                rule_set: None,
                deleted,
                identity: None,
            }),
        }
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        for change in [
            schema("a", 1, 7, false),
            Change::Config {
                subject: Some("a".into()),
                level: Some(Level::Full),
            },
            Change::Config {
                subject: None,
                level: None,
            },
            Change::Mode {
                subject: None,
                mode: Some(Mode::Import),
            },
            Change::NextId(12),
        ] {
            let (key, value) = change.encode();
            let decoded = Change::decode(&key, value.as_deref()).unwrap().unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{change:?}"));
        }
        assert!(Change::decode(br#"{"keytype":"NOOP","magic":0}"#, None)
            .unwrap()
            .is_none());
        assert!(Change::decode(b"not json", None).is_err());
    }

    #[test]
    fn a_permanently_deleted_id_is_never_issued_again() {
        let mut state = State::default();
        state.apply(schema("a", 1, 1, false));
        state.apply(schema("a", 2, 2, false));
        state.apply(Change::NextId(3));
        state.apply(Change::Schema {
            subject: "a".into(),
            version: 2,
            value: None,
        });
        assert!(!state.schemas.contains_key(&2));
        assert_eq!(state.next_id, 3);
        // After compaction only the counter record remembers id 2.
        let mut replayed = State::default();
        replayed.apply(schema("a", 1, 1, false));
        replayed.apply(Change::NextId(3));
        assert_eq!(replayed.next_id, 3);
    }
}
