"""Prometheus /metrics endpoint."""

import re
import urllib.request

from kafkahelp import consume_to_eof, create_topic, produce_and_wait, producer, unique

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def test_metrics_after_traffic(broker):
    before = scrape(broker.metrics_url)
    topic = unique("metrics")
    create_topic(broker.bootstrap, topic, 2)
    payload = b"m" * 1000
    produce_and_wait(producer(broker.bootstrap), topic, [{"key": str(i).encode(), "value": payload}
                                                         for i in range(100)])
    got = consume_to_eof(broker.bootstrap, topic, [0, 1])
    assert sum(len(v) for v in got.values()) == 100
    after = scrape(broker.metrics_url)
    for name in ("takhin_requests_total", "takhin_bytes_in_total"):
        assert name in after, f"{name} missing from /metrics; have {sorted(after)[:30]}"
    assert after["takhin_requests_total"] > before.get("takhin_requests_total", 0.0)
    grew = after["takhin_bytes_in_total"] - before.get("takhin_bytes_in_total", 0.0)
    assert grew >= 100 * len(payload) * 0.5, f"takhin_bytes_in_total grew by only {grew}"
