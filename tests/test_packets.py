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
from gmqtt.mqtt.utils import pack_variable_byte_integer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.config import MqttSettings
from streamproc.counters import RateLimitedLog
from streamproc.sources.mqtt import MqttConnection
from streamproc.sources.packets import read_packets
from tests.mosquitto import Broker

Got = tuple[Any, ...]  # (topic, payload) from on_message; ("held", id, topic, payload, dup)


def _packet(cmd: int, body: bytes) -> bytes:
    return bytes([cmd]) + pack_variable_byte_integer(len(body)) + body


def publish(topic: bytes, payload: bytes, v5: bool, qos: int = 0, flags: int = 0,
            props: bytes = b"", mid: int = 7) -> bytes:  # fmt: skip
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += pack_variable_byte_integer(len(props)) + props
    return _packet(0x30 | qos << 1 | flags, body + payload)


USER_PROPERTY = b"\x26\x00\x01k\x00\x01v"
ALIAS = b"\x23\x00\x05"  # topic alias 5

topics = st.sampled_from([b"city/a/air/s1", b"city/b/pipe/p-2", "city/é/x".encode(), b"c/\xff"])


@st.composite
def packets(draw: st.DrawFn, v5: bool) -> tuple[bytes, int]:
    """One packet and its QoS if it is a plain PUBLISH (read directly), else -1."""
    topic = draw(topics)
    payload = draw(st.binary(max_size=300))
    plain = -1 if topic == b"c/\xff" else 0
    forms = ["plain", "plain", "flags", "qos1", "qos1", "ping", "short", "no topic"]
    form = draw(st.sampled_from(forms + ["props", "alias", "by alias", "qos1 props"] * v5))
    flags = draw(st.sampled_from([0, 1, 8, 9]))
    if form in ("plain", "flags"):
        return publish(topic, payload, v5, flags=flags if form == "flags" else 0), plain
    if form == "qos1":
        mid = draw(st.integers(1, 65535))
        return publish(topic, payload, v5, qos=1, flags=flags, mid=mid), 1 if plain == 0 else -1
    if form == "ping":
        return _packet(0xD0, b""), -1
    if form == "short":  # a topic length beyond the packet
        return _packet(0x30 | flags & 2, b"\x01\x00" + payload[:10]), -1
    if form == "no topic":
        return publish(b"", payload, v5, qos=flags & 1), -1
    if form == "props":
        return publish(topic, payload, v5, props=USER_PROPERTY), -1
    if form == "qos1 props":
        return publish(topic, payload, v5, qos=1, props=USER_PROPERTY), -1
    if form == "alias":
        return publish(topic, payload, v5, props=ALIAS), -1
    return publish(b"", payload, v5, props=ALIAS), -1


class Reader:
    """A protocol object over gmqtt's real package handler: ``got`` records, in order, what
    reaches the client's ``on_message`` and what ``direct`` delivers; with ``hold``, QoS 1
    messages are held as ``MqttConnection`` holds them (to be acknowledged later), by gmqtt's
    handler or by ``direct``. ``handled``: the commands of the packets handed to gmqtt."""

    def __init__(self, version: int, hold: bool = False):
        self.got: list[Got] = []
        self.handled: list[int] = []
        self.hold = hold
        client = gmqtt.Client("reader")
        client._connection_state.protocol_version = version
        client._connection = SimpleNamespace(send_command_with_mid=lambda *a, **k: None)
        client.on_message = lambda c, topic, payload, qos, props: self.got.append((topic, payload))
        handler = client._package_handler
        if hold:
            handler._handle_qos_1_publish_packet = lambda mid, payload, topic, props: self.held(
                mid, topic, payload, bool(props.get("dup"))
            )

        def put_package(pkg: Any) -> None:
            self.handled.append(pkg.cmd)
            handler(pkg)

        connection = SimpleNamespace(_handler=handler, put_package=put_package)
        handler.set_connection(connection)
        self.protocol = SimpleNamespace(_connection=connection, proto_ver=version)
        self.warn = RateLimitedLog(logging.getLogger("test"))

    def deliver(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))

    def held(self, mid: int, topic: str, payload: bytes, dup: bool) -> None:
        self.got.append(("held", mid, topic, payload, dup))

    def direct(self, data: bytes) -> int:
        held = self.held if self.hold else None
        return read_packets(self.protocol, self.deliver, held, self.warn, data)  # type: ignore[arg-type]

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
@given(data=st.data(), v5=st.booleans(), hold=st.booleans())
def test_messages_are_those_of_gmqtts_reader(data: st.DataObject, v5: bool, hold: bool) -> None:
    drawn = data.draw(st.lists(packets(v5), max_size=30))
    stream = b"".join(p for p, _ in drawn)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    version = MQTTv50 if v5 else MQTTv311
    ours, theirs = Reader(version, hold), Reader(version, hold)
    assert _feed(ours.direct, stream, cuts) == _feed(theirs.gmqtt, stream, cuts) == 0
    assert ours.got == theirs.got
    direct = sum(qos == 0 or (qos == 1 and hold) for _, qos in drawn)
    assert len(theirs.handled) - len(ours.handled) == direct


def test_plain_messages_skip_gmqtts_handler() -> None:
    """Plain messages are delivered directly (QoS 1 ones only when held); the others reach
    gmqtt, in order."""
    for version, v5 in ((MQTTv311, False), (MQTTv50, True)):
        for hold in (False, True):
            r = Reader(version, hold)
            stream = (publish(b"a/1", b"x", v5) + publish(b"a/2", b"y", v5, qos=1, mid=300)
                      + publish(b"a/3", b"z", v5, qos=1, flags=8, mid=2)
                      + publish(b"a/4", b"w", v5, flags=1) + _packet(0xD0, b""))  # fmt: skip
            if v5:
                stream += publish(b"a/5", b"v", v5, props=USER_PROPERTY)
            assert r.direct(stream) == len(stream)
            qos1 = [("held", 300, "a/2", b"y", False), ("held", 2, "a/3", b"z", True)]
            if not hold:  # gmqtt acknowledges them and calls on_message
                qos1 = [("a/2", b"y"), ("a/3", b"z")]
            assert r.got == [("a/1", b"x"), *qos1, ("a/4", b"w")] + [("a/5", b"v")] * v5
            assert r.handled == [0x32, 0x3A] * (not hold) + [0xD0] + [0x30] * v5


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
        assert read_packets(r.protocol, deliver, None, r.warn, stream) == len(stream)  # type: ignore[arg-type]
    assert r.got == [("a/1", b"x"), ("a/2", b"y")]
    assert "ValueError: boom" in caplog.text


async def until(ok: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a connection's state to change (the callbacks that change it run in the loop)."""
    async with asyncio.timeout(timeout):
        while not ok():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize(("protocol", "hold"), [("5", False), ("5", True), ("3.1.1", True)])
def test_a_connection_reads_plain_messages_itself(
    protocol: str, hold: bool, broker: Broker
) -> None:
    """Through mosquitto: every connection, the first and one after a reconnect, reads with
    ``read_packets``; messages at QoS 0 and 1, and with properties, all arrive, once each. Held
    QoS 1 messages are acknowledged in one write per ``ack`` call, which the broker takes (no
    disconnect: the one reconnect is ours)."""
    n = 200

    async def scenario(
        broker: Broker,
    ) -> tuple[list[tuple[str, bytes]], MqttConnection, list[tuple[int, int]]]:
        got: list[tuple[str, bytes]] = []
        arrived = asyncio.Event()
        writes: list[tuple[int, int]] = []  # ids and socket writes per ack call

        def on_message(topic: str, payload: bytes) -> None:
            got.append((topic, payload))
            if len(got) % (n + 1) == 0:
                arrived.set()

        def ack() -> None:
            protocol_ = conn.client._connection._protocol  # type: ignore[union-attr]
            write, calls = protocol_.write_data, []
            protocol_.write_data = lambda data: (calls.append(data), write(data))
            connection, ids = conn.take_unacked()
            try:
                conn.ack(connection, ids)
            finally:
                del protocol_.write_data  # the class's method again
            writes.append((len(ids), len(calls)))

        m = MqttSettings(broker=broker.url, client_id="reader", protocol=protocol,
                         reconnect_min_s=0.05, reconnect_max_s=0.2)  # fmt: skip
        conn = MqttConnection(m, ("t/#",), on_message, qos=1, hold_acks=hold)
        conn.on_unacked = lambda: asyncio.get_running_loop().call_later(0.005, ack)
        sender = MqttConnection(MqttSettings(broker=broker.url, client_id="sender"), (),
                                lambda t, p: None, subscribe=False)  # fmt: skip
        assert await conn.connect(asyncio.Event())
        assert await sender.connect(asyncio.Event())
        for round_ in range(2):
            if round_:  # the broker drops us; gmqtt reconnects on a new protocol object
                conn.client._connection._transport.abort()  # type: ignore[union-attr]
                await until(lambda: not conn.connected)
            await until(lambda: conn.subscribed)
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
        return got, conn, writes

    got, conn, writes = asyncio.run(scenario(broker))
    expected = [(f"t/{r}/{i}", b"%d" % i) for r in range(2) for i in range(n)]
    assert sorted(got) == sorted(expected + [("t/props", b"p")] * 2)
    assert conn.connects == 2
    assert {w for _, w in writes} <= {0, 1}  # 0: the connection was gone
    assert max(ids for ids, w in writes if w) > 1 if hold else not writes
