//! Lifecycle events for WatchEvents, derived from the store rather than from the loops
//! that cause them: the allocator, submitter, finality, policy and reconciler write every
//! change to `managed_tx` / `tx_attempt` (on whichever node holds the signer), so one
//! reader of the records changed since the last read sees them all, on any node.
//!
//! The reader starts with the first subscriber, reads every [`EVENT_POLL`], looks back
//! [`EVENT_OVERLAP`] each time for commits that landed late (writers stamp with their own
//! clocks), and remembers each record's last state for [`EVENT_MEMORY`] to tell what
//! changed: new record -> `ALLOCATED`; to `Tracking` -> `SUBMITTED` (`RESUBMITTED` once
//! it has more than one attempt, or when a `Tracking` record gains an attempt);
//! `Confirmed` -> `Tracking` -> `REORGED`; to `Confirmed`, `Failed`, `Reconciling` -> the
//! same. Delivery is at most once per subscriber: a subscriber that falls
//! [`crate::config::EVENT_BUFFER`] events behind gets a DATA_LOSS status and may watch
//! again.

use std::collections::HashMap;
use std::sync::Arc;

use ledger_lease::{Clock, UnixMillis};
use nonce_manager::TxStatus;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::config::{EVENT_BUFFER, EVENT_MEMORY, EVENT_OVERLAP, EVENT_POLL, EVENT_READ_MAX};
use crate::convert;
use crate::db::{ChangeRow, Db};
use crate::proto::{EventKind, TransactionEvent};

/// The event feed of one node.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<TransactionEvent>,
    reader: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(EVENT_BUFFER).0,
            reader: std::sync::Mutex::new(None),
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(reader) = self.lock().take() {
            reader.abort();
        }
    }
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver of every event from now on; starts the reader on first use.
    pub(crate) fn subscribe(
        &self,
        db: &Db,
        clock: &Arc<dyn Clock>,
    ) -> broadcast::Receiver<TransactionEvent> {
        let receiver = self.sender.subscribe();
        let mut reader = self.lock();
        if reader.is_none() {
            *reader = Some(tokio::spawn(read_changes(
                db.clone(),
                clock.clone(),
                self.sender.clone(),
            )));
        }
        receiver
    }
}

/// A record's state as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    status: TxStatus,
    attempts: u64,
    updated_at_ms: i64,
}

/// The events one change means, given the previous state (if remembered) and when the
/// reader started (records created before it are not announced as allocated).
fn events_of(previous: Option<Seen>, row: &ChangeRow, started_ms: i64) -> Vec<EventKind> {
    use EventKind::*;
    let state_event = |status: TxStatus, attempts: u64| match status {
        TxStatus::Pending => None,
        TxStatus::Tracking if attempts > 1 => Some(Resubmitted),
        TxStatus::Tracking => Some(Submitted),
        TxStatus::Confirmed => Some(Confirmed),
        TxStatus::Failed => Some(Failed),
        TxStatus::Reconciling => Some(Reconciling),
    };
    match previous {
        None => {
            let mut kinds = Vec::new();
            if row.created_at_ms >= started_ms {
                kinds.push(Allocated);
            }
            kinds.extend(state_event(row.status, row.attempts));
            kinds
        }
        Some(seen) if seen.status != row.status => {
            if seen.status == TxStatus::Confirmed && row.status == TxStatus::Tracking {
                vec![Reorged]
            } else {
                state_event(row.status, row.attempts).into_iter().collect()
            }
        }
        Some(seen) if row.attempts > seen.attempts && row.status == TxStatus::Tracking => {
            vec![Resubmitted]
        }
        Some(_) => Vec::new(),
    }
}

async fn read_changes(db: Db, clock: Arc<dyn Clock>, sender: broadcast::Sender<TransactionEvent>) {
    let started = clock.now();
    let mut since = started.saturating_sub(EVENT_OVERLAP);
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut interval = tokio::time::interval(EVENT_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let rows = match db.changes_since(since).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "event reader: reading changes failed");
                continue;
            }
        };
        let full = rows.len() >= usize::try_from(EVENT_READ_MAX).unwrap_or(usize::MAX);
        let mut newest = since.0;
        for row in &rows {
            newest = newest.max(row.updated_at_ms);
            let previous = seen.get(&row.request_id).copied();
            let now_seen = Seen {
                status: row.status,
                attempts: row.attempts,
                updated_at_ms: row.updated_at_ms,
            };
            if previous.is_some_and(|p| p.status == row.status && p.attempts == row.attempts) {
                continue;
            }
            for kind in events_of(previous, row, started.0) {
                let _ = sender.send(TransactionEvent {
                    kind: kind.into(),
                    request_id: row.request_id.clone(),
                    signer: row.signer.clone(),
                    nonce: row.nonce,
                    tx_hash: row.last_hash.clone().unwrap_or_default(),
                    status: convert::status(row.status).into(),
                    at_ms: row.updated_at_ms,
                });
            }
            seen.insert(row.request_id.clone(), now_seen);
        }
        since = if full {
            UnixMillis(newest)
        } else {
            UnixMillis(newest).saturating_sub(EVENT_OVERLAP).max(since)
        };
        let forget_before = clock.now().saturating_sub(EVENT_MEMORY).0;
        seen.retain(|_, state| state.updated_at_ms >= forget_before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: TxStatus, attempts: u64, created_at_ms: i64) -> ChangeRow {
        ChangeRow {
            request_id: "r".into(),
            signer: "0x".into(),
            nonce: 0,
            status,
            created_at_ms,
            updated_at_ms: created_at_ms,
            attempts,
            last_hash: None,
        }
    }

    fn seen(status: TxStatus, attempts: u64) -> Option<Seen> {
        Some(Seen {
            status,
            attempts,
            updated_at_ms: 0,
        })
    }

    fn check(previous: Option<Seen>, now: ChangeRow, expect: &[EventKind]) {
        assert_eq!(
            events_of(previous, &now, 100),
            expect,
            "{previous:?} -> {now:?}"
        );
    }

    #[test]
    fn event_kinds() {
        use EventKind::*;
        use TxStatus as S;
        check(None, row(S::Pending, 0, 150), &[Allocated]);
        check(None, row(S::Tracking, 1, 150), &[Allocated, Submitted]);
        check(None, row(S::Tracking, 1, 50), &[Submitted]);
        check(seen(S::Pending, 0), row(S::Pending, 1, 150), &[]);
        check(seen(S::Pending, 1), row(S::Tracking, 1, 150), &[Submitted]);
        check(
            seen(S::Tracking, 1),
            row(S::Tracking, 2, 150),
            &[Resubmitted],
        );
        check(
            seen(S::Tracking, 2),
            row(S::Confirmed, 2, 150),
            &[Confirmed],
        );
        check(seen(S::Confirmed, 1), row(S::Tracking, 1, 150), &[Reorged]);
        check(seen(S::Tracking, 1), row(S::Failed, 1, 150), &[Failed]);
        check(
            seen(S::Pending, 1),
            row(S::Reconciling, 1, 150),
            &[Reconciling],
        );
    }
}
