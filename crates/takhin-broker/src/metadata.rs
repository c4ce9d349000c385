//! Metadata, DescribeCluster and FindCoordinator: what the cluster looks like to
//! a client. There is one node; it leads every partition and coordinates every
//! group.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    DescribeClusterRequest, DescribeClusterResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::topics::{validate_topic_name, Topic};
use crate::{str_bytes, Broker};

/// Kafka's "authorized operations not requested" marker.
const OPERATIONS_OMITTED: i32 = i32::MIN;
const COORDINATOR_KEY_GROUP: i8 = 0;

impl Broker {
    fn topic_metadata(&self, topic: &Topic) -> MetadataResponseTopic {
        let node = self.config.node_id.into();
        let partitions = (0..topic.partition_count())
            .map(|index| {
                MetadataResponsePartition::default()
                    .with_partition_index(index)
                    .with_leader_id(node)
                    // No leader epochs yet: -1 tells clients to skip epoch
                    // validation (KIP-320) instead of asking OffsetForLeaderEpoch.
                    .with_leader_epoch(-1)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(str_bytes(&topic.name))))
            .with_topic_id(topic.id)
            .with_is_internal(false)
            .with_partitions(partitions)
            .with_topic_authorized_operations(OPERATIONS_OMITTED)
    }

    pub(crate) fn metadata(&self, request: MetadataRequest, version: i16) -> MetadataResponse {
        let (host, port) = self.config.advertised();
        let broker = MetadataResponseBroker::default()
            .with_node_id(self.config.node_id.into())
            .with_host(str_bytes(&host))
            .with_port(port);
        // v0 asks for all topics with an empty list; v1+ with null.
        let requested = match request.topics {
            None => None,
            Some(topics) if topics.is_empty() && version == 0 => None,
            Some(topics) => Some(topics),
        };
        // Before v4 there is no flag and Kafka auto-creates.
        let allow_auto_create =
            self.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
        let topics = match requested {
            None => self
                .topics
                .all()
                .iter()
                .map(|topic| self.topic_metadata(topic))
                .collect(),
            Some(requested) => requested
                .into_iter()
                .map(|wanted| match wanted.name {
                    Some(name) => self.named_topic_metadata(name, allow_auto_create),
                    None => match self.topics.get_by_id(wanted.topic_id) {
                        Some(topic) => self.topic_metadata(&topic),
                        // The name is nullable only from v12; before that an
                        // empty name is how Kafka answers an unknown id.
                        None => MetadataResponseTopic::default()
                            .with_name((version < 12).then(|| TopicName(str_bytes(""))))
                            .with_topic_id(wanted.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code())
                            .with_topic_authorized_operations(OPERATIONS_OMITTED),
                    },
                })
                .collect(),
        };
        MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_cluster_id(Some(str_bytes(&self.cluster_id)))
            .with_controller_id(self.config.node_id.into())
            .with_topics(topics)
            .with_cluster_authorized_operations(OPERATIONS_OMITTED)
    }

    fn named_topic_metadata(
        &self,
        name: TopicName,
        allow_auto_create: bool,
    ) -> MetadataResponseTopic {
        let text = name.0.as_str();
        if let Some(topic) = self.topics.get(text) {
            return self.topic_metadata(&topic);
        }
        let unknown = |error: ResponseError| {
            MetadataResponseTopic::default()
                .with_name(Some(name.clone()))
                .with_topic_id(Uuid::nil())
                .with_error_code(error.code())
                .with_topic_authorized_operations(OPERATIONS_OMITTED)
        };
        if validate_topic_name(text).is_err() {
            return unknown(ResponseError::InvalidTopicException);
        }
        if !allow_auto_create {
            return unknown(ResponseError::UnknownTopicOrPartition);
        }
        match self.auto_create(text) {
            Some(topic) => self.topic_metadata(&topic),
            None => unknown(ResponseError::UnknownTopicOrPartition),
        }
    }

    pub(crate) fn describe_cluster(
        &self,
        _request: DescribeClusterRequest,
        _version: i16,
    ) -> DescribeClusterResponse {
        let (host, port) = self.config.advertised();
        DescribeClusterResponse::default()
            .with_cluster_id(str_bytes(&self.cluster_id))
            .with_controller_id(self.config.node_id.into())
            .with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(self.config.node_id.into())
                .with_host(str_bytes(&host))
                .with_port(port)])
            .with_cluster_authorized_operations(OPERATIONS_OMITTED)
    }

    pub(crate) fn find_coordinator(
        &self,
        request: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let (host, port) = self.config.advertised();
        let node = self.config.node_id;
        let error = if request.key_type == COORDINATOR_KEY_GROUP {
            0
        } else {
            // Transaction coordinators do not exist until transactions do.
            ResponseError::CoordinatorNotAvailable.code()
        };
        if version >= 4 {
            let coordinators = request
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(node.into())
                        .with_host(str_bytes(&host))
                        .with_port(port)
                        .with_error_code(error)
                })
                .collect();
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_node_id(node.into())
            .with_host(str_bytes(&host))
            .with_port(port)
    }
}
