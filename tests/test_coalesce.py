"""Small messages decoded together (streamproc/coalesce.py) against the same messages decoded
one by one: the same readings, bit for bit and in the same order, the same counts; and the
stream of one object per device and report does take the compiled path."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.coalesce import MAX_PENDING, Coalescer
from streamproc.gateway import MIN_BYTES
from streamproc.kernels import gateway as gk
from tests.fuzzing import PAYLOADS, RECV, T0, Harness

DEVICE_TOPICS = ["city/north/air/st1", "city/north/air/st2", "city/south/traffic/tr1"]
OTHER_TOPICS = [
    "city/north/air/st1/pm25",  # a metric topic: never waits
    'city/north/air/st"3',  # not a valid id: never waits
    "city/north/ufo/st4",  # unknown kind
]
TS = T0 * 1000


class Pair:
    """The same messages decoded one by one, and through a Coalescer."""

    def __init__(self) -> None:
        self.single, self.together = Harness(), Harness()
        self.coalescer = Coalescer(self.together.decoder)

    def send(self, topic: str, payload: bytes, recv_ms: int = RECV) -> None:
        self.single.decoder.decode(topic, payload, recv_ms)
        self.coalescer.add(topic, payload, recv_ms)

    def check(self) -> None:
        self.coalescer.flush()
        a, b = self.single, self.together
        assert b.decoder.internal_errors == a.decoder.internal_errors == 0
        assert a.counters.messages == b.counters.messages
        assert a.counters.dropped == b.counters.dropped
        assert a.registry.index == b.registry.index
        assert a.builder.idx == b.builder.idx
        assert a.builder.ts == b.builder.ts
        assert a.builder.val.tobytes() == b.builder.val.tobytes()  # -0.0 too


def report(ts: int = TS, **metrics: Any) -> bytes:
    return json.dumps({"ts": ts, **metrics}, separators=(",", ":")).encode()


VALUES = st.one_of(
    st.floats(-1e6, 1e6).map(lambda x: round(x, 3)),
    st.integers(-1000, 1000),
    st.sampled_from([float("nan"), 1e300 * 10, "1", None, 2**70]),
)
REPORTS = st.builds(
    lambda ts, metrics: json.dumps({"ts": ts, **metrics}).encode(),
    st.sampled_from([TS, TS + 1000, T0, TS + 3_600_000, "2026-01-05T00:00:00Z", TS + 0.5]),
    st.dictionaries(
        st.sampled_from(["pm25", "no2", "flow", "device", "value"]), VALUES, max_size=3
    ),
)
ODD = st.sampled_from(
    [
        b"{}",
        b'{"pm25":1}',  # no ts: the receive time
        b'{"ts":%d,"pm25":1},{"device":"st2","ts":%d,"pm25":5}' % (TS, TS),  # two objects
        b'{"ts":%d,"pm25":1}]' % TS,
        b' {"ts":%d,"pm25":1}' % TS,
        b'{"ts":%d,"pm25":1} ' % TS,
        b'{"ts":%d,"pm25":1,"pm25":2}' % TS,
        b'{"ts":%d,"pm25":"1"}' % TS,
        b'{"ts":%d,"readings":[{"pm25":1}]}' % TS,
    ]
)
MESSAGES = st.tuples(
    st.sampled_from(DEVICE_TOPICS) | st.sampled_from(OTHER_TOPICS),
    REPORTS | ODD | PAYLOADS,
    st.sampled_from([RECV, RECV + 250, RECV - 60_000, TS + 200_000, TS - 1]),
    st.integers(0, 9),  # 0: the caller flushes after this message
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(MESSAGES, max_size=40))
def test_messages_decoded_together_as_one_by_one(messages: list[Any]) -> None:
    pair = Pair()
    for topic, payload, recv_ms, flush in messages:
        pair.send(topic, payload, recv_ms)
        if flush == 0:
            pair.coalescer.flush()
    pair.check()


def test_a_stream_of_reports_takes_the_compiled_path() -> None:
    pair = Pair()
    n = 3 * MAX_PENDING
    for i in range(n):
        topic = DEVICE_TOPICS[i % 3]
        metric = "flow" if "traffic" in topic else "pm25"
        pair.send(topic, report(TS + 1000 * i, **{metric: i / 8, "no2": -i}), RECV)
    pair.check()
    assert pair.coalescer.coalesced == n - 3  # all but each topic's first
    assert pair.together.counters.messages["ok"] == n
    assert len(pair.together.builder) == 2 * n


def test_a_message_that_cannot_wait_comes_after_the_waiting_ones() -> None:
    pair = Pair()
    pair.send("city/north/air/st1", report(TS, pm25=1))
    pair.send("city/north/air/st1", report(TS + 1000, pm25=2))  # waits
    pair.send("city/north/air/st1", report(TS + 2000, pm25=3))  # waits
    pair.send("city/north/air/st1/pm25", b'{"ts":%d,"value":4}' % (TS + 3000))
    pair.send("city/north/air/st1", report(TS + 4000, pm25=5))  # waits
    pair.send("city/north/air/st1", report(TS + 5000, pm25=6))  # waits
    pair.check()
    assert list(pair.together.builder.val) == [1, 2, 3, 4, 5, 6]
    assert pair.coalescer.coalesced == 4


def test_one_message_cannot_carry_readings_of_another_device() -> None:
    """Two objects in one payload are not JSON: the message is malformed, not two reports."""
    pair = Pair()
    pair.send("city/north/air/st2", report(TS, pm25=1))
    pair.send("city/north/air/st1", report(TS, pm25=1))
    pair.send("city/north/air/st1", report(TS + 1, pm25=2))
    two = b'{"ts":%d,"pm25":1},{"device":"st2","ts":%d,"pm25":99}' % (TS + 2, TS + 2)
    pair.send("city/north/air/st1", two)
    pair.check()
    assert pair.together.counters.messages["malformed"] == 1
    assert 99.0 not in pair.together.builder.val


def test_each_message_keeps_its_own_receive_time() -> None:
    """A report without ``ts`` is timed when it arrives; one far ahead of the earliest
    message's receive time but not of its own is kept."""
    pair = Pair()
    pair.send("city/north/air/st1", report(TS, pm25=1), RECV)
    pair.send("city/north/air/st1", b'{"pm25":2}', RECV + 10)
    pair.send("city/north/air/st1", b'{"pm25":3}', RECV + 20)
    pair.check()
    assert list(pair.together.builder.ts) == [TS, RECV + 10, RECV + 20]
    pair = Pair()
    later = RECV + 250_000
    pair.send("city/north/air/st1", report(RECV, pm25=1), RECV)
    pair.send("city/north/air/st1", report(RECV + 400_000, pm25=2), RECV)  # too far ahead
    pair.send("city/north/air/st1", report(RECV + 450_000, pm25=3), later)  # within 300 s
    pair.check()
    assert list(pair.together.builder.val) == [1, 3]
    assert pair.together.counters.dropped["far_future"] == 1


def test_a_report_without_a_metric_is_empty() -> None:
    pair = Pair()
    pair.send("city/north/air/st1", report(TS, pm25=1))
    pair.send("city/north/air/st1", report(TS + 1, pm25=2))
    pair.send("city/north/air/st1", report(TS + 2))
    pair.send("city/north/air/st1", report(TS + 3, pm25=3))
    pair.check()
    assert pair.together.counters.messages["empty"] == 1


def test_a_device_in_the_topic_cannot_write_json() -> None:
    """Only a valid id is spliced into the coalesced array: this topic's device would add a
    reading of st1's pm25."""
    pair = Pair()
    pair.send("city/north/air/st1", report(TS, pm25=1))
    topic = 'city/north/air/st1","pm25":9,"kind":"'
    pair.send(topic, b'{"device":"st1","ts":%d,"no2":1}' % (TS + 1))  # readings: st1's
    pair.send(topic, report(TS + 2, no2=2))  # the topic's device is not an id: dropped
    pair.send("city/north/air/st1", report(TS + 3, pm25=3))
    pair.check()
    assert 9.0 not in pair.together.builder.val
    assert pair.together.counters.dropped["invalid_id"] == 1


def test_the_warm_up_compiles_what_the_coalescer_calls() -> None:
    """No compilation once traffic flows: the scan has one signature, the warm-up's, and the
    table's look-up (also compiled for the replay's callers) gains none."""
    gk.warm_up()
    finds = set(gk.find.signatures)
    pair = Pair()
    for i in range(10):
        pair.send("city/north/air/st1", report(TS + i, pm25=i))
    pair.check()
    assert pair.coalescer.coalesced == 9
    assert len(gk.scan.signatures) == 1
    assert set(gk.find.signatures) == finds


def test_a_topic_that_makes_the_scan_fall_back_stops_waiting() -> None:
    """st1 sends float times, which the scan does not read: after one batch decoded the
    general way, its messages no longer wait, and st2's are scanned again. Had its first
    message had a float time, they would never have waited."""
    for first in (report(TS, pm25=0), report(T0 + 0.5, pm25=0)):
        pair = Pair()
        pair.send("city/north/air/st1", first)
        pair.send("city/north/air/st2", report(TS, pm25=1))
        for i in range(1, 6):
            pair.send("city/north/air/st2", report(TS + 1000 * i, pm25=i))
            pair.send("city/north/air/st2", report(TS + 1000 * i + 1, pm25=i))
            pair.send("city/north/air/st1", report(T0 + i + 0.5, pm25=i))
            pair.send("city/north/air/st2", report(TS + 1000 * i + 2, pm25=i))
            pair.send("city/north/air/st2", report(TS + 1000 * i + 3, pm25=i))
            pair.coalescer.flush()
        pair.check()
        assert pair.coalescer.prefixes["city/north/air/st1"] == b""
        assert pair.coalescer.coalesced == (16 if first.startswith(b'{"ts":%d' % TS) else 20)


def test_a_gateway_batch_leaves_its_topic_unjudged() -> None:
    """A large message never waits, so it does not judge its topic (nor teach the scan's table
    its channels one by one, which cost a gateway stream most of its time): the topic's first
    small report does."""
    pair = Pair()
    topic = "city/north/air/st1"
    entries = [{"device": "st2", "ts": TS - 1000 * i, "pm25": i} for i in range(40, 0, -1)]
    batch = json.dumps({"readings": entries}).encode()
    assert len(batch) >= MIN_BYTES
    pair.send(topic, batch)
    assert topic not in pair.coalescer.prefixes
    pair.send(topic, report(TS + 1000, pm25=1))
    pair.send(topic, report(TS + 2000, pm25=2))  # waits
    pair.send(topic, report(TS + 3000, pm25=3))  # waits
    pair.check()
    assert pair.coalescer.prefixes[topic]
    assert pair.coalescer.coalesced == 2
