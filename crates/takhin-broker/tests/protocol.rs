//! Wire-level tests of the broker: each API answered as a client expects, and
//! bad input closes only its own connection without touching stored data.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{start_broker, start_broker_in, Client};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

fn batch(values: &[&str], compression: Compression) -> Bytes {
    // Recent timestamps: the default retention (7 days) would delete older ones.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(value.to_string())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce_request(name: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic(name))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn fetch_request(name: &str, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic(name))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

async fn create_topic(client: &mut Client, name: &str, partitions: i32) {
    let response = client
        .request(
            ApiKey::CreateTopics,
            7,
            CreateTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic(name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(1)]),
        )
        .await;
    let ResponseKind::CreateTopics(response) = response else {
        panic!("wrong response")
    };
    assert_eq!(response.topics[0].error_code, 0, "{:?}", response.topics[0]);
}

async fn fetch_values(client: &mut Client, name: &str, offset: i64) -> (i16, Vec<(i64, String)>) {
    let ResponseKind::Fetch(response) = client
        .request(ApiKey::Fetch, 12, fetch_request(name, offset))
        .await
    else {
        panic!("wrong response")
    };
    let partition = &response.responses[0].partitions[0];
    let mut records = partition.records.clone().unwrap_or_default();
    let mut values = Vec::new();
    if !records.is_empty() {
        for set in RecordBatchDecoder::decode_all(&mut records).unwrap() {
            for record in set.records {
                let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                values.push((record.offset, value));
            }
        }
    }
    (partition.error_code, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_lists_served_apis_and_falls_back_for_newer_versions() {
    let broker = start_broker().await;
    let mut client = Client::connect(broker.running.kafka_addr).await;
    let ResponseKind::ApiVersions(response) = client
        .request(ApiKey::ApiVersions, 3, ApiVersionsRequest::default())
        .await
    else {
        panic!("wrong response")
    };
    assert_eq!(response.error_code, 0);
    assert_eq!(response.api_keys.len(), takhin_wire::SERVED_APIS.len());

    // ApiVersions v42: answered in the v0 shape with UNSUPPORTED_VERSION (35).
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    frame.put_i16(ApiKey::ApiVersions as i16);
    frame.put_i16(42);
    frame.put_i32(77);
    frame.put_i16(-1);
    frame.put_u8(0);
    let len = (frame.len() - 4) as i32;
    frame[0..4].copy_from_slice(&len.to_be_bytes());
    client.send_raw(&frame).await;
    let body = client.read_frame().await.unwrap();
    assert_eq!(&body[0..4], &77i32.to_be_bytes());
    assert_eq!(&body[4..6], &35i16.to_be_bytes());
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_and_list_offsets_round_trip_every_codec() {
    let broker = start_broker().await;
    let mut client = Client::connect(broker.running.kafka_addr).await;
    create_topic(&mut client, "codecs", 1).await;
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    let mut expected = Vec::new();
    for (round, codec) in codecs.into_iter().enumerate() {
        let values: Vec<String> = (0..3).map(|i| format!("{codec:?}-{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let ResponseKind::Produce(response) = client
            .request(
                ApiKey::Produce,
                9,
                produce_request("codecs", batch(&refs, codec)),
            )
            .await
        else {
            panic!("wrong response")
        };
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, 0);
        assert_eq!(partition.base_offset, round as i64 * 3);
        for (i, value) in values.into_iter().enumerate() {
            expected.push((round as i64 * 3 + i as i64, value));
        }
    }
    let (error, values) = fetch_values(&mut client, "codecs", 0).await;
    assert_eq!(error, 0);
    assert_eq!(values, expected);
    // kafka-protocol's encoder writes one batch per record here, so a fetch
    // from 4 starts exactly there (mid-batch reads are tested in takhin-log).
    let (_, values) = fetch_values(&mut client, "codecs", 4).await;
    assert_eq!(values, expected[4..]);

    let ResponseKind::ListOffsets(response) = client
        .request(
            ApiKey::ListOffsets,
            7,
            ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic("codecs"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]),
        )
        .await
    else {
        panic!("wrong response")
    };
    assert_eq!(response.topics[0].partitions[0].offset, 15);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_batch_is_refused_and_nothing_is_stored() {
    let broker = start_broker().await;
    let mut client = Client::connect(broker.running.kafka_addr).await;
    create_topic(&mut client, "crc", 1).await;
    let good = batch(&["one"], Compression::None);
    client
        .request(ApiKey::Produce, 9, produce_request("crc", good.clone()))
        .await;
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let ResponseKind::Produce(response) = client
        .request(ApiKey::Produce, 9, produce_request("crc", Bytes::from(bad)))
        .await
    else {
        panic!("wrong response")
    };
    assert_eq!(response.responses[0].partition_responses[0].error_code, 2);
    let (_, values) = fetch_values(&mut client, "crc", 0).await;
    assert_eq!(values, vec![(0, "one".to_owned())]);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let broker = start_broker().await;
    let addr = broker.running.kafka_addr;
    let mut healthy = Client::connect(addr).await;
    create_topic(&mut healthy, "safe", 1).await;
    healthy
        .request(
            ApiKey::Produce,
            9,
            produce_request("safe", batch(&["kept"], Compression::None)),
        )
        .await;

    let bad_frames: Vec<Vec<u8>> = vec![
        // garbage body for Metadata v9
        [
            &[0, 0, 0, 12][..],
            &[0, 3, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
        ]
        .concat(),
        // unknown api key
        [&[0, 0, 0, 8][..], &[0x7f, 0x7f, 0, 0, 0, 0, 0, 1]].concat(),
        // unsupported Metadata version
        [&[0, 0, 0, 10][..], &[0, 3, 0x10, 0, 0, 0, 0, 1, 0xff, 0xff]].concat(),
        // negative size
        vec![0xff, 0xff, 0xff, 0xf0],
        // larger than socket.request.max.bytes
        (200u32 * 1024 * 1024).to_be_bytes().to_vec(),
        // truncated: claims 100 bytes, sends 3, then closes the write side
        [&[0, 0, 0, 100][..], &[0, 18, 0]].concat(),
    ];
    for frame in bad_frames {
        let mut client = Client::connect(addr).await;
        client.send_raw(&frame).await;
        if frame.len() == 7 {
            // Truncated frame: the broker only notices when the peer gives up.
            drop(client);
            continue;
        }
        assert!(
            client.read_frame().await.is_none(),
            "connection should close: {frame:?}"
        );
    }
    let ResponseKind::Metadata(response) = healthy
        .request(
            ApiKey::Metadata,
            12,
            MetadataRequest::default().with_topics(None),
        )
        .await
    else {
        panic!("wrong response")
    };
    assert_eq!(response.topics.len(), 1);
    let (_, values) = fetch_values(&mut healthy, "safe", 0).await;
    assert_eq!(values, vec![(0, "kept".to_owned())]);
    broker.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_topics_survive_restart() {
    let broker = start_broker().await;
    let mut client = Client::connect(broker.running.kafka_addr).await;
    create_topic(&mut client, "durable", 2).await;
    client
        .request(
            ApiKey::Produce,
            9,
            produce_request("durable", batch(&["a", "b"], Compression::Lz4)),
        )
        .await;
    let dir = broker.dir;
    broker.running.shutdown().await;

    let broker = start_broker_in(dir).await;
    let mut client = Client::connect(broker.running.kafka_addr).await;
    let (_, values) = fetch_values(&mut client, "durable", 0).await;
    assert_eq!(values, vec![(0, "a".to_owned()), (1, "b".to_owned())]);
    let ResponseKind::Metadata(response) = client
        .request(
            ApiKey::Metadata,
            12,
            MetadataRequest::default().with_topics(None),
        )
        .await
    else {
        panic!("wrong response")
    };
    assert_eq!(response.topics[0].partitions.len(), 2);
    broker.running.shutdown().await;
}
