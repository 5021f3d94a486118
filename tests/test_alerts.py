"""The repeat discount: a channel that keeps alerting has its alerts ranked lower."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.streaming import eval_settings, run_series
from streamproc.alerts import Alert, RepeatDiscount
from streamproc.config import ConfigError, Settings, from_dict
from streamproc.pipeline import Pipeline

HOUR_MS = 3_600_000


def test_earlier_openings_weigh_by_their_age() -> None:
    d = RepeatDiscount(0.5, 3600)
    assert d.factor(0, 0) == 1.0  # nothing before it
    assert d.factor(0, HOUR_MS) == pytest.approx(1 / (1 + 0.5 * math.exp(-1)))
    load = 1 + math.exp(-1)  # the two openings, as of the second
    assert d.factor(0, 3 * HOUR_MS) == pytest.approx(1 / (1 + 0.5 * load * math.exp(-2)))
    assert d.factor(1000, 3 * HOUR_MS) == 1.0  # another channel, its first alert


def _run(alerts: dict[str, float]) -> list[Alert]:
    """A pipe pressure channel that breaches its upper limit (10 bar) for 15 minutes every
    3 hours, each time higher (past the critical limit from the fourth time: an update), for
    two days; the alerts it raises."""
    ts = 1_767_571_200_000 + np.arange(2 * 24 * 60, dtype=np.int64) * 60_000  # a minute apart
    x = np.full(len(ts), 5.0)
    for k, start in enumerate(range(30, len(ts) - 30, 180)):
        x[start] = 11
        x[start + 1 : start + 15] = 11 + k
    limits = {"above": 10, "clear_below": 9.5, "critical_above": 14}
    s = from_dict({"alerts": {"hold_s": 300, **alerts}, "thresholds": {"pipe.pressure": limits}})
    return run_series(ts, x, eval_settings("pipe", s), "pipe", "pressure")[1]


def test_a_channel_that_keeps_alerting_has_its_alerts_ranked_lower() -> None:
    k, tau_s = 0.5, 6 * 3600
    plain = _run({})
    assert plain == _run({"repeat_discount": 0})  # off by default
    ranked = _run({"repeat_discount": k, "repeat_tau_s": tau_s})
    opens = [a for a in plain if a.event == "open"]
    assert len(opens) >= 15 and len(ranked) == len(plain)
    assert sum(a.event == "update" for a in plain) >= 10
    factor = {}
    for i, a in enumerate(opens):  # every rule's earlier openings count, by their age
        load = sum(math.exp(-(a.opened_at_ms - b.opened_at_ms) / (tau_s * 1000)) for b in opens[:i])
        factor[a.id] = 1 / (1 + k * load)
    for a, b in zip(plain, ranked, strict=True):
        assert (b.id, b.event, b.ts_ms, b.rule) == (a.id, a.event, a.ts_ms, a.rule)
        assert b.score == pytest.approx(a.score * factor[a.id], rel=1e-9)  # open, update, resolve
    late = [b.score / a.score for a, b in zip(plain, ranked, strict=True) if a.event == "open"]
    assert late[0] == 1.0 and max(late[5:]) < 0.7  # the later ones, lower


def test_the_discount_must_be_a_finite_non_negative_number() -> None:
    for bad in ({"repeat_discount": -0.1}, {"repeat_discount": math.inf}, {"repeat_tau_s": 0}):
        with pytest.raises(ConfigError):
            from_dict({"alerts": bad})


def test_a_reload_turns_the_discount_on_and_off_and_keeps_the_history(tmp_path: Path) -> None:
    p = Pipeline(Settings(), tmp_path)
    assert p.book.discount is None
    p.reload(from_dict({"alerts": {"repeat_discount": 0.5}}))
    d = p.book.discount
    assert d is not None and d.factor(0, 0) == 1.0
    p.reload(from_dict({"alerts": {"repeat_discount": 0.2, "repeat_tau_s": 60}}))
    assert p.book.discount is d and (d.k, d.tau_ms, d.load[0]) == (0.2, 60_000, 1.0)
    p.reload(Settings())
    assert p.book.discount is None
    p.close()
