//! The async notifier: a bounded tokio mpsc queue of block-added events (height, hash).
//!
//! A producer never waits longer than `notify_timeout`: it tries the queue, and if the queue
//! is full it waits for room up to the timeout (counted as backpressure). If there is still
//! no room the event is *deferred*, not lost: the block is already in the repository (the
//! outbox), so the sync coordinator is woken and replays it from there.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::error::{ClientError, Result};
use crate::metrics::{names, Stats};
use crate::system::Tip;

/// What happened to a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// Queued for the batch processor.
    Queued,
    /// The queue stayed full past the timeout; the sync coordinator will apply the block.
    Deferred,
}

/// The producer side of the queue (cheap to clone).
#[derive(Clone)]
pub struct Notifier {
    sender: mpsc::Sender<Tip>,
    timeout: Duration,
    stats: Arc<Stats>,
    wake_coordinator: Arc<Notify>,
}

impl Notifier {
    /// A queue of `capacity` events; returns the notifier and the receiver for the batch
    /// processor. `wake_coordinator` is notified when an event is deferred.
    pub fn new(
        capacity: usize,
        timeout: Duration,
        stats: Arc<Stats>,
        wake_coordinator: Arc<Notify>,
    ) -> (Self, mpsc::Receiver<Tip>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (
            Self {
                sender,
                timeout,
                stats,
                wake_coordinator,
            },
            receiver,
        )
    }

    /// Events waiting in the queue.
    pub fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Capacity of the queue.
    pub fn capacity(&self) -> usize {
        self.sender.max_capacity()
    }

    /// Queues the event for the block at `tip` (see the module docs).
    pub async fn notify(&self, tip: Tip) -> Result<NotifyOutcome> {
        let event = match self.sender.try_send(tip) {
            Ok(()) => return Ok(self.queued()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ClientError::Closed),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        Stats::add(&self.stats.backpressure, 1);
        metrics::counter!(names::BACKPRESSURE).increment(1);
        match self.sender.send_timeout(event, self.timeout).await {
            Ok(()) => Ok(self.queued()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(ClientError::Closed),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                Stats::add(&self.stats.deferred, 1);
                metrics::counter!(names::DEFERRED).increment(1);
                self.wake_coordinator.notify_one();
                Ok(NotifyOutcome::Deferred)
            }
        }
    }

    fn queued(&self) -> NotifyOutcome {
        Stats::add(&self.stats.notifications, 1);
        metrics::counter!(names::NOTIFICATIONS).increment(1);
        NotifyOutcome::Queued
    }
}
