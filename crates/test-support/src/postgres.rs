//! A real PostgreSQL server for one test: `initdb` into a temp dir, `postgres` on
//! 127.0.0.1 with a free port and its unix socket inside the temp dir, stopped on drop.
//!
//! PostgreSQL refuses to run as root, and the test runner often is root (containers, CI).
//! Then both programs run as the `postgres` system user the Debian package creates, through
//! `setpriv --reuid/--regid --init-groups` (util-linux; no `unsafe` `pre_exec` needed), with
//! the temp dir chowned to it. `setpriv --pdeathsig KILL` also makes the kernel kill the
//! server if the thread that started it dies, so a crashed or killed test process does not
//! leave a server behind. Call [`PostgresServer::start`] from the test's own thread (a
//! `#[tokio::test]` body is), not from `spawn_blocking`, whose threads exit when idle.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a port nobody grabs between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// The oldest major version the lease store supports.
const VERSION_MIN: u32 = 14;
/// Overrides where `initdb`, `postgres` and `pg_isready` are found.
pub const BIN_DIR_ENV: &str = "TAKHIN_PG_BIN_DIR";

const NOT_INSTALLED_HINT: &str =
    "install PostgreSQL 14+: scripts/install-deps, or apt-get install postgresql";

/// Whether commits wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// A test database: a test never waits on fsync.
    Off,
    /// PostgreSQL's defaults: a commit is flushed before it returns.
    Durable,
}

impl Durability {
    fn settings(self) -> &'static [&'static str] {
        match self {
            Durability::Off => &[
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            Durability::Durable => &["-c", "fsync=on", "-c", "synchronous_commit=on"],
        }
    }
}

/// A running PostgreSQL server owned by a test.
#[derive(Debug)]
pub struct PostgresServer {
    child: Child,
    port: u16,
    url: String,
    log_path: PathBuf,
    // Dropped after the server has stopped (fields drop after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Starts a fresh server; blocks for about a second (`initdb`). Fails with
    /// [`HarnessError::NotInstalled`] when PostgreSQL (or, as root, its system user) is
    /// missing.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(Durability::Off)
    }

    /// Starts a fresh server with `fsync=on` and `synchronous_commit=on`, PostgreSQL's
    /// defaults: a commit returns after its WAL record is flushed to disk. For benchmarks
    /// that claim durable writes; tests use [`PostgresServer::start`].
    pub fn start_durable() -> Result<Self, HarnessError> {
        Self::start_with(Durability::Durable)
    }

    fn start_with(durability: Durability) -> Result<Self, HarnessError> {
        let bin_dir = find_bin_dir()?;
        let run_as = if running_as_root()? {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("takhin-pg-").tempdir()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data_dir = dir.path().join("data");
        let mut initdb = server_command(&bin_dir.join("initdb"), run_as);
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"]);
        run(&mut initdb)?;

        let mut last_error = None;
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log_path = dir.path().join(format!("postgres-{attempt}.log"));
            let log = File::create(&log_path)?;
            let mut postgres = server_command(&bin_dir.join("postgres"), run_as);
            postgres
                .arg("-D")
                .arg(&data_dir)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(durability.settings())
                .args(["-c", "max_connections=200"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let mut child = postgres.spawn()?;
            match wait_ready(&bin_dir, port, &mut child, &log_path)? {
                Ready::Yes => {
                    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                    return Ok(Self {
                        child,
                        port,
                        url,
                        log_path,
                        dir,
                    });
                }
                Ready::Exited(log_text) => {
                    let port_taken = log_text.contains("could not bind")
                        || log_text.contains("could not create any TCP/IP sockets");
                    last_error = Some(HarnessError::Command {
                        command: format!("{postgres:?}"),
                        output: log_text,
                    });
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Command {
            command: "postgres".to_owned(),
            output: "no attempt made".to_owned(),
        }))
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres` (trust auth, superuser).
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

    /// The temp dir holding the data dir, socket and log; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: backends are terminated, no checkpoint wait.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin` with major >= 14, or `$TAKHIN_PG_BIN_DIR`.
fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    let not_installed = HarnessError::NotInstalled {
        what: "PostgreSQL 14+",
        hint: NOT_INSTALLED_HINT,
    };
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(not_installed)
        };
    }
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Err(not_installed);
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            let complete = ["initdb", "postgres", "pg_isready"]
                .iter()
                .all(|program| bin.join(program).exists());
            (major >= VERSION_MIN && complete).then_some((major, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or(not_installed)
}

/// True when this process's effective user is root (`/proc/self` is owned by the euid).
fn running_as_root() -> Result<bool, HarnessError> {
    Ok(std::fs::metadata("/proc/self")?.uid() == 0)
}

/// The `postgres` system user's uid and gid, from `/etc/passwd`.
fn postgres_user() -> Result<(u32, u32), HarnessError> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or(HarnessError::NotInstalled {
            what: "the postgres system user (PostgreSQL refuses to run as root)",
            hint: NOT_INSTALLED_HINT,
        })
}

/// `program` wrapped in `setpriv`: as the postgres user when we are root, and always with
/// the parent-death signal so the server cannot outlive the test.
fn server_command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    let mut command = Command::new("setpriv");
    if let Some((uid, gid)) = run_as {
        command.arg(format!("--reuid={uid}"));
        command.arg(format!("--regid={gid}"));
        command.arg("--init-groups");
    }
    command.arg("--pdeathsig=KILL").arg("--").arg(program);
    command
}

fn run(command: &mut Command) -> Result<(), HarnessError> {
    let output = command.output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(HarnessError::Command {
        command: format!("{command:?}"),
        output: format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ),
    })
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

enum Ready {
    Yes,
    /// The server exited; its log.
    Exited(String),
}

fn wait_ready(
    bin_dir: &Path,
    port: u16,
    child: &mut Child,
    log_path: &Path,
) -> Result<Ready, HarnessError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(Ready::Exited(read_log(log_path)));
        }
        let ready = Command::new(bin_dir.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "1"])
            .status()?;
        if ready.success() {
            return Ok(Ready::Yes);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(HarnessError::StartTimeout {
        seconds: START_TIMEOUT.as_secs(),
        path: log_path.to_owned(),
        log: read_log(log_path),
    })
}

fn read_log(log_path: &Path) -> String {
    std::fs::read_to_string(log_path).unwrap_or_else(|error| format!("(unreadable: {error})"))
}
