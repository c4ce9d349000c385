//! One log segment: the `.log` data file handle plus its in-memory sparse offset and time indexes,
//! the `.index`/`.timeindex` file formats, and the header/CRC scans used by recovery and reads.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchHeader, HEADER_SIZE, MIN_BATCH_LENGTH};

/// Sparse offset index entry: relative offset of a batch's base offset and its file position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
}

/// Time index entry: largest timestamp seen so far and the relative base offset of the batch
/// that carried it. Every batch before that one has timestamps <= `timestamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

/// Largest timestamp of a segment and where the batch carrying it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxTimestamp {
    pub timestamp: i64,
    pub batch_base_offset: i64,
    pub position: u64,
}

pub fn log_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}
pub fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}
pub fn time_index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}
pub fn cleaned_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log.cleaned"))
}

pub fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Reads one batch header at `pos`; None when fewer than HEADER_SIZE bytes remain before `end`.
pub fn read_header(file: &File, pos: u64, end: u64) -> io::Result<Option<BatchHeader>> {
    if end.saturating_sub(pos) < HEADER_SIZE as u64 {
        return Ok(None);
    }
    let mut buf = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut buf, pos)?;
    Ok(BatchHeader::parse(&buf))
}

pub fn read_range(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(end.saturating_sub(start))
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "read range too large"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// An in-memory segment.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    pub file: Arc<File>,
    /// Bytes of valid data; appends go here.
    pub size: u64,
    /// One past the last offset the segment covers. For sealed segments after compaction this
    /// stays at the original value (the next segment's base), not the last surviving record.
    pub next_offset: i64,
    pub index: Vec<IndexEntry>,
    pub time_index: Vec<TimeIndexEntry>,
    pub max_timestamp: Option<MaxTimestamp>,
    bytes_since_index: u64,
    /// `now_ms` of the first append (or the first batch's timestamp after open), for segment_ms.
    pub first_append_ms: Option<i64>,
}

impl Segment {
    pub fn new(base_offset: i64, file: Arc<File>) -> Segment {
        Segment {
            base_offset,
            file,
            size: 0,
            next_offset: base_offset,
            index: Vec::new(),
            time_index: Vec::new(),
            max_timestamp: None,
            bytes_since_index: 0,
            first_append_ms: None,
        }
    }

    /// Creates an empty segment file (truncating any stale one).
    pub fn create(dir: &Path, base_offset: i64) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(log_path(dir, base_offset))?;
        Ok(Segment::new(base_offset, Arc::new(file)))
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Offset relative to this segment, when it fits the index's u32.
    pub fn relative(&self, offset: i64) -> Option<u32> {
        u32::try_from(offset - self.base_offset).ok()
    }

    /// Accounts for a batch already present in the file at `pos`: sizes, indexes, max timestamp.
    pub fn track_batch(&mut self, h: &BatchHeader, pos: u64, index_interval_bytes: u32) {
        let total = h.total_size() as u64;
        let rel = self.relative(h.base_offset).unwrap_or(u32::MAX);
        if self
            .max_timestamp
            .is_none_or(|m| h.max_timestamp > m.timestamp)
        {
            self.max_timestamp = Some(MaxTimestamp {
                timestamp: h.max_timestamp,
                batch_base_offset: h.base_offset,
                position: pos,
            });
        }
        // Like Kafka: index a batch once enough bytes accumulated since the previous entry.
        if self.bytes_since_index >= u64::from(index_interval_bytes) {
            if let Ok(position) = u32::try_from(pos) {
                self.index.push(IndexEntry {
                    rel_offset: rel,
                    position,
                });
                self.maybe_add_time_entry();
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += total;
        self.size = pos + total;
        self.next_offset = self.next_offset.max(h.last_offset() + 1);
    }

    fn maybe_add_time_entry(&mut self) {
        let Some(max) = self.max_timestamp else {
            return;
        };
        if self
            .time_index
            .last()
            .is_none_or(|last| max.timestamp > last.timestamp)
        {
            if let Some(rel) = self.relative(max.batch_base_offset) {
                self.time_index.push(TimeIndexEntry {
                    timestamp: max.timestamp,
                    rel_offset: rel,
                });
            }
        }
    }

    /// Called when the segment stops being active: make sure the time index ends with the max.
    pub fn seal(&mut self) {
        self.maybe_add_time_entry();
    }

    /// File position to start scanning from for `offset` (floor lookup in the offset index).
    pub fn position_for(&self, offset: i64) -> u64 {
        let rel = offset - self.base_offset;
        if rel <= 0 {
            return 0;
        }
        let idx = self
            .index
            .partition_point(|e| i64::from(e.rel_offset) <= rel);
        if idx == 0 {
            0
        } else {
            u64::from(self.index[idx - 1].position)
        }
    }

    /// Offset from which a scan for timestamp `ts` may start: the batch of the last time index
    /// entry whose timestamp is strictly below `ts` (everything up to it is older than `ts`).
    pub fn offset_for_time_scan(&self, ts: i64) -> i64 {
        let idx = self.time_index.partition_point(|e| e.timestamp < ts);
        if idx == 0 {
            self.base_offset
        } else {
            self.base_offset + i64::from(self.time_index[idx - 1].rel_offset)
        }
    }

    pub fn index_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.index.len() * 8);
        for e in &self.index {
            out.extend_from_slice(&e.rel_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    pub fn time_index_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.time_index.len() * 12);
        for e in &self.time_index {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.rel_offset.to_be_bytes());
        }
        out
    }

    /// Writes both index files and fsyncs them.
    pub fn write_indexes(&self, dir: &Path) -> io::Result<()> {
        write_synced(&index_path(dir, self.base_offset), &self.index_bytes())?;
        write_synced(
            &time_index_path(dir, self.base_offset),
            &self.time_index_bytes(),
        )
    }

    /// Rewrites the index files only when they are missing or differ from the in-memory ones
    /// (which were rebuilt from the data and are authoritative).
    pub fn repair_indexes(&self, dir: &Path) -> io::Result<()> {
        let idx = self.index_bytes();
        let tidx = self.time_index_bytes();
        let on_disk_idx = std::fs::read(index_path(dir, self.base_offset)).ok();
        let on_disk_tidx = std::fs::read(time_index_path(dir, self.base_offset)).ok();
        if on_disk_idx.as_deref() != Some(&idx[..]) || on_disk_tidx.as_deref() != Some(&tidx[..]) {
            if on_disk_idx.is_some() || on_disk_tidx.is_some() {
                tracing::warn!(
                    base_offset = self.base_offset,
                    "segment index files inconsistent with data, rebuilding"
                );
            }
            self.write_indexes(dir)?;
        }
        Ok(())
    }

    pub fn delete_files(dir: &Path, base: i64) {
        for p in [
            log_path(dir, base),
            index_path(dir, base),
            time_index_path(dir, base),
        ] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "failed to delete segment file");
                }
            }
        }
    }
}

pub fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How thoroughly [`scan`] checks batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// Header chain only (length, magic, offsets); reads 61 bytes per batch.
    Headers,
    /// Headers plus the CRC of every batch.
    Full,
}

/// Result of scanning a segment file.
#[derive(Debug)]
pub struct ScanOutcome {
    /// Bytes of valid batches from the start of the file.
    pub valid_len: u64,
    /// Why scanning stopped before the end of the file, if it did.
    pub problem: Option<String>,
}

/// Walks the batches of a segment file from position 0, calling `visit` for each valid batch,
/// stopping at the first torn or invalid one.
pub fn scan(
    file: &File,
    base_offset: i64,
    mode: ScanMode,
    mut visit: impl FnMut(&BatchHeader, u64),
) -> io::Result<ScanOutcome> {
    let file_len = file.metadata()?.len();
    let mut pos = 0u64;
    let mut expected_min = base_offset;
    let problem = loop {
        if pos >= file_len {
            break None;
        }
        let Some(h) = read_header(file, pos, file_len)? else {
            break Some(format!(
                "torn batch header at position {pos} ({} bytes left)",
                file_len - pos
            ));
        };
        if h.batch_length < MIN_BATCH_LENGTH {
            break Some(format!(
                "invalid batch length {} at position {pos}",
                h.batch_length
            ));
        }
        let total = h.total_size() as u64;
        if pos + total > file_len {
            break Some(format!(
                "torn batch at position {pos}: needs {total} bytes, {} left",
                file_len - pos
            ));
        }
        if h.magic != 2 {
            break Some(format!("bad magic {} at position {pos}", h.magic));
        }
        if h.base_offset < expected_min || h.last_offset_delta < 0 {
            break Some(format!(
                "batch offsets {}..{} at position {pos} go backwards (expected >= {expected_min})",
                h.base_offset,
                h.last_offset()
            ));
        }
        if h.last_offset() - base_offset > i64::from(u32::MAX) {
            break Some(format!(
                "batch offset {} does not fit segment {base_offset}",
                h.last_offset()
            ));
        }
        if mode == ScanMode::Full {
            let data = read_range(file, pos, pos + total)?;
            if !batch::crc_matches(&data) {
                break Some(format!("CRC mismatch in batch at position {pos}"));
            }
        }
        visit(&h, pos);
        expected_min = h.last_offset() + 1;
        pos += total;
    };
    Ok(ScanOutcome {
        valid_len: pos,
        problem,
    })
}
