//! The tokio side: binds the listeners, accepts connections and serves each one
//! strictly in order (Kafka's per-connection ordering guarantee), and starts the
//! background tasks. Bad frames close only their own connection, with a log line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::metrics as m;
use crate::{background, response_error_code, Broker, BrokerConfig, ClientInfo, StartError};

const SOCKET_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes reserved up front for a request body; larger bodies grow as they
/// arrive, so a peer that claims a huge size and sends nothing costs little.
const INITIAL_BODY_BYTES: usize = 1024 * 1024;

/// A started broker: where it listens and how to stop it.
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    pub kafka_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl RunningBroker {
    /// Stops accepting, stops background tasks, and closes the logs cleanly.
    pub async fn shutdown(mut self) {
        self.broker.shutdown();
        while self.tasks.join_next().await.is_some() {}
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.close()).await;
        tracing::info!("broker stopped");
    }
}

/// Opens the data directory, binds the listeners and starts serving.
pub async fn run(mut config: BrokerConfig) -> Result<RunningBroker, StartError> {
    let listener = TcpListener::bind(config.kafka_listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "kafka listener",
            addr: config.kafka_listen,
            source,
        })?;
    let kafka_addr = listener.local_addr().map_err(|source| StartError::Bind {
        what: "kafka listener",
        addr: config.kafka_listen,
        source,
    })?;
    config.kafka_listen = kafka_addr;
    if let Some(metrics_listen) = config.metrics_listen {
        if let Err(error) = m::install(metrics_listen) {
            // Another broker in this process (tests) already serves metrics.
            tracing::warn!(%error, "metrics exporter not installed");
        }
    }
    let metrics_addr = config.metrics_listen;
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await
        .map_err(|join| StartError::Groups(join.to_string()))??;

    let mut tasks = JoinSet::new();
    tasks.spawn(accept_loop(broker.clone(), listener));
    background::spawn_all(&broker, &mut tasks);
    tasks.spawn(broker.groups.clone().run_timers(broker.shutdown_signal()));
    tracing::info!(%kafka_addr, "kafka listener ready");
    Ok(RunningBroker {
        broker,
        kafka_addr,
        metrics_addr,
        tasks,
    })
}

async fn accept_loop(broker: Arc<Broker>, listener: TcpListener) {
    let mut shutdown = broker.shutdown_signal();
    let open_connections = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually EMFILE: back off briefly rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if open_connections.load(Ordering::Relaxed) >= broker.config.max_connections {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        }
        open_connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        let broker = broker.clone();
        let open_connections = open_connections.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(&broker, stream, peer).await {
                tracing::debug!(%peer, %error, "connection ended with error");
            }
            open_connections.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        });
    }
}

fn api_name(api: ApiKey) -> &'static str {
    static NAMES: OnceLock<HashMap<i16, &'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            ApiKey::iter()
                .map(|key| (key as i16, &*Box::leak(format!("{key:?}").into_boxed_str())))
                .collect()
        })
        .get(&(api as i16))
        .copied()
        .unwrap_or("Unknown")
}

async fn serve_connection(
    broker: &Broker,
    stream: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, read_half);
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, write_half);
    let mut shutdown = broker.shutdown_signal();
    let max_request_bytes = broker.config.max_request_bytes;
    loop {
        let size = tokio::select! {
            size = reader.read_i32() => size,
            _ = shutdown.changed() => break,
        };
        let size = match size {
            Ok(size) => size,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error),
        };
        let Ok(size) = usize::try_from(size) else {
            tracing::warn!(%peer, size, "negative frame size; closing connection");
            metrics::counter!(m::BAD_FRAMES, "reason" => "negative_size").increment(1);
            break;
        };
        if size > max_request_bytes {
            tracing::warn!(%peer, size, max_request_bytes, "request larger than socket.request.max.bytes; closing connection");
            metrics::counter!(m::BAD_FRAMES, "reason" => "too_large").increment(1);
            break;
        }
        let mut body = Vec::with_capacity(size.min(INITIAL_BODY_BYTES));
        (&mut reader)
            .take(size as u64)
            .read_to_end(&mut body)
            .await?;
        if body.len() < size {
            tracing::warn!(%peer, expected = size, got = body.len(), "truncated frame; closing connection");
            metrics::counter!(m::BAD_FRAMES, "reason" => "truncated").increment(1);
            break;
        }
        let request = match takhin_wire::decode_request(Bytes::from(body)) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%peer, %error, "bad request; closing connection");
                metrics::counter!(m::BAD_FRAMES, "reason" => "decode").increment(1);
                break;
            }
        };
        let started = Instant::now();
        let api = request.api_key;
        let correlation_id = request.header.correlation_id;
        let (response, response_version) = if request.unsupported_version {
            let response =
                takhin_wire::api_versions_response(ResponseError::UnsupportedVersion.code());
            (Some(ResponseKind::ApiVersions(response)), 0)
        } else {
            let client = ClientInfo {
                client_id: request
                    .header
                    .client_id
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                host: peer.ip().to_string(),
            };
            (
                broker.handle(request.body, request.version, &client).await,
                request.version,
            )
        };
        let error_code = response.as_ref().map_or(0, response_error_code);
        let name = api_name(api);
        metrics::counter!(m::REQUESTS, "api" => name, "error" => error_code.to_string())
            .increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "api" => name)
            .record(started.elapsed().as_secs_f64());
        let Some(response) = response else {
            continue;
        };
        let frame =
            match takhin_wire::encode_response(api, response_version, correlation_id, &response) {
                Ok(frame) => frame,
                Err(error) => {
                    tracing::error!(%peer, %error, "cannot encode response; closing connection");
                    break;
                }
            };
        writer.write_all(&frame).await?;
        // Pipelined requests already buffered are answered before one flush.
        if !whole_frame_buffered(reader.buffer()) {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    Ok(())
}

fn whole_frame_buffered(buffer: &[u8]) -> bool {
    if buffer.len() < 4 {
        return false;
    }
    let size = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    usize::try_from(size).is_ok_and(|size| buffer.len() >= 4 + size)
}
