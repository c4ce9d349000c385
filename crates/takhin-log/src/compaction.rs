//! Key-based log compaction: builds a key -> latest offset map over the whole log, rewrites sealed
//! segments keeping only surviving records (offsets preserved), and swaps the cleaned files in.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions};

use crate::batch::{self, BatchHeader, MIN_BATCH_LENGTH};
use crate::error::LogError;
use crate::log::{decode_batch, CompactionReport, PartitionLog};
use crate::segment::{self, Segment};

/// Immutable view of a segment taken under the lock.
struct Snapshot {
    base: i64,
    file: Arc<File>,
    size: u64,
}

/// A cleaned segment waiting to be swapped in.
struct Cleaned {
    base: i64,
    old_file: Arc<File>,
    segment: Segment,
    records_removed: u64,
    bytes_before: u64,
}

/// Calls `f` with every complete batch between 0 and `end`.
fn for_each_batch(
    file: &File,
    end: u64,
    mut f: impl FnMut(&BatchHeader, Bytes) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut pos = 0u64;
    while let Some(h) = segment::read_header(file, pos, end)? {
        let total = h.total_size() as u64;
        if h.batch_length < MIN_BATCH_LENGTH || pos + total > end {
            return Err(LogError::CorruptRecord(format!(
                "malformed batch at position {pos} while compacting"
            )));
        }
        f(
            &h,
            Bytes::from(segment::read_range(file, pos, pos + total)?),
        )?;
        pos += total;
    }
    Ok(())
}

/// Appends batch bytes to a segment under construction.
fn push_batch(seg: &mut Segment, bytes: &[u8], interval: u32) -> Result<(), LogError> {
    let Some(h) = BatchHeader::parse(bytes) else {
        return Err(LogError::CorruptRecord(
            "batch shorter than its header".into(),
        ));
    };
    let pos = seg.size;
    seg.file.write_all_at(bytes, pos)?;
    seg.track_batch(&h, pos, interval);
    Ok(())
}

impl PartitionLog {
    /// Log compaction for Compact/CompactDelete policies; see the crate docs for the rules.
    pub fn compact(&self, now_ms: i64) -> Result<CompactionReport, LogError> {
        let _only_one = self.compact_lock.lock();
        let (config, sealed, active) = {
            let inner = self.inner.lock();
            let mut snaps: Vec<Snapshot> = inner
                .segments
                .values()
                .map(|s| Snapshot {
                    base: s.base_offset,
                    file: Arc::clone(&s.file),
                    size: s.size,
                })
                .collect();
            let active = snaps.pop();
            (inner.config.clone(), snaps, active)
        };
        let mut report = CompactionReport::default();
        if !config.cleanup_policy.compacts() || sealed.is_empty() {
            return Ok(report);
        }

        // Pass 1: latest offset of every key, across the whole log including the active segment.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for snap in sealed.iter().chain(active.iter()) {
            for_each_batch(&snap.file, snap.size, |h, bytes| {
                if h.is_control() {
                    return Ok(());
                }
                for r in decode_batch(&bytes)?.records {
                    if let Some(k) = r.key {
                        // Copy: the decoded key would otherwise pin the whole batch buffer.
                        latest.insert(Bytes::copy_from_slice(&k), r.offset);
                    }
                }
                Ok(())
            })?;
        }

        let lag_horizon = now_ms.saturating_sub(config.min_compaction_lag_ms as i64);
        let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms as i64);
        let keep = |h: &BatchHeader, r: &Record| -> bool {
            let ts = if h.is_log_append_time() {
                h.max_timestamp
            } else {
                r.timestamp
            };
            if ts > lag_horizon {
                return true;
            }
            let Some(key) = &r.key else { return true };
            if latest.get(key) != Some(&r.offset) {
                return false;
            }
            !(r.value.is_none() && ts < tombstone_horizon)
        };

        // Pass 2: rewrite sealed segments into `.cleaned` files, outside the lock.
        let mut cleaned = Vec::new();
        for snap in &sealed {
            let path = segment::cleaned_path(&self.dir, snap.base);
            let out = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            let mut seg = Segment::new(snap.base, Arc::new(out));
            let mut removed = 0u64;
            let result = for_each_batch(&snap.file, snap.size, |h, bytes| {
                // Transaction data and markers are kept verbatim (no transaction index here).
                if h.is_control() || h.is_transactional() {
                    return push_batch(&mut seg, &bytes, config.index_interval_bytes);
                }
                let set = decode_batch(&bytes)?;
                let survivors: Vec<&Record> = set.records.iter().filter(|r| keep(h, r)).collect();
                if survivors.len() == set.records.len() {
                    return push_batch(&mut seg, &bytes, config.index_interval_bytes);
                }
                removed += (set.records.len() - survivors.len()) as u64;
                if survivors.is_empty() {
                    return Ok(());
                }
                let mut buf = BytesMut::new();
                RecordBatchEncoder::encode(
                    &mut buf,
                    survivors.iter().copied(),
                    &RecordEncodeOptions {
                        version: 2,
                        compression: set.compression,
                    },
                )
                .map_err(|e| LogError::CorruptRecord(format!("re-encoding batch: {e}")))?;
                let mut pos = 0;
                while pos < buf.len() {
                    let Some(nh) = BatchHeader::parse(&buf[pos..]) else {
                        return Err(LogError::CorruptRecord(
                            "encoder produced a short batch".into(),
                        ));
                    };
                    let end = pos + nh.total_size();
                    let out = &mut buf[pos..end];
                    if h.is_log_append_time() {
                        // The encoder knows nothing of LogAppendTime; restore the batch's stamp.
                        batch::set_log_append_time(out, h.max_timestamp);
                    }
                    push_batch(&mut seg, out, config.index_interval_bytes)?;
                    pos = end;
                }
                Ok(())
            });
            if let Err(e) = result {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            if removed == 0 {
                drop(seg);
                std::fs::remove_file(&path)?;
                continue;
            }
            seg.file.sync_all()?;
            cleaned.push(Cleaned {
                base: snap.base,
                old_file: Arc::clone(&snap.file),
                segment: seg,
                records_removed: removed,
                bytes_before: snap.size,
            });
        }

        // Swap under the lock: rename is atomic, so a crash leaves either the old or new file.
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if !cleaned.is_empty() {
            inner.mark_dirty(&self.dir);
        }
        let active_base = inner.active().base_offset;
        for c in cleaned {
            let path = segment::cleaned_path(&self.dir, c.base);
            let still_same = c.base != active_base
                && inner
                    .segments
                    .get(&c.base)
                    .is_some_and(|s| Arc::ptr_eq(&s.file, &c.old_file));
            if !still_same {
                // Deleted by retention (or otherwise replaced) meanwhile.
                std::fs::remove_file(&path)?;
                continue;
            }
            let first_base = inner.segments.keys().next().copied();
            if c.segment.is_empty() && first_base != Some(c.base) {
                // Every record was superseded: drop the segment instead of keeping an empty
                // one. Offsets stay preserved: the previous segment now spans up to the next
                // one's base (also what `open` infers from file names), and reads in the gap
                // move on to the next segment. The log's first segment is kept even when
                // empty, as its base offset is what anchors log_start across reopens.
                let removed = inner.segments.remove(&c.base);
                drop(c.segment);
                std::fs::remove_file(&path)?;
                Segment::delete_files(&self.dir, c.base);
                if let (Some(old), Some((_, prev))) =
                    (removed, inner.segments.range_mut(..c.base).next_back())
                {
                    prev.next_offset = prev.next_offset.max(old.next_offset);
                }
                report.segments_cleaned += 1;
                report.records_removed += c.records_removed;
                report.bytes_before += c.bytes_before;
                tracing::info!(
                    base_offset = c.base,
                    records_removed = c.records_removed,
                    "compaction emptied log segment, removed it"
                );
                continue;
            }
            std::fs::rename(&path, segment::log_path(&self.dir, c.base))?;
            let mut seg = c.segment;
            if let Some(old) = inner.segments.get(&c.base) {
                seg.next_offset = seg.next_offset.max(old.next_offset);
                seg.first_append_ms = old.first_append_ms;
            }
            seg.seal();
            seg.write_indexes(&self.dir)?;
            report.segments_cleaned += 1;
            report.records_removed += c.records_removed;
            report.bytes_before += c.bytes_before;
            report.bytes_after += seg.size;
            tracing::info!(
                base_offset = c.base,
                records_removed = c.records_removed,
                bytes_before = c.bytes_before,
                bytes_after = seg.size,
                "compacted log segment"
            );
            inner.segments.insert(c.base, seg);
        }
        // Still under the lock: the renames and index files written above must be durable before
        // anything else (retention, a roll) changes the directory again. Compaction runs rarely.
        segment::sync_dir(&self.dir)?;
        Ok(report)
    }
}
