//! A whole AXS stack in one test process: the built-in Takhin broker on loopback, the ledger
//! on one of two backends (SQLite + the in-process cache, or PostgreSQL + Redis started on
//! loopback by the harness), the gRPC role and consumer members, and a tonic client.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axs::cache::BalanceCache;
use axs::consumer::ConsumerHandle;
use axs::node::{self, AxsConfig, GrpcNode};
use axs::pb;
use axs::pb::ledger_client::LedgerClient;
use axs::store::LedgerStore;
use ledger_lease::{Clock, SystemClock};
use takhin_broker::BrokerConfig;
use test_support::postgres::PostgresServer;
use test_support::redis::RedisServer;
use tonic::transport::Channel;

/// Where the ledger lives.
#[allow(clippy::large_enum_variant)] // one per test; never moved in a hot path
pub enum Backend {
    /// The embedded defaults: a SQLite file in the stack's directory, the in-process cache.
    Sqlite,
    /// Scale-out: PostgreSQL and Redis, each a fresh server on loopback.
    Postgres {
        postgres: PostgresServer,
        redis: RedisServer,
    },
}

impl Backend {
    /// `None` (skip) when PostgreSQL or Redis is not installed, unless
    /// TAKHIN_REQUIRE_ALL_CLIENTS=1.
    pub fn postgres(test: &str) -> Option<Self> {
        let postgres = test_support::skip_unless_required(test, PostgresServer::start())?;
        let redis = test_support::skip_unless_required(test, RedisServer::start())?;
        Some(Self::Postgres { postgres, redis })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// (database, redis_url) for a stack whose files live in `dir`.
    fn urls(&self, dir: &std::path::Path) -> (String, Option<String>) {
        match self {
            Self::Sqlite => (dir.join("axs.sqlite").display().to_string(), None),
            Self::Postgres { postgres, redis } => {
                (postgres.url().to_owned(), Some(redis.url().to_owned()))
            }
        }
    }
}

/// Generates, for test functions `async fn case(backend: Backend)` at the test crate's root,
/// `sqlite::case` and `postgres::case` (skipped when PostgreSQL or Redis is not installed,
/// unless TAKHIN_REQUIRE_ALL_CLIENTS=1).
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = $crate::common::Backend::postgres(stringify!($case))
                    else {
                        return;
                    };
                    super::$case(backend).await;
                }
            )*
        }
    };
}

/// How long any wait on the pipeline may take before the test fails, naming what it waited
/// for. Generous: CI runs this on two loaded cores.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Broker {
    pub running: Option<takhin_broker::RunningBroker>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Broker {
    pub async fn start(dir: PathBuf, addr: SocketAddr) -> Self {
        let config = BrokerConfig {
            data_dir: dir.clone(),
            kafka_listen: addr,
            metrics_listen: None,
            group_initial_rebalance_delay_ms: 0,
            ..BrokerConfig::default()
        };
        let running = takhin_broker::run(config).await.expect("broker starts");
        let addr = running.kafka_addr;
        Self {
            running: Some(running),
            addr,
            dir,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Starts again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let config = BrokerConfig {
                data_dir: self.dir.clone(),
                kafka_listen: self.addr,
                metrics_listen: None,
                group_initial_rebalance_delay_ms: 0,
                ..BrokerConfig::default()
            };
            match takhin_broker::run(config).await {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "broker restart on {}: {error}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub store: Arc<dyn LedgerStore>,
    pub cache: Arc<dyn BalanceCache>,
    /// Kept for the servers' lifetime (dropping it stops PostgreSQL and Redis).
    pub backend: Backend,
    pub clock: Arc<dyn Clock>,
    pub config: AxsConfig,
    pub grpc: Option<GrpcNode>,
    pub consumers: Vec<ConsumerHandle>,
    pub client: LedgerClient<Channel>,
}

pub fn config(bootstrap: String, database: String, partitions: i32) -> AxsConfig {
    AxsConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database,
        kafka_bootstrap: bootstrap,
        partitions,
        node_id: "grpc-test".into(),
        lease_ttl_ms: 2_000,
        relay_after_ms: 500,
        ..AxsConfig::default()
    }
}

impl Stack {
    /// Broker, store, gRPC role and `consumers` consumer members over `partitions`, on the
    /// embedded defaults.
    pub async fn start(partitions: i32, consumers: usize) -> Self {
        Self::start_on(Backend::Sqlite, partitions, consumers).await
    }

    /// The same on `backend`; store and cache are opened as the binary opens them.
    pub async fn start_on(backend: Backend, partitions: i32, consumers: usize) -> Self {
        Self::start_with(backend, partitions, consumers, |_| {}).await
    }

    /// The same with `tweak` applied to the test config first.
    pub async fn start_with(
        backend: Backend,
        partitions: i32,
        consumers: usize,
        tweak: impl FnOnce(&mut AxsConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(dir.path().join("broker"), ([127, 0, 0, 1], 0).into()).await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (database, redis_url) = backend.urls(dir.path());
        let mut config = AxsConfig {
            redis_url,
            ..config(broker.addr.to_string(), database, partitions)
        };
        tweak(&mut config);
        let store = node::open_store(&config.database, Arc::clone(&clock))
            .await
            .expect("the ledger store opens");
        let cache = node::open_cache(&config).await.expect("the cache opens");
        let grpc = node::start_grpc(
            &config,
            Arc::clone(&store),
            Arc::clone(&cache),
            Arc::clone(&clock),
        )
        .await
        .expect("gRPC role starts");
        let client = connect(grpc.addr).await;
        let mut stack = Self {
            dir,
            broker,
            store,
            cache,
            backend,
            clock,
            config,
            grpc: Some(grpc),
            consumers: Vec::new(),
            client,
        };
        for i in 0..consumers {
            stack.add_consumer(&format!("consumer-{i}")).await;
        }
        stack
    }

    pub async fn add_consumer(&mut self, member: &str) {
        let config = AxsConfig {
            node_id: member.to_owned(),
            ..self.config.clone()
        };
        let handle = node::start_consumer(
            &config,
            Arc::clone(&self.store),
            Arc::clone(&self.cache),
            Arc::clone(&self.clock),
        )
        .await
        .expect("consumer starts");
        self.consumers.push(handle);
    }

    pub async fn open(&mut self, account: &str, shard: u32, limit: i128) {
        self.client
            .open_account(pb::OpenAccountRequest {
                account: account.into(),
                assets: vec![pb::AssetLimit {
                    asset: "USD".into(),
                    overdraft_limit: limit.to_string(),
                }],
                shard,
            })
            .await
            .expect("account opens");
    }

    pub async fn submit(
        &mut self,
        changes: Vec<pb::BalanceChange>,
    ) -> Result<Vec<pb::SubmitResult>, tonic::Status> {
        self.client
            .batch_submit_balance_changes(pb::BatchSubmitBalanceChangesRequest { changes })
            .await
            .map(|r| r.into_inner().results)
    }

    /// Polls until every key in `keys` is applied or rejected.
    pub async fn wait_decided(&self, keys: &[String]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let records = self.store.changes(keys).await.unwrap();
            let pending: Vec<&String> = keys
                .iter()
                .filter(|k| !records.get(*k).is_some_and(|r| r.status.is_final()))
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {} of {} changes to be applied, first {:?}: {:?}",
                pending.len(),
                keys.len(),
                pending[0],
                records.get(pending[0]).map(|r| r.status)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn balance(&mut self, account: &str) -> pb::Balance {
        self.client
            .get_balance(pb::GetBalanceRequest {
                account: account.into(),
                asset: "USD".into(),
            })
            .await
            .expect("balance")
            .into_inner()
    }

    pub async fn shutdown(mut self) {
        for consumer in self.consumers.drain(..) {
            consumer.shutdown().await;
        }
        if let Some(grpc) = self.grpc.take() {
            grpc.shutdown().await;
        }
        self.broker.stop().await;
    }
}

pub async fn connect(addr: SocketAddr) -> LedgerClient<Channel> {
    let deadline = Instant::now() + WAIT;
    loop {
        match LedgerClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(error) => {
                assert!(Instant::now() < deadline, "gRPC server at {addr}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub fn change(key: &str, account: &str, amount: i128) -> pb::BalanceChange {
    pb::BalanceChange {
        idempotency_key: key.into(),
        account: account.into(),
        asset: "USD".into(),
        amount: amount.to_string(),
        kind: pb::ChangeKind::Immediate as i32,
        ..Default::default()
    }
}

pub fn hold(key: &str, account: &str, amount: i128, timeout_ms: u64) -> pb::BalanceChange {
    pb::BalanceChange {
        kind: pb::ChangeKind::Pending as i32,
        timeout_ms,
        ..change(key, account, amount)
    }
}

pub fn settle(key: &str, account: &str, pending: &str, amount: Option<i128>) -> pb::BalanceChange {
    pb::BalanceChange {
        idempotency_key: key.into(),
        account: account.into(),
        asset: "USD".into(),
        amount: amount.map(|a| a.to_string()).unwrap_or_default(),
        kind: if amount.is_some() {
            pb::ChangeKind::PostPending as i32
        } else {
            pb::ChangeKind::VoidPending as i32
        },
        pending_key: pending.into(),
        ..Default::default()
    }
}

/// Runs the invariant checker and fails the test on any violation.
pub async fn audit(store: &dyn LedgerStore) -> axs::store::audit::Audit {
    let audit = axs::store::audit::audit(store)
        .await
        .expect("audit reads the ledger");
    assert!(
        audit.violations.is_empty(),
        "ledger invariants broken:\n{}",
        audit.violations.join("\n")
    );
    audit
}
