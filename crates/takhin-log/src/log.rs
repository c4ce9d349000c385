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
/// A read that lands in a compaction gap at a segment's end may walk on; bound how far.
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
        std::fs::create_dir_all(dir)?;
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
            }),
            compact_lock: Mutex::new(()),
        })
    }

    pub fn config(&self) -> LogConfig {
        self.inner.lock().config.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.inner.lock().config = config;
    }

    /// Validates, assigns offsets, checks producer sequences and appends one produce payload.
    pub fn append(&self, records: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let config = self.config();
        let batches = batch::split_payload(records, config.max_message_bytes)?;
        if config.cleanup_policy.compacts() {
            validate_keys(records, &batches)?;
        }
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
                        });
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
        self.flush_per_policy(inner, data.len() as u64, now_ms, &config)?;
        Ok(AppendInfo {
            base_offset: log_end,
            last_offset: next - 1,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            log_start_offset: inner.log_start,
            record_count,
            bytes: data.len() as u64,
            duplicate: false,
        })
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

    /// Seals the active segment (indexes written, everything fsynced) and starts a new one.
    fn roll(&self, inner: &mut Inner) -> Result<(), LogError> {
        let end = inner.log_end();
        let active = inner.active_mut();
        if active.is_empty() {
            return Ok(());
        }
        active.seal();
        active.file.sync_data()?;
        active.write_indexes(&self.dir)?;
        let seg = Segment::create(&self.dir, end)?;
        inner.segments.insert(end, seg);
        segment::sync_dir(&self.dir)?;
        write_recovery_point(&self.dir, end)?;
        inner.unflushed_bytes = 0;
        Ok(())
    }

    fn flush_per_policy(
        &self,
        inner: &mut Inner,
        bytes: u64,
        now_ms: i64,
        config: &LogConfig,
    ) -> Result<(), LogError> {
        let sync = match config.flush {
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
        };
        if sync {
            inner.active().file.sync_data()?;
            inner.unflushed_bytes = 0;
            inner.last_flush_ms = Some(now_ms);
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
                    if seg.next_offset <= offset {
                        continue;
                    }
                    let start = if plan.is_empty() {
                        seg.position_for(offset)
                    } else {
                        0
                    };
                    plan.push((Arc::clone(&seg.file), start, seg.size));
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

    /// fsyncs the active segment and records the recovery point.
    pub fn flush(&self) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        inner.active().file.sync_data()?;
        inner.unflushed_bytes = 0;
        let end = inner.log_end();
        write_recovery_point(&self.dir, end)?;
        Ok(())
    }

    /// Time/size retention over sealed segments, plus time-based rolling of the active one.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, LogError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let config = inner.config.clone();
        let mut report = RetentionReport::default();
        if segment_expired(inner.active(), now_ms, &config) && !inner.active().is_empty() {
            inner.mark_dirty(&self.dir);
            self.roll(inner)?;
        }
        if !config.cleanup_policy.deletes() {
            return Ok(report);
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
        if report.segments_deleted > 0 {
            segment::sync_dir(&self.dir)?;
        }
        Ok(report)
    }

    /// Writes indexes and the clean-shutdown marker so the next open skips the CRC scan.
    pub fn close(&self) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        let active = inner.active();
        active.file.sync_data()?;
        active.write_indexes(&self.dir)?;
        let end = inner.log_end();
        write_recovery_point(&self.dir, end)?;
        segment::write_synced(&self.dir.join(CLEAN_SHUTDOWN_FILE), b"")?;
        segment::sync_dir(&self.dir)?;
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

/// Compacted topics need a key on every record, like Kafka's LogValidator.
fn validate_keys(records: &[u8], batches: &[PayloadBatch]) -> Result<(), LogError> {
    for b in batches.iter().filter(|b| !b.header.is_control()) {
        let bytes = Bytes::copy_from_slice(&records[b.start..b.end()]);
        let set = decode_batch(&bytes)?;
        if set.records.iter().any(|r| r.key.is_none()) {
            return Err(LogError::InvalidRecord(
                "compacted topic cannot accept a record without key".into(),
            ));
        }
    }
    Ok(())
}
