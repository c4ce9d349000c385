//! A real anvil node for one test: test-support's harness (the binary npm installed under
//! `tests/evm/node_modules`, `npm install --prefix tests/evm --ignore-scripts`, on
//! 127.0.0.1 with a free port, killed on drop; `TAKHIN_ANVIL_BIN` overrides the binary),
//! started with automine or a block time.

use test_support::HarnessError;

#[allow(unused_imports)] // not every test binary that includes `common` uses it
pub use test_support::anvil::DEV_KEY_0;

/// A running anvil.
pub struct Anvil(test_support::anvil::Anvil);

impl Anvil {
    /// Starts anvil with automine (each transaction mined on arrival), or with
    /// `--block-time` when given.
    pub fn start(block_time_secs: Option<u64>) -> Result<Self, HarnessError> {
        let seconds = block_time_secs.map(|seconds| seconds.to_string());
        let args: Vec<&str> = match &seconds {
            Some(seconds) => vec!["--block-time", seconds],
            None => Vec::new(),
        };
        test_support::anvil::Anvil::start(&args).map(Self)
    }

    pub fn url(&self) -> &str {
        self.0.url()
    }
}
