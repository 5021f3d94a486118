"""Soak: ``streamproc run`` for --minutes under a steady live stream from the simulator.

    python benchmarks/soak.py [--minutes 30] [--rate 5000] [--channels 10000] [--qos 1]
                              [--warmup-minutes 5] [--sample-s 10]

A private mosquitto (``tests.mosquitto.Broker``: persistence on, ``max_queued_messages 0``, so
nothing queued for a session is dropped), ``streamproc run`` with its output in a temporary
folder, and ``streamproc simulate --publish --rate R`` publishing a simulated city live. The
simulated feed is sized to outlast the soak (about 10% more messages than --minutes at --rate
need); the publisher is stopped at the end.

What was published is counted by a bare subscriber in a process of its own (same filters and
QoS as the daemon, its own connection): messages, and readings as the numeric fields of each
payload other than ``ts``. The simulator prints its own count only when its feed is finished,
and a message the broker accepted reaches every subscriber at QoS 1, so the bare subscriber's
count is what the daemon was offered.

Every --sample-s: the daemon's RSS (VmRSS) and CPU, the published counts and the daemon's
counters ("behind": published readings not yet processed or dropped; approximate, as the bare
subscriber reports every 0.2 s). At the end the publisher is stopped, the daemon is given time
until its counters stop moving, then SIGTERM. Criteria: every reading accounted for (readings
processed plus dropped by reason == readings published, and messages by result == messages
published); no errors (no sink or publish errors, no message that is not ``ok``, no failed
scrape, exit status 0, no error in the log); RSS growth after warm-up (max RSS over the last
5 minutes against RSS at the end of the warm-up) below 5%. A markdown table (one row a minute)
and the summary go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gmqtt
import numpy as np
import orjson
from gmqtt.mqtt.constants import MQTTv50

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.latency import cpu_seconds
from streamproc.config import load
from streamproc.daemon import subscriptions
from streamproc.sources import simulate as sim
from tests.live import DaemonProcess
from tests.mosquitto import Broker

SETTLE_S = 5.0  # counters unchanged this long: the daemon has caught up
SETTLE_TIMEOUT_S = 600.0
LAST_WINDOW_S = 300.0  # RSS growth: max over the last 5 minutes
RSS_LIMIT = 0.05
SCRAPE_ATTEMPTS = 3
FEED_MARGIN = 1.10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- bare subscriber ----------------------------------------------------------------------------


def _readings(payload: bytes) -> int:
    """Numeric fields of a payload other than ``ts`` (the simulator's one shape)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0
    if not isinstance(obj, dict):
        return 0
    return sum(
        k != "ts" and isinstance(v, int | float) and not isinstance(v, bool) for k, v in obj.items()
    )


async def _count(port: int, qos: int) -> None:
    """Subscribe like the daemon, print READY, then the counts as JSON every 0.2 s."""
    subscribed = asyncio.Event()
    counts = {"messages": 0, "readings": 0}

    def on_message(client: gmqtt.Client, topic: str, payload: bytes, qos: int, props: object
                   ) -> int:  # fmt: skip
        counts["messages"] += 1
        counts["readings"] += _readings(payload)
        return 0

    client = gmqtt.Client("soak-bare")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    await client.connect("127.0.0.1", port, version=MQTTv50)
    client.subscribe([gmqtt.Subscription(t, qos=qos) for t in subscriptions(load(None))])
    await subscribed.wait()
    print("READY", flush=True)
    while True:
        print(json.dumps(counts), flush=True)
        await asyncio.sleep(0.2)


class Counter:
    """The bare subscriber process; ``latest`` holds its last reported counts."""

    def __init__(self, port: int, qos: int) -> None:
        args = [sys.executable, __file__, "--count-port", str(port), "--qos", str(qos)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise RuntimeError("the bare subscriber did not start")
        self.latest = {"messages": 0, "readings": 0}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.latest = json.loads(line)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- samples ------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the first published message
    rss_mib: float
    cpu_s: float
    published: int
    published_readings: int
    readings: float
    messages: dict[str, float]
    dropped: dict[str, float]
    sink_errors: float
    publish_errors: float
    reconnects: float
    batches: float
    batch_s: float
    alerts_open: float


def rss_mib(pid: int) -> float:
    """VmRSS of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def scrape(d: DaemonProcess, failures: list[str]) -> dict:
    """The daemon's /metrics; a failed scrape is noted in ``failures`` and tried again."""
    for _ in range(SCRAPE_ATTEMPTS - 1):
        try:
            return d.samples()
        except (OSError, http.client.HTTPException, AssertionError) as exc:
            failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            log(f"scrape failed: {failures[-1]}")
            time.sleep(0.2)
    return d.samples()


def take(d: DaemonProcess, counter: Counter, t0: float, failures: list[str]) -> Sample:
    assert d.proc is not None
    pid = d.proc.pid
    pub = dict(counter.latest)
    s = scrape(d, failures)

    def total(name: str) -> float:
        return sum(v for (n, _), v in s.items() if n == name)

    return Sample(
        t=time.monotonic() - t0,
        rss_mib=rss_mib(pid),
        cpu_s=cpu_seconds(pid),
        published=pub["messages"],
        published_readings=pub["readings"],
        readings=total("streamproc_readings_total"),
        messages=by_label(s, "streamproc_messages_total", "result"),
        dropped=by_label(s, "streamproc_dropped_total", "reason"),
        sink_errors=total("streamproc_sink_errors_total"),
        publish_errors=total("streamproc_publish_errors_total"),
        reconnects=total("streamproc_mqtt_reconnects_total"),
        batches=total("streamproc_batch_seconds_count"),
        batch_s=total("streamproc_batch_seconds_sum"),
        alerts_open=total("streamproc_alerts_open"),
    )


def _nonzero(d: dict[str, float]) -> str:
    items = [f"{k}={v:,.0f}" for k, v in sorted(d.items()) if v]
    return ", ".join(items) or "0"


def table(samples: list[Sample], every_s: float) -> str:
    out = [
        "| t (min) | RSS (MiB) | daemon CPU | published msg | published readings | readings "
        "processed | behind (approx.) | messages by result | dropped by reason | sink errors | "
        "mean batch (ms) | alerts open |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    prev: Sample | None = None
    next_t = 0.0
    for i, s in enumerate(samples):
        if s.t + 1e-6 < next_t and i != len(samples) - 1:
            continue
        next_t = s.t + every_s - 1.0
        cpu = "-"
        batch_ms = "-"
        if prev is not None and s.t > prev.t:
            cpu = f"{(s.cpu_s - prev.cpu_s) / (s.t - prev.t):.0%}"
            if s.batches > prev.batches:
                batch_ms = f"{(s.batch_s - prev.batch_s) / (s.batches - prev.batches) * 1000:.2f}"
        behind = s.published_readings - s.readings - sum(s.dropped.values())
        out.append(
            f"| {s.t / 60:.1f} | {s.rss_mib:.1f} | {cpu} | {s.published:,} | "
            f"{s.published_readings:,} | {s.readings:,.0f} | {behind:,.0f} | "
            f"{_nonzero(s.messages)} | {_nonzero(s.dropped)} | {s.sink_errors:.0f} | "
            f"{batch_ms} | {s.alerts_open:.0f} |"
        )
        prev = s
    return "\n".join(out)


# --- the run ------------------------------------------------------------------------------------


def feed_seconds(channels: int, rate: float, seconds: float) -> float:
    """Simulated seconds whose messages last ``seconds`` at ``rate`` msg/s, with a margin."""
    cfg = sim.SimConfig(channels=channels)
    per_s = sum(
        max(1, round(k.share * channels / len(k.metrics))) / cfg.interval_s[k.kind]
        for k in sim.KINDS
    )
    return seconds * rate / per_s * FEED_MARGIN


def wait_settled(d: DaemonProcess, counter: Counter, failures: list[str]) -> None:
    """Until the published count and the daemon's readings and messages stop moving."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last: tuple[float, ...] = ()
    since = time.monotonic()
    while time.monotonic() - since < SETTLE_S:
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not catch up")
        s = scrape(d, failures)
        now = (
            counter.latest["messages"],
            *(v for (n, _), v in s.items() if n == "streamproc_readings_total"),
            *(v for (n, _), v in s.items() if n == "streamproc_messages_total"),
        )
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.5)


def soak(work: Path, args: argparse.Namespace) -> tuple[list[Sample], dict[str, object]]:
    samples: list[Sample] = []
    failures: list[str] = []
    info: dict[str, object] = {"scrape_failures": failures}
    seconds = args.minutes * 60
    with Broker(work / "mq") as broker:
        counter = Counter(broker.port, args.qos)
        cmd = ["run", "--broker", broker.url, "--out", str(work / "out"), "--qos", str(args.qos)]
        d = DaemonProcess(work / "daemon", cmd).start()
        pub = None
        try:
            d.wait_ready(timeout=120)
            assert d.proc is not None
            sim_s = feed_seconds(args.channels, args.rate, seconds)
            info["feed"] = f"{args.channels:,} channels, {sim_s / 86_400:.2f} simulated days"
            pub_cmd = [
                *(sys.executable, "-m", "streamproc.cli", "simulate"),
                *("--channels", str(args.channels), "--duration", f"{sim_s:.0f}s"),
                *("--seed", str(args.seed), "--publish", broker.url),
                *("--rate", f"{args.rate:g}", "--qos", str(args.qos)),
            ]
            info["publisher"] = " ".join(pub_cmd[3:])
            with (work / "publisher.log").open("wb") as pub_log:
                pub = subprocess.Popen(pub_cmd, stdout=pub_log, stderr=subprocess.STDOUT)
            log(f"daemon pid {d.proc.pid} ready; publisher started: {info['feed']}")
            while counter.latest["messages"] == 0:
                if pub.poll() is not None:
                    raise RuntimeError(f"publisher exited ({pub.returncode})")
                time.sleep(0.1)
            t0 = time.monotonic()
            log("first message published; soak clock started")
            samples.append(take(d, counter, t0, failures))
            next_t = args.sample_s
            while next_t <= seconds:
                time.sleep(max(0.0, t0 + next_t - time.monotonic()))
                if d.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited ({d.proc.returncode}):\n{d.log()[-3000:]}")
                s = take(d, counter, t0, failures)
                samples.append(s)
                if pub.poll() is not None and "publisher_ended" not in info:
                    info["publisher_ended"] = s.t
                    log(f"publisher ended early at {s.t:.0f} s ({pub.returncode})")
                prev = samples[-2]
                log(f"t={s.t:6.0f}s rss={s.rss_mib:7.1f} MiB published={s.published:,} "
                    f"({(s.published - prev.published) / (s.t - prev.t):,.0f}/s) "
                    f"readings={s.readings:,.0f} dropped={sum(s.dropped.values()):,.0f} "
                    f"alerts_open={s.alerts_open:.0f}")  # fmt: skip
                next_t += args.sample_s
            pub.send_signal(signal.SIGTERM)
            pub.wait(30)
            log("publisher stopped; waiting for the daemon to catch up")
            wait_settled(d, counter, failures)
            samples.append(take(d, counter, t0, failures))
            info["exit"] = d.stop(timeout=120)
            log_text = d.log()
            info["log_errors"] = [
                line for line in log_text.splitlines() if "ERROR" in line or "Traceback" in line
            ]
            info["log_warnings"] = [line for line in log_text.splitlines() if "WARNING" in line]
            log(f"daemon stopped, exit status {info['exit']}")
        finally:
            if pub is not None and pub.poll() is None:
                pub.kill()
            d.kill()
            counter.stop()
    return samples, info


def slope(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time, MiB per hour."""
    t = np.array([s.t for s in samples])
    rss = np.array([s.rss_mib for s in samples])
    return float(np.polyfit(t, rss, 1)[0] * 3600) if len(samples) > 1 else 0.0


def summary(samples: list[Sample], info: dict[str, object], args: argparse.Namespace) -> str:
    end = samples[-1]
    published_while = samples[-2]
    dropped = sum(end.dropped.values())
    not_ok = {k: v for k, v in end.messages.items() if k != "ok" and v}
    accounted = (
        end.readings + dropped == end.published_readings
        and sum(end.messages.values()) == end.published
    )
    errors = {
        "sink errors": end.sink_errors,
        "alert publish errors": end.publish_errors,
        "messages not ok": sum(not_ok.values()),
        "error lines in the log": len(info["log_errors"]),  # type: ignore[arg-type]
        "failed scrapes of /metrics": len(info["scrape_failures"]),  # type: ignore[arg-type]
        "exit status": info["exit"],
    }
    no_errors = not any(errors.values())
    warm_t = args.warmup_minutes * 60
    during = samples[:-1]
    warm = next(s for s in during if s.t >= warm_t - 1e-6)
    after = [s for s in during if s.t >= warm.t]
    last = [s for s in during if s.t >= during[-1].t - LAST_WINDOW_S - 1e-6]
    peak = max(last, key=lambda s: s.rss_mib)
    growth = peak.rss_mib / warm.rss_mib - 1
    ended = info.get("publisher_ended")
    whole = ended is None
    rate = (published_while.published - samples[0].published) / published_while.t

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines = [
        "| criterion | result | figures |",
        "|---|---|---|",
        f"| publisher live for the whole soak | {verdict(whole)} | "
        f"{'yes' if whole else f'ended at {ended:.0f} s'}; {rate:,.0f} msg/s on average |",
        f"| every reading accounted for | {verdict(accounted)} | published "
        f"{end.published_readings:,} readings in {end.published:,} messages; processed "
        f"{end.readings:,.0f}, dropped {dropped:,.0f} ({_nonzero(end.dropped)}); messages by "
        f"result: {_nonzero(end.messages)}; processed == published: "
        f"{end.readings == end.published_readings} |",
        f"| no errors | {verdict(no_errors)} | "
        + ", ".join(f"{k} {v:,.0f}" for k, v in errors.items())  # type: ignore[arg-type]
        + f"; reconnects {end.reconnects:.0f}; warnings in the log "
        f"{len(info['log_warnings']):,} |",  # type: ignore[arg-type]
        f"| RSS growth after warm-up < {RSS_LIMIT:.0%} | {verdict(growth < RSS_LIMIT)} | "
        f"{warm.rss_mib:.1f} MiB at {warm.t / 60:.1f} min (end of warm-up) -> max "
        f"{peak.rss_mib:.1f} MiB at {peak.t / 60:.1f} min over the last "
        f"{LAST_WINDOW_S / 60:.0f} min: {growth:+.2%}; first sample {samples[0].rss_mib:.1f} MiB, "
        f"max overall {max(s.rss_mib for s in samples):.1f} MiB; trend (least squares) "
        f"{slope(after):+.1f} MiB/h after warm-up, {slope(last):+.1f} MiB/h over the last "
        f"{LAST_WINDOW_S / 60:.0f} min |",
    ]
    overall = whole and accounted and no_errors and growth < RSS_LIMIT
    lines += ["", f"Overall: {verdict(overall)}"]
    for name in ("scrape_failures", "log_errors", "log_warnings"):
        found: list[str] = info[name]  # type: ignore[assignment]
        if found:
            lines += ["", f"{name.replace('_', ' ')} (first 10 of {len(found)}):", "```"]
            lines += [*found[:10], "```"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="soak length, from the first "
                    "published message")  # fmt: skip
    ap.add_argument("--rate", type=float, default=5000.0, help="messages per second")
    ap.add_argument("--channels", type=int, default=10_000, help="simulated channels")
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1)
    ap.add_argument("--warmup-minutes", type=float, default=5.0)
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--seed", type=int, default=1, help="simulator seed")
    ap.add_argument("--work", type=Path, help="keep the broker, daemon and publisher files here "
                    "(default: a temporary folder, removed)")  # fmt: skip
    ap.add_argument("--count-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.count_port:
        asyncio.run(_count(args.count_port, args.qos))
        return
    if args.minutes * 60 < args.warmup_minutes * 60 + args.sample_s:
        ap.error("--minutes must exceed --warmup-minutes")
    if args.work:
        args.work.mkdir(parents=True, exist_ok=False)
        samples, info = soak(args.work, args)
    else:
        with tempfile.TemporaryDirectory(prefix="soak-") as folder:
            samples, info = soak(Path(folder), args)
    print(f"## Soak: {args.minutes:g} min at {args.rate:,.0f} msg/s, QoS {args.qos}\n")
    print(f"Feed: {info['feed']}; publisher: `streamproc {info['publisher']}`; samples every "
          f"{args.sample_s:g} s (one row a minute below).\n")  # fmt: skip
    print(table(samples, 60.0))
    print()
    print(summary(samples, info, args))


if __name__ == "__main__":
    main()
