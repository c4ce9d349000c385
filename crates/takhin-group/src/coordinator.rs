//! [`GroupCoordinator`]: maps kafka-protocol group/offset requests (with their
//! API version) onto the per-group state machines and the offset store, and runs
//! the periodic timers (session expiry, rebalance timeouts, initial delay,
//! offset retention).
//!
//! Locking: `groups` is always taken before `store`, and neither is held across
//! an await; long-polling JoinGroup/SyncGroup park a oneshot sender in the group
//! and await the receiver after the lock is released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use crate::group::{join_error, str_bytes, sync_error, Group, GroupState, Member};
use crate::store::{Committed, OffsetStore, MAX_GROUP_ID, MAX_METADATA, MAX_TOPIC_NAME};
use crate::{now_ms, GroupConfig, GroupError};

const TICK: Duration = Duration::from_millis(100);
/// How often expired offsets are looked for (more often for short retentions).
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// READ | DELETE | DESCRIBE bits of Kafka's AclOperation, the operations a group supports.
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// The coordinator of every consumer group on this (single-node) broker.
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    store: Mutex<OffsetStore>,
    /// When this coordinator opened: the "empty since" of groups that have
    /// offsets but no in-memory state (membership is not persisted).
    opened_at_ms: i64,
}

enum Outcome<T> {
    Done(T),
    Wait(oneshot::Receiver<T>),
}

/// The parts of a JoinGroup request that describe the member.
struct JoinParams {
    instance: Option<String>,
    client_id: String,
    client_host: String,
    session: Duration,
    rebalance: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
}

/// Interval between retention checks: a quarter of the retention, between one
/// tick and [`RETENTION_CHECK`].
fn retention_check_interval(retention_ms: Option<i64>) -> Duration {
    match retention_ms {
        Some(ms) => Duration::from_millis((ms.max(0) / 4) as u64).clamp(TICK, RETENTION_CHECK),
        None => RETENTION_CHECK,
    }
}

fn nonempty(s: Option<&StrBytes>) -> Option<String> {
    s.map(|s| s.to_string()).filter(|s| !s.is_empty())
}

impl GroupCoordinator {
    /// Opens the durable offset store under `dir` (replays it) and starts nothing;
    /// the broker spawns [`GroupCoordinator::run_timers`].
    pub fn open(dir: &Path, config: GroupConfig) -> Result<Arc<Self>, GroupError> {
        let store = OffsetStore::open(dir)?;
        Ok(Arc::new(Self {
            config,
            groups: Mutex::new(HashMap::new()),
            store: Mutex::new(store),
            opened_at_ms: now_ms(),
        }))
    }

    /// Ticks every ~100 ms until `shutdown` turns true (or its sender is dropped).
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention = Instant::now();
        let retention_check = retention_check_interval(self.config.offsets_retention_ms);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let now = Instant::now();
                    self.tick(now);
                    if now.duration_since(last_retention) >= retention_check {
                        last_retention = now;
                        self.expire_offsets(now_ms());
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
    }

    fn tick(&self, now: Instant) {
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            g.tick(now);
        }
    }

    fn expire_offsets(&self, now_ms: i64) {
        let Some(retention) = self.config.offsets_retention_ms else {
            return;
        };
        let groups = self.groups.lock();
        // Only groups nobody is consuming with lose offsets, and only once they
        // have been empty for the retention period (KIP-211).
        let empty_since = |g: &str| match groups.get(g) {
            Some(group) if !group.is_empty() => None,
            Some(group) => Some(group.empty_since.unwrap_or(self.opened_at_ms)),
            None => Some(self.opened_at_ms),
        };
        match self.store.lock().expire(now_ms, retention, empty_since) {
            Ok(0) => {}
            Ok(n) => info!(expired = n, "expired committed offsets past retention"),
            Err(e) => error!(error = %e, "failed to expire committed offsets"),
        }
    }

    /// JoinGroup without client identity; see [`GroupCoordinator::join_group_from`].
    pub async fn join_group(&self, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
        self.join_group_from(req, version, "", "").await
    }

    /// JoinGroup long-poll: resolves when the rebalance completes. `client_id` and
    /// `client_host` come from the request header/connection and are only shown
    /// by DescribeGroups and used as the member-id prefix.
    pub async fn join_group_from(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.to_string();
        let outcome = self.handle_join(&req, version, client_id, client_host, Instant::now());
        let mut resp = match outcome {
            Outcome::Done(r) => r,
            // The sender vanished without answering (group deleted): make the client start over.
            Outcome::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| join_error(ResponseError::UnknownMemberId, &member_id)),
        };
        // Before v7 the protocol name is a non-nullable string.
        if version < 7 && resp.protocol_name.is_none() {
            resp.protocol_name = Some(StrBytes::new());
        }
        resp
    }

    fn handle_join(
        &self,
        req: &JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
        now: Instant,
    ) -> Outcome<JoinGroupResponse> {
        let group_id = req.group_id.as_str();
        let member_id = req.member_id.as_str();
        let fail = |code: ResponseError| Outcome::Done(join_error(code, member_id));
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID {
            return fail(ResponseError::InvalidGroupId);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        // v0 has no rebalance timeout; Kafka uses the session timeout for it.
        let rebalance = if version >= 1 && req.rebalance_timeout_ms > 0 {
            Duration::from_millis(req.rebalance_timeout_ms as u64)
        } else {
            session
        };
        let params = JoinParams {
            instance: if version >= 5 {
                nonempty(req.group_instance_id.as_ref())
            } else {
                None
            },
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
            session,
            rebalance,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
        };

        let mut groups = self.groups.lock();
        if !member_id.is_empty() && !groups.contains_key(group_id) {
            return fail(ResponseError::UnknownMemberId);
        }
        let delay = Duration::from_millis(self.config.initial_rebalance_delay_ms);
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id, delay));
        let known = group.members.contains_key(member_id);
        let exclude = known.then_some(member_id);
        if !group.supports(&params.protocol_type, &params.protocols, exclude) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }

        if member_id.is_empty() {
            let prefix = params
                .instance
                .as_deref()
                .unwrap_or(if client_id.is_empty() {
                    "consumer"
                } else {
                    client_id
                });
            let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            if let Some(instance) = &params.instance {
                if let Some(old) = group.static_members.get(instance).cloned() {
                    info!(group = group_id, instance = %instance, old = %old, new = %new_id, "static member rejoined with a new member id");
                    group.replace_static_member(&old, &new_id);
                    return rejoin_known(group, &new_id, params, now);
                }
            } else if version >= 4 {
                // KIP-394: hand out the id first so a client that dies mid-join
                // cannot leave an anonymous member behind.
                group.pending.insert(new_id.clone(), now + session);
                return Outcome::Done(join_error(ResponseError::MemberIdRequired, &new_id));
            }
            return add_new_member(group, new_id, params, now);
        }

        if let Some(instance) = &params.instance {
            if let Some(owner) = group.static_members.get(instance) {
                if owner != member_id {
                    return fail(ResponseError::FencedInstanceId);
                }
            }
        }
        if !known {
            if group.pending.contains_key(member_id) {
                return add_new_member(group, member_id.to_string(), params, now);
            }
            return fail(ResponseError::UnknownMemberId);
        }
        rejoin_known(group, member_id, params, now)
    }

    /// SyncGroup: the leader's call stores the assignment; followers wait for it.
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        match self.handle_sync(&req, version, Instant::now()) {
            Outcome::Done(r) => r,
            Outcome::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| sync_error(ResponseError::RebalanceInProgress)),
        }
    }

    fn handle_sync(
        &self,
        req: &SyncGroupRequest,
        version: i16,
        now: Instant,
    ) -> Outcome<SyncGroupResponse> {
        let fail = |code: ResponseError| Outcome::Done(sync_error(code));
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(req.group_id.as_str()) else {
            return fail(ResponseError::UnknownMemberId);
        };
        let member_id = req.member_id.as_str();
        let instance = if version >= 3 {
            nonempty(req.group_instance_id.as_ref())
        } else {
            None
        };
        if let Err(code) = check_member(group, member_id, instance.as_deref()) {
            return fail(code);
        }
        if req.generation_id != group.generation {
            return fail(ResponseError::IllegalGeneration);
        }
        if version >= 5 {
            let type_ok = req
                .protocol_type
                .as_ref()
                .is_none_or(|t| group.protocol_type.as_deref() == Some(t.as_str()));
            let name_ok = req
                .protocol_name
                .as_ref()
                .is_none_or(|n| group.protocol.as_deref() == Some(n.as_str()));
            if !type_ok || !name_ok {
                return fail(ResponseError::InconsistentGroupProtocol);
            }
        }
        let is_leader = group.leader.as_deref() == Some(member_id);
        match group.state {
            GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = group.members.get_mut(member_id) {
                    m.last_seen = now;
                    m.sync_waiter = Some(tx);
                }
                if is_leader {
                    let assignments = req
                        .assignments
                        .iter()
                        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                        .collect();
                    group.complete_sync(assignments);
                }
                Outcome::Wait(rx)
            }
            GroupState::Stable => {
                let protocol_type = group.protocol_type.as_deref().map(str_bytes);
                let protocol = group.protocol.as_deref().map(str_bytes);
                let Some(m) = group.members.get_mut(member_id) else {
                    return fail(ResponseError::UnknownMemberId);
                };
                m.last_seen = now;
                Outcome::Done(
                    SyncGroupResponse::default()
                        .with_protocol_type(protocol_type)
                        .with_protocol_name(protocol)
                        .with_assignment(m.assignment.clone()),
                )
            }
        }
    }

    /// Heartbeat: keeps the session alive and tells the member whether to rejoin.
    pub fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        let code = self.handle_heartbeat(&req, version, Instant::now());
        HeartbeatResponse::default().with_error_code(code.err().map_or(0, |c| c.code()))
    }

    fn handle_heartbeat(
        &self,
        req: &HeartbeatRequest,
        version: i16,
        now: Instant,
    ) -> Result<(), ResponseError> {
        let mut groups = self.groups.lock();
        let group = groups
            .get_mut(req.group_id.as_str())
            .ok_or(ResponseError::UnknownMemberId)?;
        let member_id = req.member_id.as_str();
        let instance = if version >= 3 {
            nonempty(req.group_instance_id.as_ref())
        } else {
            None
        };
        check_member(group, member_id, instance.as_deref())?;
        if req.generation_id != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if let Some(m) = group.members.get_mut(member_id) {
            m.last_seen = now;
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
        }
    }

    /// LeaveGroup: v0-2 carry one member id, v3+ a batch of member identities.
    pub fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let identities: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        nonempty(m.group_instance_id.as_ref()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let mut group = groups.get_mut(req.group_id.as_str());
        let mut results = Vec::with_capacity(identities.len());
        for (member_id, instance) in identities {
            let code = match group.as_deref_mut() {
                None => Err(ResponseError::UnknownMemberId),
                Some(g) => leave_one(g, &member_id, instance.as_deref(), now),
            };
            results.push(
                MemberResponse::default()
                    .with_member_id(str_bytes(&member_id))
                    .with_group_instance_id(instance.as_deref().map(str_bytes))
                    .with_error_code(code.err().map_or(0, |c| c.code())),
            );
        }
        if version >= 3 {
            LeaveGroupResponse::default().with_members(results)
        } else {
            let code = results.first().map_or(0, |r| r.error_code);
            LeaveGroupResponse::default().with_error_code(code)
        }
    }

    /// OffsetCommit: group members of the current generation, or anyone with
    /// generation -1 while the group has no members. Durable before returning.
    pub fn offset_commit(&self, req: OffsetCommitRequest, version: i16) -> OffsetCommitResponse {
        let group_id = req.group_id.to_string();
        let instance = if version >= 7 {
            nonempty(req.group_instance_id.as_ref())
        } else {
            None
        };
        let denied = if group_id.is_empty() || group_id.len() > MAX_GROUP_ID {
            Some(ResponseError::InvalidGroupId)
        } else {
            self.check_commit(
                &group_id,
                req.generation_id_or_member_epoch,
                req.member_id.as_str(),
                instance.as_deref(),
            )
            .err()
        };
        let ts = now_ms();
        let mut entries = Vec::new();
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let mut parts = Vec::with_capacity(t.partitions.len());
            for p in &t.partitions {
                let code = if let Some(e) = denied {
                    e.code()
                } else if t.name.is_empty() || t.name.len() > MAX_TOPIC_NAME {
                    ResponseError::InvalidTopicException.code()
                } else if p
                    .committed_metadata
                    .as_ref()
                    .is_some_and(|m| m.len() > MAX_METADATA)
                {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else {
                    entries.push((
                        t.name.to_string(),
                        p.partition_index,
                        Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            commit_ts: ts,
                        },
                    ));
                    0
                };
                parts.push(
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code),
                );
            }
            topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(parts),
            );
        }
        if !entries.is_empty() {
            if let Err(e) = self.store.lock().commit(&group_id, entries) {
                error!(group = %group_id, error = %e, "offset commit failed to persist");
                for p in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                    if p.error_code == 0 {
                        p.error_code = ResponseError::UnknownServerError.code();
                    }
                }
            }
        }
        OffsetCommitResponse::default().with_topics(topics)
    }

    fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get_mut(group_id) else {
            // Standalone (assign()-style) consumers only store offsets here.
            return if generation < 0 {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        };
        if generation < 0 && group.members.is_empty() {
            return Ok(());
        }
        check_member(group, member_id, instance)?;
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        if let Some(m) = group.members.get_mut(member_id) {
            m.last_seen = Instant::now();
        }
        Ok(())
    }

    /// OffsetFetch: v1-7 one group, v8+ the `groups` array. Null topics means
    /// every committed partition; unknown partitions report offset -1.
    pub fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let store = self.store.lock();
        if version >= 8 {
            let groups = req
                .groups
                .iter()
                .map(|g| {
                    let wanted = g.topics.as_ref().map(|ts| {
                        ts.iter()
                            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                            .collect()
                    });
                    let topics = fetch(&store, g.group_id.as_str(), wanted)
                        .into_iter()
                        .map(|(topic, parts)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(str_bytes(&topic)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, c)| {
                                            let (offset, epoch, meta) = fetched(c);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(meta))
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                    OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_topics(topics)
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let wanted = req.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                .collect()
        });
        let topics = fetch(&store, req.group_id.as_str(), wanted)
            .into_iter()
            .map(|(topic, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(&topic)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, c)| {
                                let (offset, epoch, meta) = fetched(c);
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(meta))
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default().with_topics(topics)
    }

    /// ListGroups: groups with members or committed offsets; v4 states filter,
    /// v5 types filter (everything here is a "classic" group).
    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let groups = self.groups.lock();
        let store = self.store.lock();
        let ids: BTreeSet<&str> = groups
            .keys()
            .map(String::as_str)
            .chain(store.offsets().keys().map(String::as_str))
            .collect();
        let states: Vec<String> = if version >= 4 {
            req.states_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if version >= 5 {
            req.types_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        if !types.is_empty() && !types.iter().any(|t| t == "classic") {
            return ListGroupsResponse::default();
        }
        let listed = ids
            .into_iter()
            .filter_map(|id| {
                let (state, ptype) = match groups.get(id) {
                    Some(g) => (g.state, g.protocol_type.clone().unwrap_or_default()),
                    None => (GroupState::Empty, String::new()),
                };
                if !states.is_empty() && !states.contains(&state.as_str().to_lowercase()) {
                    return None;
                }
                Some(
                    ListedGroup::default()
                        .with_group_id(GroupId(str_bytes(id)))
                        .with_protocol_type(str_bytes(&ptype))
                        .with_group_state(str_bytes(state.as_str()))
                        .with_group_type(StrBytes::from_static_str("classic")),
                )
            })
            .collect();
        ListGroupsResponse::default().with_groups(listed)
    }

    /// DescribeGroups: state, protocol and members; metadata and assignments
    /// only while Stable, as Kafka does.
    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let groups = self.groups.lock();
        let store = self.store.lock();
        let described = req
            .groups
            .iter()
            .map(|gid| {
                let id = gid.as_str();
                let mut d = DescribedGroup::default().with_group_id(gid.clone());
                if version >= 3 && req.include_authorized_operations {
                    d.authorized_operations = GROUP_OPERATIONS;
                }
                if id.is_empty() {
                    return d.with_error_code(ResponseError::InvalidGroupId.code());
                }
                match groups.get(id) {
                    Some(g) => {
                        let stable = g.state == GroupState::Stable;
                        let protocol = g.protocol.clone().unwrap_or_default();
                        let members = g
                            .members
                            .values()
                            .map(|m| {
                                let mut dm = DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&m.id))
                                    .with_group_instance_id(
                                        m.group_instance_id.as_deref().map(str_bytes),
                                    )
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host));
                                if stable {
                                    dm.member_metadata = m.metadata_for(&protocol);
                                    dm.member_assignment = m.assignment.clone();
                                }
                                dm
                            })
                            .collect();
                        d.with_group_state(str_bytes(g.state.as_str()))
                            .with_protocol_type(str_bytes(
                                g.protocol_type.as_deref().unwrap_or_default(),
                            ))
                            .with_protocol_data(str_bytes(&protocol))
                            .with_members(members)
                    }
                    None if store.has_group(id) => {
                        d.with_group_state(str_bytes(GroupState::Empty.as_str()))
                    }
                    None if version >= 6 => d
                        .with_error_code(ResponseError::GroupIdNotFound.code())
                        .with_error_message(Some(str_bytes(&format!("Group {id} not found."))))
                        .with_group_state(str_bytes(GroupState::Dead.as_str())),
                    None => d.with_group_state(str_bytes(GroupState::Dead.as_str())),
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(described)
    }

    /// DeleteGroups: only groups without members; removes their committed offsets.
    pub fn delete_groups(&self, req: DeleteGroupsRequest, _version: i16) -> DeleteGroupsResponse {
        let mut groups = self.groups.lock();
        let mut store = self.store.lock();
        let results = req
            .groups_names
            .iter()
            .map(|gid| {
                let id = gid.as_str();
                let code = if id.is_empty() {
                    Err(ResponseError::InvalidGroupId)
                } else if groups.get(id).is_some_and(|g| !g.is_empty()) {
                    Err(ResponseError::NonEmptyGroup)
                } else {
                    let existed = groups.remove(id).is_some();
                    match store.delete_group(id) {
                        Err(e) => {
                            error!(group = id, error = %e, "failed to delete group offsets");
                            Err(ResponseError::UnknownServerError)
                        }
                        Ok(had) if !existed && !had => Err(ResponseError::GroupIdNotFound),
                        Ok(_) => {
                            info!(group = id, "group deleted");
                            metrics::gauge!("takhin_group_members", "group" => id.to_string())
                                .set(0.0);
                            Ok(())
                        }
                    }
                };
                DeletableGroupResult::default()
                    .with_group_id(gid.clone())
                    .with_error_code(code.err().map_or(0, |c| c.code()))
            })
            .collect();
        DeleteGroupsResponse::default().with_results(results)
    }

    /// Snapshot of committed offsets, for the broker's lag metric:
    /// (group, topic, partition, offset).
    pub fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let store = self.store.lock();
        store
            .offsets()
            .iter()
            .flat_map(|(g, parts)| {
                parts
                    .iter()
                    .map(move |((t, p), c)| (g.clone(), t.clone(), *p, c.offset))
            })
            .collect()
    }

    /// Removes the committed offsets of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        if let Err(e) = self.store.lock().delete_topic(topic) {
            error!(topic, error = %e, "failed to drop committed offsets of deleted topic");
        }
    }

    /// Flushes the offset log. Membership is not persisted: consumers rejoin.
    pub fn close(&self) -> Result<(), GroupError> {
        self.store.lock().sync()
    }
}

/// Member exists and, for static members, the instance id still maps to it.
fn check_member(
    group: &Group,
    member_id: &str,
    instance: Option<&str>,
) -> Result<(), ResponseError> {
    if let Some(instance) = instance {
        if let Some(owner) = group.static_members.get(instance) {
            if owner != member_id {
                return Err(ResponseError::FencedInstanceId);
            }
        }
    }
    if !group.members.contains_key(member_id) {
        return Err(ResponseError::UnknownMemberId);
    }
    Ok(())
}

fn leave_one(
    group: &mut Group,
    member_id: &str,
    instance: Option<&str>,
    now: Instant,
) -> Result<(), ResponseError> {
    let id = match instance {
        Some(instance) => match group.static_members.get(instance) {
            Some(owner) if member_id.is_empty() || owner == member_id => owner.clone(),
            Some(_) => return Err(ResponseError::FencedInstanceId),
            None => return Err(ResponseError::UnknownMemberId),
        },
        None => member_id.to_string(),
    };
    if group.pending.remove(&id).is_some() {
        // A pending member holds up the join phase; let it finish without them.
        group.try_complete_join(now);
        return Ok(());
    }
    if group.remove_member(&id, now, "member left the group") {
        Ok(())
    } else {
        Err(ResponseError::UnknownMemberId)
    }
}

fn add_new_member(
    group: &mut Group,
    id: String,
    p: JoinParams,
    now: Instant,
) -> Outcome<JoinGroupResponse> {
    let (tx, rx) = oneshot::channel();
    info!(group = %group.id, member = %id, "member joining");
    group.add_member(Member {
        id,
        group_instance_id: p.instance,
        client_id: p.client_id,
        client_host: p.client_host,
        session_timeout: p.session,
        rebalance_timeout: p.rebalance,
        protocol_type: p.protocol_type,
        protocols: p.protocols,
        assignment: Bytes::new(),
        last_seen: now,
        join_waiter: Some(tx),
        sync_waiter: None,
    });
    group.maybe_prepare_rebalance(now, "new member joined");
    group.try_complete_join(now);
    Outcome::Wait(rx)
}

/// JoinGroup from a member the group already knows (Kafka's `updateMemberAndRebalance`
/// or, when nothing changed, the current generation handed back).
fn rejoin_known(
    group: &mut Group,
    id: &str,
    p: JoinParams,
    now: Instant,
) -> Outcome<JoinGroupResponse> {
    let is_leader = group.leader.as_deref() == Some(id);
    let Some(m) = group.members.get_mut(id) else {
        return Outcome::Done(join_error(ResponseError::UnknownMemberId, id));
    };
    let unchanged = m.protocols == p.protocols && m.protocol_type == p.protocol_type;
    m.session_timeout = p.session;
    m.rebalance_timeout = p.rebalance;
    m.protocol_type = p.protocol_type;
    m.protocols = p.protocols;
    if !p.client_id.is_empty() {
        m.client_id = p.client_id;
    }
    if !p.client_host.is_empty() {
        m.client_host = p.client_host;
    }
    m.last_seen = now;
    match group.state {
        GroupState::CompletingRebalance if unchanged => {
            return Outcome::Done(group.join_response(id));
        }
        // The leader rejoining is how clients ask for a reassignment (e.g. new partitions).
        GroupState::Stable if unchanged && !is_leader => {
            return Outcome::Done(group.join_response(id));
        }
        GroupState::Empty | GroupState::Dead => {
            return Outcome::Done(join_error(ResponseError::UnknownMemberId, id));
        }
        _ => {}
    }
    group.maybe_prepare_rebalance(now, "member rejoined with changed metadata or as leader");
    let (tx, rx) = oneshot::channel();
    if let Some(m) = group.members.get_mut(id) {
        m.join_waiter = Some(tx);
    }
    group.try_complete_join(now);
    Outcome::Wait(rx)
}

type Fetched<'a> = Vec<(String, Vec<(i32, Option<&'a Committed>)>)>;

/// Looks up the requested (or, with `None`, all) partitions of one group.
fn fetch<'a>(
    store: &'a OffsetStore,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Fetched<'a> {
    let committed = store.group(group);
    match wanted {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, parts)| {
                let found = parts
                    .into_iter()
                    .map(|p| (p, committed.and_then(|c| c.get(&(topic.clone(), p)))))
                    .collect();
                (topic, found)
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<(i32, Option<&Committed>)>> = BTreeMap::new();
            for ((t, p), c) in committed.into_iter().flatten() {
                by_topic.entry(t.clone()).or_default().push((*p, Some(c)));
            }
            by_topic.into_iter().collect()
        }
    }
}

/// (offset, leader epoch, metadata) as reported; -1/-1/"" when nothing is committed.
fn fetched(c: Option<&Committed>) -> (i64, i32, StrBytes) {
    match c {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            str_bytes(c.metadata.as_deref().unwrap_or_default()),
        ),
        None => (-1, -1, StrBytes::new()),
    }
}
