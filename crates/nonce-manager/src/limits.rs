//! Every limit the nonce manager enforces, in one place so their relations can be checked.

use std::time::Duration;

/// Longest request id, in bytes. Request ids are the caller's idempotency keys (UUIDs,
/// order ids); a longer one is a caller bug, not data.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest calldata a submitted transaction may carry, in bytes (geth's pool takes 128 KiB).
pub const CALLDATA_BYTES_MAX: usize = 128 * 1024;
/// Most allocations the batch writer commits in one transaction.
pub const BATCH_ALLOCATIONS_MAX: usize = 256;
/// How long the batch writer waits for more requests after the first one of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Requests that may wait for the batch writer before `allocate` applies back-pressure.
pub const ALLOCATION_QUEUE_MAX: usize = 4 * BATCH_ALLOCATIONS_MAX;
/// How stale the allocator's view of the chain's pending nonce may get before a batch
/// asks the chain again. A tenure always starts with a fresh read.
pub const CHAIN_NONCE_REFRESH: Duration = Duration::from_secs(1);
/// The longest any one JSON-RPC call may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

const _: () = assert!(BATCH_ALLOCATIONS_MAX > 0);
const _: () = assert!(ALLOCATION_QUEUE_MAX >= BATCH_ALLOCATIONS_MAX);
const _: () = assert!(BATCH_WINDOW.as_millis() < CHAIN_NONCE_REFRESH.as_millis());
