//! Kafka record batch (magic v2) header parsing, validation of produce payloads and the in-place
//! rewrites the log performs (base offset assignment, LogAppendTime stamping, CRC recomputation).

use std::io::Read;

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordSet};

use crate::error::LogError;

/// Floor of the bound on a compressed batch's decompressed size (see [`decompressed_limit`]).
pub const MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// Largest decompressed size accepted for one batch: 64 MiB, or `max_message_bytes` if larger.
/// It keeps a decompression bomb (a few KiB of gzip expanding to GiBs) from exhausting memory.
pub fn decompressed_limit(max_message_bytes: u32) -> usize {
    MAX_DECOMPRESSED_BYTES.max(max_message_bytes as usize)
}

/// Size of the v2 batch header, up to and including recordCount.
pub const HEADER_SIZE: usize = 61;
/// baseOffset + batchLength: the bytes not counted by batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal batchLength (a header with no records).
pub const MIN_BATCH_LENGTH: i32 = (HEADER_SIZE - LOG_OVERHEAD) as i32;
/// CRC covers attributes onwards.
const CRC_START: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const MAX_TIMESTAMP_AT: usize = 35;
const CRC_AT: usize = 17;

pub const ATTR_COMPRESSION_MASK: i16 = 0x7;
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
pub const ATTR_CONTROL: i16 = 1 << 5;

/// Decoded fixed-size header of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl BatchHeader {
    /// Parses the first [`HEADER_SIZE`] bytes of `buf`; None when `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Option<BatchHeader> {
        if buf.len() < HEADER_SIZE {
            return None;
        }
        Some(BatchHeader {
            base_offset: i64::from_be_bytes(arr(buf, 0)),
            batch_length: i32::from_be_bytes(arr(buf, 8)),
            partition_leader_epoch: i32::from_be_bytes(arr(buf, 12)),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(arr(buf, 17)),
            attributes: i16::from_be_bytes(arr(buf, 21)),
            last_offset_delta: i32::from_be_bytes(arr(buf, 23)),
            base_timestamp: i64::from_be_bytes(arr(buf, 27)),
            max_timestamp: i64::from_be_bytes(arr(buf, 35)),
            producer_id: i64::from_be_bytes(arr(buf, 43)),
            producer_epoch: i16::from_be_bytes(arr(buf, 51)),
            base_sequence: i32::from_be_bytes(arr(buf, 53)),
            record_count: i32::from_be_bytes(arr(buf, 57)),
        })
    }

    /// Whole batch size on disk. Only meaningful once `batch_length >= MIN_BATCH_LENGTH` was checked.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }

    /// Sequence of the last record, wrapping at i32::MAX to 0 like Kafka's producer does.
    pub fn last_sequence(&self) -> i32 {
        let delta = self.last_offset_delta;
        if self.base_sequence > i32::MAX - delta {
            delta - (i32::MAX - self.base_sequence) - 1
        } else {
            self.base_sequence + delta
        }
    }
}

/// CRC-32C over the CRC-covered part of a complete batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// True when the stored CRC matches the content. `batch` must be a complete batch.
pub fn crc_matches(batch: &[u8]) -> bool {
    batch.len() >= HEADER_SIZE && u32::from_be_bytes(arr(batch, CRC_AT)) == compute_crc(batch)
}

/// Rewrites baseOffset; it sits outside the CRC range so the CRC stays valid.
pub fn set_base_offset(batch: &mut [u8], offset: i64) {
    batch[0..8].copy_from_slice(&offset.to_be_bytes());
}

/// Stamps LogAppendTime: attributes bit 3 and maxTimestamp = `now_ms`, then recomputes the CRC.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = i16::from_be_bytes(arr(batch, ATTRIBUTES_AT)) | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    rewrite_crc(batch);
}

/// Recomputes and stores the CRC after a header rewrite.
pub fn rewrite_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One batch of a produce payload: where it is and its header.
#[derive(Clone, Copy, Debug)]
pub struct PayloadBatch {
    pub start: usize,
    pub header: BatchHeader,
}

impl PayloadBatch {
    pub fn end(&self) -> usize {
        self.start + self.header.total_size()
    }
}

/// Splits and validates a produce payload (one or more batches back to back).
/// Checks, in Kafka's order: framing, size limit, magic, CRC, codec, record count, then the
/// records themselves (see [`validate_records`]); `require_keys` (compacted topics) also rejects
/// records without key outside control batches.
pub fn split_payload(
    payload: &[u8],
    max_message_bytes: u32,
    require_keys: bool,
) -> Result<Vec<PayloadBatch>, LogError> {
    if payload.is_empty() {
        return Err(LogError::InvalidRecord("empty produce payload".into()));
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < payload.len() {
        let rest = &payload[pos..];
        let header = BatchHeader::parse(rest).ok_or_else(|| {
            LogError::CorruptRecord(format!(
                "truncated batch header at byte {pos} ({} bytes left)",
                rest.len()
            ))
        })?;
        if header.batch_length < MIN_BATCH_LENGTH {
            return Err(LogError::CorruptRecord(format!(
                "batch length {} below minimum {MIN_BATCH_LENGTH}",
                header.batch_length
            )));
        }
        let total = header.total_size();
        if total > rest.len() {
            return Err(LogError::CorruptRecord(format!(
                "batch length {} exceeds the {} bytes left in the payload",
                header.batch_length,
                rest.len()
            )));
        }
        if total > max_message_bytes as usize {
            return Err(LogError::RecordTooLarge {
                size: total,
                max: max_message_bytes,
            });
        }
        if header.magic != 2 {
            return Err(LogError::CorruptRecord(format!(
                "unsupported magic {} (only v2 batches are accepted)",
                header.magic
            )));
        }
        if !crc_matches(&rest[..total]) {
            return Err(LogError::CorruptRecord(format!(
                "CRC mismatch in batch at byte {pos}"
            )));
        }
        if header.compression() > 4 {
            return Err(LogError::CorruptRecord(format!(
                "unknown compression codec {}",
                header.compression()
            )));
        }
        if header.record_count <= 0 || header.last_offset_delta < 0 {
            return Err(LogError::InvalidRecord(format!(
                "batch with record count {} and last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        if i64::from(header.record_count) != i64::from(header.last_offset_delta) + 1 {
            return Err(LogError::InvalidRecord(format!(
                "record count {} does not match last offset delta {}",
                header.record_count, header.last_offset_delta
            )));
        }
        validate_records(
            &rest[..total],
            &header,
            decompressed_limit(max_message_bytes),
            require_keys && !header.is_control(),
        )?;
        out.push(PayloadBatch { start: pos, header });
        pos += total;
    }
    Ok(out)
}

/// Reads a zigzag varlong at `*pos`, advancing it; None when truncated or longer than 10 bytes.
fn read_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    read_varlong(buf, pos).and_then(|v| i32::try_from(v).ok())
}

/// Walks the records of an uncompressed batch without copying: each record's length prefix must
/// stay inside the batch, the offset deltas must be 0..n-1, and exactly `recordCount` records must
/// fill the batch. With `require_keys` a null key (length -1) is rejected too.
fn walk_uncompressed(batch: &[u8], h: &BatchHeader, require_keys: bool) -> Result<(), LogError> {
    let invalid = |what: String| LogError::InvalidRecord(what);
    let records = &batch[HEADER_SIZE..];
    let mut pos = 0usize;
    for i in 0..h.record_count {
        let len = read_varint(records, &mut pos)
            .ok_or_else(|| invalid(format!("record {i}: malformed length")))?;
        let end = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= records.len())
            .ok_or_else(|| invalid(format!("record {i}: length {len} outside the batch")))?;
        let rec = &records[..end];
        let mut p = pos + 1; // attributes
        let delta = read_varlong(rec, &mut p)
            .and_then(|_timestamp_delta| read_varint(rec, &mut p))
            .ok_or_else(|| invalid(format!("record {i}: malformed header")))?;
        if delta != i {
            return Err(invalid(format!("record {i} has offset delta {delta}")));
        }
        if require_keys {
            let key_len = read_varint(rec, &mut p)
                .ok_or_else(|| invalid(format!("record {i}: malformed key length")))?;
            if key_len < 0 {
                return Err(null_key());
            }
        }
        pos = end;
    }
    if pos != records.len() {
        return Err(invalid(format!(
            "{} bytes after the batch's {} records",
            records.len() - pos,
            h.record_count
        )));
    }
    Ok(())
}

fn null_key() -> LogError {
    LogError::InvalidRecord("compacted topic cannot accept a record without key".into())
}

/// Record-level validation of one complete batch (header already checked). Uncompressed batches
/// are walked in place; compressed ones are decompressed with a bound of `limit` bytes and decoded.
pub fn validate_records(
    batch: &[u8],
    h: &BatchHeader,
    limit: usize,
    require_keys: bool,
) -> Result<(), LogError> {
    if h.compression() == 0 {
        return walk_uncompressed(batch, h, require_keys);
    }
    let set = decode_bounded(&Bytes::copy_from_slice(batch), limit)?;
    if set.records.len() != h.record_count as usize {
        return Err(LogError::InvalidRecord(format!(
            "batch declares {} records but holds {}",
            h.record_count,
            set.records.len()
        )));
    }
    for (i, r) in set.records.iter().enumerate() {
        if r.offset - h.base_offset != i as i64 {
            return Err(LogError::InvalidRecord(format!(
                "record {i} has offset delta {}",
                r.offset - h.base_offset
            )));
        }
        if require_keys && r.key.is_none() {
            return Err(null_key());
        }
    }
    Ok(())
}

/// Reads at most `limit` bytes from `r`; more than that is an error.
fn read_bounded(mut r: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.by_ref().take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(too_big(limit));
    }
    Ok(out)
}

fn too_big(limit: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("decompressed batch exceeds {limit} bytes"),
    )
}

/// Snappy as Kafka writes it (xerial framing: magic, then length-prefixed blocks) or raw; every
/// block's declared length is checked against the budget before anything is allocated.
fn snappy_bounded(data: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    const MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
    let bad = |e: snap::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut out = Vec::new();
    let Some(mut rest) = data.strip_prefix(&MAGIC[..]) else {
        let len = snap::raw::decompress_len(data).map_err(bad)?;
        if len > limit {
            return Err(too_big(limit));
        }
        out.resize(len, 0);
        snap::raw::Decoder::new()
            .decompress(data, &mut out)
            .map_err(bad)?;
        return Ok(out);
    };
    while !rest.is_empty() {
        let truncated = || std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated block");
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        let n = u32::from_be_bytes(len_bytes) as usize;
        let block = rest.get(4..4 + n).ok_or_else(truncated)?;
        rest = &rest[4 + n..];
        let len = snap::raw::decompress_len(block).map_err(bad)?;
        let start = out.len();
        if len > limit - start {
            return Err(too_big(limit));
        }
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(bad)?;
    }
    Ok(out)
}

/// Decompresses a batch's records section with the size bound.
fn decompress_bounded(data: &[u8], codec: Compression, limit: usize) -> std::io::Result<Vec<u8>> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(data), limit),
        Compression::Snappy => snappy_bounded(data, limit),
        Compression::Lz4 => read_bounded(lz4::Decoder::new(data)?, limit),
        Compression::Zstd => read_bounded(zstd::stream::read::Decoder::new(data)?, limit),
    }
}

/// Decodes one complete batch, refusing to decompress more than `limit` bytes.
pub fn decode_bounded(batch: &Bytes, limit: usize) -> Result<RecordSet, LogError> {
    let decompress = |buf: &mut Bytes, codec: Compression| -> anyhow::Result<Bytes> {
        Ok(Bytes::from(decompress_bounded(buf, codec, limit)?))
    };
    RecordBatchDecoder::decode_with_custom_compression(&mut batch.clone(), Some(decompress))
        .map_err(|e| LogError::CorruptRecord(format!("cannot decode record batch: {e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid uncompressed batch of `delta + 1` minimal records (null key and value).
    fn header_only_batch(seq: i32, delta: i32) -> Vec<u8> {
        let records: Vec<u8> = (0..=delta)
            .flat_map(|i| [12, 0, 0, (2 * i) as u8, 1, 1, 0])
            .collect();
        raw_batch(seq, delta, delta + 1, 0, &records)
    }

    /// A batch header with the given fields around `records` (already compressed if `codec` != 0).
    fn raw_batch(seq: i32, delta: i32, count: i32, codec: i16, records: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        let len = (HEADER_SIZE - LOG_OVERHEAD + records.len()) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        b[21..23].copy_from_slice(&codec.to_be_bytes());
        b[23..27].copy_from_slice(&delta.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b.extend_from_slice(records);
        rewrite_crc(&mut b);
        b
    }

    #[test]
    fn split_walks_uncompressed_records() {
        let ok = header_only_batch(0, 2);
        assert_eq!(split_payload(&ok, 1 << 20, false).unwrap().len(), 1);
        // Null keys are fine unless the topic is compacted.
        assert!(matches!(
            split_payload(&ok, 1 << 20, true),
            Err(LogError::InvalidRecord(_))
        ));
        let rec = |delta: u8| [12u8, 0, 0, delta, 1, 1, 0];
        let cases: Vec<(i32, i32, Vec<u8>)> = vec![
            // recordCount 2 but three records in the batch.
            (1, 2, [rec(0), rec(2), rec(4)].concat()),
            // recordCount 3 but two records.
            (2, 3, [rec(0), rec(2)].concat()),
            // Offset deltas 0, 0.
            (1, 2, [rec(0), rec(0)].concat()),
            // A record length running past the batch.
            (0, 1, vec![40, 0, 0, 0, 1, 1, 0]),
            // A negative record length.
            (0, 1, vec![1, 0, 0, 0, 1, 1, 0]),
            // Unterminated varint.
            (0, 1, vec![0xff, 0xff]),
        ];
        for (delta, count, records) in cases {
            let b = raw_batch(0, delta, count, 0, &records);
            assert!(
                matches!(
                    split_payload(&b, 1 << 20, false),
                    Err(LogError::InvalidRecord(_))
                ),
                "{records:?} accepted"
            );
        }
    }

    #[test]
    fn split_bounds_decompressed_size() {
        use std::io::Write;
        // 65 MiB of zeros gzip to ~65 KiB: a decompression bomb.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..65 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = raw_batch(0, 0, 1, 1, &enc.finish().unwrap());
        let err = split_payload(&bomb, 1 << 20, false).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        // A well-formed compressed batch passes.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[12, 0, 0, 0, 1, 1, 0, 12, 0, 0, 2, 1, 1, 0])
            .unwrap();
        let good = raw_batch(0, 1, 2, 1, &enc.finish().unwrap());
        split_payload(&good, 1 << 20, false).unwrap();
        // Compressed, with a record count the content does not match.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[12, 0, 0, 0, 1, 1, 0, 12, 0, 0, 0, 1, 1, 0])
            .unwrap();
        let bad = raw_batch(0, 1, 2, 1, &enc.finish().unwrap());
        assert!(split_payload(&bad, 1 << 20, false).is_err());
    }

    #[test]
    fn last_sequence_wraps() {
        let h = BatchHeader::parse(&header_only_batch(i32::MAX - 1, 3)).unwrap();
        assert_eq!(h.last_sequence(), 1);
        let h = BatchHeader::parse(&header_only_batch(5, 3)).unwrap();
        assert_eq!(h.last_sequence(), 8);
    }

    #[test]
    fn log_append_time_keeps_crc_valid() {
        let mut b = header_only_batch(0, 0);
        set_log_append_time(&mut b, 1234);
        assert!(crc_matches(&b));
        let h = BatchHeader::parse(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 1234);
    }

    #[test]
    fn split_rejects_truncation_and_bad_crc() {
        let b = header_only_batch(0, 0);
        assert!(matches!(
            split_payload(&b[..40], 1 << 20, false),
            Err(LogError::CorruptRecord(_))
        ));
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(matches!(
            split_payload(&bad, 1 << 20, false),
            Err(LogError::CorruptRecord(_))
        ));
        assert!(matches!(
            split_payload(&b, 10, false),
            Err(LogError::RecordTooLarge { size: 68, max: 10 })
        ));
        let two = [b.clone(), b].concat();
        assert_eq!(split_payload(&two, 1 << 20, false).unwrap().len(), 2);
    }
}
