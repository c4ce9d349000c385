//! A real Redis server for one test: Debian's `redis-server` on 127.0.0.1 with a free
//! port, no persistence, its working dir a temp dir, stopped on drop.
//!
//! As with [`crate::postgres::PostgresServer`], the server runs under `setpriv
//! --pdeathsig KILL`, so the kernel kills it if the thread that started it dies: a crashed
//! test leaves no server behind. Call [`RedisServer::start`] from the test's own thread.
//! [`RedisServer::stop`] kills it early, for tests of a cache that goes away mid-run.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// How long the server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at finding a port nobody grabs between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// Overrides where `redis-server` is found.
pub const BIN_ENV: &str = "TAKHIN_REDIS_SERVER";

const NOT_INSTALLED_HINT: &str =
    "install redis-server: scripts/install-deps, or apt-get install redis-server";

/// A running Redis server owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    url: String,
    log_path: PathBuf,
    // Dropped after the server has stopped (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a fresh server. Fails with [`HarnessError::NotInstalled`] when `redis-server`
    /// is missing.
    pub fn start() -> Result<Self, HarnessError> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new().prefix("takhin-redis-").tempdir()?;
        let mut last_error = None;
        for attempt in 0..PORT_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log_path = dir.path().join(format!("redis-{attempt}.log"));
            let mut command = Command::new("setpriv");
            command
                .arg("--pdeathsig=KILL")
                .arg("--")
                .arg(&binary)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--protected-mode", "yes"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = command.spawn()?;
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait()? {
                    let log = read_log(&log_path);
                    let port_taken = log.contains("Address already in use");
                    let error = HarnessError::Command {
                        command: format!("{command:?}"),
                        output: format!("exited with {status}: {log}"),
                    };
                    if !port_taken {
                        return Err(error);
                    }
                    last_error = Some(error);
                    break;
                }
                if ping(port) {
                    return Ok(Self {
                        child: Some(child),
                        port,
                        url: format!("redis://127.0.0.1:{port}/"),
                        log_path,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HarnessError::StartTimeout {
                        seconds: START_TIMEOUT.as_secs(),
                        log: read_log(&log_path),
                        path: log_path,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Command {
            command: "redis-server".to_owned(),
            output: "no attempt made".to_owned(),
        }))
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log, for a failing test's report.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Kills the server now (SIGKILL: a crash, nothing flushed) and waits for it to exit.
    /// Idempotent; the port stays unanswered afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the server answers PING.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && ping(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `$TAKHIN_REDIS_SERVER`, else `redis-server` in the usual places.
fn find_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(not_installed())
        };
    }
    let from_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.exists())
        .ok_or_else(not_installed)
}

fn not_installed() -> HarnessError {
    HarnessError::NotInstalled {
        what: "redis-server",
        hint: NOT_INSTALLED_HINT,
    }
}

/// True when something on `port` answers an inline `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0_u8; 7];
    let mut read = 0;
    while read < reply.len() {
        match stream.read(&mut reply[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    reply[..read].starts_with(b"+PONG")
}

fn read_log(log_path: &Path) -> String {
    std::fs::read_to_string(log_path).unwrap_or_else(|error| format!("(unreadable: {error})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_stops() {
        let Some(mut server) =
            crate::skip_unless_required("redis starts_answers_and_stops", RedisServer::start())
        else {
            return;
        };
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        assert!(server.is_up());
        let port = server.port();
        server.stop();
        assert!(!server.is_up());
        assert!(!ping(port), "a stopped server still answers");
        server.stop();
    }
}
