"""Checkpoints: the whole detector state in one file, so a restarted daemon carries on where
it stopped (windows, open alerts, timers, the intervals not yet written).

One uncompressed ``.npz`` (numpy's zip of ``.npy`` arrays, read without pickle): every state
array cut to the channels in use, the channel names in registration order, and a JSON
document with the scalars, the open alerts and the alerts of the unwritten intervals (and,
with ``alerts.repeat_discount``, the channels' recent alert openings). It is
written to a temporary file, fsynced and renamed over the old one, so a crash leaves either
the old checkpoint or the new one.

A checkpoint is used only if it was made with the same format, window, tick and snapshot
interval; otherwise it is renamed ``*.rejected`` and the daemon starts fresh (logged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.alerts import Alert
from streamproc.detect import ALERT_SPEC, SEASON_SPEC
from streamproc.kernels.rules import RULES
from streamproc.pipeline import Pipeline
from streamproc.sinks.jsonl import FILE_MODE, make_dirs

FORMAT = 3
TAIL = 256  # bytes of alerts.jsonl before the checkpoint's mark kept to recognise the file
log = logging.getLogger("streamproc")


class CheckpointError(Exception):
    """A checkpoint that cannot be used with the running configuration."""


def _compat(p: Pipeline) -> dict[str, object]:
    d = p.detector
    return {
        "format": FORMAT,
        "window": d.window,
        "tick_ms": d.tick_ms,
        "interval_ms": d.interval_ms,
        "state": {
            k: [np.dtype(t).str, list(shape)] for k, (t, shape, _) in (d.spec | SEASON_SPEC).items()
        },
    }


class Checkpointer:
    """Saves one pipeline's state to ``path``. ``take()`` copies the state (between batches,
    on the event loop); ``write()`` does the file work and may run in another thread. Channel
    names are kept encoded as channels appear, so a save does not re-encode them all."""

    def __init__(self, p: Pipeline, path: Path):
        self.p = p
        self.path = Path(path)
        self._names = bytearray()
        self._named = 0

    def take(self, journal_from: int | None = None) -> dict[str, np.ndarray]:
        """``journal_from``: the first journal segment the checkpoint does not cover."""
        p, reg = self.p, self.p.registry
        d = p.detector
        n = reg.n
        if self._named < n:
            self._names += "".join(
                f"{reg.device_names.names[reg.ch_device[c]]}\t"
                f"{reg.metrics.names[reg.ch_metric[c]]}\t"
                f"{reg.kinds.names[reg.ch_kind[c]]}\t{reg.groups.names[reg.ch_group[c]]}\n"
                for c in range(self._named, n)
            ).encode()
            self._named = n
        meta = {
            **_compat(p),
            "saved_at": time.time(),
            "channels": n,
            "wm": d.wm,
            "next_tick": d.next_tick,
            "open_k": d.open_k,
            "open_alerts": [dataclasses.astuple(a) for a in p.book.open.values()],
            "open_factors": [[c, r, f] for (c, r), f in p.book.factor.items()],
            "interval_alerts": [dataclasses.astuple(a) for a in p.unwritten_alerts],
            **_alert_log_mark(p),
        }
        if journal_from is not None:
            meta["journal_from"] = journal_from
        arrays = {f"state.{k}": v[:n].copy() for k, v in d.state.items()}
        arrays |= {f"state.{k}": v[: d.season_rows].copy() for k, v in d.season.items()}
        arrays |= {f"state.{k}": v.copy() for k, v in d.alert_rows.items()}
        arrays["state.a_free"] = d.a_free.copy()
        if p.book.discount is not None:
            arrays["repeat.load"] = p.book.discount.load.copy()
            arrays["repeat.at"] = p.book.discount.at.copy()
        arrays["counts"] = d.counts.copy()
        arrays["names"] = np.frombuffer(bytes(self._names), np.uint8)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        return arrays

    def write(self, arrays: dict[str, np.ndarray]) -> int:
        """Write what ``take`` returned, atomically; returns the file size in bytes."""
        path = self.path
        make_dirs(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return path.stat().st_size


def save(p: Pipeline, path: Path) -> int:
    """Write the pipeline's state to ``path`` at once (between batches), after the interval
    files it counts as written; the size in bytes."""
    p.drain()
    c = Checkpointer(p, path)
    return c.write(c.take())


def restore(p: Pipeline, path: Path) -> dict[str, Any] | None:
    """Load ``path`` into a fresh pipeline; returns the checkpoint's metadata. None if there is
    no checkpoint; a file that does not fit the configuration is renamed ``*.rejected`` and
    None returned."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return _load(p, path)
    except (CheckpointError, OSError, ValueError, KeyError) as exc:
        aside = path.with_name(path.name + ".rejected")
        os.replace(path, aside)
        log.warning("checkpoint %s not used (%s); moved to %s, starting fresh", path, exc, aside)
        return None


def _alert_log_mark(p: Pipeline) -> dict[str, object]:
    """Where alerts.jsonl ended at the checkpoint, and the bytes just before, to know the file
    again (a rotated or edited file is not cut)."""
    try:
        size = p.alert_log.size()
        with open(p.alert_log.path, "rb") as f:
            f.seek(max(0, size - TAIL))
            tail = f.read(min(size, TAIL))
    except OSError:  # no mark: a journal replay after this checkpoint will not cut the file
        return {}
    return {"alert_log_bytes": size, "alert_log_tail": tail.hex()}


def rewind_alert_log(p: Pipeline, meta: dict[str, Any]) -> bool:
    """Cut alerts.jsonl back to where it ended at the checkpoint ``meta`` describes, before the
    journal after it is replayed (which writes those lines again). False, and the file left as
    it is, if it is not the file the checkpoint saw."""
    size, tail = meta.get("alert_log_bytes"), bytes.fromhex(meta.get("alert_log_tail", ""))
    if size is None:
        return False
    p.alert_log.flush()
    if p.alert_log.size() < size:
        return False
    with open(p.alert_log.path, "rb") as f:
        f.seek(size - len(tail))
        if f.read(len(tail)) != tail:
            return False
    if p.alert_log.size() > size:
        log.info("alerts.jsonl: %d bytes written after the checkpoint taken back; the journal "
                 "replay writes them again", p.alert_log.size() - size)  # fmt: skip
        p.alert_log.truncate(size)
    return True


def _load(p: Pipeline, path: Path) -> dict[str, Any]:
    if p.registry.n or p.detector.open_k is not None:
        raise CheckpointError("the pipeline has already processed readings")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        want = _compat(p)
        for key, value in want.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{key} differs: file {meta.get(key)}, config {value}")
        reg = p.registry
        lines = z["names"].tobytes().decode().splitlines()
        if len(lines) != meta["channels"]:
            raise CheckpointError("channel list is damaged")
        for c, line in enumerate(lines):
            device, metric, kind, group = line.split("\t")
            if reg.channel(device, metric, kind, group) != c:
                raise CheckpointError(f"channel {device}/{metric} cannot be registered again")
        d = p.detector
        d._sync()
        for name in d.spec:
            d.state[name][: reg.n] = z[f"state.{name}"]
        d.alert_rows = {name: z[f"state.{name}"].copy() for name in ALERT_SPEC}
        d.a_free = z["state.a_free"].copy()
        d.season = {name: z[f"state.{name}"].copy() for name in SEASON_SPEC}
        d.season_rows = len(d.season["se_z"])
        d.assign_seasonal()  # channels whose profile enabled the rule since the checkpoint
        d.counts[:] = z["counts"]
        if p.book.discount is not None and "repeat.load" in z:
            p.book.discount.load = z["repeat.load"].copy()
            p.book.discount.at = z["repeat.at"].copy()
    d.wm, d.next_tick, d.open_k = meta["wm"], meta["next_tick"], meta["open_k"]
    open_alerts = [Alert(*a) for a in meta["open_alerts"]]
    p.book.open = {(a.channel, RULES.index(a.rule)): a for a in open_alerts}
    p.book.factor = {(c, r): f for c, r, f in meta.get("open_factors", [])}
    p.unwritten_alerts = [Alert(*a) for a in meta["interval_alerts"]]
    log.info("checkpoint %s restored: %d channels, %d open alerts, saved %.0f s ago",
             path, reg.n, len(open_alerts), time.time() - meta["saved_at"])  # fmt: skip
    return meta
