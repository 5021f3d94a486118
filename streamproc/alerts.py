"""Alert records: the kernels decide *when* an alert opens, escalates or resolves; this module
turns those events into records with names, ids and messages, and tracks what is open.

Lifecycle per (channel, rule), decided in ``kernels.bank``::

    idle --condition--> pending --held for min_duration--> OPEN --cleared for hold--> resolved
                           |                                 |  ^
                           +--condition gone--> idle         |  +-- condition back: stays open
                                                             +--severity rises--> update

An alert that opened ``flap_max`` times within ``flap_window_s`` is flapping: it then needs
``flap_hold_s`` of clear readings to resolve, so it stays one alert instead of many.

With ``repeat_discount`` k > 0, a channel that keeps alerting has its alerts ranked lower: an
alert's score (open, update and resolve alike) is its rule's score divided by 1 + k x the
alerts the channel opened before it, any rule, each weighted exp(-age / ``repeat_tau_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from streamproc.config import AlertSettings
from streamproc.kernels.rules import EV_OPEN, EV_RESOLVE, EV_UPDATE, RULES, SEVERITIES
from streamproc.registry import Registry
from streamproc.times import format_ms

EVENT_NAMES = {EV_OPEN: "open", EV_UPDATE: "update", EV_RESOLVE: "resolve"}


@dataclass(frozen=True)
class Alert:
    id: str
    event: str  # open | update | resolve
    channel: int
    device: str
    metric: str
    kind: str
    group: str
    rule: str
    severity: str  # info | warning | critical
    state: str  # open | resolved
    ts_ms: int  # event time of this event
    opened_at_ms: int
    resolved_at_ms: int | None
    peak_value: float
    score: float
    message: str

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "event": self.event,
            "channel": f"{self.device}/{self.metric}",
            "device": self.device,
            "metric": self.metric,
            "kind": self.kind,
            "group": self.group,
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "ts": format_ms(self.ts_ms),
            "opened_at": format_ms(self.opened_at_ms),
            "resolved_at": None if self.resolved_at_ms is None else format_ms(self.resolved_at_ms),
            "peak_value": None if self.peak_value != self.peak_value else self.peak_value,
            "score": round(self.score, 4),
            "message": self.message,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True)
class Events:
    """Alert events from the kernels, as columns (one row per event)."""

    channel: np.ndarray  # int32
    rule: np.ndarray  # int8, index into RULES
    kind: np.ndarray  # int8, EV_OPEN / EV_UPDATE / EV_RESOLVE
    ts_ms: np.ndarray  # int64, event time of the event
    opened_ms: np.ndarray  # int64, when the alert opened
    peak: np.ndarray  # float64, most extreme value while open (dropout: gap in seconds)
    score: np.ndarray  # float32, highest anomaly score while open
    severity: np.ndarray  # int8, index into SEVERITIES

    def __len__(self) -> int:
        return len(self.channel)


def _message(rule: str, event: str, names: dict[str, str], peak: float, sev: str) -> str:
    what = f"{names['kind']} {names['device']} {names['metric']}"
    if rule == "dropout":
        detail = f"no reading for {peak:.0f} s"
    elif rule == "flatline":
        detail = f"stuck at {peak:.6g}"
    elif rule == "neighbour":
        detail = f"disagrees with its group, at {peak:.6g}"
    elif rule == "rate":
        detail = f"sudden change to {peak:.6g}"
    elif rule == "hampel":
        detail = f"isolated spike to {peak:.6g}"
    elif rule == "zscore":
        detail = f"unusual value {peak:.6g}"
    else:
        detail = f"limit breached, peak {peak:.6g}"
    verb = {"open": "opened", "update": "escalated", "resolve": "resolved"}[event]
    return f"{sev} {rule} alert {verb}: {what}: {detail}"


class RepeatDiscount:
    """The channels' recent alert openings, decayed in event time, and the score factor of a
    new alert from them: ``1 / (1 + k * load)``."""

    def __init__(self, k: float, tau_s: float):
        self.k = k
        self.tau_ms = tau_s * 1000.0
        self.load = np.zeros(0)  # per channel, as of ``at``
        self.at = np.zeros(0, np.int64)  # event time (ms) of the channel's last opening

    def factor(self, c: int, t_ms: int) -> float:
        """The factor of an alert of channel ``c`` opening at ``t_ms``, which it then counts."""
        if c >= len(self.load):
            grow = max(c + 1, 2 * len(self.load)) - len(self.load)
            self.load = np.concatenate((self.load, np.zeros(grow)))
            self.at = np.concatenate((self.at, np.zeros(grow, np.int64)))
        age = max(t_ms - int(self.at[c]), 0)
        load = float(self.load[c]) * math.exp(-age / self.tau_ms)
        self.load[c] = load + 1.0
        self.at[c] = t_ms
        return 1.0 / (1.0 + self.k * load)


class AlertBook:
    """Turns kernel events into Alert records and keeps the set of open alerts (and, with a
    repeat discount, each one's score factor)."""

    def __init__(self, registry: Registry, settings: AlertSettings):
        self.registry = registry
        self.discount: RepeatDiscount | None = None
        self.open: dict[tuple[int, int], Alert] = {}
        self.factor: dict[tuple[int, int], float] = {}
        self.opened_total = 0
        self.configure(settings)

    def configure(self, settings: AlertSettings) -> None:
        """Take the repeat discount of ``settings`` (at start and on reload); the channels'
        history of openings is kept while the discount stays on."""
        k, tau_s = settings.repeat_discount, settings.repeat_tau_s
        if not k:
            self.discount = None
        elif self.discount is None:
            self.discount = RepeatDiscount(k, tau_s)
        else:
            self.discount.k, self.discount.tau_ms = k, tau_s * 1000.0

    def apply(self, ev: Events) -> list[Alert]:
        out = []
        for i in range(len(ev)):
            c, r = int(ev.channel[i]), int(ev.rule[i])
            kind = int(ev.kind[i])
            names = self.registry.describe(c)
            rule = RULES[r]
            event = EVENT_NAMES[kind]
            sev = SEVERITIES[int(ev.severity[i])]
            opened = int(ev.opened_ms[i])
            ts = int(ev.ts_ms[i])
            peak = float(ev.peak[i])
            if self.discount is not None and kind == EV_OPEN:
                self.factor[(c, r)] = self.discount.factor(c, opened)
            if kind == EV_RESOLVE:
                factor = self.factor.pop((c, r), 1.0)
            else:
                factor = self.factor.get((c, r), 1.0)
            alert = Alert(
                id=f"{names['device']}/{names['metric']}/{rule}/{opened}",
                event=event,
                channel=c,
                device=names["device"],
                metric=names["metric"],
                kind=names["kind"],
                group=names["group"],
                rule=rule,
                severity=sev,
                state="resolved" if kind == EV_RESOLVE else "open",
                ts_ms=ts,
                opened_at_ms=opened,
                resolved_at_ms=ts if kind == EV_RESOLVE else None,
                peak_value=peak,
                score=float(ev.score[i]) * factor,
                message=_message(rule, event, names, peak, sev),
            )
            if kind == EV_RESOLVE:
                self.open.pop((c, r), None)
            else:
                if kind == EV_OPEN:
                    self.opened_total += 1
                self.open[(c, r)] = alert
            out.append(alert)
        return out
