//! Admin APIs: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs and IncrementalAlterConfigs. Each topic in a request succeeds or
//! fails on its own with the Kafka error code and a message a person can act on.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::topic_config;
use crate::topics::TopicError;
use crate::{str_bytes, Broker};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

fn config_source(described: &topic_config::DescribedConfig) -> i8 {
    if described.is_override {
        SOURCE_TOPIC
    } else {
        SOURCE_DEFAULT
    }
}

fn message(error: &impl std::fmt::Display) -> Option<StrBytes> {
    Some(str_bytes(&error.to_string()))
}

impl Broker {
    pub(crate) fn create_topics(
        &self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse {
        let mut results = Vec::with_capacity(request.topics.len());
        for creatable in request.topics {
            let name = creatable.name.0.to_string();
            let mut result = CreatableTopicResult::default()
                .with_name(creatable.name.clone())
                .with_num_partitions(-1)
                .with_replication_factor(-1);
            if !creatable.assignments.is_empty() {
                results.push(
                    result
                        .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                        .with_error_message(Some(str_bytes(
                            "manual replica assignment is not supported on a single node",
                        ))),
                );
                continue;
            }
            let configs: BTreeMap<String, String> = creatable
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), v.to_string()))
                })
                .collect();
            let outcome = if request.validate_only {
                self.topics
                    .validate_create(
                        &name,
                        creatable.num_partitions,
                        creatable.replication_factor,
                        &configs,
                        self.config.default_partitions,
                    )
                    .map(|partitions| (partitions, None))
            } else {
                self.topics
                    .create(
                        &name,
                        creatable.num_partitions,
                        creatable.replication_factor,
                        configs,
                        self.config.default_partitions,
                    )
                    .map(|topic| (topic.partition_count(), Some(topic)))
            };
            match outcome {
                Ok((partitions, topic)) => {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1);
                    if let Some(topic) = topic {
                        result = result.with_topic_id(topic.id);
                        if version >= 5 {
                            let configs =
                                topic_config::describe_all(&topic.config(), &topic.overrides())
                                    .into_iter()
                                    .map(|described| {
                                        CreatableTopicConfigs::default()
                                            .with_name(StrBytes::from_static_str(
                                                described.key.name,
                                            ))
                                            .with_value(Some(str_bytes(&described.value)))
                                            .with_config_source(config_source(&described))
                                    })
                                    .collect();
                            result = result.with_configs(Some(configs));
                        }
                    }
                }
                Err(error) => {
                    result = result
                        .with_error_code(error.code())
                        .with_error_message(message(&error));
                }
            }
            results.push(result);
        }
        CreateTopicsResponse::default().with_topics(results)
    }

    pub(crate) fn delete_topics(
        &self,
        request: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse {
        // v6 names topics by name or id; earlier versions by name only.
        let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            request
                .topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect()
        } else {
            request
                .topic_names
                .into_iter()
                .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
                .collect()
        };
        let responses = targets
            .into_iter()
            .map(|(name, id)| {
                let name = match name {
                    Some(name) => Some(name),
                    None => self.topics.get_by_id(id).map(|t| t.name.clone()),
                };
                let result = DeletableTopicResult::default()
                    .with_name(name.as_deref().map(|n| TopicName(str_bytes(n))))
                    .with_topic_id(id);
                let Some(name) = name else {
                    return result.with_error_code(ResponseError::UnknownTopicId.code());
                };
                match self.topics.delete(&name) {
                    Ok(topic) => {
                        self.groups.forget_topic(&name);
                        result.with_topic_id(topic.id)
                    }
                    Err(error) => result
                        .with_error_code(error.code())
                        .with_error_message(message(&error)),
                }
            })
            .collect();
        DeleteTopicsResponse::default().with_responses(responses)
    }

    pub(crate) fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
        _version: i16,
    ) -> CreatePartitionsResponse {
        let results = request
            .topics
            .into_iter()
            .map(|topic| {
                let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
                if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                    return result
                        .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                        .with_error_message(Some(str_bytes(
                            "manual replica assignment is not supported on a single node",
                        )));
                }
                match self.topics.create_partitions(
                    topic.name.0.as_str(),
                    topic.count,
                    request.validate_only,
                ) {
                    Ok(()) => result,
                    Err(error) => result
                        .with_error_code(error.code())
                        .with_error_message(message(&error)),
                }
            })
            .collect();
        CreatePartitionsResponse::default().with_results(results)
    }

    pub(crate) fn describe_configs(
        &self,
        request: DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse {
        let results = request
            .resources
            .into_iter()
            .map(|resource| {
                let result = DescribeConfigsResult::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone());
                match resource.resource_type {
                    RESOURCE_BROKER => return result,
                    RESOURCE_TOPIC => {}
                    other => {
                        return result
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "resource type {other} is not supported"
                            ))))
                    }
                }
                let Some(topic) = self.topics.get(resource.resource_name.as_str()) else {
                    return result
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                        .with_error_message(Some(str_bytes("unknown topic")));
                };
                let wanted = |name: &str| {
                    resource
                        .configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                };
                let configs = topic_config::describe_all(&topic.config(), &topic.overrides())
                    .into_iter()
                    .filter(|described| wanted(described.key.name))
                    .map(|described| {
                        let source = config_source(&described);
                        let name = StrBytes::from_static_str(described.key.name);
                        let value = Some(str_bytes(&described.value));
                        let mut entry = DescribeConfigsResourceResult::default()
                            .with_name(name.clone())
                            .with_value(value.clone())
                            .with_config_source(source);
                        if request.include_synonyms {
                            entry = entry.with_synonyms(vec![DescribeConfigsSynonym::default()
                                .with_name(name)
                                .with_value(value)
                                .with_source(source)]);
                        }
                        if version >= 3 {
                            entry = entry.with_config_type(described.key.config_type as i8);
                            if request.include_documentation {
                                entry = entry.with_documentation(Some(StrBytes::from_static_str(
                                    described.key.doc,
                                )));
                            }
                        }
                        entry
                    })
                    .collect();
                result.with_configs(configs)
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    pub(crate) fn alter_configs(
        &self,
        request: AlterConfigsRequest,
        _version: i16,
    ) -> AlterConfigsResponse {
        let responses = request
            .resources
            .into_iter()
            .map(|resource| {
                let response = alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone());
                // AlterConfigs replaces the whole set of overrides.
                let overrides = resource
                    .configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| (c.name.to_string(), v.to_string()))
                    })
                    .collect();
                match self.set_topic_overrides(
                    resource.resource_type,
                    resource.resource_name.as_str(),
                    overrides,
                    request.validate_only,
                ) {
                    Ok(()) => response,
                    Err((code, text)) => response
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(&text))),
                }
            })
            .collect();
        AlterConfigsResponse::default().with_responses(responses)
    }

    pub(crate) fn incremental_alter_configs(
        &self,
        request: IncrementalAlterConfigsRequest,
        _version: i16,
    ) -> IncrementalAlterConfigsResponse {
        let responses = request
            .resources
            .into_iter()
            .map(|resource| {
                let response =
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_resource_type(resource.resource_type)
                        .with_resource_name(resource.resource_name.clone());
                let name = resource.resource_name.as_str();
                let mut overrides = match self.topics.get(name) {
                    Some(topic) if resource.resource_type == RESOURCE_TOPIC => topic.overrides(),
                    _ => BTreeMap::new(),
                };
                let mut failure = None;
                for op in &resource.configs {
                    let key = op.name.to_string();
                    let value = op.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
                    match op.config_operation {
                        OP_SET => {
                            overrides.insert(key, value);
                        }
                        OP_DELETE => {
                            overrides.remove(&key);
                        }
                        OP_APPEND | OP_SUBTRACT if key == "cleanup.policy" => {
                            let current = overrides.get(&key).cloned().unwrap_or_else(|| {
                                topic_config::describe(self.topics.defaults(), &key)
                                    .unwrap_or_default()
                            });
                            let mut items: Vec<String> = current
                                .split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect();
                            for item in value.split(',').filter(|s| !s.is_empty()) {
                                if op.config_operation == OP_APPEND {
                                    if !items.iter().any(|i| i == item) {
                                        items.push(item.to_owned());
                                    }
                                } else {
                                    items.retain(|i| i != item);
                                }
                            }
                            overrides.insert(key, items.join(","));
                        }
                        other => {
                            failure = Some((
                                ResponseError::InvalidConfig.code(),
                                format!("operation {other} is not valid for `{key}`"),
                            ));
                            break;
                        }
                    }
                }
                let outcome = match failure {
                    Some(failure) => Err(failure),
                    None => self.set_topic_overrides(
                        resource.resource_type,
                        name,
                        overrides,
                        request.validate_only,
                    ),
                };
                match outcome {
                    Ok(()) => response,
                    Err((code, text)) => response
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(&text))),
                }
            })
            .collect();
        IncrementalAlterConfigsResponse::default().with_responses(responses)
    }

    fn set_topic_overrides(
        &self,
        resource_type: i8,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), (i16, String)> {
        if resource_type != RESOURCE_TOPIC {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("altering resource type {resource_type} is not supported; only topics"),
            ));
        }
        self.topics
            .set_overrides(name, overrides, validate_only)
            .map_err(|error: TopicError| (error.code(), error.to_string()))
    }
}
