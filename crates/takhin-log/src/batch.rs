//! Kafka record batch (magic v2) header parsing, validation of produce payloads and the in-place
//! rewrites the log performs (base offset assignment, LogAppendTime stamping, CRC recomputation).

use crate::error::LogError;

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
/// Checks, in Kafka's order: framing, size limit, magic, CRC, codec, record count.
pub fn split_payload(
    payload: &[u8],
    max_message_bytes: u32,
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
        out.push(PayloadBatch { start: pos, header });
        pos += total;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_only_batch(seq: i32, delta: i32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[8..12].copy_from_slice(&(MIN_BATCH_LENGTH).to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&delta.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        b[57..61].copy_from_slice(&(delta + 1).to_be_bytes());
        rewrite_crc(&mut b);
        b
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
            split_payload(&b[..40], 1 << 20),
            Err(LogError::CorruptRecord(_))
        ));
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(matches!(
            split_payload(&bad, 1 << 20),
            Err(LogError::CorruptRecord(_))
        ));
        assert!(matches!(
            split_payload(&b, 10),
            Err(LogError::RecordTooLarge { size: 61, max: 10 })
        ));
        let two = [b.clone(), b].concat();
        assert_eq!(split_payload(&two, 1 << 20).unwrap().len(), 2);
    }
}
