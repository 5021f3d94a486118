"""What a person sees on the terminal: a progress bar, alert lines and the run summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from streamproc.alerts import Alert
from streamproc.pipeline import Pipeline
from streamproc.times import format_ms


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second; silent when
    stderr is not a terminal."""

    def __init__(self, pipeline: Pipeline, total: int | None, stream: TextIO | None = None):
        self.pipeline = pipeline
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0

    def __call__(self, position: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last_draw < 0.1:
            return
        self.last_draw = now
        rate = self.pipeline.counters.readings / max(now - self.start, 1e-9)
        pct = f"{100 * position / self.total:5.1f}% " if self.total else ""
        filled = int(30 * position / self.total) if self.total else 0
        bar = f"[{'#' * filled}{'.' * (30 - filled)}] " if self.total else ""
        self.stream.write(
            f"\r{bar}{pct}{self.pipeline.counters.readings:,} readings "
            f"{rate:,.0f}/s  alerts {sum(self.pipeline.alerts_by_rule.values()):,}"
        )
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def alert_printer(stream: TextIO | None = None) -> Callable[[list[Alert]], None]:
    """A pipeline listener that prints one line per alert opened or resolved."""
    out = stream or sys.stdout
    colour = out.isatty()
    marks = {"open": ("OPEN   ", "\033[31m"), "resolve": ("RESOLVE", "\033[32m")}

    def show(alerts: list[Alert]) -> None:
        for a in alerts:
            if a.event not in marks:
                continue
            label, ansi = marks[a.event]
            if colour:
                label = f"{ansi}{label}\033[0m"
            out.write(f"{format_ms(a.ts_ms)[:19]}  {label} {a.message}\n")
        out.flush()

    return show


def print_summary(pipeline: Pipeline, elapsed_s: float, stream: TextIO | None = None) -> None:
    s = pipeline.summary()
    readings = int(s["readings"])  # type: ignore[call-overload]
    rate = readings / max(elapsed_s, 1e-9)
    lines = [
        f"readings processed  {readings:,}",
        f"channels            {s['channels']:,}",
        f"elapsed             {elapsed_s:.2f} s ({rate:,.0f} readings/s)",
        f"alerts opened       {_fmt(s['alerts_opened'])}",
        f"alerts open at end  {s['alerts_open_now']}",
        f"messages            {_fmt(s['messages'])}",
        f"dropped readings    {_fmt(s['dropped'])}",
        f"snapshot intervals  {s['intervals_written']}",
    ]
    if s["sink_errors"]:
        lines.append(f"sink errors         {_fmt(s['sink_errors'])}")
    (stream or sys.stdout).write("\n".join(lines) + "\n")


def _fmt(d: object) -> str:
    assert isinstance(d, dict)
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"
