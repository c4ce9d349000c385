//! The block repository: an append-only file of blocks, the log the UTXO store replays.
//!
//! **Format.** One file, `blocks.log`, of records laid end to end:
//! `len: u32 LE | crc32c: u32 LE | height: u64 LE | hash: [u8; 32] | block: protobuf`,
//! where `len` is the protobuf length and the CRC covers height, hash and protobuf. Heights
//! are consecutive from 0, so the record of height `h` is the `h`-th record.
//!
//! **Durability.** [`BlockRepository::append`] writes one record and, when `sync` is set,
//! `fdatasync`s before returning: a block the store has applied is in the log first.
//! [`BlockRepository::truncate_from`] (a reorg) cuts the file and syncs.
//!
//! **Recovery.** [`BlockRepository::open`] walks the headers to rebuild the in-memory index
//! (height -> offset, hash -> height) and fully checks the last record; a torn tail (short
//! header, length past the end, bad CRC of the last record) is cut off, which only loses a
//! block whose append had not returned. Every read checks the record's CRC, so rot in the
//! middle of the file is reported as [`StoreError::Corrupt`] when the block is read.
//!
//! Why a file and not redb: the log is append-only and read by height, so a file with an
//! in-memory index needs one write and one sync per block and no B-tree pages; one file
//! (not segments) is enough until pruning old blocks is wanted.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use prost::Message;
use wes_utxo::model::{self, BlockHash};
use wes_utxo::pb;

use crate::error::{Result, StoreError};
use crate::limits::MAX_BLOCK_BYTES;

const HEADER_LEN: usize = 4 + 4 + 8 + 32;

#[derive(Clone, Copy, Debug)]
struct Entry {
    offset: u64,
    len: u32,
    hash: BlockHash,
}

#[derive(Default)]
struct Index {
    entries: Vec<Entry>,
    by_hash: HashMap<BlockHash, u64>,
    end: u64,
}

/// The append-only block log (see the module docs). Reads take `&self` and may run from
/// several threads; appends and truncation serialize on an internal lock.
pub struct BlockRepository {
    writer: Mutex<File>,
    reader: File,
    index: RwLock<Index>,
    sync: bool,
}

fn crc(height: u64, hash: &BlockHash, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&height.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &hash.0);
    crc32c::crc32c_append(crc, payload)
}

fn poisoned() -> StoreError {
    StoreError::Corrupt("block repository lock poisoned by a panic".to_string())
}

impl BlockRepository {
    /// Opens (or creates) `path`, rebuilding the index and cutting a torn tail.
    pub fn open(path: &Path, sync: bool) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let mut index = Index::default();
        let mut offset = 0u64;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, &mut file);
        let mut header = [0u8; HEADER_LEN];
        while offset + HEADER_LEN as u64 <= file_len {
            reader.read_exact(&mut header)?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let height = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let hash = BlockHash::from_slice(&header[16..48])?;
            let end = offset + HEADER_LEN as u64 + u64::from(len);
            if end > file_len || len as usize > MAX_BLOCK_BYTES {
                break; // torn tail
            }
            if height != index.entries.len() as u64 {
                if end == file_len {
                    break; // a torn tail whose header bytes are garbage
                }
                return Err(StoreError::Corrupt(format!(
                    "block log record at offset {offset} has height {height}, expected {}",
                    index.entries.len()
                )));
            }
            reader.seek_relative(i64::from(len))?;
            index.by_hash.insert(hash, height);
            index.entries.push(Entry { offset, len, hash });
            offset = end;
        }
        drop(reader);
        // The last record is the only one a crash can have torn: check it whole.
        if let Some(last) = index.entries.last().copied() {
            if Self::read_checked(&file, index.entries.len() as u64 - 1, last).is_err() {
                index.entries.pop();
                index.by_hash.remove(&last.hash);
                offset = last.offset;
            }
        }
        if offset < file_len {
            file.set_len(offset)?;
            file.sync_all()?;
        }
        index.end = offset;
        let reader = file.try_clone()?;
        Ok(Self {
            writer: Mutex::new(file),
            reader,
            index: RwLock::new(index),
            sync,
        })
    }

    fn read_checked(file: &File, height: u64, entry: Entry) -> Result<pb::Block> {
        let mut bytes = vec![0u8; HEADER_LEN + entry.len as usize];
        file.read_exact_at(&mut bytes, entry.offset)?;
        let stored_crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let payload = &bytes[HEADER_LEN..];
        if crc(height, &entry.hash, payload) != stored_crc {
            return Err(StoreError::Corrupt(format!(
                "block log record of height {height} fails its crc"
            )));
        }
        let block = pb::Block::decode(payload)?;
        let header = block
            .header
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt(format!("block {height} has no header")))?;
        if header.height != height || model::block_hash(header) != entry.hash {
            return Err(StoreError::Corrupt(format!(
                "block log record of height {height} holds another block"
            )));
        }
        Ok(block)
    }

    /// Height and hash of the last block, if any.
    pub fn tip(&self) -> Result<Option<(u64, BlockHash)>> {
        let index = self.index.read().map_err(|_| poisoned())?;
        Ok(index
            .entries
            .last()
            .map(|entry| (index.entries.len() as u64 - 1, entry.hash)))
    }

    /// Number of blocks (tip height + 1).
    pub fn len(&self) -> Result<u64> {
        Ok(self.index.read().map_err(|_| poisoned())?.entries.len() as u64)
    }

    /// Whether the repository holds no block.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Hash of the block at `height`.
    pub fn hash_at(&self, height: u64) -> Result<Option<BlockHash>> {
        let index = self.index.read().map_err(|_| poisoned())?;
        Ok(usize::try_from(height)
            .ok()
            .and_then(|height| index.entries.get(height))
            .map(|entry| entry.hash))
    }

    /// Height of the block with `hash`.
    pub fn height_of(&self, hash: &BlockHash) -> Result<Option<u64>> {
        Ok(self
            .index
            .read()
            .map_err(|_| poisoned())?
            .by_hash
            .get(hash)
            .copied())
    }

    /// The block at `height` (CRC and hash checked).
    pub fn block_at(&self, height: u64) -> Result<pb::Block> {
        let entry = {
            let index = self.index.read().map_err(|_| poisoned())?;
            usize::try_from(height)
                .ok()
                .and_then(|height| index.entries.get(height))
                .copied()
        };
        let entry = entry.ok_or_else(|| StoreError::BlockNotFound(format!("height {height}")))?;
        Self::read_checked(&self.reader, height, entry)
    }

    /// The block with `hash`.
    pub fn block_by_hash(&self, hash: &BlockHash) -> Result<pb::Block> {
        let height = self
            .height_of(hash)?
            .ok_or_else(|| StoreError::BlockNotFound(format!("hash {hash}")))?;
        self.block_at(height)
    }

    /// Appends `block`, which must extend the tip; durable on return when `sync` is set.
    pub fn append(&self, block: &pb::Block) -> Result<BlockHash> {
        self.append_with(block, self.sync)
    }

    /// Appends `block` without waiting for the disk; [`BlockRepository::sync`] makes it
    /// (and every earlier deferred append) durable. One fsync for a batch of blocks.
    pub fn append_deferred(&self, block: &pb::Block) -> Result<BlockHash> {
        self.append_with(block, false)
    }

    /// Makes every append so far durable (when the repository syncs at all).
    pub fn sync(&self) -> Result<()> {
        if self.sync {
            self.writer.lock().map_err(|_| poisoned())?.sync_data()?;
        }
        Ok(())
    }

    fn append_with(&self, block: &pb::Block, sync: bool) -> Result<BlockHash> {
        let header = block.header.as_ref().ok_or_else(|| StoreError::NotOnTip {
            height: 0,
            expected: "a block with a header".to_string(),
        })?;
        let hash = model::block_hash(header);
        let payload = block.encode_to_vec();
        if payload.len() > MAX_BLOCK_BYTES {
            return Err(StoreError::NotOnTip {
                height: header.height,
                expected: format!("a block of at most {MAX_BLOCK_BYTES} bytes"),
            });
        }
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        let (offset, expected_parent, n_blocks) = {
            let index = self.index.read().map_err(|_| poisoned())?;
            let parent = index.entries.last().map_or([0u8; 32], |entry| entry.hash.0);
            (index.end, parent, index.entries.len() as u64)
        };
        if header.height != n_blocks || header.parent_hash != expected_parent {
            return Err(StoreError::NotOnTip {
                height: header.height,
                expected: format!("height {n_blocks} on the current tip"),
            });
        }
        let mut record = Vec::with_capacity(HEADER_LEN + payload.len());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc(header.height, &hash, &payload).to_le_bytes());
        record.extend_from_slice(&header.height.to_le_bytes());
        record.extend_from_slice(&hash.0);
        record.extend_from_slice(&payload);
        writer.write_all(&record)?;
        if sync {
            writer.sync_data()?;
        }
        let mut index = self.index.write().map_err(|_| poisoned())?;
        index.entries.push(Entry {
            offset,
            len: payload.len() as u32,
            hash,
        });
        index.by_hash.insert(hash, header.height);
        index.end = offset + record.len() as u64;
        Ok(hash)
    }

    /// Removes the blocks of `height` and above (a reorg); durable on return.
    pub fn truncate_from(&self, height: u64) -> Result<()> {
        let writer = self.writer.lock().map_err(|_| poisoned())?;
        let mut index = self.index.write().map_err(|_| poisoned())?;
        let Ok(keep) = usize::try_from(height) else {
            return Ok(());
        };
        if keep >= index.entries.len() {
            return Ok(());
        }
        let end = index.entries[keep].offset;
        writer.set_len(end)?;
        writer.sync_all()?;
        for entry in index.entries.split_off(keep) {
            index.by_hash.remove(&entry.hash);
        }
        index.end = end;
        Ok(())
    }
}
