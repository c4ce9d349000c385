//! Idempotent-producer state: per producer id the epoch and the last few appended batches, used to
//! detect duplicates and sequence gaps exactly like Kafka's ProducerStateManager (without snapshots:
//! the state is rebuilt from batch headers on open).

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::error::LogError;

/// Kafka keeps this many batches per producer for duplicate detection (max.in.flight = 5).
pub const CACHED_BATCHES: usize = 5;

/// A batch remembered for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What the log knows about one producer id.
#[derive(Clone, Debug, Default)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<CachedBatch>,
    /// `now_ms` of the last append (the batch's max timestamp when replayed on open); entries
    /// older than `producer_id_expiration_ms` are dropped.
    pub last_timestamp: i64,
}

/// Outcome of a sequence check.
#[derive(Clone, Copy, Debug)]
pub enum SeqCheck {
    Append,
    Duplicate(CachedBatch),
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Checks a batch of producer `h.producer_id` against its known state (`None` = unknown producer,
/// which accepts any sequence because the log may have lost its state, as Kafka does).
pub fn check(entry: Option<&ProducerEntry>, h: &BatchHeader) -> Result<SeqCheck, LogError> {
    let Some(e) = entry else {
        return Ok(SeqCheck::Append);
    };
    if h.producer_epoch < e.epoch {
        return Err(LogError::InvalidProducerEpoch {
            producer_id: h.producer_id,
            current: e.epoch,
            got: h.producer_epoch,
        });
    }
    // Control markers and sequence-less batches only take part in fencing.
    if h.is_control() || h.base_sequence < 0 {
        return Ok(SeqCheck::Append);
    }
    if h.producer_epoch > e.epoch {
        // A bumped epoch restarts the sequence space.
        if h.base_sequence != 0 {
            return Err(LogError::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected: 0,
                got: h.base_sequence,
            });
        }
        return Ok(SeqCheck::Append);
    }
    let last_seq = h.last_sequence();
    if let Some(dup) = e
        .batches
        .iter()
        .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
    {
        return Ok(SeqCheck::Duplicate(*dup));
    }
    match e.batches.back() {
        Some(last) if next_seq(last.last_seq) != h.base_sequence => {
            Err(LogError::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected: next_seq(last.last_seq),
                got: h.base_sequence,
            })
        }
        _ => Ok(SeqCheck::Append),
    }
}

/// Records an appended (or replayed) batch into `entry`.
pub fn record(entry: &mut ProducerEntry, h: &BatchHeader, base_offset: i64, last_offset: i64) {
    if h.producer_epoch != entry.epoch {
        entry.epoch = h.producer_epoch;
        entry.batches.clear();
    }
    if h.is_control() || h.base_sequence < 0 {
        return;
    }
    entry.batches.push_back(CachedBatch {
        first_seq: h.base_sequence,
        last_seq: h.last_sequence(),
        base_offset,
        last_offset,
    });
    while entry.batches.len() > CACHED_BATCHES {
        entry.batches.pop_front();
    }
}

/// All producers of one partition.
#[derive(Debug, Default)]
pub struct ProducerStateMap {
    map: HashMap<i64, ProducerEntry>,
}

impl ProducerStateMap {
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.map.get(&producer_id)
    }

    pub fn insert(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.map.insert(producer_id, entry);
    }

    /// Recovery: replays a stored batch header without checks (the log is the source of truth).
    pub fn replay(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        let entry = self
            .map
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: h.max_timestamp,
            });
        // Replay in log order; an older epoch cannot legitimately follow a newer one, skip it.
        if h.producer_epoch < entry.epoch {
            return;
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
        record(entry, h, h.base_offset, h.last_offset());
    }

    /// Drops producers whose last append is more than `expiration_ms` before `now_ms`
    /// (Kafka's `producer.id.expiration.ms`). Returns how many were dropped.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: u64) -> usize {
        let horizon = now_ms.saturating_sub(i64::try_from(expiration_ms).unwrap_or(i64::MAX));
        let before = self.map.len();
        self.map.retain(|_, e| e.last_timestamp >= horizon);
        before - self.map.len()
    }
}

/// Sequence the producer must send next (0 when nothing is cached).
pub fn expected_next(entry: &ProducerEntry) -> i32 {
    entry.batches.back().map_or(0, |b| next_seq(b.last_seq))
}
