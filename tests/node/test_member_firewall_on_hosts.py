"""The member allowlist on real hosts: the Galera ports admit members only, and a removed node is shut out.

Galera has no certificate revocation list, so a node that leaves keeps a
certificate the cluster CA signed; the nftables allowlist every node loads
(``mariadb-kms-member-firewall``) is what refuses it. A 2-node cluster is
deployed by the program's own plan (``rehearsal/runner``); then, as two later
`pulumi up`s would (``engine_runs``: what the engine re-runs), node3 is added
and decommissioned. Probes come from a network namespace this module puts on
the testbed's bridge at an address no node has, and from the hosts themselves.

A probe's outcome: ``open`` (connected), ``refused`` (an RST: reachable, nothing
listening) or ``dropped`` (no answer within the probe's bound: the firewall).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import release_hosts

from components.member_firewall import SET_V4, TABLE
from rehearsal import overlay as ov
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import main_pid, wait_synced
from rehearsal.runner import TLS_OFF, Deployment, Program, ProgramStack, deploy, engine_runs, onprem_config
from rehearsal.testbed import Testbed

FIRST = ("node1", "node2")
NEW = "node3"
GALERA_TCP = (4567, 4568, 4444)
PROBE_S = 6  # a dropped SYN is retried for minutes; an answer (SYN-ACK or RST) comes at once on one bridge
OUTSIDER_INDEX = 99  # the testbed numbers hosts from 0; this address belongs to no host


def _outcome(rc: int) -> str:
    return {0: "open", 124: "dropped"}.get(rc, "refused")


def _connect(address: str, port: int) -> list[str]:
    return ["timeout", str(PROBE_S), "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"]


@dataclass
class Outsider:
    """A network namespace on the testbed's bridge with an address that is no member's."""

    testbed: Testbed
    name: str = ""
    veth: str = ""
    address: str = ""
    made: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.testbed.settings
        # Names the testbed's own cleanup recognises as this testbed's, should this module die half-way.
        self.name, self.veth = f"{s.prefix}-outsider", f"{s.prefix}v{OUTSIDER_INDEX}"
        peer = f"{s.prefix}c{OUTSIDER_INDEX}"
        self.address = s.host_address(OUTSIDER_INDEX)
        bits = self.testbed.subnet_bits
        for argv in (
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", self.veth, "master", s.bridge, "up"],
            ["ip", "link", "set", peer, "netns", self.name],
            ["ip", "-n", self.name, "addr", "add", f"{self.address}/{bits}", "dev", peer],
            ["ip", "-n", self.name, "link", "set", peer, "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def probe(self, address: str, port: int) -> str:
        argv = ["ip", "netns", "exec", self.name, *_connect(address, port)]
        return _outcome(subprocess.run(argv, capture_output=True, timeout=PROBE_S + 30, check=False).returncode)

    def send_udp(self, address: str, port: int) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "bash", "-c", f"echo probe > /dev/udp/{address}/{port}"],
                       capture_output=True, timeout=30, check=False)

    def remove(self) -> None:
        # Deleting the namespace destroys the peer, and with it the bridge end.
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "link", "delete", self.veth], capture_output=True, timeout=30, check=False)


def probe_from(testbed: Testbed, host: str, target: str, port: int) -> str:
    address = testbed.hosts[target].address
    return _outcome(testbed.exec(host, _connect(address, port), timeout=PROBE_S + 30).rc)


def drops(testbed: Testbed, host: str, protocol: str) -> int:
    """Packets the allowlist's drop rule for ``protocol`` has counted on ``host``."""
    listed = testbed.exec(host, ["nft", "list", "chain", "inet", TABLE, "input"]).stdout
    [line] = [li for li in listed.splitlines()
              if li.strip().startswith(f"{protocol} dport") and li.rstrip().endswith("drop")]
    found = re.search(r"counter packets (\d+)", line)
    assert found, line
    return int(found.group(1))


def admitted(testbed: Testbed, host: str) -> set[str]:
    listed = testbed.exec(host, ["nft", "list", "set", "inet", TABLE, SET_V4]).stdout
    inner = re.search(r"elements = \{([^}]*)\}", listed.replace("\n", " "))
    return {e.strip() for e in inner.group(1).split(",")} if inner else set()


@dataclass
class Lifecycle:
    stack: ProgramStack
    two: Program
    outsider: Outsider
    three: Program | None = None


@pytest.fixture(scope="module")
def life(testbed: Testbed, kms: KmsServer) -> Iterator[Lifecycle]:
    stack = ProgramStack(kms)
    outsider = Outsider(testbed)
    try:
        # TLS off: a second recording issues new certificates, which would add a renewal to every change.
        two = deploy(testbed, stack, onprem_config(testbed, FIRST, gcacheSize="64M", **TLS_OFF)).program
        yield Lifecycle(stack, two, outsider)
    finally:
        outsider.remove()
        for h in (*FIRST, NEW):
            testbed.exec(h, ["systemctl", "unmask", "--quiet", "mariadb", "mariadb-kms-unwrap"], timeout=60)
            testbed.exec(h, ["rm", "-f", "/var/lib/mariadb-kms/decommissioned"], timeout=60)
        release_hosts(testbed, (*FIRST, NEW))


def test_a_non_member_is_dropped_on_every_galera_port_and_a_member_connects(testbed: Testbed, life: Lifecycle) -> None:
    node1 = testbed.hosts["node1"].address
    assert admitted(testbed, "node1") == {testbed.hosts[h].address for h in FIRST}
    # Control: the outsider reaches node1 at all (sshd answers), so a drop below is the allowlist's.
    assert life.outsider.probe(node1, 22) == "open"
    before = drops(testbed, "node1", "tcp")
    assert {p: life.outsider.probe(node1, p) for p in GALERA_TCP} == dict.fromkeys(GALERA_TCP, "dropped")
    assert drops(testbed, "node1", "tcp") > before
    udp_before = drops(testbed, "node1", "udp")
    life.outsider.send_udp(node1, 4567)
    assert drops(testbed, "node1", "udp") > udp_before
    # Control: a member is answered on the same ports (4567 listens; 4568/4444 only during a transfer).
    assert probe_from(testbed, "node2", "node1", 4567) == "open"
    assert probe_from(testbed, "node2", "node1", 4444) in ("open", "refused")
    # node3 runs no MariaDB yet and is no member: dropped too.
    assert probe_from(testbed, NEW, "node1", 4567) == "dropped"


def test_a_new_member_is_admitted_before_it_starts_and_nobody_restarts(testbed: Testbed, life: Lifecycle) -> None:
    joining = onprem_config(testbed, [NEW])["onPremNodes"][0]
    three = life.stack.record({**life.two.config, "onPremNodes": [*life.two.config["onPremNodes"], joining]}, testbed)
    names = engine_runs(life.two, three)
    for h in FIRST:  # an update of the allowlist on every existing member, before the new node's start
        assert names.index(f"{h}-ssh-member-firewall") < names.index(f"{NEW}-ssh-roll"), names
    assert not [n for n in names if n.endswith("-ssh-roll") and not n.startswith(NEW)], names
    pids = {h: main_pid(testbed, h) for h in FIRST}
    testbed.put_file(NEW, ov.DPKG_UNSAFE_IO_PATH, ov.DPKG_UNSAFE_IO, 0o644, "root:root")
    Deployment(testbed, three).run_only(names)
    life.three = three
    wait_synced(testbed, "node1", 3, timeout=300)
    assert {h: main_pid(testbed, h) for h in FIRST} == pids  # the allowlist changed, mariadbd did not restart
    assert admitted(testbed, "node1") == {testbed.hosts[h].address for h in (*FIRST, NEW)}
    assert probe_from(testbed, NEW, "node1", 4567) == "open"


def test_after_decommission_the_leaver_is_refused_by_the_others_without_a_restart(
    testbed: Testbed, life: Lifecycle
) -> None:
    assert life.three is not None, "the add test must run first"
    nodes = [{**n, "decommission": True} if n["name"] == NEW else n for n in life.three.config["onPremNodes"]]
    smaller = life.stack.record({**life.three.config, "onPremNodes": nodes}, testbed)
    names = engine_runs(life.three, smaller)
    assert {f"{h}-ssh-shut-out" for h in FIRST} <= set(names)
    # Control: until the shut-out runs, the leaver is still a member the others answer.
    assert probe_from(testbed, NEW, "node1", 4567) == "open"
    pids = {h: main_pid(testbed, h) for h in FIRST}
    Deployment(testbed, smaller).run_only(names)
    leaver = testbed.hosts[NEW].address
    for h in FIRST:
        assert leaver not in admitted(testbed, h)
        assert probe_from(testbed, NEW, h, 4567) == "dropped", h
    # Control: only the Galera ports are closed to it; its address still reaches sshd.
    assert probe_from(testbed, NEW, "node1", 22) == "open"
    assert {h: main_pid(testbed, h) for h in FIRST} == pids
    wait_synced(testbed, "node1", 2, timeout=60)
    # A boot loads the same allowlist again: the unit is enabled and its file is the one loaded.
    assert testbed.exec("node1", ["systemctl", "is-enabled", "mariadb-kms-member-firewall"]).stdout.strip() == "enabled"
    assert leaver not in testbed.exec("node1", ["cat", "/etc/mariadb-kms/member-firewall.nft"]).stdout
