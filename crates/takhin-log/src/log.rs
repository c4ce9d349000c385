//! [`PartitionLog`]: the segment map, offset assignment and append path, reads, recovery on open,
//! retention, flushing and clean shutdown. Compaction lives in `compaction.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use parking_lot::Mutex;

use crate::batch::{self, BatchHeader, PayloadBatch, MIN_BATCH_LENGTH};
use crate::config::{FlushPolicy, LogConfig, TimestampType};
use crate::error::LogError;
use crate::producer::{self, ProducerEntry, ProducerStateMap, SeqCheck};
use crate::segment::{self, ScanMode, Segment};

/// Present in the log directory only between a clean `close` and the next `open`.
const CLEAN_SHUTDOWN_FILE: &str = "clean_shutdown";
/// Offset below which all data is known to be fsynced; unclean recovery CRC-checks from there.
const RECOVERY_POINT_FILE: &str = "recovery_point";
/// A read that lands in a compaction gap at a segment's end may walk on; bound how far (in
/// non-empty segments: empty ones are skipped without counting).
const MAX_READ_SEGMENTS: usize = 8;

/// Result of a successful append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The stamped time with LogAppendTime, -1 with CreateTime.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    pub record_count: u64,
    pub bytes: u64,
    /// The batch was already in the log (idempotent retry); nothing was appended.
    pub duplicate: bool,
}

/// Result of a read: whole batches exactly as stored.
#[derive(Clone, Debug)]
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_cleaned: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// State guarded by the log lock.
pub(crate) struct Inner {
    pub config: LogConfig,
    /// Never empty: the last segment is the active one.
    pub segments: BTreeMap<i64, Segment>,
    pub log_start: i64,
    pub producers: ProducerStateMap,
    unflushed_bytes: u64,
    last_flush_ms: Option<i64>,
    clean_marker: bool,
    /// Log end offset up to which everything is known to be fsynced.
    flushed_end: i64,
    /// Last value written to the recovery point file.
    recovery_point: i64,
    /// Segments rolled but not yet made durable (fsync, index files, directory); completed
    /// outside this lock by [`PartitionLog::sync_pending`], in order.
    pending_seals: Vec<PendingSeal>,
}

/// A rolled segment whose durability work is still to be done.
#[derive(Clone, Debug)]
pub(crate) struct PendingSeal {
    base: i64,
    file: Arc<File>,
    /// One past its last offset, i.e. the new active segment's base.
    end: i64,
}

impl Inner {
    pub fn active(&self) -> &Segment {
        match self.segments.last_key_value() {
            Some((_, s)) => s,
            None => unreachable!("a partition log always has an active segment"),
        }
    }

    pub fn active_mut(&mut self) -> &mut Segment {
        match self.segments.last_entry() {
            Some(e) => e.into_mut(),
            None => unreachable!("a partition log always has an active segment"),
        }
    }

    pub fn log_end(&self) -> i64 {
        self.active().next_offset
    }

    /// The log is about to change: a stale clean-shutdown marker must not survive it.
    pub fn mark_dirty(&mut self, dir: &Path) {
        if self.clean_marker {
            self.clean_marker = false;
            if let Err(e) = std::fs::remove_file(dir.join(CLEAN_SHUTDOWN_FILE)) {
                tracing::warn!(error = %e, "failed to remove clean shutdown marker");
            }
        }
    }
}

/// A partition's log. Internally synchronised; share it as `Arc<PartitionLog>`.
pub struct PartitionLog {
    pub(crate) dir: PathBuf,
    pub(crate) inner: Mutex<Inner>,
    /// Serialises compactions; they run mostly outside `inner`.
    pub(crate) compact_lock: Mutex<()>,
    /// Serialises fsyncs and recovery point writes, which happen outside `inner` (so appends
    /// and reads never wait for the disk). Lock order: `flush_lock` before `inner`.
    flush_lock: Mutex<()>,
}

fn read_recovery_point(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(RECOVERY_POINT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_recovery_point(dir: &Path, offset: i64) -> std::io::Result<()> {
    segment::write_synced(
        &dir.join(RECOVERY_POINT_FILE),
        offset.to_string().as_bytes(),
    )
}

/// Loads one segment file, validating it (`full` = with CRCs) and truncating it at the first
/// invalid batch. Returns the segment, its batch headers in order, and whether it was truncated.
fn load_segment(
    dir: &Path,
    base: i64,
    full: bool,
    config: &LogConfig,
) -> Result<(Segment, Vec<BatchHeader>, bool), LogError> {
    let file = Arc::new(segment::open_rw(&segment::log_path(dir, base))?);
    let mut batches: Vec<(BatchHeader, u64)> = Vec::new();
    let mut mode = if full {
        ScanMode::Full
    } else {
        ScanMode::Headers
    };
    let outcome = loop {
        batches.clear();
        let outcome = segment::scan(&file, base, mode, |h, pos| batches.push((*h, pos)))?;
        if outcome.problem.is_some() && mode == ScanMode::Headers {
            // A sealed segment that looks damaged gets the full treatment before truncating.
            mode = ScanMode::Full;
            continue;
        }
        break outcome;
    };
    let truncated = if let Some(problem) = &outcome.problem {
        tracing::warn!(
            dir = %dir.display(),
            base_offset = base,
            position = outcome.valid_len,
            problem = %problem,
            "truncating log segment at first invalid batch"
        );
        file.set_len(outcome.valid_len)?;
        file.sync_all()?;
        true
    } else {
        false
    };
    let mut seg = Segment::new(base, file);
    for (h, pos) in &batches {
        seg.track_batch(h, *pos, config.index_interval_bytes);
    }
    seg.first_append_ms = batches.first().map(|(h, _)| h.max_timestamp);
    Ok((
        seg,
        batches.into_iter().map(|(h, _)| h).collect(),
        truncated,
    ))
}

/// Header-only walk from `start` to `end`, for reads. Stops quietly at anything malformed since
/// the data was validated when written or recovered.
pub(crate) fn headers_from(
    file: &File,
    start: u64,
    end: u64,
    mut f: impl FnMut(&BatchHeader, u64) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    let mut pos = start;
    while let Some(h) = segment::read_header(file, pos, end)? {
        if h.batch_length < MIN_BATCH_LENGTH || pos + h.total_size() as u64 > end {
            break;
        }
        if !f(&h, pos)? {
            break;
        }
        pos += h.total_size() as u64;
    }
    Ok(())
}

pub(crate) fn decode_batch(bytes: &Bytes) -> Result<kafka_protocol::records::RecordSet, LogError> {
    RecordBatchDecoder::decode(&mut bytes.clone())
        .map_err(|e| LogError::CorruptRecord(format!("cannot decode record batch: {e}")))
}

impl PartitionLog {
    /// Opens or creates the log in `dir`, recovering it (see crate docs).
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog, LogError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // Make the new partition directory's own entry durable.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent)?;
            }
        }
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".cleaned") || name.ends_with(".tmp") {
                // Leftover of a compaction or index write interrupted by a crash; the original
                // file is still intact because the swap is a rename.
                tracing::warn!(file = name, "removing leftover temporary file");
                std::fs::remove_file(entry.path())?;
                continue;
            }
            if let Some(stem) = name.strip_suffix(".log") {
                if stem.len() == 20 {
                    if let Ok(base) = stem.parse::<i64>() {
                        bases.push(base);
                    }
                }
            }
        }
        bases.sort_unstable();

        let clean = dir.join(CLEAN_SHUTDOWN_FILE).exists();
        let recovery_point = if clean {
            i64::MAX
        } else {
            read_recovery_point(dir)
        };
        let mut segments = BTreeMap::new();
        let mut producers = ProducerStateMap::default();
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            // Everything the last fsync did not cover may be torn: CRC-check it.
            let full = !clean && next_base.is_none_or(|n| n > recovery_point);
            let (mut seg, headers, truncated) = load_segment(dir, base, full, &config)?;
            for h in &headers {
                producers.replay(h);
            }
            if truncated && next_base.is_some_and(|n| n <= recovery_point) {
                // A sealed segment below the recovery point was fsynced when it was rolled, so
                // the damage is not a torn write and the later segments are intact: lose only
                // the rest of this segment (like Kafka's per-segment recovery) and keep going.
                let next = next_base.unwrap_or(seg.next_offset);
                let first_lost = headers.last().map_or(base, |h| h.last_offset() + 1);
                tracing::error!(
                    dir = %dir.display(),
                    segment_base_offset = base,
                    first_lost_offset = first_lost,
                    last_lost_offset = next - 1,
                    "corrupt batch in a sealed log segment below the recovery point: truncated \
                     that segment, its offsets {first_lost}..{} are lost",
                    next - 1
                );
                seg.next_offset = seg.next_offset.max(next);
                segments.insert(base, seg);
                continue;
            }
            if truncated {
                for &later in &bases[i + 1..] {
                    tracing::warn!(
                        base_offset = later,
                        "deleting segment after truncation point"
                    );
                    Segment::delete_files(dir, later);
                }
                segments.insert(base, seg);
                break;
            }
            if let Some(n) = next_base {
                // Compaction may have removed the tail; the segment still spans up to the next.
                seg.next_offset = seg.next_offset.max(n);
            }
            segments.insert(base, seg);
        }
        if segments.is_empty() {
            let seg = Segment::create(dir, 0)?;
            segments.insert(0, seg);
        }
        let last_base = segments.keys().next_back().copied().unwrap_or(0);
        for (base, seg) in segments.iter_mut() {
            if *base != last_base {
                seg.seal();
                seg.repair_indexes(dir)?;
            }
        }
        let log_start = segments.keys().next().copied().unwrap_or(0);
        let log_end = segments
            .values()
            .next_back()
            .map_or(0, |s: &Segment| s.next_offset);
        let durable_end = recovery_point.min(log_end);
        if clean {
            // From now on a crash must trigger recovery again.
            std::fs::remove_file(dir.join(CLEAN_SHUTDOWN_FILE))?;
        }
        segment::sync_dir(dir)?;
        Ok(PartitionLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                config,
                segments,
                log_start,
                producers,
                unflushed_bytes: 0,
                last_flush_ms: None,
                clean_marker: false,
                flushed_end: durable_end,
                recovery_point: durable_end,
                pending_seals: Vec::new(),
            }),
            compact_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> LogConfig {
        self.inner.lock().config.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.inner.lock().config = config;
    }

    /// Validates, assigns offsets, checks producer sequences and appends one produce payload.
    ///
    /// The write itself is all-or-nothing. Durability work that follows it (the fsync the
    /// [`FlushPolicy`] asks for, completing a segment roll) runs after the partition lock is
    /// released; if it fails the error is logged and the append still succeeds, since the records
    /// are in the log and visible to readers: the next flush retries.
    pub fn append(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let config = self.config();
        let batches = batch::split_payload(
            records,
            config.max_message_bytes,
            config.cleanup_policy.compacts(),
        )?;
        let log_append_time = config.message_timestamp_type == TimestampType::LogAppendTime;
        let mut data = records.to_vec();

        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let log_end = inner.log_end();

        // Offsets are known up front, so producer state can be staged with final offsets and
        // only committed once the write succeeded.
        let mut staged: HashMap<i64, Option<ProducerEntry>> = HashMap::new();
        let mut next = log_end;
        let mut record_count = 0u64;
        for b in &batches {
            let h = b.header;
            let base = next;
            let last = base + i64::from(h.last_offset_delta);
            if h.producer_id >= 0 {
                let entry = staged
                    .entry(h.producer_id)
                    .or_insert_with(|| inner.producers.get(h.producer_id).cloned());
                match producer::check(entry.as_ref(), &h)? {
                    SeqCheck::Duplicate(dup) => {
                        if batches.len() == 1 {
                            return Ok(AppendInfo {
                                base_offset: dup.base_offset,
                                last_offset: dup.last_offset,
                                log_append_time_ms: -1,
                                log_start_offset: inner.log_start,
                                record_count: (dup.last_offset - dup.base_offset + 1) as u64,
                                bytes: 0,
                                duplicate: true,
                            });
                        }
                        // Retrying part of a multi-batch payload is not something a Kafka
                        // producer does; refuse rather than append half of it.
                        return Err(LogError::OutOfOrderSequence {
                            producer_id: h.producer_id,
                            expected: entry.as_ref().map_or(0, producer::expected_next),
                            got: h.base_sequence,
                        });
                    }
                    SeqCheck::Append => {
                        let e = entry.get_or_insert_with(|| ProducerEntry {
                            epoch: h.producer_epoch,
                            batches: Default::default(),
                            last_timestamp: now_ms,
                        });
                        e.last_timestamp = now_ms;
                        producer::record(e, &h, base, last);
                    }
                }
            }
            let bytes = &mut data[b.start..b.end()];
            batch::set_base_offset(bytes, base);
            if log_append_time {
                batch::set_log_append_time(bytes, now_ms);
            }
            record_count += h.record_count as u64;
            next = last + 1;
        }

        inner.mark_dirty(&self.dir);
        let orig_active_base = inner.active().base_offset;
        let orig_active_size = inner.active().size;
        if let Err(e) = self.write_batches(inner, &data, &batches, now_ms, &config) {
            self.rollback(inner, orig_active_base, orig_active_size);
            return Err(e);
        }
        for (pid, entry) in staged {
            if let Some(entry) = entry {
                inner.producers.insert(pid, entry);
            }
        }
        let sync = flush_due(inner, data.len() as u64, now_ms, &config);
        let rolled = !inner.pending_seals.is_empty();
        let info = AppendInfo {
            base_offset: log_end,
            last_offset: next - 1,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            log_start_offset: inner.log_start,
            record_count,
            bytes: data.len() as u64,
            duplicate: false,
        };
        drop(guard);
        if sync || rolled {
            let _flushing = self.flush_lock.lock();
            // A roll's durability is completed here; the recovery point is only advanced for it
            // (per-append policy fsyncs leave that file to flush(), as before).
            if let Err(e) = self.sync_pending(sync, rolled) {
                tracing::error!(
                    dir = %self.dir.display(),
                    error = %e,
                    "fsync after append failed; the records are in the log, the next flush retries"
                );
            } else if sync {
                self.inner.lock().last_flush_ms = Some(now_ms);
            }
        }
        Ok(info)
    }

    fn write_batches(
        &self,
        inner: &mut Inner,
        data: &[u8],
        batches: &[PayloadBatch],
        now_ms: i64,
        config: &LogConfig,
    ) -> Result<(), LogError> {
        for b in batches {
            let bytes = &data[b.start..b.end()];
            let Some(h) = BatchHeader::parse(bytes) else {
                return Err(LogError::CorruptRecord(
                    "batch shorter than its header".into(),
                ));
            };
            let total = bytes.len() as u64;
            let active = inner.active();
            let roll = !active.is_empty()
                && (active.size + total > config.segment_bytes
                    // Index entries store positions and relative offsets as u32.
                    || active.size + total > u64::from(u32::MAX)
                    || active.relative(h.last_offset()).is_none()
                    || segment_expired(active, now_ms, config));
            if roll {
                self.roll(inner)?;
            }
            let active = inner.active_mut();
            let pos = active.size;
            active.file.write_all_at(bytes, pos)?;
            active.track_batch(&h, pos, config.index_interval_bytes);
            active.first_append_ms.get_or_insert(now_ms);
        }
        Ok(())
    }

    /// Undoes a partially written append after an IO error so the call stays all-or-nothing.
    fn rollback(&self, inner: &mut Inner, orig_base: i64, orig_size: u64) {
        // Rolls made by this append are undone with it.
        inner.pending_seals.retain(|p| p.base < orig_base);
        let newer: Vec<i64> = inner
            .segments
            .range(orig_base + 1..)
            .map(|(b, _)| *b)
            .collect();
        for base in newer {
            inner.segments.remove(&base);
            Segment::delete_files(&self.dir, base);
        }
        let config = inner.config.clone();
        let result = (|| -> Result<(), LogError> {
            let active = inner.active();
            active.file.set_len(orig_size)?;
            let (seg, _, _) = load_segment(&self.dir, orig_base, false, &config)?;
            *inner.active_mut() = seg;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "failed to roll back a partial append");
        }
    }

    /// Seals the active segment and starts a new one. Only in-memory work and the new file's
    /// creation happen here, under the lock; fsyncing the sealed data, writing its index files,
    /// syncing the directory and advancing the recovery point are queued as a [`PendingSeal`]
    /// that the caller completes with [`Self::sync_pending`] once it released the lock.
    fn roll(&self, inner: &mut Inner) -> Result<(), LogError> {
        let end = inner.log_end();
        let active = inner.active_mut();
        if active.is_empty() {
            return Ok(());
        }
        active.seal();
        let pending = PendingSeal {
            base: active.base_offset,
            file: Arc::clone(&active.file),
            end,
        };
        let seg = Segment::create(&self.dir, end)?;
        inner.segments.insert(end, seg);
        inner.pending_seals.push(pending);
        inner.unflushed_bytes = 0;
        Ok(())
    }

    /// Completes pending seals (in roll order) and, with `sync_active`, fsyncs the active
    /// segment if anything was appended since the last fsync; with `write_rp` the recovery point
    /// file then records what became durable. The caller holds `flush_lock`; `inner` is only
    /// taken briefly to snapshot and to record what was synced, never across an fsync.
    fn sync_pending(&self, sync_active: bool, write_rp: bool) -> Result<(), LogError> {
        let (seals, active, flushed, rp_behind) = {
            let mut inner = self.inner.lock();
            let seals = std::mem::take(&mut inner.pending_seals);
            let end = inner.log_end();
            let active = (sync_active && end > inner.flushed_end)
                .then(|| (Arc::clone(&inner.active().file), end, inner.unflushed_bytes));
            // Durable data the recovery point file does not cover yet (policy fsyncs do not
            // write it, or its last write failed).
            let rp_behind = write_rp && inner.recovery_point < inner.flushed_end;
            (seals, active, inner.flushed_end, rp_behind)
        };
        if seals.is_empty() && active.is_none() && !rp_behind {
            return Ok(());
        }
        let requeue = |seals: &[PendingSeal]| {
            let mut inner = self.inner.lock();
            inner.pending_seals.splice(0..0, seals.iter().cloned());
        };
        for (i, seal) in seals.iter().enumerate() {
            if let Err(e) = self.complete_seal(seal) {
                requeue(&seals[i..]);
                return Err(e);
            }
        }
        if !seals.is_empty() {
            // The sealed files' and the new segments' directory entries.
            if let Err(e) = segment::sync_dir(&self.dir) {
                requeue(&seals);
                return Err(e.into());
            }
        }
        let mut durable = seals.last().map_or(flushed, |p| p.end.max(flushed));
        if let Some((file, end, _)) = &active {
            file.sync_data()?;
            durable = durable.max(*end);
        }
        let advance_rp = write_rp && durable > self.inner.lock().recovery_point;
        if advance_rp {
            write_recovery_point(&self.dir, durable)?;
        }
        let mut inner = self.inner.lock();
        inner.flushed_end = inner.flushed_end.max(durable);
        if advance_rp {
            inner.recovery_point = inner.recovery_point.max(durable);
        }
        if let Some((_, _, bytes)) = active {
            inner.unflushed_bytes = inner.unflushed_bytes.saturating_sub(bytes);
        }
        Ok(())
    }

    /// Makes one rolled segment durable: its data, then its index files.
    fn complete_seal(&self, seal: &PendingSeal) -> Result<(), LogError> {
        seal.file.sync_data()?;
        let indexes = {
            let inner = self.inner.lock();
            inner
                .segments
                .get(&seal.base)
                .filter(|s| Arc::ptr_eq(&s.file, &seal.file))
                .map(|s| (s.index_bytes(), s.time_index_bytes()))
        };
        // Gone (retention) or replaced (compaction, which wrote its own indexes): nothing to do.
        let Some((idx, tidx)) = indexes else {
            return Ok(());
        };
        segment::write_synced(&segment::index_path(&self.dir, seal.base), &idx)?;
        segment::write_synced(&segment::time_index_path(&self.dir, seal.base), &tidx)?;
        // Retention or compaction may have changed the segment while the files were written.
        let inner = self.inner.lock();
        match inner.segments.get(&seal.base) {
            None => {
                for p in [
                    segment::index_path(&self.dir, seal.base),
                    segment::time_index_path(&self.dir, seal.base),
                ] {
                    let _ = std::fs::remove_file(p);
                }
            }
            // Rare: a compaction swapped this segment in meanwhile and our files are stale.
            // Rewritten under the lock (an fsync under it, but only in this race) so no other
            // writer of these files can interleave.
            Some(s) if !Arc::ptr_eq(&s.file, &seal.file) => s.write_indexes(&self.dir)?,
            Some(_) => {}
        }
        Ok(())
    }

    /// Reads whole batches starting with the one containing `offset` (KIP-74 `min_one`).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, LogError> {
        // Under the lock only collect file handles and positions; IO happens after.
        let (plan, high_watermark, log_start_offset) = {
            let inner = self.inner.lock();
            let hw = inner.log_end();
            let ls = inner.log_start;
            if offset < ls || offset > hw {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start: ls,
                    log_end: hw,
                });
            }
            let mut plan = Vec::new();
            if offset < hw {
                let first = inner
                    .segments
                    .range(..=offset)
                    .next_back()
                    .map_or(ls, |(b, _)| *b);
                for seg in inner.segments.range(first..).map(|(_, s)| s) {
                    // Segments emptied by compaction hold no bytes: skip them without counting,
                    // or a run of them would end the read with nothing below the high watermark.
                    if seg.next_offset <= offset || seg.is_empty() {
                        continue;
                    }
                    let start = if plan.is_empty() {
                        seg.position_for(offset)
                    } else {
                        0
                    };
                    plan.push((Arc::clone(&seg.file), start, seg.size));
                    // Only the first planned segment can hold nothing at or after `offset` (a
                    // compaction gap at its end); the second non-empty one always has data.
                    if plan.len() >= MAX_READ_SEGMENTS {
                        break;
                    }
                }
            }
            (plan, hw, ls)
        };
        for (file, start, end) in plan {
            let mut range: Option<(u64, u64)> = None;
            headers_from(&file, start, end, |h, pos| {
                let batch_end = pos + h.total_size() as u64;
                match range {
                    None if h.last_offset() < offset => Ok(true),
                    None => {
                        if h.total_size() <= max_bytes || min_one {
                            range = Some((pos, batch_end));
                        } else {
                            range = Some((pos, pos));
                        }
                        Ok(true)
                    }
                    Some((s, e)) => {
                        if e > s && ((batch_end - s) as usize) <= max_bytes {
                            range = Some((s, batch_end));
                            Ok(true)
                        } else {
                            Ok(false)
                        }
                    }
                }
            })?;
            if let Some((s, e)) = range {
                let records = Bytes::from(segment::read_range(&file, s, e)?);
                return Ok(ReadResult {
                    records,
                    high_watermark,
                    log_start_offset,
                });
            }
        }
        Ok(ReadResult {
            records: Bytes::new(),
            high_watermark,
            log_start_offset,
        })
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.lock().log_start
    }

    pub fn log_end_offset(&self) -> i64 {
        self.inner.lock().log_end()
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.lock().segments.len()
    }

    /// First offset whose record timestamp is >= `ts`, with that timestamp.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        let plan = {
            let inner = self.inner.lock();
            let ls = inner.log_start;
            // Segments are in offset order and their max timestamp is exact, so the first one
            // reaching `ts` holds the answer; the time index narrows where to start in it.
            inner
                .segments
                .values()
                .find(|s| s.max_timestamp.is_some_and(|m| m.timestamp >= ts))
                .map(|s| {
                    let from = s.offset_for_time_scan(ts).max(ls);
                    (Arc::clone(&s.file), s.position_for(from), s.size, ls)
                })
        };
        let Some((file, start, end, log_start)) = plan else {
            return Ok(None);
        };
        let mut found = None;
        let mut error = None;
        headers_from(&file, start, end, |h, pos| {
            if h.max_timestamp < ts || h.last_offset() < log_start {
                return Ok(true);
            }
            if h.is_log_append_time() {
                // Every record of a LogAppendTime batch carries the batch's max timestamp.
                found = Some((h.base_offset, h.max_timestamp));
                return Ok(false);
            }
            let bytes = Bytes::from(segment::read_range(
                &file,
                pos,
                pos + h.total_size() as u64,
            )?);
            match decode_batch(&bytes) {
                Ok(set) => {
                    found = set
                        .records
                        .iter()
                        .find(|r| r.timestamp >= ts && r.offset >= log_start)
                        .map(|r| (r.offset, r.timestamp));
                    Ok(found.is_none())
                }
                Err(e) => {
                    error = Some(e);
                    Ok(false)
                }
            }
        })?;
        match error {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// Largest timestamp in the log and the offset of the first record carrying it.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let (file, max) = {
            let inner = self.inner.lock();
            let mut best: Option<(&Segment, segment::MaxTimestamp)> = None;
            for seg in inner.segments.values() {
                if let Some(m) = seg.max_timestamp {
                    if best.is_none_or(|(_, b)| m.timestamp > b.timestamp) {
                        best = Some((seg, m));
                    }
                }
            }
            let (seg, m) = best?;
            (Arc::clone(&seg.file), m)
        };
        let exact = (|| -> Result<Option<i64>, LogError> {
            let Some(h) = segment::read_header(&file, max.position, u64::MAX)? else {
                return Ok(None);
            };
            if h.is_log_append_time() {
                return Ok(Some(h.base_offset));
            }
            let bytes = Bytes::from(segment::read_range(
                &file,
                max.position,
                max.position + h.total_size() as u64,
            )?);
            let set = decode_batch(&bytes)?;
            Ok(set
                .records
                .iter()
                .find(|r| r.timestamp == max.timestamp)
                .map(|r| r.offset))
        })();
        // Falling back to the batch's base offset is still a valid ListOffsets answer.
        let offset = exact.ok().flatten().unwrap_or(max.batch_base_offset);
        Some((max.timestamp, offset))
    }

    /// fsyncs what was appended since the last fsync (completing pending segment rolls) and
    /// records the recovery point. A no-op when nothing was appended since the last flush. The
    /// fsyncs run on cloned file handles outside the partition lock.
    pub fn flush(&self) -> Result<(), LogError> {
        let _flushing = self.flush_lock.lock();
        self.sync_pending(true, true)
    }

    /// Makes every record below `end_offset` durable (group commit): callers that
    /// arrive while another fsync runs wait for it and return without one of their
    /// own when it already covered their records. Does not rewrite the recovery
    /// point file; the periodic [`flush`](Self::flush) does.
    /// Offsets below this are on stable storage (fsynced).
    pub fn durable_end_offset(&self) -> i64 {
        self.inner.lock().flushed_end
    }

    pub fn sync_through(&self, end_offset: i64) -> Result<(), LogError> {
        if self.inner.lock().flushed_end >= end_offset {
            return Ok(());
        }
        let _flushing = self.flush_lock.lock();
        if self.inner.lock().flushed_end >= end_offset {
            return Ok(());
        }
        self.sync_pending(true, false)
    }

    /// Time/size retention over sealed segments, plus time-based rolling of the active one.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, LogError> {
        let (report, rolled) = self.enforce_retention_locked(now_ms)?;
        if report.segments_deleted > 0 || rolled {
            let _flushing = self.flush_lock.lock();
            if rolled {
                self.sync_pending(false, true)?;
            }
            if report.segments_deleted > 0 {
                segment::sync_dir(&self.dir)?;
            }
        }
        Ok(report)
    }

    fn enforce_retention_locked(&self, now_ms: i64) -> Result<(RetentionReport, bool), LogError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let config = inner.config.clone();
        let mut report = RetentionReport::default();
        let expired = inner
            .producers
            .expire(now_ms, config.producer_id_expiration_ms);
        if expired > 0 {
            tracing::info!(expired, "expired idempotent producer state");
        }
        let rolled = segment_expired(inner.active(), now_ms, &config) && !inner.active().is_empty();
        if rolled {
            inner.mark_dirty(&self.dir);
            self.roll(inner)?;
        }
        if !config.cleanup_policy.deletes() {
            return Ok((report, rolled));
        }
        loop {
            if inner.segments.len() <= 1 {
                break;
            }
            let total: u64 = inner.segments.values().map(|s| s.size).sum();
            let Some((&base, seg)) = inner.segments.first_key_value() else {
                break;
            };
            let by_time = config.retention_ms.is_some_and(|r| {
                seg.max_timestamp
                    .is_none_or(|m| m.timestamp < now_ms.saturating_sub(r))
            });
            let by_size = config
                .retention_bytes
                .is_some_and(|limit| total - seg.size >= limit && total > limit);
            if !(by_time || by_size) {
                break;
            }
            let size = seg.size;
            inner.mark_dirty(&self.dir);
            inner.segments.remove(&base);
            // Readers holding the Arc<File> keep reading the unlinked file.
            Segment::delete_files(&self.dir, base);
            report.segments_deleted += 1;
            report.bytes_deleted += size;
            if let Some(&first) = inner.segments.keys().next() {
                inner.log_start = inner.log_start.max(first);
            }
            tracing::info!(
                base_offset = base,
                by_time,
                by_size,
                "deleted log segment by retention"
            );
        }
        Ok((report, rolled))
    }

    /// Writes indexes and the clean-shutdown marker so the next open skips the CRC scan.
    pub fn close(&self) -> Result<(), LogError> {
        let _flushing = self.flush_lock.lock();
        self.sync_pending(true, true)?;
        // The rest stays under the lock so no append can slip in between the final fsync and
        // the marker that tells the next open the log is consistent; it runs once, at shutdown.
        let mut inner = self.inner.lock();
        let active = inner.active();
        active.file.sync_data()?;
        active.write_indexes(&self.dir)?;
        let end = inner.log_end();
        write_recovery_point(&self.dir, end)?;
        segment::write_synced(&self.dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        segment::sync_dir(&self.dir)?;
        inner.recovery_point = end;
        inner.flushed_end = end;
        inner.clean_marker = true;
        Ok(())
    }

    /// Current epoch of an idempotent producer, if the log has seen it.
    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.inner
            .lock()
            .producers
            .get(producer_id)
            .map(|e| e.epoch)
    }
}

fn segment_expired(seg: &Segment, now_ms: i64, config: &LogConfig) -> bool {
    match (config.segment_ms, seg.first_append_ms) {
        (Some(ms), Some(first)) => {
            now_ms.saturating_sub(first) >= i64::try_from(ms).unwrap_or(i64::MAX)
        }
        _ => false,
    }
}

/// Whether the flush policy asks for an fsync after an append of `bytes` (decided under the
/// lock; the fsync itself happens after it is released).
fn flush_due(inner: &mut Inner, bytes: u64, now_ms: i64, config: &LogConfig) -> bool {
    match config.flush {
        FlushPolicy::Never => false,
        FlushPolicy::EveryBatch => true,
        FlushPolicy::Bytes(n) => {
            inner.unflushed_bytes += bytes;
            inner.unflushed_bytes >= n
        }
        FlushPolicy::Interval(d) => {
            let last = *inner.last_flush_ms.get_or_insert(now_ms);
            now_ms.saturating_sub(last) >= i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        }
    }
}
