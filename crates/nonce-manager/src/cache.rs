//! The optional cache in front of the store (Redis at scale-out): request id -> allocated
//! nonce lookups for retries, and each signer's last committed next nonce for views.
//!
//! The fenced database stays the only source of truth. The cache is written only after the
//! batch that allocated a nonce has committed, and what it holds is immutable once
//! committed (a request id's signer and nonce never change), so a hit is correct. A hit
//! answers a retry only when its signer and payload digest match the request; anything
//! else (miss, mismatch, error, timeout, Redis gone) goes to the database exactly as
//! without a cache. The cached next nonce is never an input to allocation (the batch reads
//! the stored one under the signer's lock), so a stale, lost or wrong cache can cause
//! neither a duplicate nor a gap.
//!
//! A cache that fails is skipped for [`limits::CACHE_BACKOFF`] before it is tried again,
//! so an unreachable Redis costs at most one [`limits::CACHE_TIMEOUT`] per back-off period.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use alloy_primitives::{keccak256, Address, B256};
use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::AsyncCommands as _;

use crate::error::InvalidArgument;
use crate::limits;
use crate::types::{RequestId, TxPayload};

/// One committed allocation, as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedAllocation {
    /// The signer the nonce belongs to.
    pub signer: Address,
    /// The nonce.
    pub nonce: u64,
    /// [`payload_digest`] of the stored payload.
    pub payload_digest: B256,
}

/// The digest a cached allocation is checked against: keccak-256 of the payload's JSON.
pub fn payload_digest(payload: &TxPayload) -> B256 {
    // Serialising plain data to JSON cannot fail; an empty digest would only miss.
    keccak256(serde_json::to_vec(payload).unwrap_or_default())
}

/// A cache in front of the nonce store. Every method is best effort: failures are
/// reported as misses / dropped writes, never as errors to the caller.
#[async_trait]
pub trait NonceCache: Send + Sync + fmt::Debug {
    /// The committed allocation of `request_id`, if cached.
    async fn allocation(&self, request_id: &RequestId) -> Option<CachedAllocation>;

    /// Records committed allocations and the signer's next nonce after them.
    async fn put_committed(
        &self,
        signer: Address,
        allocations: &[(RequestId, CachedAllocation)],
        next_nonce: u64,
    );

    /// The signer's last cached next nonce (for views; never used to allocate).
    async fn next_nonce(&self, signer: Address) -> Option<u64>;
}

/// [`NonceCache`] on Redis through a reconnecting [`ConnectionManager`].
///
/// Keys: `{prefix}:req:{request id}` -> `"{signer}:{nonce}:{digest}"` with a TTL of
/// [`limits::CACHE_ENTRY_TTL`], and `{prefix}:next:{signer}` -> next nonce. Use one prefix
/// per database: entries of another database's request ids must never be read.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    /// Milliseconds since `epoch` until which the cache is skipped after a failure.
    skip_until_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why [`RedisCache::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A bad URL or prefix.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// Redis refused or could not be reached.
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the connect timeout.
    #[error("redis connect timed out")]
    Timeout,
}

impl RedisCache {
    /// Connects to `url` (`redis://127.0.0.1:6379/`); `prefix` namespaces the keys (1..=64
    /// bytes, no `:`). The connection re-establishes itself after Redis comes back.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, CacheError> {
        if prefix.is_empty() || prefix.len() > 64 || prefix.contains(':') {
            return Err(InvalidArgument(format!(
                "cache prefix must be 1..=64 bytes without ':', got {prefix:?}"
            ))
            .into());
        }
        let client = redis::Client::open(url)
            .map_err(|error| InvalidArgument(format!("redis url: {error}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(limits::CACHE_TIMEOUT))
            .set_response_timeout(Some(limits::CACHE_TIMEOUT))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            limits::CACHE_CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| CacheError::Timeout)??;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            skip_until_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    fn request_key(&self, request_id: &RequestId) -> String {
        format!("{}:req:{}", self.prefix, request_id.as_str())
    }

    fn next_key(&self, signer: Address) -> String {
        format!("{}:next:{signer:#x}", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, what: &str, error: &dyn fmt::Display) {
        let backoff = u64::try_from(limits::CACHE_BACKOFF.as_millis()).unwrap_or(u64::MAX);
        self.skip_until_ms
            .store(self.now_ms().saturating_add(backoff), Ordering::Relaxed);
        metrics::counter!("nonce_manager_cache_errors_total").increment(1);
        tracing::warn!(%error, "redis cache {what} failed; skipping the cache for a while");
    }

    /// Runs one Redis call under the timeout and the back-off; `None` on any failure.
    async fn call<T, F>(&self, what: &str, call: F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.skipping() {
            return None;
        }
        match tokio::time::timeout(limits::CACHE_TIMEOUT, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(what, &error);
                None
            }
            Err(_elapsed) => {
                self.failed(what, &"timed out");
                None
            }
        }
    }
}

fn parse_entry(entry: &str) -> Option<CachedAllocation> {
    let mut parts = entry.split(':');
    let signer = parts.next()?.parse().ok()?;
    let nonce = parts.next()?.parse().ok()?;
    let payload_digest = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(CachedAllocation {
        signer,
        nonce,
        payload_digest,
    })
}

fn format_entry(entry: &CachedAllocation) -> String {
    format!(
        "{:#x}:{}:{:#x}",
        entry.signer, entry.nonce, entry.payload_digest
    )
}

#[async_trait]
impl NonceCache for RedisCache {
    async fn allocation(&self, request_id: &RequestId) -> Option<CachedAllocation> {
        let key = self.request_key(request_id);
        let mut connection = self.connection.clone();
        let entry: Option<String> = self
            .call("lookup", async move { connection.get(key).await })
            .await?;
        let parsed = entry.as_deref().and_then(parse_entry);
        let outcome = if parsed.is_some() { "hit" } else { "miss" };
        metrics::counter!("nonce_manager_cache_lookups_total", "outcome" => outcome).increment(1);
        parsed
    }

    async fn put_committed(
        &self,
        signer: Address,
        allocations: &[(RequestId, CachedAllocation)],
        next_nonce: u64,
    ) {
        let mut pipe = redis::pipe();
        let ttl = limits::CACHE_ENTRY_TTL.as_secs();
        for (request_id, entry) in allocations {
            pipe.set_ex(self.request_key(request_id), format_entry(entry), ttl)
                .ignore();
        }
        pipe.set(self.next_key(signer), next_nonce).ignore();
        let mut connection = self.connection.clone();
        let _: Option<()> = self
            .call(
                "write",
                async move { pipe.query_async(&mut connection).await },
            )
            .await;
    }

    async fn next_nonce(&self, signer: Address) -> Option<u64> {
        let key = self.next_key(signer);
        let mut connection = self.connection.clone();
        self.call("next nonce", async move { connection.get(key).await })
            .await
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        let entry = CachedAllocation {
            signer: Address::repeat_byte(0xab),
            nonce: 42,
            payload_digest: B256::repeat_byte(7),
        };
        assert_eq!(parse_entry(&format_entry(&entry)), Some(entry));
        assert_eq!(parse_entry(""), None);
        assert_eq!(parse_entry("0xab:1"), None);
        assert_eq!(
            parse_entry(&format!("{}:extra", format_entry(&entry))),
            None
        );
        assert_eq!(parse_entry("nonsense:x:y"), None);
    }
}
