//! Every bound and chain parameter in one place, so how they relate can be read at once.
//!
//! Constants bound what one transaction or block may carry (validation rejects anything
//! larger before doing work proportional to it); [`ChainParams`] holds the values a chain
//! chooses (reward, admission lifetime, undo depth).

/// Most inputs one transaction may have.
pub const MAX_INPUTS_PER_TX: usize = 256;
/// Most outputs one transaction may have.
pub const MAX_OUTPUTS_PER_TX: usize = 256;
/// Most transactions one block may have.
pub const MAX_TXS_PER_BLOCK: usize = 10_000;
/// Most locking conditions (alternatives) one output may list.
pub const MAX_CONDITIONS_PER_OUTPUT: usize = 8;
/// Deepest nesting of TimeLock/HeightLock around an inner condition (1 = no wrapper).
pub const MAX_LOCK_DEPTH: usize = 4;
/// Most keys in a MultiKeyLock, shares in a ThresholdLock, delegates in a DelegationLock.
pub const MAX_KEYS_PER_LOCK: usize = 32;
/// Most operations or methods listed in a lock, and their longest name.
pub const MAX_NAMES_PER_LOCK: usize = 16;
/// Longest operation, method or resource name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Largest STATE payload, in bytes.
pub const MAX_STATE_PAYLOAD_LEN: usize = 64 * 1024;
/// Longest state id and coinbase extra data, in bytes.
pub const MAX_SMALL_BYTES_LEN: usize = 256;

/// Values a chain chooses. `Default` is what tests and the generator use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainParams {
    /// Native coin a non-genesis coinbase may create besides the block's fees.
    pub block_reward: u64,
    /// Blocks an admitted reference lives: admitted at tip height `h`, it is released when a
    /// block of height above `h + admission_ttl_blocks` is applied, unless released earlier.
    pub admission_ttl_blocks: u64,
    /// Most admissions held at once (each holds up to MAX_INPUTS_PER_TX references).
    pub max_admissions: usize,
    /// Blocks of undo data kept: how deep a reorg can roll back.
    pub max_undo_depth: usize,
}

impl Default for ChainParams {
    fn default() -> Self {
        Self {
            block_reward: 50_000,
            admission_ttl_blocks: 6,
            max_admissions: 100_000,
            max_undo_depth: 1_000,
        }
    }
}
