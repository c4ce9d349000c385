//! Takhin's HTTP surfaces: the Confluent-compatible Schema Registry ([`registry`]) and the
//! Admin API ([`admin`]), each an axum service on its own listener. They reach the broker
//! in process ([`inproc`]); every route has request metrics, a tracing span and a body
//! limit. The REST proxy joins them here.

pub mod admin;
pub mod error;
pub mod inproc;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use takhin_broker::Broker;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::ApiError;

/// Largest request body any route accepts (a schema with its references fits easily).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Where each surface listens; `None` disables it.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub schema_registry_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// A listener serving only /metrics (the Admin API serves them too).
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding the {what} listener {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("schema registry: {0}")]
    Registry(ApiError),
}

/// The running surfaces and where they listen.
pub struct RunningHttp {
    pub schema_registry_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningHttp {
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Records `takhin_http_requests_total` and `takhin_http_request_duration_seconds` by
/// surface, route template and status.
async fn observe(surface: &'static str, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("takhin_http_requests_total", "surface" => surface, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("takhin_http_request_duration_seconds", "surface" => surface, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Adds the shared layers: body limit, metrics, tracing spans.
pub fn layered(router: Router, surface: &'static str) -> Router {
    router
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| observe(surface, request, next),
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn serve(
    tasks: &mut JoinSet<()>,
    stop: &watch::Sender<bool>,
    what: &'static str,
    addr: SocketAddr,
    router: Router,
) -> Result<SocketAddr, HttpError> {
    let bind = |source| HttpError::Bind { what, addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let mut stopped = stop.subscribe();
    tasks.spawn(async move {
        let served = axum::serve(listener, layered(router, what))
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "{what} listener stopped");
        }
    });
    tracing::info!(%local, "{what} listening");
    Ok(local)
}

/// Starts every enabled surface over `broker`.
pub async fn start(broker: Arc<Broker>, config: &HttpConfig) -> Result<RunningHttp, HttpError> {
    let (stop, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut running = RunningHttp {
        schema_registry_addr: None,
        admin_addr: None,
        metrics_addr: None,
        stop,
        tasks: JoinSet::new(),
    };
    if let Some(addr) = config.schema_registry_listen {
        let kafka = inproc::InProcess::new(Arc::clone(&broker), "takhin-schema-registry");
        let registry = registry::Registry::open(kafka)
            .await
            .map_err(HttpError::Registry)?;
        running.schema_registry_addr = Some(
            serve(
                &mut tasks,
                &running.stop,
                "schema registry",
                addr,
                registry::routes::router(Arc::new(registry)),
            )
            .await?,
        );
    }
    let metrics = if config.admin_listen.is_some() || config.metrics_listen.is_some() {
        match takhin_broker::metrics::recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "no /metrics: another recorder was installed first");
                None
            }
        }
    } else {
        None
    };
    if let Some(addr) = config.admin_listen {
        let router = admin::router(Arc::clone(&broker), metrics.clone());
        running.admin_addr = Some(serve(&mut tasks, &running.stop, "admin", addr, router).await?);
    }
    if let Some(addr) = config.metrics_listen {
        running.metrics_addr = Some(
            serve(
                &mut tasks,
                &running.stop,
                "metrics",
                addr,
                admin::metrics_router(metrics),
            )
            .await?,
        );
    }
    running.tasks = tasks;
    Ok(running)
}
