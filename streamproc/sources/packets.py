"""Incoming MQTT packets read in one pass per chunk of the socket: a plain QoS 0 PUBLISH goes
straight to the message handler, every other packet to gmqtt as before.

gmqtt builds a ``Package`` for each packet, finds its handler, unpacks the topic, the packet id
and the properties with ``struct`` and logs at debug level, several microseconds per message;
at one reading per message that is most of a subscriber's cost. A QoS 0 PUBLISH with a topic
name and no properties (the stream's common case) needs none of that: its topic and payload
are two slices. Anything else, or anything out of the ordinary in such a packet (an empty
topic, properties such as a topic alias, a topic that is not UTF-8, a length that runs past
the packet), goes to gmqtt's handler, in the order the packets came, so it behaves exactly as
gmqtt alone does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.package import Package
from gmqtt.mqtt.protocol import MQTTProtocol

from streamproc.counters import RateLimitedLog

Deliver = Callable[[str, bytes], None]
MAX_LENGTH_BYTES = 4  # an MQTT Remaining Length is at most four bytes long


def read_packets(protocol: MQTTProtocol, deliver: Deliver, warn: RateLimitedLog,
                 data: bytes) -> int:  # fmt: skip
    """What gmqtt's ``MQTTProtocol._read_packet`` does with ``data``, the unread bytes of the
    connection, with plain QoS 0 PUBLISH packets handed to ``deliver(topic, payload)``: returns
    the bytes of the whole packets read, or -1 if a length is malformed."""
    connection = protocol._connection
    if connection._handler.current_connection is not connection:
        return MQTTProtocol._read_packet(protocol, data)  # gmqtt drops what it reads
    v5 = int(protocol.proto_ver >= MQTTv50)  # bytes of property length in a plain PUBLISH
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
        if cmd & 0xF6 == 0x30 and size >= 2:  # PUBLISH at QoS 0 (retain or dup set or not)
            topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
            start = topic_end + v5
            if i + 2 < topic_end and start <= end and not (v5 and data[topic_end]):
                try:
                    topic = data[i + 2 : topic_end].decode()
                except UnicodeDecodeError:
                    pass
                else:
                    delivered = True
                    try:
                        deliver(topic, data[start:end])
                    except Exception as exc:  # a bug in the handler: the connection lives on
                        warn.warn("message handler", f"{type(exc).__name__}: {exc}")
                    continue
        connection.put_package(Package(cmd, data[i:end]))
    return _done(connection, delivered, pos)


def _done(connection: object, delivered: bool, read: int) -> int:
    if delivered:  # what gmqtt notes per packet, for the keep-alive
        now = time.monotonic()
        connection._last_data_in = now  # type: ignore[attr-defined]
        connection._handler._last_msg_in = now  # type: ignore[attr-defined]
    return read
