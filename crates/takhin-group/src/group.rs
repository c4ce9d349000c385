//! One classic-protocol group's membership state machine, modelled on Kafka's
//! `GroupMetadata`: Empty -> PreparingRebalance -> CompletingRebalance -> Stable,
//! plus the join/sync waiters (oneshot senders) parked on it. Everything here
//! runs under the coordinator's lock and never awaits.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tracing::info;

use crate::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// Names as Kafka reports them in ListGroups/DescribeGroups.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

pub(crate) struct Member {
    pub id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// Last join/sync/heartbeat; the session timer runs from here.
    pub last_seen: Instant,
    pub join_waiter: Option<oneshot::Sender<JoinGroupResponse>>,
    pub sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
}

impl Member {
    /// A member parked in JoinGroup whose client is still listening.
    pub fn awaiting_join(&self) -> bool {
        self.join_waiter.as_ref().is_some_and(|s| !s.is_closed())
    }

    fn awaiting_sync(&self) -> bool {
        self.sync_waiter.as_ref().is_some_and(|s| !s.is_closed())
    }

    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Kafka's `shouldKeepAlive`: members parked in join or sync are not expired,
    /// because their client is blocked on us rather than able to heartbeat.
    pub fn expired(&self, now: Instant) -> bool {
        !self.awaiting_join()
            && !self.awaiting_sync()
            && now.saturating_duration_since(self.last_seen) >= self.session_timeout
    }
}

/// Kafka's InitialDelayedJoin: the first rebalance of an Empty group waits
/// `step`, extended by another `step` while new members keep arriving, up to `cap`.
struct InitialDelay {
    step: Duration,
    deadline: Instant,
    cap: Instant,
}

pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Insertion order is join order, which picks the leader.
    pub members: IndexMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (JoinGroup v4+), not yet
    /// joined, with the instant they are forgotten.
    pub pending: HashMap<String, Instant>,
    /// group.instance.id -> member id, for static membership.
    pub static_members: HashMap<String, String>,
    /// Wall-clock ms at which the group last became empty (created empty, or its
    /// last member left or expired); `None` while it has members. Offset
    /// retention counts from here (KIP-211).
    pub empty_since: Option<i64>,
    rebalance_deadline: Option<Instant>,
    initial: Option<InitialDelay>,
    new_member_added: bool,
    initial_delay: Duration,
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(crate) fn join_error(code: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(code.code())
        .with_generation_id(-1)
        .with_member_id(str_bytes(member_id))
}

pub(crate) fn sync_error(code: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(code.code())
}

impl Group {
    pub fn new(id: &str, initial_delay: Duration) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: IndexMap::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            empty_since: Some(now_ms()),
            rebalance_deadline: None,
            initial: None,
            new_member_added: false,
            initial_delay,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn publish_gauge(&self) {
        metrics::gauge!("takhin_group_members", "group" => self.id.clone())
            .set(self.members.len() as f64);
    }

    fn transition(&mut self, to: GroupState, reason: &str) {
        if self.state != to {
            info!(
                group = %self.id,
                from = self.state.as_str(),
                to = to.as_str(),
                generation = self.generation,
                members = self.members.len(),
                reason,
                "group state transition"
            );
        }
        self.state = to;
    }

    /// Protocols every member except `exclude` supports (`None` when there is no such member).
    fn common_protocols(&self, exclude: Option<&str>) -> Option<HashSet<&str>> {
        let mut common: Option<HashSet<&str>> = None;
        for m in self.members.values() {
            if Some(m.id.as_str()) == exclude {
                continue;
            }
            let names: HashSet<&str> = m.protocols.iter().map(|(n, _)| n.as_str()).collect();
            common = Some(match common {
                None => names,
                Some(c) => c.intersection(&names).copied().collect(),
            });
        }
        common
    }

    /// Kafka's `supportsProtocols`: same protocol type and at least one protocol
    /// every other member also supports.
    pub fn supports(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
        exclude: Option<&str>,
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        match self.common_protocols(exclude) {
            None => true,
            Some(common) => {
                self.protocol_type
                    .as_deref()
                    .is_none_or(|t| t == protocol_type)
                    && protocols.iter().any(|(n, _)| common.contains(n.as_str()))
            }
        }
    }

    /// Kafka's `selectProtocol`: among protocols all members support, each member
    /// votes for the first one in its own preference order; most votes wins, ties
    /// go to the earlier protocol in the first member's preference order.
    fn select_protocol(&self) -> Option<String> {
        let common = self.common_protocols(None)?;
        let first = self.members.values().next()?;
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m
                .protocols
                .iter()
                .find(|(n, _)| common.contains(n.as_str()))
            {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for (n, _) in &first.protocols {
            if !common.contains(n.as_str()) {
                continue;
            }
            let v = votes.get(n.as_str()).copied().unwrap_or(0);
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((n.as_str(), v));
            }
        }
        best.map(|(n, _)| n.to_string())
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn add_member(&mut self, member: Member) {
        if self.state == GroupState::PreparingRebalance && self.initial.is_some() {
            self.new_member_added = true;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), member.id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        self.pending.remove(&member.id);
        self.members.insert(member.id.clone(), member);
        self.empty_since = None;
        self.publish_gauge();
    }

    /// Moves the group into PreparingRebalance (Kafka's `prepareRebalance`).
    pub fn prepare_rebalance(&mut self, now: Instant, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            // Followers parked in SyncGroup must rejoin; their old assignment is void.
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(tx) = m.sync_waiter.take() {
                    let _ = tx.send(sync_error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout = self.max_rebalance_timeout();
        if self.state == GroupState::Empty {
            self.initial = Some(InitialDelay {
                step: self.initial_delay,
                deadline: now + self.initial_delay,
                cap: now + timeout.max(self.initial_delay),
            });
            self.new_member_added = false;
        } else {
            self.initial = None;
        }
        self.rebalance_deadline = Some(now + timeout);
        metrics::counter!("takhin_group_rebalances_total", "group" => self.id.clone()).increment(1);
        self.transition(GroupState::PreparingRebalance, reason);
    }

    /// Starts a rebalance unless one is already being prepared.
    pub fn maybe_prepare_rebalance(&mut self, now: Instant, reason: &str) {
        if matches!(
            self.state,
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
        ) {
            self.prepare_rebalance(now, reason);
        }
    }

    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(Member::awaiting_join)
    }

    /// Completes the join phase if it may: everyone rejoined, the rebalance
    /// timeout passed, or the initial delay ran out without new arrivals.
    pub fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if let Some(init) = &mut self.initial {
            if now < init.deadline {
                return;
            }
            if self.new_member_added && now < init.cap {
                self.new_member_added = false;
                init.deadline = (now + init.step).min(init.cap);
                return;
            }
            self.complete_join(now);
            return;
        }
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        if self.all_joined() || timed_out {
            self.complete_join(now);
        }
    }

    /// Kafka's `onCompleteJoin`: drop members that did not rejoin, start the next
    /// generation and answer every parked JoinGroup.
    fn complete_join(&mut self, now: Instant) {
        self.initial = None;
        self.rebalance_deadline = None;
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            info!(group = %self.id, member = %id, "member did not rejoin in time; removing");
            self.drop_member(&id);
        }
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            self.transition(GroupState::Empty, "no members after join phase");
            self.publish_gauge();
            return;
        }
        self.protocol = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.transition(GroupState::CompletingRebalance, "all members joined");
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let resp = self.join_response(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_seen = now;
                if let Some(tx) = m.join_waiter.take() {
                    let _ = tx.send(resp);
                }
            }
        }
        self.publish_gauge();
    }

    /// The JoinGroup answer for `member_id` in the current generation; only the
    /// leader gets the member list, because only it runs the assignor.
    pub fn join_response(&self, member_id: &str) -> JoinGroupResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.id))
                        .with_group_instance_id(m.group_instance_id.as_deref().map(str_bytes))
                        .with_metadata(m.metadata_for(&protocol))
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(self.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(Some(str_bytes(&protocol)))
            .with_leader(str_bytes(&leader))
            .with_member_id(str_bytes(member_id))
            .with_members(members)
    }

    /// Removes a member, failing its parked requests, without any state change.
    fn drop_member(&mut self, id: &str) -> Option<Member> {
        let mut m = self.members.shift_remove(id)?;
        if let Some(tx) = m.join_waiter.take() {
            let _ = tx.send(join_error(ResponseError::UnknownMemberId, id));
        }
        if let Some(tx) = m.sync_waiter.take() {
            let _ = tx.send(sync_error(ResponseError::UnknownMemberId));
        }
        if let Some(instance) = &m.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(id) {
                self.static_members.remove(instance);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
        if self.members.is_empty() {
            self.empty_since = Some(now_ms());
        }
        Some(m)
    }

    /// Kafka's `removeMemberAndUpdateGroup`: a member left or expired.
    pub fn remove_member(&mut self, id: &str, now: Instant, reason: &str) -> bool {
        if self.drop_member(id).is_none() {
            return false;
        }
        info!(group = %self.id, member = %id, reason, "member removed");
        if self.members.is_empty() {
            self.protocol_type = None;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, reason);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
        self.publish_gauge();
        true
    }

    /// Gives a static member a fresh member id (a restarted static consumer),
    /// fencing any requests still parked under the old id.
    pub fn replace_static_member(&mut self, old_id: &str, new_id: &str) {
        let Some(mut m) = self.members.shift_remove(old_id) else {
            return;
        };
        if let Some(tx) = m.join_waiter.take() {
            let _ = tx.send(join_error(ResponseError::FencedInstanceId, old_id));
        }
        if let Some(tx) = m.sync_waiter.take() {
            let _ = tx.send(sync_error(ResponseError::FencedInstanceId));
        }
        m.id = new_id.to_string();
        if let Some(instance) = &m.group_instance_id {
            self.static_members
                .insert(instance.clone(), new_id.to_string());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
        self.members.insert(new_id.to_string(), m);
    }

    /// Stores the leader's assignment and releases every parked SyncGroup.
    pub fn complete_sync(&mut self, assignments: HashMap<String, Bytes>) {
        for m in self.members.values_mut() {
            m.assignment = assignments.get(&m.id).cloned().unwrap_or_default();
        }
        let protocol_type = self.protocol_type.as_deref().map(str_bytes);
        let protocol = self.protocol.as_deref().map(str_bytes);
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync_waiter.take() {
                let _ = tx.send(
                    SyncGroupResponse::default()
                        .with_protocol_type(protocol_type.clone())
                        .with_protocol_name(protocol.clone())
                        .with_assignment(m.assignment.clone()),
                );
            }
        }
        self.transition(GroupState::Stable, "leader assignment received");
    }

    /// Periodic work: session expiry, pending-member expiry, join completion.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.expired(now))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            self.remove_member(&id, now, "session timeout expired");
        }
        self.try_complete_join(now);
    }
}
