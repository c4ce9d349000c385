"""Idempotent producer: 5,000 messages, no duplicates, in order."""

from confluent_kafka import Producer

from kafkahelp import consume_to_eof, create_topic, unique

N = 5000
PARTITIONS = 3


def test_idempotent_producer_no_duplicates_in_order(broker):
    topic = unique("idem")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "retries": 1000,
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": 2,
        "batch.num.messages": 100,
        "compression.type": "lz4",
    })
    errors = []
    acked: dict[int, list] = {}

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked.setdefault(msg.partition(), []).append((msg.offset(), msg.value()))

    for i in range(N):
        while True:
            try:
                p.produce(topic, value=f"idem-{i:05d}".encode(), partition=i % PARTITIONS, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(60) == 0, "idempotent producer did not finish"
    assert not errors, errors[:5]

    got = consume_to_eof(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    for part in range(PARTITIONS):
        want = [f"idem-{i:05d}".encode() for i in range(part, N, PARTITIONS)]
        msgs = got.get(part, [])
        values = [m.value() for m in msgs]
        assert len(values) == len(set(values)), f"partition {part}: duplicates"
        assert values == want, f"partition {part}: {len(values)} values, wrong content/order"
        assert [m.offset() for m in msgs] == list(range(len(want))), f"partition {part}: offsets"
        assert sorted(acked[part]) == [(i, v) for i, v in enumerate(want)], f"partition {part}: acked offsets"
