"""The broker connection: connect with jittered exponential backoff, subscribe, reconnect and
subscribe again, hand every message to a callback; publish alerts on the same connection.

Built on gmqtt. A persistent session (fixed client id, clean session off; MQTT 5 with a
session expiry) makes the broker queue QoS 1 messages while the daemon is away and deliver
them when it returns. gmqtt acknowledges a QoS 1 message when it arrives, before the
callback runs, unless ``hold_acks``: then the message ids wait in ``unacked`` until the owner
has made the messages safe (the journal) and calls ``ack``. Ids held when the connection drops
are forgotten: the broker sends those messages again after the reconnect, flagged DUP; one
whose topic and payload are among the last ``RECENT`` taken (or ``remember``ed: the journal
replayed at start) is acknowledged without being handed on, and counted in ``duplicates``.

Outgoing messages go through an outbox: the broker lets only ``Receive Maximum`` QoS 1
messages be unacknowledged at once (mosquitto: 20), so messages wait in the outbox (bounded by
``OUTBOX_MAX``; beyond it the oldest is dropped and counted) while the window is full or the
connection is down, and are sent as PUBACKs come back. Messages sent but not acknowledged when
the connection drops are sent again after the reconnect: by gmqtt if the broker kept the
session, else as new messages from the front of the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.mqtt.package import CommandWithMidPacket
from gmqtt.storage import PersistentStorage

from streamproc.config import MqttSettings, parse_broker_url
from streamproc.counters import RateLimitedLog
from streamproc.sources.packets import Held, read_packets

log = logging.getLogger("streamproc.mqtt")
PASSWORD_ENV = "STREAMPROC_MQTT_PASSWORD"
OUTBOX_MAX = 100_000
RECENT = 10_000  # QoS 1 messages remembered to recognise the broker's redeliveries

MessageHandler = Callable[[str, bytes], None]
Outgoing = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


class Backoff:
    """Delays of ``lo * 2**n`` capped at ``hi``, each scaled by a random factor in [0.5, 1]."""

    def __init__(self, lo: float, hi: float, rng: random.Random | None = None):
        self.lo, self.hi = lo, hi
        self.n = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.hi, self.lo * 2.0 ** min(self.n, 30))
        self.n += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.n = 0


def read_password(m: MqttSettings) -> str | None:
    """From ``mqtt.password_file`` (one line) or the STREAMPROC_MQTT_PASSWORD variable."""
    if m.password_file:
        with open(m.password_file) as f:
            return f.readline().rstrip("\r\n")
    return os.environ.get(PASSWORD_ENV)


def tls_context(m: MqttSettings) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name; presents a client certificate if set."""
    ctx = ssl.create_default_context(cafile=m.ca_file or None)
    if m.cert_file:
        ctx.load_cert_chain(m.cert_file, m.key_file)
    return ctx


class _Inflight(PersistentStorage):
    """gmqtt's store of unacknowledged QoS 1 messages, keeping each one's outbox entry: tells
    us when one is acknowledged, and hands the entries back when gmqtt drops them all (a
    reconnect to a broker that has no session for us, e.g. after it was killed), with their
    packet ids, which gmqtt would otherwise never reuse."""

    def __init__(self, on_ack: Callable[[], None]):
        super().__init__()
        self.on_ack = on_ack
        self.sending: Outgoing | None = None  # the entry being handed to gmqtt's publish
        self.entries: dict[int, Outgoing] = {}
        self.on_dropped: Callable[[dict[int, Outgoing]], None] = lambda entries: None

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        if self.sending is not None:
            self.entries[mid] = self.sending

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.entries.pop(mid, None)
        self.on_ack()

    def clear(self) -> None:
        super().clear()
        dropped, self.entries = self.entries, {}
        if dropped:
            self.on_dropped(dropped)


class _Client(gmqtt.Client):
    """gmqtt's client, with our backoff between its reconnect attempts; each connection reads
    plain messages itself (``packets.read_packets``) and hands them to ``deliver`` (QoS 0) or
    ``held`` (QoS 1, when the owner acknowledges them)."""

    backoff: Backoff
    deliver: MessageHandler
    held: Held | None
    warn: RateLimitedLog

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super()._create_connection(*args, **kwargs)
        connection._protocol._read_packet = functools.partial(
            read_packets, connection._protocol, self.deliver, self.held, self.warn
        )
        return connection

    async def reconnect(self, delay: bool = False) -> None:
        self.reconnect_delay = self.backoff.next()
        await super().reconnect(delay=True)


class MqttConnection:
    """One client connection. ``on_message(topic, payload)`` runs in the event loop."""

    def __init__(self, m: MqttSettings, topics: tuple[str, ...], on_message: MessageHandler,
                 qos: int | None = None, subscribe: bool = True,
                 hold_acks: bool = False):  # fmt: skip
        """``hold_acks``: QoS 1 messages are acknowledged by ``ack``, not on arrival; the
        first id held after none calls ``on_unacked``."""
        self.m = m
        self.address = parse_broker_url(m.broker)
        self.topics = topics
        self.qos = m.qos if qos is None else qos
        self.subscribe = subscribe
        self.on_message = on_message
        self.password = read_password(m)
        self.ssl = tls_context(m) if self.address.tls else False
        self.backoff = Backoff(m.reconnect_min_s, m.reconnect_max_s)
        self.client: _Client | None = None
        self.inflight = _Inflight(self._pump)  # QoS 1 messages sent, awaiting their PUBACK
        self.inflight.on_dropped = self._send_again
        self.outbox: deque[Outgoing] = deque()
        self.connected = False
        self.subscribed = False
        self.connects = 0
        self.published = 0  # handed to gmqtt, counting messages sent again
        self.resent = 0  # handed back by gmqtt to be sent again
        self.publish_errors = 0
        self.closing = False
        self.hold_acks = hold_acks
        self.unacked: list[int] = []  # ids of QoS 1 messages received, not acknowledged
        self.refuse_qos1 = False  # shutting down: QoS 1 messages ignored, left to the broker
        self.recent: OrderedDict[int, None] = OrderedDict()  # hashes of (topic, payload)
        self.duplicates = 0
        self.on_unacked: Callable[[], None] = lambda: None
        self._warn = RateLimitedLog(log)

    @property
    def reconnects(self) -> int:
        return max(self.connects - 1, 0)

    def describe(self) -> str:
        """Where to, for logs: never the password."""
        a = self.address
        user = f"{a.username or self.m.username}@" if (a.username or self.m.username) else ""
        return f"{'mqtts' if a.tls else 'mqtt'}://{user}{a.host}:{a.port}"

    def _make_client(self) -> _Client:
        kwargs: dict[str, Any] = {}
        if self.m.protocol == "5" and not self.m.clean_session:
            kwargs["session_expiry_interval"] = self.m.session_expiry_s
        client = _Client(self.m.client_id or None, clean_session=self.m.clean_session,
                         persistent_storage=self.inflight, **kwargs)  # fmt: skip
        client.backoff = self.backoff
        client.deliver = self.on_message
        client.held = self._take_qos1 if self.hold_acks else None
        client.warn = self._warn
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        username = self.address.username or self.m.username
        if username:
            client.set_auth_credentials(username, self.password)
        if self.hold_acks:  # gmqtt 0.8 has no public way to acknowledge later
            client._package_handler._handle_qos_1_publish_packet = self._on_qos1
        return client

    async def connect(self, stop: asyncio.Event) -> bool:
        """Try until connected (True) or ``stop`` is set (False); gmqtt reconnects after that."""
        version = MQTTv50 if self.m.protocol == "5" else MQTTv311
        a = self.address
        while not stop.is_set():
            client = self._make_client()
            try:
                await client.connect(a.host, a.port, ssl=self.ssl,
                                     keepalive=self.m.keepalive_s, version=version)  # fmt: skip
                self.client = client
                self._pump()
                return True
            except (OSError, MQTTConnectError, TimeoutError) as exc:
                delay = self.backoff.next()
                log.warning("cannot connect to %s: %s; retrying in %.1f s",
                            self.describe(), exc or type(exc).__name__, delay)  # fmt: skip
                await _quietly_disconnect(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        return False

    @property
    def backlog(self) -> int:
        """Messages not yet acknowledged (QoS 1) or not yet sent."""
        return len(self.outbox) + len(self.inflight.get_all())

    async def drain(self, timeout: float) -> bool:
        """Wait until everything published was sent and acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return not self.backlog

    async def close(self) -> None:
        self.closing = True
        if self.client is not None:
            await _quietly_disconnect(self.client)
        self.connected = False

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Send one message now, or as soon as the broker's window and the connection allow."""
        if len(self.outbox) >= OUTBOX_MAX:
            self.outbox.popleft()
            self.publish_errors += 1
            self._warn.warn("outbox", f"outgoing queue full ({OUTBOX_MAX}): oldest dropped")
        self.outbox.append((topic, payload, qos, retain))
        self._pump()

    def _pump(self) -> None:
        client = self.client
        if client is None or not self.connected:
            return
        outbox = self.outbox
        while outbox:
            topic, payload, qos, retain = self.inflight.sending = outbox[0]
            try:
                client.publish(topic, payload, qos=qos, retain=retain)
            except OverflowError:  # the window of unacknowledged messages is full
                return
            except Exception as exc:  # gmqtt raises various errors on a dead transport
                self._warn.warn("publish", f"to {topic[:200]} failed, will retry: {exc}")
                return
            finally:
                self.inflight.sending = None
            outbox.popleft()
            self.published += 1

    def _send_again(self, dropped: dict[int, Outgoing]) -> None:
        """Messages gmqtt dropped unacknowledged go back to the front of the outbox, in their
        order, to be sent again with new packet ids (the old ones are freed)."""
        if self.client is not None:
            ids = self.client._package_handler.id_generator
            for mid in dropped:
                ids.free_id(mid)
        self.outbox.extendleft(reversed(dropped.values()))
        self.resent += len(dropped)
        log.warning("the broker lost our session: %d unacknowledged messages sent again",
                    len(dropped))  # fmt: skip

    # -- gmqtt callbacks ----------------------------------------------------------------
    def _on_connect(self, client: gmqtt.Client, flags: int, rc: int, props: Any) -> None:
        self.connected = True
        self.connects += 1
        self.backoff.reset()
        self._pump()
        log.info("connected to %s as %r (session present: %s)",
                 self.describe(), self.m.client_id, bool(flags))  # fmt: skip
        if self.subscribe:
            self.subscribed = False
            # subscribe on every connect: a broker that lost the session lost its subscriptions
            client.subscribe([gmqtt.Subscription(t, qos=self.qos) for t in self.topics])

    def _on_subscribe(self, client: gmqtt.Client, mid: int, qos: Any, props: Any) -> None:
        granted = list(qos)
        if any(q >= 128 for q in granted):
            log.error("the broker refused a subscription (granted %s for %s)", granted,
                      list(self.topics))  # fmt: skip
            return
        self.subscribed = True
        log.info("subscribed to %s with QoS %s", ", ".join(self.topics), granted)

    def _on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        if self.connected and not self.closing:
            log.warning("disconnected from %s; reconnecting", self.describe())
        self.connected = False
        self.subscribed = False
        self.unacked.clear()

    def take_unacked(self) -> tuple[int, list[int]]:
        """The ids held so far, with the connection they came on, for ``ack``."""
        ids, self.unacked = self.unacked, []
        return self.connects, ids

    def ack(self, connection: int, ids: list[int]) -> None:
        """Acknowledge ``ids`` if the connection they came on is still up: gmqtt's PUBACK
        packets, written to the socket in one piece instead of one write each."""
        client = self.client
        if client is None or not self.connected or connection != self.connects or not ids:
            return
        protocol = client._connection._protocol
        build = functools.partial(CommandWithMidPacket.build_package, MQTTCommands.PUBACK,
                                  dup=False, proto_ver=protocol.proto_ver)  # fmt: skip
        protocol.write_data(b"".join([build(mid) for mid in ids]))

    def remember(self, topic: str, payload: bytes) -> None:
        """Note a message taken (so that a redelivery of it is recognised)."""
        recent = self.recent
        recent[hash((topic, payload))] = None
        if len(recent) > RECENT:
            recent.popitem(last=False)

    def _on_qos1(self, mid: int, payload: bytes, topic: str, props: Any) -> None:
        self._take_qos1(mid, topic, payload, bool(props.get("dup")))

    def _take_qos1(self, mid: int, topic: str, payload: bytes, dup: bool) -> None:
        """A QoS 1 message whose acknowledgement waits (``hold_acks``)."""
        if self.refuse_qos1:
            return
        if dup and hash((topic, payload)) in self.recent:
            self.duplicates += 1
        else:
            self.on_message(topic, payload)
            self.remember(topic, payload)
        self.unacked.append(mid)
        if len(self.unacked) == 1:
            self.on_unacked()

    def _on_message(self, client: gmqtt.Client, topic: str, payload: bytes, qos: int,
                    props: Any) -> int:  # fmt: skip
        self.on_message(topic, payload)
        return 0


async def _quietly_disconnect(client: gmqtt.Client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), 5)
    except Exception as exc:  # the connection may be half open or already gone
        log.debug("disconnect: %s", exc)
