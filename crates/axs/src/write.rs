//! The write side (seed steps 1-4): validate, look up the accounts, commit the changes as
//! INIT rows (the outbox), answer, then publish from a bounded worker pool and record each
//! row's partition and offset. A relay re-sends rows a crash or a broker outage left in INIT.
//! When the outbox backlog passes its limit, submits are refused instead of queued.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_lease::{Clock, HolderId, LeaseManager, LeaseManagerConfig, ResourceName};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;

use crate::bus::Publisher;
use crate::metrics as m;
use crate::model::{ChangeRecord, ChangeRequest, LedgerEvent};
use crate::pb;
use crate::store::{LedgerStore, StoreError, Submitted};
use crate::validate::{check_against, parse_batch, Limits, Violation};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid batch: {}", describe(.0))]
    Invalid(Vec<Violation>),
    #[error("refused by account state or hold: {}", describe(.0))]
    Precondition(Vec<Violation>),
    #[error("idempotency key {key} was already used for a different change ({field} differs)")]
    Conflict { key: String, field: &'static str },
    #[error("outbox backlog {backlog} is over its limit {limit}; retry later")]
    Backlog { backlog: i64, limit: i64 },
    #[error(transparent)]
    Store(StoreError),
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.path(), v.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone)]
pub struct WriteConfig {
    pub limits: Limits,
    /// Concurrent publish workers.
    pub publish_workers: usize,
    /// Submits are refused while more rows than this are in INIT.
    pub backlog_limit: i64,
    /// A row still INIT this long after it was created is re-sent by the relay.
    pub relay_after: Duration,
    pub relay_interval: Duration,
    /// Who this node is, for the relay lease.
    pub node_id: String,
    pub lease_ttl: Duration,
}

impl Default for WriteConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            publish_workers: 4,
            backlog_limit: 100_000,
            relay_after: Duration::from_secs(5),
            relay_interval: Duration::from_secs(1),
            node_id: "axs-grpc-1".into(),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// The write side of one gRPC node.
#[derive(Debug)]
pub struct WriteSide {
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    config: WriteConfig,
    /// Rows in INIT: exact at start and after every relay pass, tracked in between.
    backlog: AtomicI64,
    queue: mpsc::Sender<Vec<LedgerEvent>>,
}

/// The background tasks of a write side; dropping it stops them.
pub struct WriteTasks {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl WriteTasks {
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl WriteSide {
    /// Starts the publish workers and the relay.
    pub async fn start(
        store: Arc<dyn LedgerStore>,
        publisher: Arc<Publisher>,
        clock: Arc<dyn Clock>,
        config: WriteConfig,
    ) -> Result<(Arc<Self>, WriteTasks), StoreError> {
        let workers = config.publish_workers.max(1);
        let (queue, receiver) = mpsc::channel(workers * 4);
        let backlog = store.outbox_backlog().await?;
        let write = Arc::new(Self {
            store,
            clock,
            config,
            backlog: AtomicI64::new(i64::try_from(backlog).unwrap_or(i64::MAX)),
            queue,
        });
        metrics::gauge!(m::OUTBOX_BACKLOG).set(backlog as f64);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..workers {
            tasks.spawn(publish_worker(
                Arc::clone(&write),
                Arc::clone(&publisher),
                Arc::clone(&receiver),
                stopped.clone(),
            ));
        }
        tasks.spawn(relay(Arc::clone(&write), publisher, stopped));
        Ok((write, WriteTasks { stop, tasks }))
    }

    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    pub fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Steps 1-2: validates, commits INIT rows, hands them to the publishers and answers.
    pub async fn submit(
        &self,
        changes: Vec<pb::BalanceChange>,
    ) -> Result<Vec<Submitted>, SubmitError> {
        let started = Instant::now();
        let result = self.submit_inner(changes).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(SubmitError::Invalid(_)) => "invalid",
            Err(SubmitError::Precondition(_)) => "precondition",
            Err(SubmitError::Conflict { .. }) => "conflict",
            Err(SubmitError::Backlog { .. }) => "backlog",
            Err(SubmitError::Store(_)) => "error",
        };
        metrics::histogram!(m::SUBMIT_SECONDS, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn submit_inner(
        &self,
        changes: Vec<pb::BalanceChange>,
    ) -> Result<Vec<Submitted>, SubmitError> {
        let backlog = self.backlog();
        if backlog > self.config.backlog_limit {
            return Err(SubmitError::Backlog {
                backlog,
                limit: self.config.backlog_limit,
            });
        }
        let requests = parse_batch(changes, &self.config.limits).map_err(SubmitError::Invalid)?;
        let mut names: Vec<String> = requests.iter().map(|r| r.account.clone()).collect();
        names.sort();
        names.dedup();
        let accounts = self
            .store
            .accounts(&names)
            .await
            .map_err(SubmitError::Store)?;
        let pending_keys: Vec<String> = requests
            .iter()
            .filter(|r| !r.pending_key.is_empty())
            .map(|r| r.pending_key.clone())
            .collect();
        let stored = if pending_keys.is_empty() {
            Default::default()
        } else {
            self.store
                .changes(&pending_keys)
                .await
                .map_err(SubmitError::Store)?
        };
        let checked = check_against(&requests, &accounts, &stored);
        if !checked.invalid.is_empty() {
            return Err(SubmitError::Invalid(checked.invalid));
        }
        if !checked.precondition.is_empty() {
            return Err(SubmitError::Precondition(checked.precondition));
        }
        let now = self.clock.now().0;
        let rows: Vec<(ChangeRequest, u32)> = requests
            .into_iter()
            .map(|r| {
                let shard = accounts.get(&r.account).map_or(0, |a| a.shard);
                (r, shard)
            })
            .collect();
        let submitted = self.store.submit(&rows, now).await.map_err(|e| match e {
            StoreError::KeyConflict { key, field } => SubmitError::Conflict { key, field },
            other => SubmitError::Store(other),
        })?;
        let fresh: Vec<LedgerEvent> = rows
            .into_iter()
            .zip(&submitted)
            .filter(|(_, s)| !s.duplicate)
            .map(|((request, shard), _)| LedgerEvent {
                request,
                shard,
                created_at_ms: now,
            })
            .collect();
        if !fresh.is_empty() {
            let count = fresh.len() as i64;
            let total = self.backlog.fetch_add(count, Ordering::Relaxed) + count;
            metrics::gauge!(m::OUTBOX_BACKLOG).set(total as f64);
            // A full queue leaves the rows in INIT for the relay: memory stays bounded.
            if self.queue.try_send(fresh).is_err() {
                metrics::counter!(m::PUBLISH_DEFERRED).increment(count as u64);
            }
        }
        Ok(submitted)
    }

    /// Steps 3-4 for `events`: publish, then record positions. Returns how many were sent.
    async fn publish(&self, publisher: &Publisher, events: &[LedgerEvent]) -> usize {
        let started = Instant::now();
        let (positions, failed) = publisher.publish(events).await;
        if failed > 0 {
            metrics::counter!(m::PUBLISH_ERRORS).increment(failed as u64);
        }
        metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        if positions.is_empty() {
            return 0;
        }
        match self.store.mark_published(&positions).await {
            Ok(()) => {
                let sent = positions.len() as i64;
                let left = (self.backlog.fetch_sub(sent, Ordering::Relaxed) - sent).max(0);
                metrics::gauge!(m::OUTBOX_BACKLOG).set(left as f64);
                positions.len()
            }
            Err(error) => {
                // The events are on the topic; the rows stay INIT and the relay sends them
                // again, which the consumers drop as duplicates.
                tracing::warn!(%error, "recording published positions failed");
                0
            }
        }
    }
}

async fn publish_worker(
    write: Arc<WriteSide>,
    publisher: Arc<Publisher>,
    receiver: Arc<Mutex<mpsc::Receiver<Vec<LedgerEvent>>>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            tokio::select! {
                batch = receiver.recv() => batch,
                _ = stopped.changed() => None,
            }
        };
        let Some(batch) = batch else { return };
        write.publish(&publisher, &batch).await;
    }
}

/// Re-sends rows left in INIT. One relay runs at a time across the gRPC nodes (lease
/// `axs/relay`); every node still refreshes its own backlog count.
async fn relay(
    write: Arc<WriteSide>,
    publisher: Arc<Publisher>,
    mut stopped: watch::Receiver<bool>,
) {
    let resource = match ResourceName::new("axs/relay") {
        Ok(resource) => resource,
        Err(error) => {
            tracing::error!(%error, "relay lease name");
            return;
        }
    };
    let holder = match HolderId::new(write.config.node_id.clone()) {
        Ok(holder) => holder,
        Err(error) => {
            tracing::error!(%error, "relay holder id");
            return;
        }
    };
    let mut guard = None;
    let mut ticker = tokio::time::interval(write.config.relay_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        if let Ok(count) = write.store.outbox_backlog().await {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            write.backlog.store(count, Ordering::Relaxed);
            metrics::gauge!(m::OUTBOX_BACKLOG).set(count as f64);
        }
        let held = matches!(&guard, Some(g) if ledger_lease::LeaseGuard::lease(g).is_some());
        if !held {
            guard = LeaseManager::acquire(
                write.store.leases(),
                &resource,
                &holder,
                LeaseManagerConfig::new(write.config.lease_ttl),
            )
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "relay lease");
                None
            });
            if guard.is_none() {
                continue;
            }
        }
        let cutoff = write.clock.now().0 - write.config.relay_after.as_millis() as i64;
        let rows: Vec<ChangeRecord> = match write.store.outbox(cutoff, 1000).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "reading the outbox");
                continue;
            }
        };
        if rows.is_empty() {
            continue;
        }
        let events: Vec<LedgerEvent> = rows
            .into_iter()
            .map(|row| LedgerEvent {
                request: row.request,
                shard: row.shard,
                created_at_ms: row.created_at_ms,
            })
            .collect();
        let sent = write.publish(&publisher, &events).await;
        metrics::counter!(m::RELAYED).increment(sent as u64);
        tracing::info!(found = events.len(), sent, "relay re-sent outbox rows");
    }
    if let Some(guard) = guard {
        let _ = guard.release().await;
    }
}
