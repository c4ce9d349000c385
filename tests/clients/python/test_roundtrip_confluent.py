"""confluent-kafka (librdkafka) produce/consume round trip for every codec."""

import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME

from kafkahelp import CODECS, consume_to_eof, create_topic, produce_and_wait, producer, unique

N = 200
PARTITIONS = 3


def make_records(codec: str, base_ts: int) -> list[dict]:
    recs = []
    for i in range(N):
        recs.append({
            "key": f"key-{i % 17}".encode(),
            "value": (f"value-{i}-{codec}-" + "x" * (i % 50)).encode(),
            "headers": [("h-index", str(i).encode()), ("h-codec", codec.encode())],
            "timestamp": base_ts + i * 7,
        })
    return recs


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_roundtrip(broker, codec):
    topic = unique(f"rt-ck-{codec}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    base_ts = int(time.time() * 1000) - 3_600_000
    recs = make_records(codec, base_ts)
    p = producer(broker.bootstrap, **{"compression.type": codec, "batch.num.messages": 50})
    delivered = produce_and_wait(p, topic, recs)

    # expected[partition] = [(offset, record_index)] sorted by offset
    index_of = {r["value"]: i for i, r in enumerate(recs)}
    expected: dict[int, list] = {}
    for m in delivered:  # delivery reports carry no headers: identify records by value
        idx = index_of[m.value()]
        expected.setdefault(m.partition(), []).append((m.offset(), idx))
    assert set(expected) == set(range(PARTITIONS)), f"keys did not spread over partitions: {expected.keys()}"
    for part, lst in expected.items():
        lst.sort()
        offsets = [o for o, _ in lst]
        assert offsets == list(range(len(lst))), f"partition {part}: non-contiguous offsets {offsets[:10]}..."
        idxs = [i for _, i in lst]
        assert idxs == sorted(idxs), f"partition {part}: offsets not in produce order"

    got = consume_to_eof(broker.bootstrap, topic, range(PARTITIONS))
    total = sum(len(v) for v in got.values())
    assert total == N, f"consumed {total} messages, expected {N}"
    for part, lst in expected.items():
        msgs = got.get(part, [])
        assert [m.offset() for m in msgs] == [o for o, _ in lst], f"partition {part}: offsets differ"
        for m, (off, idx) in zip(msgs, lst):
            r = recs[idx]
            assert m.key() == r["key"], (part, off)
            assert m.value() == r["value"], (part, off)
            assert m.headers() == r["headers"], (part, off, m.headers())
            assert m.timestamp() == (TIMESTAMP_CREATE_TIME, r["timestamp"]), (part, off, m.timestamp())
