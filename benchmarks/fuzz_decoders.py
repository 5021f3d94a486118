"""Long fuzz runs of the MQTT decoder: Hypothesis (structured) or atheris (bytes, coverage-guided).

    python benchmarks/fuzz_decoders.py --engine hypothesis --minutes 10
    python benchmarks/fuzz_decoders.py --engine atheris --minutes 10    # pip install atheris

Every message goes through ``tests.fuzzing.Harness.check``: nothing may reach the decoder's
last-resort exception guard, and every message and every reading it carries must be accounted
for (one result; each reading appended or counted as a drop). The decoder has 8 channels and a
4 KiB payload limit, so capacity and ``rejected`` are reached too.

hypothesis: the targets of ``tests.fuzzing.TARGETS`` in turn, ``--examples`` each per round,
until the time is up (the last round runs to its end): JSON documents of every payload form
with wrong types, NaN, infinities, huge numbers and bad times; SenML packs; any text topic with
any bytes; streams of messages on topics with odd segments, with raw and mangled bytes, deep
nesting and oversized payloads.

atheris: libFuzzer over raw bytes ``[flags][topic length][topic][payload]``, each input decoded
twice by one decoder; the topic is the UTF-8 of its bytes (invalid bytes become lone
surrogates), ``flags`` picks the receive time. The corpus starts from the valid messages in
``tests.fuzzing.SEEDS``, with a dictionary of the forms' keys and edge literals. An input that
takes over 10 s is reported by libFuzzer as a timeout.

Prints executions, exceptions found (distinct; with the input) and the time taken; exits 1
if it found any.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECV_CHOICES = (1_800_000_000_000, 0, -(10**15), 10**15, 2**62, 1_767_571_200_000)
# libFuzzer dictionary: the payload forms' keys and the numbers and literals at their edges
DICTIONARY = r"""
"\"ts\""
"\"value\""
"\"metric\""
"\"device\""
"\"kind\""
"\"group\""
"\"readings\""
"\"bn\""
"\"bt\""
"\"bv\""
"\"bver\""
"\"n\""
"\"v\""
"\"t\""
"\"vs\""
"\"vb\""
"\"s\""
"NaN"
"Infinity"
"-Infinity"
"null"
"true"
"1e400"
"1e308"
"5e-324"
"18446744073709551616"
"999999999999999999999999999999999999999999999999999999999999"
"city/"
"/air/"
"gw/"
"+"
"#"
"[[[["
"\"2026-01-05T12:00:00Z\""
"\\u0000"
"{\"a\":"
"""


class Findings:
    """Executions and distinct exceptions, with the first input that raised each."""

    def __init__(self) -> None:
        self.executions = 0  # inputs run
        self.messages = 0  # messages decoded
        self.found: dict[str, str] = {}
        self.total = 0

    def add(self, exc: BaseException, example: str) -> None:
        if isinstance(exc, ExceptionGroup):  # Hypothesis found several distinct failures
            for e in exc.exceptions:
                self.add(e, " ".join(getattr(e, "__notes__", [])) or example)
            return
        self.total += 1
        key = f"{type(exc).__name__}: {re.sub(r'[0-9]+', '#', str(exc).splitlines()[0])}"
        if key not in self.found:
            self.found[key] = example
            print(f"FOUND {key}\n  input: {example[:2000]}", flush=True)

    def report(self, engine: str, seconds: float) -> int:
        rate = self.executions / seconds if seconds else 0.0
        print(f"engine            {engine}")
        print(f"executions        {self.executions}  ({rate:,.0f}/s)")
        print(f"messages decoded  {self.messages}")
        print(f"exceptions found  {len(self.found)} distinct ({self.total} failing inputs)")
        print(f"time              {seconds:.1f} s")
        return 1 if self.found else 0


def run_hypothesis(minutes: float, examples: int) -> int:
    from hypothesis import HealthCheck, given, settings

    from tests.fuzzing import TARGETS

    f = Findings()
    per_round = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )

    def counted(target: Callable[..., int]) -> Callable[..., None]:
        @functools.wraps(target)  # @given reads the target's signature
        def run(**kwargs: object) -> None:
            f.executions += 1
            f.messages += target(**kwargs)

        return run

    tests = {name: per_round(given(*args)(counted(fn))) for name, (fn, args) in TARGETS.items()}
    start = time.monotonic()
    stop = start + minutes * 60
    rounds = 0
    while time.monotonic() < stop:  # the last round runs to its end
        name, test = list(tests.items())[rounds % len(tests)]
        rounds += 1
        try:
            test()
        except Exception as exc:  # a failure, shrunk: its notes hold the falsifying example
            notes = " ".join(getattr(exc, "__notes__", []))
            f.add(exc, f"[{name}] {notes or traceback.format_exc()}")
    print(f"rounds            {rounds} of {examples} examples; targets {', '.join(tests)}")
    return f.report("hypothesis", time.monotonic() - start)


def run_atheris(minutes: float, crash_dir: Path) -> NoReturn:
    import atheris

    with atheris.instrument_imports(include=["streamproc", "tests"]):
        from tests.fuzzing import SEEDS, Harness

    f = Findings()
    start = time.monotonic()
    stop = start + minutes * 60

    def one_input(data: bytes) -> None:
        if time.monotonic() > stop:
            code = f.report("atheris", time.monotonic() - start)
            sys.stdout.flush()
            os._exit(code)  # libFuzzer never returns; end here with the figures printed
        f.executions += 1
        if len(data) < 2:
            return
        f.messages += 2
        recv_ms = RECV_CHOICES[data[0] % len(RECV_CHOICES)]
        topic = data[2 : 2 + data[1]].decode("utf-8", "surrogateescape")
        payload = data[2 + data[1] :]
        h = Harness()
        try:
            h.check(topic, payload, recv_ms)
            h.check(topic, payload, recv_ms)
        except Exception as exc:
            path = crash_dir / f"input-{f.total}"
            path.write_bytes(data)
            f.add(exc, f"{path} topic={topic!r} payload={payload[:500]!r} recv_ms={recv_ms}")

    work = Path(tempfile.mkdtemp(prefix="fuzz-decoders-"))
    corpus = work / "corpus"
    corpus.mkdir()
    for i, (topic, payload) in enumerate(SEEDS):
        raw = topic.encode()
        (corpus / f"seed-{i}").write_bytes(bytes([0, len(raw)]) + raw + payload)
    tokens = work / "json.dict"
    tokens.write_text(DICTIONARY)
    crash_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        str(corpus),
        f"-dict={tokens}",
        "-max_len=8192",
        "-timeout=10",  # an input that takes this long is a finding too (libFuzzer reports it)
        f"-artifact_prefix={crash_dir}/",
        f"-max_total_time={int(minutes * 60) + 60}",
    ]
    print(f"corpus            {corpus} ({len(SEEDS)} seeds)", flush=True)
    atheris.Setup(args, one_input)
    atheris.Fuzz()
    raise SystemExit("libFuzzer stopped before the time was up")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", choices=("hypothesis", "atheris"), required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--examples", type=int, default=1_000, help="hypothesis: examples per round")
    p.add_argument(
        "--crashes",
        type=Path,
        default=Path("benchmarks/results/fuzz-crashes"),
        help="atheris: where failing inputs are written",
    )
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)  # the decoder's rate-limited warnings, once per harness
    print(f"fuzzing the decoder with {a.engine} for {a.minutes:g} min", flush=True)
    if a.engine == "atheris":
        run_atheris(a.minutes, a.crashes)
    return run_hypothesis(a.minutes, a.examples)


if __name__ == "__main__":
    sys.exit(main())
