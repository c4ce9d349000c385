//! The Admin API in the shape operators know from Redpanda's: status, brokers, cluster
//! health, partitions, features, Prometheus metrics and its own OpenAPI description. On
//! one node every answer is about this node; the cluster will fill the rest in.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use takhin_broker::Broker;

use crate::error::ApiError;

/// This node's id until the cluster assigns ids.
const NODE_ID: i32 = 0;

#[derive(Clone)]
pub struct Admin {
    /// `None` on the metrics-only listener.
    broker: Option<Arc<Broker>>,
    metrics: Option<PrometheusHandle>,
}

pub fn router(broker: Arc<Broker>, metrics: Option<PrometheusHandle>) -> Router {
    let admin = Admin {
        broker: Some(broker),
        metrics,
    };
    Router::new()
        .route(
            "/v1/status/ready",
            get(|| async { Json(json!({"status": "ready"})) }),
        )
        .route("/v1/brokers", get(brokers))
        .route("/v1/brokers/{id}", get(broker_by_id))
        .route("/v1/cluster/health_overview", get(health))
        .route("/v1/partitions", get(partitions))
        .route("/v1/partitions/kafka/{topic}/{partition}", get(partition))
        .route("/v1/features", get(features))
        .route("/metrics", get(render_metrics))
        .route("/public_metrics", get(render_metrics))
        .route("/v1/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(admin)
}

/// Only `/metrics`, for a separate scrape listener.
pub fn metrics_router(metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(Admin {
            broker: None,
            metrics,
        })
}

fn this_broker() -> Value {
    json!({
        "node_id": NODE_ID,
        "membership_status": "active",
        "is_alive": true,
        "version": env!("CARGO_PKG_VERSION"),
        "disk_space": [],
    })
}

async fn brokers() -> Json<Value> {
    Json(json!([this_broker()]))
}

async fn broker_by_id(Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    match id.parse::<i32>() {
        Ok(NODE_ID) => Ok(Json(this_broker())),
        _ => Err(ApiError::new(404, format!("broker {id} not found"))),
    }
}

async fn health() -> Json<Value> {
    Json(json!({
        "is_healthy": true,
        "unhealthy_reasons": [],
        "controller_id": NODE_ID,
        "all_nodes": [NODE_ID],
        "nodes_down": [],
        "leaderless_count": 0,
        "under_replicated_count": 0,
    }))
}

fn partition_json(topic: &str, index: i32, log: &takhin_log::PartitionLog) -> Value {
    json!({
        "ns": "kafka",
        "topic": topic,
        "partition_id": index,
        "status": "done",
        "leader_id": NODE_ID,
        "replicas": [{"node_id": NODE_ID, "core": 0}],
        "log_start_offset": log.log_start_offset(),
        "high_watermark": log.log_end_offset(),
        "size_bytes": log.size_bytes(),
    })
}

impl Admin {
    fn broker(&self) -> Result<&Arc<Broker>, ApiError> {
        self.broker
            .as_ref()
            .ok_or_else(|| ApiError::new(404, "not served on this listener"))
    }
}

async fn partitions(State(admin): State<Admin>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for topic in admin.broker()?.topics().all() {
        for (index, log) in topic.partitions().iter().enumerate() {
            out.push(partition_json(
                &topic.name,
                i32::try_from(index).unwrap_or(i32::MAX),
                log,
            ));
        }
    }
    Ok(Json(Value::Array(out)))
}

async fn partition(
    State(admin): State<Admin>,
    Path((topic, partition)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let index: i32 = partition
        .parse()
        .map_err(|_| ApiError::new(400, format!("partition {partition:?} is not a number")))?;
    let log = admin
        .broker()?
        .topics()
        .partition(&topic, index)
        .ok_or_else(|| {
            ApiError::new(
                404,
                format!("partition kafka/{topic}/{partition} not found"),
            )
        })?;
    Ok(Json(partition_json(&topic, index, &log)))
}

async fn features() -> Json<Value> {
    let names = [
        "kafka_protocol",
        "idempotent_producer",
        "consumer_groups",
        "log_compaction",
        "schema_registry",
    ];
    Json(json!({
        "cluster_version": 1,
        "node_latest_version": 1,
        "features": names.map(|name| json!({"name": name, "state": "active", "was_active": true})),
    }))
}

async fn render_metrics(State(admin): State<Admin>) -> impl IntoResponse {
    match &admin.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(503, "no metrics recorder in this process").into_response(),
    }
}

/// The OpenAPI 3 description of every route above; a test checks the two agree.
pub fn openapi() -> Value {
    let ok = |description: &str| json!({"200": {"description": description, "content": {"application/json": {"schema": {}}}}});
    let not_found = json!({"description": "not found", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let text = json!({"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}});
    let path_param = |name: &str, kind: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": kind}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Takhin Admin API", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/v1/status/ready": {"get": {"summary": "Readiness", "responses": {"200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}}}}}}},
            "/v1/brokers": {"get": {"summary": "Brokers", "responses": {"200": {"description": "brokers", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Broker"}}}}}}}},
            "/v1/brokers/{id}": {"get": {"summary": "One broker", "parameters": [path_param("id", "integer")], "responses": {"200": {"description": "broker", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Broker"}}}}, "404": not_found, "400": not_found}}},
            "/v1/cluster/health_overview": {"get": {"summary": "Cluster health", "responses": {"200": {"description": "health", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}}},
            "/v1/partitions": {"get": {"summary": "Partitions", "responses": ok("partitions")}},
            "/v1/partitions/kafka/{topic}/{partition}": {"get": {"summary": "One partition", "parameters": [path_param("topic", "string"), path_param("partition", "integer")], "responses": {"200": {"description": "partition", "content": {"application/json": {"schema": {}}}}, "400": not_found, "404": not_found}}},
            "/v1/features": {"get": {"summary": "Feature flags", "responses": ok("features")}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": text.clone()}},
            "/public_metrics": {"get": {"summary": "Prometheus metrics", "responses": text}},
            "/v1/openapi.json": {"get": {"summary": "This description", "responses": ok("OpenAPI document")}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error_code": {"type": "integer"}, "message": {"type": "string"}}, "required": ["error_code", "message"]},
            "Broker": {"type": "object", "properties": {
                "node_id": {"type": "integer"}, "membership_status": {"type": "string"},
                "is_alive": {"type": "boolean"}, "version": {"type": "string"},
                "disk_space": {"type": "array", "items": {}}},
                "required": ["node_id", "membership_status", "is_alive", "version", "disk_space"]},
            "Health": {"type": "object", "properties": {
                "is_healthy": {"type": "boolean"}, "unhealthy_reasons": {"type": "array", "items": {"type": "string"}},
                "controller_id": {"type": "integer"}, "all_nodes": {"type": "array", "items": {"type": "integer"}},
                "nodes_down": {"type": "array", "items": {"type": "integer"}},
                "leaderless_count": {"type": "integer"}, "under_replicated_count": {"type": "integer"}},
                "required": ["is_healthy", "unhealthy_reasons", "controller_id", "all_nodes", "nodes_down", "leaderless_count", "under_replicated_count"]},
        }},
    })
}
