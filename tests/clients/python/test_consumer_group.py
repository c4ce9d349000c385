"""Consumer groups with confluent-kafka: exactly-once delivery across members under
stable membership, rebalances on join/leave, committed offsets surviving a broker
restart."""

import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kafkahelp import create_topic, produce_and_wait, producer, unique, wait_until

PARTITIONS = 6


class Member:
    """One group member polling in its own thread, committing synchronously per message."""

    def __init__(self, name: str, bootstrap: str, group: str, topic: str, run_s: float = 150.0):
        self.name = name
        self.topic = topic
        self.lock = threading.Lock()
        self.consumed: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        self.assignment: set[int] = set()
        self.assign_events: list[set[int]] = []
        self.revoke_events: list[set[int]] = []
        self.errors: list[str] = []
        self.commit_failures = 0
        self.stop = threading.Event()
        self.closed = threading.Event()
        self.deadline = time.monotonic() + run_s  # hard bound on the poll loop
        self.c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
            "max.poll.interval.ms": 60000,
            "partition.assignment.strategy": "range",
        })
        self.t = threading.Thread(target=self._run, name=name, daemon=True)

    def _on_assign(self, consumer, parts):
        with self.lock:
            self.assignment = {p.partition for p in parts}
            self.assign_events.append(set(self.assignment))

    def _on_revoke(self, consumer, parts):
        with self.lock:
            self.revoke_events.append({p.partition for p in parts})
            self.assignment = set()

    def start(self):
        self.c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.t.start()
        return self

    def _run(self):
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                m = self.c.poll(0.2)
                if m is None:
                    continue
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        self.errors.append(str(m.error()))
                    continue
                with self.lock:
                    self.consumed.append((m.partition(), m.offset(), m.value()))
                try:
                    self.c.commit(message=m, asynchronous=False)
                except KafkaException as e:
                    # Can only legitimately happen while a rebalance is in progress.
                    self.commit_failures += 1
                    self.errors.append(f"commit: {e}")
        finally:
            self.c.close()  # leaves the group
            self.closed.set()

    def leave(self, timeout=20):
        self.stop.set()
        self.t.join(timeout)
        assert self.closed.is_set(), f"{self.name} did not close"

    def snapshot(self):
        with self.lock:
            return set(self.assignment), list(self.consumed), len(self.assign_events)


def wait_balanced(members, timeout=45.0):
    """Wait until the live members' assignments partition all 6 partitions, each non-empty."""
    def ok():
        assigns = [m.snapshot()[0] for m in members]
        union = set().union(*assigns)
        return (all(assigns) and sum(len(a) for a in assigns) == PARTITIONS
                and union == set(range(PARTITIONS))) and assigns
    return wait_until(ok, timeout, 0.1, f"balanced assignment over {[m.name for m in members]}")


def all_consumed(members, expected_values: set[bytes]):
    got = set()
    for m in members:
        got |= {v for _, _, v in m.snapshot()[1]}
    return expected_values <= got


def make_recs(prefix: str, n: int):
    return [{"key": f"k{i % 37}".encode(), "value": f"{prefix}-{i}".encode()} for i in range(n)]


def test_consumer_group_rebalance_and_restart(broker):
    topic = unique("grp")
    group = unique("group")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    p = producer(broker.bootstrap)

    members = [Member(f"m{i}", broker.bootstrap, group, topic).start() for i in range(3)]
    live = list(members)
    try:
        # ---- phase 1: stable membership, exactly once ----
        assigns = wait_balanced(live)
        assert all(len(a) == 2 for a in assigns), f"range assignor over 3 members should give 2 each: {assigns}"
        recs1 = make_recs("p1", 600)
        produce_and_wait(p, topic, recs1)
        want1 = {r["value"] for r in recs1}
        wait_until(lambda: all_consumed(live, want1), 60, 0.2, "phase 1 fully consumed")
        time.sleep(1.0)  # let any duplicate show up
        consumed1 = [x for m in live for x in m.snapshot()[1]]
        pairs = [(part, off) for part, off, _ in consumed1]
        assert len(pairs) == len(set(pairs)) == 600, (
            f"stable membership must deliver each message exactly once: {len(pairs)} deliveries, "
            f"{len(set(pairs))} distinct")
        assert {v for _, _, v in consumed1} == want1
        for m in live:
            assert not m.errors, f"{m.name}: {m.errors[:3]}"
            mine = {part for part, _, _ in m.snapshot()[1]}
            assert mine <= m.snapshot()[0], f"{m.name} consumed outside its assignment"

        # ---- phase 2: a 4th member joins ----
        events_before = [m.snapshot()[2] for m in live]
        m3 = Member("m3", broker.bootstrap, group, topic).start()
        members.append(m3)
        live.append(m3)
        wait_until(lambda: m3.snapshot()[0], 45, 0.1, "4th member gets partitions")
        assigns = wait_balanced(live)
        assert sorted(len(a) for a in assigns) == [1, 1, 2, 2], assigns
        for m, before in zip(live[:3], events_before):
            assert m.snapshot()[2] > before, f"{m.name} saw no on_assign after the join"
        recs2 = make_recs("p2", 400)
        produce_and_wait(p, topic, recs2)

        # ---- phase 3: one member leaves ----
        leaver = live.pop(0)
        leaver.leave()
        assigns = wait_balanced(live)
        assert sorted(len(a) for a in assigns) == [2, 2, 2], assigns
        recs3 = make_recs("p3", 400)
        produce_and_wait(p, topic, recs3)
        want = want1 | {r["value"] for r in recs2} | {r["value"] for r in recs3}
        wait_until(lambda: all_consumed(members, want), 60, 0.2, "all phases consumed")
        every = [x for m in members for x in m.snapshot()[1]]
        assert {v for _, _, v in every} == want, "consumed something never produced"
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.t.join(20)

    # Every member has closed; each committed synchronously after each message.
    ends = {}
    for part in range(PARTITIONS):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("wm")})
        ends[part] = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10, cached=False)[1]
        c.close()
    assert sum(ends.values()) == 1400

    # ---- phase 4: produce after the commit, restart the broker, resume ----
    recs4a = make_recs("p4a", 50)
    produce_and_wait(p, topic, recs4a)
    broker.restart()
    recs4b = make_recs("p4b", 50)
    produce_and_wait(p, topic, recs4b)
    want4 = {r["value"] for r in recs4a} | {r["value"] for r in recs4b}

    c = Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "session.timeout.ms": 10000, "heartbeat.interval.ms": 500,
    })
    try:
        committed = c.committed([TopicPartition(topic, q) for q in range(PARTITIONS)], timeout=20)
        assert {tp.partition: tp.offset for tp in committed} == ends, "committed offsets lost by restart"
        c.subscribe([topic])
        got = []
        deadline = time.monotonic() + 60
        quiet_until = None
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                if quiet_until and time.monotonic() > quiet_until:
                    break
                continue
            got.append(m.value())
            if len(got) >= len(want4) and quiet_until is None:
                quiet_until = time.monotonic() + 2.0
        assert sorted(got) == sorted(want4), (
            f"resumed consumer got {len(got)} messages; expected only the {len(want4)} produced after the "
            f"commit; unexpected: {sorted(set(got) - want4)[:5]} missing: {sorted(want4 - set(got))[:5]}")
    finally:
        c.close()
