"""The nodes' member allowlist for the Galera ports: the renderer, its place in the plan, the node tool.

A removed node keeps a certificate the cluster CA signed (Galera has no
revocation list), so its address must leave every node's allowlist; a new node
must be in every existing node's allowlist before it starts. Checked on the
pure renderer and plan, on the recorded program, and by running the node tool
against a scratch root with a stand-in ``nft``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mocks import Recording, Types, full_config, run_program
from remote_plan import command, runs_after, stdin_text
from test_plan_triggers import NO_TLS

from components.config import parse_config
from components.member_firewall import (
    SET_V4,
    SET_V6,
    TABLE,
    galera_ports,
    render_member_firewall,
    split_addresses,
)
from components.plan import cluster_plan
from components.security_group_rules import GALERA_PORTS
from rehearsal.engine_rules import REPLACE_ON

REPO = Path(__file__).resolve().parents[2]
B_ADDRESS = "10.20.2.10"  # aws-b's privateIp in the test config
MEMBERS = ("aws-a", "dc-1")


def parsed(raw: dict[str, Any]) -> Any:
    raw = {k: v for k, v in raw.items() if k != "sshPrivateKey"}
    return parse_config(raw, stack="dev", region="eu-west-1")


def leaving() -> dict[str, Any]:
    cfg = full_config(**NO_TLS)
    cfg["ec2Nodes"][1]["decommission"] = True  # aws-b leaves
    return cfg


def set_elements(ruleset: str, name: str) -> set[str]:
    """The elements the ruleset declares for set ``name`` (empty when it declares none)."""
    lines = ruleset.splitlines()
    start = lines.index(f"\tset {name} {{")
    for line in lines[start + 1:]:
        if line.strip() == "}":
            return set()
        if "elements = {" in line:
            inner = line.split("{", 1)[1].rsplit("}", 1)[0]
            return {e.strip() for e in inner.split(",") if e.strip()}
    raise AssertionError(f"set {name} is not closed")


# -- the renderer ---------------------------------------------------------------

def test_the_sets_hold_exactly_the_admitted_addresses() -> None:
    text = render_member_firewall(["10.0.0.2", "10.0.0.1", "fd00::1", "db3.dc.example.net", "10.0.0.1"])
    assert set_elements(text, SET_V4) == {"10.0.0.1", "10.0.0.2", "db3.dc.example.net"}
    assert set_elements(text, SET_V6) == {"fd00::1"}
    # Control: an address left out is in no set.
    assert "10.0.0.2" not in render_member_firewall(["10.0.0.1"])


def test_every_galera_port_accepts_the_members_and_drops_everyone_else() -> None:
    text = render_member_firewall(["10.0.0.1"])
    assert galera_ports("tcp") == (4444, 4567, 4568) and galera_ports("udp") == (4567,)
    assert {(p, port) for p, port, _ in GALERA_PORTS} == {("tcp", 4444), ("tcp", 4567), ("tcp", 4568), ("udp", 4567)}
    rules = [line.strip() for line in text.splitlines()]
    for match in ("tcp dport { 4444, 4567, 4568 }", "udp dport 4567"):
        accepts = [r for r in rules if r.startswith(match) and r.endswith("accept")]
        assert accepts == [f"{match} ip saddr @{SET_V4} accept", f"{match} ip6 saddr @{SET_V6} accept"]
        drop = f"{match} counter drop"
        assert drop in rules and rules.index(drop) > max(rules.index(a) for a in accepts)
    # No rule trusts connection state: a dropped member loses its established connections too.
    assert "ct state" not in text
    # One atomic replacement: declare, delete, redefine.
    assert text.splitlines()[2:5] == [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]


def test_an_empty_family_declares_no_elements() -> None:
    text = render_member_firewall(["10.0.0.1"])
    assert set_elements(text, SET_V6) == set() and "elements = {  }" not in text


def test_anything_but_an_address_or_a_name_is_refused() -> None:
    for bad in ("10.0.0.1; flush ruleset", "10.0.0.0/24", "a b", "", "1.2.3.999"):
        with pytest.raises(ValueError, match="expected IP addresses or DNS names"):
            split_addresses(["10.0.0.1", bad])
    assert split_addresses(["10.0.0.1", "DB3.example.net"]) == (("10.0.0.1", "db3.example.net"), ())


@pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="nft -c needs nftables and root")
def test_nft_accepts_the_rendered_ruleset(tmp_path: Path) -> None:
    rules = tmp_path / "members.nft"
    rules.write_text(render_member_firewall(["10.0.0.1", "10.0.0.2", "fd00::1"]))
    checked = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    # Control: nft -c does refuse a broken ruleset.
    rules.write_text(render_member_firewall(["10.0.0.1"]).replace("type ipv4_addr", "type nonsense"))
    assert subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, check=False).returncode != 0


# -- the plan ---------------------------------------------------------------------

def test_every_member_loads_its_allowlist_before_its_own_roll() -> None:
    plan = cluster_plan(parsed(full_config(**NO_TLS)))
    for node in plan.nodes:
        assert f"{node}/member-firewall" in plan.waits_for(f"{node}/roll")
        assert f"{node}/config" in plan.waits_for(f"{node}/member-firewall")


def test_existing_members_admit_a_new_node_before_it_starts() -> None:
    # The last node in rolling order is the one an `up` adds: every other member's allowlist is loaded first.
    plan = cluster_plan(parsed(full_config(**NO_TLS)))
    newest = plan.nodes[-1]
    waits = plan.waits_for(f"{newest}/roll")
    assert {f"{n}/member-firewall" for n in plan.nodes} <= waits
    # Control: the first node's roll does not wait for a later node's allowlist.
    assert f"{newest}/member-firewall" not in plan.waits_for(f"{plan.nodes[0]}/roll")


def test_members_shut_the_leaver_out_after_it_left_and_before_verification() -> None:
    plan = cluster_plan(parsed(leaving()))
    for n in MEMBERS:
        shut = plan.entry(f"{n}/shut-out")
        assert "aws-b/decommission" in plan.waits_for(shut.key)
        assert shut.key in plan.waits_for(f"{n}/verify")
    assert not [e for e in plan if e.node == "aws-b" and "firewall" in e.step.key]
    # Control: without a leaving node there is nothing to shut out.
    assert not [e for e in cluster_plan(parsed(full_config(**NO_TLS))) if e.step.key == "shut-out"]


# -- the recorded program ---------------------------------------------------------

@pytest.fixture(scope="module")
def recordings() -> tuple[Recording, Recording]:
    return run_program(full_config(**NO_TLS), preview=False), run_program(leaving(), preview=False)


def loaded_by(rec: Recording, name: str) -> str:
    return str(stdin_text(command(rec, name)))


def test_a_decommissioned_node_is_in_no_allowlist_once_it_left(recordings: tuple[Recording, Recording]) -> None:
    before, after = recordings
    for n in MEMBERS:
        # Control: while it is a member every node admits it.
        assert B_ADDRESS in set_elements(loaded_by(before, f"{n}-ssh-member-firewall"), SET_V4)
        # Still leaving: admitted until its clean leave; then shut out.
        assert B_ADDRESS in set_elements(loaded_by(after, f"{n}-ssh-member-firewall"), SET_V4)
        closed = set_elements(loaded_by(after, f"{n}-ssh-shut-out"), SET_V4)
        assert B_ADDRESS not in closed and len(closed) == len(MEMBERS)
        assert runs_after(after, f"{n}-ssh-shut-out", "aws-b-ssh-decommission")
        assert runs_after(after, f"{n}-verification-run", f"{n}-ssh-shut-out")
    names = {r.name for r in after.of_type(Types.REMOTE_COMMAND)}
    assert "aws-b-ssh-member-firewall" not in names and "aws-b-ssh-shut-out" not in names


def test_a_node_gone_from_config_is_in_no_allowlist() -> None:
    cfg = full_config(**NO_TLS)
    del cfg["ec2Nodes"][1]  # the second `up`: aws-b is gone
    rec = run_program(cfg, preview=False)
    for n in MEMBERS:
        assert B_ADDRESS not in loaded_by(rec, f"{n}-ssh-member-firewall")
    assert not [r for r in rec.of_type(Types.REMOTE_COMMAND) if r.name.endswith("-ssh-shut-out")]


# -- the node tool ------------------------------------------------------------------

FAKE_NFT = """\
echo "nft $*" >> "$STATE/log"
if [ "$1" = -c ]; then exit "$(cat "$STATE/check_rc" 2>/dev/null || echo 0)"; fi
if [ "$1" = -f ]; then cp "$2" "$STATE/loaded"; exit 0; fi
if [ "$1" = list ]; then
    grep -A3 "set $5 {" "$STATE/loaded" | grep elements || true
fi
"""


class Node:
    def __init__(self, base: Path) -> None:
        self.root, self.state, self.bin = base / "root", base / "state", base / "bin"
        for d in (self.root / "usr/local/sbin", self.state, self.bin):
            d.mkdir(parents=True)
        tool = self.root / "usr/local/sbin/mariadb-kms-member-firewall"
        shutil.copy(REPO / "node/mariadb-kms-member-firewall", tool)
        (self.bin / "nft").write_text("#!/bin/bash\n" + textwrap.dedent(FAKE_NFT))
        (self.bin / "nft").chmod(0o755)
        (self.state / "log").write_text("")

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "STATE": str(self.state), "MARIADB_KMS_TEST_ROOT": str(self.root)}
        return subprocess.run([str(self.root / "usr/local/sbin/mariadb-kms-member-firewall"), *args], input=stdin,
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    @property
    def kept(self) -> Path:
        return self.root / "etc/mariadb-kms/member-firewall.nft"


def test_the_tool_checks_keeps_and_loads_the_ruleset(tmp_path: Path) -> None:
    node = Node(tmp_path)
    ruleset = render_member_firewall(["10.0.0.1", "10.0.0.2"])
    done = node.run(stdin=ruleset)
    assert done.returncode == 0, done.stderr
    assert "admit 10.0.0.1 10.0.0.2" in done.stdout
    log = (node.state / "log").read_text().splitlines()
    assert [line.split()[1] for line in log if line.split()[1] in ("-c", "-f")] == ["-c", "-f"]
    assert node.kept.read_text() == ruleset and oct(node.kept.stat().st_mode & 0o777) == "0o644"
    loaded = node.run("--load")
    assert loaded.returncode == 0 and "loaded: the Galera ports admit 10.0.0.1 10.0.0.2" in loaded.stdout


def test_the_tool_keeps_the_loaded_ruleset_when_nft_refuses_the_new_one(tmp_path: Path) -> None:
    node = Node(tmp_path)
    first = render_member_firewall(["10.0.0.1"])
    assert node.run(stdin=first).returncode == 0
    (node.state / "check_rc").write_text("1\n")
    refused = node.run(stdin=render_member_firewall(["10.0.0.9"]))
    assert refused.returncode != 0 and "the loaded one stays" in refused.stderr
    assert node.kept.read_text() == first and "10.0.0.9" not in (node.state / "loaded").read_text()
    garbage = node.run(stdin="flush ruleset\n")
    assert garbage.returncode != 0 and "not the member ruleset" in garbage.stderr
    assert list(node.kept.parent.glob("member-firewall.nft.*")) == []  # no half-written file left


def test_load_without_a_kept_ruleset_does_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    done = node.run("--load")
    assert done.returncode == 0 and "nothing to load" in done.stdout
    assert (node.state / "log").read_text() == ""


# -- the EC2 security groups ----------------------------------------------------------


def groups_of(rec: Recording) -> dict[str, str]:
    """ENI name -> the name of the one security group it carries."""
    by_id = {g.id: g.name for g in rec.of_type(Types.EC2_SECURITY_GROUP)}
    out = {}
    for eni in rec.of_type(Types.EC2_NETWORK_INTERFACE):
        [group] = eni.input("securityGroups")
        out[eni.name] = by_id[group]
    return out


def rules_of(rec: Recording, group: str) -> set[tuple[str, int, str]]:
    [g] = [g for g in rec.of_type(Types.EC2_SECURITY_GROUP) if g.name == group]
    return {(r.input("ipProtocol"), r.input("fromPort"), r.input("cidrIpv4") or r.input("referencedSecurityGroupId"))
            for r in (*rec.of_type(Types.SG_INGRESS_RULE), *rec.of_type(Types.SG_EGRESS_RULE))
            if r.input("securityGroupId") == g.id}


def test_a_decommissioned_instance_leaves_the_node_group_for_an_ssh_only_one(
    recordings: tuple[Recording, Recording]
) -> None:
    before, after = recordings
    # Control: as a member, aws-b's interface is in the node group, whose SELF rules admit every member.
    assert groups_of(before) == {"aws-a-eni": "cluster-nodes-group", "aws-b-eni": "cluster-nodes-group"}
    assert not [g for g in before.of_type(Types.EC2_SECURITY_GROUP) if g.name == "cluster-nodes-leaving-group"]
    assert groups_of(after) == {"aws-a-eni": "cluster-nodes-group", "aws-b-eni": "cluster-nodes-leaving-group"}
    # Only SSH from adminCidrs (FULL_CONFIG: 198.51.100.0/24): no Galera port, no egress, no self reference.
    assert rules_of(after, "cluster-nodes-leaving-group") == {("tcp", 22, "198.51.100.0/24")}
    assert not [r for r in after.of_type(Types.SG_EGRESS_RULE) if "leaving" in r.name]
    # An in-place update of the interface (the AWS provider replaces it only for subnetId and privateIp).
    assert "securityGroups" not in REPLACE_ON[Types.EC2_NETWORK_INTERFACE]
