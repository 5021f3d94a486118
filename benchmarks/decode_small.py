"""Decoding small reports alone: messages decoded together (``streamproc.coalesce``) against the
general decoder message by message, one process.

    python benchmarks/decode_small.py [--channels 5000] [--duration 2h] [--rounds 3]

The simulated feed of ``live_ingest.py`` (one JSON object per device and report on
``city/{group}/{kind}/{device}``, integer ``ts``) in four forms: as it is; every tenth message
and every other message moved to a metric topic (``.../{device}/{metric}``, ``{"ts": ..,
"value": ..}``, its first metric); and with ``ts`` as float seconds. Each form is decoded once
to register its channels, then timed (CPU time, one thread) both ways, alternately for
``--rounds`` rounds; both must append the same readings, bit for bit, with the same counts.
Then the cost of a scan call by the number of messages it takes: the feed's reports flushed
every 1, 2, 4 and 32 messages. Prints microseconds per message.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproc.batch import BatchBuilder
from streamproc.coalesce import Coalescer
from streamproc.config import load
from streamproc.counters import Counters
from streamproc.decode import Decoder
from streamproc.registry import Registry
from streamproc.sources import simulate as sim

RECV_MS = 4_102_444_800_000  # 2100-01-01: after every simulated time
Rows = list[tuple[str, bytes]]


def on_metric_topic(topic: str, payload: bytes) -> tuple[str, bytes]:
    doc = json.loads(payload)
    metric = next(k for k in doc if k != "ts")
    return f"{topic}/{metric}", json.dumps({"ts": doc["ts"], "value": doc[metric]}).encode()


def float_ts(topic: str, payload: bytes) -> tuple[str, bytes]:
    doc = json.loads(payload)
    return topic, json.dumps({**doc, "ts": doc["ts"] / 1000}).encode()


def forms(rows: Rows) -> dict[str, Rows]:
    return {
        "reports, integer ts": rows,
        "every tenth on a metric topic": [
            on_metric_topic(*r) if i % 10 == 0 else r for i, r in enumerate(rows)
        ],
        "every other on a metric topic": [
            on_metric_topic(*r) if i % 2 == 0 else r for i, r in enumerate(rows)
        ],
        "reports, float ts": [float_ts(*r) for r in rows],
    }


class Side:
    """A decoder fed one way: ``Decoder.decode`` per message, or through a Coalescer that is
    flushed every ``every`` messages (0: when it decides, and at the end)."""

    def __init__(self, together: bool, every: int = 0):
        s = load(None)
        self.decoder = Decoder(s, Registry(s.channels), Counters(), BatchBuilder())
        self.coalescer = Coalescer(self.decoder) if together else None
        self.every = every

    def run(self, rows: Rows) -> tuple[float, tuple[bytes, ...]]:
        """CPU seconds to decode every row; the readings appended and the counts."""
        take: Callable[[str, bytes, int], None] = (
            self.coalescer.add if self.coalescer else self.decoder.decode
        )
        t = time.thread_time()
        if self.coalescer and self.every:
            for n in range(0, len(rows), self.every):
                for topic, payload in rows[n : n + self.every]:
                    take(topic, payload, RECV_MS)
                self.coalescer.flush()
        else:
            for topic, payload in rows:
                take(topic, payload, RECV_MS)
        if self.coalescer:
            self.coalescer.flush()
        seconds = time.thread_time() - t
        b = self.decoder.builder.take()
        c = self.decoder.counters
        counts = repr((sorted(c.messages.items()), sorted(c.dropped.items()))).encode()
        return seconds, (b.idx.tobytes(), b.ts_ms.tobytes(), b.value.tobytes(), counts)


def compare(name: str, rows: Rows, rounds: int, every: int = 0) -> None:
    general, together = Side(False), Side(True, every)
    general.run(rows)  # channels registered, topics learnt
    together.run(rows)
    times: dict[str, list[float]] = {"general": [], "together": []}
    for _ in range(rounds):
        for label, side in (("general", general), ("together", together)):
            seconds, out = side.run(rows)
            times[label].append(seconds / len(rows) * 1e6)
            if label == "general":
                expected = out
            elif out != expected:
                raise AssertionError(f"{name}: the readings or counts differ")
    g = " / ".join(f"{x:.2f}" for x in times["general"])
    c = " / ".join(f"{x:.2f}" for x in times["together"])
    print(f"| {name} | {g} | {c} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=5000)
    ap.add_argument("--duration", default="2h")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cfg = sim.SimConfig(args.channels, sim.parse_duration(args.duration), seed=3)
        feed, _ = sim.write(cfg, Path(folder) / "feed")
        table = pq.read_table(feed)
        rows = [(topic, payload) for _, topic, payload in sim.iter_messages(table)]
    print(f"{len(rows):,} messages; µs per message, CPU time, rounds apart\n")
    print("| stream | general decoder | decoded together |\n|---|---|---|")
    for name, form in forms(rows).items():
        compare(name, form, args.rounds)
    for every in (1, 2, 4, 32):
        compare(f"reports, flushed every {every}", rows, args.rounds, every)


if __name__ == "__main__":
    main()
