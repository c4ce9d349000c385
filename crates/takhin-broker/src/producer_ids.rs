//! Producer-id allocation for idempotent producers. Ids are handed out from
//! blocks whose upper bound is persisted before any id of the block is used, so
//! after a crash the next block starts past every id ever given out and no two
//! producers share an id.

use std::fs;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::topics::write_atomically;

const BLOCK_SIZE: i64 = 1000;

pub struct ProducerIdAllocator {
    path: PathBuf,
    state: Mutex<Block>,
}

struct Block {
    next: i64,
    end: i64,
}

impl ProducerIdAllocator {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("producer-id-block");
        let start = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<i64>().map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {error}", path.display()),
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error),
        };
        // Everything below `start` may have been handed out before a crash.
        Ok(ProducerIdAllocator {
            path,
            state: Mutex::new(Block {
                next: start,
                end: start,
            }),
        })
    }

    pub fn next_id(&self) -> std::io::Result<i64> {
        let mut block = self.state.lock();
        if block.next == block.end {
            let end = block.end + BLOCK_SIZE;
            write_atomically(&self.path, end.to_string().as_bytes())?;
            block.end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let allocator = ProducerIdAllocator::open(dir.path()).unwrap();
        let first: Vec<i64> = (0..5).map(|_| allocator.next_id().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        drop(allocator);
        let allocator = ProducerIdAllocator::open(dir.path()).unwrap();
        assert!(allocator.next_id().unwrap() > 4);
    }
}
