//! One conformance suite per storage trait, run on every engine: `LedgerStore` on SQLite
//! and on PostgreSQL, `BalanceCache` in-process and on Redis. Each case states what any
//! engine must do; an engine that passes them can back the pipeline.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axs::cache::{BalanceCache, MemoryCache, RedisCache};
use axs::engine::{self, Positioned};
use axs::model::{
    Account, AccountState, BalanceState, ChangeKind, ChangeRequest, ChangeStatus, LedgerEvent,
};
use axs::store::audit::audit;
use axs::store::{Fence, HistoryQuery, LedgerStore, StoreError};
use ledger_lease::{Clock, HolderId, ResourceName, SystemClock};
use test_support::postgres::PostgresServer;
use test_support::redis::RedisServer;

/// A store and whatever keeps it alive.
struct Engine {
    store: Arc<dyn LedgerStore>,
    _dir: tempfile::TempDir,
    _postgres: Option<PostgresServer>,
}

async fn sqlite() -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("axs.sqlite").display().to_string();
    let store = axs::node::open_store(&path, clock()).await.unwrap();
    Engine {
        store,
        _dir: dir,
        _postgres: None,
    }
}

async fn postgres(test: &str) -> Option<Engine> {
    let server = test_support::skip_unless_required(test, PostgresServer::start())?;
    let store = axs::node::open_store(server.url(), clock()).await.unwrap();
    Some(Engine {
        store,
        _dir: tempfile::tempdir().unwrap(),
        _postgres: Some(server),
    })
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::sqlite().await).await;
                }
            )*
        }
        mod postgres_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(engine) = super::postgres(stringify!($case)).await else {
                        return;
                    };
                    super::$case(engine).await;
                }
            )*
        }
    };
}

fn account(name: &str, shard: u32, limit: i128) -> Account {
    Account {
        name: name.into(),
        assets: BTreeMap::from([("USD".to_owned(), limit)]),
        shard,
        state: AccountState::Open,
        created_at_ms: 1,
    }
}

fn request(key: &str, account: &str, amount: i128) -> ChangeRequest {
    ChangeRequest {
        key: key.into(),
        account: account.into(),
        asset: "USD".into(),
        amount,
        kind: ChangeKind::Immediate,
        pending_key: String::new(),
        timeout_ms: 0,
        metadata: String::new(),
    }
}

fn positioned(request: ChangeRequest, offset: i64) -> Positioned {
    Positioned {
        event: LedgerEvent {
            request,
            shard: 0,
            created_at_ms: 10,
        },
        partition: 0,
        offset,
    }
}

/// Takes the lease of `partition` as `holder`.
async fn fence(store: &dyn LedgerStore, partition: i32, holder: &str) -> Fence {
    let resource = ResourceName::new(format!("axs/test/{partition}")).unwrap();
    let lease = store
        .leases()
        .try_acquire(
            &resource,
            &HolderId::new(holder).unwrap(),
            Duration::from_millis(500),
        )
        .await
        .unwrap()
        .expect("the lease is free");
    Fence {
        resource,
        token: lease.token,
    }
}

/// Decides `requests` (offsets from `first_offset`) on partition 0 and applies them.
async fn apply(
    store: &dyn LedgerStore,
    fence: &Fence,
    requests: Vec<ChangeRequest>,
    first_offset: i64,
    now_ms: i64,
) -> Result<engine::Plan, StoreError> {
    let events: Vec<Positioned> = requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| positioned(r, first_offset + i as i64))
        .collect();
    let next = first_offset + events.len() as i64;
    let (mut snapshot, expired) = store.snapshot(0, &events, now_ms).await?;
    let plan = engine::plan(&mut snapshot, events, &expired, now_ms);
    store.apply(fence, 0, &plan, next).await?;
    Ok(plan)
}

async fn accounts_open_once_and_change_state(engine: Engine) {
    let store = &*engine.store;
    let alice = account("alice", 3, 0);
    assert_eq!(store.open_account(&alice).await.unwrap(), alice);
    assert_eq!(store.open_account(&alice).await.unwrap(), alice, "reopen");
    let other = account("alice", 4, 0);
    assert!(matches!(
        store.open_account(&other).await,
        Err(StoreError::AccountExists(name)) if name == "alice"
    ));
    let frozen = store
        .set_account_state("alice", AccountState::Frozen)
        .await
        .unwrap();
    assert_eq!(frozen.state, AccountState::Frozen);
    assert!(matches!(
        store
            .set_account_state("nobody", AccountState::Closed)
            .await,
        Err(StoreError::NoAccount(_))
    ));
    let many: Vec<Account> = (0..2_500)
        .map(|i| account(&format!("bulk-{i}"), i, 0))
        .collect();
    assert_eq!(store.open_accounts(&many).await.unwrap(), 2_500);
    assert_eq!(store.open_accounts(&many[..10]).await.unwrap(), 0);
    let names = vec!["bulk-7".to_owned(), "alice".to_owned(), "ghost".to_owned()];
    let found = store.accounts(&names).await.unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found["bulk-7"].shard, 7);
}

async fn a_key_answers_its_first_submit_and_refuses_another_payload(engine: Engine) {
    let store = &*engine.store;
    let first = store
        .submit(
            &[(request("k1", "a", 5), 0), (request("k2", "a", 6), 0)],
            100,
        )
        .await
        .unwrap();
    assert!(first
        .iter()
        .all(|s| !s.duplicate && s.status == ChangeStatus::Init));
    let again = store
        .submit(
            &[(request("k1", "a", 5), 0), (request("k3", "a", 7), 0)],
            200,
        )
        .await
        .unwrap();
    assert!(again[0].duplicate && again[0].created_at_ms == 100);
    assert!(!again[1].duplicate && again[1].created_at_ms == 200);

    // A conflict anywhere in the call writes nothing of it.
    let conflict = store
        .submit(
            &[(request("k4", "a", 1), 0), (request("k2", "a", 60), 0)],
            300,
        )
        .await;
    assert!(matches!(
        conflict,
        Err(StoreError::KeyConflict { ref key, field: "amount" }) if key == "k2"
    ));
    assert!(store.change("k4").await.unwrap().is_none());
    assert_eq!(store.change("k2").await.unwrap().unwrap().request.amount, 6);

    // Racing submits of one key: one stores it, the other is answered as a duplicate.
    let race = [(request("race", "a", 9), 0)];
    let (a, b) = tokio::join!(store.submit(&race, 400), store.submit(&race, 401));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        u8::from(a[0].duplicate) + u8::from(b[0].duplicate),
        1,
        "{a:?} {b:?}"
    );
}

async fn the_outbox_holds_init_rows_until_published(engine: Engine) {
    let store = &*engine.store;
    let batch: Vec<(ChangeRequest, u32)> = (0..5)
        .map(|i| (request(&format!("o{i}"), "a", 1), 0))
        .collect();
    store.submit(&batch[..3], 100).await.unwrap();
    store.submit(&batch[3..], 200).await.unwrap();
    assert_eq!(store.outbox_backlog().await.unwrap(), 5);
    let old = store.outbox(150, 10).await.unwrap();
    assert_eq!(
        old.iter()
            .map(|c| c.request.key.as_str())
            .collect::<Vec<_>>(),
        ["o0", "o1", "o2"]
    );
    assert_eq!(store.outbox(1_000, 2).await.unwrap().len(), 2, "limit");
    store
        .mark_published(&[("o0".into(), 3, 41), ("o1".into(), 3, 42)])
        .await
        .unwrap();
    let o0 = store.change("o0").await.unwrap().unwrap();
    assert_eq!(
        (o0.status, o0.position),
        (ChangeStatus::Published, Some((3, 41)))
    );
    assert_eq!(store.outbox_backlog().await.unwrap(), 3);
    // A row further along is never moved back.
    let f = fence(store, 0, "me").await;
    apply(store, &f, vec![request("o2", "a", 1)], 0, 500)
        .await
        .unwrap();
    store.mark_published(&[("o2".into(), 0, 99)]).await.unwrap();
    let o2 = store.change("o2").await.unwrap().unwrap();
    assert_eq!(o2.position, Some((0, 0)));
}

async fn a_batch_commits_only_under_the_current_lease(engine: Engine) {
    let store = &*engine.store;
    store.open_account(&account("a", 0, 0)).await.unwrap();
    let old = fence(store, 0, "old-leader").await;
    apply(store, &old, vec![request("f1", "a", 100)], 0, 10)
        .await
        .unwrap();
    assert_eq!(store.consumed_offset(0).await.unwrap(), Some(1));

    // The lease moves on: the old token must be refused and write nothing.
    let resource = old.resource.clone();
    let current = store.leases().current(&resource).await.unwrap().unwrap();
    assert!(store.leases().release(&current).await.unwrap());
    let new = fence(store, 0, "new-leader").await;
    assert!(new.token > old.token);
    let stale = apply(store, &old, vec![request("f2", "a", 5)], 1, 20).await;
    assert!(
        stale.as_ref().is_err_and(StoreError::is_fenced),
        "{stale:?}"
    );
    assert!(store.change("f2").await.unwrap().is_none());
    assert_eq!(store.consumed_offset(0).await.unwrap(), Some(1));
    apply(store, &new, vec![request("f2", "a", 5)], 1, 20)
        .await
        .unwrap();
    let balance = store.balance("a", "USD").await.unwrap().unwrap();
    assert_eq!((balance.balance, balance.version), (105, 2));
    assert!(audit(store).await.unwrap().violations.is_empty());
}

async fn amounts_keep_all_128_bits_and_history_pages_newest_first(engine: Engine) {
    let store = &*engine.store;
    store
        .open_account(&account("big", 0, i128::MAX))
        .await
        .unwrap();
    let f = fence(store, 0, "me").await;
    let plan = apply(
        store,
        &f,
        vec![
            request("max", "big", i128::MAX),
            request("back", "big", -i128::MAX),
            request("min", "big", i128::MIN + 1),
        ],
        0,
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(plan.applied(), 3, "{:?}", plan.decisions);
    let state = store.balance("big", "USD").await.unwrap().unwrap();
    assert_eq!(state.balance, i128::MIN + 1);
    for (i, t) in [(3, 2_000), (4, 3_000)] {
        apply(store, &f, vec![request(&format!("h{i}"), "big", 1)], i, t)
            .await
            .unwrap();
    }
    let first = store
        .history(&HistoryQuery {
            account: "big",
            limit: 2,
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    let keys: Vec<&str> = first.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["h4", "h3"]);
    let rest = store
        .history(&HistoryQuery {
            account: "big",
            limit: 10,
            before_seq: first.next_seq,
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    let keys: Vec<&str> = rest.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["min", "back", "max"]);
    assert_eq!(rest.next_seq, None);
    assert_eq!(rest.entries[2].balance_after, i128::MAX);
    assert_eq!(
        store.balance_as_of("big", "USD", 2_500).await.unwrap(),
        Some(i128::MIN + 2)
    );
    assert_eq!(store.balance_as_of("big", "USD", 999).await.unwrap(), None);
    let decided = store.decided_since(0, 0, 10).await.unwrap();
    assert_eq!(
        decided
            .iter()
            .map(|c| c.position.unwrap().1)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(audit(store).await.unwrap().violations.is_empty());
}

async fn holds_expire_on_their_partition(engine: Engine) {
    let store = &*engine.store;
    store.open_account(&account("h", 0, 0)).await.unwrap();
    let f = fence(store, 0, "me").await;
    let hold = ChangeRequest {
        kind: ChangeKind::Pending,
        timeout_ms: 100,
        ..request("hold", "h", -40)
    };
    apply(store, &f, vec![request("fund", "h", 100), hold], 0, 1_000)
        .await
        .unwrap();
    let state = store.balance("h", "USD").await.unwrap().unwrap();
    assert_eq!((state.balance, state.pending_debit), (100, 40));
    let (_, expired) = store.snapshot(0, &[], 1_050).await.unwrap();
    assert!(expired.is_empty(), "not yet due");
    let (_, expired) = store.snapshot(1, &[], 5_000).await.unwrap();
    assert!(expired.is_empty(), "another partition's hold");
    let plan = apply(store, &f, Vec::new(), 2, 5_000).await.unwrap();
    assert_eq!(plan.holds_closed, ["hold"]);
    let state = store.balance("h", "USD").await.unwrap().unwrap();
    assert_eq!(
        state,
        BalanceState {
            balance: 100,
            pending_debit: 0,
            pending_credit: 0,
            version: 3
        }
    );
    assert!(audit(store).await.unwrap().violations.is_empty());
}

async fn members_heartbeat_and_leave(engine: Engine) {
    let store = &*engine.store;
    assert_eq!(store.heartbeat("b", 1_000, 0).await.unwrap(), ["b"]);
    assert_eq!(store.heartbeat("a", 1_000, 500).await.unwrap(), ["a", "b"]);
    assert_eq!(store.heartbeat("a", 1_000, 1_200).await.unwrap(), ["a"]);
    store.leave("a").await.unwrap();
    assert!(store.heartbeat("c", 1, 1_300).await.unwrap() == ["c"]);
}

on_both_stores!(
    accounts_open_once_and_change_state,
    a_key_answers_its_first_submit_and_refuses_another_payload,
    the_outbox_holds_init_rows_until_published,
    a_batch_commits_only_under_the_current_lease,
    amounts_keep_all_128_bits_and_history_pages_newest_first,
    holds_expire_on_their_partition,
    members_heartbeat_and_leave,
);

/// What any balance cache must do: keep the newest version, refuse older or equal ones,
/// and count the refusals.
async fn cache_keeps_the_newest_version(cache: &dyn BalanceCache) {
    let v = |balance, version| BalanceState {
        balance,
        pending_debit: 1,
        pending_credit: i128::MAX,
        version,
    };
    let key = |account: &str| (account.to_owned(), "USD".to_owned());
    assert_eq!(cache.get("x", "USD").await.unwrap(), None);
    let first = [(key("x"), v(10, 2)), (key("x:y"), v(-5, 1))];
    assert_eq!(cache.put_newer(&first).await.unwrap(), 0);
    let older = [
        (key("x"), v(3, 1)),
        (key("x"), v(4, 2)),
        (key("x:y"), v(6, 2)),
    ];
    assert_eq!(cache.put_newer(&older).await.unwrap(), 2);
    assert_eq!(cache.get("x", "USD").await.unwrap(), Some(v(10, 2)));
    assert_eq!(cache.get("x:y", "USD").await.unwrap(), Some(v(6, 2)));
    assert_eq!(cache.get("x", "EUR").await.unwrap(), None);
}

#[tokio::test]
async fn memory_cache_keeps_the_newest_version() {
    cache_keeps_the_newest_version(&MemoryCache::default()).await;
}

#[tokio::test]
async fn redis_cache_keeps_the_newest_version_and_reports_an_outage() {
    let test = "redis_cache_keeps_the_newest_version_and_reports_an_outage";
    let Some(mut server) = test_support::skip_unless_required(test, RedisServer::start()) else {
        return;
    };
    let cache = RedisCache::connect(server.url(), "conformance")
        .await
        .unwrap();
    cache_keeps_the_newest_version(&cache).await;
    // Two ledgers on one Redis stay apart by prefix.
    let other = RedisCache::connect(server.url(), "other").await.unwrap();
    assert_eq!(other.get("x", "USD").await.unwrap(), None);
    // Redis gone: calls fail (the callers fall back to SQL) instead of hanging.
    server.stop();
    assert!(cache.get("x", "USD").await.is_err());
}
