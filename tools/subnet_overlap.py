"""Which addresses and routes of this host overlap the testbed's subnets (used by tools/check-host.sh).

stdin: ``ip -o -4 addr show``, a line ``--routes--``, then ``ip -o -4 route show table all``.
Arguments: ``SUBNET=OWN_BRIDGE=SETTING`` per testbed; the testbed's own bridge may hold its subnet.
Prints one line per conflict (nothing when the ranges are free). Standard library only: it runs
before the Python environment exists.
"""

from __future__ import annotations

import ipaddress
import sys

ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "anycast"}


def parse(text: str) -> list[tuple[ipaddress.IPv4Network, str, str]]:
    """(network, device, what) for every address and route in ``text``."""
    found: list[tuple[ipaddress.IPv4Network, str, str]] = []
    addrs, _, routes = text.partition("--routes--")
    for line in addrs.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet":
            iface = ipaddress.IPv4Interface(fields[3])
            found.append((iface.network, fields[1], f"address {fields[3]}"))
    for line in routes.splitlines():
        fields = line.split()
        if fields and fields[0] in ROUTE_TYPES:
            fields = fields[1:]
        if not fields or fields[0] == "default":
            continue
        try:
            net = ipaddress.IPv4Network(fields[0], strict=False)
        except ValueError:
            continue
        dev = fields[fields.index("dev") + 1] if "dev" in fields[:-1] else "-"
        found.append((net, dev, f"route {fields[0]}"))
    return found


def conflicts(text: str, wanted: list[tuple[ipaddress.IPv4Network, str, str]]) -> list[str]:
    lines: list[str] = []
    for subnet, own_bridge, setting in wanted:
        seen: set[str] = set()
        for net, dev, what in parse(text):
            if dev == own_bridge or dev in seen or not net.overlaps(subnet):
                continue
            seen.add(dev)  # one line per device: its address says enough
            lines.append(f"the testbed's address range {subnet} ({setting}) is already in use here: {what} on {dev}; "
                         f"pick a free range with {setting}=<a free /24>")
    return lines


def main(argv: list[str]) -> int:
    wanted = []
    for arg in argv:
        subnet, bridge, setting = arg.split("=", 2)
        wanted.append((ipaddress.IPv4Network(subnet, strict=False), bridge, setting))
    for line in conflicts(sys.stdin.read(), wanted):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
