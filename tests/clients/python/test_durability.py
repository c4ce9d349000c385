"""Crash safety: kill -9 mid-produce with --flush every-batch, and hand-made torn tails."""

import os
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from kafkahelp import consume_to_eof, create_topic, produce_and_wait, producer, unique, wait_until

PARTITIONS = 3


@pytest.mark.broker_args("--flush", "every-batch")
def test_kill9_mid_produce_keeps_acked(broker):
    topic = unique("crash")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    acked: set[bytes] = set()
    failed = []
    lock = threading.Lock()
    stop = threading.Event()
    p = Producer({
        "bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 2,
        "retries": 1000, "retry.backoff.ms": 100, "message.timeout.ms": 30000,
        "enable.idempotence": False,
    })

    def cb(err, msg):
        with lock:
            if err is None:
                acked.add(msg.value())
            else:
                failed.append(err)

    sent = []

    def run():
        deadline = time.monotonic() + 60
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 200_000:
            v = f"crash-{i:06d}".encode()
            try:
                p.produce(topic, key=str(i % 50).encode(), value=v, on_delivery=cb)
                sent.append(v)
                i += 1
            except BufferError:
                pass
            p.poll(0.001 if i % 20 == 0 else 0)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_until(lambda: len(acked) >= 2000, 30, 0.02, "2000 acked messages before the crash")
        broker.kill9()
        acked_at_kill = len(acked)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(30)
    broker.start()
    remaining = p.flush(40)  # in-flight messages may now be delivered (and then must persist)
    with lock:
        acked_final = set(acked)
    assert acked_at_kill >= 2000
    got = consume_to_eof(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    values = {m.value() for msgs in got.values() for m in msgs}
    missing = acked_final - values
    assert not missing, (f"{len(missing)} acknowledged messages lost after kill -9 "
                         f"(acked {len(acked_final)}, unflushed {remaining}); e.g. {sorted(missing)[:5]}")
    assert values <= set(sent), "broker returned values never produced (corruption)"
    for part, msgs in got.items():
        offs = [m.offset() for m in msgs]
        assert offs == list(range(len(offs))), f"partition {part}: offsets not contiguous after recovery"


def _last_log_file(data_dir: Path, topic: str, partition: int) -> Path:
    pdir = Path(data_dir) / "logs" / f"{topic}-{partition}"
    logs = sorted(pdir.glob("*.log")) if pdir.is_dir() else []
    assert logs, (f"no segment files at {pdir}; data dir has: "
                  f"{sorted(str(p.relative_to(data_dir)) for p in Path(data_dir).rglob('*'))[:40]}")
    for f in logs:
        assert len(f.stem) == 20 and f.stem.isdigit(), f"segment name {f.name} is not a 20-digit base offset"
    return logs[-1]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "zeroes"])
def test_torn_tail_recovery(broker, damage):
    topic = unique(f"torn-{damage}")
    create_topic(broker.bootstrap, topic, 1)
    p = producer(broker.bootstrap, **{"linger.ms": 0})
    n = 40
    for i in range(n):  # one batch per message
        produce_and_wait(p, topic, [{"key": b"k", "value": f"torn-{i:03d}".encode() * 4}])
    del p
    broker.stop()

    seg = _last_log_file(broker.data_dir, topic, 0)
    size = seg.stat().st_size
    assert size > 0
    if damage == "garbage":
        with open(seg, "ab") as f:
            f.write(os.urandom(3) + b"\x00\x00\x00\x00\x00\x00\x00\x28\x00\x00\x01\x00" + os.urandom(77))
        intact = n
    elif damage == "truncate":
        with open(seg, "r+b") as f:
            f.truncate(size - 9)  # cut the last batch in the middle
        intact = n - 1
    else:  # a preallocated / torn page of zeroes after the last batch
        with open(seg, "ab") as f:
            f.write(b"\x00" * 4096)
        intact = n

    broker.start()
    got = consume_to_eof(broker.bootstrap, topic, [0], timeout=30).get(0, [])
    values = [m.value() for m in got]
    want = [f"torn-{i:03d}".encode() * 4 for i in range(n)]
    assert values[:intact] == want[:intact], f"fully written records lost/corrupted: got {len(values)}"
    assert len(values) == intact, f"torn batch must be dropped: got {len(values)} records, want {intact}"

    # the broker accepts new writes at the next offset
    p = producer(broker.bootstrap)
    d = produce_and_wait(p, topic, [{"key": b"k", "value": b"after-recovery"}])
    assert d[0].offset() == intact, f"new record got offset {d[0].offset()}, expected {intact}"
    got = consume_to_eof(broker.bootstrap, topic, [0], timeout=30)[0]
    assert [m.value() for m in got] == want[:intact] + [b"after-recovery"]
    assert [m.offset() for m in got] == list(range(intact + 1))
