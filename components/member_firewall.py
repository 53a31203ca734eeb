"""The nodes' own firewall for the Galera ports: an nftables ruleset admitting the members only (pure: no pulumi).

Galera has no certificate revocation list: a node that leaves the cluster
keeps a certificate the cluster CA signed, and with it could join again. So the
network is what shuts it out. Every node (EC2 and on premises alike) loads
this ruleset with ``mariadb-kms-member-firewall``: 4567/tcp+udp (group
communication), 4568/tcp (IST) and 4444/tcp (SST) accept the listed addresses
and drop everyone else. It is on the node because the EC2 security group
cannot tell one on-prem host from another of its CIDR, and on-prem hosts have
no security group at all.

The ruleset declares, deletes and redefines its table, so ``nft -f`` replaces
it in one transaction: there is no moment with the ports open, and no rule
depends on connection state, so a member dropped from the list loses its
established connections too. MariaDB is not restarted for it, and it is no
restart file (``mariadb-kms-roll`` never digests it).

A member given by DNS name goes into the IPv4 set as a name: ``nft`` resolves
it each time the ruleset loads (at every update and boot), and refuses the
whole ruleset if the name does not resolve, which leaves the previous one in
place.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from components.security_group_rules import GALERA_PORTS

TABLE = "mariadb_kms_members"
SET_V4 = "members_v4"
SET_V6 = "members_v6"
# Where the node tool keeps the ruleset it loaded, for the boot unit to load again. Not in
# /etc/mariadb-kms/node/MANIFEST and not a config file: no restart digest ever reads it.
MEMBER_FIREWALL_PATH = "/etc/mariadb-kms/member-firewall.nft"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def galera_ports(protocol: str) -> tuple[int, ...]:
    """The Galera ports of ``protocol``, sorted: the same list the EC2 security group opens between members."""
    return tuple(sorted({port for proto, port, _ in GALERA_PORTS if proto == protocol}))


def split_addresses(admitted: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4 addresses and DNS names, IPv6 addresses), each without duplicates, in a stable order.

    Raises ``ValueError`` naming every entry that is neither an address nor a DNS name (nothing else may
    reach an nft file).
    """
    v4: list[str] = []
    v6: list[str] = []
    bad: list[str] = []
    for raw in admitted:
        value = raw.strip()
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            if _HOSTNAME.match(value) and not value.replace(".", "").isdigit():
                v4.append(value.lower())
            else:
                bad.append(raw)
            continue
        (v4 if address.version == 4 else v6).append(str(address))
    if bad:
        raise ValueError(f"member addresses {bad!r}: expected IP addresses or DNS names")
    return tuple(sorted(set(v4), key=_order)), tuple(sorted(set(v6), key=_order))


def _order(value: str) -> tuple[int, object]:
    try:
        return (0, ipaddress.ip_address(value))
    except ValueError:
        return (1, value)


def _set(name: str, kind: str, elements: tuple[str, ...]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if elements:  # an empty element list is a syntax error; an empty set matches nothing
        lines.append("\t\telements = { " + ", ".join(elements) + " }")
    return [*lines, "\t}"]


def _ports(ports: tuple[int, ...]) -> str:
    return str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(str(p) for p in ports) + " }"


def render_member_firewall(admitted: Iterable[str]) -> str:
    """The nft ruleset: the Galera ports accept ``admitted`` (addresses or DNS names) and drop everyone else."""
    v4, v6 = split_addresses(admitted)
    rules: list[str] = ['\t\tiif "lo" accept']
    drops: list[str] = []
    for protocol in ("tcp", "udp"):
        ports = galera_ports(protocol)
        if not ports:
            continue
        match = f"{protocol} dport {_ports(ports)}"
        rules.append(f"\t\t{match} ip saddr @{SET_V4} accept")
        rules.append(f"\t\t{match} ip6 saddr @{SET_V6} accept")
        drops.append(f"\t\t{match} counter drop")
    lines = [
        "# mariadb-kms: the Galera ports admit the cluster's members only (rendered by the program;",
        "# loaded by mariadb-kms-member-firewall). Declare, delete, redefine: one atomic replacement.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *_set(SET_V4, "ipv4_addr", v4),
        *_set(SET_V6, "ipv6_addr", v6),
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        *rules,
        *drops,
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"
