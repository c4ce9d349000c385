//! Background work on every partition: retention, compaction, interval flushes
//! and the gauges behind `/metrics`. Each job runs on the blocking pool, one
//! partition at a time, so produce and fetch keep their runtime threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use takhin_log::{CleanupPolicy, FlushPolicy, PartitionLog};
use tokio::task::JoinSet;

use crate::metrics as m;
use crate::{now_ms, Broker};

/// Gauges are refreshed at this pace.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) fn spawn_all(broker: &Arc<Broker>, tasks: &mut JoinSet<()>) {
    let retention = Duration::from_millis(broker.config.log_retention_check_interval_ms.max(10));
    tasks.spawn(every(broker.clone(), retention, |broker| {
        for_each_partition(broker, |topic, index, log| {
            match log.enforce_retention(now_ms()) {
                Ok(report) if report.segments_deleted > 0 => {
                    tracing::info!(
                        topic,
                        partition = index,
                        segments = report.segments_deleted,
                        bytes = report.bytes_deleted,
                        "retention deleted segments"
                    );
                    metrics::counter!(m::RETENTION_DELETED)
                        .increment(report.segments_deleted as u64);
                }
                Ok(_) => {}
                Err(error) => tracing::error!(topic, partition = index, %error, "retention failed"),
            }
        })
    }));
    let cleaner = Duration::from_millis(broker.config.log_cleaner_interval_ms.max(10));
    tasks.spawn(every(broker.clone(), cleaner, |broker| {
        for_each_partition(broker, |topic, index, log| {
            if matches!(log.config().cleanup_policy, CleanupPolicy::Delete) {
                return;
            }
            match log.compact(now_ms()) {
                Ok(report) if report.records_removed > 0 => {
                    tracing::info!(
                        topic,
                        partition = index,
                        removed = report.records_removed,
                        before = report.bytes_before,
                        after = report.bytes_after,
                        "compacted"
                    );
                    metrics::counter!(m::COMPACTION_REMOVED).increment(report.records_removed);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(topic, partition = index, %error, "compaction failed")
                }
            }
        })
    }));
    if let FlushPolicy::Interval(interval) = broker.config.flush.policy() {
        tasks.spawn(every(broker.clone(), interval, |broker| {
            for_each_partition(broker, |topic, index, log| {
                if let Err(error) = log.flush() {
                    tracing::error!(topic, partition = index, %error, "flush failed");
                }
            })
        }));
    }
    tasks.spawn(every(broker.clone(), GAUGE_INTERVAL, update_gauges));
}

/// Runs `job` on the blocking pool every `interval` until shutdown.
async fn every(broker: Arc<Broker>, interval: Duration, job: fn(&Broker)) {
    let mut shutdown = broker.shutdown_signal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // wait_for also sees a shutdown sent before this task first ran.
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let broker = broker.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || job(&broker)).await {
            tracing::error!(%error, "background job panicked");
        }
    }
}

fn for_each_partition(broker: &Broker, mut job: impl FnMut(&str, i32, &PartitionLog)) {
    for topic in broker.topics.all() {
        for (index, log) in topic.partitions().iter().enumerate() {
            job(&topic.name, index as i32, log);
        }
    }
}

fn update_gauges(broker: &Broker) {
    let mut log_ends: HashMap<(String, i32), i64> = HashMap::new();
    for_each_partition(broker, |topic, index, log| {
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", index.to_string()),
        ];
        let end = log.log_end_offset();
        metrics::gauge!(m::PARTITION_SIZE, &labels).set(log.size_bytes() as f64);
        metrics::gauge!(m::PARTITION_START, &labels).set(log.log_start_offset() as f64);
        metrics::gauge!(m::PARTITION_END, &labels).set(end as f64);
        metrics::gauge!(m::PARTITION_SEGMENTS, &labels).set(log.segment_count() as f64);
        log_ends.insert((topic.to_owned(), index), end);
    });
    for (group, topic, partition, offset) in broker.groups.committed_offsets() {
        if let Some(end) = log_ends.get(&(topic.clone(), partition)) {
            let labels = [
                ("group", group),
                ("topic", topic),
                ("partition", partition.to_string()),
            ];
            metrics::gauge!(m::GROUP_LAG, &labels).set((end - offset).max(0) as f64);
        }
    }
}
