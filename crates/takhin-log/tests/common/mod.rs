//! Shared test helpers: building record batches with kafka-protocol's encoder and decoding reads.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use takhin_log::LogConfig;

pub const COMPRESSIONS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

pub fn record(offset: i64, ts: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        // The encoder only groups records whose offset - sequence is constant; -1 + delta is
        // what a non-idempotent batch (baseSequence -1) decodes to.
        sequence: (offset as i32).wrapping_sub(1),
        timestamp: ts,
        key: key.map(Bytes::copy_from_slice),
        value: value.map(Bytes::copy_from_slice),
        headers: IndexMap::new(),
    }
}

pub fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// One batch of `values` (keys "k{i}"), producer-relative offsets from 0, timestamps `ts + i`.
pub fn batch(values: &[&str], ts: i64, compression: Compression) -> Vec<u8> {
    let recs: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let key = format!("k{i}");
            record(
                i as i64,
                ts + i as i64,
                Some(key.as_bytes()),
                Some(v.as_bytes()),
            )
        })
        .collect();
    encode(&recs, compression)
}

/// One batch of key/value pairs (None value = tombstone), all with timestamp `ts`.
pub fn kv_batch(pairs: &[(&str, Option<&str>)], ts: i64) -> Vec<u8> {
    let recs: Vec<Record> = pairs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| record(i as i64, ts, Some(k.as_bytes()), v.map(|v| v.as_bytes())))
        .collect();
    encode(&recs, Compression::None)
}

/// Idempotent producer batch with `n` records.
pub fn idem_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let recs: Vec<Record> = (0..n)
        .map(|i| {
            let mut r = record(i as i64, 1000, Some(b"k"), Some(b"v"));
            r.producer_id = pid;
            r.producer_epoch = epoch;
            r.sequence = seq.wrapping_add(i as i32);
            r
        })
        .collect();
    encode(&recs, Compression::None)
}

pub fn decode(bytes: &Bytes) -> Vec<Record> {
    let mut buf = bytes.clone();
    RecordBatchDecoder::decode_all(&mut buf)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .collect()
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

pub fn value_str(r: &Record) -> String {
    String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()
}
