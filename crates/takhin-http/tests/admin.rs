//! The Admin API against a real broker in this process: every path its OpenAPI document
//! describes answers with the status and the required fields the document promises, and
//! no route is served that the document leaves out.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET with `Connection: close`; returns the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn required_fields(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    };
    schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let broker = takhin_broker::run(takhin_broker::BrokerConfig {
        data_dir: dir.path().to_owned(),
        kafka_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        ..takhin_broker::BrokerConfig::default()
    })
    .await
    .unwrap();
    broker
        .broker
        .topics()
        .create("orders", 2, -1, BTreeMap::new(), 1)
        .unwrap();
    let http = takhin_http::start(
        broker.broker.clone(),
        &takhin_http::HttpConfig {
            schema_registry_listen: None,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_listen: None,
        },
    )
    .await
    .unwrap();
    let addr = http.admin_addr.unwrap();

    let (status, body) = get(addr, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc, takhin_http::admin::openapi());
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 10);
    for (template, item) in paths {
        let path = template
            .replace("{id}", "0")
            .replace("{topic}", "orders")
            .replace("{partition}", "1");
        let (status, body) = get(addr, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let declared = &item["get"]["responses"]["200"]["content"];
        if let Some(json) = declared.get("application/json") {
            let value: Value = serde_json::from_str(&body)
                .unwrap_or_else(|error| panic!("{path} is not JSON ({error}): {body}"));
            for field in required_fields(&doc, &json["schema"]) {
                assert!(value.get(&field).is_some(), "{path} lacks {field}: {body}");
            }
        }
    }
    let (_, partition) = get(addr, "/v1/partitions/kafka/orders/1").await;
    let partition: Value = serde_json::from_str(&partition).unwrap();
    assert_eq!(
        (
            partition["topic"].as_str(),
            partition["partition_id"].as_i64()
        ),
        (Some("orders"), Some(1))
    );

    // Errors the document names, and nothing it does not.
    assert_eq!(get(addr, "/v1/brokers/7").await.0, 404);
    assert_eq!(get(addr, "/v1/partitions/kafka/orders/9").await.0, 404);
    assert_eq!(get(addr, "/v1/partitions/kafka/orders/x").await.0, 400);
    let (status, body) = get(addr, "/v1/partitions/kafka/nope/0").await;
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, error["error_code"].as_u64()), (404, Some(404)));
    assert_eq!(get(addr, "/v1/undocumented").await.0, 404);

    http.shutdown().await;
    broker.shutdown().await;
}
