"""Pieces of the broker connection that need no broker: backoff, password, subscriptions."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from streamproc.config import MqttSettings, from_dict
from streamproc.daemon import subscriptions
from streamproc.sources.mqtt import Backoff, MqttConnection, read_password
from tests.mosquitto import Broker


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


@pytest.mark.usefixtures("mosquitto_bin")
def test_messages_a_killed_broker_dropped_are_sent_again(tmp_path: Path) -> None:
    """mosquitto killed with SIGKILL while QoS 1 messages wait for its acknowledgement, then
    started again without our session: gmqtt drops those messages (and would keep their
    packet ids, stalling the connection once the window is used up); they go back to the
    outbox and are sent again, so every message is acknowledged by the new broker."""
    n = 4000

    async def scenario(broker: Broker) -> MqttConnection:
        m = MqttSettings(broker=broker.url, client_id="", clean_session=True,
                         reconnect_min_s=0.05, reconnect_max_s=0.2)  # fmt: skip
        conn = MqttConnection(m, (), lambda topic, payload: None, subscribe=False)
        assert await conn.connect(asyncio.Event())
        for i in range(n):
            conn.publish("t/x", b"%d" % i, qos=1)
            if i == n // 2:
                assert conn.inflight.entries  # some wait for their PUBACK
                broker.kill()
                while conn.connected:
                    await asyncio.sleep(0.01)
                broker.start()
            if i % 100 == 0:
                await asyncio.sleep(0)
        drained = await conn.drain(30.0)
        await conn.close()
        assert drained, f"{conn.backlog} messages never acknowledged"
        return conn

    with Broker(tmp_path / "mq") as broker:
        conn = asyncio.run(scenario(broker))
    assert conn.resent > 0
    assert conn.published - conn.resent == n
