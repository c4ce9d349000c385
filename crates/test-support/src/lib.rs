//! Test harnesses for Takhin: real servers started on loopback for the test's lifetime
//! ([`postgres::PostgresServer`], [`redis::RedisServer`]), and one conformance suite per storage trait run against
//! every backend ([`lease_conformance`] with [`lease_store_conformance!`]).
//!
//! A harness whose server is not installed returns [`HarnessError::NotInstalled`];
//! [`skip_unless_required`] turns that into a printed skip, or into a failure when
//! `TAKHIN_REQUIRE_ALL_CLIENTS=1` (CI sets it after `scripts/install-deps`).

pub mod anvil;
pub mod lease_backend;
pub mod lease_conformance;
pub mod postgres;
pub mod redis;

use std::path::{Path, PathBuf};

/// The checkout the tests run from: the nearest directory above the running test's crate
/// that holds `Cargo.lock`.
///
/// Read at run time from `CARGO_MANIFEST_DIR`, which cargo and nextest set for every test
/// process, never from `env!` alone: a test binary compiled in another checkout that
/// shares the target directory keeps that checkout's path baked in, and cargo reuses the
/// binary when the sources are the same.
pub fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(manifest)
}

/// Why a harness could not start its server.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The server's binaries are not on this machine.
    #[error("{what} is not installed ({hint})")]
    NotInstalled {
        /// What is missing.
        what: &'static str,
        /// How to install it.
        hint: &'static str,
    },
    /// A command failed; `output` is its stderr/stdout or the server log.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line, for the report.
        command: String,
        /// What it printed.
        output: String,
    },
    /// The server did not become ready in time; `log` is its log.
    #[error("server did not start within {seconds}s; log {path:?}:\n{log}")]
    StartTimeout {
        /// The wait.
        seconds: u64,
        /// The log file.
        path: PathBuf,
        /// The log's contents.
        log: String,
    },
    /// Filesystem or process error.
    #[error("harness i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The environment variable that turns "not installed" from a skip into a failure.
pub const REQUIRE_ALL_CLIENTS_ENV: &str = "TAKHIN_REQUIRE_ALL_CLIENTS";

/// True when `TAKHIN_REQUIRE_ALL_CLIENTS=1`.
pub fn all_clients_required() -> bool {
    std::env::var(REQUIRE_ALL_CLIENTS_ENV).is_ok_and(|value| value == "1")
}

/// Maps a harness start result for a test: `Some` to run, `None` (after printing why) to
/// skip because the server is not installed. Panics, failing the test, on any other error
/// or when [`all_clients_required`].
pub fn skip_unless_required<T>(test: &str, started: Result<T, HarnessError>) -> Option<T> {
    match started {
        Ok(value) => Some(value),
        Err(error @ HarnessError::NotInstalled { .. }) if !all_clients_required() => {
            eprintln!("SKIPPED {test}: {error}; set {REQUIRE_ALL_CLIENTS_ENV}=1 to fail instead");
            None
        }
        Err(error) => panic!("{test}: harness failed to start: {error}"),
    }
}
