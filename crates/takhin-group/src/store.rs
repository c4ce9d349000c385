//! The durable committed-offset store: an append-only `offsets.log` of
//! length-prefixed, CRC32C-checked records, replayed into memory on open.
//!
//! Record layout: `[len: u32 BE][crc32c(payload): u32 BE][payload: len bytes]`.
//! Payload starts with a kind byte: commit, group tombstone, topic tombstone or
//! partition tombstone (retention expiry). A torn or corrupt tail (crash during
//! append) is truncated at the last good record; everything before it is kept.
//! The log is rewritten compactly (temp file, fsync, rename, fsync dir) once it
//! holds several times more records than live offsets.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, BytesMut};
use tracing::{info, warn};

use crate::GroupError;

const LOG_NAME: &str = "offsets.log";
const TMP_NAME: &str = "offsets.log.tmp";
/// Upper bound on one record's payload; anything larger is treated as corruption
/// rather than an allocation request.
const MAX_RECORD: usize = 1 << 20;
const HEADER: usize = 8;

const KIND_COMMIT: u8 = 1;
const KIND_DELETE_GROUP: u8 = 2;
const KIND_DELETE_TOPIC: u8 = 3;
const KIND_DELETE_PARTITION: u8 = 4;

/// One committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    /// Wall-clock commit time in ms since the epoch, used for retention.
    pub commit_ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        committed: Committed,
    },
    DeleteGroup(String),
    DeleteTopic(String),
    DeletePartition {
        group: String,
        topic: String,
        partition: i32,
    },
}

/// group -> (topic, partition) -> committed offset.
pub(crate) type OffsetMap = BTreeMap<String, BTreeMap<(String, i32), Committed>>;

pub(crate) struct OffsetStore {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    offsets: OffsetMap,
    /// Records currently in the file, live or superseded; drives compaction.
    records_in_file: usize,
    /// Compaction never runs below this many records, so small logs are left alone.
    compact_min_records: usize,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GroupError + '_ {
    move |source| GroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl OffsetStore {
    /// Opens (creating if needed) `dir/offsets.log`, replays it and truncates a torn tail.
    pub fn open(dir: &Path) -> Result<Self, GroupError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOG_NAME);
        // A leftover temp file is an interrupted compaction; the real log is still intact.
        let tmp = dir.join(TMP_NAME);
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io_err(&path))?;

        let mut offsets = OffsetMap::new();
        let mut pos = 0usize;
        let mut records = 0usize;
        while let Some((record, next)) = read_record(&buf, pos) {
            apply(&mut offsets, record);
            records += 1;
            pos = next;
        }
        if pos < buf.len() {
            warn!(
                path = %path.display(),
                good_bytes = pos,
                dropped_bytes = buf.len() - pos,
                "offset log has a torn or corrupt tail; truncating"
            );
            file.set_len(pos as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        info!(path = %path.display(), records, groups = offsets.len(), "offset log replayed");
        let mut store = Self {
            dir: dir.to_path_buf(),
            path,
            file,
            offsets,
            records_in_file: records,
            compact_min_records: 1024,
        };
        store.maybe_compact()?;
        Ok(store)
    }

    #[cfg(test)]
    pub fn set_compact_min_records(&mut self, n: usize) {
        self.compact_min_records = n;
    }

    #[cfg(test)]
    pub fn records_in_file(&self) -> usize {
        self.records_in_file
    }

    pub fn offsets(&self) -> &OffsetMap {
        &self.offsets
    }

    pub fn group(&self, group: &str) -> Option<&BTreeMap<(String, i32), Committed>> {
        self.offsets.get(group)
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.offsets.get(group).is_some_and(|m| !m.is_empty())
    }

    /// Durably records a batch of commits for one group (fdatasync before returning).
    pub fn commit(
        &mut self,
        group: &str,
        entries: Vec<(String, i32, Committed)>,
    ) -> Result<(), GroupError> {
        let records = entries
            .into_iter()
            .map(|(topic, partition, committed)| Record::Commit {
                group: group.to_string(),
                topic,
                partition,
                committed,
            })
            .collect();
        self.append(records)
    }

    /// Removes every offset of `group`; returns whether it had any.
    pub fn delete_group(&mut self, group: &str) -> Result<bool, GroupError> {
        let had = self.has_group(group);
        if self.offsets.contains_key(group) {
            self.append(vec![Record::DeleteGroup(group.to_string())])?;
        }
        Ok(had)
    }

    pub fn delete_topic(&mut self, topic: &str) -> Result<(), GroupError> {
        let present = self
            .offsets
            .values()
            .any(|m| m.keys().any(|(t, _)| t == topic));
        if present {
            self.append(vec![Record::DeleteTopic(topic.to_string())])?;
        }
        Ok(())
    }

    /// Drops offsets committed before `cutoff_ms` for groups accepted by `eligible`.
    pub fn expire(
        &mut self,
        cutoff_ms: i64,
        eligible: impl Fn(&str) -> bool,
    ) -> Result<usize, GroupError> {
        let mut records = Vec::new();
        for (group, parts) in &self.offsets {
            if !eligible(group) {
                continue;
            }
            for ((topic, partition), c) in parts {
                if c.commit_ts < cutoff_ms {
                    records.push(Record::DeletePartition {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    });
                }
            }
        }
        let n = records.len();
        if n > 0 {
            self.append(records)?;
        }
        Ok(n)
    }

    pub fn sync(&self) -> Result<(), GroupError> {
        self.file.sync_all().map_err(io_err(&self.path))
    }

    fn live_count(&self) -> usize {
        self.offsets.values().map(|m| m.len()).sum()
    }

    fn append(&mut self, records: Vec<Record>) -> Result<(), GroupError> {
        let mut buf = BytesMut::new();
        for r in &records {
            encode_record(&mut buf, r);
        }
        self.file.write_all(&buf).map_err(io_err(&self.path))?;
        // The commit is acknowledged only once it is on disk.
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.records_in_file += records.len();
        for r in records {
            apply(&mut self.offsets, r);
        }
        self.maybe_compact()
    }

    fn maybe_compact(&mut self) -> Result<(), GroupError> {
        let live = self.live_count();
        if self.records_in_file < self.compact_min_records
            || self.records_in_file <= live.saturating_mul(4)
        {
            return Ok(());
        }
        let tmp = self.dir.join(TMP_NAME);
        let mut buf = BytesMut::new();
        for (group, parts) in &self.offsets {
            for ((topic, partition), committed) in parts {
                encode_record(
                    &mut buf,
                    &Record::Commit {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        committed: committed.clone(),
                    },
                );
            }
        }
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&buf).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        // The rename itself must be durable, or a crash could resurrect the old log.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        info!(
            before = self.records_in_file,
            after = live,
            "offset log compacted"
        );
        self.records_in_file = live;
        Ok(())
    }
}

fn apply(offsets: &mut OffsetMap, record: Record) {
    match record {
        Record::Commit {
            group,
            topic,
            partition,
            committed,
        } => {
            offsets
                .entry(group)
                .or_default()
                .insert((topic, partition), committed);
        }
        Record::DeleteGroup(group) => {
            offsets.remove(&group);
        }
        Record::DeleteTopic(topic) => {
            for parts in offsets.values_mut() {
                parts.retain(|(t, _), _| *t != topic);
            }
            offsets.retain(|_, parts| !parts.is_empty());
        }
        Record::DeletePartition {
            group,
            topic,
            partition,
        } => {
            if let Some(parts) = offsets.get_mut(&group) {
                parts.remove(&(topic, partition));
                if parts.is_empty() {
                    offsets.remove(&group);
                }
            }
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s.as_bytes());
}

fn encode_record(out: &mut BytesMut, record: &Record) {
    let mut p = BytesMut::new();
    match record {
        Record::Commit {
            group,
            topic,
            partition,
            committed,
        } => {
            p.put_u8(KIND_COMMIT);
            put_str(&mut p, group);
            put_str(&mut p, topic);
            p.put_i32(*partition);
            p.put_i64(committed.offset);
            p.put_i32(committed.leader_epoch);
            p.put_i64(committed.commit_ts);
            match &committed.metadata {
                None => p.put_i32(-1),
                Some(m) => {
                    p.put_i32(m.len() as i32);
                    p.put_slice(m.as_bytes());
                }
            }
        }
        Record::DeleteGroup(group) => {
            p.put_u8(KIND_DELETE_GROUP);
            put_str(&mut p, group);
        }
        Record::DeleteTopic(topic) => {
            p.put_u8(KIND_DELETE_TOPIC);
            put_str(&mut p, topic);
        }
        Record::DeletePartition {
            group,
            topic,
            partition,
        } => {
            p.put_u8(KIND_DELETE_PARTITION);
            put_str(&mut p, group);
            put_str(&mut p, topic);
            p.put_i32(*partition);
        }
    }
    out.put_u32(p.len() as u32);
    out.put_u32(crc32c::crc32c(&p));
    out.put_slice(&p);
}

/// Bounds-checked reader over an untrusted payload; every getter returns `None`
/// instead of panicking on short input.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)?.try_into().ok().map(i32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_be_bytes)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        let n = self.i32()?;
        if n < 0 {
            return Some(None);
        }
        String::from_utf8(self.take(n as usize)?.to_vec())
            .ok()
            .map(Some)
    }
}

/// Decodes the record at `pos`; `None` means end of log or a torn/corrupt record.
fn read_record(buf: &[u8], pos: usize) -> Option<(Record, usize)> {
    let mut hdr = Reader {
        buf: buf.get(pos..)?,
    };
    let len = hdr.u32()? as usize;
    let crc = hdr.u32()?;
    if len > MAX_RECORD {
        return None;
    }
    let payload = hdr.take(len)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let mut r = Reader { buf: payload };
    let record = match r.u8()? {
        KIND_COMMIT => Record::Commit {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
            committed: Committed {
                offset: r.i64()?,
                leader_epoch: r.i32()?,
                commit_ts: r.i64()?,
                metadata: r.opt_string()?,
            },
        },
        KIND_DELETE_GROUP => Record::DeleteGroup(r.string()?),
        KIND_DELETE_TOPIC => Record::DeleteTopic(r.string()?),
        KIND_DELETE_PARTITION => Record::DeletePartition {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        },
        _ => return None,
    };
    Some((record, pos + HEADER + len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: 3,
            metadata: Some("m".into()),
            commit_ts: 1,
        }
    }

    #[test]
    fn replay_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g", vec![("t".into(), 0, c(5)), ("u".into(), 1, c(7))])
                .unwrap();
            s.commit("h", vec![("t".into(), 0, c(9))]).unwrap();
            s.delete_topic("u").unwrap();
            s.delete_group("h").unwrap();
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        let g = s.group("g").unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g.get(&("t".to_string(), 0)), Some(&c(5)));
        assert!(s.group("h").is_none());
    }

    #[test]
    fn corrupt_crc_in_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g", vec![("t".into(), 0, c(1))]).unwrap();
            s.commit("g", vec![("t".into(), 0, c(2))]).unwrap();
        }
        let path = dir.path().join(LOG_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(s.group("g").unwrap()[&("t".to_string(), 0)].offset, 1);
        assert_eq!(s.records_in_file(), 1);
        assert!(std::fs::metadata(&path).unwrap().len() < bytes.len() as u64);
    }

    #[test]
    fn compaction_rewrites_live_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.set_compact_min_records(10);
            for i in 0..50 {
                s.commit("g", vec![("t".into(), 0, c(i))]).unwrap();
            }
            assert!(s.records_in_file() < 10, "{}", s.records_in_file());
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(s.group("g").unwrap()[&("t".to_string(), 0)].offset, 49);
    }
}
