"""Time retention (segment deletion) and log compaction."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource

from kafkahelp import admin, consume_to_eof, create_topic, produce_and_wait, producer, unique, watermarks

SEGMENT_BYTES = 16384


def describe(bootstrap, topic) -> dict:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    a = admin(bootstrap)  # keep the client alive until the future resolves
    return a.describe_configs([res], request_timeout=20)[res].result(20)


def set_topic_configs(bootstrap, topic, configs: dict) -> None:
    """IncrementalAlterConfigs; falls back to legacy AlterConfigs only if the broker
    rejects the incremental API as unsupported."""
    a = admin(bootstrap)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()])
    try:
        a.incremental_alter_configs([res], request_timeout=20)[res].result(20)
        return
    except KafkaException as e:
        if e.args[0].code() not in (KafkaError.UNSUPPORTED_VERSION, KafkaError.INVALID_REQUEST):
            raise
    current = {k: v.value for k, v in describe(bootstrap, topic).items()
               if v.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}
    current.update(configs)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config=current)
    a.alter_configs([res], request_timeout=20)[res].result(20)


@pytest.mark.broker_args("--log-retention-check-interval-ms", "200")
def test_time_retention_deletes_old_segments(broker):
    topic = unique("ret")
    create_topic(broker.bootstrap, topic, 1, {"segment.bytes": str(SEGMENT_BYTES)})
    cfg = describe(broker.bootstrap, topic)
    assert cfg["segment.bytes"].value == str(SEGMENT_BYTES)

    p = producer(broker.bootstrap, **{"batch.size": 2048, "linger.ms": 1})
    now = int(time.time() * 1000)
    old_ts = now - 2 * 3600 * 1000  # two hours ago
    n_old, n_new = 1500, 300
    old = [{"key": b"o", "value": f"old-{i:05d}-".encode() + b"p" * 80, "timestamp": old_ts + i}
           for i in range(n_old)]
    produce_and_wait(p, topic, old)
    new = [{"key": b"n", "value": f"new-{i:05d}-".encode() + b"q" * 80} for i in range(n_new)]
    produce_and_wait(p, topic, new)

    low, high = watermarks(broker.bootstrap, topic, 0)
    assert (low, high) == (0, n_old + n_new)
    time.sleep(1.0)  # default retention (7 days) must delete nothing
    assert watermarks(broker.bootstrap, topic, 0)[0] == 0, "segments deleted under default retention"

    set_topic_configs(broker.bootstrap, topic, {"retention.ms": str(3600 * 1000)})  # 1 hour
    cfg = describe(broker.bootstrap, topic)
    assert cfg["retention.ms"].value == str(3600 * 1000)
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["segment.bytes"].value == str(SEGMENT_BYTES), "incremental alter dropped another config"
    assert cfg["cleanup.policy"].value == "delete"

    deadline = time.monotonic() + 30
    low = 0
    while time.monotonic() < deadline and low == 0:
        time.sleep(0.3)
        low, high = watermarks(broker.bootstrap, topic, 0)
    assert low > 0, "no segment deleted 30 s after retention.ms made the old records expire"
    assert low <= n_old, f"log start offset {low} is past the first unexpired record {n_old}"
    assert high == n_old + n_new
    # low watermark must be a segment boundary: whole segments go
    seg_names = sorted(f.stem for f in (broker.data_dir / "logs" / f"{topic}-0").glob("*.log"))
    assert int(seg_names[0]) == low, f"first segment {seg_names[0]} != log start offset {low}"

    got = consume_to_eof(broker.bootstrap, topic, [0], timeout=30)[0]
    assert got[0].offset() == low, f"consume from earliest started at {got[0].offset()}, not {low}"
    assert [m.offset() for m in got] == list(range(low, high))
    assert [m.value() for m in got][-n_new:] == [r["value"] for r in new], "unexpired records lost"


@pytest.mark.broker_args("--log-cleaner-interval-ms", "200")
def test_compaction_keeps_latest_per_key(broker):
    topic = unique("compact")
    create_topic(broker.bootstrap, topic, 1, {
        "cleanup.policy": "compact", "segment.bytes": str(SEGMENT_BYTES),
        "delete.retention.ms": "0", "min.compaction.lag.ms": "0",
    })
    cfg = describe(broker.bootstrap, topic)
    assert cfg["cleanup.policy"].value == "compact"

    p = producer(broker.bootstrap, **{"batch.size": 4096, "linger.ms": 1})
    keys = [f"key-{k:02d}".encode() for k in range(20)]
    tomb = set(keys[:5])
    recs = []
    for round_ in range(8):
        for k in keys:
            recs.append({"key": k, "value": f"{k.decode()}-v{round_}-".encode() + b"z" * 150})
    for k in sorted(tomb):
        recs.append({"key": k, "value": None})
    delivered = produce_and_wait(p, topic, recs)
    latest = {}  # key -> (offset, value)
    for m in delivered:
        latest[m.key()] = (m.offset(), m.value())
    last_keyed = max(off for off, _ in latest.values())
    filler = [{"key": f"filler-{i:04d}".encode(), "value": b"f" * 200} for i in range(300)]  # ~70 KB
    fdel = produce_and_wait(p, topic, filler)
    high = max(m.offset() for m in fdel) + 1

    def state():
        msgs = consume_to_eof(broker.bootstrap, topic, [0], timeout=30).get(0, [])
        return msgs, [m for m in msgs if m.offset() <= last_keyed]

    deadline = time.monotonic() + 45
    while True:
        msgs, keyed = state()
        counts = {}
        for m in keyed:
            counts[m.key()] = counts.get(m.key(), 0) + 1
        # A tombstone may survive one cleaning pass, but only as the key's single latest record.
        live_tombstones = [m for m in keyed if m.value() is None and m.offset() != latest[m.key()][0]]
        compacted = (all(c == 1 for c in counts.values()) and not live_tombstones
                     and len(keyed) <= len(keys))
        if compacted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert compacted, (f"not compacted within 45 s: {len(keyed)} keyed records remain "
                       f"(dup keys: {sorted(k for k, c in counts.items() if c > 1)[:5]}, "
                       f"tombstones left: {len(live_tombstones)})")
    for m in keyed:
        assert (m.offset(), m.value()) == latest[m.key()], f"{m.key()}: not the latest value/offset"
        if m.key() in tomb:
            assert m.value() is None, f"deleted key {m.key()} has a value at offset {m.offset()}"
    assert {m.key() for m in keyed} - tomb == set(keys) - tomb
    fillers = [m for m in msgs if m.offset() > last_keyed]
    assert [m.key() for m in fillers] == [r["key"] for r in filler], "unique-key records lost by compaction"
    assert msgs[-1].offset() == high - 1
    offs = [m.offset() for m in msgs]
    assert offs == sorted(set(offs)), "offsets not strictly increasing after compaction"
    # new writes still go to the end
    d = produce_and_wait(p, topic, [{"key": b"after", "value": b"1"}])
    assert d[0].offset() == high
