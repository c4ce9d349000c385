//! The batch processor: drains the notification queue, coalesces the events into one target
//! height, and syncs the UTXO system up to it through the [`Applier`].
//!
//! After the first event it takes whatever else is queued without waiting, then waits up to
//! `max_batch_delay` for more while fewer than `max_batch_blocks` events are in hand.
//! Consecutive events (h, h+1, ..) so become one `apply_blocks` call of their blocks, read
//! from the repository; a hole between events (a deferred notification) is filled in the same
//! pass, in order, because the applier always starts from the UTXO tip. An event whose hash
//! the repository no longer holds at its height (a reorg since) is stale and ignored. A
//! failed sync is recorded in the health monitor; the sync coordinator retries it.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::coordinator::{Applier, Source};
use crate::metrics::{names, Stats};
use crate::system::{Tip, UtxoSystem};

pub(crate) struct BatchProcessor<S> {
    pub(crate) applier: Arc<Applier<S>>,
    pub(crate) receiver: mpsc::Receiver<Tip>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl<S: UtxoSystem> BatchProcessor<S> {
    pub(crate) async fn run(mut self) {
        let config = self.applier.config.clone();
        let mut events: Vec<Tip> = Vec::with_capacity(config.max_batch_blocks);
        loop {
            let first = tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                event = self.receiver.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            events.clear();
            events.push(first);
            let deadline = Instant::now() + config.max_batch_delay;
            while events.len() < config.max_batch_blocks {
                match self.receiver.try_recv() {
                    Ok(event) => events.push(event),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if config.max_batch_delay.is_zero() {
                            break;
                        }
                        match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                            Ok(Some(event)) => events.push(event),
                            _ => break,
                        }
                    }
                }
            }
            metrics::gauge!(names::QUEUE_DEPTH).set(self.receiver.len() as f64);
            let mut target = None;
            for event in &events {
                match self.applier.source.holds(*event) {
                    Ok(true) => target = target.max(Some(event.height)),
                    Ok(false) => {
                        Stats::add(&self.applier.stats.stale, 1);
                        metrics::counter!(names::STALE).increment(1);
                    }
                    // Unreadable repository: let the sync report it.
                    Err(_) => target = target.max(Some(event.height)),
                }
            }
            if let Some(target) = target {
                // Errors are recorded in the health monitor; the coordinator retries.
                let _ = self.applier.sync_to(target, Source::Notifier).await;
            }
        }
    }
}
