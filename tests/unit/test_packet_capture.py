"""The capture reader behind the encryption-in-transit proof: it must find a needle wherever TCP put it.

Frames are built with dpkt and written as tcpdump writes them (pcap, Ethernet), so the reader is tested
on the format it reads on the testbed; the real-host control run proves it on real traffic.
"""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt

from rehearsal.packet_capture import SERVICE_PORTS, read_streams

NEEDLE = b"tlscanary0123456789abcdef"


def _frame(src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    ip.len += len(tcp)
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


def _write(path: Path, frames: list[bytes]) -> Path:
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + i / 100)
    return path


def test_a_needle_split_across_segments_out_of_order_and_retransmitted_is_found(tmp_path: Path) -> None:
    half = len(NEEDLE) // 2
    seq = 2**32 - 10  # wraps inside the flow
    first = b"INSERT INTO t VALUES ('" + NEEDLE[:half]
    second = NEEDLE[half:] + b"')"
    frames = [
        _frame("10.0.0.13", 51000, "10.0.0.11", 3306, (seq + len(first)) % 2**32, second),  # arrives first
        _frame("10.0.0.13", 51000, "10.0.0.11", 3306, seq, first),
        _frame("10.0.0.13", 51000, "10.0.0.11", 3306, seq, first),  # retransmitted
        _frame("10.0.0.11", 4567, "10.0.0.12", 40000, 5, b"writeset " + NEEDLE),  # server side of a flow
        _frame("10.0.0.12", 4444, "10.0.0.13", 33000, 7, b"x" * 100),
    ]
    streams = read_streams(_write(tmp_path / "c.pcap", frames))
    assert streams.services_containing(NEEDLE) == {3306, 4567}
    joined = streams.by_flow[("10.0.0.13", 51000, "10.0.0.11", 3306)]
    assert joined == first + second, "each byte once, in sequence order"
    sizes = streams.bytes_per_service()
    assert sizes[4444] == 100 and sizes[4568] == 0 and set(sizes) == set(SERVICE_PORTS)


def test_control_nothing_is_found_where_the_needle_is_not(tmp_path: Path) -> None:
    frames = [
        _frame("10.0.0.13", 51000, "10.0.0.11", 3306, 1, NEEDLE[:-1] + b"!"),
        _frame("10.0.0.13", 52000, "10.0.0.11", 8080, 1, NEEDLE),  # not a service port
    ]
    streams = read_streams(_write(tmp_path / "c.pcap", frames))
    assert streams.services_containing(NEEDLE) == set()
    assert streams.bytes_per_service()[3306] == len(NEEDLE)
