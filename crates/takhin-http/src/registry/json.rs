//! JSON Schema: validated against its draft's meta-schema by the jsonschema crate; the
//! compatibility rules are ours, written out here and table-tested (tests/compatibility).
//!
//! The one question answered is whether a reader with schema R accepts every document a
//! writer with schema W accepts. Rules, checked at each path:
//! - `true`/`{}` accepts anything; a writer of `false` writes nothing;
//! - every type W allows must be allowed by R (`number` covers `integer`); an untyped W
//!   against a typed R is a narrowing;
//! - an `enum` in R must contain all of W's, and W must have one;
//! - string, number and array bounds may only widen in R (`maxLength`, `minLength`,
//!   `maximum`, `minimum`, `maxItems`, `minItems`); a new or changed `pattern` narrows;
//! - objects: R may require only what W requires; a property R describes is checked
//!   against W's description of it, or against what W allows for unknown properties when W
//!   does not describe it (so adding a constrained property to an open content model is a
//!   narrowing); a property W describes that R does not must be allowed by R's
//!   `additionalProperties`; closing an open content model is a narrowing;
//! - `items` recurse; `anyOf`/`oneOf` branches of W must each be read by some branch of R;
//! - `$ref` must be the same reference on both sides.

use serde_json::{Map, Value};

/// Refuses what is not a JSON Schema document.
pub fn validate(value: &Value) -> Result<(), String> {
    if !value.is_object() && !value.is_boolean() {
        return Err("a JSON schema is an object or a boolean".into());
    }
    jsonschema::meta::validate(value).map_err(|error| format!("invalid JSON schema: {error}"))
}

/// Why `reader` does not accept every document `writer` accepts; empty when it does.
pub fn can_read(writer: &Value, reader: &Value) -> Vec<String> {
    let mut reasons = Vec::new();
    check(writer, reader, "#", &mut reasons);
    reasons
}

const TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "integer", "string",
];

fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn accepts_type(reader: &[&str], t: &str) -> bool {
    reader.contains(&t) || (t == "integer" && reader.contains(&"number"))
}

fn number(schema: &Map<String, Value>, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

/// Reader's upper bound must be at least the writer's (a missing bound is infinite).
fn upper(
    w: &Map<String, Value>,
    r: &Map<String, Value>,
    key: &str,
    path: &str,
    out: &mut Vec<String>,
) {
    if let Some(rv) = number(r, key) {
        match number(w, key) {
            Some(wv) if wv <= rv => {}
            Some(wv) => out.push(format!("{path}: {key} narrowed from {wv} to {rv}")),
            None => out.push(format!("{path}: {key} {rv} added")),
        }
    }
}

/// Reader's lower bound must be at most the writer's (a missing bound is the floor).
fn lower(
    w: &Map<String, Value>,
    r: &Map<String, Value>,
    key: &str,
    path: &str,
    out: &mut Vec<String>,
) {
    if let Some(rv) = number(r, key) {
        match number(w, key) {
            Some(wv) if wv >= rv => {}
            Some(wv) => out.push(format!("{path}: {key} raised from {wv} to {rv}")),
            None => out.push(format!("{path}: {key} {rv} added")),
        }
    }
}

fn is_open(value: Option<&Value>) -> bool {
    !matches!(value, Some(Value::Bool(false)))
}

fn check(writer: &Value, reader: &Value, path: &str, out: &mut Vec<String>) {
    let (w, r) = match (writer, reader) {
        (_, Value::Bool(true)) | (Value::Bool(false), _) => return,
        (_, Value::Bool(false)) => {
            out.push(format!("{path}: the reader accepts nothing"));
            return;
        }
        (Value::Bool(true), Value::Object(r)) if r.is_empty() => return,
        (Value::Bool(true), Value::Object(_)) => {
            check(&Value::Object(Map::new()), reader, path, out);
            return;
        }
        (Value::Object(w), Value::Object(r)) => (w, r),
        _ => return,
    };
    if r.is_empty() {
        return;
    }
    if w.get("$ref") != r.get("$ref") {
        out.push(format!("{path}: $ref changed"));
        return;
    }
    for combinator in ["anyOf", "oneOf"] {
        let wb = w.get(combinator).and_then(Value::as_array);
        let rb = r
            .get("anyOf")
            .or_else(|| r.get("oneOf"))
            .and_then(Value::as_array);
        match (wb, rb) {
            (Some(wb), Some(rb)) => {
                for (i, branch) in wb.iter().enumerate() {
                    if !rb
                        .iter()
                        .any(|candidate| can_read(branch, candidate).is_empty())
                    {
                        out.push(format!(
                            "{path}/{combinator}/{i}: no branch of the reader reads it"
                        ));
                    }
                }
                return;
            }
            (Some(wb), None) => {
                for (i, branch) in wb.iter().enumerate() {
                    let mut inner = Vec::new();
                    check(
                        branch,
                        reader,
                        &format!("{path}/{combinator}/{i}"),
                        &mut inner,
                    );
                    out.extend(inner);
                }
                return;
            }
            _ => {}
        }
    }
    if let Some(rb) = r
        .get("anyOf")
        .or_else(|| r.get("oneOf"))
        .and_then(Value::as_array)
    {
        if !rb
            .iter()
            .any(|candidate| can_read(writer, candidate).is_empty())
        {
            out.push(format!(
                "{path}: no branch of the reader's union reads the writer"
            ));
        }
        return;
    }
    match (types(w), types(r)) {
        (Some(wt), Some(rt)) => {
            for t in wt {
                if !accepts_type(&rt, t) {
                    out.push(format!("{path}: type {t} is no longer accepted"));
                }
            }
        }
        (None, Some(rt)) if TYPES.iter().any(|t| !accepts_type(&rt, t)) => {
            out.push(format!("{path}: type narrowed to {}", rt.join(", ")));
        }
        _ => {}
    }
    if let Some(re) = r.get("enum").and_then(Value::as_array) {
        match w.get("enum").and_then(Value::as_array) {
            Some(we) => {
                for value in we {
                    if !re.contains(value) {
                        out.push(format!("{path}: enum value {value} removed"));
                    }
                }
            }
            None => out.push(format!("{path}: enum added")),
        }
    }
    if r.get("pattern").is_some() && r.get("pattern") != w.get("pattern") {
        out.push(format!("{path}: pattern added or changed"));
    }
    upper(w, r, "maxLength", path, out);
    lower(w, r, "minLength", path, out);
    upper(w, r, "maximum", path, out);
    lower(w, r, "minimum", path, out);
    upper(w, r, "maxItems", path, out);
    lower(w, r, "minItems", path, out);
    upper(w, r, "maxProperties", path, out);
    lower(w, r, "minProperties", path, out);
    check_object(w, r, path, out);
    if let (Some(wi), Some(ri)) = (w.get("items"), r.get("items")) {
        check(wi, ri, &format!("{path}/items"), out);
    } else if let Some(ri) = r.get("items") {
        check(&Value::Bool(true), ri, &format!("{path}/items"), out);
    }
}

fn check_object(w: &Map<String, Value>, r: &Map<String, Value>, path: &str, out: &mut Vec<String>) {
    let empty = Map::new();
    let wp = w
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let rp = r
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required = |s: &Map<String, Value>| -> Vec<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let w_required = required(w);
    for name in required(r) {
        if !w_required.contains(&name) {
            out.push(format!("{path}: property {name} is now required"));
        }
    }
    let w_additional = w.get("additionalProperties");
    let r_additional = r.get("additionalProperties");
    for (name, reader_schema) in rp {
        let at = format!("{path}/properties/{name}");
        match wp.get(name) {
            Some(writer_schema) => check(writer_schema, reader_schema, &at, out),
            None if is_open(w_additional) => {
                let writer_schema = w_additional.cloned().unwrap_or(Value::Bool(true));
                let mut inner = Vec::new();
                check(&writer_schema, reader_schema, &at, &mut inner);
                if !inner.is_empty() {
                    out.push(format!("{at}: property added to an open content model"));
                }
            }
            None => {}
        }
    }
    for (name, writer_schema) in wp {
        if rp.contains_key(name) {
            continue;
        }
        let at = format!("{path}/properties/{name}");
        match r_additional {
            Some(Value::Bool(false)) => {
                out.push(format!(
                    "{at}: property removed from a closed content model"
                ));
            }
            Some(schema @ Value::Object(_)) => check(writer_schema, schema, &at, out),
            _ => {}
        }
    }
    if is_open(w_additional) && matches!(r_additional, Some(Value::Bool(false))) && !rp.is_empty() {
        out.push(format!("{path}: the content model was closed"));
    } else if let (Some(wa @ Value::Object(_)), Some(ra @ Value::Object(_))) =
        (w_additional, r_additional)
    {
        check(wa, ra, &format!("{path}/additionalProperties"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(validate(&json!({"type": "strin"})).is_err());
        assert!(validate(&json!([1])).is_err());
        assert!(validate(&json!({"$schema": "http://example.com/unknown-draft"})).is_err());
        assert!(validate(&json!({"$schema": 5})).is_err());
        assert!(
            validate(&json!({"type": "object", "properties": {"a": {"type": "string"}}})).is_ok()
        );
    }

    #[test]
    fn widening_reads_and_narrowing_does_not() {
        let int = json!({"type": "integer"});
        let num = json!({"type": "number"});
        assert!(can_read(&int, &num).is_empty());
        assert!(!can_read(&num, &int).is_empty());
        let w =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        let r = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a", "b"]});
        assert!(!can_read(&w, &r).is_empty(), "a new required property");
    }
}
