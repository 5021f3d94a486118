"""TOML configuration -> typed, validated settings.

Every setting has a default, so ``load(None)`` gives a working configuration. Errors name
the offending key and the reason (``ConfigError("rules.zscore.z_open", "must be > 0")``).
Durations are in seconds in the file (keys end in ``_s``) and stay seconds here.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints
from urllib.parse import urlsplit

from streamproc.times import parse_rfc3339_ms
from streamproc.topics import TopicPattern, valid_id


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class InputSettings:
    patterns: tuple[str, ...] = (
        "city/{group}/{kind}/{device}/{metric}",
        "city/{group}/{kind}/{device}",
    )
    max_payload_bytes: int = 65536
    max_future_s: float = 300.0
    min_ts: str = "2000-01-01T00:00:00Z"


@dataclass(frozen=True)
class ChannelSettings:
    kinds: tuple[str, ...] = ("air", "traffic", "pipe")
    max_channels: int = 1_000_000
    sensors: str = ""
    register_unknown: bool = True


@dataclass(frozen=True)
class BatchSettings:
    max_readings: int = 10_000
    max_delay_ms: int = 10


@dataclass(frozen=True)
class DetectSettings:
    window: int = 64
    tick_s: float = 60.0


@dataclass(frozen=True)
class AlertSettings:
    hold_s: float = 300.0
    flap_window_s: float = 3600.0
    flap_max: int = 3
    flap_hold_s: float = 3600.0
    repeat_discount: float = 0.0
    repeat_tau_s: float = 86400.0


@dataclass(frozen=True)
class SnapshotSettings:
    enabled: bool = True
    interval_s: float = 300.0
    grace_s: float = 60.0


@dataclass(frozen=True)
class OutputSettings:
    dir: str = "out"


@dataclass(frozen=True)
class MqttSettings:
    """The live daemon's broker connection (``streamproc run`` and ``record``)."""

    broker: str = "mqtt://127.0.0.1:1883"  # mqtt://[user@]host:port, or mqtts:// for TLS
    topics: tuple[str, ...] = ()  # subscription filters; empty: derived from input.patterns
    qos: int = 1
    client_id: str = "streamproc"
    clean_session: bool = False
    session_expiry_s: int = 604_800  # MQTT 5: how long the broker keeps the session
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 60
    username: str = ""
    password_file: str = ""  # else the STREAMPROC_MQTT_PASSWORD environment variable
    ca_file: str = ""  # mqtts: CA bundle to verify the broker (empty: the system's)
    cert_file: str = ""  # mqtts: client certificate (PEM), optional
    key_file: str = ""
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    publish_alerts: bool = True
    alert_prefix: str = "streamproc"


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1:9108"  # /metrics and /healthz; "" turns the endpoint off


@dataclass(frozen=True)
class CheckpointSettings:
    enabled: bool = True
    path: str = ""  # empty: {output.dir}/state/checkpoint.npz
    interval_s: float = 60.0
    journal: bool = True  # messages written ahead of their acknowledgement, next to the file


@dataclass(frozen=True)
class ZScoreParams:
    enabled: bool = True
    z_open: float = 6.0
    z_close: float = 3.0
    z_critical: float = 12.0
    min_std: float = 0.0
    min_readings: int = 16


@dataclass(frozen=True)
class FlatlineParams:
    enabled: bool = True
    min_readings: int = 12
    min_duration_s: float = 3600.0
    tolerance: float = 0.0
    # A run must also be longer than chance makes likely on this channel: with p the share of
    # its readings equal to the previous one (learnt outside runs), at least log(max_chance) /
    # log(p) readings. Sensors of coarse resolution repeat values often; 0 turns this off.
    # p is learnt apart for readings at the channel's floor (a minimum that rises by 0.1 % of
    # the difference with each reading above it), where such sensors sit on their detection
    # limit for days; a run that sets a floor below all the channel has read is off the floor.
    max_chance: float = 1e-6


@dataclass(frozen=True)
class DropoutParams:
    enabled: bool = True
    factor: float = 5.0
    min_gap_s: float = 900.0


@dataclass(frozen=True)
class NeighbourParams:
    """A channel against its group (same group, kind and metric) per snapshot interval, for
    drift: the interval's mean, on a log scale (``log``), less the group's common level (the
    median of the members' offset-corrected values) and less the channel's learnt offset is
    its deviation. On a device with three or more channels in the rule, the median deviation
    of the device's channels is taken off too, so weather at one station that moves all its
    pollutants is not a fault of one of them. Channels with a neighbour alert open or pending
    are left out of both medians. The deviation, clipped to ``clip`` times its
    learnt spread, is smoothed (EWMA), and the smoothed deviation in units of its own learnt
    spread is the z-score: it must stay beyond ``z_open`` for ``min_duration_s``. What the
    whole group does moves the common level, so a city-wide episode is not a disagreement.
    Off by default: its time constants are counted in intervals with readings and suit hourly
    stations (configs/air-hourly.toml); see benchmarks/RESULTS.md (Beijing)."""

    enabled: bool = False
    min_neighbours: int = 5  # channels of the group reporting in the interval, itself included
    log: bool = True  # compare log(mean + the channel's learnt level): for values >= 0 whose
    # spread grows with their level (concentrations, flows); false: the means themselves
    min_level: float = 1.0  # floor under the learnt level in log(mean + level), metric's unit
    alpha: float = 0.005  # EWMA weight of one interval in the learnt offset
    smooth: float = 0.03  # EWMA weight of one interval in the smoothed deviation
    slow_alpha: float = 0.0015  # EWMA weight of one interval in the level and the spreads
    clip: float = 2.0  # an interval's deviation is clipped to +-clip x its learnt spread
    z_open: float = 3.0  # the smoothed deviation in its own spreads
    z_close: float = 1.5
    z_critical: float = 6.0
    min_duration_s: float = 43_200.0  # beyond z_open this long before an alert opens
    min_intervals: int = 336  # intervals with neighbours before the rule can fire


@dataclass(frozen=True)
class RateParams:
    """Rate of change from the previous reading, in the metric's unit per second: sudden
    transients such as a burst main's pressure drop. NaN (the default) disables a side."""

    max_rise_per_s: float = float("nan")
    max_fall_per_s: float = float("nan")
    critical_factor: float = 3.0  # critical from this multiple of the limit
    # readings closer together count as this far apart, so that the step noise of a fast
    # logger does not read as a steep rate (a sudden change still does)
    min_dt_s: float = 60.0


@dataclass(frozen=True)
class HampelParams:
    """Isolated spikes in heavy-tailed series: a jump from the reading before, against the
    median and the robust spread (1.4826 x MAD, at least 1.2533 x the mean absolute deviation)
    of the changes in the window, that the next reading takes back. Reported when that next
    reading arrives; a step that stays is a level change, not a spike. Off by default: on the
    simulated city and on Beijing it finds no spike that zscore misses (benchmarks/RESULTS.md);
    it is the spike rule for series whose change z-score is too noisy to keep on
    (configs/air-hourly.toml)."""

    enabled: bool = False
    z_open: float = 12.0  # the jump's robust z-score
    z_critical: float = 24.0
    back: float = 0.5  # taken back: the next reading within back x the jump of the one before
    min_readings: int = 16
    min_std: float = 0.0  # floor under the robust spread, in the metric's unit
    # 0: off. Else a jump is not reported when another channel of the same device changed the
    # same way at the same time (its latest reading or the one before, at the jump's
    # timestamp) by at least this share of the jump's z, in that channel's own robust z: local
    # weather or a real plume moves several pollutants of one station, a sensor fault one.
    siblings: float = 0.0


@dataclass(frozen=True)
class CusumParams:
    """Level shifts and slow drift: each value against the channel's learnt level (an EWMA),
    in learnt standard deviations (1.2533 x the EWMA of the absolute deviation), clipped, is
    summed on each side (two-sided CUSUM with allowance k). The level keeps learning, so after
    a shift the sums fall back and the alert resolves once the new level is the normal one.
    Off by default: series that wander (random-walk-like, daily cycles) keep their values on
    one side of any slow level for hours; see benchmarks/RESULTS.md for where it helps."""

    enabled: bool = False
    alpha: float = 0.01  # EWMA weight of one reading in the level and the spread
    # allowance, in standard deviations; under 0.8, since on a steady ramp the level lags
    # and the learnt spread grows with the lag, so that a drift's z-score tends to 0.8
    k: float = 0.5
    h: float = 32.0  # opens when a side's sum reaches h ...
    h_close: float = 8.0  # ... and stays open while it is >= h_close
    h_critical: float = 96.0
    clip: float = 4.0  # deviations are clipped to +-clip std in the sums and the level
    min_readings: int = 64  # readings learnt before the rule can fire
    min_std: float = 0.0  # floor under the learnt standard deviation, in the metric's unit


@dataclass(frozen=True)
class SeasonalParams:
    """Time-of-day profile per channel: for each hour of a weekday and of a weekend day, the
    usual level and spread (EWMAs learnt online; a reading weighs its share of the hour, so
    ``alpha`` is the weight of one day). A reading's z-score against its hour, clipped and
    smoothed over readings, opens an alert: congestion at 3 a.m. is unusual even though the
    same flow at 8 a.m. is not. Needs ``min_hours`` of readings in an hour's bin (days of
    history) before it fires. Costs 580 bytes per channel that enables it; off by default."""

    enabled: bool = False
    utc_offset_h: float = 0.0  # local time = UTC + offset (no daylight-saving changes)
    alpha: float = 0.1  # EWMA weight of one day's readings in an hour's bin
    smooth: float = 0.2  # EWMA weight of one reading in the smoothed z-score
    z_open: float = 4.0
    z_close: float = 2.0
    z_critical: float = 7.0
    clip: float = 8.0  # z-scores are clipped to +-clip (and deviations learnt to +-clip std)
    min_hours: float = 3.0  # hours of readings in a bin before it is used
    min_std: float = 0.0  # floor under the learnt standard deviation, in the metric's unit


@dataclass(frozen=True)
class LevelParams:
    """Values outside the channel's long-run range: each value against an EWMA of the mean and
    of the variance of all the channel's values so far (about the last ``1 / alpha``). A new
    regime, a level never seen, or a sensor reading far outside anything it has read opens an
    alert, and the alert holds while the values stay well outside; the range then widens to
    take the new level in. Off by default: a channel with a daily cycle or a trend leaves any
    long-run range now and then (NAB: benchmarks/RESULTS.md)."""

    enabled: bool = False
    alpha: float = 0.0002  # EWMA weight of one reading (the first readings: 1 / (n + 1))
    z_open: float = 6.0  # |value - mean| in standard deviations
    z_close: float = 4.5
    z_critical: float = 12.0
    min_readings: int = 64  # readings learnt before the rule can fire
    min_std: float = 0.0  # floor under the learnt standard deviation, in the metric's unit


@dataclass(frozen=True)
class ThresholdParams:
    """Absolute limits with hysteresis; NaN (unset) disables a side."""

    above: float = float("nan")
    critical_above: float = float("nan")
    clear_below: float = float("nan")
    below: float = float("nan")
    critical_below: float = float("nan")
    clear_above: float = float("nan")
    min_duration_s: float = 0.0


RULE_PARAMS: dict[str, type] = {
    "zscore": ZScoreParams,
    "flatline": FlatlineParams,
    "dropout": DropoutParams,
    "neighbour": NeighbourParams,
    "rate": RateParams,
    "hampel": HampelParams,
    "cusum": CusumParams,
    "seasonal": SeasonalParams,
    "level": LevelParams,
}


# Limits from public air-quality standards (ug/m3); see configs/city.example.toml for sources.
DEFAULT_THRESHOLDS: dict[str, ThresholdParams] = {
    "air.pm25": ThresholdParams(above=75, clear_below=65, critical_above=150, min_duration_s=600),
    "air.pm10": ThresholdParams(above=150, clear_below=130, critical_above=350, min_duration_s=600),
    "air.no2": ThresholdParams(above=200, clear_below=180, critical_above=400, min_duration_s=600),
    "air.o3": ThresholdParams(above=180, clear_below=160, critical_above=240, min_duration_s=600),
    "pipe.pressure": ThresholdParams(
        below=1.0, clear_above=1.2, critical_below=0.5, above=10.0, clear_below=9.5
    ),
}


# Vehicle counts are quiet at night and noisy at rush hour (roughly Poisson): the morning
# ramp moves more, against a window of quiet night-time changes, than a steady series would.
# Applied under any [rules.NAME.overrides] of a file, key by key.
DEFAULT_RULE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "zscore": {"traffic.flow": {"z_open": 8.0}},
    # a burst main: pressure falls by a bar or more within minutes (0.002 bar/s = 0.6 bar in
    # 5 min; the daily demand cycle moves it by about 1 bar over hours)
    "rate": {"pipe.pressure": {"max_fall_per_s": 0.002}},
}


@dataclass(frozen=True)
class RuleTable:
    """Parameters of one rule: a base set and overrides per ``kind`` or ``kind.metric``."""

    base: Any
    overrides: dict[str, Any] = field(default_factory=dict)

    def for_channel(self, kind: str, metric: str) -> Any:
        return self.overrides.get(f"{kind}.{metric}") or self.overrides.get(kind) or self.base


@dataclass(frozen=True)
class Settings:
    input: InputSettings = InputSettings()
    channels: ChannelSettings = ChannelSettings()
    batch: BatchSettings = BatchSettings()
    detect: DetectSettings = DetectSettings()
    alerts: AlertSettings = AlertSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    output: OutputSettings = OutputSettings()
    mqtt: MqttSettings = MqttSettings()
    metrics: MetricsSettings = MetricsSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    rules: dict[str, RuleTable] = field(default_factory=lambda: default_rules())
    thresholds: dict[str, ThresholdParams] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def threshold_for(self, kind: str, metric: str) -> ThresholdParams:
        return self.thresholds.get(f"{kind}.{metric}", _NO_THRESHOLD)


_NO_THRESHOLD = ThresholdParams()


def default_rules() -> dict[str, RuleTable]:
    return {name: _rule_table(name, {}) for name in RULE_PARAMS}


_SECTIONS: dict[str, type] = {
    "input": InputSettings,
    "channels": ChannelSettings,
    "batch": BatchSettings,
    "detect": DetectSettings,
    "alerts": AlertSettings,
    "snapshots": SnapshotSettings,
    "output": OutputSettings,
    "mqtt": MqttSettings,
    "metrics": MetricsSettings,
    "checkpoint": CheckpointSettings,
}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check one TOML value against a field annotation."""
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if get_origin(typ) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(key, f"unsupported type {typ}")  # pragma: no cover


def _build(cls: type, table: Any, prefix: str, base: Any = None) -> Any:
    """Make dataclass ``cls`` from a TOML table, starting from ``base`` (or defaults)."""
    if not isinstance(table, dict):
        raise ConfigError(prefix, "must be a table")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(names))})")
        values[key] = _coerce(f"{prefix}.{key}", value, hints[key])
    return dataclasses.replace(base if base is not None else cls(), **values)


def _check_cusum(key: str, p: CusumParams) -> None:
    """The settings a CUSUM rule shares: alpha, k, h, h_close, h_critical, clip, min_std."""
    if not 0 < p.alpha <= 1:
        raise ConfigError(f"{key}.alpha", "must be > 0 and <= 1")
    _check_positive(f"{key}.k", p.k, strict=False)
    _check_positive(f"{key}.h", p.h)
    if not 0 <= p.h_close <= p.h <= p.h_critical:
        raise ConfigError(key, "needs 0 <= h_close <= h <= h_critical")
    _check_positive(f"{key}.clip", p.clip)
    _check_positive(f"{key}.min_std", p.min_std, strict=False)


def _check_positive(key: str, value: float, strict: bool = True) -> None:
    if value != value or value == math.inf:  # TOML has nan and inf
        raise ConfigError(key, f"must be a finite number, got {value}")
    if value < 0 or (strict and value == 0):
        raise ConfigError(key, f"must be {'>' if strict else '>='} 0, got {value}")


def _validate(s: Settings) -> None:

    if not s.input.patterns:
        raise ConfigError("input.patterns", "needs at least one topic pattern")
    for i, pattern in enumerate(s.input.patterns):
        try:
            TopicPattern(pattern)
        except ValueError as exc:
            raise ConfigError(f"input.patterns[{i}]", str(exc)) from None
    _check_positive("input.max_payload_bytes", s.input.max_payload_bytes)
    _check_positive("input.max_future_s", s.input.max_future_s, strict=False)
    try:
        parse_rfc3339_ms(s.input.min_ts)
    except ValueError:
        raise ConfigError("input.min_ts", f"not an RFC 3339 time: {s.input.min_ts!r}") from None
    if not s.channels.kinds:
        raise ConfigError("channels.kinds", "needs at least one kind")
    _check_positive("channels.max_channels", s.channels.max_channels)
    if s.channels.sensors and not Path(s.channels.sensors).is_file():
        raise ConfigError("channels.sensors", f"no such file: {s.channels.sensors}")
    _check_positive("batch.max_readings", s.batch.max_readings)
    _check_positive("batch.max_delay_ms", s.batch.max_delay_ms)
    if not 4 <= s.detect.window <= 4096:
        raise ConfigError("detect.window", f"must be between 4 and 4096, got {s.detect.window}")
    _check_positive("detect.tick_s", s.detect.tick_s)
    _check_positive("alerts.hold_s", s.alerts.hold_s, strict=False)
    _check_positive("alerts.flap_window_s", s.alerts.flap_window_s, strict=False)
    _check_positive("alerts.flap_max", s.alerts.flap_max)
    _check_positive("alerts.flap_hold_s", s.alerts.flap_hold_s, strict=False)
    _check_positive("alerts.repeat_discount", s.alerts.repeat_discount, strict=False)
    _check_positive("alerts.repeat_tau_s", s.alerts.repeat_tau_s)
    _check_positive("snapshots.interval_s", s.snapshots.interval_s)
    if not 0 <= s.snapshots.grace_s < s.snapshots.interval_s:
        raise ConfigError("snapshots.grace_s", "must be >= 0 and < snapshots.interval_s")
    _validate_mqtt(s.mqtt)
    if s.metrics.listen:
        try:
            parse_host_port(s.metrics.listen)
        except ValueError as exc:
            raise ConfigError("metrics.listen", str(exc)) from None
    _check_positive("checkpoint.interval_s", s.checkpoint.interval_s)
    for name, table in s.rules.items():
        for scope, p in [("", table.base), *table.overrides.items()]:
            key = f"rules.{name}" + (f".overrides.{scope}" if scope else "")
            if isinstance(p, ZScoreParams):
                _check_positive(f"{key}.z_open", p.z_open)
                if not 0 <= p.z_close <= p.z_open <= p.z_critical:
                    raise ConfigError(key, "needs 0 <= z_close <= z_open <= z_critical")
                _check_positive(f"{key}.min_std", p.min_std, strict=False)
                if not 2 <= p.min_readings <= s.detect.window:
                    raise ConfigError(f"{key}.min_readings", "must be between 2 and detect.window")
            elif isinstance(p, FlatlineParams):
                _check_positive(f"{key}.min_readings", p.min_readings)
                _check_positive(f"{key}.min_duration_s", p.min_duration_s, strict=False)
                _check_positive(f"{key}.tolerance", p.tolerance, strict=False)
                if not 0 <= p.max_chance < 1:
                    raise ConfigError(f"{key}.max_chance", "must be >= 0 and < 1")
            elif isinstance(p, NeighbourParams):
                if p.min_neighbours < 3:
                    raise ConfigError(f"{key}.min_neighbours", "must be >= 3")
                for name in ("alpha", "smooth", "slow_alpha"):
                    if not 0 < getattr(p, name) <= 1:
                        raise ConfigError(f"{key}.{name}", "must be > 0 and <= 1")
                _check_positive(f"{key}.min_level", p.min_level)
                _check_positive(f"{key}.clip", p.clip)
                _check_positive(f"{key}.z_open", p.z_open)
                if not 0 <= p.z_close <= p.z_open <= p.z_critical:
                    raise ConfigError(key, "needs 0 <= z_close <= z_open <= z_critical")
                _check_positive(f"{key}.min_duration_s", p.min_duration_s, strict=False)
                _check_positive(f"{key}.min_intervals", p.min_intervals)
            elif isinstance(p, HampelParams):
                _check_positive(f"{key}.z_open", p.z_open)
                if not p.z_critical >= p.z_open:  # also refuses nan
                    raise ConfigError(f"{key}.z_critical", "must be >= z_open")
                if not 0 <= p.back < 1:
                    raise ConfigError(f"{key}.back", "must be >= 0 and < 1")
                if not 3 <= p.min_readings <= s.detect.window:
                    raise ConfigError(f"{key}.min_readings", "must be between 3 and detect.window")
                _check_positive(f"{key}.min_std", p.min_std, strict=False)
                _check_positive(f"{key}.siblings", p.siblings, strict=False)
            elif isinstance(p, CusumParams):
                _check_cusum(key, p)
                _check_positive(f"{key}.min_readings", p.min_readings)
            elif isinstance(p, SeasonalParams):
                if not -14 <= p.utc_offset_h <= 14:
                    raise ConfigError(f"{key}.utc_offset_h", "must be between -14 and 14")
                for name in ("alpha", "smooth"):
                    if not 0 < getattr(p, name) <= 1:
                        raise ConfigError(f"{key}.{name}", "must be > 0 and <= 1")
                if not 0 <= p.z_close <= p.z_open <= p.z_critical <= p.clip:
                    raise ConfigError(key, "needs 0 <= z_close <= z_open <= z_critical <= clip")
                _check_positive(f"{key}.z_open", p.z_open)
                _check_positive(f"{key}.min_hours", p.min_hours, strict=False)
                _check_positive(f"{key}.min_std", p.min_std, strict=False)
            elif isinstance(p, LevelParams):
                if not 0 < p.alpha <= 1:
                    raise ConfigError(f"{key}.alpha", "must be > 0 and <= 1")
                _check_positive(f"{key}.z_open", p.z_open)
                if not 0 <= p.z_close <= p.z_open <= p.z_critical:
                    raise ConfigError(key, "needs 0 <= z_close <= z_open <= z_critical")
                _check_positive(f"{key}.min_readings", p.min_readings)
                _check_positive(f"{key}.min_std", p.min_std, strict=False)
            elif isinstance(p, RateParams):
                for side in ("max_rise_per_s", "max_fall_per_s"):
                    v = getattr(p, side)
                    if v == v:
                        _check_positive(f"{key}.{side}", v)
                if not p.critical_factor >= 1:  # also refuses nan
                    raise ConfigError(f"{key}.critical_factor", "must be >= 1")
                _check_positive(f"{key}.min_dt_s", p.min_dt_s)
            elif isinstance(p, DropoutParams):
                _check_positive(f"{key}.factor", p.factor)
                _check_positive(f"{key}.min_gap_s", p.min_gap_s, strict=False)
    for name, t in s.thresholds.items():
        key = f"thresholds.{name}"
        if name.count(".") != 1:
            raise ConfigError(key, "name must be 'kind.metric'")
        _check_positive(f"{key}.min_duration_s", t.min_duration_s, strict=False)
        if t.above == t.above and t.clear_below == t.clear_below and t.clear_below > t.above:
            raise ConfigError(f"{key}.clear_below", "must be <= above")
        if t.below == t.below and t.clear_above == t.clear_above and t.clear_above < t.below:
            raise ConfigError(f"{key}.clear_above", "must be >= below")


def _validate_mqtt(m: MqttSettings) -> None:
    try:
        parse_broker_url(m.broker)
    except ValueError as exc:
        raise ConfigError("mqtt.broker", str(exc)) from None
    for i, topic in enumerate(m.topics):
        if (
            not topic
            or "#" in topic[:-1]
            or any(("+" in seg or "#" in seg) and len(seg) > 1 for seg in topic.split("/"))
        ):
            raise ConfigError(f"mqtt.topics[{i}]", f"not a valid MQTT topic filter: {topic!r}")
    if m.qos not in (0, 1):
        raise ConfigError("mqtt.qos", f"must be 0 or 1, got {m.qos}")
    if not m.client_id and not m.clean_session:
        raise ConfigError("mqtt.client_id", "a persistent session needs a fixed client id")
    if m.protocol not in ("5", "3.1.1"):
        raise ConfigError("mqtt.protocol", f'must be "5" or "3.1.1", got {m.protocol!r}')
    _check_positive("mqtt.keepalive_s", m.keepalive_s)
    if m.keepalive_s > 65_535:  # MQTT's two-byte field
        raise ConfigError("mqtt.keepalive_s", f"must be <= 65535, got {m.keepalive_s}")
    _check_positive("mqtt.session_expiry_s", m.session_expiry_s, strict=False)
    if m.session_expiry_s > 0xFFFF_FFFF:  # MQTT 5's four-byte property
        raise ConfigError("mqtt.session_expiry_s", "must be <= 4294967295")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        path = getattr(m, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"mqtt.{key}", f"no such file: {path}")
    if bool(m.cert_file) != bool(m.key_file):
        raise ConfigError("mqtt.cert_file", "a client certificate needs cert_file and key_file")
    _check_positive("mqtt.reconnect_min_s", m.reconnect_min_s)
    if not m.reconnect_max_s >= m.reconnect_min_s:  # also refuses nan
        raise ConfigError("mqtt.reconnect_max_s", "must be >= mqtt.reconnect_min_s")
    if not all(valid_id(seg) for seg in m.alert_prefix.split("/")):
        raise ConfigError("mqtt.alert_prefix", f"not a plain topic prefix: {m.alert_prefix!r}")


@dataclass(frozen=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int
    username: str


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user@]host[:port]`` or ``mqtts://...``; a password in the URL is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"must start with mqtt:// or mqtts://, got {url!r}")
    if parts.password is not None:
        raise ValueError(
            "a password in the broker URL is not accepted; use mqtt.password_file "
            "or the STREAMPROC_MQTT_PASSWORD environment variable"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"expected mqtt[s]://[user@]host[:port], got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    tls = parts.scheme == "mqtts"
    return BrokerAddress(tls, parts.hostname, port or (8883 if tls else 1883), parts.username or "")


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


def _rule_table(name: str, raw: Any) -> RuleTable:
    cls = RULE_PARAMS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"rules.{name}", "must be a table")
    raw = dict(raw)
    overrides_raw = raw.pop("overrides", {})
    base = _build(cls, raw, f"rules.{name}")
    if not isinstance(overrides_raw, dict):
        raise ConfigError(f"rules.{name}.overrides", "must be a table")
    merged = {k: dict(v) for k, v in DEFAULT_RULE_OVERRIDES.get(name, {}).items()}
    for scope, sub in overrides_raw.items():
        merged[scope] = {**merged.get(scope, {}), **sub} if isinstance(sub, dict) else sub
    overrides: dict[str, Any] = {}
    for scope in sorted(merged, key=lambda s: "." in s):  # kinds before kind.metric
        sub = merged[scope]
        # a kind.metric override starts from the kind override when there is one
        start = overrides.get(scope.split(".")[0], base) if "." in scope else base
        overrides[scope] = _build(cls, sub, f"rules.{name}.overrides.{scope}", start)
    return RuleTable(base, overrides)


def from_dict(doc: dict[str, Any]) -> Settings:
    """Settings from a parsed TOML document; raises ConfigError."""
    values: dict[str, Any] = {}
    for key, raw in doc.items():
        if key in _SECTIONS:
            values[key] = _build(_SECTIONS[key], raw, key)
        elif key == "rules":
            if not isinstance(raw, dict):
                raise ConfigError("rules", "must be a table")
            rules = default_rules()
            for name, sub in raw.items():
                if name not in RULE_PARAMS:
                    known = ", ".join(RULE_PARAMS)
                    raise ConfigError(f"rules.{name}", f"unknown rule (known: {known})")
                rules[name] = _rule_table(name, sub)
            values["rules"] = rules
        elif key == "thresholds":
            if not isinstance(raw, dict):
                raise ConfigError("thresholds", "must be a table")
            thresholds = dict(DEFAULT_THRESHOLDS)
            for name, sub in raw.items():
                thresholds[name] = _build(ThresholdParams, sub, f"thresholds.{name}")
            values["thresholds"] = thresholds
        else:
            known = ", ".join([*_SECTIONS, "rules", "thresholds"])
            raise ConfigError(key, f"unknown section (known: {known})")
    settings = Settings(**values)
    _validate(settings)
    return settings


def load(path: str | Path | None) -> Settings:
    """Read and validate a TOML file; ``None`` gives the defaults."""
    if path is None:
        return from_dict({})
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return from_dict(doc)
