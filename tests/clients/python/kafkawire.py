"""Hand-rolled Kafka wire protocol pieces for the raw-socket tests.

Only what the tests need: request framing (header v1/v2), ApiVersions, Produce
v3-v8 with a hand-built record batch v2 (so its CRC can be broken on purpose)."""

from __future__ import annotations

import socket
import struct
import time

import crc32c as _crc32c

API_PRODUCE = 0
API_API_VERSIONS = 18


def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)
def u32(v): return struct.pack(">I", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v: int) -> bytes:  # zigzag
    return uvarint((v << 1) ^ (v >> 63))


def compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


def request_header(api_key: int, api_version: int, corr: int, client_id: str = "takhin-raw-test",
                   flexible: bool = False) -> bytes:
    h = i16(api_key) + i16(api_version) + i32(corr) + string(client_id)
    if flexible:
        h += b"\x00"  # empty tagged fields
    return h


def frame(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


def connect(bootstrap: str, timeout: float = 10.0) -> socket.socket:
    host, port = bootstrap.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    """n bytes, or None if the peer closed first."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(s: socket.socket) -> bytes | None:
    """One response frame payload, or None if the connection was closed/reset.

    Raises socket.timeout if the broker neither answers nor closes."""
    try:
        hdr = recv_exact(s, 4)
        if hdr is None:
            return None
        (n,) = struct.unpack(">i", hdr)
        assert 0 <= n < 64 * 1024 * 1024, f"absurd response size {n}"
        return recv_exact(s, n)
    except (ConnectionResetError, BrokenPipeError):
        return None


def wait_closed(s: socket.socket, timeout: float = 10.0) -> bool:
    """True if the peer closes (EOF or RST) within timeout; False if it stays open silently."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not chunk:
            return True
    return False


class Reader:
    def __init__(self, b: bytes):
        self.b, self.p = b, 0

    def take(self, n):
        assert self.p + n <= len(self.b), f"response too short at {self.p}+{n} > {len(self.b)}"
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def i8(self): return struct.unpack(">b", self.take(1))[0]
    def i16(self): return struct.unpack(">h", self.take(2))[0]
    def i32(self): return struct.unpack(">i", self.take(4))[0]
    def i64(self): return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def uvarint(self):
        shift = v = 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def skip_tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())

    def remaining(self):
        return len(self.b) - self.p


def api_versions_v0(s: socket.socket, corr: int = 1) -> dict[int, tuple[int, int]]:
    s.sendall(frame(request_header(API_API_VERSIONS, 0, corr)))
    resp = recv_frame(s)
    assert resp is not None, "broker closed the connection on ApiVersions v0"
    r = Reader(resp)
    assert r.i32() == corr
    err = r.i16()
    assert err == 0, f"ApiVersions v0 error {err}"
    out = {}
    for _ in range(r.i32()):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        out[k] = (lo, hi)
    return out


def record_batch(values: list[bytes], base_ts: int | None = None, corrupt_crc: bool = False,
                 corrupt_payload_after_crc: bool = False) -> bytes:
    """An uncompressed record batch v2 (magic 2), CRC32C over attributes..end."""
    ts = int(time.time() * 1000) if base_ts is None else base_ts
    recs = b""
    for i, v in enumerate(values):
        body = i8(0) + varint(0) + varint(i) + varint(-1) + varint(len(v)) + v + varint(0)
        recs += varint(len(body)) + body
    after_crc = (i16(0) + i32(len(values) - 1) + i64(ts) + i64(ts) + i64(-1) + i16(-1) + i32(-1)
                 + i32(len(values)) + recs)
    crc = _crc32c.crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    if corrupt_payload_after_crc:
        b = bytearray(after_crc)
        b[-3] ^= 0x55
        after_crc = bytes(b)
    rest = i32(0) + i8(2) + u32(crc) + after_crc  # partitionLeaderEpoch, magic, crc, ...
    return i64(0) + i32(len(rest)) + rest


def produce(s: socket.socket, version: int, topic: str, partition: int, records: bytes,
            corr: int = 10, acks: int = -1) -> dict:
    """Send a Produce (v3-v8) and return {'error_code', 'base_offset', ...} for the partition."""
    assert 3 <= version <= 8
    body = (string(None) + i16(acks) + i32(15000) + i32(1) + string(topic) + i32(1) + i32(partition)
            + i32(len(records)) + records)
    s.sendall(frame(request_header(API_PRODUCE, version, corr) + body))
    resp = recv_frame(s)
    assert resp is not None, "broker closed the connection instead of answering the Produce"
    r = Reader(resp)
    assert r.i32() == corr
    out = {}
    n_topics = r.i32()
    assert n_topics == 1
    assert r.string() == topic
    assert r.i32() == 1
    out["partition"] = r.i32()
    out["error_code"] = r.i16()
    out["base_offset"] = r.i64()
    out["log_append_time"] = r.i64()
    if version >= 5:
        out["log_start_offset"] = r.i64()
    if version >= 8:
        out["record_errors"] = [(r.i32(), r.string()) for _ in range(r.i32())]
        out["error_message"] = r.string()
    r.i32()  # throttle_time_ms
    return out
