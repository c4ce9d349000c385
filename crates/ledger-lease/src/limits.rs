//! Every limit the lease crate enforces, in one place so their relations can be checked.

use std::time::Duration;

/// Longest resource name, in bytes. Names are signer addresses or `topic/partition` keys.
pub const RESOURCE_NAME_BYTES_MAX: usize = 256;
/// Longest holder id, in bytes. Holder ids are node ids plus a process nonce.
pub const HOLDER_ID_BYTES_MAX: usize = 256;
/// Shortest TTL a lease may be granted for.
pub const TTL_MIN: Duration = Duration::from_millis(1);
/// Longest TTL a lease may be granted for: a day; a longer lease is a configuration mistake.
pub const TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Most connections a store opens when it builds its own pool.
pub const POOL_CONNECTIONS_MAX: u32 = 8;
/// How long SQLite waits for the single write lock before failing a statement.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most renewal attempts in one renewal round of the [`crate::LeaseManager`].
pub const RENEW_RETRIES_MAX: usize = 16;

const _: () = assert!(TTL_MIN.as_millis() < TTL_MAX.as_millis());
const _: () = assert!(TTL_MAX.as_millis() < i64::MAX as u128);
