//! The balance cache. Never the source of truth: the consumer writes it only after the batch
//! has committed in SQL, and every write carries the balance's version, so a write older
//! than what the cache holds is refused. A stale leader resumed after a pause therefore can
//! neither commit (the fence refuses it) nor overwrite a newer cached value (the version
//! does). Reads that miss fall back to SQL. See docs/adr/0003-axs-cache-after-commit.md.
//!
//! Two engines: [`MemoryCache`] in this process (the embedded default) and [`RedisCache`],
//! shared by every node, whose compare-and-set by version runs as one Lua script so no
//! other writer can interleave between the read of the held version and the write.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use redis::aio::ConnectionManager;

use crate::model::{parse_amount, BalanceState};

#[derive(Debug, thiserror::Error)]
#[error("balance cache: {0}")]
pub struct CacheError(pub String);

#[async_trait]
pub trait BalanceCache: Send + Sync + fmt::Debug {
    async fn get(&self, account: &str, asset: &str) -> Result<Option<BalanceState>, CacheError>;
    /// Stores each balance unless the cache already holds the same or a newer version;
    /// returns how many were refused as stale.
    async fn put_newer(
        &self,
        balances: &[((String, String), BalanceState)],
    ) -> Result<usize, CacheError>;
}

/// The embedded default: a map in this process.
#[derive(Debug, Default)]
pub struct MemoryCache {
    balances: RwLock<HashMap<(String, String), BalanceState>>,
}

#[async_trait]
impl BalanceCache for MemoryCache {
    async fn get(&self, account: &str, asset: &str) -> Result<Option<BalanceState>, CacheError> {
        Ok(self
            .balances
            .read()
            .get(&(account.to_owned(), asset.to_owned()))
            .copied())
    }

    async fn put_newer(
        &self,
        balances: &[((String, String), BalanceState)],
    ) -> Result<usize, CacheError> {
        let mut map = self.balances.write();
        let mut stale = 0;
        for (key, state) in balances {
            match map.get(key) {
                Some(held) if held.version >= state.version => stale += 1,
                _ => {
                    map.insert(key.clone(), *state);
                }
            }
        }
        Ok(stale)
    }
}

/// How long one Redis call may take before the caller falls back to SQL.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// For each `KEYS[i]`, `ARGV[2i-1]` is the new version and `ARGV[2i]` the encoded value
/// (`version:balance:pending_debit:pending_credit`). A key is written only when what it
/// holds is older; returns how many were refused as stale. Versions stay far below 2^53,
/// so Lua's numbers compare them exactly.
const PUT_NEWER: &str = r"
local stale = 0
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i - 1])
  local held = redis.call('GET', key)
  local held_version = held and tonumber(string.match(held, '^(%d+):'))
  if held_version and held_version >= version then
    stale = stale + 1
  else
    redis.call('SET', key, ARGV[2 * i])
  end
end
return stale
";

/// The shared cache: one Redis string per (account, asset) under `prefix`. No expiry: an
/// expired key would let a stale writer's older version in again (configure Redis with a
/// `noeviction` policy for the same reason).
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects to `url` (`redis://127.0.0.1:6379/`); `prefix` namespaces the keys. The
    /// connection re-establishes itself after Redis comes back.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, CacheError> {
        if prefix.is_empty() || prefix.len() > 64 {
            return Err(CacheError(format!(
                "cache prefix must be 1..=64 bytes, got {prefix:?}"
            )));
        }
        let client =
            redis::Client::open(url).map_err(|error| CacheError(format!("url {url}: {error}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| CacheError(format!("connecting to {url} timed out")))?
        .map_err(|error| CacheError(format!("connecting to {url}: {error}")))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            script: redis::Script::new(PUT_NEWER),
        })
    }

    /// The key of one balance. Account and asset names are printable ASCII without
    /// spaces; the length prefix keeps `a:b` + `c` apart from `a` + `b:c`.
    fn key(&self, account: &str, asset: &str) -> String {
        format!("{}:bal:{}:{account}:{asset}", self.prefix, account.len())
    }
}

fn encode(state: &BalanceState) -> String {
    format!(
        "{}:{}:{}:{}",
        state.version, state.balance, state.pending_debit, state.pending_credit
    )
}

fn decode(value: &str) -> Option<BalanceState> {
    let mut parts = value.split(':');
    let state = BalanceState {
        version: parts.next()?.parse().ok()?,
        balance: parse_amount(parts.next()?)?,
        pending_debit: parse_amount(parts.next()?)?,
        pending_credit: parse_amount(parts.next()?)?,
    };
    parts.next().is_none().then_some(state)
}

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, CacheError> {
    tokio::time::timeout(REDIS_TIMEOUT, call)
        .await
        .map_err(|_| CacheError(format!("redis {what} timed out")))?
        .map_err(|error| CacheError(format!("redis {what}: {error}")))
}

#[async_trait]
impl BalanceCache for RedisCache {
    async fn get(&self, account: &str, asset: &str) -> Result<Option<BalanceState>, CacheError> {
        let mut connection = self.connection.clone();
        let key = self.key(account, asset);
        let value: Option<String> = bounded("GET", async move {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        match value {
            None => Ok(None),
            Some(text) => decode(&text)
                .map(Some)
                .ok_or_else(|| CacheError(format!("malformed cached balance {text:?}"))),
        }
    }

    async fn put_newer(
        &self,
        balances: &[((String, String), BalanceState)],
    ) -> Result<usize, CacheError> {
        if balances.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.script.prepare_invoke();
        for ((account, asset), state) in balances {
            invocation
                .key(self.key(account, asset))
                .arg(state.version)
                .arg(encode(state));
        }
        let mut connection = self.connection.clone();
        bounded("put_newer script", async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_older_version_never_overwrites_a_newer_one() {
        let cache = MemoryCache::default();
        let key = ("a".to_owned(), "USD".to_owned());
        let v = |balance, version| BalanceState {
            balance,
            version,
            ..BalanceState::default()
        };
        assert_eq!(
            cache.put_newer(&[(key.clone(), v(10, 2))]).await.unwrap(),
            0
        );
        assert_eq!(cache.put_newer(&[(key.clone(), v(5, 1))]).await.unwrap(), 1);
        assert_eq!(cache.put_newer(&[(key.clone(), v(7, 2))]).await.unwrap(), 1);
        assert_eq!(cache.get("a", "USD").await.unwrap(), Some(v(10, 2)));
        assert_eq!(cache.put_newer(&[(key, v(12, 3))]).await.unwrap(), 0);
        assert_eq!(cache.get("a", "USD").await.unwrap().unwrap().balance, 12);
    }

    #[test]
    fn a_cached_balance_round_trips_and_garbage_is_refused() {
        let state = BalanceState {
            balance: i128::MIN,
            pending_debit: 7,
            pending_credit: i128::MAX,
            version: 42,
        };
        assert_eq!(decode(&encode(&state)), Some(state));
        for bad in ["", "1:2:3", "1:2:3:4:5", "x:1:2:3", "1:1.5:2:3"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
