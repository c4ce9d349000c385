//! The balance cache. Never the source of truth: the consumer writes it only after the batch
//! has committed in SQL, and every write carries the balance's version, so a write older
//! than what the cache holds is refused. A stale leader resumed after a pause therefore can
//! neither commit (the fence refuses it) nor overwrite a newer cached value (the version
//! does). Reads that miss fall back to SQL. See docs/adr/0003-axs-cache-after-commit.md.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::model::BalanceState;

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
}
