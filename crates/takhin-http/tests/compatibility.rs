//! Table-driven compatibility: each case is (writer, reader, can the reader read the
//! writer's data, why). A level is built from this one question (BACKWARD asks it of
//! old -> new, FORWARD of new -> old, FULL both), so the table pins the checker itself;
//! the level composition is tested at the end. Verdicts follow Avro's schema-resolution
//! rules and, for JSON Schema, the rules written out in src/registry/json.rs.
#![allow(clippy::unwrap_used)]

use takhin_http::registry::schema::{check, Level, Parsed, SchemaType};

fn parse(kind: SchemaType, text: &str) -> Parsed {
    check(kind, text, &[], false)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .parsed
}

fn rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)
}

fn run(kind: SchemaType, cases: &[(&str, String, String, bool)]) {
    let mut wrong = Vec::new();
    for (why, writer, reader, expected) in cases {
        let reasons =
            takhin_http::registry::schema::can_read(&parse(kind, writer), &parse(kind, reader));
        if reasons.is_empty() != *expected {
            wrong.push(format!("{why}: expected {expected}, reasons {reasons:?}\n  writer {writer}\n  reader {reader}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn avro_reader_writer_table() {
    let s = |t: &str| t.to_owned();
    let f = |name: &str, ty: &str| format!(r#"{{"name":"{name}","type":{ty}}}"#);
    let fd = |name: &str, ty: &str, default: &str| {
        format!(r#"{{"name":"{name}","type":{ty},"default":{default}}}"#)
    };
    let e = |symbols: &str| format!(r#"{{"type":"enum","name":"E","symbols":[{symbols}]}}"#);
    let cases: Vec<(&str, String, String, bool)> = vec![
        ("same primitive", s(r#""int""#), s(r#""int""#), true),
        ("int promotes to long", s(r#""int""#), s(r#""long""#), true),
        (
            "int promotes to float",
            s(r#""int""#),
            s(r#""float""#),
            true,
        ),
        (
            "int promotes to double",
            s(r#""int""#),
            s(r#""double""#),
            true,
        ),
        (
            "long promotes to float",
            s(r#""long""#),
            s(r#""float""#),
            true,
        ),
        (
            "long promotes to double",
            s(r#""long""#),
            s(r#""double""#),
            true,
        ),
        (
            "float promotes to double",
            s(r#""float""#),
            s(r#""double""#),
            true,
        ),
        (
            "string reads as bytes",
            s(r#""string""#),
            s(r#""bytes""#),
            true,
        ),
        (
            "bytes reads as string",
            s(r#""bytes""#),
            s(r#""string""#),
            true,
        ),
        (
            "long does not narrow to int",
            s(r#""long""#),
            s(r#""int""#),
            false,
        ),
        (
            "double does not narrow to float",
            s(r#""double""#),
            s(r#""float""#),
            false,
        ),
        (
            "int is not a string",
            s(r#""int""#),
            s(r#""string""#),
            false,
        ),
        (
            "boolean is not an int",
            s(r#""boolean""#),
            s(r#""int""#),
            false,
        ),
        ("null reads as null", s(r#""null""#), s(r#""null""#), true),
        (
            "record: same fields",
            rec(&f("a", r#""int""#)),
            rec(&f("a", r#""int""#)),
            true,
        ),
        (
            "record: reader adds a field with a default",
            rec(&f("a", r#""int""#)),
            rec(&format!(
                "{},{}",
                f("a", r#""int""#),
                fd("b", r#""string""#, r#""x""#)
            )),
            true,
        ),
        (
            "record: reader adds a field without a default",
            rec(&f("a", r#""int""#)),
            rec(&format!("{},{}", f("a", r#""int""#), f("b", r#""string""#))),
            false,
        ),
        (
            "record: reader drops a field",
            rec(&format!("{},{}", f("a", r#""int""#), f("b", r#""int""#))),
            rec(&f("a", r#""int""#)),
            true,
        ),
        (
            "record: field type promoted",
            rec(&f("a", r#""int""#)),
            rec(&f("a", r#""long""#)),
            true,
        ),
        (
            "record: field type narrowed",
            rec(&f("a", r#""long""#)),
            rec(&f("a", r#""int""#)),
            false,
        ),
        (
            "record: field type changed",
            rec(&f("a", r#""int""#)),
            rec(&f("a", r#""string""#)),
            false,
        ),
        (
            "record: nullable field added with null default",
            rec(&f("a", r#""int""#)),
            rec(&format!(
                "{},{}",
                f("a", r#""int""#),
                fd("n", r#"["null","string"]"#, "null")
            )),
            true,
        ),
        (
            "record: renamed record",
            s(r#"{"type":"record","name":"A","fields":[]}"#),
            s(r#"{"type":"record","name":"B","fields":[]}"#),
            false,
        ),
        ("record: empty to empty", rec(""), rec(""), true),
        (
            "record: reader adds an int field with default",
            rec(""),
            rec(&fd("i", r#""int""#, "0")),
            true,
        ),
        ("enum: same symbols", e(r#""A","B""#), e(r#""A","B""#), true),
        (
            "enum: reader adds a symbol",
            e(r#""A""#),
            e(r#""A","B""#),
            true,
        ),
        (
            "enum: reader drops a symbol the writer uses",
            e(r#""A","B""#),
            e(r#""A""#),
            false,
        ),
        (
            "array: same items",
            s(r#"{"type":"array","items":"int"}"#),
            s(r#"{"type":"array","items":"int"}"#),
            true,
        ),
        (
            "array: items promoted",
            s(r#"{"type":"array","items":"int"}"#),
            s(r#"{"type":"array","items":"long"}"#),
            true,
        ),
        (
            "array: items narrowed",
            s(r#"{"type":"array","items":"long"}"#),
            s(r#"{"type":"array","items":"int"}"#),
            false,
        ),
        (
            "map: values promoted",
            s(r#"{"type":"map","values":"int"}"#),
            s(r#"{"type":"map","values":"double"}"#),
            true,
        ),
        (
            "map: values changed",
            s(r#"{"type":"map","values":"int"}"#),
            s(r#"{"type":"map","values":"string"}"#),
            false,
        ),
        (
            "array is not a map",
            s(r#"{"type":"array","items":"int"}"#),
            s(r#"{"type":"map","values":"int"}"#),
            false,
        ),
        (
            "union: reader adds a branch",
            s(r#"["null","int"]"#),
            s(r#"["null","int","string"]"#),
            true,
        ),
        (
            "union: reader drops a branch the writer has",
            s(r#"["null","int","string"]"#),
            s(r#"["null","int"]"#),
            false,
        ),
        (
            "union: writer plain, reader union containing it",
            s(r#""int""#),
            s(r#"["null","int"]"#),
            true,
        ),
        (
            "union: writer plain, reader union without it",
            s(r#""string""#),
            s(r#"["null","int"]"#),
            false,
        ),
        (
            "fixed: same size",
            s(r#"{"type":"fixed","name":"F","size":4}"#),
            s(r#"{"type":"fixed","name":"F","size":4}"#),
            true,
        ),
        (
            "fixed: size changed",
            s(r#"{"type":"fixed","name":"F","size":4}"#),
            s(r#"{"type":"fixed","name":"F","size":8}"#),
            false,
        ),
        (
            "nested record: inner field added with default",
            rec(&f(
                "in",
                &rec(&f("x", r#""int""#)).replace("\"R\"", "\"In\""),
            )),
            rec(&f(
                "in",
                &rec(&format!(
                    "{},{}",
                    f("x", r#""int""#),
                    fd("y", r#""int""#, "1")
                ))
                .replace("\"R\"", "\"In\""),
            )),
            true,
        ),
        (
            "nested record: inner field added without default",
            rec(&f(
                "in",
                &rec(&f("x", r#""int""#)).replace("\"R\"", "\"In\""),
            )),
            rec(&f(
                "in",
                &rec(&format!("{},{}", f("x", r#""int""#), f("y", r#""int""#)))
                    .replace("\"R\"", "\"In\""),
            )),
            false,
        ),
    ];
    assert!(cases.len() >= 40, "{} Avro cases", cases.len());
    run(SchemaType::Avro, &cases);
}

#[test]
fn json_reader_writer_table() {
    let s = |t: &str| t.to_owned();
    let obj = |props: &str, required: &str, extra: &str| {
        format!(r#"{{"type":"object","properties":{{{props}}},"required":[{required}]{extra}}}"#)
    };
    let closed = r#","additionalProperties":false"#;
    let cases: Vec<(&str, String, String, bool)> = vec![
        (
            "same type",
            s(r#"{"type":"string"}"#),
            s(r#"{"type":"string"}"#),
            true,
        ),
        (
            "integer reads as number",
            s(r#"{"type":"integer"}"#),
            s(r#"{"type":"number"}"#),
            true,
        ),
        (
            "number does not narrow to integer",
            s(r#"{"type":"number"}"#),
            s(r#"{"type":"integer"}"#),
            false,
        ),
        (
            "type changed",
            s(r#"{"type":"string"}"#),
            s(r#"{"type":"integer"}"#),
            false,
        ),
        (
            "reader widens to a type union",
            s(r#"{"type":"string"}"#),
            s(r#"{"type":["string","null"]}"#),
            true,
        ),
        (
            "reader narrows a type union",
            s(r#"{"type":["string","null"]}"#),
            s(r#"{"type":"string"}"#),
            false,
        ),
        (
            "reader accepts anything",
            s(r#"{"type":"string"}"#),
            s("{}"),
            true,
        ),
        (
            "untyped writer, typed reader",
            s("{}"),
            s(r#"{"type":"string"}"#),
            false,
        ),
        (
            "maxLength widened",
            s(r#"{"type":"string","maxLength":5}"#),
            s(r#"{"type":"string","maxLength":10}"#),
            true,
        ),
        (
            "maxLength narrowed",
            s(r#"{"type":"string","maxLength":10}"#),
            s(r#"{"type":"string","maxLength":5}"#),
            false,
        ),
        (
            "maxLength added",
            s(r#"{"type":"string"}"#),
            s(r#"{"type":"string","maxLength":5}"#),
            false,
        ),
        (
            "minLength lowered",
            s(r#"{"type":"string","minLength":3}"#),
            s(r#"{"type":"string","minLength":1}"#),
            true,
        ),
        (
            "minLength raised",
            s(r#"{"type":"string","minLength":1}"#),
            s(r#"{"type":"string","minLength":3}"#),
            false,
        ),
        (
            "maximum raised",
            s(r#"{"type":"integer","maximum":10}"#),
            s(r#"{"type":"integer","maximum":20}"#),
            true,
        ),
        (
            "minimum raised",
            s(r#"{"type":"integer","minimum":0}"#),
            s(r#"{"type":"integer","minimum":5}"#),
            false,
        ),
        (
            "pattern added",
            s(r#"{"type":"string"}"#),
            s(r#"{"type":"string","pattern":"^a"}"#),
            false,
        ),
        (
            "enum widened",
            s(r#"{"enum":["a","b"]}"#),
            s(r#"{"enum":["a","b","c"]}"#),
            true,
        ),
        (
            "enum narrowed",
            s(r#"{"enum":["a","b"]}"#),
            s(r#"{"enum":["a"]}"#),
            false,
        ),
        (
            "enum added",
            s(r#"{"type":"string"}"#),
            s(r#"{"type":"string","enum":["a"]}"#),
            false,
        ),
        (
            "optional property dropped from an open model",
            obj(
                r#""a":{"type":"string"},"b":{"type":"string"}"#,
                r#""a""#,
                "",
            ),
            obj(r#""a":{"type":"string"}"#, r#""a""#, ""),
            true,
        ),
        (
            "property dropped from a closed model",
            obj(r#""a":{"type":"string"},"b":{"type":"string"}"#, "", ""),
            obj(r#""a":{"type":"string"}"#, "", closed),
            false,
        ),
        (
            "new required property",
            obj(r#""a":{"type":"string"}"#, r#""a""#, ""),
            obj(
                r#""a":{"type":"string"},"b":{"type":"string"}"#,
                r#""a","b""#,
                "",
            ),
            false,
        ),
        (
            "required dropped",
            obj(r#""a":{"type":"string"}"#, r#""a""#, ""),
            obj(r#""a":{"type":"string"}"#, "", ""),
            true,
        ),
        (
            "constrained property added to an open model",
            obj(r#""a":{"type":"string"}"#, "", ""),
            obj(r#""a":{"type":"string"},"b":{"type":"integer"}"#, "", ""),
            false,
        ),
        (
            "property added to a closed writer",
            obj(r#""a":{"type":"string"}"#, "", closed),
            obj(
                r#""a":{"type":"string"},"b":{"type":"integer"}"#,
                "",
                closed,
            ),
            true,
        ),
        (
            "property type widened",
            obj(r#""a":{"type":"integer"}"#, "", ""),
            obj(r#""a":{"type":"number"}"#, "", ""),
            true,
        ),
        (
            "property type narrowed",
            obj(r#""a":{"type":"number"}"#, "", ""),
            obj(r#""a":{"type":"integer"}"#, "", ""),
            false,
        ),
        (
            "open model closed",
            obj(r#""a":{"type":"string"}"#, "", ""),
            obj(r#""a":{"type":"string"}"#, "", closed),
            false,
        ),
        (
            "closed model opened",
            obj(r#""a":{"type":"string"}"#, "", closed),
            obj(r#""a":{"type":"string"}"#, "", ""),
            true,
        ),
        (
            "array items widened",
            s(r#"{"type":"array","items":{"type":"integer"}}"#),
            s(r#"{"type":"array","items":{"type":"number"}}"#),
            true,
        ),
        (
            "array items narrowed",
            s(r#"{"type":"array","items":{"type":"number"}}"#),
            s(r#"{"type":"array","items":{"type":"integer"}}"#),
            false,
        ),
        (
            "maxItems narrowed",
            s(r#"{"type":"array","maxItems":5}"#),
            s(r#"{"type":"array","maxItems":2}"#),
            false,
        ),
        (
            "union branch added",
            s(r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#),
            s(r#"{"oneOf":[{"type":"string"},{"type":"integer"},{"type":"null"}]}"#),
            true,
        ),
        (
            "union branch removed",
            s(r#"{"oneOf":[{"type":"string"},{"type":"integer"}]}"#),
            s(r#"{"oneOf":[{"type":"string"}]}"#),
            false,
        ),
        (
            "plain writer into a union reader",
            s(r#"{"type":"string"}"#),
            s(r#"{"anyOf":[{"type":"string"},{"type":"null"}]}"#),
            true,
        ),
        ("true reader", s(r#"{"type":"string"}"#), s("true"), true),
        ("false reader", s(r#"{"type":"string"}"#), s("false"), false),
    ];
    assert!(cases.len() >= 25, "{} JSON cases", cases.len());
    run(SchemaType::Json, &cases);
}

#[test]
fn levels_compose_the_reader_question() {
    let old = parse(SchemaType::Avro, &rec(r#"{"name":"a","type":"int"}"#));
    // Adds a field without a default: old data cannot be read (BACKWARD breaks), but the
    // old schema reads new data by ignoring the field (FORWARD holds).
    let new = parse(
        SchemaType::Avro,
        &rec(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#),
    );
    assert!(!Level::Backward.violations(&[&old], &new).is_empty());
    assert!(Level::Forward.violations(&[&old], &new).is_empty());
    assert!(!Level::Full.violations(&[&old], &new).is_empty());
    assert!(Level::None.violations(&[&old], &new).is_empty());
    // Transitive levels look past the latest version.
    let middle = parse(
        SchemaType::Avro,
        &rec(r#"{"name":"a","type":"int"},{"name":"b","type":"int","default":0}"#),
    );
    let last = parse(
        SchemaType::Avro,
        &rec(r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#),
    );
    assert!(Level::Backward
        .violations(&[&old, &middle], &last)
        .is_empty());
    assert!(!Level::BackwardTransitive
        .violations(&[&old, &middle], &last)
        .is_empty());
}

mod fuzz {
    use proptest::prelude::*;
    use serde_json::Value;
    use takhin_http::registry::schema::{can_read, check, SchemaType};

    /// JSON built from the words schemas use, so the parsers get past the first check.
    fn json() -> impl Strategy<Value = Value> {
        let word = prop::sample::select(vec![
            "type",
            "record",
            "name",
            "fields",
            "items",
            "values",
            "symbols",
            "default",
            "int",
            "long",
            "string",
            "null",
            "object",
            "array",
            "properties",
            "required",
            "enum",
            "oneOf",
            "anyOf",
            "additionalProperties",
            "maxLength",
            "minimum",
            "R",
            "a",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            word.clone().prop_map(|w| Value::String(w.to_owned())),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(word.clone().prop_map(str::to_owned), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Any input gets an answer (a schema or a reason), never a panic; any two schemas
        /// that parse get a verdict.
        #[test]
        fn parsers_and_the_checker_never_panic(a in json(), b in json(), raw in ".{0,64}") {
            for kind in [SchemaType::Avro, SchemaType::Json] {
                let _ = check(kind, &raw, &[], false);
                let left = check(kind, &a.to_string(), &[], false);
                let right = check(kind, &b.to_string(), &[], true);
                if let (Ok(left), Ok(right)) = (left, right) {
                    let _ = can_read(&left.parsed, &right.parsed);
                    let _ = can_read(&right.parsed, &left.parsed);
                }
            }
        }
    }
}
