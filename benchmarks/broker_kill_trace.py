"""Trace what a broker SIGKILL loses, on the wire.

    python benchmarks/broker_kill_trace.py [--runs 10] [--broker mosquitto|rabbitmq] [--keep DIR]
    python benchmarks/broker_kill_trace.py --read DIR/*.pcap

Runs the broker-SIGKILL fault test of tests/test_faults.py (the broker killed with SIGKILL and
restarted while a QoS 1 publisher sends to the daemon; mosquitto, or RabbitMQ with
``--broker rabbitmq``) under ``tcpdump -i lo``, --runs times. Each capture is reassembled per
TCP connection and read as MQTT (3.1.1 or 5): the PUBLISH packets the publishers sent, the
broker's PUBACKs to them, and the PUBLISH packets the broker delivered to the daemon (client
id ``streamproc``) before and after the restart. A message sent but never
delivered to the daemon is classified:

- ``broker``: the broker acknowledged it to the publisher (so the publisher forgot it) and
  never delivered it, before the kill or after the restart: lost inside the broker; printed
  with the time from that PUBACK to the broker's last packet before the kill;
- ``publisher``: never acknowledged and never delivered: the publisher did not send it again.

A message delivered to the daemon is not lost on the wire: if the daemon lost it, the test's
own count of readings lost (printed next to this trace's count) would exceed what the
messages lost on the wire carried.

Needs root and tcpdump (``apt-get install -y tcpdump``). One line per run and a summary go to
stdout; ``--keep DIR`` keeps the captures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = {
    "mosquitto": "tests/test_faults.py::test_broker_sigkill_mid_stream",
    "rabbitmq": "tests/test_faults.py::"
    "test_broker_sigkill_mid_stream_with_a_broker_that_saves_before_it_acknowledges",
}
DAEMON = "streamproc"
WATCHER = "watcher"

Flow = tuple[int, int, int]  # source port, destination port, the client's initial sequence
Message = tuple[bytes, bytes]  # (topic, payload)


def read_pcap(path: Path) -> dict[Flow, dict[int, tuple[float, bytes]]]:
    """TCP payloads per direction of each connection, keyed by sequence number
    (retransmissions collapse). A connection is told apart from an earlier one on the same
    ports by the client's initial sequence number (a SYN's, a SYN-ACK's acknowledgement - 1)."""
    data = path.read_bytes()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    if struct.unpack(endian + "I", data[20:24])[0] != 1:
        raise SystemExit("expected an Ethernet capture (tcpdump -i lo)")
    flows: dict[Flow, dict[int, tuple[float, bytes]]] = defaultdict(dict)
    isn: dict[tuple[int, int], int] = {}  # the connection each direction belongs to now
    i = 24
    while i + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack(endian + "IIII", data[i : i + 16])
        frame = data[i + 16 : i + 16 + caplen]
        i += 16 + caplen
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:  # IPv4, TCP
            continue
        ip = frame[14:]
        ihl, total = (ip[0] & 15) * 4, struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport, seq, ack = struct.unpack(">HHII", tcp[:12])
        if tcp[13] & 0x02:  # SYN, or SYN-ACK
            isn[(sport, dport)] = (ack - 1) % 2**32 if tcp[13] & 0x10 else seq
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            flow = (sport, dport, isn.get((sport, dport), 0))
            flows[flow].setdefault(seq, (sec + usec / 1e6, payload))
    return flows


def _varint(b: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 127) << shift
        shift += 7
        if not c & 128:
            return value, i


def mqtt_packets(segments: dict[int, tuple[float, bytes]]) -> Iterator[tuple[float, int, bytes]]:
    """(time of the segment completing it, first header byte, body) of each MQTT packet."""
    buf = b""
    for seq in sorted(segments):  # a capture of seconds does not wrap the sequence space
        ts, chunk = segments[seq]
        buf += chunk
        i = 0
        while len(buf) - i >= 2:
            try:
                length, j = _varint(buf, i + 1)
            except IndexError:
                break
            if len(buf) < j + length:
                break
            yield ts, buf[i], buf[j : j + length]
            i = j + length
        buf = buf[i:]


class Connection:
    """One client's MQTT connection: what it sent and what the broker sent back."""

    def __init__(self, client_id: str, start: float, server_port: int) -> None:
        self.client_id = client_id
        self.start = start
        self.server_port = server_port
        self.sent: list[tuple[float, int, Message]] = []  # PUBLISH: time, packet id, message
        self.received: list[tuple[float, int, Message]] = []
        self.acks: list[tuple[float, int]] = []  # PUBACK from the broker: time, packet id


def _publish(header: int, body: bytes, v5: bool) -> tuple[int, Message]:
    n = struct.unpack(">H", body[:2])[0]
    i = 2 + n
    packet_id = 0
    if header & 6:
        packet_id = struct.unpack(">H", body[i : i + 2])[0]
        i += 2
    props = 0
    if v5:
        props, i = _varint(body, i)
    return packet_id, (body[2 : 2 + n], body[i + props :])


def connections(flows: dict[Flow, dict[int, tuple[float, bytes]]]) -> list[Connection]:
    found = []
    for (sport, dport, isn), segments in flows.items():
        packets = list(mqtt_packets(segments))
        if not packets or packets[0][1] >> 4 != 1:  # starts with CONNECT
            continue
        body = packets[0][2]
        i = 10
        v5 = body[6] == 5  # protocol level 5: properties before the payload
        if v5:
            props, i = _varint(body, i)
            i += props
        n = struct.unpack(">H", body[i : i + 2])[0]
        c = Connection(body[i + 2 : i + 2 + n].decode(), packets[0][0], dport)
        for ts, header, b in packets:
            if header >> 4 == 3:
                pid, m = _publish(header, b, v5)
                c.sent.append((ts, pid, m))
        for ts, header, b in mqtt_packets(flows.get((dport, sport, isn), {})):
            if header >> 4 == 3:
                pid, m = _publish(header, b, v5)
                c.received.append((ts, pid, m))
            elif header >> 4 == 4:
                c.acks.append((ts, struct.unpack(">H", b[:2])[0]))
        found.append(c)
    return sorted(found, key=lambda c: c.start)


def trace(pcap: Path) -> dict[str, object]:
    """Sent, lost and the class of each loss, on each broker the daemon connected to twice
    (before and after the kill); other brokers on the loopback at the time are left out."""
    found = connections(read_pcap(pcap))
    totals: dict[str, object] = {"sent": 0, "lost": 0, "rows": [], "readings": 0}
    for port in {c.server_port for c in found if c.client_id == DAEMON}:
        conns = [c for c in found if c.server_port == port]
        if sum(c.client_id == DAEMON for c in conns) == 2:
            t = _trace(conns)
            for k in totals:
                totals[k] += t[k]  # type: ignore[operator]
    return totals


def _trace(conns: list[Connection]) -> dict[str, object]:
    daemon = [c for c in conns if c.client_id == DAEMON]
    restart = daemon[1].start
    before = [c for c in conns if c.start < restart]
    kill = max(ts for c in before for ts, *_ in c.received + c.acks)  # the broker's last word
    delivered = {m for c in daemon for _, _, m in c.received}
    acked: dict[Message, float] = {}
    sent: set[Message] = set()
    for c in conns:
        if c.client_id in (DAEMON, WATCHER):
            continue
        # pair each PUBACK with the earliest unacknowledged PUBLISH of that packet id
        events = sorted([(ts, 0, pid, m) for ts, pid, m in c.sent]
                        + [(ts, 1, pid, b"") for ts, pid in c.acks])  # fmt: skip
        waiting: dict[int, Message] = {}
        for ts, kind, pid, m in events:
            if kind == 0:
                waiting[pid] = m  # type: ignore[assignment]
                sent.add(m)  # type: ignore[arg-type]
            elif pid in waiting:
                acked[waiting.pop(pid)] = ts
    lost = sorted(sent - delivered)
    rows = [
        ("broker", (kill - acked[m]) * 1000) if m in acked else ("publisher", float("nan"))
        for m in lost
    ]
    readings = sum(len(json.loads(payload)) - 1 for _, payload in lost)  # fields but "ts"
    return {"sent": len(sent), "lost": len(lost), "rows": rows, "readings": readings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--broker", choices=sorted(TESTS), default="mosquitto")
    p.add_argument("--keep", type=Path, help="keep the captures in this folder")
    p.add_argument("--read", type=Path, nargs="+", help="only read these captures again")
    args = p.parse_args()
    if args.read:
        for pcap in args.read:
            print(pcap, trace(pcap))
        return
    if shutil.which("tcpdump") is None:
        raise SystemExit("tcpdump is not installed (apt-get install -y tcpdump)")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="broker-kill-"))
    folder.mkdir(parents=True, exist_ok=True)
    totals: dict[str, int] = defaultdict(int)
    print("| run | messages sent | lost on the wire | their readings | class, ms from PUBACK to "
          "the kill | readings lost (test) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        pcap = folder / f"run{run}.pcap"
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "0", "-U", "-w", str(pcap), "tcp"],
                                stderr=subprocess.PIPE)  # fmt: skip
        assert dump.stderr is not None
        dump.stderr.readline()  # "listening on lo, ...": capturing from here on
        test = subprocess.run([sys.executable, "-m", "pytest", TESTS[args.broker], "-s", "-q",
                               "-p", "no:cacheprovider"],
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        dump.terminate()
        _, err = dump.communicate()
        if not re.search(rb"^0 packets dropped by kernel", err, re.MULTILINE):
            print(f"run {run}: tcpdump dropped packets: {err.decode().strip()}", file=sys.stderr)
        found = re.search(r"readings lost (\d+)", test.stdout)
        if test.returncode != 0 or not found:
            print(test.stdout[-3000:], file=sys.stderr)
            raise SystemExit(f"run {run}: the test failed")
        t = trace(pcap)
        rows = t["rows"]
        assert isinstance(rows, list)
        for kind, _ in rows:
            totals[kind] += 1
        cls = ", ".join(f"{k} {ms:.2f}" for k, ms in rows) or "-"
        print(f"| {run} | {t['sent']} | {t['lost']} | {t['readings']} | {cls} | {found.group(1)} |",
              flush=True)  # fmt: skip
    print(f"\n{args.runs} runs; messages lost by class: {dict(totals) or 'none'}; "
          f"captures in {folder}")  # fmt: skip


if __name__ == "__main__":
    main()
