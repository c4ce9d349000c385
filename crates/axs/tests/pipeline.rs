//! The whole pipeline, on the embedded defaults (built-in broker, SQLite, in-process cache)
//! and on PostgreSQL + Redis: submit -> INIT -> topic -> fenced consumer -> SQL, checked by
//! the invariant auditor.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axs::model::{ChangeKind, ChangeRequest, ChangeStatus};
use axs::pb;
use common::{audit, change, hold, settle, Backend, Stack};
use tonic::Code;
use tonic_types::StatusExt;

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn changes_flow_from_submit_to_applied_balances_history_and_stream(backend: Backend) {
    let mut stack = Stack::start_on(backend, 4, 1).await;
    for (i, name) in ["alice", "bob", "carol"].iter().enumerate() {
        stack.open(name, i as u32, 0).await;
    }
    let mut batch = vec![
        change("fund-a", "alice", 1_000),
        change("fund-b", "bob", 500),
    ];
    batch.extend((0..50).map(|i| change(&format!("a-{i}"), "alice", -10)));
    batch.push(change("too-much", "bob", -501));
    let results = stack.submit(batch.clone()).await.unwrap();
    assert_eq!(results.len(), 53);
    assert!(results
        .iter()
        .all(|r| r.status == pb::ChangeStatus::Init as i32 && !r.duplicate));

    let all: Vec<String> = batch.iter().map(|c| c.idempotency_key.clone()).collect();
    stack.wait_decided(&all).await;
    assert_eq!(stack.balance("alice").await.balance, "500");
    assert_eq!(stack.balance("alice").await.version, 51);
    assert_eq!(stack.balance("bob").await.balance, "500");
    let rejected = stack
        .client
        .get_change(pb::GetChangeRequest {
            idempotency_key: "too-much".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.status, pb::ChangeStatus::Rejected as i32);
    assert_eq!(rejected.reason, "insufficient_funds");
    assert!(rejected.partition >= 0 && rejected.offset >= 0);

    // History, newest first, paged; and the balance as of a past time.
    let first = stack
        .client
        .list_changes(pb::ListChangesRequest {
            account: "alice".into(),
            asset: "USD".into(),
            page_size: 20,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 20);
    assert_eq!(first.entries[0].version, 51);
    assert_eq!(first.balance_as_of, "500");
    let mut versions: Vec<u64> = first.entries.iter().map(|e| e.version).collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = stack
            .client
            .list_changes(pb::ListChangesRequest {
                account: "alice".into(),
                page_size: 20,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        versions.extend(page.entries.iter().map(|e| e.version));
        token = page.next_page_token;
    }
    assert_eq!(versions, (1..=51).rev().collect::<Vec<u64>>());
    let before = stack
        .client
        .list_changes(pb::ListChangesRequest {
            account: "alice".into(),
            asset: "USD".into(),
            as_of_ms: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(before.entries.is_empty());
    assert_eq!(before.balance_as_of, "0");

    // The applied-changes stream replays every decided change, and resumes by cursor.
    let mut stream = stack
        .client
        .stream_applied_changes(pb::StreamAppliedChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut cursor = String::new();
    while let Some(item) = stream.message().await.unwrap() {
        streamed.push(item.change.unwrap().change.unwrap().idempotency_key);
        cursor = item.cursor;
    }
    streamed.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(streamed, expected);
    let mut resumed = stack
        .client
        .stream_applied_changes(pb::StreamAppliedChangesRequest {
            cursor,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        resumed.message().await.unwrap().is_none(),
        "nothing after the last cursor"
    );

    let audit = audit(&*stack.store).await;
    assert_eq!((audit.applied, audit.rejected), (52, 1));
    stack.shutdown().await;
}

async fn same_key_same_payload_answers_again_and_a_different_payload_is_refused(backend: Backend) {
    let mut stack = Stack::start_on(backend, 2, 1).await;
    stack.open("alice", 0, 0).await;
    let first = stack.submit(vec![change("k1", "alice", 7)]).await.unwrap();
    let again = stack.submit(vec![change("k1", "alice", 7)]).await.unwrap();
    assert!(!first[0].duplicate && again[0].duplicate);
    assert_eq!(first[0].created_at_ms, again[0].created_at_ms);

    let error = stack
        .submit(vec![change("k2", "alice", 1), change("k1", "alice", 8)])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{error:?}");
    assert!(error.message().contains("amount"), "{}", error.message());
    let details = error.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "amount"
    );
    // Nothing of the refused request was written: k2 does not exist.
    assert!(stack.store.change("k2").await.unwrap().is_none());

    // Concurrent submits of one key: one row, applied once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = stack.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .batch_submit_balance_changes(pb::BatchSubmitBalanceChangesRequest {
                    changes: vec![change("race", "alice", 5)],
                })
                .await
                .unwrap()
                .into_inner()
                .results[0]
                .duplicate
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        fresh += usize::from(!task.await.unwrap());
    }
    assert_eq!(fresh, 1, "exactly one submit created the row");
    stack.wait_decided(&["k1".into(), "race".into()]).await;
    // Re-submitting after it was applied answers with the applied status, not a new change.
    let late = stack
        .submit(vec![change("race", "alice", 5)])
        .await
        .unwrap();
    assert!(late[0].duplicate);
    assert_eq!(late[0].status, pb::ChangeStatus::Applied as i32);
    assert_eq!(stack.balance("alice").await.balance, "12");
    audit(&*stack.store).await;
    stack.shutdown().await;
}

async fn bad_input_is_refused_per_change_and_nothing_is_written(backend: Backend) {
    let mut stack = Stack::start_on(backend, 2, 1).await;
    stack.open("alice", 0, 0).await;
    let mut bad_meta = change("m", "alice", 1);
    bad_meta.metadata = "{not json".into();
    let cases: Vec<(Vec<pb::BalanceChange>, Code, &str)> = vec![
        (vec![], Code::InvalidArgument, "changes"),
        (
            vec![change("z", "alice", 0)],
            Code::InvalidArgument,
            "changes[0].amount",
        ),
        (
            vec![pb::BalanceChange {
                amount: "999999999999999999999999999999999999999999".into(),
                ..change("o", "alice", 1)
            }],
            Code::InvalidArgument,
            "changes[0].amount",
        ),
        (
            vec![change("d", "alice", 1), change("d", "alice", 1)],
            Code::InvalidArgument,
            "changes[1].idempotency_key",
        ),
        (
            vec![change("ok", "alice", 1), bad_meta],
            Code::InvalidArgument,
            "changes[1].metadata",
        ),
        (
            vec![change("u", "nobody", 1)],
            Code::InvalidArgument,
            "changes[0].account",
        ),
        (
            vec![pb::BalanceChange {
                asset: "EUR".into(),
                ..change("e", "alice", 1)
            }],
            Code::InvalidArgument,
            "changes[0].asset",
        ),
        (
            vec![settle("p", "alice", "no-such-hold", None)],
            Code::FailedPrecondition,
            "changes[0].pending_key",
        ),
        (
            (0..1001)
                .map(|i| change(&format!("big-{i}"), "alice", 1))
                .collect(),
            Code::InvalidArgument,
            "changes",
        ),
    ];
    for (changes, code, field) in cases {
        let error = stack.submit(changes).await.unwrap_err();
        assert_eq!(error.code(), code, "{field}: {error:?}");
        let details = error.get_error_details();
        let fields: Vec<String> = match code {
            Code::FailedPrecondition => details
                .precondition_failure()
                .unwrap()
                .violations
                .iter()
                .map(|v| v.subject.clone())
                .collect(),
            _ => details
                .bad_request()
                .unwrap()
                .field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect(),
        };
        assert!(
            fields.iter().any(|f| f == field),
            "{field} not in {fields:?}"
        );
    }
    assert_eq!(
        stack.store.outbox_backlog().await.unwrap(),
        0,
        "nothing was written"
    );
    assert!(stack.store.change("ok").await.unwrap().is_none());

    // A frozen account refuses new changes at submit.
    stack
        .client
        .freeze_account(pb::AccountRef {
            account: "alice".into(),
        })
        .await
        .unwrap();
    let error = stack
        .submit(vec![change("f", "alice", 1)])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    stack.shutdown().await;
}

async fn holds_reserve_post_partly_void_and_time_out_against_concurrent_spending(backend: Backend) {
    let mut stack = Stack::start_on(backend, 2, 1).await;
    stack.open("alice", 1, 0).await;
    stack
        .submit(vec![change("fund", "alice", 100)])
        .await
        .unwrap();
    stack
        .submit(vec![
            hold("h1", "alice", -60, 0),
            hold("h2", "alice", -30, 300),
        ])
        .await
        .unwrap();
    // 10 available: of these spends only the first fits.
    let spends: Vec<_> = (0..5)
        .map(|i| change(&format!("s{i}"), "alice", -10))
        .collect();
    stack.submit(spends).await.unwrap();
    let mut all = vec!["fund".to_owned(), "h1".into(), "h2".into()];
    all.extend(keys("s", 5).iter().map(|k| k.replace("s-", "s")));
    stack.wait_decided(&all).await;
    let balance = stack.balance("alice").await;
    assert_eq!(
        (balance.balance.as_str(), balance.available.as_str()),
        ("90", "0")
    );

    // Post 40 of h1's 60 (20 goes back); h2 times out by itself after 300 ms.
    stack
        .submit(vec![settle("p1", "alice", "h1", Some(-40))])
        .await
        .unwrap();
    stack.wait_decided(&["p1".into()]).await;
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let balance = stack.balance("alice").await;
        if balance.pending_debit == "0" {
            assert_eq!(
                (balance.balance.as_str(), balance.available.as_str()),
                ("50", "50")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "h2 never timed out: {balance:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both holds are settled now: a second post or a void finds no active hold.
    stack
        .submit(vec![
            settle("p1-again", "alice", "h1", Some(-1)),
            settle("v2", "alice", "h2", None),
        ])
        .await
        .unwrap();
    stack.wait_decided(&["p1-again".into(), "v2".into()]).await;
    for key in ["p1-again", "v2"] {
        let record = stack.store.change(key).await.unwrap().unwrap();
        assert_eq!(record.status, ChangeStatus::Rejected);
        assert_eq!(record.reason, "hold_not_active");
    }
    stack
        .submit(vec![hold("h3", "alice", -50, 0)])
        .await
        .unwrap();
    stack
        .submit(vec![settle("v3", "alice", "h3", None)])
        .await
        .unwrap();
    stack.wait_decided(&["h3".into(), "v3".into()]).await;
    assert_eq!(stack.balance("alice").await.available, "50");
    audit(&*stack.store).await;
    stack.shutdown().await;
}

/// A gRPC node that crashed between committing INIT rows and publishing them: the rows sit
/// in the outbox with nothing on the topic. The relay must re-send them and the consumer
/// apply each exactly once.
async fn rows_a_crash_left_in_init_are_relayed_and_applied_once(backend: Backend) {
    let mut stack = Stack::start_on(backend, 2, 1).await;
    stack.open("crashy", 1, 0).await;
    let orphans: Vec<(ChangeRequest, u32)> = (0..20)
        .map(|i| {
            let request = ChangeRequest {
                key: format!("orphan-{i}"),
                account: "crashy".into(),
                asset: "USD".into(),
                amount: 5,
                kind: ChangeKind::Immediate,
                pending_key: String::new(),
                timeout_ms: 0,
                metadata: String::new(),
            };
            (request, 1)
        })
        .collect();
    let now = stack.clock.now().0;
    stack.store.submit(&orphans, now).await.unwrap();
    let keys: Vec<String> = orphans.iter().map(|(r, _)| r.key.clone()).collect();
    stack.wait_decided(&keys).await;
    let balance = stack.balance("crashy").await;
    assert_eq!((balance.balance.as_str(), balance.version), ("100", 20));
    let audit = audit(&*stack.store).await;
    assert_eq!(audit.applied, 20);
    stack.shutdown().await;
}

/// With the broker down nothing is published and the outbox fills; past its limit submits
/// get RESOURCE_EXHAUSTED and write nothing. Once the broker is back the relay drains the
/// outbox, every accepted change is applied once, and submits are taken again.
async fn a_full_outbox_refuses_submits_until_the_broker_is_back(backend: Backend) {
    let mut stack = Stack::start_with(backend, 2, 1, |config| config.backlog_limit = 10).await;
    stack.open("busy", 0, 0).await;
    stack.broker.stop().await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let key = format!("busy-{i}");
        match stack.submit(vec![change(&key, "busy", 1)]).await {
            Ok(_) => accepted.push(key),
            Err(status) => {
                refused = Some((key, status));
                break;
            }
        }
    }
    let (key, status) = refused.expect("the outbox limit refuses a submit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("backlog"), "{status:?}");
    assert!(stack.store.change(&key).await.unwrap().is_none());
    assert!(accepted.len() > 10, "{} accepted", accepted.len());

    stack.broker.restart().await;
    stack.wait_decided(&accepted).await;
    let balance = stack.balance("busy").await;
    assert_eq!(balance.balance, accepted.len().to_string());
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        match stack.submit(vec![change("after", "busy", 1)]).await {
            Ok(_) => break,
            Err(status) => assert!(
                std::time::Instant::now() < deadline,
                "submits still refused after the outbox drained: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.wait_decided(&["after".to_owned()]).await;
    audit(&*stack.store).await;
    stack.shutdown().await;
}

on_both_backends!(
    rows_a_crash_left_in_init_are_relayed_and_applied_once,
    a_full_outbox_refuses_submits_until_the_broker_is_back,
    changes_flow_from_submit_to_applied_balances_history_and_stream,
    same_key_same_payload_answers_again_and_a_different_payload_is_refused,
    bad_input_is_refused_per_change_and_nothing_is_written,
    holds_reserve_post_partly_void_and_time_out_against_concurrent_spending,
);
