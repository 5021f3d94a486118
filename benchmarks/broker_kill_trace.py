"""Trace what a broker SIGKILL loses, on the wire.

    python benchmarks/broker_kill_trace.py [--runs 10] [--keep DIR]

Runs ``tests/test_faults.py::test_broker_sigkill_mid_stream`` (mosquitto killed with SIGKILL
and restarted while a QoS 1 publisher sends to the daemon) under ``tcpdump -i lo``, --runs
times. Each capture is reassembled per TCP connection and read as MQTT: the PUBLISH packets the
publishers sent, the broker's PUBACKs to them, and the PUBLISH packets the broker delivered to
the daemon (client id ``streamproc``) before and after the restart. A message sent but never
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
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_faults.py::test_broker_sigkill_mid_stream"
DAEMON = "streamproc"
WATCHER = "watcher"

Flow = tuple[int, int]  # (source port, destination port) on 127.0.0.1
Message = tuple[bytes, bytes]  # (topic, payload)


def read_pcap(path: Path) -> dict[Flow, dict[int, tuple[float, bytes]]]:
    """TCP payloads per flow, keyed by sequence number (retransmissions collapse)."""
    data = path.read_bytes()
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    if struct.unpack(endian + "I", data[20:24])[0] != 1:
        raise SystemExit("expected an Ethernet capture (tcpdump -i lo)")
    flows: dict[Flow, dict[int, tuple[float, bytes]]] = defaultdict(dict)
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
        sport, dport, seq = struct.unpack(">HHI", tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            flows[(sport, dport)].setdefault(seq, (sec + usec / 1e6, payload))
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
    """One client's MQTT 5 connection: what it sent and what the broker sent back."""

    def __init__(self, client_id: str, start: float) -> None:
        self.client_id = client_id
        self.start = start
        self.sent: list[tuple[float, int, Message]] = []  # PUBLISH: time, packet id, message
        self.received: list[tuple[float, int, Message]] = []
        self.acks: list[tuple[float, int]] = []  # PUBACK from the broker: time, packet id


def _publish(header: int, body: bytes) -> tuple[int, Message]:
    n = struct.unpack(">H", body[:2])[0]
    i = 2 + n
    packet_id = 0
    if header & 6:
        packet_id = struct.unpack(">H", body[i : i + 2])[0]
        i += 2
    props, i = _varint(body, i)
    return packet_id, (body[2 : 2 + n], body[i + props :])


def connections(flows: dict[Flow, dict[int, tuple[float, bytes]]]) -> list[Connection]:
    found = []
    for (sport, dport), segments in flows.items():
        packets = list(mqtt_packets(segments))
        if not packets or packets[0][1] >> 4 != 1:  # starts with CONNECT
            continue
        body = packets[0][2]
        i = 10
        if body[6] == 5:  # protocol level 5: properties before the payload
            props, i = _varint(body, i)
            i += props
        n = struct.unpack(">H", body[i : i + 2])[0]
        c = Connection(body[i + 2 : i + 2 + n].decode(), packets[0][0])
        for ts, header, b in packets:
            if header >> 4 == 3:
                pid, m = _publish(header, b)
                c.sent.append((ts, pid, m))
        for ts, header, b in mqtt_packets(flows.get((dport, sport), {})):
            if header >> 4 == 3:
                pid, m = _publish(header, b)
                c.received.append((ts, pid, m))
            elif header >> 4 == 4:
                c.acks.append((ts, struct.unpack(">H", b[:2])[0]))
        found.append(c)
    return sorted(found, key=lambda c: c.start)


def trace(pcap: Path) -> dict[str, object]:
    conns = connections(read_pcap(pcap))
    daemon = [c for c in conns if c.client_id == DAEMON]
    if len(daemon) < 2:
        raise SystemExit(f"{pcap}: expected the daemon to connect twice, saw {len(daemon)}")
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
    return {"sent": len(sent), "lost": len(lost), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--keep", type=Path, help="keep the captures in this folder")
    args = p.parse_args()
    if shutil.which("tcpdump") is None:
        raise SystemExit("tcpdump is not installed (apt-get install -y tcpdump)")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="broker-kill-"))
    folder.mkdir(parents=True, exist_ok=True)
    totals: dict[str, int] = defaultdict(int)
    print("| run | messages sent | lost on the wire | class, ms from PUBACK to the kill "
          "| readings lost (test) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        pcap = folder / f"run{run}.pcap"
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-s", "0", "-U", "-w", str(pcap), "tcp"],
                                stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(1.0)  # tcpdump prints nothing on stdout when it is listening
        test = subprocess.run([sys.executable, "-m", "pytest", TEST, "-s", "-q",
                               "-p", "no:cacheprovider"],
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        dump.terminate()
        _, err = dump.communicate()
        if b" 0 packets dropped by kernel" not in err:
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
        print(f"| {run} | {t['sent']} | {t['lost']} | {cls} | {found.group(1)} |", flush=True)
    print(f"\n{args.runs} runs; messages lost by class: {dict(totals) or 'none'}; "
          f"captures in {folder}")  # fmt: skip


if __name__ == "__main__":
    main()
