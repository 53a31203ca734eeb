"""A packet capture on the testbed bridge and a search of its TCP payloads, per Galera/MariaDB service port.

``tcpdump`` (Debian's, on the machine running the testbed) captures on the bridge in promiscuous mode,
which makes the bridge hand it frames it forwards between two hosts too. ``dpkt`` reads the capture;
each TCP direction's payload is put back in sequence order (retransmissions dropped), so a needle split
across two segments is still found. A service port is the one of {3306, 4444, 4567, 4568} a flow uses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

SERVICE_PORTS = (3306, 4444, 4567, 4568)  # clients, SST, replication, IST


@dataclass
class Streams:
    """Reassembled payload per TCP direction, keyed (src, sport, dst, dport)."""

    by_flow: dict[tuple[str, int, str, int], bytes] = field(default_factory=dict)

    def service(self, flow: tuple[str, int, str, int]) -> int | None:
        ports = [p for p in (flow[3], flow[1]) if p in SERVICE_PORTS]
        return ports[0] if ports else None

    def bytes_per_service(self) -> dict[int, int]:
        totals: dict[int, int] = dict.fromkeys(SERVICE_PORTS, 0)
        for flow, data in self.by_flow.items():
            port = self.service(flow)
            if port is not None:
                totals[port] += len(data)
        return totals

    def services_containing(self, needle: bytes) -> set[int]:
        return {p for flow, data in self.by_flow.items() if needle in data and (p := self.service(flow)) is not None}


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _join(segments: Iterable[tuple[int, bytes]]) -> bytes:
    """Payload in (relative) sequence order; overlapping (retransmitted) bytes kept once."""
    ordered = sorted(segments, key=lambda s: s[0])
    if not ordered:
        return b""
    out = bytearray()
    next_seq = ordered[0][0]
    for seq, data in ordered:
        if seq + len(data) <= next_seq:
            continue
        if seq < next_seq:
            data = data[next_seq - seq:]
        out += data
        next_seq = max(next_seq, seq) + len(data)
    return bytes(out)


def read_streams(pcap: Path) -> Streams:
    segments: dict[tuple[str, int, str, int], list[tuple[int, bytes]]] = defaultdict(list)
    first_seq: dict[tuple[str, int, str, int], int] = {}
    with pcap.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if not tcp.data:
                continue
            flow = (_address(ip.src), tcp.sport, _address(ip.dst), tcp.dport)
            base = first_seq.setdefault(flow, tcp.seq)
            # Relative to the first segment seen, signed: one that arrives late but belongs before it sorts first.
            relative = (tcp.seq - base) % 2**32
            segments[flow].append((relative - 2**32 if relative >= 2**31 else relative, bytes(tcp.data)))
    return Streams({flow: _join(parts) for flow, parts in segments.items()})


@contextlib.contextmanager
def capture(interface: str, pcap: Path, ports: Iterable[int] = SERVICE_PORTS) -> Iterator[Path]:
    """tcpdump on ``interface`` for the duration of the block, whole frames, into ``pcap``."""
    expression = "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"
    proc = subprocess.Popen(
        ["tcpdump", "-i", interface, "-U", "-s", "0", "-n", "-w", str(pcap), expression],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        # tcpdump says "listening on" once the capture runs; nothing before that is seen.
        line = proc.stderr.readline().decode(errors="replace")
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip()} (exit {proc.poll()})")
        yield pcap
        time.sleep(1)  # let the last segments of the block reach the capture
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
