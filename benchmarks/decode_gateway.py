"""Decoding gateway batches alone: the compiled scan against the general decoder, one process.

    python benchmarks/decode_gateway.py [--channels 50000] [--duration 2h] [--batch 500]
                                        [--rounds 3]

The simulated feed of ``live_ingest.py --batch N`` (same seed, same regrouping into
``{"readings": [...]}`` messages of about N readings) is decoded by ``Decoder.decode`` once to
register its channels, then timed, CPU time on one thread, with the scan tried first and with
the general decoder only, alternately for ``--rounds`` rounds. Both must append the same
readings, bit for bit. Prints microseconds per reading and the share the scan decided.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.live_ingest import gateway_batches
from streamproc.batch import BatchBuilder
from streamproc.config import Settings
from streamproc.counters import Counters
from streamproc.decode import Decoder
from streamproc.registry import Registry
from streamproc.sources import simulate as sim

RECV_MS = 4_102_444_800_000  # 2100-01-01: after every simulated time


def decoder(settings: Settings, scan: bool) -> Decoder:
    d = Decoder(settings, Registry(settings.channels), Counters(), BatchBuilder())
    if not scan:
        d.gateway_min_bytes = 1 << 62
    return d


def run(d: Decoder, rows: list[tuple[str, bytes]]) -> tuple[float, tuple[bytes, ...]]:
    """CPU seconds to decode every row; the readings appended."""
    t = time.thread_time()
    for topic, payload in rows:
        d.decode(topic, payload, RECV_MS)
    seconds = time.thread_time() - t
    b = d.builder.take()
    return seconds, (b.idx.tobytes(), b.ts_ms.tobytes(), b.value.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=50_000)
    ap.add_argument("--duration", default="2h")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cfg = sim.SimConfig(args.channels, sim.parse_duration(args.duration), seed=3)
        feed, _ = sim.write(cfg, Path(folder) / "feed")
        rows = [(topic, payload) for _, topic, payload in sim.iter_messages(pq.read_table(feed))]
    rows = gateway_batches(rows, args.batch)
    settings = Settings()
    settings = replace(settings, input=replace(settings.input, max_payload_bytes=1 << 24))
    decoders = {"scan": decoder(settings, True), "general": decoder(settings, False)}
    readings = {}
    for name, d in decoders.items():
        run(d, rows)  # registers the channels; compiles or loads the scan
        readings[name] = run(d, rows)[1]
    assert readings["scan"] == readings["general"], "the two paths disagree"
    n = len(readings["scan"][0]) // 4
    print(f"{len(rows):,} messages, {n:,} readings, {args.channels:,} channels")
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(args.rounds):
        for name, d in decoders.items():
            before = d.gateway.decided
            times[name].append(run(d, rows)[0])
            share = (d.gateway.decided - before) / len(rows)
            print(f"  {name:8s} {times[name][-1] / n * 1e6:.3f} us/reading  (scan decided "
                  f"{share:.0%} of the messages)")  # fmt: skip
    best = {name: min(t) for name, t in times.items()}
    print(f"best: scan {best['scan'] / n * 1e6:.3f} us/reading, general "
          f"{best['general'] / n * 1e6:.3f}: {best['general'] / best['scan']:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
