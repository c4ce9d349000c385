//! The server's metric names, the process-wide Prometheus recorder and the `/metrics`
//! endpoint.
//!
//! Series: the UTXO client pipeline's (`wes_utxo_client_*`, see
//! `wes_utxo_client::metrics`: queue depth, batches, blocks applied, retries, call errors,
//! breaker state and transitions, lag, tips) and the server's own:
//! - `wes_server_requests_total{method, code}`: answered RPCs by gRPC code;
//! - `wes_server_request_duration_seconds{method}`: histogram;
//! - `wes_server_blocks_submitted_total`, `wes_server_blocks_rejected_total{code}`,
//!   `wes_server_blocks_rolled_back_total`;
//! - `wes_server_utxo_blocks_applied`: blocks this process applied to the store (gauge).
//!
//! The counters of the pipeline are registered at zero on start, so every name is present
//! from the first scrape; gauges derived from the client's status are refreshed on every
//! scrape.
//!
//! **One recorder per process.** The `metrics` facade has one global recorder. With a
//! metrics address the server installs a Prometheus recorder once per process and serves it;
//! a second server in the same process (tests) serves the same recorder. Without one (as in
//! `takhin dev`, where the broker installs the recorder and serves `/metrics`), the server
//! only emits, and whatever recorder the process has collects.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wes_utxo_client::metrics::names as client;

use crate::error::ServerError;

/// Answered RPCs, by method and gRPC code.
pub const REQUESTS: &str = "wes_server_requests_total";
/// RPC latency, by method.
pub const REQUEST_SECONDS: &str = "wes_server_request_duration_seconds";
/// Blocks accepted by SubmitBlock (appended to the repository).
pub const BLOCKS_SUBMITTED: &str = "wes_server_blocks_submitted_total";
/// Blocks removed from the repository by RollbackTo (the UTXO state rolls them back).
pub const BLOCKS_ROLLED_BACK: &str = "wes_server_blocks_rolled_back_total";
/// Blocks refused by SubmitBlock, by gRPC code.
pub const BLOCKS_REJECTED: &str = "wes_server_blocks_rejected_total";
/// Blocks this process applied to the store.
pub const UTXO_BLOCKS_APPLIED: &str = "wes_server_utxo_blocks_applied";

const REQUEST_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install_recorder() -> Result<PrometheusHandle, ServerError> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.to_owned()), REQUEST_BUCKETS)
                .map_err(|error| error.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|error| {
                format!("another metrics recorder is installed in this process ({error})")
            })?;
            Ok(handle)
        })
        .clone()
        .map_err(ServerError::Metrics)
}

/// Registers the pipeline's counters at zero (see the module docs).
pub(crate) fn register_zeroes() {
    for name in [
        client::NOTIFICATIONS,
        client::DEFERRED,
        client::BACKPRESSURE,
        client::BLOCKS_APPLIED,
        client::STALE,
        client::RETRIES,
        client::CALLS_REJECTED,
        client::ROLLBACKS,
        client::COORDINATOR_RUNS,
        BLOCKS_SUBMITTED,
        BLOCKS_ROLLED_BACK,
    ] {
        metrics::counter!(name).increment(0);
    }
    for source in ["notifier", "coordinator"] {
        metrics::counter!(client::BATCHES, "source" => source).increment(0);
    }
    for kind in ["unavailable", "timeout", "rejected"] {
        metrics::counter!(client::CALL_ERRORS, "kind" => kind).increment(0);
    }
    for to in ["open", "half_open", "closed"] {
        metrics::counter!(client::BREAKER_TRANSITIONS, "to" => to).increment(0);
    }
}

/// Refreshes the derived gauges before a scrape.
pub(crate) type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    refresh: Refresh,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            let refresh = refresh.clone();
            async move {
                refresh();
                handle.render()
            }
        }),
    );
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
}

/// Binds the metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}
