//! End-to-end tests of the group coordinator driven with kafka-protocol request
//! structs, the way the broker calls it: membership dance, rebalances, session
//! expiry, error codes, durable offsets and group admin APIs.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use takhin_group::{GroupConfig, GroupCoordinator};
use tokio::sync::watch;

/// Timeouts of members whose expiry a test does not wait for: long enough that a
/// stalled test process (a busy CI machine) never loses a member by accident.
const SESSION: i32 = 30_000;
const REBALANCE: i32 = 30_000;
/// The short timeouts a test waits to run out (one member's session, one rebalance).
const SHORT_SESSION: i32 = 400;
const SHORT_REBALANCE: i32 = 2000;
/// How long a test waits for a timer-driven change before it gives up.
const WAIT: Duration = Duration::from_secs(30);

/// The session and rebalance timeouts a member joins with.
#[derive(Clone, Copy)]
struct Timeouts {
    session_ms: i32,
    rebalance_ms: i32,
}

const LONG: Timeouts = Timeouts {
    session_ms: SESSION,
    rebalance_ms: REBALANCE,
};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn config(initial_delay_ms: u64) -> GroupConfig {
    GroupConfig {
        min_session_timeout_ms: 100,
        max_session_timeout_ms: 60_000,
        initial_rebalance_delay_ms: initial_delay_ms,
        offsets_retention_ms: None,
    }
}

struct Harness {
    c: Arc<GroupCoordinator>,
    _stop: watch::Sender<bool>,
    dir: tempfile::TempDir,
}

fn start(initial_delay_ms: u64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let c = GroupCoordinator::open(dir.path(), config(initial_delay_ms)).unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(c.clone().run_timers(rx));
    Harness { c, _stop: tx, dir }
}

fn join_req(group: &str, member: &str, meta: &'static [u8]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_session_timeout_ms(SESSION)
        .with_rebalance_timeout_ms(REBALANCE)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(meta)),
            JoinGroupRequestProtocol::default()
                .with_name(s("roundrobin"))
                .with_metadata(Bytes::from_static(meta)),
        ])
}

fn join_req_with(group: &str, member: &str, meta: &'static [u8], t: Timeouts) -> JoinGroupRequest {
    join_req(group, member, meta)
        .with_session_timeout_ms(t.session_ms)
        .with_rebalance_timeout_ms(t.rebalance_ms)
}

/// The v4+ dance: empty member id -> MEMBER_ID_REQUIRED + id -> join with it.
async fn join_new(c: &GroupCoordinator, group: &str, meta: &'static [u8]) -> JoinGroupResponse {
    join_new_with(c, group, meta, LONG).await
}

async fn join_new_with(
    c: &GroupCoordinator,
    group: &str,
    meta: &'static [u8],
    t: Timeouts,
) -> JoinGroupResponse {
    let first = c.join_group(join_req_with(group, "", meta, t), 5).await;
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    assert!(!first.member_id.is_empty());
    c.join_group(join_req_with(group, &first.member_id, meta, t), 5)
        .await
}

async fn rejoin(c: &GroupCoordinator, group: &str, member: &str) -> JoinGroupResponse {
    rejoin_with(c, group, member, LONG).await
}

async fn rejoin_with(
    c: &GroupCoordinator,
    group: &str,
    member: &str,
    t: Timeouts,
) -> JoinGroupResponse {
    c.join_group(join_req_with(group, member, b"meta", t), 5)
        .await
}

fn sync_req(group: &str, member: &str, generation: i32) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member))
        .with_generation_id(generation)
}

fn heartbeat(c: &GroupCoordinator, group: &str, member: &str, generation: i32) -> i16 {
    c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_member_id(s(member))
            .with_generation_id(generation),
        3,
    )
    .error_code
}

fn leave(c: &GroupCoordinator, group: &str, member: &str) -> i16 {
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_members(vec![MemberIdentity::default().with_member_id(s(member))]),
        3,
    );
    assert_eq!(r.error_code, 0);
    r.members[0].error_code
}

fn state_of(c: &GroupCoordinator, group: &str) -> String {
    let d = c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
        5,
    );
    d.groups[0].group_state.to_string()
}

/// Polls until `group` is in `state` (the timer task or a spawned request moves it).
async fn wait_state(c: &GroupCoordinator, group: &str, state: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = state_of(c, group);
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for group {group} to be {state}: still {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Joins `n` members concurrently, the leader syncs; returns (generation, leader, members).
async fn form_group(
    c: &Arc<GroupCoordinator>,
    group: &str,
    n: usize,
) -> (i32, String, Vec<String>) {
    form_group_with(c, group, &vec![LONG; n]).await
}

/// [`form_group`] with one member per entry of `timeouts`; `members[i]` joined with
/// `timeouts[i]`.
async fn form_group_with(
    c: &Arc<GroupCoordinator>,
    group: &str,
    timeouts: &[Timeouts],
) -> (i32, String, Vec<String>) {
    let mut tasks = Vec::new();
    for &t in timeouts {
        let c = c.clone();
        let g = group.to_string();
        tasks.push(tokio::spawn(async move {
            join_new_with(&c, &g, b"meta", t).await
        }));
    }
    let mut resps = Vec::new();
    for t in tasks {
        resps.push(t.await.unwrap());
    }
    let generation = resps[0].generation_id;
    let leader = resps[0].leader.to_string();
    let members: Vec<String> = resps.iter().map(|r| r.member_id.to_string()).collect();
    for r in &resps {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, generation);
        assert_eq!(r.leader.as_str(), leader);
    }
    sync_all(c, group, generation, &leader, &members).await;
    (generation, leader, members)
}

/// Followers sync (and wait) while the leader hands out "assign-<member>".
async fn sync_all(
    c: &Arc<GroupCoordinator>,
    group: &str,
    generation: i32,
    leader: &str,
    members: &[String],
) {
    let mut followers = Vec::new();
    for m in members.iter().filter(|m| *m != leader) {
        let c = c.clone();
        let (g, m) = (group.to_string(), m.clone());
        followers.push((
            m.clone(),
            tokio::spawn(async move { c.sync_group(sync_req(&g, &m, generation), 3).await }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let assignments = members
        .iter()
        .map(|m| {
            SyncGroupRequestAssignment::default()
                .with_member_id(s(m))
                .with_assignment(Bytes::from(format!("assign-{m}")))
        })
        .collect();
    let lr = c
        .sync_group(
            sync_req(group, leader, generation).with_assignments(assignments),
            3,
        )
        .await;
    assert_eq!(lr.error_code, 0);
    assert_eq!(lr.assignment, Bytes::from(format!("assign-{leader}")));
    for (m, f) in followers {
        let r = f.await.unwrap();
        assert_eq!(r.error_code, 0);
        assert_eq!(r.assignment, Bytes::from(format!("assign-{m}")));
    }
}

#[tokio::test]
async fn single_member_join_sync_heartbeat() {
    let h = start(0);
    let r = join_new(&h.c, "g1", b"meta").await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].metadata, Bytes::from_static(b"meta"));
    assert_eq!(state_of(&h.c, "g1"), "CompletingRebalance");

    let me = r.member_id.to_string();
    let sync =
        h.c.sync_group(
            sync_req("g1", &me, 1).with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(s(&me))
                .with_assignment(Bytes::from_static(b"a"))]),
            3,
        )
        .await;
    assert_eq!(sync.error_code, 0);
    assert_eq!(sync.assignment, Bytes::from_static(b"a"));
    assert_eq!(heartbeat(&h.c, "g1", &me, 1), 0);
    assert_eq!(state_of(&h.c, "g1"), "Stable");

    // An old-version join (v3) is assigned an id without the MEMBER_ID_REQUIRED dance.
    let v3 = h.c.join_group(join_req("g2", "", b"m"), 3).await;
    assert_eq!(v3.error_code, 0);
    assert!(!v3.member_id.is_empty());
    assert_eq!(v3.protocol_name.as_deref(), Some("range"));

    let list = h.c.list_groups(
        ListGroupsRequest::default().with_states_filter(vec![s("stable")]),
        4,
    );
    let ids: Vec<&str> = list.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(ids, vec!["g1"]);
    assert_eq!(list.groups[0].protocol_type.as_str(), "consumer");
}

#[tokio::test]
async fn three_members_concurrent_same_generation_one_leader() {
    let h = start(300);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = h.c.clone();
        tasks.push(tokio::spawn(
            async move { join_new(&c, "g", b"meta").await },
        ));
    }
    let mut resps = Vec::new();
    for t in tasks {
        resps.push(t.await.unwrap());
    }
    let generation = resps[0].generation_id;
    assert!(resps
        .iter()
        .all(|r| r.error_code == 0 && r.generation_id == generation));
    let leaders: Vec<_> = resps.iter().filter(|r| r.leader == r.member_id).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0].members.len(), 3);
    assert!(resps
        .iter()
        .filter(|r| r.leader != r.member_id)
        .all(|r| r.members.is_empty()));
    let leader = leaders[0].member_id.to_string();
    let members: Vec<String> = resps.iter().map(|r| r.member_id.to_string()).collect();
    sync_all(&h.c, "g", generation, &leader, &members).await;
    assert_eq!(state_of(&h.c, "g"), "Stable");
    let d = h.c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
        5,
    );
    assert_eq!(d.groups[0].members.len(), 3);
    assert_eq!(d.groups[0].protocol_data.as_str(), "range");
}

#[tokio::test]
async fn fourth_member_triggers_rebalance() {
    let h = start(300);
    let (generation, leader, members) = form_group(&h.c, "g", 3).await;

    let c4 = h.c.clone();
    let fourth = tokio::spawn(async move { join_new(&c4, "g", b"meta").await });
    wait_state(&h.c, "g", "PreparingRebalance").await;
    for m in &members {
        assert_eq!(
            heartbeat(&h.c, "g", m, generation),
            ResponseError::RebalanceInProgress.code()
        );
    }
    assert_eq!(state_of(&h.c, "g"), "PreparingRebalance");
    assert!(!fourth.is_finished(), "join must wait for the old members");

    let mut tasks = Vec::new();
    for m in members.clone() {
        let c = h.c.clone();
        tasks.push(tokio::spawn(async move { rejoin(&c, "g", &m).await }));
    }
    let mut resps = vec![fourth.await.unwrap()];
    for t in tasks {
        resps.push(t.await.unwrap());
    }
    assert!(resps
        .iter()
        .all(|r| r.error_code == 0 && r.generation_id == generation + 1));
    // The previous leader keeps leadership.
    assert!(resps.iter().all(|r| r.leader.as_str() == leader));
    let lr = resps
        .iter()
        .find(|r| r.member_id.as_str() == leader)
        .unwrap();
    assert_eq!(lr.members.len(), 4);
}

#[tokio::test]
async fn silent_member_expires_and_others_rebalance() {
    let h = start(300);
    let short = Timeouts {
        session_ms: SHORT_SESSION,
        rebalance_ms: REBALANCE,
    };
    let (generation, _, members) = form_group_with(&h.c, "g", &[LONG, short]).await;
    let survivor = members[0].clone();
    let silent = members[1].clone();

    // Only the survivor heartbeats; the other's 400 ms session lapses.
    let deadline = Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let code = heartbeat(&h.c, "g", &survivor, generation);
        if code == ResponseError::RebalanceInProgress.code() {
            break;
        }
        assert_eq!(code, 0);
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the silent member's expiry to start a rebalance"
        );
    }
    let r = rejoin(&h.c, "g", &survivor).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, generation + 1);
    assert_eq!(r.members.len(), 1);
    assert_eq!(
        heartbeat(&h.c, "g", &silent, generation),
        ResponseError::UnknownMemberId.code()
    );
}

#[tokio::test]
async fn member_that_never_rejoins_is_dropped_at_rebalance_timeout() {
    let h = start(300);
    // A long session, so the heartbeating member cannot expire (which would end the
    // rebalance early); the short rebalance timeout is what the test waits for.
    let t = Timeouts {
        session_ms: SESSION,
        rebalance_ms: SHORT_REBALANCE,
    };
    let (generation, leader, members) = form_group_with(&h.c, "g", &[t, t]).await;
    let other = members.iter().find(|m| **m != leader).unwrap().clone();
    // The leader rejoins (forcing a rebalance); the other keeps heartbeating but never rejoins.
    let c = h.c.clone();
    let l = leader.clone();
    let started = Instant::now();
    let join = tokio::spawn(async move { rejoin_with(&c, "g", &l, t).await });
    while !join.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        heartbeat(&h.c, "g", &other, generation);
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for the rebalance timeout to complete the leader's join"
        );
    }
    let r = join.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(SHORT_REBALANCE as u64 - 100));
    assert_eq!(r.generation_id, generation + 1);
    assert_eq!(r.members.len(), 1);
}

#[tokio::test]
async fn leave_group_triggers_rebalance() {
    let h = start(300);
    let (generation, leader, members) = form_group(&h.c, "g", 2).await;
    let follower = members.iter().find(|m| **m != leader).unwrap().clone();
    assert_eq!(leave(&h.c, "g", &follower), 0);
    assert_eq!(
        heartbeat(&h.c, "g", &leader, generation),
        ResponseError::RebalanceInProgress.code()
    );
    let r = rejoin(&h.c, "g", &leader).await;
    assert_eq!(r.generation_id, generation + 1);
    assert_eq!(r.members.len(), 1);
    assert_eq!(
        leave(&h.c, "g", &follower),
        ResponseError::UnknownMemberId.code()
    );

    // v0-2 report the single member's error at the top level.
    let v1 = h.c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_member_id(s("nobody")),
        1,
    );
    assert_eq!(v1.error_code, ResponseError::UnknownMemberId.code());
    assert!(v1.members.is_empty());

    // Last member leaving empties the group.
    assert_eq!(leave(&h.c, "g", &leader), 0);
    assert_eq!(state_of(&h.c, "g"), "Empty");
}

#[tokio::test]
async fn illegal_generation_and_unknown_member() {
    let h = start(0);
    let r = join_new(&h.c, "g", b"meta").await;
    let me = r.member_id.to_string();
    assert_eq!(
        heartbeat(&h.c, "g", &me, r.generation_id + 5),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&h.c, "g", "stranger", r.generation_id),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        heartbeat(&h.c, "nogroup", "stranger", 1),
        ResponseError::UnknownMemberId.code()
    );
    let bad = h.c.sync_group(sync_req("g", &me, 99), 3).await;
    assert_eq!(bad.error_code, ResponseError::IllegalGeneration.code());
    let unknown = rejoin(&h.c, "g", "made-up-id").await;
    assert_eq!(unknown.error_code, ResponseError::UnknownMemberId.code());
    let commit = h.c.offset_commit(commit_req("g", 99, &me, "t", 0, 5), 8);
    assert_eq!(
        commit.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );
    // A standalone commit while the group has members is refused.
    let simple = h.c.offset_commit(commit_req("g", -1, "", "t", 0, 5), 8);
    assert_eq!(
        simple.topics[0].partitions[0].error_code,
        ResponseError::UnknownMemberId.code()
    );
    // No common protocol with the existing member.
    let mut odd = join_req("g", "", b"x");
    odd.protocols[0].name = s("sticky");
    odd.protocols.truncate(1);
    let odd = h.c.join_group(odd, 3).await;
    assert_eq!(
        odd.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    // Session timeout outside the configured range.
    let long =
        h.c.join_group(
            join_req("g", "", b"x").with_session_timeout_ms(10_000_000),
            5,
        )
        .await;
    assert_eq!(long.error_code, ResponseError::InvalidSessionTimeout.code());
}

fn commit_req(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(2)
                .with_committed_metadata(Some(s("meta")))])])
}

/// v7 fetch of explicit partitions; returns offsets in request order.
fn fetch_v7(c: &GroupCoordinator, group: &str, topic: &str, parts: &[i32]) -> Vec<i64> {
    let r = c.offset_fetch(
        OffsetFetchRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partition_indexes(parts.to_vec())])),
        7,
    );
    r.topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect()
}

#[tokio::test]
async fn offsets_round_trip_survive_reopen_and_torn_tail() {
    let h = start(0);
    for (p, o) in [(0, 10), (1, 20)] {
        let r = h.c.offset_commit(commit_req("og", -1, "", "t", p, o), 8);
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
    }
    h.c.offset_commit(commit_req("og", -1, "", "u", 0, 7), 2);
    assert_eq!(fetch_v7(&h.c, "og", "t", &[0, 1, 2]), vec![10, 20, -1]);

    // v8 groups form with null topics = everything committed.
    let r = h.c.offset_fetch(
        OffsetFetchRequest::default().with_groups(vec![
            // The struct defaults to an empty (non-null) list; null means "all".
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("og")))
                .with_topics(None),
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("other")))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(TopicName(s("t")))
                    .with_partition_indexes(vec![0])])),
        ]),
        8,
    );
    assert!(r.topics.is_empty());
    let all: Vec<(String, i32, i64)> = r.groups[0]
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index, p.committed_offset))
        })
        .collect();
    assert_eq!(
        all,
        vec![("t".into(), 0, 10), ("t".into(), 1, 20), ("u".into(), 0, 7)]
    );
    assert_eq!(
        r.groups[0].topics[0].partitions[0].committed_leader_epoch,
        2
    );
    assert_eq!(
        r.groups[0].topics[0].partitions[0].metadata.as_deref(),
        Some("meta")
    );
    assert_eq!(r.groups[1].topics[0].partitions[0].committed_offset, -1);

    let mut snapshot = h.c.committed_offsets();
    snapshot.sort();
    assert_eq!(snapshot.len(), 3);
    assert_eq!(snapshot[0], ("og".into(), "t".into(), 0, 10));

    // Close and reopen: offsets are durable.
    h.c.close().unwrap();
    let dir = h.dir.path().to_path_buf();
    let c2 = GroupCoordinator::open(&dir, config(0)).unwrap();
    assert_eq!(fetch_v7(&c2, "og", "t", &[0, 1]), vec![10, 20]);
    c2.forget_topic("u");
    assert_eq!(c2.committed_offsets().len(), 2);

    // A torn append (header promising more bytes than exist) is cut off on open.
    c2.close().unwrap();
    drop(c2);
    let log = dir.join("offsets.log");
    let good_len = std::fs::metadata(&log).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&[0, 0, 0, 60, 1, 2, 3, 4, 1, 0, 0]).unwrap();
    }
    let c3 = GroupCoordinator::open(&dir, config(0)).unwrap();
    assert_eq!(std::fs::metadata(&log).unwrap().len(), good_len);
    assert_eq!(fetch_v7(&c3, "og", "t", &[0, 1]), vec![10, 20]);
    assert_eq!(fetch_v7(&c3, "og", "u", &[0]), vec![-1]);
    // New commits after truncation land and replay fine.
    c3.offset_commit(commit_req("og", -1, "", "t", 0, 11), 8);
    drop(c3);
    let c4 = GroupCoordinator::open(&dir, config(0)).unwrap();
    assert_eq!(fetch_v7(&c4, "og", "t", &[0]), vec![11]);
}

#[tokio::test]
async fn member_commit_and_delete_groups() {
    let h = start(0);
    let r = join_new(&h.c, "g", b"meta").await;
    let me = r.member_id.to_string();
    let sync = h.c.sync_group(sync_req("g", &me, r.generation_id), 3).await;
    assert_eq!(sync.error_code, 0);
    let commit =
        h.c.offset_commit(commit_req("g", r.generation_id, &me, "t", 0, 42), 8);
    assert_eq!(commit.topics[0].partitions[0].error_code, 0);
    assert_eq!(fetch_v7(&h.c, "g", "t", &[0]), vec![42]);

    let del = |names: &[&str]| {
        h.c.delete_groups(
            DeleteGroupsRequest::default()
                .with_groups_names(names.iter().map(|n| GroupId(s(n))).collect()),
            2,
        )
    };
    let res = del(&["g", "missing"]);
    assert_eq!(
        res.results[0].error_code,
        ResponseError::NonEmptyGroup.code()
    );
    assert_eq!(
        res.results[1].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    assert_eq!(fetch_v7(&h.c, "g", "t", &[0]), vec![42]);

    assert_eq!(leave(&h.c, "g", &me), 0);
    assert_eq!(state_of(&h.c, "g"), "Empty");
    let listed = h.c.list_groups(ListGroupsRequest::default(), 4);
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].group_state.as_str(), "Empty");

    let res = del(&["g"]);
    assert_eq!(res.results[0].error_code, 0);
    assert_eq!(fetch_v7(&h.c, "g", "t", &[0]), vec![-1]);
    assert!(h.c.committed_offsets().is_empty());
    assert!(h
        .c
        .list_groups(ListGroupsRequest::default(), 4)
        .groups
        .is_empty());
    let d = h.c.describe_groups(
        DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
        6,
    );
    assert_eq!(
        d.groups[0].error_code,
        ResponseError::GroupIdNotFound.code()
    );

    // Deletion is durable too.
    h.c.close().unwrap();
    let c2 = GroupCoordinator::open(h.dir.path(), config(0)).unwrap();
    assert!(c2.committed_offsets().is_empty());
}

#[tokio::test]
async fn static_member_rejoins_and_leaves_by_instance_id() {
    let h = start(0);
    let req = |member: &str| {
        join_req("sg", member, b"meta").with_group_instance_id(Some(s("instance-1")))
    };
    // Static members skip MEMBER_ID_REQUIRED.
    let first = h.c.join_group(req(""), 5).await;
    assert_eq!(first.error_code, 0);
    let old = first.member_id.to_string();
    let sync =
        h.c.sync_group(sync_req("sg", &old, first.generation_id), 3)
            .await;
    assert_eq!(sync.error_code, 0);

    // A restart of the same instance gets a new id and fences the old one.
    let second = h.c.join_group(req(""), 5).await;
    assert_eq!(second.error_code, 0);
    assert_ne!(second.member_id.as_str(), old);
    let hb = h.c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(GroupId(s("sg")))
            .with_member_id(s(&old))
            .with_group_instance_id(Some(s("instance-1")))
            .with_generation_id(second.generation_id),
        3,
    );
    assert_eq!(hb.error_code, ResponseError::FencedInstanceId.code());

    let r = h.c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(GroupId(s("sg")))
            .with_members(vec![
                MemberIdentity::default().with_group_instance_id(Some(s("instance-1")))
            ]),
        3,
    );
    assert_eq!(r.members[0].error_code, 0);
    assert_eq!(state_of(&h.c, "sg"), "Empty");
}

/// Every response must encode at the version it was built for; kafka-protocol
/// refuses fields that do not exist in that version.
#[tokio::test]
async fn responses_encode_at_their_versions() {
    use kafka_protocol::protocol::Encodable;
    fn enc<T: Encodable>(m: &T, v: i16) {
        let mut buf = bytes::BytesMut::new();
        m.encode(&mut buf, v)
            .unwrap_or_else(|e| panic!("v{v}: {e}"));
    }
    let h = start(0);
    h.c.offset_commit(commit_req("og", -1, "", "t", 0, 1), 8);
    for v in 0..=9 {
        let g = format!("enc{v}");
        let mut r = h.c.join_group(join_req(&g, "", b"m"), v).await;
        enc(&r, v);
        if r.error_code == ResponseError::MemberIdRequired.code() {
            r = h.c.join_group(join_req(&g, &r.member_id, b"m"), v).await;
        }
        assert_eq!(r.error_code, 0, "v{v}");
        enc(&r, v);
        enc(&h.c.join_group(join_req(&g, "bogus", b"m"), v).await, v);
    }
    for v in 0..=5 {
        enc(&h.c.sync_group(sync_req("enc9", "x", 1), v).await, v);
        let leave = LeaveGroupRequest::default()
            .with_group_id(GroupId(s("enc9")))
            .with_member_id(if v < 3 { s("x") } else { s("") })
            .with_members(if v >= 3 {
                vec![MemberIdentity::default().with_member_id(s("x"))]
            } else {
                vec![]
            });
        enc(&h.c.leave_group(leave, v), v);
        enc(&h.c.list_groups(ListGroupsRequest::default(), v), v);
    }
    for v in 0..=4 {
        enc(&h.c.heartbeat(HeartbeatRequest::default(), v), v);
    }
    for v in 0..=6 {
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![
                GroupId(s("enc9")),
                GroupId(s("og")),
                GroupId(s("none")),
            ])
            .with_include_authorized_operations(v >= 3);
        enc(&h.c.describe_groups(req, v), v);
    }
    for v in 1..=9 {
        let req = if v >= 8 {
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("og")))
                .with_topics(None)])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(GroupId(s("og")))
                .with_topics(if v >= 2 { None } else { Some(vec![]) })
        };
        enc(&h.c.offset_fetch(req, v), v);
    }
    for v in 2..=9 {
        enc(
            &h.c.offset_commit(commit_req("og", -1, "", "t", 0, 1), v),
            v,
        );
    }
    for v in 0..=2 {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("none"))]);
        enc(&h.c.delete_groups(req, v), v);
    }
}

fn start_with(config: GroupConfig, dir: tempfile::TempDir) -> Harness {
    let c = GroupCoordinator::open(dir.path(), config).unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(c.clone().run_timers(rx));
    Harness { c, _stop: tx, dir }
}

fn with_retention(ms: i64) -> GroupConfig {
    GroupConfig {
        offsets_retention_ms: Some(ms),
        ..config(0)
    }
}

#[tokio::test]
async fn oversized_ids_are_rejected_and_cannot_wipe_later_commits() {
    let h = start(0);
    let part = |o: i64| {
        OffsetCommitRequestPartition::default()
            .with_partition_index(0)
            .with_committed_offset(o)
    };
    let huge_topic = "t".repeat(2 << 20);
    let r = h.c.offset_commit(
        OffsetCommitRequest::default()
            .with_group_id(GroupId(s("og")))
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(&huge_topic)))
                    .with_partitions(vec![part(1)]),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(&"t".repeat(250))))
                    .with_partitions(vec![part(1)]),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("ok")))
                    .with_partitions(vec![
                        part(5),
                        part(1)
                            .with_partition_index(1)
                            .with_committed_metadata(Some(s(&"m".repeat(4097)))),
                    ]),
            ]),
        8,
    );
    let codes: Vec<i16> = r
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect();
    let invalid_topic = ResponseError::InvalidTopicException.code();
    assert_eq!(
        codes,
        vec![
            invalid_topic,
            invalid_topic,
            0,
            ResponseError::OffsetMetadataTooLarge.code()
        ]
    );
    let long_group = "g".repeat(40_000);
    let r =
        h.c.offset_commit(commit_req(&long_group, -1, "", "ok", 0, 1), 8);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ResponseError::InvalidGroupId.code()
    );
    let j = h.c.join_group(join_req(&long_group, "", b"m"), 5).await;
    assert_eq!(j.error_code, ResponseError::InvalidGroupId.code());

    let r = h.c.offset_commit(commit_req("og", -1, "", "ok", 2, 6), 8);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    h.c.close().unwrap();
    let c2 = GroupCoordinator::open(h.dir.path(), config(0)).unwrap();
    assert_eq!(fetch_v7(&c2, "og", "ok", &[0, 1, 2]), vec![5, -1, 6]);
    assert_eq!(c2.committed_offsets().len(), 2);
}

#[tokio::test]
async fn offsets_expire_retention_after_group_became_empty() {
    let h = start_with(with_retention(2000), tempfile::tempdir().unwrap());
    let r = join_new(&h.c, "rg", b"meta").await;
    let me = r.member_id.to_string();
    let generation = r.generation_id;
    let sync = h.c.sync_group(sync_req("rg", &me, generation), 3).await;
    assert_eq!(sync.error_code, 0);
    let commit =
        h.c.offset_commit(commit_req("rg", generation, &me, "t", 0, 42), 8);
    assert_eq!(commit.topics[0].partitions[0].error_code, 0);

    // Stay in the group past the retention: offsets of live groups never expire.
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(heartbeat(&h.c, "rg", &me, generation), 0);
    }
    assert_eq!(fetch_v7(&h.c, "rg", "t", &[0]), vec![42]);

    // The commit is older than the retention, but the group only just became
    // empty: KIP-211 counts from there.
    let before_leave = Instant::now();
    assert_eq!(leave(&h.c, "rg", &me), 0);
    wait_offset_expired(&h.c, "rg", 42, before_leave, Duration::from_millis(2000)).await;
}

/// Polls until the offset committed for `group` on t/0 (`kept` until then) is gone, and
/// checks it was not dropped before `retention` had passed since `since`, an instant
/// taken before the group became empty. A slow machine only makes the expiry later.
async fn wait_offset_expired(
    c: &GroupCoordinator,
    group: &str,
    kept: i64,
    since: Instant,
    retention: Duration,
) {
    loop {
        let offset = fetch_v7(c, group, "t", &[0])[0];
        let elapsed = since.elapsed();
        if offset == -1 {
            assert!(
                elapsed + Duration::from_millis(100) >= retention,
                "offsets of {group} expired {elapsed:?} after it became empty, \
                 before the retention of {retention:?}"
            );
            return;
        }
        assert_eq!(offset, kept);
        assert!(
            elapsed < WAIT,
            "timed out waiting for the offsets of {group} to expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn memberless_groups_at_open_count_retention_from_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = GroupCoordinator::open(dir.path(), config(0)).unwrap();
        let r = c.offset_commit(commit_req("sg", -1, "", "t", 0, 9), 8);
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        c.close().unwrap();
    }
    // The broker was down longer than the retention (a sleep lasts at least this long).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before_open = Instant::now();
    let h = start_with(with_retention(1000), dir);
    wait_offset_expired(&h.c, "sg", 9, before_open, Duration::from_millis(1000)).await;
}
