"""Command line: ``streamproc demo | replay | simulate | check-config``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from streamproc import __version__
from streamproc.config import ConfigError, Settings, load
from streamproc.console import Progress, alert_printer, print_summary
from streamproc.detect import warm_up
from streamproc.pipeline import Pipeline
from streamproc.runner import replay
from streamproc.sources import simulate as sim
from streamproc.sources.replay import feed_size

log = logging.getLogger("streamproc")
OUTPUTS = ("alerts.jsonl", "snapshots", "alerts")
DEMO_MARK = ".streamproc-demo"


def _settings(path: str | None, batch_size: int | None = None) -> Settings:
    s = load(path)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError("--batch-size", "must be >= 1")
        s = dataclasses.replace(s, batch=dataclasses.replace(s.batch, max_readings=batch_size))
    return s


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse to mix a new run's output with an old one's, unless told to replace it."""
    existing = [out / n for n in OUTPUTS if (out / n).exists()]
    if existing and not force:
        raise SystemExit(f"error: {out} already holds output ({existing[0].name}); "
                         "use --force to replace it or choose another folder")  # fmt: skip
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 'max' or a number > 0") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be 'max' or a number > 0")
    return value


def cmd_check_config(args: argparse.Namespace) -> int:
    load(args.file)
    print("ok")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args.config, args.batch_size)
    feed = Path(args.feed)
    if not feed.is_file():
        raise SystemExit(f"error: no such feed file: {feed}")
    out = Path(args.out)
    _prepare_out(out, args.force)
    warm_up(settings)
    pipeline = Pipeline(settings, out)
    if args.show_alerts:
        pipeline.listeners.append(alert_printer())
    progress = Progress(pipeline, feed_size(feed))
    start = time.monotonic()
    try:
        replay(pipeline, feed, args.speed, progress)
    finally:
        progress.done()
    print_summary(pipeline, time.monotonic() - start)
    print(f"output              {out}/alerts.jsonl, {out}/snapshots/, {out}/alerts/")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        duration = sim.parse_duration(args.duration)
    except ValueError as exc:
        raise SystemExit(f"error: --duration: {exc}") from None
    cfg = sim.SimConfig(channels=args.channels, duration_s=duration, seed=args.seed)
    start = time.monotonic()
    feed, labels = sim.write(cfg, Path(args.out))
    print(f"wrote {feed} and {labels} in {time.monotonic() - start:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = load(None)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARK).exists():
            raise SystemExit(f"error: {out} exists and was not made by the demo; use -o")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARK).touch()
    print(f"streamproc {__version__} demo: a simulated city of ~{args.channels:,} channels, "
          f"one day at {args.speed:,.0f}x real time, through the real pipeline")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sim.SimConfig(channels=args.channels, duration_s=86_400, seed=args.seed)
        feed, _ = sim.write(cfg, Path(tmp))
        warm_up(settings)
        pipeline = Pipeline(settings, out)
        pipeline.listeners.append(alert_printer())
        start = time.monotonic()
        deadline = start + args.seconds if args.seconds else None
        complete = replay(pipeline, feed, args.speed, deadline=deadline)
        shutil.copy(Path(tmp) / "labels.csv", out / "labels.csv")
    print()
    if not complete:
        print(f"stopped after {args.seconds} s (--seconds); the feed was not finished")
    print_summary(pipeline, time.monotonic() - start)
    print(f"""
Output in {out}/:
  alerts.jsonl              one line per alert opened or resolved
  snapshots/kind=*/date=*/  per-channel aggregates, every {settings.snapshots.interval_s:.0f} s
  alerts/kind=*/date=*/     the alerts of each interval (Parquet)
  labels.csv                the anomalies the simulator injected
Query the snapshots, for example with DuckDB:
  duckdb -c "SELECT kind, count(*) AS rows, round(avg(mean), 2) AS mean
             FROM read_parquet('{out}/snapshots/**/*.parquet', hive_partitioning=true)
             GROUP BY kind"
or pandas: pandas.read_parquet('{out}/snapshots')""")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamproc", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamproc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="simulate a small city through the real pipeline")
    d.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    d.add_argument("--channels", type=int, default=2000)
    d.add_argument("--speed", type=float, default=2400.0, help="event time per wall second")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("-o", "--out", default="streamproc-demo")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("replay", help="run a recorded feed through the pipeline")
    r.add_argument(
        "feed", help="Parquet, CSV or JSON Lines table, or a mosquitto_sub -F '%%U %%t %%p' log"
    )
    r.add_argument("-c", "--config", help="TOML configuration file")
    r.add_argument("-o", "--out", required=True, help="output folder")
    r.add_argument("--speed", type=_speed, default=None, metavar="max|N",
                   help="max (default) or N times real time")  # fmt: skip
    r.add_argument("--batch-size", type=int, default=None, help="readings per batch")
    r.add_argument("--force", action="store_true", help="replace earlier output in OUT")
    r.add_argument("--show-alerts", action="store_true", help="print alerts as they happen")
    r.set_defaults(func=cmd_replay)

    s = sub.add_parser("simulate", help="write a simulated city feed and its labels")
    s.add_argument("--channels", type=int, default=10_000)
    s.add_argument("--duration", default="1d", help="e.g. 1d, 6h, 90m")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", required=True, help="folder for feed.parquet and labels.csv")
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("check-config", help="validate a configuration file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
