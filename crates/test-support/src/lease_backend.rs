//! The backends the lease conformance suite runs against, behind one [`LeaseBackend`] trait:
//! SQLite in a temp file and PostgreSQL on a [`PostgresServer`]. Besides stores, a backend
//! offers a fenced journal: a table the suite appends to through the backend's own fence,
//! the way the nonce manager's and AXS's writes will, so "a stale token's write is refused"
//! is tested on real transactions. Also [`FaultyLeaseStore`], a wrapper that fails or
//! stalls renewals for the [`ledger_lease::LeaseManager`] tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use ledger_lease::postgres::PostgresLeaseStore;
use ledger_lease::sqlite::SqliteLeaseStore;
use ledger_lease::{Clock, FencingToken, HolderId, Lease, LeaseError, LeaseStore, ResourceName};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use tokio::sync::{oneshot, Notify};

use crate::postgres::PostgresServer;
use crate::skip_unless_required;

/// One row of the fenced journal, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The token the write carried.
    pub token: i64,
    /// What was written.
    pub entry: String,
}

/// Holds a fenced transaction open: the backend signals `locked` once the fence has passed
/// and the row is inserted, then waits for `release` before committing.
#[derive(Debug)]
pub struct Gate {
    /// Signalled when the fenced transaction holds its lock.
    pub locked: oneshot::Sender<()>,
    /// Commit when this fires (or its sender drops).
    pub release: oneshot::Receiver<()>,
}

/// A database the lease suite can run on.
#[async_trait]
pub trait LeaseBackend: Send + Sync + std::fmt::Debug {
    /// For reports: "sqlite", "postgres".
    fn name(&self) -> &'static str;

    /// A new store with its own connection pool on the shared database: another node.
    async fn node(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn LeaseStore>>;

    /// Appends `entry` in one transaction that first passes the fence with `token`.
    async fn fenced_append(
        &self,
        resource: &ResourceName,
        token: FencingToken,
        entry: &str,
        gate: Option<Gate>,
    ) -> Result<(), LeaseError>;

    /// The journal in commit order.
    async fn journal(&self) -> anyhow::Result<Vec<JournalEntry>>;
}

async fn hold(gate: Option<Gate>) {
    if let Some(gate) = gate {
        let _ = gate.locked.send(());
        let _ = gate.release.await;
    }
}

/// SQLite in a temp file.
#[derive(Debug)]
pub struct SqliteBackend {
    path: PathBuf,
    writer: SqlitePool,
    _dir: tempfile::TempDir,
}

impl SqliteBackend {
    /// A fresh database file with the lease schema and the journal table.
    pub async fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("takhin-lease-").tempdir()?;
        let path = dir.path().join("leases.sqlite");
        let writer = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(ledger_lease::sqlite::connect_options(&path))
            .await
            .context("open sqlite")?;
        ledger_lease::sqlite::migrate(&writer).await?;
        sqlx::query(
            "CREATE TABLE fenced_journal (id INTEGER PRIMARY KEY AUTOINCREMENT,
                 token INTEGER NOT NULL, entry TEXT NOT NULL)",
        )
        .execute(&writer)
        .await?;
        Ok(Self {
            path,
            writer,
            _dir: dir,
        })
    }
}

#[async_trait]
impl LeaseBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn node(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(
            SqliteLeaseStore::connect(&self.path, clock).await?,
        ))
    }

    async fn fenced_append(
        &self,
        resource: &ResourceName,
        token: FencingToken,
        entry: &str,
        gate: Option<Gate>,
    ) -> Result<(), LeaseError> {
        let mut tx = ledger_lease::sqlite::begin_immediate(&self.writer).await?;
        ledger_lease::sqlite::fence(&mut tx, resource, token).await?;
        sqlx::query("INSERT INTO fenced_journal (token, entry) VALUES (?1, ?2)")
            .bind(token.get())
            .bind(entry)
            .execute(&mut *tx)
            .await?;
        hold(gate).await;
        tx.commit().await?;
        Ok(())
    }

    async fn journal(&self) -> anyhow::Result<Vec<JournalEntry>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT token, entry FROM fenced_journal ORDER BY id")
                .fetch_all(&self.writer)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(token, entry)| JournalEntry { token, entry })
            .collect())
    }
}

/// PostgreSQL on its own [`PostgresServer`].
#[derive(Debug)]
pub struct PostgresBackend {
    writer: PgPool,
    server: PostgresServer,
}

impl PostgresBackend {
    /// Starts a server, applies the lease schema and creates the journal table.
    pub async fn new(server: PostgresServer) -> anyhow::Result<Self> {
        let writer = PgPoolOptions::new()
            .max_connections(8)
            .connect(server.url())
            .await
            .with_context(|| format!("connect to {}", server.url()))?;
        ledger_lease::postgres::migrate(&writer).await?;
        // The journal's order is commit order only if ids are taken under the fence lock,
        // which they are: the insert runs after `fence` in the same transaction.
        sqlx::query(
            "CREATE TABLE fenced_journal (id BIGSERIAL PRIMARY KEY,
                 token BIGINT NOT NULL, entry TEXT NOT NULL)",
        )
        .execute(&writer)
        .await?;
        Ok(Self { writer, server })
    }

    /// The server, e.g. for its log.
    pub fn server(&self) -> &PostgresServer {
        &self.server
    }
}

#[async_trait]
impl LeaseBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn node(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(
            PostgresLeaseStore::connect(self.server.url(), clock).await?,
        ))
    }

    async fn fenced_append(
        &self,
        resource: &ResourceName,
        token: FencingToken,
        entry: &str,
        gate: Option<Gate>,
    ) -> Result<(), LeaseError> {
        let mut tx = self.writer.begin().await?;
        ledger_lease::postgres::fence(&mut tx, resource, token).await?;
        sqlx::query("INSERT INTO fenced_journal (token, entry) VALUES ($1, $2)")
            .bind(token.get())
            .bind(entry)
            .execute(&mut *tx)
            .await?;
        hold(gate).await;
        tx.commit().await?;
        Ok(())
    }

    async fn journal(&self) -> anyhow::Result<Vec<JournalEntry>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT token, entry FROM fenced_journal ORDER BY id")
                .fetch_all(&self.writer)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(token, entry)| JournalEntry { token, entry })
            .collect())
    }
}

/// The SQLite backend for a conformance test; setup failures fail the test.
pub async fn sqlite(_test: &str) -> Option<Box<dyn LeaseBackend>> {
    match SqliteBackend::new().await {
        Ok(backend) => Some(Box::new(backend)),
        Err(error) => panic!("sqlite backend: {error:?}"),
    }
}

/// The PostgreSQL backend for a conformance test, or `None` (skip) when PostgreSQL is not
/// installed and `TAKHIN_REQUIRE_ALL_CLIENTS` is not `1`.
pub async fn postgres(test: &str) -> Option<Box<dyn LeaseBackend>> {
    let server = skip_unless_required(test, PostgresServer::start())?;
    match PostgresBackend::new(server).await {
        Ok(backend) => Some(Box::new(backend)),
        Err(error) => panic!("postgres backend: {error:?}"),
    }
}

/// Wraps a store so a test can make renewals fail or hang.
#[derive(Debug)]
pub struct FaultyLeaseStore {
    inner: Arc<dyn LeaseStore>,
    fail_renewals: AtomicBool,
    stall_renewals: AtomicBool,
    failed_renewals: AtomicUsize,
    stalled: Notify,
}

impl FaultyLeaseStore {
    /// Passes everything through until told otherwise.
    pub fn new(inner: Arc<dyn LeaseStore>) -> Self {
        Self {
            inner,
            fail_renewals: AtomicBool::new(false),
            stall_renewals: AtomicBool::new(false),
            failed_renewals: AtomicUsize::new(0),
            stalled: Notify::new(),
        }
    }

    /// Renewals fail with a database error while `fail`.
    pub fn fail_renewals(&self, fail: bool) {
        self.fail_renewals.store(fail, Ordering::SeqCst);
    }

    /// Renewals hang forever (until the caller's timeout) while `stall`.
    pub fn stall_renewals(&self, stall: bool) {
        self.stall_renewals.store(stall, Ordering::SeqCst);
    }

    /// How many renewals were failed on purpose.
    pub fn failed_renewals(&self) -> usize {
        self.failed_renewals.load(Ordering::SeqCst)
    }

    /// Waits until a renewal is hanging.
    pub async fn renewal_stalled(&self) {
        self.stalled.notified().await;
    }
}

#[async_trait]
impl LeaseStore for FaultyLeaseStore {
    async fn try_acquire(
        &self,
        resource: &ResourceName,
        holder: &HolderId,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        self.inner.try_acquire(resource, holder, ttl).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LeaseError> {
        if self.stall_renewals.load(Ordering::SeqCst) {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        if self.fail_renewals.load(Ordering::SeqCst) {
            self.failed_renewals.fetch_add(1, Ordering::SeqCst);
            return Err(LeaseError::Database(sqlx::Error::PoolTimedOut));
        }
        self.inner.renew(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.inner.release(lease).await
    }

    async fn current(&self, resource: &ResourceName) -> Result<Option<Lease>, LeaseError> {
        self.inner.current(resource).await
    }

    async fn check_fence(
        &self,
        resource: &ResourceName,
        token: FencingToken,
    ) -> Result<(), LeaseError> {
        self.inner.check_fence(resource, token).await
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock()
    }
}
