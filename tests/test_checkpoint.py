"""Checkpoints: a pipeline stopped mid-feed and restored carries on exactly as if it had never
stopped (same alerts, same snapshot files); an incompatible checkpoint is set aside."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streamproc import checkpoint
from streamproc.config import Settings, from_dict, load
from streamproc.pipeline import Pipeline
from streamproc.sources import simulate as sim

# every rule on, the seasonal one using its bins after minutes, and alerts ranked by their
# channel's recent alerts, so that all state is exercised
EVERY_RULE = from_dict(
    {
        "alerts": {"repeat_discount": 0.5, "repeat_tau_s": 3600},
        "rules": {
            "cusum": {"enabled": True},
            "seasonal": {
                "enabled": True,
                "min_hours": 0.05,
                "utc_offset_h": 2,
                "z_open": 2,
                "z_close": 1,
                "z_critical": 4,
            },
            "hampel": {"enabled": True},
            "neighbour": {
                "enabled": True,
                "min_intervals": 12,
                "smooth": 0.3,
                "slow_alpha": 0.05,
                "min_duration_s": 0,
            },
        },
    }
)


@pytest.fixture(scope="module")
def messages(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, str, bytes]]:
    folder = tmp_path_factory.mktemp("feed")
    feed, _ = sim.write(sim.SimConfig(channels=300, duration_s=43_200, seed=3), folder)
    return list(sim.iter_messages(pq.read_table(feed)))


def _run(settings: Settings, out: Path, messages: list[tuple[int, str, bytes]],
         cut: int | None, restore: bool = True) -> None:  # fmt: skip
    """The feed through one pipeline, or through two with a checkpoint at ``cut``."""
    p = Pipeline(settings, out)
    for ts, topic, payload in messages[:cut]:
        p.message(topic, payload, ts)
    if cut is not None:
        p.suspend()
        checkpoint.save(p, out / "state" / "checkpoint.npz")
        p = Pipeline(settings, out)
        if restore:
            assert checkpoint.restore(p, out / "state" / "checkpoint.npz")
        for ts, topic, payload in messages[cut:]:
            p.message(topic, payload, ts)
    p.close()


def _alert_lines(out: Path) -> list[str]:
    return (out / "alerts.jsonl").read_text().splitlines()


def _files(out: Path, table: str) -> dict[str, object]:
    return {
        str(f.relative_to(out)): pq.read_table(f).to_pylist()
        for f in sorted((out / table).rglob("*.parquet"))
    }


@pytest.mark.slow
def test_restart_from_checkpoint_gives_the_uninterrupted_output(
    tmp_path: Path, messages: list[tuple[int, str, bytes]]
) -> None:
    settings = EVERY_RULE
    _run(settings, tmp_path / "whole", messages, None)
    cut = len(messages) * 2 // 3  # mid-interval, with alerts open at the cut
    _run(settings, tmp_path / "split", messages, cut)
    whole = _alert_lines(tmp_path / "whole")
    assert len(whole) > 20
    assert {"cusum", "seasonal", "neighbour"} <= {json.loads(line)["rule"] for line in whole}
    assert _alert_lines(tmp_path / "split") == whole
    for table in ("snapshots", "alerts"):
        assert _files(tmp_path / "split", table) == _files(tmp_path / "whole", table)


@pytest.mark.slow
def test_without_the_checkpoint_the_output_differs(
    tmp_path: Path, messages: list[tuple[int, str, bytes]]
) -> None:
    """The control for the test above: a restart from nothing does not give the same alerts."""
    settings = load(None)
    _run(settings, tmp_path / "whole", messages, None)
    _run(settings, tmp_path / "fresh", messages, len(messages) * 2 // 3, restore=False)
    assert _alert_lines(tmp_path / "fresh") != _alert_lines(tmp_path / "whole")


def test_incompatible_checkpoint_is_set_aside(
    tmp_path: Path, messages: list[tuple[int, str, bytes]]
) -> None:
    settings = load(None)
    p = Pipeline(settings, tmp_path)
    for ts, topic, payload in messages[:2000]:
        p.message(topic, payload, ts)
    p.flush()
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(p, path)
    other = dataclasses.replace(settings, detect=dataclasses.replace(settings.detect, window=32))
    fresh = Pipeline(other, tmp_path)
    assert not checkpoint.restore(fresh, path)
    assert not path.exists() and path.with_name("checkpoint.npz.rejected").exists()
    assert fresh.registry.n == 0
    assert not checkpoint.restore(fresh, path)  # nothing there now: a fresh start
    for pipeline in (p, fresh):
        pipeline.close()


def test_checkpoint_restores_channels_and_state(
    tmp_path: Path, messages: list[tuple[int, str, bytes]]
) -> None:
    settings = EVERY_RULE
    p = Pipeline(settings, tmp_path)
    for ts, topic, payload in messages[:5000]:
        p.message(topic, payload, ts)
    p.flush()
    checkpoint.save(p, tmp_path / "c.npz")
    q = Pipeline(settings, tmp_path)
    assert checkpoint.restore(q, tmp_path / "c.npz")
    assert q.registry.n == p.registry.n
    assert [q.registry.describe(c) for c in range(q.registry.n)] == [
        p.registry.describe(c) for c in range(p.registry.n)
    ]
    for name, arr in p.detector.state.items():
        assert (q.detector.state[name][: p.registry.n].tobytes()
                == arr[: p.registry.n].tobytes()), name  # fmt: skip
    rows = p.detector.season_rows
    assert rows == q.detector.season_rows > 0
    for name, arr in p.detector.season.items():
        assert q.detector.season[name][:rows].tobytes() == arr[:rows].tobytes(), name
    for name, arr in p.detector.alert_rows.items():
        assert q.detector.alert_rows[name].tobytes() == arr.tobytes(), name
    assert q.detector.a_free.tolist() == p.detector.a_free.tolist()
    assert (q.detector.wm, q.detector.open_k, q.detector.next_tick) == (
        p.detector.wm, p.detector.open_k, p.detector.next_tick)  # fmt: skip
    assert (tmp_path / "c.npz").stat().st_mode & 0o777 == 0o640
    p.close()
    q.close()
