//! A real hardhat 2 node for one test: `node_modules/.bin/hardhat node` from `tests/evm`
//! (`npm install --prefix tests/evm --ignore-scripts`), on 127.0.0.1 with a free port, in
//! its own process group, killed (the whole group) on drop. Chain id 31337, dev account 0
//! is anvil's.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::HarnessError;

const START_TIMEOUT: Duration = Duration::from_secs(40);

pub struct Hardhat {
    child: Child,
    url: String,
}

impl Hardhat {
    pub fn start() -> Result<Self, HarnessError> {
        let dir = test_support::workspace_root().join("tests/evm");
        let cli = dir.join("node_modules/hardhat/internal/cli/bootstrap.js");
        let cli = if cli.exists() {
            cli
        } else {
            dir.join("node_modules/hardhat/internal/cli/cli.js")
        };
        if !cli.exists() || Command::new("node").arg("--version").output().is_err() {
            return Err(HarnessError::NotInstalled {
                what: "hardhat (npm package hardhat) and node",
                hint: "npm install --prefix tests/evm --ignore-scripts",
            });
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new("node");
        command
            .arg(&cli)
            .args([
                "node",
                "--hostname",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .current_dir(&dir)
            .env("HARDHAT_DISABLE_TELEMETRY_PROMPT", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command.spawn()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(HarnessError::Command {
                    command: format!("{command:?}"),
                    output: format!("exited with {status}"),
                });
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                });
            }
            if Instant::now() > deadline {
                let mut node = Self {
                    child,
                    url: String::new(),
                };
                node.stop();
                return Err(HarnessError::StartTimeout {
                    seconds: START_TIMEOUT.as_secs(),
                    path: cli,
                    log: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn stop(&mut self) {
        // The group is the node process and anything it forked.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hardhat {
    fn drop(&mut self) {
        self.stop();
    }
}
