"""kcat (Debian's kcat package, its own librdkafka) round trip and metadata."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_tool
from kafkahelp import CODECS, create_topic, unique

SCRIPT = Path(__file__).resolve().parents[1] / "kcat" / "roundtrip.sh"
N = 150
PARTITIONS = 3


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_roundtrip(broker, codec):
    kcat = require_tool("kcat")
    topic = unique(f"rt-kcat-{codec}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    t0 = int(time.time() * 1000)
    res = subprocess.run(
        ["bash", str(SCRIPT), broker.bootstrap, topic, codec, str(N)],
        capture_output=True, text=True, timeout=150, env={**os.environ, "KCAT": kcat},
    )
    assert res.returncode == 0, f"kcat failed ({res.returncode}):\n{res.stderr[-3000:]}"
    t1 = int(time.time() * 1000)
    msgs = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert len(msgs) == N, f"kcat read {len(msgs)} messages, expected {N}; stderr:\n{res.stderr[-2000:]}"

    seen = set()
    per_part: dict[int, list] = {}
    for m in msgs:
        assert m["topic"] == topic
        mm = re.fullmatch(rf"kcat-value-(\d+)-{codec}", m["payload"])
        assert mm, m
        i = int(mm.group(1))
        assert m["key"] == f"kcat-key-{i % 11}", m
        assert m["headers"] == ["h-codec", codec, "h-client", "kcat"], m
        assert m.get("tstype") == "create", m
        assert t0 - 5000 <= m["ts"] <= t1 + 5000, f"timestamp {m['ts']} outside produce window"
        assert i not in seen, f"duplicate message {i}"
        seen.add(i)
        per_part.setdefault(m["partition"], []).append((m["offset"], i))
    assert seen == set(range(N))
    assert set(per_part) <= set(range(PARTITIONS))
    for part, lst in per_part.items():
        assert [o for o, _ in lst] == list(range(len(lst))), f"partition {part}: offsets not contiguous from 0"
        idx = [i for _, i in lst]
        assert idx == sorted(idx), f"partition {part}: messages out of produce order"


def test_kcat_metadata(broker):
    kcat = require_tool("kcat")
    topic = unique("md-kcat")
    create_topic(broker.bootstrap, topic, 4)
    res = subprocess.run([kcat, "-L", "-J", "-b", broker.bootstrap, "-t", topic],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    md = json.loads(res.stdout)
    assert len(md["brokers"]) == 1, md["brokers"]
    b = md["brokers"][0]
    assert b["name"].endswith(f":{broker.port}"), f"advertised listener {b['name']} != {broker.bootstrap}"
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics, topics.keys()
    t = topics[topic]
    assert "error" not in t or not t["error"], t
    parts = sorted(t["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in parts] == [0, 1, 2, 3]
    for p in parts:
        assert p["leader"] == b["id"], p
        assert [r["id"] for r in p["replicas"]] == [b["id"]], p
        assert [r["id"] for r in p["isrs"]] == [b["id"]], p
