//! The API versions this broker serves. Each range is the intersection of what the
//! kafka-protocol codec can decode and what our handlers implement with the
//! semantics of that version; a version is listed only once a handler honours every
//! field it adds (for example Fetch v13+ addresses topics by id, so it is not
//! served until topic-id fetches are).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;

/// `(api, min, max)` served. Ordered by API key.
pub const SERVED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

/// The served range of `api`, or `None` when the API is not served at all.
pub fn served_versions(api: ApiKey) -> Option<VersionRange> {
    SERVED_APIS
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|&(_, min, max)| VersionRange { min, max })
}

/// The ApiVersions answer: every served API with its range, and `error_code`.
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SERVED_APIS
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_ranges_are_within_codec_ranges() {
        for &(key, min, max) in SERVED_APIS {
            let codec = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(
                codec.min <= min && max <= codec.max,
                "{key:?} {min}..={max} outside codec {codec}"
            );
        }
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in SERVED_APIS.windows(2) {
            assert!((pair[0].0 as i16) < (pair[1].0 as i16));
        }
    }
}
