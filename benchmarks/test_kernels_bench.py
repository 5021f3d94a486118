"""Micro benchmarks (pytest-benchmark) of the detector bank on one 100k-reading batch at 10k
channels, every rule on, windows filled first, against River's scorers and the numpy and
pandas rolling z-scores on the same readings. Not part of the test run (``testpaths`` is
``tests``); run it by name:

    python -m pytest benchmarks/test_kernels_bench.py --benchmark-columns=min,median,rounds

Every round starts from the same state (a copy made in the untimed setup). The data, the
settings and the baselines are those of ``benchmarks/kernels.py``.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernels import (
    SPECIAL,
    PandasRolling,
    RingZScore,
    RiverScorer,
    Stream,
    batches,
    bench_settings,
    register,
    river_models,
    river_pass,
    river_scorers,
)
from streamproc.batch import Batch
from streamproc.counters import Counters
from streamproc.detect import Detector, warm_up
from streamproc.registry import Registry

CHANNELS = 10_000
WINDOW = 64
BATCH = 100_000
RIVER_CHANNELS = 1_000


@dataclass
class World:
    det: Detector
    ring: RingZScore
    batch: Batch
    sample: np.ndarray  # channels that River scores
    warm: list[list[float]]  # each sampled channel's last WINDOW values before the batch


@pytest.fixture(scope="module")
def world() -> World:
    settings = bench_settings(WINDOW, CHANNELS)
    warm_up(settings)
    reg = Registry(settings.channels)
    det = Detector(settings, reg, Counters())
    rows = register(reg, CHANNELS)
    normal = np.flatnonzero(np.arange(CHANNELS) % SPECIAL > 5)  # never silent nor stuck
    sample = np.sort(np.random.default_rng(1).choice(normal, RIVER_CHANNELS, replace=False))
    stream = Stream(rows, 0, sample)
    gen = batches(stream, BATCH)
    ring = RingZScore(CHANNELS, WINDOW)
    for _ in range(math.ceil((WINDOW + 2) * CHANNELS / BATCH)):
        b = next(gen)
        det.process(b)
        ring.process(b.idx, b.value)
    warm = [list(map(float, v[-WINDOW:])) for v in np.array(stream.sample_values).T]
    return World(det, ring, next(gen), sample, warm)


def _per_reading(benchmark: Any, n: int) -> None:
    benchmark.extra_info["readings"] = n
    benchmark.extra_info["ns_per_reading"] = benchmark.stats.stats.min / n * 1e9


def test_process_readings(benchmark: Any, world: World) -> None:
    """The reading kernel over the batch (``Detector._run``: ``bank.process_readings`` and
    the event drain, no timers)."""
    b = world.batch

    def run(det: Detector) -> None:
        det._run(b, 0, len(b), np.empty(len(b), np.float32), [])

    benchmark.pedantic(run, setup=lambda: ((copy.deepcopy(world.det),), {}), rounds=5)
    _per_reading(benchmark, len(b))


def test_detector_process(benchmark: Any, world: World) -> None:
    """``Detector.process`` over the batch: the kernel, dropout ticks, interval closes."""
    benchmark.pedantic(
        lambda det: det.process(world.batch),
        setup=lambda: ((copy.deepcopy(world.det),), {}),
        rounds=5,
    )
    _per_reading(benchmark, len(world.batch))


def test_numpy_ring_zscore(benchmark: Any, world: World) -> None:
    b = world.batch
    benchmark.pedantic(
        lambda ring: ring.process(b.idx, b.value),
        setup=lambda: ((copy.deepcopy(world.ring),), {}),
        rounds=5,
    )
    _per_reading(benchmark, len(b))


def test_pandas_rolling(benchmark: Any, world: World) -> None:
    b = world.batch
    benchmark.pedantic(
        lambda pandas: pandas.process(b.idx, b.value),
        setup=lambda: ((PandasRolling(world.ring.ordered()),), {}),
        rounds=3,
    )
    _per_reading(benchmark, len(b))


@pytest.mark.parametrize("scorer", river_scorers(WINDOW), ids=lambda s: s.name.split()[1])
def test_river(benchmark: Any, world: World, scorer: RiverScorer) -> None:
    """One scorer per sampled channel, over the batch's readings of those channels."""
    b = world.batch
    where = np.searchsorted(world.sample, b.idx)
    hit = world.sample[np.minimum(where, len(world.sample) - 1)] == b.idx
    readings = [(int(j), float(v)) for j, v in zip(where[hit], b.value[hit], strict=True)]
    benchmark.pedantic(
        lambda models: river_pass(scorer, models, readings),
        setup=lambda: ((river_models(scorer, world.warm),), {}),
        rounds=3,
    )
    _per_reading(benchmark, len(readings))
