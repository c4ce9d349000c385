"""Malformed input on raw sockets must never take the broker down, nor disturb a
well-behaved client on another connection."""

import os
import random
import socket
import struct
import time

import pytest
from confluent_kafka import TopicPartition

from kafkahelp import consumer, create_topic, produce_and_wait, producer, unique, watermarks
from kafkawire import (
    API_API_VERSIONS, Reader, api_versions_v0, compact_string, connect, frame, i16, i32, produce,
    record_batch, recv_frame, request_header, wait_closed,
)

UNSUPPORTED_VERSION = 35
CORRUPT_MESSAGE = 2


class Canary:
    """A confluent-kafka producer + consumer kept open across the whole test."""

    def __init__(self, bootstrap):
        self.topic = unique("canary")
        create_topic(bootstrap, self.topic, 1)
        self.p = producer(bootstrap)
        self.c = consumer(bootstrap, **{"enable.partition.eof": False})
        self.c.assign([TopicPartition(self.topic, 0, 0)])
        self.n = 0

    def check(self, label=""):
        v = f"canary-{self.n}".encode()
        produce_and_wait(self.p, self.topic, [{"value": v}], timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = self.c.poll(0.2)
            if m is None or m.error():
                continue
            assert m.value() == f"canary-{m.offset()}".encode()
            if m.value() == v:
                self.n += 1
                return
        raise AssertionError(f"canary client stopped working {label}")

    def close(self):
        self.c.close()


@pytest.fixture
def canary(broker):
    c = Canary(broker.bootstrap)
    c.check("before the bad input")
    yield c
    c.close()


def closed_or_answered(s, corr):
    """The broker must either close the connection or answer with our correlation id."""
    try:
        resp = recv_frame(s)
    except socket.timeout:
        pytest.fail("broker neither answered nor closed the connection within 10 s")
    if resp is None:
        return None
    assert struct.unpack(">i", resp[:4])[0] == corr, "response with a wrong correlation id"
    return resp


def test_garbage_body(broker, canary):
    # Metadata v4 whose topics array claims 2^31-1 entries, followed by junk.
    with connect(broker.bootstrap) as s:
        s.sendall(frame(request_header(3, 4, 7) + b"\x7f\xff\xff\xff" + os.urandom(13)))
        closed_or_answered(s, 7)
    # Pure random bytes (seeded) as a whole frame, several times.
    rng = random.Random(1234)
    for i in range(20):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        with connect(broker.bootstrap) as s:
            s.settimeout(3)
            s.sendall(frame(payload))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
        assert broker.alive(), f"broker died on random frame #{i}: {payload[:16].hex()}"
    canary.check("after garbage frames")
    assert broker.alive()


def test_truncated_frame(broker, canary):
    # Announce 100 bytes, send 10, then half-close: broker must drop the connection.
    with connect(broker.bootstrap) as s:
        s.sendall(i32(100) + request_header(18, 0, 3)[:10])
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s), "broker kept a half-closed truncated connection open"
    # Announce 100 bytes, send 10 and keep the connection open: other clients unaffected.
    s = connect(broker.bootstrap)
    try:
        s.sendall(i32(100) + request_header(18, 0, 3)[:10])
        time.sleep(0.5)
        canary.check("while a truncated frame is pending on another connection")
        # the stalled connection still works as a byte stream: complete it with junk
        # and the broker must answer or close, not hang.
        s.sendall(b"\x00" * 90)
        s.settimeout(10)
        try:
            recv_frame(s)  # junk frame: an answer or a close are both fine, a hang is not
        except socket.timeout:
            pytest.fail("broker neither answered nor closed after the stalled frame was completed")
    finally:
        s.close()
    # A length prefix cut in half.
    with connect(broker.bootstrap) as s:
        s.sendall(b"\x00\x00")
        s.shutdown(socket.SHUT_WR)
        assert wait_closed(s)
    canary.check("after truncated frames")
    assert broker.alive()


def test_unknown_api_key(broker, canary):
    with connect(broker.bootstrap) as s:
        s.sendall(frame(request_header(9999, 0, 42) + b"\x00" * 8))
        resp = closed_or_answered(s, 42)
        if resp is not None:
            # If the broker answers, it must be an error, and the connection must stay usable.
            err = struct.unpack(">h", resp[4:6])[0] if len(resp) >= 6 else None
            assert err != 0, "unknown API key answered with error_code 0"
            assert api_versions_v0(s, corr=43)
    with connect(broker.bootstrap) as s:
        s.sendall(frame(request_header(-5, 0, 44)))
        closed_or_answered(s, 44)
    canary.check("after unknown API keys")
    assert broker.alive()


def test_unsupported_api_versions_version_gets_v0_fallback(broker, canary):
    """KIP-511: ApiVersions at a version the broker does not know is answered with a
    v0-shaped response carrying UNSUPPORTED_VERSION and the supported API list."""
    with connect(broker.bootstrap) as s:
        body = compact_string("takhin-test") + compact_string("9.9.9") + b"\x00"
        s.sendall(frame(request_header(API_API_VERSIONS, 127, 77, flexible=True) + body))
        resp = recv_frame(s)
        assert resp is not None, "broker closed the connection instead of the KIP-511 fallback"
        r = Reader(resp)
        assert r.i32() == 77, "correlation id"
        assert r.i16() == UNSUPPORTED_VERSION
        n = r.i32()
        assert 0 < n < 200, f"api_keys array length {n}"
        apis = {}
        for _ in range(n):
            k, lo, hi = r.i16(), r.i16(), r.i16()
            apis[k] = (lo, hi)
        assert API_API_VERSIONS in apis and apis[API_API_VERSIONS][0] == 0 and apis[API_API_VERSIONS][1] >= 3
        assert 0 in apis and 1 in apis and 3 in apis, f"Produce/Fetch/Metadata missing: {sorted(apis)}"
        # a normal ApiVersions v0 on a new connection lists the same APIs
    with connect(broker.bootstrap) as s2:
        assert set(api_versions_v0(s2)) == set(apis)
    canary.check("after unsupported ApiVersions")


@pytest.mark.parametrize("size", [104857600 + 1, 0x7FFFFFFF, -1, -2147483648])
def test_oversized_or_negative_frame(broker, canary, size):
    with connect(broker.bootstrap) as s:
        s.sendall(struct.pack(">i", size) + request_header(18, 0, 5))
        try:
            resp = recv_frame(s)
        except socket.timeout:
            pytest.fail(f"broker neither answered nor closed after a frame of size {size}")
        if resp is not None:
            err = struct.unpack(">h", resp[4:6])[0]
            assert err != 0, "oversized frame answered with success"
    canary.check(f"after frame size {size}")
    assert broker.alive()


def test_corrupt_crc_rejected_and_not_stored(broker, canary):
    topic = unique("crc")
    create_topic(broker.bootstrap, topic, 1)
    with connect(broker.bootstrap) as s:
        apis = api_versions_v0(s)
        lo, hi = apis[0]
        version = min(8, hi)
        assert version >= max(3, lo), f"Produce versions {lo}..{hi} do not include v3..v8"
        # A correct hand-built batch is accepted (proves the request itself is well formed).
        ok = produce(s, version, topic, 0, record_batch([b"good-0", b"good-1"]), corr=11)
        assert ok["error_code"] == 0, ok
        assert ok["base_offset"] == 0, ok
        bad = produce(s, version, topic, 0, record_batch([b"bad-crc"], corrupt_crc=True), corr=12)
        assert bad["error_code"] == CORRUPT_MESSAGE, bad
        bad2 = produce(s, version, topic, 0,
                       record_batch([b"flipped-payload"], corrupt_payload_after_crc=True), corr=13)
        assert bad2["error_code"] == CORRUPT_MESSAGE, bad2
        ok2 = produce(s, version, topic, 0, record_batch([b"good-2"]), corr=14)
        assert ok2["error_code"] == 0 and ok2["base_offset"] == 2, ok2
    assert watermarks(broker.bootstrap, topic, 0) == (0, 3), "a corrupt batch was stored"
    from kafkahelp import consume_to_eof
    got = consume_to_eof(broker.bootstrap, topic, [0])[0]
    assert [m.value() for m in got] == [b"good-0", b"good-1", b"good-2"]
    canary.check("after corrupt batches")
