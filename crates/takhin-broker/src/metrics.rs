//! Metric names and the Prometheus exporter. Names live here so the set of
//! series an operator can scrape is visible in one place.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "takhin_requests_total";
pub const REQUEST_DURATION: &str = "takhin_request_duration_seconds";
pub const BYTES_IN: &str = "takhin_bytes_in_total";
pub const BYTES_OUT: &str = "takhin_bytes_out_total";
pub const RECORDS_IN: &str = "takhin_records_in_total";
pub const CONNECTIONS: &str = "takhin_connections";
pub const BAD_FRAMES: &str = "takhin_bad_frames_total";
pub const PARTITION_SIZE: &str = "takhin_partition_log_size_bytes";
pub const PARTITION_START: &str = "takhin_partition_log_start_offset";
pub const PARTITION_END: &str = "takhin_partition_log_end_offset";
pub const PARTITION_SEGMENTS: &str = "takhin_partition_segments";
pub const GROUP_LAG: &str = "takhin_consumer_group_lag";
pub const RETENTION_DELETED: &str = "takhin_retention_segments_deleted_total";
pub const COMPACTION_REMOVED: &str = "takhin_compaction_records_removed_total";

fn builder() -> Result<PrometheusBuilder, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REQUEST_DURATION.to_owned()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|error| error.to_string())
}

/// Installs the global recorder and serves `/metrics` on `listen`. Must be called
/// inside a tokio runtime. Installing twice (as tests that start several brokers
/// in one process do) keeps the first recorder.
pub fn install(listen: SocketAddr) -> Result<(), String> {
    builder()?
        .with_http_listener(listen)
        .install()
        .map_err(|error| error.to_string())
}

static RECORDER: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// Installs the global recorder without a listener and returns the handle that renders
/// it (the Admin API serves `/metrics` with it). Later calls return the same handle;
/// `Err` when another recorder was installed in this process first.
pub fn recorder() -> Result<PrometheusHandle, String> {
    if let Some(handle) = RECORDER.get() {
        return Ok(handle.clone());
    }
    let handle = builder()?
        .install_recorder()
        .map_err(|error| error.to_string())?;
    Ok(RECORDER.get_or_init(|| handle).clone())
}
