//! The nonce manager as a gRPC service (`proto/nonce/v1/nonce.proto`) run by several nodes
//! over one shared database (a SQLite file embedded, PostgreSQL scale-out).
//!
//! - [`membership`]: each node writes a heartbeat row (`nonce_node`) in the shared database;
//!   the live rows form a consistent-hashing ring ([`membership::Ring`], `hashring` with
//!   virtual nodes), so a node joining or leaving moves only the signers it gains or loses;
//! - [`runtime`]: the ownership loop: a node takes the ledger-lease of every signer the ring
//!   gives it (and of a signer whose lease lapsed because its owner died), runs the
//!   allocator, submitter, finality, policy and reconciliation for it, and releases a
//!   signer the ring moved elsewhere;
//! - [`service`]: the tonic service; a call for a signer another node holds is forwarded to
//!   the holder's advertised address (once: a forwarded call is never forwarded again);
//! - [`status`]: the one place domain errors become gRPC codes;
//! - [`events`]: lifecycle events for WatchEvents, derived from store changes;
//! - [`node`]: starting and stopping a node, the Prometheus `/metrics` endpoint.
//!
//! **Architecture Invariant:** a node acts for a signer only through nonce-manager while it
//! holds the signer's lease; routing decides who *should* hold it, the fencing token
//! decides who *may* write. A wrong or stale routing view costs a retry, never a nonce.

pub mod config;
mod convert;
mod db;
pub mod events;
pub mod membership;
pub mod node;
pub mod runtime;
pub mod service;
pub mod status;

/// The generated protobuf types, server and client of `takhin.nonce.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("takhin.nonce.v1");
}

pub use config::{NodeConfig, StoreLocation};
pub use node::{start, NodeError, RunningNode};
