//! Shared test helpers: the two store backends as "nodes" on one database, a fixed-answer
//! chain for allocator tests, and a real anvil node started from `tests/evm/node_modules`.
#![allow(clippy::unwrap_used, dead_code)]

pub mod anvil;
pub mod hardhat;
pub mod stack;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use alloy_primitives::{Address, Bytes, B256, U256};
use async_trait::async_trait;
use ledger_lease::{Clock, LeaseStore};
use nonce_manager::chain::{BlockRef, ChainClient, ChainError, ReceiptSummary, TxLookup};
use nonce_manager::store::postgres::PostgresNonceStore;
use nonce_manager::store::sqlite::SqliteNonceStore;
use nonce_manager::store::NonceStore;
use nonce_manager::TxPayload;
use test_support::postgres::PostgresServer;

/// One shared database; `node()` opens another pool on it, as another process would.
pub enum Backend {
    Sqlite {
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    Postgres {
        server: PostgresServer,
    },
}

/// A node's view: its own nonce store and lease store (same pool).
pub struct Node {
    pub store: Arc<dyn NonceStore>,
    pub leases: Arc<dyn LeaseStore>,
}

impl Backend {
    pub fn sqlite() -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("takhin-nonce-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("nonce.sqlite");
        Some(Backend::Sqlite { path, _dir: dir })
    }

    /// `None` (skip) when PostgreSQL is not installed, unless TAKHIN_REQUIRE_ALL_CLIENTS=1.
    pub fn postgres(test: &str) -> Option<Self> {
        let server = test_support::skip_unless_required(test, PostgresServer::start())?;
        Some(Backend::Postgres { server })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    pub async fn node(&self, clock: Arc<dyn Clock>) -> Node {
        match self {
            Backend::Sqlite { path, .. } => {
                let (store, leases) = SqliteNonceStore::connect(path, clock).await.unwrap();
                Node {
                    store: Arc::new(store),
                    leases: Arc::new(leases),
                }
            }
            Backend::Postgres { server } => {
                let (store, leases) = PostgresNonceStore::connect(server.url(), clock)
                    .await
                    .unwrap();
                Node {
                    store: Arc::new(store),
                    leases: Arc::new(leases),
                }
            }
        }
    }
}

/// Generates one `#[tokio::test]` per case per backend: `cases!(module::path; a, b, c)`
/// where each case is `async fn(Backend)`.
#[macro_export]
macro_rules! backend_cases {
    ($module:ident; $($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let backend = $crate::common::Backend::sqlite().unwrap();
                    $crate::$module::$case(backend).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = $crate::common::Backend::postgres(stringify!($case))
                    else {
                        return;
                    };
                    $crate::$module::$case(backend).await;
                }
            )*
        }
    };
}

/// A payload that differs per `seed`.
pub fn payload(seed: u64) -> TxPayload {
    TxPayload {
        to: Address::repeat_byte(0x11),
        value: U256::from(seed),
        data: Bytes::new(),
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000,
    }
}

/// A chain whose pending nonce is whatever the test sets; nothing else is used.
#[derive(Debug, Default)]
pub struct FixedChain {
    pub pending: AtomicU64,
    pub pending_reads: AtomicU64,
}

impl FixedChain {
    pub fn new(pending: u64) -> Self {
        Self {
            pending: AtomicU64::new(pending),
            pending_reads: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl ChainClient for FixedChain {
    async fn chain_id(&self) -> Result<u64, ChainError> {
        Ok(31337)
    }
    async fn pending_nonce(&self, _address: Address) -> Result<u64, ChainError> {
        self.pending_reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.pending.load(Ordering::SeqCst))
    }
    async fn latest_nonce(&self, _address: Address) -> Result<u64, ChainError> {
        Ok(self.pending.load(Ordering::SeqCst))
    }
    async fn base_fee(&self) -> Result<Option<u128>, ChainError> {
        Ok(Some(1))
    }
    async fn send_raw_transaction(&self, _raw: &[u8]) -> Result<B256, ChainError> {
        Err(ChainError::Transport("fixed chain sends nothing".into()))
    }
    async fn block_number(&self) -> Result<u64, ChainError> {
        Ok(0)
    }
    async fn transaction_lookup(&self, _hash: B256) -> Result<TxLookup, ChainError> {
        Ok(TxLookup::Unknown)
    }
    async fn receipt(&self, _hash: B256) -> Result<Option<ReceiptSummary>, ChainError> {
        Ok(None)
    }
    async fn block(&self, _number: u64) -> Result<Option<BlockRef>, ChainError> {
        Ok(None)
    }
}

/// Generates, for test functions `async fn case(backend: Backend)` at the test crate's root,
/// one `#[tokio::test]` per backend: `sqlite::case` and `postgres::case` (skipped when
/// PostgreSQL is not installed, unless TAKHIN_REQUIRE_ALL_CLIENTS=1).
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::common::Backend::sqlite().unwrap()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = $crate::common::Backend::postgres(stringify!($case))
                    else {
                        return;
                    };
                    super::$case(backend).await;
                }
            )*
        }
    };
}
