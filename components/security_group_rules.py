"""The EC2 nodes' security group rules, as data (pure: no pulumi).

``node_security_group_rules(cluster)`` decides every rule; the component in
``components/security_group`` only turns each one into an
``aws.vpc.SecurityGroupIngressRule`` / ``EgressRule``. One resource per rule
(not inline blocks) so adding a CIDR adds one rule instead of rewriting the
group, and each rule has a stable logical name derived from what it allows.

Ingress:
- 3306/tcp (MariaDB clients) from ``clientCidrs`` only;
- 4567/tcp+udp (Galera group communication), 4568/tcp (IST) and 4444/tcp (SST)
  only between members: the group itself and each on-prem member's own address
  (``onprem_member_peers``), so a removed on-prem node's address leaves the
  group's rules; ``onPremCidrs`` only bounds those addresses (config check),
  and stands in for them only when a member is given by DNS name;
- 22/tcp from ``adminCidrs`` only.
Nothing is open to 0.0.0.0/0 or ::/0 unless a CIDR list says so, and then a
warning says so too.

Egress (restricted rather than AWS's allow-all, so the group documents what a
node talks to):
- 443/tcp anywhere: KMS (public endpoint, or the VPC endpoint's private
  addresses), the aws_key_management plugin download if configured, https apt
  mirrors;
- 80/tcp anywhere: Debian's AMIs fetch packages from http mirrors (apt checks
  every package against the signed Release file);
- the Galera ports to the members (the group itself and the on-prem members): a
  donor connects to a joiner's 4444 (SST) and 4568 (IST), and 4567 runs both ways.
DNS, NTP and IMDS go to link-local AWS services that security groups do not filter.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from components.config import ClusterConfig

MARIADB_PORT = 3306
GALERA_PORT = 4567
IST_PORT = 4568
SST_PORT = 4444
SSH_PORT = 22
HTTPS_PORT = 443
HTTP_PORT = 80

SELF = "self"  # the peer "the group itself"
ANYWHERE_V4 = "0.0.0.0/0"
ANYWHERE_V6 = "::/0"

Direction = Literal["ingress", "egress"]
Protocol = Literal["tcp", "udp"]

# (protocol, port, description): what members exchange, in both directions.
GALERA_PORTS: tuple[tuple[Protocol, int, str], ...] = (
    ("tcp", GALERA_PORT, "Galera group communication"),
    ("udp", GALERA_PORT, "Galera group communication (multicast/UDP)"),
    ("tcp", IST_PORT, "Galera incremental state transfer (IST)"),
    ("tcp", SST_PORT, "Galera state snapshot transfer (SST, mariabackup)"),
)


@dataclass(frozen=True, order=True)
class SecurityGroupRule:
    direction: Direction
    protocol: Protocol
    port: int
    peer: str  # SELF or a CIDR (IPv4 or IPv6)
    description: str

    @property
    def is_self(self) -> bool:
        return self.peer == SELF

    @property
    def cidr_ipv4(self) -> str | None:
        return None if self.is_self or ":" in self.peer else self.peer

    @property
    def cidr_ipv6(self) -> str | None:
        return None if self.is_self or ":" not in self.peer else self.peer

    @property
    def key(self) -> str:
        """A stable, readable name for the rule's resource: what it allows, not its position in a list."""
        peer = re.sub(r"[^0-9a-zA-Z]+", "-", self.peer).strip("-")
        short = "in" if self.direction == "ingress" else "out"
        return f"{short}-{self.protocol}-{self.port}-{peer}"


def _is_open(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def onprem_member_peers(cluster: ClusterConfig) -> tuple[str, ...]:
    """The on-prem members as security-group peers: each one's address as a /32 (/128).

    A member given by DNS name cannot be a rule (AWS takes CIDRs), so then the
    whole of ``onPremCidrs`` stands in for all of them, as it did before. A node
    being decommissioned is no member: its address is in no rule. Without
    ``onPremCidrs`` no on-prem address is admitted: the ranges are the opt-in.
    """
    if not cluster.network.onprem_cidrs:
        return ()
    members = [n for n in cluster.onprem_nodes if not n.decommission]
    addresses: list[str] = []
    for node in members:
        try:
            address = ipaddress.ip_address(node.address)
        except ValueError:
            return tuple(_unique(cluster.network.onprem_cidrs))
        addresses.append(str(ipaddress.ip_network(address)))
    return tuple(_unique(addresses))


def node_security_group_rules(cluster: ClusterConfig) -> tuple[SecurityGroupRule, ...]:
    """Every rule of the node security group, sorted, without duplicates."""
    net = cluster.network
    members = [SELF, *onprem_member_peers(cluster)]
    rules: set[SecurityGroupRule] = set()
    for cidr in _unique(net.client_cidrs):
        rules.add(SecurityGroupRule("ingress", "tcp", MARIADB_PORT, cidr, "MariaDB clients"))
    for cidr in _unique(net.admin_cidrs):
        rules.add(SecurityGroupRule("ingress", "tcp", SSH_PORT, cidr, "SSH from administrators and the deployer"))
    for peer in members:
        for protocol, port, what in GALERA_PORTS:
            rules.add(SecurityGroupRule("ingress", protocol, port, peer, what))
            rules.add(SecurityGroupRule("egress", protocol, port, peer, what))
    rules.add(SecurityGroupRule("egress", "tcp", HTTPS_PORT, ANYWHERE_V4, "HTTPS: AWS KMS and package mirrors"))
    rules.add(SecurityGroupRule("egress", "tcp", HTTP_PORT, ANYWHERE_V4, "HTTP: Debian package mirrors (signed)"))
    return tuple(sorted(rules))


def leaving_security_group_rules(cluster: ClusterConfig) -> tuple[SecurityGroupRule, ...]:
    """The group an EC2 node being decommissioned switches to: SSH from ``adminCidrs``, nothing else.

    Galera has no certificate revocation list, so the leaving instance must leave
    the node group, whose SELF rules admit every member of it. SSH stays, so the
    program's steps on that node (its decommission) still run. No egress rule:
    replies to SSH are tracked, and a leaving node has nothing else to reach.
    """
    return tuple(sorted({
        SecurityGroupRule("ingress", "tcp", SSH_PORT, cidr, "SSH from administrators and the deployer")
        for cidr in _unique(cluster.network.admin_cidrs)
    }))


def exposure_warnings(cluster: ClusterConfig) -> tuple[str, ...]:
    """One warning per CIDR list that opens a node port to the whole internet."""
    net = cluster.network
    lists: Sequence[tuple[str, Sequence[str], str]] = (
        ("clientCidrs", net.client_cidrs, f"MariaDB ({MARIADB_PORT})"),
        ("adminCidrs", net.admin_cidrs, f"SSH ({SSH_PORT})"),
        ("onPremCidrs", net.onprem_cidrs, f"Galera ({GALERA_PORT}, {IST_PORT}, {SST_PORT})"),
    )
    warnings = []
    for key, cidrs, what in lists:
        for cidr in _unique(cidrs):
            if _is_open(cidr):
                warnings.append(
                    f"{key} contains {cidr}: {what} on every EC2 node is open to the whole internet"
                )
    return tuple(warnings)


def ingress_peers(rules: Iterable[SecurityGroupRule], port: int, protocol: Protocol = "tcp") -> set[str]:
    """Who may reach ``port``: the peers of every ingress rule for it (SELF for the group itself)."""
    return {r.peer for r in rules if r.direction == "ingress" and r.port == port and r.protocol == protocol}
