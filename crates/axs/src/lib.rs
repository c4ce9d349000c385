//! AXS: an event-sourced balance-change ledger.
//!
//! Write side (`takhin axs grpc`, [`write`]): a submitted batch is validated, committed as
//! INIT rows (the outbox), answered, then published to the ledger topic by shard and marked
//! PUBLISHED; a relay re-sends what a crash left behind. Processing side (`takhin axs
//! consumer`, [`consumer`]): one fenced owner per partition applies batches exactly once,
//! planned in memory by [`engine`] and committed with the consumed offset in one SQL
//! transaction; the cache ([`cache`]) is written only after. The topic is reached over the
//! Kafka protocol ([`bus`]); this crate never links the broker.

pub mod bus;
pub mod cache;
pub mod consumer;
pub mod engine;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod node;
pub mod store;
pub mod validate;
pub mod write;

/// Generated from `proto/axs/v1/axs.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("axs.v1");

    /// The encoded descriptor set gRPC reflection serves.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/axs_descriptor.bin"));
}

pub use node::{AxsConfig, AxsError};
