"""kafka-python (pure Python client, its own protocol code) round trip for every codec."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from kafkahelp import CODECS, unique, wait_topic_metadata

N = 200
PARTITIONS = 3


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_roundtrip(broker, codec):
    topic = unique(f"rt-kp-{codec}")
    adm = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        adm.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=20000)
    finally:
        adm.close()
    wait_topic_metadata(broker.bootstrap, topic, PARTITIONS)

    base_ts = int(time.time() * 1000) - 7_200_000
    recs = []
    for i in range(N):
        recs.append((
            f"k{i % 13}".encode(),
            (f"kp-value-{i}-{codec}-" + "y" * (i % 40)).encode(),
            [("h-index", str(i).encode()), ("h-client", b"kafka-python")],
            base_ts + i * 3,
        ))

    prod = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        compression_type=None if codec == "none" else codec,
        acks="all", linger_ms=5, batch_size=8192, request_timeout_ms=20000,
    )
    try:
        futs = [prod.send(topic, key=k, value=v, headers=h, timestamp_ms=ts) for k, v, h, ts in recs]
        prod.flush(timeout=60)
        metas = [f.get(timeout=30) for f in futs]
    finally:
        prod.close(timeout=10)

    expected: dict[int, list] = {}
    for i, md in enumerate(metas):
        expected.setdefault(md.partition, []).append((md.offset, i))
    assert set(expected) == set(range(PARTITIONS))
    for part, lst in expected.items():
        lst.sort()
        assert [o for o, _ in lst] == list(range(len(lst))), f"partition {part}: non-contiguous offsets"
        assert [i for _, i in lst] == sorted(i for _, i in lst), f"partition {part}: not in produce order"

    cons = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", consumer_timeout_ms=1000, request_timeout_ms=30000,
    )
    got: dict[int, list] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        cons.assign(tps)
        cons.seek_to_beginning(*tps)
        deadline = time.monotonic() + 30
        total = 0
        while time.monotonic() < deadline and total < N:
            batch = cons.poll(timeout_ms=500)
            for tp, records in batch.items():
                got.setdefault(tp.partition, []).extend(records)
                total += len(records)
        # quiet period: nothing more must arrive
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            for tp, records in cons.poll(timeout_ms=200).items():
                got.setdefault(tp.partition, []).extend(records)
    finally:
        cons.close()

    total = sum(len(v) for v in got.values())
    assert total == N, f"consumed {total}, expected {N}"
    for part, lst in expected.items():
        msgs = got.get(part, [])
        assert [m.offset for m in msgs] == [o for o, _ in lst], f"partition {part}: offsets differ"
        for m, (off, i) in zip(msgs, lst):
            k, v, h, ts = recs[i]
            assert m.key == k, (part, off)
            assert m.value == v, (part, off)
            assert list(m.headers) == h, (part, off, m.headers)
            assert m.timestamp == ts, (part, off, m.timestamp)
            assert m.timestamp_type == 0, "expected CreateTime"
