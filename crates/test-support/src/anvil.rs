//! A real anvil node (npm `@foundry-rs/anvil`, installed by
//! `npm install --prefix tests/evm --ignore-scripts`) on 127.0.0.1 with a free port, killed
//! on drop. `TAKHIN_ANVIL_BIN` overrides the binary. Extra arguments (block time, gas
//! limit) are the caller's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

/// Anvil's dev account 0: a published test key, funded with 10,000 ETH.
pub const DEV_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// A running anvil.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    /// Starts anvil (chain id 31337) with `args` added, e.g. `["--block-time", "1"]`.
    pub fn start(args: &[&str]) -> Result<Self, HarnessError> {
        let binary = find_binary()?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut command = Command::new(&binary);
            command
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--chain-id", "31337", "--silent"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = command.spawn()?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait()? {
                    last_error = Some(HarnessError::Command {
                        command: format!("{command:?}"),
                        output: format!("exited with {status}"),
                    });
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Self {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HarnessError::StartTimeout {
                        seconds: START_TIMEOUT.as_secs(),
                        path: binary.clone(),
                        log: String::new(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last_error.unwrap_or(HarnessError::NotInstalled {
            what: "anvil",
            hint: "npm install --prefix tests/evm --ignore-scripts",
        }))
    }

    /// The JSON-RPC URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("TAKHIN_ANVIL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let modules = crate::workspace_root().join("tests/evm/node_modules");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    // The platform package holds the real binary; `.bin/anvil` is a node wrapper that
    // would outlive a kill of its own process.
    let platform = modules.join(format!(
        "@foundry-rs/anvil-{}-{arch}/bin/anvil",
        std::env::consts::OS
    ));
    if platform.exists() {
        return Ok(platform);
    }
    Err(HarnessError::NotInstalled {
        what: "anvil (npm package @foundry-rs/anvil)",
        hint: "npm install --prefix tests/evm --ignore-scripts",
    })
}
