"""Incoming MQTT packets read in one pass per chunk of the socket: a plain PUBLISH goes straight
to the message handler, every other packet to gmqtt as before.

gmqtt builds a ``Package`` for each packet, finds its handler, unpacks the topic, the packet id
and the properties with ``struct`` and logs at debug level, several microseconds per message;
at one reading per message that is most of a subscriber's cost. A plain PUBLISH (a topic name
and no MQTT 5 properties: the stream's common case) needs none of that: its topic, packet id
and payload are slices. QoS 0 ones go to ``deliver(topic, payload)``; QoS 1 ones to
``held(packet_id, topic, payload, dup)`` when the owner acknowledges them itself (else to gmqtt,
which acknowledges them). Anything else, or anything out of the ordinary in such a packet (an
empty topic, properties such as a topic alias, a topic that is not UTF-8, a length that runs
past the packet), goes to gmqtt's handler, in the order the packets came, so it behaves exactly
as gmqtt alone does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.package import Package
from gmqtt.mqtt.protocol import MQTTProtocol

from streamproc.counters import RateLimitedLog

Deliver = Callable[[str, bytes], None]
Held = Callable[[int, str, bytes, bool], None]
MAX_LENGTH_BYTES = 4  # an MQTT Remaining Length is at most four bytes long


def read_packets(protocol: MQTTProtocol, deliver: Deliver, held: Held | None,
                 warn: RateLimitedLog, data: bytes) -> int:  # fmt: skip
    """What gmqtt's ``MQTTProtocol._read_packet`` does with ``data``, the unread bytes of the
    connection, with plain PUBLISH packets handed to ``deliver`` (QoS 0) or ``held`` (QoS 1, if
    given): returns the bytes of the whole packets read, or -1 if a length is malformed."""
    connection = protocol._connection
    if connection._handler.current_connection is not connection:
        return MQTTProtocol._read_packet(protocol, data)  # gmqtt drops what it reads
    v5 = int(protocol.proto_ver >= MQTTv50)  # bytes of property length in a plain PUBLISH
    qos1 = 0x32 if held is not None else 0x30  # a QoS 1 PUBLISH is read here only if held
    n = len(data)
    pos = 0
    delivered = False
    while pos + 1 < n:
        cmd = data[pos]
        i = pos + 1
        size = 0
        shift = 0
        while True:  # the Remaining Length: 7 bits per byte, least significant first
            if i >= n:
                return _done(connection, delivered, pos)
            b = data[i]
            i += 1
            size |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift == 7 * MAX_LENGTH_BYTES:
                return -1
        end = i + size
        if end > n:
            break
        pos = end
        kind = cmd & 0xF6  # PUBLISH and its QoS
        if (kind == 0x30 or kind == qos1) and size >= 2:
            topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
            id_end = topic_end + (kind & 0x06)  # QoS 1 (0x02): a packet id of 2 bytes
            start = id_end + v5
            if i + 2 < topic_end and start <= end and not (v5 and data[id_end]):
                try:
                    topic = data[i + 2 : topic_end].decode()
                except UnicodeDecodeError:
                    pass
                else:
                    delivered = True
                    try:
                        if kind == 0x30:
                            deliver(topic, data[start:end])
                        else:
                            mid = (data[topic_end] << 8) | data[topic_end + 1]
                            held(mid, topic, data[start:end], bool(cmd & 0x08))  # type: ignore[misc]
                    except Exception as exc:  # a bug in the handler: the connection lives on
                        warn.warn("message handler", f"{type(exc).__name__}: {exc}")
                    continue
        connection.put_package(Package(cmd, data[i:end]))
    return _done(connection, delivered, pos)


def _done(connection: Any, delivered: bool, read: int) -> int:
    if delivered:  # what gmqtt notes per packet, for the keep-alive
        now = time.monotonic()
        connection._last_data_in = now
        connection._handler._last_msg_in = now
    return read
