//! The tokio side: binds the listeners, accepts connections and serves each one
//! strictly in order (Kafka's per-connection ordering guarantee), and starts the
//! background tasks. Bad frames close only their own connection, with a log line.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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
            // wait_for also sees a shutdown sent before this task first ran.
            _ = shutdown.wait_for(|stop| *stop) => return,
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

/// Requests whose responses may be outstanding at once on one connection.
/// Only produces waiting for an fsync are ever outstanding; everything else is
/// answered before the next request is read.
const MAX_IN_FLIGHT: usize = 128;

/// A response on its way: ready, or waiting for an fsync (group commit).
struct Outgoing {
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    started: Instant,
    response: Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>,
}

async fn serve_connection(
    broker: &Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(SOCKET_BUFFER_BYTES, read_half);
    let (outgoing_tx, outgoing_rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_responses(write_half, outgoing_rx, peer));
    let mut shutdown = broker.shutdown_signal();
    let max_request_bytes = broker.config.max_request_bytes;
    loop {
        let size = tokio::select! {
            size = reader.read_i32() => size,
            _ = shutdown.wait_for(|stop| *stop) => break,
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
        let (response, version): (Pin<Box<dyn Future<Output = _> + Send>>, i16) =
            if request.unsupported_version {
                let response =
                    takhin_wire::api_versions_response(ResponseError::UnsupportedVersion.code());
                (
                    Box::pin(std::future::ready(Some(ResponseKind::ApiVersions(
                        response,
                    )))),
                    0,
                )
            } else if let RequestKind::Produce(produce) = request.body {
                // Appended now, in order; only the fsync wait is deferred.
                let pending = broker.produce(produce, request.version);
                let response = async move { pending.finish().await.map(ResponseKind::Produce) };
                (Box::pin(response), request.version)
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
                let response = broker.handle(request.body, request.version, &client).await;
                (Box::pin(std::future::ready(response)), request.version)
            };
        let outgoing = Outgoing {
            api,
            version,
            correlation_id,
            started,
            response,
        };
        if outgoing_tx.send(outgoing).await.is_err() {
            break; // the writer failed; its error is logged there
        }
    }
    drop(outgoing_tx);
    match writer.await {
        Ok(result) => result,
        Err(join) => Err(std::io::Error::other(join.to_string())),
    }
}

/// Writes responses in request order, flushing when no further response is ready.
async fn write_responses(
    write_half: tokio::net::tcp::OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<Outgoing>,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let mut writer = BufWriter::with_capacity(SOCKET_BUFFER_BYTES, write_half);
    while let Some(next) = outgoing.recv().await {
        let response = next.response.await;
        let error_code = response.as_ref().map_or(0, response_error_code);
        let name = api_name(next.api);
        metrics::counter!(m::REQUESTS, "api" => name, "error" => error_code.to_string())
            .increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "api" => name)
            .record(next.started.elapsed().as_secs_f64());
        if let Some(response) = response {
            let frame = takhin_wire::encode_response(
                next.api,
                next.version,
                next.correlation_id,
                &response,
            )
            .map_err(|error| {
                tracing::error!(%peer, %error, "cannot encode response; closing connection");
                std::io::Error::other(error.to_string())
            })?;
            writer.write_all(&frame).await?;
        }
        // Responses to pipelined requests that are already queued go out in
        // one write.
        if outgoing.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await
}
