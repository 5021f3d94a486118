"""Plain QoS 0 PUBLISH packets read directly (sources/packets.py): the messages, their order
and what reaches gmqtt are those of gmqtt's own reader, however the stream is cut."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.protocol import MQTTProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.config import MqttSettings
from streamproc.counters import RateLimitedLog
from streamproc.sources.mqtt import MqttConnection
from streamproc.sources.packets import read_packets
from tests.mosquitto import Broker

Message = tuple[str, bytes]


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(cmd: int, body: bytes) -> bytes:
    return bytes([cmd]) + _length(len(body)) + body


def publish(topic: bytes, payload: bytes, v5: bool, qos: int = 0, flags: int = 0,
            props: bytes = b"") -> bytes:  # fmt: skip
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00\x07" if qos else b"")
    if v5:
        body += _length(len(props)) + props
    return _packet(0x30 | qos << 1 | flags, body + payload)


USER_PROPERTY = b"\x26\x00\x01k\x00\x01v"
ALIAS = b"\x23\x00\x05"  # topic alias 5

topics = st.sampled_from([b"city/a/air/s1", b"city/b/pipe/p-2", "city/é/x".encode(), b"c/\xff"])


@st.composite
def packets(draw: st.DrawFn, v5: bool) -> tuple[bytes, int]:
    """One packet and how many plain QoS 0 messages it is (0 or 1)."""
    topic = draw(topics)
    payload = draw(st.binary(max_size=300))
    forms = ["plain", "plain", "flags", "qos1", "ping", "short", "no topic"]
    form = draw(st.sampled_from(forms + ["props", "alias", "by alias"] * v5))
    if form in ("plain", "flags"):
        flags = draw(st.sampled_from([0, 1, 8, 9])) if form == "flags" else 0
        return publish(topic, payload, v5, flags=flags), int(topic != b"c/\xff")
    if form == "qos1":
        return publish(topic, payload, v5, qos=1), 0
    if form == "ping":
        return _packet(0xD0, b""), 0
    if form == "short":  # a topic length beyond the packet
        return _packet(0x30, b"\x01\x00" + payload[:10]), 0
    if form == "no topic":
        return publish(b"", payload, v5), 0
    if form == "props":
        return publish(topic, payload, v5, props=USER_PROPERTY), 0
    if form == "alias":
        return publish(topic, payload, v5, props=ALIAS), 0
    return publish(b"", payload, v5, props=ALIAS), 0


class Reader:
    """A protocol object over gmqtt's real package handler: ``got`` records, in order, what
    reaches the client's ``on_message``, what ``direct`` delivers, and ``handled`` the
    commands of the packets handed to gmqtt."""

    def __init__(self, version: int):
        self.got: list[Message] = []
        self.handled: list[int] = []
        client = gmqtt.Client("reader")
        client._connection_state.protocol_version = version
        client._connection = SimpleNamespace(send_command_with_mid=lambda *a, **k: None)
        client.on_message = lambda c, topic, payload, qos, props: self.got.append((topic, payload))
        handler = client._package_handler

        def put_package(pkg: Any) -> None:
            self.handled.append(pkg.cmd)
            handler(pkg)

        connection = SimpleNamespace(_handler=handler, put_package=put_package)
        handler.set_connection(connection)
        self.protocol = SimpleNamespace(_connection=connection, proto_ver=version)
        self.warn = RateLimitedLog(logging.getLogger("test"))

    def deliver(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))

    def direct(self, data: bytes) -> int:
        return read_packets(self.protocol, self.deliver, self.warn, data)  # type: ignore[arg-type]

    def gmqtt(self, data: bytes) -> int:
        return MQTTProtocol._read_packet(self.protocol, data)  # type: ignore[arg-type]


def _feed(read: Callable[[bytes], int], stream: bytes, cuts: list[int]) -> int:
    """gmqtt's read loop over the stream cut at ``cuts``: the bytes left unread."""
    buf = b""
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        buf += stream[a:b]
        done = read(buf)
        assert done >= 0
        buf = buf[done:]
    return len(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), v5=st.booleans())
def test_messages_are_those_of_gmqtts_reader(data: st.DataObject, v5: bool) -> None:
    drawn = data.draw(st.lists(packets(v5), max_size=30))
    stream = b"".join(p for p, _ in drawn)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    version = MQTTv50 if v5 else MQTTv311
    ours, theirs = Reader(version), Reader(version)
    assert _feed(ours.direct, stream, cuts) == _feed(theirs.gmqtt, stream, cuts) == 0
    assert ours.got == theirs.got
    assert len(theirs.handled) - len(ours.handled) == sum(plain for _, plain in drawn)


def test_plain_messages_skip_gmqtts_handler() -> None:
    """Plain QoS 0 messages are delivered directly; the others reach gmqtt, in order."""
    for version, v5 in ((MQTTv311, False), (MQTTv50, True)):
        r = Reader(version)
        stream = (publish(b"a/1", b"x", v5) + publish(b"a/2", b"y", v5, qos=1)
                  + publish(b"a/3", b"z", v5, flags=1) + _packet(0xD0, b""))  # fmt: skip
        if v5:
            stream += publish(b"a/4", b"w", v5, props=USER_PROPERTY)
        assert r.direct(stream) == len(stream)
        assert r.got == [("a/1", b"x"), ("a/2", b"y"), ("a/3", b"z")] + [("a/4", b"w")] * v5
        assert r.handled == [0x32, 0xD0] + [0x30] * v5


def test_a_malformed_length_resets_the_connection() -> None:
    r = Reader(MQTTv50)
    assert r.direct(b"\x30\xff\xff\xff\xff\x01") == -1
    assert r.direct(b"\x30\xff\xff") == 0  # an incomplete length: wait for more


def test_a_failing_handler_is_logged_and_reading_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    r = Reader(MQTTv50)

    def deliver(topic: str, payload: bytes) -> None:
        r.got.append((topic, payload))
        raise ValueError("boom")

    stream = publish(b"a/1", b"x", True) + publish(b"a/2", b"y", True)
    with caplog.at_level(logging.WARNING):
        assert read_packets(r.protocol, deliver, r.warn, stream) == len(stream)  # type: ignore[arg-type]
    assert r.got == [("a/1", b"x"), ("a/2", b"y")]
    assert "ValueError: boom" in caplog.text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_connection_reads_plain_messages_itself(protocol: str, broker: Broker) -> None:
    """Through mosquitto: every connection, the first and one after a reconnect, reads with
    ``read_packets``; messages at QoS 0 and 1, and with properties, all arrive."""
    n = 200

    async def scenario(broker: Broker) -> list[Message]:
        got: list[Message] = []
        arrived = asyncio.Event()

        def on_message(topic: str, payload: bytes) -> None:
            got.append((topic, payload))
            if len(got) % (n + 1) == 0:
                arrived.set()

        m = MqttSettings(broker=broker.url, client_id="reader", protocol=protocol,
                         reconnect_min_s=0.05, reconnect_max_s=0.2)  # fmt: skip
        conn = MqttConnection(m, ("t/#",), on_message, qos=1)
        sender = MqttConnection(MqttSettings(broker=broker.url, client_id="sender"), (),
                                lambda t, p: None, subscribe=False)  # fmt: skip
        assert await conn.connect(asyncio.Event())
        assert await sender.connect(asyncio.Event())
        for round_ in range(2):
            if round_:  # the broker drops us; gmqtt reconnects on a new protocol object
                conn.client._connection._transport.abort()  # type: ignore[union-attr]
                while conn.connected:
                    await asyncio.sleep(0.01)
            while not conn.subscribed:
                await asyncio.sleep(0.01)
            assert conn.client is not None
            assert conn.client._connection._protocol._read_packet.func is read_packets
            arrived.clear()
            for i in range(n):
                sender.publish(f"t/{round_}/{i}", b"%d" % i, qos=i % 2)
            assert sender.client is not None
            sender.client.publish("t/props", b"p", qos=0, user_property=("k", "v"))
            await asyncio.wait_for(arrived.wait(), 10)
        await sender.close()
        await conn.close()
        return got

    got = asyncio.run(scenario(broker))
    expected = [(f"t/{r}/{i}", b"%d" % i) for r in range(2) for i in range(n)]
    assert sorted(got) == sorted(expected + [("t/props", b"p")] * 2)
