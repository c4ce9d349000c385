//! Every limit the nonce manager enforces, in one place so their relations can be checked.

use std::time::Duration;

/// Longest request id, in bytes. Request ids are the caller's idempotency keys (UUIDs,
/// order ids); a longer one is a caller bug, not data.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest calldata a submitted transaction may carry, in bytes (geth's pool takes 128 KiB).
pub const CALLDATA_BYTES_MAX: usize = 128 * 1024;
/// Longest signed transaction ReportSignedTransaction takes: the calldata limit plus room
/// for the envelope, fields and an access list.
pub const RAW_TRANSACTION_BYTES_MAX: usize = CALLDATA_BYTES_MAX + 8 * 1024;
/// Most allocations the batch writer commits in one transaction.
pub const BATCH_ALLOCATIONS_MAX: usize = 256;
/// Attempts at one allocation batch when a concurrent insert of the same request id (by
/// another signer's writer) made it roll back.
pub const ALLOCATION_BATCH_ATTEMPTS: usize = 3;
/// The longest the batch writer keeps gathering a batch, counted from its first request's
/// enqueue. It stops earlier as soon as a round of [`GATHER_YIELDS`] brings nothing new.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Times the batch writer yields to the runtime, once its queue is drained, so that callers
/// it just answered can queue their next request before it commits. Measured on the
/// one-signer bench (PostgreSQL, 128 callers): 1, 2, 4 and 8 all keep batches at about 127
/// of 128; waiting out a timer instead cost 2 ms (tokio timers have 1 ms granularity) per batch.
pub const GATHER_YIELDS: usize = 4;
/// Requests that may wait for the batch writer before `allocate` applies back-pressure.
pub const ALLOCATION_QUEUE_MAX: usize = 4 * BATCH_ALLOCATIONS_MAX;
/// How stale the allocator's view of the chain's pending nonce may get before a batch
/// asks the chain again. A tenure always starts with a fresh read.
pub const CHAIN_NONCE_REFRESH: Duration = Duration::from_secs(1);
/// The longest one cache (Redis) call may take before it counts as a miss.
pub const CACHE_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest connecting to the cache may take at start-up.
pub const CACHE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed cache is skipped before it is tried again.
pub const CACHE_BACKOFF: Duration = Duration::from_secs(1);
/// How long a cached request id -> nonce entry lives (retries come within minutes).
pub const CACHE_ENTRY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Cache writes in flight at once; a batch whose write finds none free skips the cache.
pub const CACHE_WRITES_IN_FLIGHT_MAX: usize = 4;
/// How often the confirmations manager reads the head's height; a new head is evaluated
/// at once, so a record is final within about this long of its last confirmation block.
pub const HEAD_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest any one JSON-RPC call may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

const _: () = assert!(BATCH_ALLOCATIONS_MAX > 0);
const _: () = assert!(ALLOCATION_QUEUE_MAX >= BATCH_ALLOCATIONS_MAX);
const _: () = assert!(BATCH_WINDOW.as_millis() < CHAIN_NONCE_REFRESH.as_millis());
const _: () = assert!(CACHE_TIMEOUT.as_millis() < CACHE_BACKOFF.as_millis());
