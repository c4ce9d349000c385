//! Schema types, parsing, the forms that decide identity, and compatibility levels.
//! Each type answers one question for the checker: can a reader with schema R read data
//! written with schema W, and if not, why. The levels are built from that question.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{avro, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    Avro,
    Json,
}

impl SchemaType {
    /// The types this registry parses and checks, as `/schemas/types` lists them.
    pub const ALL: [SchemaType; 2] = [SchemaType::Json, SchemaType::Avro];

    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        match text.unwrap_or("AVRO").to_ascii_uppercase().as_str() {
            "AVRO" => Ok(Self::Avro),
            "JSON" => Ok(Self::Json),
            "PROTOBUF" => Err("schema type PROTOBUF is not supported by this registry yet".into()),
            other => Err(format!("unknown schema type {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avro => "AVRO",
            Self::Json => "JSON",
        }
    }
}

/// A parsed schema: what the checker compares, and the text the registry stores.
#[derive(Debug, Clone)]
pub enum Parsed {
    Avro(Box<apache_avro::Schema>),
    Json(serde_json::Value),
}

/// A parsed schema with the forms that identify it.
#[derive(Debug, Clone)]
pub struct Checked {
    pub parsed: Parsed,
    /// The text stored and returned: compact JSON of what was registered.
    pub text: String,
    /// What decides "the same schema": compact JSON with sorted keys; with `normalize`,
    /// Avro's Parsing Canonical Form.
    pub identity: String,
}

/// Parses `text` of `schema_type`; `references` are the texts of the schemas it imports.
pub fn check(
    schema_type: SchemaType,
    text: &str,
    references: &[String],
    normalize: bool,
) -> Result<Checked, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("the schema is not JSON: {error}"))?;
    let compact = compact_sorted(&value);
    match schema_type {
        SchemaType::Avro => {
            let parsed = avro::parse(text, references)?;
            let identity = if normalize {
                parsed.canonical_form()
            } else {
                compact.clone()
            };
            Ok(Checked {
                parsed: Parsed::Avro(Box::new(parsed)),
                text: compact,
                identity,
            })
        }
        SchemaType::Json => {
            json::validate(&value)?;
            Ok(Checked {
                parsed: Parsed::Json(value),
                text: compact.clone(),
                identity: compact,
            })
        }
    }
}

/// Compact JSON with object keys sorted: key order and whitespace never make two texts
/// different schemas.
pub fn compact_sorted(value: &serde_json::Value) -> String {
    fn sort(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut sorted = serde_json::Map::new();
                for key in keys {
                    sorted.insert(key.clone(), sort(&map[key]));
                }
                serde_json::Value::Object(sorted)
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sort).collect())
            }
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

/// Why `reader` cannot read what `writer` wrote; empty when it can.
pub fn can_read(writer: &Parsed, reader: &Parsed) -> Vec<String> {
    match (writer, reader) {
        (Parsed::Avro(w), Parsed::Avro(r)) => avro::can_read(w, r),
        (Parsed::Json(w), Parsed::Json(r)) => json::can_read(w, r),
        _ => vec!["the schema type changed".into()],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }

    pub fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    /// Why `new` may not follow `previous` (oldest first) under this level.
    pub fn violations(self, previous: &[&Parsed], new: &Parsed) -> Vec<String> {
        let against: &[&Parsed] = match (self, previous.last()) {
            (Self::None, _) | (_, None) => return Vec::new(),
            (level, Some(_)) if level.transitive() => previous,
            (_, Some(_)) => &previous[previous.len() - 1..],
        };
        let backward = matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        );
        let forward = matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        );
        let mut reasons = Vec::new();
        for old in against.iter().rev() {
            if backward {
                for why in can_read(old, new) {
                    reasons.push(format!("BACKWARD: the new schema cannot read data written with an older one: {why}"));
                }
            }
            if forward {
                for why in can_read(new, old) {
                    reasons.push(format!(
                        "FORWARD: an older schema cannot read data written with the new one: {why}"
                    ));
                }
            }
        }
        reasons
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Mode {
    Readwrite,
    Readonly,
    Import,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_modes_parse_as_confluent_spells_them() {
        assert_eq!(
            Level::parse("backward_transitive"),
            Some(Level::BackwardTransitive)
        );
        assert_eq!(
            Level::parse("FULL").map(|l| l.to_string()),
            Some("FULL".into())
        );
        assert_eq!(Level::parse("SIDEWAYS"), None);
        assert_eq!(Mode::parse("import"), Some(Mode::Import));
        assert_eq!(Mode::parse("READ"), None);
    }

    #[test]
    fn key_order_and_whitespace_do_not_make_another_schema() {
        let a = check(
            SchemaType::Avro,
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}"#,
            &[],
            false,
        )
        .unwrap();
        let b = check(
            SchemaType::Avro,
            r#"{ "fields" : [ {"type":"int", "name":"a"} ], "name":"r", "type":"record" }"#,
            &[],
            false,
        )
        .unwrap();
        assert_eq!(a.identity, b.identity);
        let doc = check(
            SchemaType::Avro,
            r#"{"type":"record","name":"r","doc":"x","fields":[{"name":"a","type":"int"}]}"#,
            &[],
            false,
        )
        .unwrap();
        assert_ne!(
            a.identity, doc.identity,
            "a doc is part of what was registered"
        );
        let doc_normalized = check(
            SchemaType::Avro,
            r#"{"type":"record","name":"r","doc":"x","fields":[{"name":"a","type":"int"}]}"#,
            &[],
            true,
        )
        .unwrap();
        let a_normalized = check(
            SchemaType::Avro,
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}"#,
            &[],
            true,
        )
        .unwrap();
        assert_eq!(
            doc_normalized.identity, a_normalized.identity,
            "normalize uses the canonical form"
        );
    }
}
