"""Pieces of the broker connection that need no broker: backoff, password, subscriptions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streamproc.config import MqttSettings, from_dict
from streamproc.daemon import subscriptions
from streamproc.sources.mqtt import Backoff, read_password


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(0.5, 30.0, random.Random(1))
    delays = [b.next() for _ in range(12)]
    for n, d in enumerate(delays):
        nominal = min(30.0, 0.5 * 2**n)
        assert nominal * 0.5 <= d <= nominal
    assert len(set(delays)) == len(delays)  # jittered: reconnecting clients spread out
    b.reset()
    assert b.next() <= 0.5


def test_password_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_MQTT_PASSWORD", "from-env")
    assert read_password(MqttSettings()) == "from-env"
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    assert read_password(MqttSettings(password_file=str(f))) == "from-file"
    monkeypatch.delenv("STREAMPROC_MQTT_PASSWORD")
    assert read_password(MqttSettings()) is None


def test_subscriptions_cover_the_topic_patterns() -> None:
    assert subscriptions(from_dict({})) == ("city/+/+/+/+", "city/+/+/+")
    s = from_dict({"input": {"patterns": ["s/{kind}/{device}", "s/{kind}/{device}"]}})
    assert subscriptions(s) == ("s/+/+",)
    s = from_dict({"mqtt": {"topics": ["city/north/#"]}})
    assert subscriptions(s) == ("city/north/#",)
