//! A whole AXS stack in one test process: the built-in Takhin broker on loopback, a SQLite
//! ledger, the in-process cache, the gRPC role and consumer members, and a tonic client.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axs::cache::{BalanceCache, MemoryCache};
use axs::consumer::ConsumerHandle;
use axs::model::{ChangeKind, ChangeStatus};
use axs::node::{self, AxsConfig, GrpcNode};
use axs::pb;
use axs::pb::ledger_client::LedgerClient;
use axs::store::sqlite::SqliteLedgerStore;
use axs::store::LedgerStore;
use ledger_lease::{Clock, SystemClock};
use sqlx::Row;
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
                    assert!(Instant::now() < deadline, "broker restart on {}: {error}", self.addr);
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

/// What the invariant checker found.
#[derive(Debug, Default)]
pub struct Audit {
    pub accounts: usize,
    pub applied: usize,
    pub rejected: usize,
}

/// The ledger's invariants, read straight from SQL:
/// - every balance equals the sum of its history's deltas, and its version their count;
/// - every applied change (other than a hold's expiry) appears exactly once in history, and
///   a rejected one never;
/// - replaying each history in version order never takes a debit below the overdraft limit.
pub async fn audit(store: &SqliteLedgerStore) -> Audit {
    let pool = store.pool();
    let limits: HashMap<String, i128> = sqlx::query("SELECT account, assets FROM axs_accounts")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let assets: BTreeMap<String, String> =
                serde_json::from_str(row.get::<String, _>("assets").as_str()).unwrap();
            (row.get("account"), assets["USD"].parse().unwrap())
        })
        .collect();
    let history = sqlx::query("SELECT * FROM axs_history ORDER BY account, asset, version")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut sums: HashMap<(String, String), (i128, i128, u64)> = HashMap::new();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for row in &history {
        let key = (row.get::<String, _>("account"), row.get::<String, _>("asset"));
        let delta: i128 = row.get::<String, _>("balance_delta").parse().unwrap();
        let pending: i128 = row.get::<String, _>("pending_debit_delta").parse().unwrap();
        let after: i128 = row.get::<String, _>("balance_after").parse().unwrap();
        let version: i64 = row.get("version");
        let entry = sums.entry(key.clone()).or_default();
        entry.0 += delta;
        entry.1 += pending;
        entry.2 += 1;
        assert_eq!(entry.0, after, "balance_after of {key:?} v{version}");
        assert_eq!(entry.2 as i64, version, "versions of {key:?} have a gap");
        let limit = limits[&key.0];
        if delta < 0 || pending > 0 {
            assert!(
                entry.0 - entry.1 >= -limit,
                "{key:?} v{version}: available {} below -{limit}",
                entry.0 - entry.1
            );
        }
        let kind: i64 = row.get("kind");
        let change_key: String = row.get("key");
        // A hold's expiry is recorded under the hold's key as a second entry.
        if kind != ChangeKind::VoidPending.code() || !is_hold(store, &change_key).await {
            *per_key.entry(change_key).or_default() += 1;
        }
    }
    let balances = sqlx::query("SELECT * FROM axs_balances").fetch_all(pool).await.unwrap();
    for row in &balances {
        let key = (row.get::<String, _>("account"), row.get::<String, _>("asset"));
        let balance: i128 = row.get::<String, _>("balance").parse().unwrap();
        let version: i64 = row.get("version");
        let (sum, _, count) = sums.get(&key).copied().unwrap_or_default();
        assert_eq!(balance, sum, "balance of {key:?} is not the sum of its history");
        assert_eq!(version as u64, count, "version of {key:?}");
    }
    let changes = sqlx::query("SELECT key, status FROM axs_changes").fetch_all(pool).await.unwrap();
    let mut audit = Audit {
        accounts: balances.len(),
        ..Audit::default()
    };
    for row in &changes {
        let key: String = row.get("key");
        let status = ChangeStatus::from_code(row.get("status")).unwrap();
        let seen = per_key.get(&key).copied().unwrap_or(0);
        match status {
            ChangeStatus::Applied => {
                audit.applied += 1;
                assert_eq!(seen, 1, "applied change {key} is in history {seen} times");
            }
            ChangeStatus::Rejected => {
                audit.rejected += 1;
                assert_eq!(seen, 0, "rejected change {key} is in history");
            }
            _ => assert_eq!(seen, 0, "undecided change {key} is in history"),
        }
    }
    audit
}

async fn is_hold(store: &SqliteLedgerStore, key: &str) -> bool {
    let kind: Option<i64> = sqlx::query_scalar("SELECT kind FROM axs_changes WHERE key = ?1")
        .bind(key)
        .fetch_optional(store.pool())
        .await
        .unwrap();
    kind == Some(ChangeKind::Pending.code())
}
