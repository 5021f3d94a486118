"""The real-process harness: mosquitto pub/sub, passwords, TLS client certificates, persistence."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError

from tests.mosquitto import Broker, Certs, Prometheus, free_port

TIMEOUT = 5.0

Received = tuple[str, bytes, int]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 3 * TIMEOUT))


class Inbox:
    """Collects a client's messages; `get()` waits for the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Received] = asyncio.Queue()

    def on_message(self, client: Client, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.queue.put_nowait((topic, payload, qos))
        return 0

    async def get(self) -> Received:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


async def connect(
    broker: Broker,
    inbox: Inbox | None = None,
    *,
    client_id: str | None = None,
    clean: bool = True,
    auth: tuple[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Client:
    """A connected MQTT 3.1.1 gmqtt client; closed again if the connection is refused."""
    client = Client(client_id or uuid.uuid4().hex, clean_session=clean)
    client.set_config({"reconnect_retries": 0})
    if inbox:
        client.on_message = inbox.on_message
    if auth:
        client.set_auth_credentials(*auth)
    try:
        await asyncio.wait_for(
            client.connect(broker.host, broker.port, ssl=context or False, version=MQTTv311),
            TIMEOUT,
        )
    except BaseException:
        await client.disconnect()
        raise
    return client


async def subscribe(client: Client, topic: str, qos: int = 1) -> None:
    """Subscribe and wait for the SUBACK."""
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_subscribe(client: Client, mid: int, qos: Any, props: Any) -> None:
        if not acked.done():
            acked.set_result(None)

    client.on_subscribe = on_subscribe
    client.subscribe(topic, qos=qos)
    await asyncio.wait_for(acked, TIMEOUT)


async def round_trip(broker: Broker, **options: Any) -> None:
    """One client subscribes, another publishes QoS 1; the first receives it."""
    inbox = Inbox()
    sub = await connect(broker, inbox, **options)
    pub = await connect(broker, **options)
    try:
        await subscribe(sub, "city/+/air/#")
        pub.publish("city/g1/air/dev1/pm25", b'{"value": 12.5}', qos=1)
        assert await inbox.get() == ("city/g1/air/dev1/pm25", b'{"value": 12.5}', 1)
    finally:
        for client in (pub, sub):
            # over TLS, the broker's last packet can cross our close_notify: the shutdown then
            # fails, harmlessly (the daemon disconnects as quietly); close both all the same
            with contextlib.suppress(ssl.SSLError):
                await client.disconnect()


def test_publish_and_receive_qos1(broker: Broker) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    run(round_trip(broker))


def test_password_file(tmp_path: Path, mosquitto_bin: str) -> None:
    async def scenario(broker: Broker) -> None:
        # mosquitto 2.0 answers a wrong password with 5 (not authorised) rather than 4
        for auth in [("ingest", "wrong"), ("nobody", "s3cret"), None]:
            with pytest.raises(MQTTConnectError, match="Connection Refused"):
                await connect(broker, auth=auth)
        await round_trip(broker, auth=("ingest", "s3cret"))

    with Broker(tmp_path, users={"ingest": "s3cret", "ops": "other"}) as broker:
        run(scenario(broker))


def test_tls_with_client_certificate(tmp_path: Path, mosquitto_bin: str, certs: Certs) -> None:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(certs.client_cert, certs.client_key)
    with Broker(tmp_path / "tls", tls=certs, require_client_cert=True) as broker:
        assert broker.url == f"mqtts://127.0.0.1:{broker.port}"
        run(round_trip(broker, context=context))


def test_restart_keeps_persistent_session(broker: Broker) -> None:
    """A QoS 1 message queued for an offline persistent session survives a broker restart."""
    port = broker.port

    async def before_restart() -> None:
        sub = await connect(broker, client_id="persistent-sub", clean=False)
        await subscribe(sub, "city/g1/air/#")
        await sub.disconnect()
        # The publisher hears its own message back: the broker has queued it for the session.
        echo = Inbox()
        pub = await connect(broker, echo)
        try:
            await subscribe(pub, "city/g1/air/#")
            pub.publish("city/g1/air/dev7/pm25", b"queued", qos=1)
            assert (await echo.get())[1] == b"queued"
        finally:
            await pub.disconnect()

    async def after_restart() -> None:
        inbox = Inbox()
        sub = await connect(broker, inbox, client_id="persistent-sub", clean=False)
        try:
            assert await inbox.get() == ("city/g1/air/dev7/pm25", b"queued", 1)
        finally:
            await sub.disconnect()

    run(before_restart())
    broker.restart()
    assert broker.port == port
    run(after_restart())


def test_prometheus_scrapes_a_target(tmp_path: Path, prometheus_bin: str) -> None:
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("harness_messages", "Test counter", registry=registry)
    counter.inc(42)
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry)
    try:
        with Prometheus(tmp_path, [f"127.0.0.1:{port}"], scrape_interval=0.5) as prom:
            assert prom.wait_value("harness_messages_total", 42) == 42
            counter.inc(8)
            assert prom.wait_value("harness_messages_total", lambda v: v >= 50) == 50
            [(labels, up)] = prom.query("up")
            assert labels["instance"] == f"127.0.0.1:{port}" and up == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
