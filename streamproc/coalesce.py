"""Small messages decoded together: one compiled scan per batch instead of a Python decode per
message, for the common stream of one JSON object per device and report.

A topic qualifies once a message on it that could wait (a JSON object under
``gateway.MIN_BYTES``) has been decoded into readings, its pattern names a device (a valid id)
and no metric (``city/{group}/{kind}/{device}``), and the scan reads that message alone. A later
message on it that could wait does, in ``pending``; a large one (a gateway's batch) is decoded
at once and leaves its topic unjudged. ``flush`` (before every batch, and every ``MAX_PENDING``
messages) writes two or more waiting messages as one JSON array (a lone one is decoded the
general way), each object with the topic's device spliced in as its first key
(``{"device":"d",`` + the payload after its ``{``), and hands it to the gateway scan with the
earliest receive time. If the scan reads every message exactly (each with its own integer ``ts``
and at least one metric, nothing the general decoder would drop or count apart), their readings
go to the builder in one copy and each message counts OK. Otherwise every waiting message is
decoded the general way, in order, with its own receive time: either way the readings and the
counts are those of ``Decoder.decode`` message by message. The topic of the message the scan
stopped at no longer qualifies (a device that sends float times or the odd NaN takes the general
way from then on, instead of sending a batch there every time). A message that cannot wait is
decoded after the waiting ones, so readings keep their arrival order.
"""

from __future__ import annotations

import logging
from array import array

from streamproc.batch import BatchBuilder
from streamproc.counters import OK
from streamproc.decode import TOPIC_CACHE_MAX, TOPIC_CACHE_MAX_LEN, Decoder
from streamproc.gateway import MIN_BYTES
from streamproc.topics import valid_id

log = logging.getLogger("streamproc")

MAX_PENDING = 1024  # messages waiting at most; then they are decoded


class Coalescer:
    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.max_bytes = min(MIN_BYTES, decoder.max_payload_bytes + 1)
        # topic -> the bytes spliced before its payloads; b"" if the topic does not qualify
        self.prefixes: dict[str, bytes] = {}
        self.pending: list[tuple[bytes, bytes, str, int]] = []  # prefix, payload, topic, recv
        self.coalesced = 0  # messages the scan decoded together

    def add(self, topic: str, payload: bytes, recv_ms: int) -> None:
        """Take one MQTT message: keep it for ``flush``, or decode it now."""
        prefix = self.prefixes.get(topic)
        small = len(payload) < self.max_bytes and payload[:1] == b"{"
        if prefix and small:
            self.pending.append((prefix, payload, topic, recv_ms))
            if len(self.pending) >= MAX_PENDING:
                self.flush()
            return
        if self.pending:
            self.flush()
        builder = self.decoder.builder
        n0 = len(builder.idx)
        self.decoder.decode(topic, payload, recv_ms)
        if prefix is None and small and len(builder.idx) > n0 and len(topic) <= TOPIC_CACHE_MAX_LEN:
            if len(self.prefixes) >= TOPIC_CACHE_MAX:
                self.prefixes.clear()
            self.prefixes[topic] = self._qualify(topic, payload, recv_ms, builder.idx[n0:])

    def flush(self) -> None:
        """Decode the waiting messages into the builder (a lone one the general way: the
        scan's call costs more than it saves)."""
        pending, self.pending = self.pending, []
        scanned = len(pending) > 1
        if scanned and self._scan(pending):
            self.coalesced += len(pending)
            return
        for _, payload, topic, recv_ms in pending:
            self.decoder.decode(topic, payload, recv_ms)
        if scanned:  # after a MISS: the pairs the general way registered
            self.decoder.gateway.learn()

    def _scan(self, pending: list[tuple[bytes, bytes, str, int]]) -> bool:
        """Scan the messages as one array: True if it read them all; if not, the topic of the
        message it stopped at no longer qualifies."""
        decoder, gateway = self.decoder, self.decoder.gateway
        entries = b"[" + b",".join([p + payload[1:] for p, payload, _, _ in pending]) + b"]"
        try:
            recv_ms = min(m[3] for m in pending)
            if gateway.scan_messages(entries, len(pending), recv_ms, decoder.builder):
                decoder.counters.messages[OK] += len(pending)
                return True
        except Exception:  # a bug, not bad input: the general way decodes them all the same
            log.exception("internal error while scanning %d messages together", len(pending))
            decoder.internal_errors += 1
            return False
        j = gateway.fell_back_at
        if 0 <= j < len(pending):  # that topic's messages will not wait again
            self.prefixes[pending[j][2]] = b""
        return False

    def _qualify(self, topic: str, payload: bytes, recv_ms: int, channels: array[int]) -> bytes:
        """The prefix of a topic whose first message gave readings, or b"" if its messages
        are not to wait: the topic names no device or a metric, or the scan cannot read the
        message (float times, say)."""
        fields = self.decoder.topic_fields(topic)
        if isinstance(fields, str) or fields[3] is not None:
            return b""
        device = fields[2]
        if device is None or not valid_id(device):  # a valid id needs no escape in JSON
            return b""
        prefix = b'{"device":"' + device.encode() + b'",'
        gateway = self.decoder.gateway
        gateway.know(set(channels))  # the scan's table learns them now, not after a MISS
        trial = BatchBuilder()
        if not gateway.scan_messages(b"[" + prefix + payload[1:] + b"]", 1, recv_ms, trial):
            return b""
        return prefix
