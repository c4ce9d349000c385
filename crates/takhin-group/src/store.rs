//! The durable committed-offset store: an append-only `offsets.log` of
//! length-prefixed, CRC32C-checked records, replayed into memory on open.
//!
//! Record layout: `[len: u32 BE][crc32c(payload): u32 BE][payload: len bytes]`.
//! Payload starts with a kind byte: commit, group tombstone, topic tombstone or
//! partition tombstone (retention expiry). A torn or corrupt tail (crash during
//! append) is truncated at the last good record; everything before it is kept.
//! A complete record (valid CRC) whose content cannot be used is skipped, never
//! truncated at, so it cannot take later commits down with it.
//! The log is rewritten compactly (temp file, fsync, rename, reopen, fsync dir)
//! once it holds several times more records than live offsets.
//!
//! A failed append is rolled back (the file is cut back to its length before the
//! write) so no partial record is left for later appends to hide behind. If even
//! that fails, or the store lost track of its file during compaction, the store
//! is marked failed and refuses every later write instead of acknowledging
//! commits that a restart would not see.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, BytesMut};
use tracing::{info, warn};

use crate::GroupError;

const LOG_NAME: &str = "offsets.log";
const TMP_NAME: &str = "offsets.log.tmp";
/// Upper bound on one record's payload. Appends refuse to write anything larger;
/// on replay a larger length is never trusted as a torn-tail allocation request.
const MAX_RECORD: usize = 1 << 20;
/// Longest group id accepted for commits: the most a non-flexible Kafka STRING
/// can carry.
pub(crate) const MAX_GROUP_ID: usize = i16::MAX as usize;
/// Kafka's topic name limit (`Topic.MAX_NAME_LENGTH`).
pub(crate) const MAX_TOPIC_NAME: usize = 249;
/// Kafka's default `offset.metadata.max.bytes`.
pub(crate) const MAX_METADATA: usize = 4096;
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
    /// Set when the file on disk may no longer match what was acknowledged (a
    /// failed rollback, or a compaction that lost its file handle); every later
    /// write is refused until the store is reopened.
    failed: Option<String>,
    #[cfg(test)]
    pub faults: Faults,
}

/// Test-only fault injection into the store's file operations.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// `(n, k)`: the n-th (0-based) append write from now writes only its first
    /// `k` bytes and then fails like ENOSPC.
    pub write: Option<(usize, usize)>,
    /// The n-th (0-based) append fdatasync from now fails.
    pub sync: Option<usize>,
    /// Rolling back a failed append (set_len) fails.
    pub set_len: bool,
    /// Reopening the log after the compaction rename fails.
    pub reopen: bool,
    /// Fsyncing the directory after the compaction rename fails.
    pub dir_sync: bool,
}

#[cfg(test)]
fn countdown(slot: &mut Option<usize>) -> bool {
    match slot {
        Some(0) => {
            *slot = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

#[cfg(test)]
fn injected() -> io::Error {
    io::Error::other("injected fault")
}

/// What replay found at one position of the log.
enum Decoded {
    Record(Record, usize),
    /// Intact but unusable (oversized or undecodable): skip to the next record.
    Skip(usize),
    /// End of log, or a torn/corrupt record: truncate here.
    End,
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
        loop {
            match read_record(&buf, pos) {
                Decoded::Record(record, next) => {
                    apply(&mut offsets, record);
                    pos = next;
                }
                Decoded::Skip(next) => {
                    warn!(
                        path = %path.display(),
                        at = pos,
                        bytes = next - pos,
                        "skipping an intact but unusable offset log record"
                    );
                    pos = next;
                }
                Decoded::End => break,
            }
            records += 1;
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
            failed: None,
            #[cfg(test)]
            faults: Faults::default(),
        };
        store.maybe_compact();
        store.check_usable()?;
        Ok(store)
    }

    /// Whether an earlier failure left the store refusing writes.
    #[cfg(test)]
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
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
    /// The batch is refused whole if any id, name or metadata exceeds its limit
    /// (the coordinator checks these per partition first).
    pub fn commit(
        &mut self,
        group: &str,
        entries: Vec<(String, i32, Committed)>,
    ) -> Result<(), GroupError> {
        let too_long = group.len() > MAX_GROUP_ID
            || entries.iter().any(|(topic, _, c)| {
                topic.len() > MAX_TOPIC_NAME
                    || c.metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA)
            });
        if too_long {
            return Err(self.invalid("commit exceeds group id, topic name or metadata limits"));
        }
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

    /// Drops offsets past retention (KIP-211): `empty_since(group)` is `None` for
    /// groups that still have members (never expired) and otherwise the time the
    /// group became empty; an offset expires once
    /// `now_ms >= max(commit_ts, empty_since) + retention_ms`.
    pub fn expire(
        &mut self,
        now_ms: i64,
        retention_ms: i64,
        empty_since: impl Fn(&str) -> Option<i64>,
    ) -> Result<usize, GroupError> {
        let mut records = Vec::new();
        for (group, parts) in &self.offsets {
            let Some(since) = empty_since(group) else {
                continue;
            };
            for ((topic, partition), c) in parts {
                if now_ms >= c.commit_ts.max(since).saturating_add(retention_ms) {
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
        self.check_usable()?;
        self.file.sync_all().map_err(io_err(&self.path))
    }

    fn invalid(&self, msg: &str) -> GroupError {
        GroupError::Io {
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()),
        }
    }

    fn check_usable(&self) -> Result<(), GroupError> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(GroupError::Io {
                path: self.path.clone(),
                source: io::Error::other(format!(
                    "offset store failed earlier ({why}); refusing writes until reopened"
                )),
            }),
        }
    }

    fn mark_failed(&mut self, why: String) {
        tracing::error!(path = %self.path.display(), reason = %why, "offset store marked failed");
        self.failed = Some(why);
    }

    fn write_log(&mut self, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some((n, k)) = &mut self.faults.write {
            if *n == 0 {
                let k = (*k).min(buf.len());
                self.faults.write = None;
                self.file.write_all(&buf[..k])?;
                return Err(injected());
            }
            *n -= 1;
        }
        self.file.write_all(buf)
    }

    fn sync_log(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if countdown(&mut self.faults.sync) {
            return Err(injected());
        }
        self.file.sync_data()
    }

    /// Cuts the log back to `len` after a failed append and makes that durable.
    fn rollback(&mut self, len: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.set_len {
            return Err(injected());
        }
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len))?;
        self.file.sync_data()
    }

    fn live_count(&self) -> usize {
        self.offsets.values().map(|m| m.len()).sum()
    }

    fn append(&mut self, records: Vec<Record>) -> Result<(), GroupError> {
        self.check_usable()?;
        let mut buf = BytesMut::new();
        for r in &records {
            if let Err(e) = encode_record(&mut buf, r) {
                return Err(self.invalid(e));
            }
        }
        let start = self
            .file
            .metadata()
            .map(|m| m.len())
            .map_err(io_err(&self.path))?;
        // The commit is acknowledged only once it is on disk.
        let written = self.write_log(&buf).and_then(|()| self.sync_log());
        if let Err(e) = written {
            // Never leave a partial record behind: later appends would land after
            // it and replay would stop (and truncate) at it, losing them.
            if let Err(re) = self.rollback(start) {
                self.mark_failed(format!(
                    "could not roll back a failed append to {start} bytes: {re}"
                ));
            }
            return Err(GroupError::Io {
                path: self.path.clone(),
                source: e,
            });
        }
        self.records_in_file += records.len();
        for r in records {
            apply(&mut self.offsets, r);
        }
        // The records are durable; a compaction problem does not undo that.
        self.maybe_compact();
        Ok(())
    }

    /// Compacts when the log is mostly superseded records. Failures before the
    /// rename leave the old log in charge and are only logged; failures after it
    /// mark the store failed (inside [`Self::compact`]).
    fn maybe_compact(&mut self) {
        let live = self.live_count();
        if self.records_in_file < self.compact_min_records
            || self.records_in_file <= live.saturating_mul(4)
        {
            return;
        }
        if let Err(e) = self.compact(live) {
            warn!(error = %e, "offset log compaction failed");
        }
    }

    fn compact(&mut self, live: usize) -> Result<(), GroupError> {
        let tmp = self.dir.join(TMP_NAME);
        let mut buf = BytesMut::new();
        for (group, parts) in &self.offsets {
            for ((topic, partition), committed) in parts {
                let record = Record::Commit {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed: committed.clone(),
                };
                if let Err(e) = encode_record(&mut buf, &record) {
                    return Err(self.invalid(e));
                }
            }
        }
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&buf)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        // The old file is unlinked now: switch to the new one before anything
        // else can fail, or later appends would go to a deleted inode.
        match self.reopen() {
            Ok(f) => self.file = f,
            Err(e) => {
                self.mark_failed(format!("could not reopen the log after compaction: {e}"));
                return Err(io_err(&self.path)(e));
            }
        }
        info!(
            before = self.records_in_file,
            after = live,
            "offset log compacted"
        );
        self.records_in_file = live;
        // The rename itself must be durable, or a crash could resurrect the old
        // log without the commits appended to the new one from here on.
        if let Err(e) = self.sync_dir() {
            self.mark_failed(format!(
                "could not fsync the directory after compaction: {e}"
            ));
            return Err(io_err(&self.dir)(e));
        }
        Ok(())
    }

    fn reopen(&mut self) -> io::Result<File> {
        #[cfg(test)]
        if self.faults.reopen {
            return Err(injected());
        }
        OpenOptions::new().read(true).append(true).open(&self.path)
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.dir_sync {
            return Err(injected());
        }
        File::open(&self.dir).and_then(|d| d.sync_all())
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

/// Appends one framed record to `out`; refuses payloads replay would not accept.
fn encode_record(out: &mut BytesMut, record: &Record) -> Result<(), &'static str> {
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
    if p.len() > MAX_RECORD {
        return Err("offset log record larger than the 1 MiB limit");
    }
    out.put_u32(p.len() as u32);
    out.put_u32(crc32c::crc32c(&p));
    out.put_slice(&p);
    Ok(())
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

/// Decodes the record at `pos`. A record that is complete and CRC-valid is
/// either used or skipped; only a torn or corrupt one ends the log.
fn read_record(buf: &[u8], pos: usize) -> Decoded {
    let Some(rest) = buf.get(pos..) else {
        return Decoded::End;
    };
    let mut hdr = Reader { buf: rest };
    let (Some(len), Some(crc)) = (hdr.u32(), hdr.u32()) else {
        return Decoded::End;
    };
    let len = len as usize;
    // The whole log is already in memory, so an absurd length costs nothing:
    // it either fits in what was read (and is checked) or is a torn tail.
    let Some(payload) = hdr.take(len) else {
        return Decoded::End;
    };
    if crc32c::crc32c(payload) != crc {
        return Decoded::End;
    }
    let next = pos + HEADER + len;
    if len > MAX_RECORD {
        return Decoded::Skip(next);
    }
    match decode_payload(payload) {
        Some(record) => Decoded::Record(record, next),
        None => Decoded::Skip(next),
    }
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
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
    Some(record)
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

    fn offset_of(s: &OffsetStore, group: &str, topic: &str) -> Option<i64> {
        s.group(group)
            .and_then(|g| g.get(&(topic.to_string(), 0)))
            .map(|c| c.offset)
    }

    #[test]
    fn torn_write_is_rolled_back_and_later_commits_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g", vec![("a".into(), 0, c(1))]).unwrap();
            // ENOSPC after 5 bytes of the next record.
            s.faults.write = Some((0, 5));
            assert!(s.commit("g", vec![("b".into(), 0, c(2))]).is_err());
            assert_eq!(offset_of(&s, "g", "b"), None);
            s.commit("g", vec![("c".into(), 0, c(3))]).unwrap();
            assert!(!s.is_failed());
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(offset_of(&s, "g", "a"), Some(1));
        assert_eq!(offset_of(&s, "g", "b"), None);
        assert_eq!(offset_of(&s, "g", "c"), Some(3), "acknowledged commit lost");
        assert_eq!(s.records_in_file(), 2);
    }

    #[test]
    fn failed_sync_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g", vec![("a".into(), 0, c(1))]).unwrap();
            s.faults.sync = Some(0);
            assert!(s.commit("g", vec![("a".into(), 0, c(2))]).is_err());
            s.commit("g", vec![("c".into(), 0, c(3))]).unwrap();
        }
        // The unacknowledged commit does not resurface after a restart.
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(offset_of(&s, "g", "a"), Some(1));
        assert_eq!(offset_of(&s, "g", "c"), Some(3));
    }

    #[test]
    fn failed_rollback_marks_store_failed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g", vec![("a".into(), 0, c(1))]).unwrap();
            s.faults.write = Some((0, 5));
            s.faults.set_len = true;
            assert!(s.commit("g", vec![("b".into(), 0, c(2))]).is_err());
            assert!(s.is_failed());
            // Nothing after the torn bytes may be acknowledged.
            assert!(s.commit("g", vec![("c".into(), 0, c(3))]).is_err());
            assert!(s.delete_group("g").is_err());
            assert!(s.sync().is_err());
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        assert!(!s.is_failed());
        assert_eq!(offset_of(&s, "g", "a"), Some(1));
        assert_eq!(offset_of(&s, "g", "c"), None);
    }

    /// Commits one offset at a time until the store refuses, and checks that the
    /// last acknowledged one is what a restart sees.
    fn compaction_fault(set: impl Fn(&mut Faults)) {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = None;
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.set_compact_min_records(10);
            set(&mut s.faults);
            for i in 0..50 {
                if s.commit("g", vec![("t".into(), 0, c(i))]).is_ok() {
                    acked = Some(i);
                }
            }
            assert!(s.is_failed());
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(offset_of(&s, "g", "t"), acked, "acknowledged commit lost");
    }

    #[test]
    fn failed_reopen_after_compaction_marks_store_failed() {
        compaction_fault(|f| f.reopen = true);
    }

    #[test]
    fn failed_dir_sync_after_compaction_marks_store_failed() {
        compaction_fault(|f| f.dir_sync = true);
    }

    #[test]
    fn oversized_commit_is_refused_and_cannot_wipe_later_commits() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            let mut big = c(1);
            big.metadata = Some("x".repeat(MAX_RECORD + 1));
            assert!(s.commit("g", vec![("t".into(), 0, big)]).is_err());
            let long_topic = "t".repeat(MAX_TOPIC_NAME + 1);
            assert!(s.commit("g", vec![(long_topic, 0, c(1))]).is_err());
            assert!(s
                .commit(&"g".repeat(MAX_GROUP_ID + 1), vec![("t".into(), 0, c(1))])
                .is_err());
            s.commit("g", vec![("t".into(), 0, c(2))]).unwrap();
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(offset_of(&s, "g", "t"), Some(2));
        assert_eq!(s.records_in_file(), 1);
        let mut buf = BytesMut::new();
        let huge = Record::DeleteTopic("t".repeat(MAX_RECORD));
        assert!(encode_record(&mut buf, &huge).is_err());
        assert!(buf.is_empty());
    }

    /// Frames `payload` the way `encode_record` does, with a valid CRC.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn intact_but_unusable_records_are_skipped_not_truncated_at() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit("g", vec![("a".into(), 0, c(1))]).unwrap();
        }
        let path = dir.path().join(LOG_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        // An oversized record as older versions could write, an unknown kind, and
        // a commit whose strings are cut short: all CRC-valid.
        let mut oversized = vec![KIND_DELETE_TOPIC];
        oversized.extend_from_slice(&((MAX_RECORD as u32).to_be_bytes()));
        oversized.resize(MAX_RECORD + 5, b'x');
        bytes.extend(frame(&oversized));
        bytes.extend(frame(&[99, 1, 2, 3]));
        bytes.extend(frame(&[KIND_COMMIT, 0, 0, 0, 50, b'g']));
        std::fs::write(&path, &bytes).unwrap();
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.len() as u64);
            s.commit("g", vec![("b".into(), 0, c(2))]).unwrap();
        }
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(offset_of(&s, "g", "a"), Some(1));
        assert_eq!(offset_of(&s, "g", "b"), Some(2));
        assert_eq!(s.records_in_file(), 5);
    }

    #[test]
    fn expiry_counts_from_the_later_of_commit_and_empty_since() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = OffsetStore::open(dir.path()).unwrap();
        let mut old = c(1);
        old.commit_ts = 1000;
        s.commit("g", vec![("t".into(), 0, old.clone())]).unwrap();
        s.commit("h", vec![("t".into(), 0, old)]).unwrap();
        // Group with members: never expires.
        assert_eq!(s.expire(1_000_000, 100, |_| None).unwrap(), 0);
        // Empty since 5000: the commit is old, but retention counts from 5000.
        let since = |g: &str| (g == "g").then_some(5000);
        assert_eq!(s.expire(5099, 100, since).unwrap(), 0);
        assert_eq!(s.expire(5100, 100, since).unwrap(), 1);
        assert!(s.group("g").is_none());
        assert!(s.group("h").is_some());
        // Empty since before the commit: the commit time counts.
        assert_eq!(s.expire(1099, 100, |_| Some(0)).unwrap(), 0);
        assert_eq!(s.expire(1100, 100, |_| Some(0)).unwrap(), 1);
    }
}
