//! Helpers for broker integration tests: an in-process broker on a loopback
//! port with a temporary data directory, and a minimal request/response client
//! built on kafka-protocol's encoders.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use takhin_broker::{BrokerConfig, RunningBroker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TestBroker {
    pub running: RunningBroker,
    pub dir: tempfile::TempDir,
}

pub async fn start_broker() -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    start_broker_in(dir).await
}

pub async fn start_broker_in(dir: tempfile::TempDir) -> TestBroker {
    let config = BrokerConfig {
        data_dir: dir.path().to_owned(),
        kafka_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        group_initial_rebalance_delay_ms: 0,
        ..BrokerConfig::default()
    };
    let running = takhin_broker::run(config).await.unwrap();
    TestBroker { running, dir }
}

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Client {
            stream,
            correlation_id: 0,
        }
    }

    pub async fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).await.unwrap();
    }

    /// Reads one response frame body, or None if the broker closed the connection.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let size = tokio::time::timeout(Duration::from_secs(10), self.stream.read_i32())
            .await
            .expect("response within 10 s")
            .ok()?;
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    }

    pub async fn request<R: Encodable + Into<RequestKind>>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: R,
    ) -> ResponseKind {
        self.correlation_id += 1;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("takhin-test")))
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.send_raw(&buf).await;
        let mut frame = self.read_frame().await.expect("broker answered");
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation_id);
        let response = ResponseKind::decode(api, &mut frame, version).unwrap();
        assert!(!frame.has_remaining(), "trailing bytes in {api:?} response");
        response
    }
}
