"""Metrics: every documented metric is exported and listed in the README; histograms count
like Prometheus (le = less or equal); /healthz says why the daemon is not ready."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from streamproc.config import load
from streamproc.counters import Histogram
from streamproc.metrics import METRICS, Metrics, serve
from streamproc.pipeline import Pipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def _pipeline(tmp_path: Path) -> Pipeline:
    p = Pipeline(load(None), tmp_path)
    t0 = 1_767_571_200_000
    for i in range(50):
        p.message(f"city/d1/air/st{i % 5}/pm25", b'{"value": %d}' % (i % 7), t0 + i * 60_000)
    p.message("city/d1/air/st1/pm25", b"not json", t0)
    p.flush()
    return p


def test_every_metric_is_exported(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    m = Metrics(p)
    m.checkpoint_at = time.monotonic()
    m.health = lambda: ""
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    for name, kind, _ in METRICS:
        base = name.removesuffix("_total") if kind == "counter" else name
        assert base in families, name
        assert families[base].type == kind, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("streamproc_readings_total", ())] == p.counters.readings == 50
    assert samples[("streamproc_messages_total", (("result", "malformed"),))] == 1
    assert samples[("streamproc_channels", (("kind", "air"), ("state", "active")))] == 5
    assert samples[("streamproc_ready", ())] == 1
    p.close()


def test_channels_registered_since_the_last_batch_are_counted(tmp_path: Path) -> None:
    """More new channels than the detector holds rows for, scraped before their first batch."""
    p = Pipeline(load(None), tmp_path)
    for i in range(2000):
        p.message(f"city/d1/air/st{i}/pm25", b'{"value": 1}', 1_767_571_200_000)
    assert p.registry.n == 2000 > len(p.detector.state["st"])
    text = Metrics(p).render().decode()
    assert 'streamproc_channels{kind="air",state="active"} 2000.0' in text
    p.close()


def test_no_channel_ids_in_labels(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    text = Metrics(p).render().decode()
    assert "st1" not in text and "pm25" not in text
    p.close()


def test_readme_lists_every_metric() -> None:
    listed = set(re.findall(r"`(streamproc_[a-z_]+)", README.read_text()))
    assert {name for name, _, _ in METRICS} <= listed


@given(st.lists(st.floats(0, 20, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative_and_inclusive(values: list[float]) -> None:
    bounds = (0.5, 1.0, 2.0, 10.0)
    h = Histogram(bounds)
    h.observe_many(np.array(values[: len(values) // 2]))
    for v in values[len(values) // 2 :]:
        h.observe(v)
    want = [sum(v <= b for v in values) for b in bounds] + [len(values)]
    assert [c for _, c in h.buckets()] == want
    assert np.isclose(h.sum, sum(values))


def test_healthz_gives_the_reason_until_ready(tmp_path: Path) -> None:
    p = Pipeline(load(None), tmp_path)
    m = Metrics(p)
    reason = ["not connected to mqtt://127.0.0.1:1"]
    m.health = lambda: reason[0]

    async def get(port: int, path: str, method: str = "GET") -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await r.read()
        w.close()
        await w.wait_closed()
        return data

    async def scenario() -> list[bytes]:
        server = await serve(m, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        out = [await get(port, "/healthz")]
        reason[0] = ""
        out += [
            await get(port, "/healthz"),
            await get(port, "/nope"),
            await get(port, "/metrics", "POST"),
        ]
        server.close()
        await server.wait_closed()
        return out

    not_ready, ready, missing, post = asyncio.run(scenario())
    assert not_ready.startswith(b"HTTP/1.1 503") and b"not connected" in not_ready
    assert ready.startswith(b"HTTP/1.1 200") and ready.endswith(b"ready\n")
    assert missing.startswith(b"HTTP/1.1 404")
    assert post.startswith(b"HTTP/1.1 405")
    p.close()
