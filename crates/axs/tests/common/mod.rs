//! A whole AXS stack in one test process: the built-in Takhin broker on loopback, a SQLite
//! ledger, the in-process cache, the gRPC role and consumer members, and a tonic client.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axs::cache::{BalanceCache, MemoryCache};
use axs::consumer::ConsumerHandle;
use axs::node::{self, AxsConfig, GrpcNode};
use axs::pb;
use axs::pb::ledger_client::LedgerClient;
use axs::store::sqlite::SqliteLedgerStore;
use axs::store::LedgerStore;
use ledger_lease::{Clock, SystemClock};
use takhin_broker::BrokerConfig;
use tonic::transport::Channel;

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
    pub sqlite: SqliteLedgerStore,
    pub cache: Arc<MemoryCache>,
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
    /// Broker, store, gRPC role and `consumers` consumer members over `partitions`.
    pub async fn start(partitions: i32, consumers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(dir.path().join("broker"), ([127, 0, 0, 1], 0).into()).await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let database = dir.path().join("axs.sqlite");
        let sqlite = SqliteLedgerStore::open(&database, Arc::clone(&clock))
            .await
            .unwrap();
        let store: Arc<dyn LedgerStore> = Arc::new(sqlite.clone());
        let cache = Arc::new(MemoryCache::default());
        let config = config(
            broker.addr.to_string(),
            database.display().to_string(),
            partitions,
        );
        let grpc = node::start_grpc(
            &config,
            Arc::clone(&store),
            cache.clone() as Arc<dyn BalanceCache>,
            Arc::clone(&clock),
        )
        .await
        .expect("gRPC role starts");
        let client = connect(grpc.addr).await;
        let mut stack = Self {
            dir,
            broker,
            store,
            sqlite,
            cache,
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
            self.cache.clone() as Arc<dyn BalanceCache>,
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
pub async fn audit(store: &SqliteLedgerStore) -> axs::store::sqlite::Audit {
    let audit = store.audit().await.expect("audit reads the ledger");
    assert!(
        audit.violations.is_empty(),
        "ledger invariants broken:\n{}",
        audit.violations.join("\n")
    );
    audit
}
