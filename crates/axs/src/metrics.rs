//! Names of the Prometheus metrics AXS emits (deploy/axs/ alerts and dashboard use them).

/// Histogram, label `outcome` (ok, invalid, precondition, conflict, backlog, error).
pub const SUBMIT_SECONDS: &str = "axs_submit_seconds";
/// Gauge: rows in INIT on this node's view.
pub const OUTBOX_BACKLOG: &str = "axs_outbox_backlog";
/// Counter: events the producer failed to deliver (their rows stay INIT).
pub const PUBLISH_ERRORS: &str = "axs_publish_errors_total";
/// Counter: events left to the relay because the publish queue was full.
pub const PUBLISH_DEFERRED: &str = "axs_publish_deferred_total";
/// Histogram: one publish round (send and record positions).
pub const PUBLISH_SECONDS: &str = "axs_publish_seconds";
/// Counter: events the relay re-sent.
pub const RELAYED: &str = "axs_relayed_total";
/// Gauge, label `partition`: high watermark minus the next offset to apply.
pub const CONSUMER_LAG: &str = "axs_consumer_lag";
/// Histogram: changes per applied batch.
pub const BATCH_CHANGES: &str = "axs_batch_changes";
/// Histogram: snapshot, plan and fenced commit of one batch.
pub const APPLY_SECONDS: &str = "axs_apply_seconds";
/// Counter, label `outcome`: applied, rejected, duplicate.
pub const CHANGES: &str = "axs_changes_total";
/// Counter, label `reason`.
pub const REJECTED: &str = "axs_rejected_changes_total";
/// Counter, label `event` (acquired, lost, released).
pub const LEASE_CHANGES: &str = "axs_lease_changes_total";
/// Gauge: partitions this consumer holds.
pub const OWNED_PARTITIONS: &str = "axs_owned_partitions";
/// Counter: batches refused by the fence (a newer leader holds the partition).
pub const FENCED_BATCHES: &str = "axs_fenced_batches_total";
/// Counter: cache writes refused because the cache held the same or a newer version.
pub const CACHE_STALE_WRITES: &str = "axs_cache_stale_writes_total";
/// Histogram: submit (row created) to applied, per change.
pub const SUBMIT_TO_APPLIED_SECONDS: &str = "axs_submit_to_applied_seconds";
/// Counter: records on the ledger topic that are not ledger events (skipped).
pub const MALFORMED_EVENTS: &str = "axs_malformed_events_total";

/// Installs the Prometheus recorder for an AXS role and serves `/metrics` on `listen`, with
/// latency buckets fit for the alert rules in deploy/axs/.
pub fn install(listen: std::net::SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let sizes = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];
    let mut builder = PrometheusBuilder::new().with_http_listener(listen);
    for name in [
        SUBMIT_SECONDS,
        PUBLISH_SECONDS,
        APPLY_SECONDS,
        SUBMIT_TO_APPLIED_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), &latency)
            .map_err(|error| error.to_string())?;
    }
    builder
        .set_buckets_for_metric(Matcher::Full(BATCH_CHANGES.to_owned()), &sizes)
        .map_err(|error| error.to_string())?
        .install()
        .map_err(|error| error.to_string())
}
