//! Nonce allocation and transaction submission for EVM signers, safe across nodes.
//!
//! Several nodes share one database (one SQLite file embedded, PostgreSQL scale-out). A
//! node acts for a signer only while it holds the signer's lease (`ledger-lease`, resource
//! `signer:0x<address>`), and every nonce and status write carries the lease's fencing token
//! and is refused once the token is stale, so a paused or partitioned node cannot write
//! after a takeover.
//!
//! - [`store`]: the [`store::NonceStore`] trait and its SQLite and PostgreSQL impls;
//! - [`allocator`]: request-id dedup, `max(chain pending, cache, db)`, the batch writer;
//! - [`cache`]: the optional Redis cache of committed allocations, subordinate to the store;
//! - [`chain`]: the [`chain::ChainClient`] trait and send-error classification;
//!   [`alloy_chain`]: its JSON-RPC impl;
//! - [`signer`]: local keys, EIP-1559 signing with the hash known before sending;
//! - [`submit`]: SubmitTransaction, idempotent per request id;
//! - [`finality`]: receipt checker and confirmations manager (N confirmations, reorgs);
//! - [`blocks`]: the confirmed-block listener (a stream of blocks N deep, reorg-aware);
//! - [`policy`]: the policy loop (re-broadcast dropped, bump stuck, fee cap alert);
//! - [`reconcile`]: drift detection (the key used by another wallet), floor raise, gap fill;
//! - [`view`]: the per-signer view for the API.
//!
//! **Architecture Invariant:** no nonce leaves the allocator before the transaction that
//! records it (with its request id) has committed; no transaction is broadcast before its
//! signed bytes and hash have committed.
//!
//! Metrics go to the `metrics` facade (`nonce_manager_*`); the binary installs the exporter.
//!
//! Alert rules and a dashboard over these metrics: `deploy/nonce-manager/`.
//!
//! Not here yet: the gRPC API.

pub mod allocator;
pub mod alloy_chain;
pub mod blocks;
pub mod cache;
pub mod chain;
mod error;
pub mod finality;
pub mod limits;
pub mod policy;
pub mod reconcile;
pub mod signer;
pub mod store;
pub mod submit;
mod types;
pub mod view;

pub use error::{AllocateError, InvalidArgument, StoreError, SubmitError};
pub use types::{signer_resource, ManagedTransaction, RequestId, TxAttempt, TxPayload, TxStatus};
