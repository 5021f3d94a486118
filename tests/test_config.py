"""Configuration: defaults, validation errors that name the key, overrides."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from streamproc.config import ConfigError, from_dict, load


def test_defaults_need_no_file() -> None:
    s = load(None)
    assert s.detect.window == 64 and s.batch.max_readings == 10_000
    assert s.threshold_for("air", "pm25").above == 75
    assert math.isnan(s.threshold_for("traffic", "speed").above)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"detect": {"windw": 3}}, "detect.windw"),
        ({"detect": {"window": "64"}}, "detect.window"),
        ({"detect": {"window": 2}}, "detect.window"),
        ({"batch": {"max_readings": 0}}, "batch.max_readings"),
        ({"rules": {"zscore": {"z_open": 2, "z_close": 3}}}, "rules.zscore"),
        (
            {"rules": {"zscore": {"overrides": {"air": {"z_opn": 1}}}}},
            "rules.zscore.overrides.air.z_opn",
        ),
        ({"rules": {"nosuch": {}}}, "rules.nosuch"),
        ({"thresholds": {"pm25": {"above": 1}}}, "thresholds.pm25"),
        (
            {"thresholds": {"air.pm25": {"above": 10, "clear_below": 20}}},
            "thresholds.air.pm25.clear_below",
        ),
        ({"input": {"patterns": ["city/{nokind}"]}}, "input.patterns[0]"),
        ({"input": {"min_ts": "yesterday"}}, "input.min_ts"),
        ({"snapshots": {"interval_s": 60, "grace_s": 60}}, "snapshots.grace_s"),
        ({"channels": {"sensors": "/no/such/file.csv"}}, "channels.sensors"),
        ({"nosection": {}}, "nosection"),
    ],
)
def test_errors_name_the_key(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(doc)
    assert err.value.key == key


def test_overrides_by_kind_then_metric() -> None:
    s = from_dict(
        {
            "rules": {
                "zscore": {
                    "z_open": 5.0,
                    "overrides": {"air": {"z_open": 7.0}, "air.no2": {"min_std": 2.0}},
                }
            }
        }
    )
    z = s.rules["zscore"]
    assert z.for_channel("pipe", "pressure").z_open == 5.0
    assert z.for_channel("air", "pm25").z_open == 7.0
    assert (z.for_channel("air", "no2").z_open, z.for_channel("air", "no2").min_std) == (7.0, 2.0)
    assert z.for_channel("traffic", "flow").z_open == 8.0  # a default override stays


def test_bad_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text("[detect\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("broker", "key"),
    [
        ("mqtt://user:secret@host:1883", "mqtt.broker"),  # a password in the URL is refused
        ("http://host", "mqtt.broker"),
        ("mqtt://host:99999", "mqtt.broker"),
        ("mqtt://", "mqtt.broker"),
    ],
)
def test_broker_url_errors(broker: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"mqtt": {"broker": broker}})
    assert err.value.key == key
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"mqtt": {"qos": 2}}, "mqtt.qos"),
        ({"mqtt": {"protocol": "4"}}, "mqtt.protocol"),
        ({"mqtt": {"topics": ["city/#/x"]}}, "mqtt.topics[0]"),
        ({"mqtt": {"client_id": ""}}, "mqtt.client_id"),
        ({"mqtt": {"cert_file": "/nonexistent"}}, "mqtt.cert_file"),
        ({"mqtt": {"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}}, "mqtt.reconnect_max_s"),
        ({"mqtt": {"alert_prefix": "a/+"}}, "mqtt.alert_prefix"),
        ({"metrics": {"listen": "9108"}}, "metrics.listen"),
        ({"checkpoint": {"interval_s": 0}}, "checkpoint.interval_s"),
    ],
)
def test_live_settings_errors(doc: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(doc)
    assert err.value.key == key


def test_broker_urls() -> None:
    from streamproc.config import parse_broker_url

    a = parse_broker_url("mqtts://ops@[::1]")
    assert (a.tls, a.host, a.port, a.username) == (True, "::1", 8883, "ops")
    b = parse_broker_url("mqtt://broker.city:1884")
    assert (b.tls, b.host, b.port, b.username) == (False, "broker.city", 1884, "")
