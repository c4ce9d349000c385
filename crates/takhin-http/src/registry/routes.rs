//! The registry's HTTP API, as Confluent's clients call it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::schema::{Level, Mode, SchemaType};
use super::state::StoredSchema;
use super::{codes, Registry, Resolved, SchemaRequest};
use crate::error::ApiError;

type Shared = State<Arc<Registry>>;
type Params = Query<HashMap<String, String>>;
type Answer = Result<Json<Value>, ApiError>;

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(|| async { Json(json!({})) }))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas", get(schemas))
        .route(
            "/schemas/types",
            get(|| async { Json(json!(SchemaType::ALL.map(SchemaType::as_str))) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route(
            "/config",
            get(global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/mode",
            get(global_mode)
                .put(put_global_mode)
                .delete(delete_global_mode),
        )
        .route(
            "/mode/{subject}",
            get(subject_mode)
                .put(put_subject_mode)
                .delete(delete_subject_mode),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatible_with_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatible_with_all),
        )
        .route("/contexts", get(|| async { Json(json!(["."])) }))
        .with_state(registry)
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A JSON body under any of the content types Confluent's clients send.
fn body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, ApiError> {
    if let Some(kind) = headers.get(axum::http::header::CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or("").to_ascii_lowercase();
        if !(kind.contains("json") || kind.starts_with("application/octet-stream")) {
            return Err(ApiError::new(415, format!("unsupported content type {kind:?}; send application/vnd.schemaregistry.v1+json")));
        }
    }
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::new(
            422,
            format!("Unrecognized field or malformed JSON: {error}"),
        )
    })
}

fn schema_json(schema: &StoredSchema, into: &mut serde_json::Map<String, Value>) {
    into.insert("schema".into(), json!(schema.text));
    if schema.schema_type != SchemaType::Avro {
        into.insert("schemaType".into(), json!(schema.schema_type.as_str()));
    }
    if !schema.references.is_empty() {
        into.insert("references".into(), json!(schema.references));
    }
    if let Some(metadata) = &schema.metadata {
        into.insert("metadata".into(), metadata.clone());
    }
    if let Some(rule_set) = &schema.rule_set {
        into.insert("ruleSet".into(), rule_set.clone());
    }
}

fn resolved_json(resolved: &Resolved) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("subject".into(), json!(resolved.subject));
    map.insert("version".into(), json!(resolved.version));
    map.insert("id".into(), json!(resolved.schema.id));
    schema_json(&resolved.schema, &mut map);
    Value::Object(map)
}

async fn subjects(State(registry): Shared, Query(params): Params) -> Json<Value> {
    let prefix = params
        .get("subjectPrefix")
        .map(String::as_str)
        .unwrap_or("");
    let deleted_only = flag(&params, "deletedOnly");
    let deleted = flag(&params, "deleted") || deleted_only;
    let state = registry.read();
    let names: Vec<&String> = state
        .subjects
        .iter()
        .filter(|(name, s)| name.starts_with(prefix) && !s.versions.is_empty())
        .filter(|(_, s)| match (deleted_only, deleted) {
            (true, _) => !s.is_live(),
            (false, true) => true,
            (false, false) => s.is_live(),
        })
        .map(|(name, _)| name)
        .collect();
    Json(json!(names))
}

async fn versions(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let deleted = flag(&params, "deleted");
    let state = registry.read();
    let entry = state
        .subjects
        .get(&subject)
        .filter(|s| {
            if deleted {
                !s.versions.is_empty()
            } else {
                s.is_live()
            }
        })
        .ok_or_else(|| {
            ApiError::new(
                codes::SUBJECT_NOT_FOUND,
                format!("Subject '{subject}' not found."),
            )
        })?;
    let versions: Vec<i32> = entry
        .versions
        .values()
        .filter(|v| deleted || !v.deleted)
        .map(|v| v.version)
        .collect();
    Ok(Json(json!(versions)))
}

async fn register(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let request: SchemaRequest = body(&headers, &bytes)?;
    let (id, version) = registry
        .register(&subject, request, flag(&params, "normalize"))
        .await?;
    Ok(Json(json!({"id": id, "version": version})))
}

async fn lookup(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let request: SchemaRequest = body(&headers, &bytes)?;
    let deleted = flag(&params, "deleted");
    let live = {
        let state = registry.read();
        state.subjects.get(&subject).is_some_and(|s| {
            if deleted {
                !s.versions.is_empty()
            } else {
                s.is_live()
            }
        })
    };
    if !live {
        return Err(ApiError::new(
            codes::SUBJECT_NOT_FOUND,
            format!("Subject '{subject}' not found."),
        ));
    }
    let (schema_type, checked) = registry.check(&request, flag(&params, "normalize"))?;
    let found = registry
        .find(
            &subject,
            schema_type,
            &checked,
            &request.references,
            deleted,
        )
        .ok_or_else(|| ApiError::new(codes::SCHEMA_NOT_FOUND, "Schema not found"))?;
    Ok(Json(resolved_json(&found)))
}

async fn version(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let resolved = registry.version(&subject, &version, flag(&params, "deleted"))?;
    Ok(Json(resolved_json(&resolved)))
}

async fn version_schema(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let resolved = registry.version(&subject, &version, flag(&params, "deleted"))?;
    Ok(Json(
        serde_json::from_str(&resolved.schema.text).unwrap_or(Value::String(resolved.schema.text)),
    ))
}

async fn referenced_by(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let resolved = registry.version(&subject, &version, false)?;
    let state = registry.read();
    let ids: Vec<i32> = state
        .schemas
        .values()
        .filter(|s| {
            s.references
                .iter()
                .any(|r| r.subject == subject && (r.version == resolved.version || r.version == -1))
        })
        .map(|s| s.id)
        .collect();
    Ok(Json(json!(ids)))
}

async fn delete_version(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let deleted = registry
        .delete_version(&subject, &version, flag(&params, "permanent"))
        .await?;
    Ok(Json(json!(deleted)))
}

async fn delete_subject(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let versions = registry
        .delete_subject(&subject, flag(&params, "permanent"))
        .await?;
    Ok(Json(json!(versions)))
}

async fn schemas(State(registry): Shared, Query(params): Params) -> Json<Value> {
    let prefix = params
        .get("subjectPrefix")
        .map(String::as_str)
        .unwrap_or("");
    let deleted = flag(&params, "deleted");
    let latest_only = flag(&params, "latestOnly");
    let state = registry.read();
    let mut out = Vec::new();
    for (name, subject) in state.subjects.iter().filter(|(n, _)| n.starts_with(prefix)) {
        let versions: Vec<_> = subject
            .versions
            .values()
            .filter(|v| deleted || !v.deleted)
            .collect();
        let chosen = if latest_only {
            versions.last().map(|v| vec![*v]).unwrap_or_default()
        } else {
            versions
        };
        for v in chosen {
            if let Some(schema) = state.schemas.get(&v.id) {
                out.push(resolved_json(&Resolved {
                    subject: name.clone(),
                    version: v.version,
                    schema: schema.clone(),
                }));
            }
        }
    }
    Json(Value::Array(out))
}

fn by_id(registry: &Registry, id: &str) -> Result<StoredSchema, ApiError> {
    let missing = || ApiError::new(codes::SCHEMA_NOT_FOUND, format!("Schema {id} not found"));
    let id: i32 = id.parse().map_err(|_| missing())?;
    registry
        .read()
        .schemas
        .get(&id)
        .cloned()
        .ok_or_else(missing)
}

async fn schema_by_id(State(registry): Shared, Path(id): Path<String>) -> Answer {
    let schema = by_id(&registry, &id)?;
    let mut map = serde_json::Map::new();
    schema_json(&schema, &mut map);
    Ok(Json(Value::Object(map)))
}

async fn raw_schema_by_id(State(registry): Shared, Path(id): Path<String>) -> Answer {
    let schema = by_id(&registry, &id)?;
    Ok(Json(
        serde_json::from_str(&schema.text).unwrap_or(Value::String(schema.text)),
    ))
}

fn uses_of(registry: &Registry, id: i32, deleted: bool) -> Vec<(String, i32)> {
    let state = registry.read();
    state
        .subjects
        .iter()
        .flat_map(|(name, s)| {
            s.versions
                .values()
                .filter(move |v| v.id == id && (deleted || !v.deleted))
                .map(move |v| (name.clone(), v.version))
        })
        .collect()
}

async fn subjects_of_id(
    State(registry): Shared,
    Path(id): Path<String>,
    Query(params): Params,
) -> Answer {
    let schema = by_id(&registry, &id)?;
    let mut names: Vec<String> = uses_of(&registry, schema.id, flag(&params, "deleted"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    names.dedup();
    Ok(Json(json!(names)))
}

async fn versions_of_id(
    State(registry): Shared,
    Path(id): Path<String>,
    Query(params): Params,
) -> Answer {
    let schema = by_id(&registry, &id)?;
    let uses: Vec<Value> = uses_of(&registry, schema.id, flag(&params, "deleted"))
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(Json(Value::Array(uses)))
}

fn level_body(headers: &HeaderMap, bytes: &Bytes) -> Result<Level, ApiError> {
    let value: Value = body(headers, bytes)?;
    let text = value
        .get("compatibility")
        .or_else(|| value.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Level::parse(text).ok_or_else(|| {
        ApiError::new(
            codes::INVALID_COMPATIBILITY,
            format!("Invalid compatibility level {text:?}"),
        )
    })
}

fn mode_body(headers: &HeaderMap, bytes: &Bytes) -> Result<Mode, ApiError> {
    let value: Value = body(headers, bytes)?;
    let text = value.get("mode").and_then(Value::as_str).unwrap_or("");
    Mode::parse(text)
        .ok_or_else(|| ApiError::new(codes::INVALID_MODE, format!("Invalid mode {text:?}")))
}

async fn global_config(State(registry): Shared) -> Json<Value> {
    Json(json!({"compatibilityLevel": registry.read().compatibility}))
}

async fn put_global_config(State(registry): Shared, headers: HeaderMap, bytes: Bytes) -> Answer {
    let level = level_body(&headers, &bytes)?;
    registry.set_config(None, Some(level)).await?;
    Ok(Json(json!({"compatibility": level})))
}

async fn delete_global_config(State(registry): Shared) -> Answer {
    let previous = registry.read().compatibility;
    registry.set_config(None, None).await?;
    Ok(Json(json!({"compatibilityLevel": previous})))
}

async fn subject_config(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let state = registry.read();
    match state.subjects.get(&subject).and_then(|s| s.compatibility) {
        Some(level) => Ok(Json(json!({"compatibilityLevel": level}))),
        None if flag(&params, "defaultToGlobal") => {
            Ok(Json(json!({"compatibilityLevel": state.compatibility})))
        }
        None => Err(ApiError::new(
            codes::SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(registry): Shared,
    Path(subject): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let level = level_body(&headers, &bytes)?;
    registry.set_config(Some(&subject), Some(level)).await?;
    Ok(Json(json!({"compatibility": level})))
}

async fn delete_subject_config(State(registry): Shared, Path(subject): Path<String>) -> Answer {
    let previous = registry
        .read()
        .subjects
        .get(&subject)
        .and_then(|s| s.compatibility);
    let previous = previous.ok_or_else(|| {
        ApiError::new(
            codes::SUBJECT_NOT_FOUND,
            format!("Subject '{subject}' has no compatibility configured"),
        )
    })?;
    registry.set_config(Some(&subject), None).await?;
    Ok(Json(json!({"compatibilityLevel": previous})))
}

async fn global_mode(State(registry): Shared) -> Json<Value> {
    Json(json!({"mode": registry.read().mode}))
}

async fn put_global_mode(State(registry): Shared, headers: HeaderMap, bytes: Bytes) -> Answer {
    let mode = mode_body(&headers, &bytes)?;
    registry.set_mode(None, Some(mode)).await?;
    Ok(Json(json!({"mode": mode})))
}

async fn delete_global_mode(State(registry): Shared) -> Answer {
    let previous = registry.read().mode;
    registry.set_mode(None, None).await?;
    Ok(Json(json!({"mode": previous})))
}

async fn subject_mode(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Answer {
    let state = registry.read();
    match state.subjects.get(&subject).and_then(|s| s.mode) {
        Some(mode) => Ok(Json(json!({"mode": mode}))),
        None if flag(&params, "defaultToGlobal") => Ok(Json(json!({"mode": state.mode}))),
        None => Err(ApiError::new(
            codes::SUBJECT_MODE_NOT_CONFIGURED,
            format!("Subject '{subject}' does not have subject-level mode configured"),
        )),
    }
}

async fn put_subject_mode(
    State(registry): Shared,
    Path(subject): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let mode = mode_body(&headers, &bytes)?;
    registry.set_mode(Some(&subject), Some(mode)).await?;
    Ok(Json(json!({"mode": mode})))
}

async fn delete_subject_mode(State(registry): Shared, Path(subject): Path<String>) -> Answer {
    let previous = registry.read().subjects.get(&subject).and_then(|s| s.mode);
    let previous = previous.ok_or_else(|| {
        ApiError::new(
            codes::SUBJECT_MODE_NOT_CONFIGURED,
            format!("Subject '{subject}' has no mode configured"),
        )
    })?;
    registry.set_mode(Some(&subject), None).await?;
    Ok(Json(json!({"mode": previous})))
}

fn verdict(reasons: Vec<String>, verbose: bool) -> Json<Value> {
    let mut answer = json!({"is_compatible": reasons.is_empty()});
    if verbose {
        answer["messages"] = json!(reasons);
    }
    Json(answer)
}

async fn compatible_with_version(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let request: SchemaRequest = body(&headers, &bytes)?;
    let (_, checked) = registry.check(&request, flag(&params, "normalize"))?;
    let resolved = registry.version(&subject, &version, false)?;
    let reasons = registry.compatibility(&subject, &checked, Some(resolved.version))?;
    Ok(verdict(reasons, flag(&params, "verbose")))
}

async fn compatible_with_all(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let request: SchemaRequest = body(&headers, &bytes)?;
    let (_, checked) = registry.check(&request, flag(&params, "normalize"))?;
    let reasons = registry.compatibility_with_all(&subject, &checked)?;
    Ok(verdict(reasons, flag(&params, "verbose")))
}
