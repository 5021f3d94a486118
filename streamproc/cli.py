"""Command line: ``streamproc run | record | demo | replay | simulate | check-config``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from streamproc import __version__
from streamproc.config import (
    ConfigError,
    Settings,
    load,
    parse_broker_url,
    parse_host_port,
)
from streamproc.console import Progress, alert_printer, print_summary
from streamproc.detect import warm_up
from streamproc.pipeline import Pipeline
from streamproc.runner import replay
from streamproc.sources import simulate as sim
from streamproc.sources.replay import feed_size

log = logging.getLogger("streamproc")
OUTPUTS = ("alerts.jsonl", "snapshots", "alerts")
DEMO_MARK = ".streamproc-demo"
# Readings per batch in a replay. The live daemon's batch.max_readings (10,000) bounds its
# latency; a replay has none to bound, and each batch costs ~0.1-0.2 ms of Python besides the
# kernels (50M readings: 5-8 % faster than in batches of 10,000; benchmarks/RESULTS.md).
REPLAY_BATCH = 100_000


def _replay_settings(path: str | None, batch_size: int) -> Settings:
    """The config file with replay's batch size in place of the live ``batch.max_readings``."""
    s = load(path)
    if batch_size < 1:
        raise ConfigError("--batch-size", "must be >= 1")
    return dataclasses.replace(s, batch=dataclasses.replace(s.batch, max_readings=batch_size))


def _live_settings(args: argparse.Namespace) -> Settings:
    """The config file with the command line's overrides; ConfigError names the option."""
    s = load(args.config)
    m = s.mqtt
    changes: dict[str, object] = {}
    if args.broker is not None:
        try:
            parse_broker_url(args.broker)
        except ValueError as exc:
            raise ConfigError("--broker", str(exc)) from None
        changes["broker"] = args.broker
    if args.topic:
        changes["topics"] = tuple(args.topic)
    if args.qos is not None:
        changes["qos"] = args.qos
    if args.client_id is not None:
        changes["client_id"] = args.client_id
    s = dataclasses.replace(s, mqtt=dataclasses.replace(m, **changes))  # type: ignore[arg-type]
    if getattr(args, "out", None) is not None:
        s = dataclasses.replace(s, output=dataclasses.replace(s.output, dir=args.out))
    if getattr(args, "metrics", None) is not None:
        if args.metrics:
            try:
                parse_host_port(args.metrics)
            except ValueError as exc:
                raise ConfigError("--metrics", str(exc)) from None
        s = dataclasses.replace(s, metrics=dataclasses.replace(s.metrics, listen=args.metrics))
    return s


def cmd_run(args: argparse.Namespace) -> int:
    from streamproc.daemon import Daemon

    settings = _live_settings(args)
    daemon = Daemon(settings, lambda: _live_settings(args))
    try:
        return asyncio.run(daemon.run())
    except OSError as exc:  # e.g. the metrics port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_record(args: argparse.Namespace) -> int:
    from streamproc.recorder import record, record_settings

    settings = record_settings(_live_settings(args), args.client_id)
    feed = Path(args.feed)
    if feed.suffix != ".parquet":
        raise SystemExit("error: -o must name a .parquet file")
    if feed.exists() and not args.force:
        raise SystemExit(f"error: {feed} exists; use --force to replace it")
    asyncio.run(record(settings, feed))
    return 0


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
    settings = _replay_settings(args.config, args.batch_size)
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
    if args.out is None and args.publish is None:
        raise SystemExit("error: give -o FOLDER, --publish URL, or both")
    cfg = sim.SimConfig(channels=args.channels, duration_s=duration, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        feed, labels = sim.write(cfg, Path(args.out or tmp))
        if args.out:
            print(f"wrote {feed} and {labels} in {time.monotonic() - start:.1f} s")
        if args.publish:
            return _publish(args, feed)
    return 0


def _publish(args: argparse.Namespace, feed: Path) -> int:
    import pyarrow.parquet as pq

    from streamproc.publisher import publish

    args.broker, args.topic = args.publish, None
    settings = _live_settings(args)
    if args.client_id is None:  # a publisher needs no session of its own
        m = dataclasses.replace(settings.mqtt, client_id="", clean_session=True)
    else:
        m = settings.mqtt
    messages = ((topic, payload) for _, topic, payload in sim.iter_messages(pq.read_table(feed)))
    rate = args.rate or None
    print(f"publishing to {args.publish} at {f'{rate:,.0f} msg/s' if rate else 'full speed'}")
    sent = asyncio.run(publish(m, messages, rate, args.qos if args.qos is not None else 1))
    print(f"published {sent:,} messages")
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
    r.add_argument("--batch-size", type=int, default=REPLAY_BATCH,
                   help=f"readings per batch (default {REPLAY_BATCH:,})")  # fmt: skip
    r.add_argument("--force", action="store_true", help="replace earlier output in OUT")
    r.add_argument("--show-alerts", action="store_true", help="print alerts as they happen")
    r.set_defaults(func=cmd_replay)

    s = sub.add_parser("simulate", help="write a simulated city feed and its labels")
    s.add_argument("--channels", type=int, default=10_000)
    s.add_argument("--duration", default="1d", help="e.g. 1d, 6h, 90m")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--out", help="folder for feed.parquet and labels.csv")
    s.add_argument("--publish", metavar="URL", help="publish the feed to mqtt[s]://host:port")
    s.add_argument("--rate", type=float, default=1000.0,
                   help="messages per second with --publish (0: as fast as possible)")  # fmt: skip
    s.add_argument("--qos", type=int, choices=(0, 1), default=None, help="QoS (default 1)")
    s.add_argument("--client-id", default=None, help="MQTT client id (default: random)")
    s.add_argument("-c", "--config", help="TOML configuration file (its [mqtt] TLS settings)")
    s.set_defaults(func=cmd_simulate)

    live = argparse.ArgumentParser(add_help=False)
    live.add_argument("-c", "--config", help="TOML configuration file")
    live.add_argument("--broker", metavar="URL", help="mqtt://[user@]host:port or mqtts://...")
    live.add_argument("--topic", action="append", metavar="FILTER",
                      help="subscription filter (repeatable)")  # fmt: skip
    live.add_argument("--qos", type=int, choices=(0, 1), default=None)
    live.add_argument("--client-id", default=None)

    d = sub.add_parser("run", parents=[live], help="the live daemon: MQTT in, alerts out")
    d.add_argument("--out", default=None, help="output folder (config: output.dir)")
    d.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="/metrics and /healthz address ('' turns it off)")  # fmt: skip
    d.set_defaults(func=cmd_run)

    rec = sub.add_parser("record", parents=[live], help="record live MQTT traffic to a feed")
    rec.add_argument("-o", dest="feed", required=True, help="the .parquet feed to write")
    rec.add_argument("--force", action="store_true", help="replace an existing feed")
    rec.set_defaults(func=cmd_record)

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
    if not args.verbose:
        logging.getLogger("gmqtt").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
