"""Client-side helpers shared by the tests (confluent-kafka based)."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(bootstrap: str, name: str, partitions: int, config: dict | None = None,
                 timeout: float = 20.0) -> None:
    a = admin(bootstrap)
    nt = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
    futs = a.create_topics([nt], operation_timeout=timeout, request_timeout=timeout)
    futs[name].result(timeout)
    wait_topic_metadata(bootstrap, name, partitions, timeout)


def wait_topic_metadata(bootstrap: str, name: str, partitions: int, timeout: float = 20.0) -> None:
    a = admin(bootstrap)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = a.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
            p.leader >= 0 for p in t.partitions.values()
        ):
            return
        last = t
        time.sleep(0.1)
    raise AssertionError(f"topic {name} metadata never showed {partitions} partitions with leaders: {last}")


def producer(bootstrap: str, **conf) -> Producer:
    base = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5}
    base.update({k.replace("_", "."): v for k, v in conf.items()})
    return Producer(base)


def produce_and_wait(p: Producer, topic: str, records: list[dict], timeout: float = 60.0) -> list:
    """Produce records (dicts of produce() kwargs); return delivered Message list (in callback order).

    Fails if any delivery failed or did not complete within timeout."""
    delivered, errors = [], []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    for r in records:
        while True:
            try:
                p.produce(topic, on_delivery=cb, **r)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still in flight after {timeout}s"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(delivered) == len(records)
    return delivered


def consumer(bootstrap: str, **conf) -> Consumer:
    base = {
        "bootstrap.servers": bootstrap,
        "group.id": unique("reader"),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }
    base.update(conf)
    return Consumer(base)


def consume_to_eof(bootstrap: str, topic: str, partitions, start=None, timeout: float = 30.0,
                   quiet_s: float = 0.5) -> dict[int, list]:
    """Read each partition from `start` (default: beginning) to its end.

    Returns {partition: [Message,...]}.  After every partition reached EOF it keeps
    polling for `quiet_s` to catch extra (unexpected) messages."""
    from confluent_kafka import OFFSET_BEGINNING

    def start_of(p):
        if start is None:
            return OFFSET_BEGINNING
        if isinstance(start, dict):
            return start.get(p, OFFSET_BEGINNING)
        return start

    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, start_of(p)) for p in partitions])
        out: dict[int, list] = defaultdict(list)
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        quiet_until = None
        while True:
            now = time.monotonic()
            if quiet_until is not None and now >= quiet_until:
                break
            if now >= deadline:
                if eof >= set(partitions):
                    break
                raise AssertionError(
                    f"did not reach end of {topic} partitions {sorted(set(partitions) - eof)} within "
                    f"{timeout}s; got {sum(len(v) for v in out.values())} messages")
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    if eof >= set(partitions) and quiet_until is None:
                        quiet_until = time.monotonic() + quiet_s
                    continue
                raise KafkaException(m.error())
            out[m.partition()].append(m)
            eof.discard(m.partition())
        return dict(out)
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str, partition: int, timeout: float = 10.0) -> tuple[int, int]:
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout, cached=False)
    finally:
        c.close()


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")
