//! Integration tests of PartitionLog: append/read, recovery, timestamps, retention, compaction
//! and idempotent producer state.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use common::*;
use kafka_protocol::records::Compression;
use takhin_log::{CleanupPolicy, LogConfig, LogError, PartitionLog, TimestampType};

fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config).unwrap()
}

/// The value of the record at `offset`, read through the public API.
fn value_at(log: &PartitionLog, offset: i64) -> Option<String> {
    let res = log.read(offset, 1, true).unwrap();
    decode(&res.records)
        .iter()
        .find(|r| r.offset == offset)
        .map(value_str)
}

/// Every offset's read result, raw, for identity comparisons across reopen.
fn snapshot(log: &PartitionLog) -> Vec<Bytes> {
    (log.log_start_offset()..log.log_end_offset())
        .map(|o| log.read(o, 1 << 20, true).unwrap().records)
        .collect()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Appends `n` batches of 3 records with all five codecs in turn; returns the value per offset.
fn fill(log: &PartitionLog, n: usize) -> Vec<String> {
    let mut model = Vec::new();
    let start = log.log_end_offset();
    for i in 0..n {
        let vals: Vec<String> = (0..3).map(|j| format!("value-{i}-{j}")).collect();
        let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
        let info = log
            .append(&batch(&refs, 1000 + i as i64 * 10, COMPRESSIONS[i % 5]), 0)
            .unwrap();
        assert_eq!(info.base_offset, start + model.len() as i64);
        assert_eq!(info.last_offset, start + model.len() as i64 + 2);
        assert_eq!(info.record_count, 3);
        assert!(!info.duplicate);
        model.extend(vals);
    }
    model
}

#[test]
fn round_trip_across_segments_all_codecs() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let model = fill(&log, 60);
    assert!(log.segment_count() > 4, "segments: {}", log.segment_count());
    assert_eq!(log.log_end_offset(), model.len() as i64);
    for (o, v) in model.iter().enumerate() {
        assert_eq!(
            value_at(&log, o as i64).as_deref(),
            Some(v.as_str()),
            "offset {o}"
        );
    }
    assert_eq!(
        log.size_bytes(),
        segment_files(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum::<u64>()
    );
}

#[test]
fn read_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let b = batch(&["a", "b", "c", "d", "e"], 100, Compression::None);
    let len = b.len();
    for _ in 0..4 {
        log.append(&b, 0).unwrap();
    }
    // Middle of a batch: the whole containing batch comes back.
    let res = log.read(2, 1 << 20, false).unwrap();
    let recs = decode(&res.records);
    assert_eq!(recs[0].offset, 0);
    assert_eq!(recs.len(), 20);
    assert_eq!(res.high_watermark, 20);
    assert_eq!(res.log_start_offset, 0);
    // max_bytes limits to whole batches.
    assert_eq!(log.read(7, 2 * len, false).unwrap().records.len(), 2 * len);
    assert_eq!(
        log.read(7, 2 * len + 10, false).unwrap().records.len(),
        2 * len
    );
    assert_eq!(
        decode(&log.read(7, 2 * len, false).unwrap().records)[0].offset,
        5
    );
    // KIP-74: too small a limit yields nothing unless min_one.
    assert!(log.read(7, 1, false).unwrap().records.is_empty());
    assert_eq!(log.read(7, 1, true).unwrap().records.len(), len);
    // End of log and out of range.
    assert!(log.read(20, 100, true).unwrap().records.is_empty());
    assert!(matches!(
        log.read(21, 100, true),
        Err(LogError::OffsetOutOfRange {
            offset: 21,
            log_start: 0,
            log_end: 20
        })
    ));
    assert!(matches!(
        log.read(-1, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn reopen_after_close_and_after_unclean_drop() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    fill(&log, 30);
    let before = snapshot(&log);
    log.close().unwrap();
    drop(log);

    let log = open(dir.path(), small_config());
    assert_eq!(snapshot(&log), before);
    let model = fill(&log, 10);
    assert_eq!(model.len(), 30);
    let before = snapshot(&log);
    let end = log.log_end_offset();
    drop(log); // unclean: no close

    let log = open(dir.path(), small_config());
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(snapshot(&log), before);
    assert_eq!(
        log.append(&batch(&["x"], 5, Compression::None), 0)
            .unwrap()
            .base_offset,
        end
    );
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    TruncateMidBatch,
    Garbage,
    FlipCrcByte,
}

fn torn_tail(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let log = open(dir.path(), cfg.clone());
    let model = fill(&log, 20);
    let end = log.log_end_offset();
    let last_batch = log.read(end - 1, 1 << 20, true).unwrap().records;
    let last_len = last_batch.len() as u64;
    drop(log);

    let last_file = segment_files(dir.path()).pop().unwrap();
    let file_len = std::fs::metadata(&last_file).unwrap().len();
    assert!(file_len >= last_len);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last_file)
        .unwrap();
    let expected_end = match damage {
        Damage::TruncateMidBatch => {
            f.set_len(file_len - last_len / 2).unwrap();
            end - 3
        }
        Damage::Garbage => {
            drop(f);
            let mut f = OpenOptions::new().append(true).open(&last_file).unwrap();
            f.write_all(&[0xAB; 37]).unwrap();
            end
        }
        Damage::FlipCrcByte => {
            use std::os::unix::fs::FileExt;
            let at = file_len - last_len + 40;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x5A], at).unwrap();
            end - 3
        }
    };

    let log = open(dir.path(), cfg);
    assert_eq!(log.log_end_offset(), expected_end, "{damage:?}");
    for o in 0..expected_end {
        assert_eq!(
            value_at(&log, o).as_deref(),
            Some(model[o as usize].as_str())
        );
    }
    assert!(matches!(
        log.read(expected_end + 1, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let info = log
        .append(&batch(&["after"], 5, Compression::None), 0)
        .unwrap();
    assert_eq!(info.base_offset, expected_end);
    assert_eq!(value_at(&log, expected_end).as_deref(), Some("after"));
    // The file now ends exactly at the valid data plus the new batch.
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_end_offset(), expected_end + 1);
}

#[test]
fn recovery_truncates_torn_batch() {
    torn_tail(Damage::TruncateMidBatch);
}

#[test]
fn recovery_drops_trailing_garbage() {
    torn_tail(Damage::Garbage);
}

#[test]
fn recovery_drops_batch_with_bad_crc() {
    torn_tail(Damage::FlipCrcByte);
}

#[test]
fn recovery_removes_segments_after_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let model = fill(&log, 30);
    let segs_before = log.segment_count();
    drop(log);
    // Corrupt the second-to-last segment's first batch: it and everything after must go.
    std::fs::remove_file(dir.path().join("recovery_point")).unwrap();
    let files = segment_files(dir.path());
    let victim = &files[files.len() - 2];
    let base: i64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(victim)
            .unwrap();
        // Inside the first batch's records, i.e. the CRC-covered range.
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 70).unwrap();
        f.write_all_at(&[b[0] ^ 0xFF], 70).unwrap();
    }
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_end_offset(), base);
    assert_eq!(log.segment_count(), segs_before - 1);
    for o in 0..base {
        assert_eq!(
            value_at(&log, o).as_deref(),
            Some(model[o as usize].as_str())
        );
    }
}

#[test]
fn invalid_appends_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 200,
            ..LogConfig::default()
        },
    );
    let good = batch(&["a", "b"], 1, Compression::None);
    log.append(&good, 0).unwrap();
    let size = log.size_bytes();

    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 2] ^= 0x01;
    assert!(matches!(
        log.append(&bad, 0),
        Err(LogError::CorruptRecord(_))
    ));
    // Second batch of a payload invalid: the first must not be stored either.
    let payload = [good.clone(), bad.clone()].concat();
    assert!(matches!(
        log.append(&payload, 0),
        Err(LogError::CorruptRecord(_))
    ));
    // Torn payload.
    assert!(matches!(
        log.append(&good[..n - 3], 0),
        Err(LogError::CorruptRecord(_))
    ));
    // Bad magic.
    let mut magic = good.clone();
    magic[16] = 1;
    assert!(matches!(
        log.append(&magic, 0),
        Err(LogError::CorruptRecord(_))
    ));
    // Too large.
    let big_value = "x".repeat(300);
    let big = batch(&[big_value.as_str()], 1, Compression::None);
    assert!(matches!(
        log.append(&big, 0),
        Err(LogError::RecordTooLarge { max: 200, size }) if size == big.len()
    ));
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.size_bytes(), size);
    // A valid multi-batch payload is accepted whole.
    let info = log.append(&[good.clone(), good].concat(), 0).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.record_count),
        (2, 5, 4)
    );
}

#[test]
fn compacted_topic_rejects_null_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            cleanup_policy: CleanupPolicy::Compact,
            ..LogConfig::default()
        },
    );
    let keyless = encode(&[record(0, 1, None, Some(b"v"))], Compression::None);
    assert!(matches!(
        log.append(&keyless, 0),
        Err(LogError::InvalidRecord(_))
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn log_append_time_rewrites_timestamp_with_valid_crc() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            message_timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        },
    );
    for codec in COMPRESSIONS {
        log.append(&batch(&["a", "b"], 1000, codec), 0).unwrap();
    }
    let info = log
        .append(&batch(&["c", "d"], 1000, Compression::Gzip), 5000)
        .unwrap();
    assert_eq!(info.log_append_time_ms, 5000);
    let res = log.read(info.base_offset, 1, true).unwrap();
    let raw = &res.records;
    let attrs = i16::from_be_bytes([raw[21], raw[22]]);
    assert_ne!(attrs & 0x08, 0, "LogAppendTime attribute set");
    assert_eq!(attrs & 0x07, 1, "compression kept");
    assert_eq!(i64::from_be_bytes(raw[35..43].try_into().unwrap()), 5000);
    let crc = u32::from_be_bytes(raw[17..21].try_into().unwrap());
    assert_eq!(crc, crc32c::crc32c(&raw[21..]));
    // Decoding verifies the CRC too.
    assert_eq!(decode(&res.records).len(), 2);
    assert_eq!(log.offset_for_timestamp(4000).unwrap(), Some((10, 5000)));
    assert_eq!(log.max_timestamp(), Some((5000, 10)));
}

#[test]
fn offset_for_timestamp_is_exact_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    // Timestamps are not monotonic inside a batch: (offset, ts) model.
    let mut model: Vec<i64> = Vec::new();
    for i in 0..40i64 {
        let ts = [100 * i + 50, 100 * i, 100 * i + 90];
        let recs: Vec<_> = ts
            .iter()
            .enumerate()
            .map(|(j, t)| record(j as i64, *t, Some(b"k"), Some(b"v")))
            .collect();
        log.append(&encode(&recs, COMPRESSIONS[i as usize % 5]), 0)
            .unwrap();
        model.extend(ts);
    }
    assert!(log.segment_count() > 3);
    for target in (-10..4100).step_by(7) {
        let expected = model
            .iter()
            .enumerate()
            .find(|(_, t)| **t >= target)
            .map(|(o, t)| (o as i64, *t));
        assert_eq!(
            log.offset_for_timestamp(target).unwrap(),
            expected,
            "ts {target}"
        );
    }
    assert_eq!(log.max_timestamp(), Some((3990, 119)));
    // Same answers after a reopen (indexes rebuilt / loaded).
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.offset_for_timestamp(2051).unwrap(), Some((62, 2090)));
    assert_eq!(log.offset_for_timestamp(5000).unwrap(), None);
}

#[test]
fn retention_by_time_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: Some(1000),
        ..small_config()
    };
    let log = open(dir.path(), cfg);
    fill(&log, 40); // batch i has timestamps 1000 + 10 i ..
    let segs = log.segment_count();
    let now = 1000 + 200 + 1000; // everything with max ts < 1200 is expired
    let report = log.enforce_retention(now).unwrap();
    assert!(report.segments_deleted > 0 && report.segments_deleted < segs);
    let start = log.log_start_offset();
    assert!(start > 0);
    // Whole segments: the first remaining segment file starts at log_start.
    let first_file = segment_files(dir.path())[0].clone();
    let first_base: i64 = first_file
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first_base, start);
    // Batch starting at log_start is not expired only if its segment has a young record.
    assert!(matches!(
        log.read(start - 1, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(!log.read(start, 100, true).unwrap().records.is_empty());
    assert_eq!(log.read(start, 100, true).unwrap().log_start_offset, start);
    // Everything older than the deleted horizon really was older.
    let res = log.read(start, 1 << 20, true).unwrap();
    assert!(decode(&res.records)
        .iter()
        .any(|r| r.timestamp >= 1200 - 30));
    // The start offset survives reopen.
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn retention_by_size_and_policy_gate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: Some(3000),
        cleanup_policy: CleanupPolicy::Compact,
        ..small_config()
    };
    let log = open(dir.path(), cfg.clone());
    fill(&log, 80);
    let total = log.size_bytes();
    assert!(total > 6000);
    // Compact-only topics never delete by retention.
    assert_eq!(log.enforce_retention(0).unwrap().segments_deleted, 0);
    log.set_config(LogConfig {
        cleanup_policy: CleanupPolicy::Delete,
        ..cfg
    });
    let report = log.enforce_retention(0).unwrap();
    assert!(report.segments_deleted > 0);
    assert_eq!(log.size_bytes(), total - report.bytes_deleted);
    assert!(log.size_bytes() >= 3000 - 1024, "does not delete too much");
    assert!(log.size_bytes() < 3000 + 1024, "does delete enough");
    let start = log.log_start_offset();
    assert!(matches!(
        log.read(0, 100, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(!log.read(start, 100, true).unwrap().records.is_empty());
}

#[test]
fn segment_ms_rolls_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: Some(100),
        ..LogConfig::default()
    };
    let log = open(dir.path(), cfg);
    log.append(&batch(&["a"], 1, Compression::None), 1000)
        .unwrap();
    log.enforce_retention(1050).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.enforce_retention(1100).unwrap();
    assert_eq!(log.segment_count(), 2);
    // Empty active segment does not roll.
    log.enforce_retention(5000).unwrap();
    assert_eq!(log.segment_count(), 2);
}

fn compact_config() -> LogConfig {
    LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        delete_retention_ms: 1000,
        ..small_config()
    }
}

#[test]
fn compaction_keeps_latest_per_key_and_preserves_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), compact_config());
    // offset -> (key, value)
    let mut model: Vec<(String, Option<String>)> = Vec::new();
    for round in 0..12 {
        for codec in [Compression::None, Compression::Lz4] {
            let pairs: Vec<(String, Option<String>)> = (0..4)
                .map(|k| {
                    let key = format!("key{k}");
                    // key1 gets a tombstone in round 5 and is never written again.
                    let val = if k == 1 && round == 5 {
                        None
                    } else if k == 1 && round > 5 {
                        return (format!("other{round}"), Some(format!("o{round}")));
                    } else {
                        Some(format!("v{round}-{codec:?}"))
                    };
                    (key, val)
                })
                .collect();
            let refs: Vec<(&str, Option<&str>)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            let recs: Vec<_> = refs
                .iter()
                .enumerate()
                .map(|(i, (k, v))| record(i as i64, 1000, Some(k.as_bytes()), v.map(str::as_bytes)))
                .collect();
            log.append(&encode(&recs, codec), 0).unwrap();
            model.extend(pairs);
        }
    }
    let end = log.log_end_offset();
    assert!(log.segment_count() > 3);
    let size_before = log.size_bytes();

    // Within delete_retention_ms the tombstone stays.
    let report = log.compact(1500).unwrap();
    assert!(report.segments_cleaned > 0 && report.records_removed > 0);
    assert!(report.bytes_after < report.bytes_before);
    assert!(log.size_bytes() < size_before);
    let surviving = |log: &PartitionLog| {
        let mut out = Vec::new();
        let mut o = log.log_start_offset();
        while o < log.log_end_offset() {
            let res = log.read(o, 1 << 20, true).unwrap();
            let recs = decode(&res.records);
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                out.push(r.clone());
            }
            o = recs.last().unwrap().offset + 1;
        }
        out
    };
    let recs = surviving(&log);
    let latest = |key: &str| model.iter().rposition(|(k, _)| k == key).unwrap() as i64;
    for r in &recs {
        let (k, v) = &model[r.offset as usize];
        // Offsets preserved: the record at an offset is the one originally appended there.
        assert_eq!(r.key.as_deref(), Some(k.as_bytes()));
        assert_eq!(r.value.as_deref(), v.as_deref().map(str::as_bytes));
    }
    let tombstone = latest("key1");
    assert!(recs
        .iter()
        .any(|r| r.offset == tombstone && r.value.is_none()));
    // Every key's latest record survives.
    let keys: std::collections::BTreeSet<&str> = model.iter().map(|(k, _)| k.as_str()).collect();
    for key in &keys {
        assert!(
            recs.iter().any(|r| r.offset == latest(key)),
            "latest of {key}"
        );
    }
    // Superseded records in sealed segments are gone: key0 has one survivor outside the active.
    let active_start = segment_files(dir.path())
        .last()
        .unwrap()
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    let key0_sealed = recs
        .iter()
        .filter(|r| r.key.as_deref() == Some(&b"key0"[..]) && r.offset < active_start)
        .count();
    assert!(key0_sealed <= 1);

    // Later, the tombstone is past delete_retention_ms and disappears.
    let report = log.compact(3000).unwrap();
    assert!(report.records_removed >= 1);
    let recs = surviving(&log);
    assert!(!recs.iter().any(|r| r.offset == tombstone));
    assert!(!recs.iter().any(|r| r.key.as_deref() == Some(&b"key1"[..])));
    assert_eq!(log.log_end_offset(), end);
    // Compressed batches keep their codec after re-encoding.
    let mut codecs = std::collections::BTreeSet::new();
    let mut o = 0;
    while o < end {
        let res = log.read(o, 1, true).unwrap();
        if res.records.is_empty() {
            break;
        }
        codecs.insert(res.records[22] & 0x07);
        o = decode(&res.records).last().unwrap().offset + 1;
    }
    assert!(codecs.contains(&3) && codecs.contains(&0));

    // Reads in a removed gap return the next surviving batch; appends continue.
    let info = log
        .append(&kv_batch(&[("key0", Some("new"))], 1000), 0)
        .unwrap();
    assert_eq!(info.base_offset, end);
    assert_eq!(value_at(&log, end).as_deref(), Some("new"));
    let gap_read = decode(&log.read(0, 1, true).unwrap().records);
    assert!(gap_read[0].offset >= 0);
    let after = surviving(&log);
    drop(log);
    let log = open(dir.path(), compact_config());
    assert_eq!(surviving(&log), after);
    assert_eq!(log.log_end_offset(), end + 1);
}

#[test]
fn compaction_respects_min_lag_and_leftovers_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        min_compaction_lag_ms: 10_000,
        ..compact_config()
    };
    let log = open(dir.path(), cfg.clone());
    for i in 0..30 {
        let v = format!("v{i}");
        log.append(&kv_batch(&[("same", Some(v.as_str()))], 1000 + i), 0)
            .unwrap();
    }
    // All records are younger than the lag: nothing may be removed.
    let report = log.compact(5000).unwrap();
    assert_eq!(report.records_removed, 0);
    let report = log.compact(20_000).unwrap();
    assert!(report.records_removed > 0);
    let end = log.log_end_offset();
    drop(log);
    // A crash mid-compaction leaves a .cleaned file behind: it is ignored and removed.
    std::fs::write(
        dir.path().join("00000000000000000000.log.cleaned"),
        b"garbage",
    )
    .unwrap();
    let log = open(dir.path(), cfg);
    assert!(!dir.path().join("00000000000000000000.log.cleaned").exists());
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(value_at(&log, end - 1).as_deref(), Some("v29"));
}

#[test]
fn idempotent_producer_duplicates_and_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let first = log.append(&idem_batch(7, 0, 0, 3), 0).unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 2));
    log.append(&batch(&["plain"], 1, Compression::None), 0)
        .unwrap();
    // Retry of the first batch: same offsets, nothing appended.
    let dup = log.append(&idem_batch(7, 0, 0, 3), 0).unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.base_offset, dup.last_offset), (0, 2));
    assert_eq!(log.log_end_offset(), 4);
    let second = log.append(&idem_batch(7, 0, 3, 2), 0).unwrap();
    assert_eq!(second.base_offset, 4);
    // Gap.
    assert!(matches!(
        log.append(&idem_batch(7, 0, 10, 1), 0),
        Err(LogError::OutOfOrderSequence {
            producer_id: 7,
            expected: 5,
            got: 10
        })
    ));
    // New epoch must start at 0.
    assert!(matches!(
        log.append(&idem_batch(7, 1, 5, 1), 0),
        Err(LogError::OutOfOrderSequence { expected: 0, .. })
    ));
    log.append(&idem_batch(7, 1, 0, 1), 0).unwrap();
    assert_eq!(log.producer_epoch(7), Some(1));
    // Fenced epoch.
    assert!(matches!(
        log.append(&idem_batch(7, 0, 5, 1), 0),
        Err(LogError::InvalidProducerEpoch {
            producer_id: 7,
            current: 1,
            got: 0
        })
    ));
    // Unknown producers accept any sequence.
    log.append(&idem_batch(9, 3, 42, 1), 0).unwrap();
    assert_eq!(log.producer_epoch(9), Some(3));
    assert_eq!(log.producer_epoch(1234), None);
    let end = log.log_end_offset();

    for clean in [false, true] {
        if clean {
            log_close_reopen(dir.path());
        }
        let log = open(dir.path(), LogConfig::default());
        assert_eq!(log.producer_epoch(7), Some(1));
        assert_eq!(log.producer_epoch(9), Some(3));
        let dup = log.append(&idem_batch(7, 1, 0, 1), 0).unwrap();
        assert!(dup.duplicate);
        assert_eq!(dup.base_offset, 6);
        assert!(matches!(
            log.append(&idem_batch(7, 1, 3, 1), 0),
            Err(LogError::OutOfOrderSequence { expected: 1, .. })
        ));
        assert!(matches!(
            log.append(&idem_batch(7, 0, 5, 1), 0),
            Err(LogError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(log.log_end_offset(), end);
    }
    drop(log);
}

fn log_close_reopen(dir: &Path) {
    let log = open(dir, LogConfig::default());
    log.close().unwrap();
}

#[test]
fn duplicate_cache_holds_last_five_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    for seq in 0..7 {
        log.append(&idem_batch(1, 0, seq, 1), 0).unwrap();
    }
    assert!(log.append(&idem_batch(1, 0, 2, 1), 0).unwrap().duplicate);
    assert_eq!(
        log.append(&idem_batch(1, 0, 6, 1), 0).unwrap().base_offset,
        6
    );
    // Older than the cache: not recognisable, reported as out of order.
    assert!(matches!(
        log.append(&idem_batch(1, 0, 1, 1), 0),
        Err(LogError::OutOfOrderSequence {
            expected: 7,
            got: 1,
            ..
        })
    ));
}

#[test]
fn flush_policies_do_not_change_contents() {
    use std::time::Duration;
    use takhin_log::FlushPolicy;
    for flush in [
        FlushPolicy::EveryBatch,
        FlushPolicy::Bytes(500),
        FlushPolicy::Interval(Duration::from_millis(10)),
        FlushPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(
            dir.path(),
            LogConfig {
                flush,
                ..small_config()
            },
        );
        let model = fill(&log, 5);
        log.flush().unwrap();
        for (o, v) in model.iter().enumerate() {
            assert_eq!(value_at(&log, o as i64).as_deref(), Some(v.as_str()));
        }
    }
}

/// Many small segments of the same few keys: compaction empties every sealed segment, and a
/// fetch from the log start must still return data (not loop forever on an empty result).
#[test]
fn compaction_emptying_segments_keeps_reads_from_start_working() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), compact_config());
    for i in 0..400 {
        let v = format!("v{i}");
        let k = ["a", "b", "c"][i % 3];
        log.append(&kv_batch(&[(k, Some(v.as_str()))], 1000), 0)
            .unwrap();
    }
    let end = log.log_end_offset();
    let segs_before = log.segment_count();
    assert!(segs_before > 12, "{segs_before} segments");
    let report = log.compact(5000).unwrap();
    assert!(report.records_removed > 0);
    assert!(log.segment_count() < segs_before);
    let check = |log: &PartitionLog| {
        assert_eq!(log.log_start_offset(), 0);
        assert_eq!(log.log_end_offset(), end);
        let res = log.read(0, 1 << 20, false).unwrap();
        assert!(res.high_watermark > 0);
        let recs = decode(&res.records);
        assert!(!recs.is_empty(), "read from the log start returned nothing");
        // Consuming from the start reaches the latest value of every key.
        let mut o = 0;
        let mut last = std::collections::BTreeMap::new();
        while o < log.log_end_offset() {
            let recs = decode(&log.read(o, 1 << 20, true).unwrap().records);
            assert!(!recs.is_empty(), "empty read at {o}");
            for r in &recs {
                last.insert(r.key.clone().unwrap(), value_str(r));
            }
            o = recs.last().unwrap().offset + 1;
        }
        assert_eq!(last.len(), 3);
        assert_eq!(last[&Bytes::from_static(b"a")], "v399");
        // Offsets inside a removed range read on to the next surviving batch.
        let mid = decode(&log.read(end / 2, 1, true).unwrap().records);
        assert!(mid[0].offset >= end / 2);
    };
    check(&log);
    drop(log);
    let log = open(dir.path(), compact_config());
    check(&log);
    let info = log
        .append(&kv_batch(&[("a", Some("new"))], 1000), 0)
        .unwrap();
    assert_eq!(info.base_offset, end);
}

#[test]
fn producer_state_expires() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        producer_id_expiration_ms: 1000,
        ..LogConfig::default()
    };
    assert_eq!(LogConfig::default().producer_id_expiration_ms, 86_400_000);
    let log = open(dir.path(), cfg);
    log.append(&idem_batch(7, 3, 0, 2), 10_000).unwrap();
    log.append(&idem_batch(8, 1, 0, 2), 10_500).unwrap();
    log.enforce_retention(11_000).unwrap();
    assert_eq!(log.producer_epoch(7), Some(3));
    log.enforce_retention(11_200).unwrap();
    assert_eq!(log.producer_epoch(7), None);
    assert_eq!(log.producer_epoch(8), Some(1));
    // An expired producer is unknown again: any sequence is accepted.
    log.append(&idem_batch(7, 3, 42, 1), 11_300).unwrap();
    assert_eq!(log.producer_epoch(7), Some(3));
}

/// Corruption in a sealed segment below the recovery point costs only that segment's tail.
#[test]
fn recovery_keeps_later_segments_after_old_sealed_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let model = fill(&log, 80);
    log.flush().unwrap();
    let end = log.log_end_offset();
    drop(log);
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "{} segments", files.len());
    let victim = &files[1];
    let base: i64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let next: i64 = files[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(victim).unwrap();
        // Bad magic in the first batch: the whole segment's data is lost.
        f.write_all_at(&[7], 16).unwrap();
    }
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.segment_count(), files.len());
    for o in (0..base).chain(next..end) {
        assert_eq!(
            value_at(&log, o).as_deref(),
            Some(model[o as usize].as_str()),
            "offset {o}"
        );
    }
    // Reads in the lost range move on to the next segment.
    let recs = decode(&log.read(base, 1, true).unwrap().records);
    assert_eq!(recs[0].offset, next);
    log.append(&batch(&["after"], 1, Compression::None), 0)
        .unwrap();
    assert_eq!(value_at(&log, end).as_deref(), Some("after"));
}

#[test]
fn open_creates_nested_partition_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    let log = open(&path, LogConfig::default());
    log.append(&batch(&["x"], 1, Compression::None), 0).unwrap();
    assert!(path.is_dir());
}

#[test]
fn flush_is_a_no_op_when_nothing_was_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    fill(&log, 10);
    log.flush().unwrap();
    let rp = dir.path().join("recovery_point");
    assert_eq!(
        std::fs::read_to_string(&rp).unwrap(),
        log.log_end_offset().to_string()
    );
    std::fs::remove_file(&rp).unwrap();
    log.flush().unwrap();
    assert!(
        !rp.exists(),
        "flush without appends rewrote the recovery point"
    );
    fill(&log, 1);
    log.flush().unwrap();
    assert_eq!(
        std::fs::read_to_string(&rp).unwrap(),
        log.log_end_offset().to_string()
    );
}

/// Durability work after a successful write (here: the recovery point write of a roll) failing
/// does not fail the append: the records are in the log; the next flush retries.
#[test]
fn append_succeeds_when_durability_work_after_the_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        flush: takhin_log::FlushPolicy::EveryBatch,
        ..small_config()
    };
    let log = open(dir.path(), cfg);
    // write_synced writes `recovery_point.tmp` first: a directory there makes it fail.
    std::fs::create_dir(dir.path().join("recovery_point.tmp")).unwrap();
    let model = fill(&log, 40);
    assert!(log.segment_count() > 2);
    for (o, v) in model.iter().enumerate() {
        assert_eq!(value_at(&log, o as i64).as_deref(), Some(v.as_str()));
    }
    assert!(log.flush().is_err());
    std::fs::remove_dir(dir.path().join("recovery_point.tmp")).unwrap();
    log.flush().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("recovery_point")).unwrap(),
        log.log_end_offset().to_string()
    );
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_end_offset(), model.len() as i64);
}

#[test]
fn sync_through_is_shared_by_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(PartitionLog::open(dir.path(), LogConfig::default()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let value = format!("t{t}-{i}");
                    let info = log
                        .append(&batch(&[value.as_str()], 1_000, Compression::None), 1)
                        .unwrap();
                    log.sync_through(info.last_offset + 1).unwrap();
                    // Durable through our own records, whoever did the fsync.
                    assert!(log.durable_end_offset() > info.last_offset);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(log.log_end_offset(), 200);
    assert_eq!(log.durable_end_offset(), 200);
}
