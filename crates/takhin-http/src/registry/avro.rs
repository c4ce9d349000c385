//! Avro through the apache-avro crate: parsing (named types from references resolve) and
//! its schema-resolution checker for "can a reader read what a writer wrote".

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;

/// Parses `text`; `references` are the JSON texts of the schemas it names.
pub fn parse(text: &str, references: &[String]) -> Result<Schema, String> {
    if references.is_empty() {
        return Schema::parse_str(text).map_err(|error| format!("invalid Avro schema: {error}"));
    }
    Schema::parse_str_with_list(text, references)
        .map(|(schema, _)| schema)
        .map_err(|error| format!("invalid Avro schema: {error}"))
}

/// Why `reader` cannot read data written with `writer`; empty when it can.
pub fn can_read(writer: &Schema, reader: &Schema) -> Vec<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(()) => Vec::new(),
        Err(error) => vec![error.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        parse(
            &format!(r#"{{"type":"record","name":"r","fields":[{fields}]}}"#),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn a_field_with_a_default_may_be_added_one_without_may_not() {
        let old = record(r#"{"name":"a","type":"int"}"#);
        let with_default =
            record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#);
        let without = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        assert!(can_read(&old, &with_default).is_empty());
        assert!(!can_read(&old, &without).is_empty());
        // int promotes to long; long does not narrow to int.
        let long = record(r#"{"name":"a","type":"long"}"#);
        assert!(can_read(&old, &long).is_empty());
        assert!(!can_read(&long, &old).is_empty());
    }

    #[test]
    fn references_resolve_named_types() {
        let address =
            r#"{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}"#;
        let person =
            r#"{"type":"record","name":"Person","fields":[{"name":"home","type":"Address"}]}"#;
        assert!(parse(person, &[]).is_err());
        assert!(parse(person, &[address.to_owned()]).is_ok());
    }
}
