//! Every bound and tunable of the store in one place, with the defaults and why.

/// Largest encoded block the repository accepts (10,000 transactions of ~6 KiB).
pub const MAX_BLOCK_BYTES: usize = 64 * 1024 * 1024;

/// Bound of the coins cache's clean balance and nonce maps (entries each, about 100 bytes
/// an entry): values known to equal the flushed store, kept across flushes so applying a
/// block does not read every touched balance back through redb. Cleared whole when full.
pub const CLEAN_ENTRIES_MAX: usize = 1_000_000;

/// How the coins cache flushes and what it keeps hot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Flush after this many applied (or rolled back) blocks since the last flush. Bounds
    /// the replay after a crash: 50,000 small blocks replay in well under a second (the
    /// pipeline benchmark applies ~100k/s), while every flush costs a redb commit (two
    /// fsyncs and the touched pages), so flushing every 1,000 small blocks spent most of
    /// the time committing.
    pub flush_every_blocks: u64,
    /// Flush when this many UTXO entries are dirty (bounds memory and replay length).
    pub flush_max_dirty: usize,
    /// `fdatasync` the block repository on every append (crash safety needs it).
    pub sync_repository: bool,
    /// RESOURCE and STATE records whose encoded output is larger than this are stored
    /// cold (reference only, read back from the block repository); ASSET records are
    /// always hot.
    pub hot_output_max_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_every_blocks: 50_000,
            flush_max_dirty: 500_000,
            sync_repository: true,
            hot_output_max_bytes: 1_024,
        }
    }
}
