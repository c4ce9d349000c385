//! The server's configuration: where the data lives, where it listens, and the bounds of
//! what one request may ask for. Pipeline tunables are the UTXO client's
//! ([`ClientConfig`]), store tunables the store's ([`StoreConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wes_store::StoreConfig;
use wes_utxo::ChainParams;
use wes_utxo_client::ClientConfig;

use crate::error::ServerError;

/// Largest gRPC message the server decodes or encodes: a block of the repository's maximum
/// size plus framing.
pub const MAX_MESSAGE_BYTES: usize = wes_store::limits::MAX_BLOCK_BYTES + 1024 * 1024;

/// The server's configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Data directory: the chain store (UTXO system) at the top, as `takhin utxo import`
    /// writes it, and the block repository (the outbox) in `repository/`.
    pub data_dir: PathBuf,
    /// gRPC listener (port 0: any free port).
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listener; None: emit only (see [`crate::metrics`]).
    pub metrics_addr: Option<SocketAddr>,
    /// Chain parameters.
    pub params: ChainParams,
    /// The chain store's tunables.
    pub store: StoreConfig,
    /// The UTXO client's tunables.
    pub client: ClientConfig,
    /// Longest SubmitBlock waits for the UTXO system to reach the repository tip (to
    /// validate on the parent's state) and, with `wait_applied`, to apply the block.
    pub submit_timeout: Duration,
    /// Most UTXOs or resources one query answers; an owner with more gets
    /// `RESOURCE_EXHAUSTED` (the store has no paging yet).
    pub max_results: usize,
    /// Test hook: every apply of the UTXO system first sleeps this long.
    pub apply_delay: Duration,
}

impl ServerConfig {
    /// Defaults for `data_dir`, listening on `grpc_addr`, no metrics endpoint.
    pub fn new(data_dir: PathBuf, grpc_addr: SocketAddr) -> Self {
        Self {
            data_dir,
            grpc_addr,
            metrics_addr: None,
            params: ChainParams::default(),
            store: StoreConfig::default(),
            client: ClientConfig::default(),
            submit_timeout: Duration::from_secs(10),
            max_results: 100_000,
            apply_delay: Duration::ZERO,
        }
    }

    /// Checks the bounds the server relies on.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.submit_timeout.is_zero() {
            return Err(ServerError::Config(
                "submit_timeout must be positive".to_string(),
            ));
        }
        if self.max_results == 0 {
            return Err(ServerError::Config(
                "max_results must be at least 1".to_string(),
            ));
        }
        Ok(())
    }
}
