"""Topic-level semantics through confluent-kafka: ListOffsets by timestamp (time
index), LogAppendTime, max.message.bytes, CreatePartitions, DeleteTopics and
config validation errors."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource, NewPartitions, ResourceType

from kafkahelp import admin, create_topic, producer, unique


def _produce(p, topic, **kwargs):
    results = []

    def cb(err, msg):
        results.append((err, msg))

    p.produce(topic, on_delivery=cb, **kwargs)
    p.flush(20)
    assert len(results) == 1, "delivery report missing"
    return results[0]


def test_offsets_for_times_uses_time_index(broker):
    topic = unique("times")
    create_topic(broker.bootstrap, topic, 1, {"segment.bytes": "4096"})
    p = producer(broker.bootstrap, linger_ms=0)
    # Recent timestamps: records older than retention.ms would be deleted.
    base = int(time.time() * 1000) - 3_600_000
    for i in range(200):
        p.produce(topic, key=str(i), value=b"x" * 64, partition=0, timestamp=base + 1000 * i)
        if i % 7 == 0:
            p.flush(10)
    assert p.flush(20) == 0

    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g")})
    try:
        for wanted, expected in [(base, 0), (base + 1, 1), (base + 150_500, 151), (base + 199_000, 199)]:
            [tp] = c.offsets_for_times([TopicPartition(topic, 0, wanted)], timeout=10)
            assert tp.error is None
            assert tp.offset == expected, (wanted, tp.offset)
        # After the last record: no such offset (-1 in the protocol, end offset for librdkafka).
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, base + 10_000_000)], timeout=10)
        assert tp.offset in (-1, 200)
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 200)
    finally:
        c.close()


def test_log_append_time_replaces_client_timestamp(broker):
    topic = unique("lat")
    create_topic(broker.bootstrap, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    p = producer(broker.bootstrap)
    before = int(time.time() * 1000)
    err, msg = _produce(p, topic, value=b"v", timestamp=1000)
    assert err is None
    from confluent_kafka import Consumer, TIMESTAMP_LOG_APPEND_TIME

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 20
        got = None
        while got is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got = m
        assert got is not None
        ts_type, ts = got.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME
        assert before - 5000 <= ts <= int(time.time() * 1000) + 5000
    finally:
        c.close()


def test_max_message_bytes_enforced(broker):
    topic = unique("big")
    create_topic(broker.bootstrap, topic, 1, {"max.message.bytes": "2000"})
    p = producer(broker.bootstrap, compression_type="none", message_max_bytes=100000)
    err, _ = _produce(p, topic, value=b"y" * 5000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    err, _ = _produce(p, topic, value=b"y" * 500)
    assert err is None


def test_create_partitions_delete_topic_and_bad_configs(broker):
    a = admin(broker.bootstrap)
    topic = unique("grow")
    create_topic(broker.bootstrap, topic, 2)
    a.create_partitions([NewPartitions(topic, 5)])[topic].result(20)
    md = a.list_topics(topic=topic, timeout=10)
    assert len(md.topics[topic].partitions) == 5
    with pytest.raises(KafkaException) as shrink:
        a.create_partitions([NewPartitions(topic, 3)])[topic].result(20)
    assert shrink.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    bad = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "soon"})
    with pytest.raises(KafkaException) as invalid:
        a.alter_configs([bad])[bad].result(20)
    assert invalid.value.args[0].code() == KafkaError.INVALID_CONFIG
    unknown = ConfigResource(ResourceType.TOPIC, topic, set_config={"no.such.config": "1"})
    with pytest.raises(KafkaException):
        a.alter_configs([unknown])[unknown].result(20)
    # The failed alters changed nothing.
    res = ConfigResource(ResourceType.TOPIC, topic)
    configs = a.describe_configs([res])[res].result(20)
    assert configs["retention.ms"].value == str(7 * 24 * 3600 * 1000)

    a.delete_topics([topic], operation_timeout=20)[topic].result(20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if topic not in a.list_topics(timeout=10).topics:
            break
        time.sleep(0.2)
    assert topic not in a.list_topics(timeout=10).topics

    with pytest.raises(KafkaException) as bad_name:
        from confluent_kafka.admin import NewTopic

        a.create_topics([NewTopic("bad name!", 1, 1)])["bad name!"].result(20)
    assert bad_name.value.args[0].code() == KafkaError.TOPIC_EXCEPTION
