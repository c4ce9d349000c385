//! What a node needs to run, and the limits of the server layer in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nonce_manager::signer::LocalKey;

/// Virtual nodes per member on the ring: enough that three nodes split signers within a
/// few percent of evenly.
pub const RING_VNODES_PER_NODE: u32 = 64;
/// Most records one ListTransactions page returns.
pub const LIST_PAGE_SIZE_MAX: u32 = 1000;
/// Page size when the caller gives none.
pub const LIST_PAGE_SIZE_DEFAULT: u32 = 100;
/// How long a base fee read is reused for the fee-cap check.
pub const BASE_FEE_MAX_AGE: Duration = Duration::from_secs(1);
/// Connect timeout of a forwarded call.
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole-call timeout of a forwarded call (a submit includes a broadcast).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per WatchEvents subscriber before it is told it lagged.
pub const EVENT_BUFFER: usize = 4096;
/// How often the event watcher reads store changes.
pub const EVENT_POLL: Duration = Duration::from_millis(250);
/// How far back each event read looks again, for commits that landed late.
pub const EVENT_OVERLAP: Duration = Duration::from_secs(5);
/// Most changed records one event read takes.
pub const EVENT_READ_MAX: i64 = 5000;
/// How long the watcher remembers a record's last state (to tell a reorg from a submit).
pub const EVENT_MEMORY: Duration = Duration::from_secs(600);

/// Where the shared database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file (embedded default); every node on the machine opens the same file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (scale-out).
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://...` or `postgresql://...` is PostgreSQL; `sqlite://PATH` or a plain path
    /// is a SQLite file.
    pub fn parse(location: &str) -> Self {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            StoreLocation::Postgres(location.to_owned())
        } else {
            let path = location.strip_prefix("sqlite://").unwrap_or(location);
            StoreLocation::Sqlite(PathBuf::from(path))
        }
    }
}

/// One node's settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Unique per node in the cluster; also the lease holder name's prefix.
    pub node_id: String,
    /// gRPC listener (port 0 picks one).
    pub listen: SocketAddr,
    /// `HOST:PORT` other nodes forward to; default: the bound listen address.
    pub advertised: Option<String>,
    /// Prometheus `/metrics` listener; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// The shared database.
    pub store: StoreLocation,
    /// The chain's JSON-RPC endpoint.
    pub rpc_url: String,
    /// The keys this node signs with; every node of a cluster should have the same set.
    pub keys: Vec<LocalKey>,
    /// Confirmations before a transaction is `Confirmed`.
    pub confirmations: u64,
    /// Lease TTL of an owned signer; also how long a silent node stays in the ring.
    pub lease_ttl: Duration,
    /// How often finality polls receipts and the head.
    pub finality_poll: Duration,
    /// How long a transaction may stay unmined before the policy loop acts.
    pub resubmit_after: Duration,
    /// Optional Redis cache of committed allocations in front of the store (never the
    /// source of truth: a lost or stale entry changes no answer; see `nonce_manager::cache`).
    pub redis_url: Option<String>,
}

impl NodeConfig {
    /// Defaults for everything but identity, store, chain and keys.
    pub fn new(
        node_id: impl Into<String>,
        store: StoreLocation,
        rpc_url: impl Into<String>,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 50061)),
            advertised: None,
            metrics_listen: None,
            store,
            rpc_url: rpc_url.into(),
            keys: Vec::new(),
            confirmations: 12,
            lease_ttl: Duration::from_secs(10),
            finality_poll: Duration::from_secs(1),
            resubmit_after: Duration::from_secs(60),
            redis_url: None,
        }
    }

    /// How often a node beats and re-evaluates ownership: a quarter of the TTL, so a
    /// takeover follows a death within the TTL plus one tick.
    pub fn tick(&self) -> Duration {
        (self.lease_ttl / 4).max(Duration::from_millis(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations() {
        assert_eq!(
            StoreLocation::parse("postgres://u@h/db"),
            StoreLocation::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            StoreLocation::parse("postgresql://h/db"),
            StoreLocation::Postgres("postgresql://h/db".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite:///var/nonce.db"),
            StoreLocation::Sqlite("/var/nonce.db".into())
        );
        assert_eq!(
            StoreLocation::parse("nonce.db"),
            StoreLocation::Sqlite("nonce.db".into())
        );
    }
}
