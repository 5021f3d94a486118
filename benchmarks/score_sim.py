"""Score alerts (alerts.jsonl) against the labels of a simulated feed (labels.csv).

    python benchmarks/score_sim.py --labels DIR/labels.csv --alerts OUT/alerts.jsonl \\
        [--tolerance-s 900] [--markdown]

A label on channel (device, metric) is *detected* when an alert on that channel overlaps
``[start - tol, end + tol]``. An alert spans from its ``open`` event to the ``resolve`` event
with the same id (still open: to the last event time in the file). Precision counts alerts
that overlap any label on their channel.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _ms(text: str) -> int:
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return round(t.timestamp() * 1000)


@dataclass
class _Span:
    channel: str
    kind: str  # anomaly type (labels) or rule (alerts)
    start: int
    end: int


def _read_labels(path: Path) -> list[_Span]:
    with open(path, newline="") as f:
        return [
            _Span(f"{r['device']}/{r['metric']}", r["anomaly"], _ms(r["start"]), _ms(r["end"]))
            for r in csv.DictReader(f)
        ]


def _read_alerts(path: Path) -> list[_Span]:
    """One span per alert id, from its open (or first seen) event to its resolve event."""
    spans: dict[str, _Span] = {}
    open_ids: set[str] = set()
    last_ts = None
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            ev = json.loads(line)
            ts = _ms(ev["ts"])
            last_ts = ts if last_ts is None else max(last_ts, ts)
            span = spans.get(ev["id"])
            if span is None:
                start = _ms(ev["opened_at"]) if ev.get("opened_at") else ts
                span = spans[ev["id"]] = _Span(ev["channel"], ev["rule"], start, start)
                open_ids.add(ev["id"])
            if ev["event"] == "resolve":
                span.end = _ms(ev["resolved_at"]) if ev.get("resolved_at") else ts
                open_ids.discard(ev["id"])
    for i in open_ids:
        spans[i].end = max(spans[i].start, last_ts or spans[i].start)
    return list(spans.values())


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def score(labels_path: str | Path, alerts_path: str | Path, tolerance_s: float = 900) -> dict:
    """Recall per anomaly type and precision overall and per rule; see the module docstring."""
    labels = _read_labels(Path(labels_path))
    alerts = _read_alerts(Path(alerts_path))
    tol = round(tolerance_s * 1000)
    by_channel: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(alerts):
        by_channel[a.channel].append(i)

    anomalies: dict[str, dict[str, Any]] = {}
    matched_alerts: set[int] = set()
    for lab in labels:
        row = anomalies.setdefault(
            lab.kind, {"labels": 0, "detected": 0, "rules": defaultdict(int), "_alerts": set()}
        )
        row["labels"] += 1
        hits = [
            i
            for i in by_channel.get(lab.channel, ())
            if alerts[i].start <= lab.end + tol and alerts[i].end >= lab.start - tol
        ]
        if hits:
            row["detected"] += 1
            for rule in sorted({alerts[i].kind for i in hits}):
                row["rules"][rule] += 1
        row["_alerts"].update(hits)
        matched_alerts.update(hits)
    for row in anomalies.values():
        row["recall"] = _ratio(row["detected"], row["labels"])
        row["rules"] = dict(sorted(row["rules"].items()))
        row["matched_alerts"] = len(row.pop("_alerts"))

    rules: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(alerts):
        r = rules.setdefault(a.kind, {"alerts": 0, "matched": 0})
        r["alerts"] += 1
        r["matched"] += i in matched_alerts
    for r in rules.values():
        r["precision"] = _ratio(r["matched"], r["alerts"])
    n_labels = sum(r["labels"] for r in anomalies.values())
    n_detected = sum(r["detected"] for r in anomalies.values())
    return {
        "tolerance_s": tolerance_s,
        "anomalies": dict(sorted(anomalies.items())),
        "total": {
            "labels": n_labels,
            "detected": n_detected,
            "recall": _ratio(n_detected, n_labels),
        },
        "precision": {
            "alerts": len(alerts),
            "matched": len(matched_alerts),
            "precision": _ratio(len(matched_alerts), len(alerts)),
            "rules": dict(sorted(rules.items())),
        },
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in out)


def render(result: dict, markdown: bool = False) -> str:
    """Recall and precision tables as plain text or Markdown."""
    rows = [
        [
            name,
            str(r["labels"]),
            str(r["detected"]),
            _pct(r["recall"]),
            str(r["matched_alerts"]),
            ", ".join(f"{k} {v}" for k, v in r["rules"].items()) or "-",
        ]
        for name, r in result["anomalies"].items()
    ]
    t = result["total"]
    rows.append(["total", str(t["labels"]), str(t["detected"]), _pct(t["recall"]), "", ""])
    recall = _table(
        ["anomaly", "labels", "detected", "recall", "matched alerts", "detected by rule"],
        rows,
        markdown,
    )
    p = result["precision"]
    prows = [
        [rule, str(r["alerts"]), str(r["matched"]), _pct(r["precision"])]
        for rule, r in p["rules"].items()
    ]
    prows.append(["all", str(p["alerts"]), str(p["matched"]), _pct(p["precision"])])
    precision = _table(["rule", "alerts", "on a label", "precision"], prows, markdown)
    title = "##" if markdown else ""
    tol = f"tolerance {result['tolerance_s']:g} s"
    return (
        f"{title} Recall ({tol})".strip()
        + "\n\n"
        + recall
        + "\n\n"
        + f"{title} Precision".strip()
        + "\n\n"
        + precision
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", required=True, type=Path, help="labels.csv of the simulated feed")
    ap.add_argument("--alerts", required=True, type=Path, help="alerts.jsonl of the run")
    ap.add_argument("--tolerance-s", type=float, default=900.0)
    ap.add_argument("--markdown", action="store_true", help="Markdown tables")
    ap.add_argument("--json", action="store_true", help="print the score as JSON")
    args = ap.parse_args(argv)
    for p in (args.labels, args.alerts):
        if not p.is_file():
            ap.error(f"no such file: {p}")
    result = score(args.labels, args.alerts, args.tolerance_s)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(render(result, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
