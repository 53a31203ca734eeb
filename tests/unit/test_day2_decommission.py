"""Removing a node, first `pulumi up`: ``decommission: true`` makes the node leave; its entry goes in a later up.

The engine deletes a resource that left the program only once the program
has exited: "Once the Pulumi program has exited, the step generator determines
which existing resources must be deleted" (pulumi/pulumi
developer-docs/architecture/resource-registration.md, commit 24cf53f6), so the
leave itself must be a step the program runs while the node is still
configured: a create of the ``decommission`` command. Checked here on the pure plan, on the recorded
program, and by running ``mariadb-kms-decommission`` against a scratch root.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mocks import Recording, Types, full_config, run_program
from remote_plan import command, decode_put, runs_after, stdin_text
from test_plan_triggers import NO_TLS, retriggered, triggers
from test_remote_steps import FakeNode, status_lines

from components.config import ConfigError, parse_config
from components.node_files import MYCNF_NODE_PATH
from components.plan import Role, cluster_plan

REPO = Path(__file__).resolve().parents[2]
MEMBERS = ("aws-a", "dc-1")


def leaving(**changes: Any) -> dict[str, Any]:
    cfg = full_config(**NO_TLS, **changes)
    cfg["ec2Nodes"][1]["decommission"] = True  # aws-b leaves
    return cfg


def parsed(raw: dict[str, Any]) -> Any:
    raw = {k: v for k, v in raw.items() if k != "sshPrivateKey"}
    return parse_config(raw, stack="dev", region="eu-west-1")


# -- config -------------------------------------------------------------------

def test_a_leaving_node_is_no_member() -> None:
    cfg = parsed(leaving())
    assert [n.name for n in cfg.members] == list(MEMBERS)
    assert [n.name for n in cfg.leaving] == ["aws-b"]
    assert cfg.decommission_data == "keep"
    assert parsed(leaving(decommissionData="wipe")).decommission_data == "wipe"


def test_config_refuses_a_cluster_without_members_and_a_leaving_bootstrap_node() -> None:
    raw = full_config(**NO_TLS)
    for n in (*raw["ec2Nodes"], *raw["onPremNodes"]):
        n["decommission"] = True
    with pytest.raises(ConfigError) as gone:
        parsed(raw)
    assert any("onPremNodes[0].decommission = true" in e and "at least one node" in e for e in gone.value.errors)
    with pytest.raises(ConfigError) as boot:
        parsed({**leaving(), "bootstrapNode": "aws-b"})
    assert any(e.startswith("mariadb-kms:bootstrapNode = aws-b") and "aws-a, dc-1" in e for e in boot.value.errors)
    with pytest.raises(ConfigError) as kind:
        parsed(leaving(decommissionData="shred"))
    assert any("decommissionData" in e and "keep, wipe" in e for e in kind.value.errors)
    # A leaving first node hands the bootstrap role on to the first node that stays.
    first = full_config(**NO_TLS)
    first["ec2Nodes"][0]["decommission"] = True
    assert parsed(first).bootstrap_node == "aws-b"


# -- the plan -----------------------------------------------------------------

def test_the_plan_runs_only_the_leave_on_a_leaving_node_after_every_roll() -> None:
    cfg = parsed(leaving(decommissionData="wipe"))
    plan = cluster_plan(cfg)
    assert [e.step.key for e in plan.of_node("aws-b")] == ["first-boot", "node-files", "decommission"]
    leave = plan.entry("aws-b/decommission")
    assert leave.step.create == "sudo -n /usr/local/sbin/mariadb-kms-decommission --wipe-data"
    waits = plan.waits_for(leave.key)
    assert {f"{n}/roll" for n in MEMBERS} <= waits and "aws-b/node-files" in waits
    for n in MEMBERS:
        verify = plan.entry(f"{n}/verify")
        assert verify.role is Role.VERIFY and leave.key in plan.waits_for(verify.key)
        assert "--expect-size 2" in verify.step.create
    assert not plan.of_node("aws-b", Role.VERIFY)
    assert "--keep-data" in cluster_plan(parsed(leaving())).entry("aws-b/decommission").step.create


def test_control_without_decommission_the_node_is_a_member() -> None:
    plan = cluster_plan(parsed(full_config(**NO_TLS)))
    assert "aws-b/roll" in {e.key for e in plan} and "aws-b/decommission" not in {e.key for e in plan}
    assert "--expect-size 3" in plan.entry("aws-a/verify").step.create


# -- the recorded program -------------------------------------------------------

@pytest.fixture(scope="module")
def recordings() -> tuple[Recording, Recording]:
    return run_program(full_config(**NO_TLS), preview=False), run_program(leaving(), preview=False)


def members_line(rec: Recording, node: str) -> str:
    put = decode_put(str(stdin_text(command(rec, f"{node}-ssh-config"))))
    text = put[MYCNF_NODE_PATH][0].decode()
    return next(line for line in text.splitlines() if line.startswith("wsrep_cluster_address"))


def test_the_others_drop_the_leaving_address_and_restart_nobody(recordings: tuple[Recording, Recording]) -> None:
    before, after = recordings
    b_address = "10.20.2.10"  # aws-b's privateIp in the test config
    for n in MEMBERS:
        assert b_address in members_line(before, n) and b_address not in members_line(after, n)
    changed = retriggered(triggers(before), triggers(after))
    assert not {f"{n}/{s}" for n in MEMBERS for s in ("preflight", "roll")} & changed
    assert {f"{n}/verify" for n in MEMBERS} <= changed
    assert runs_after(after, "aws-a-verification-run", "aws-b-ssh-decommission")
    assert runs_after(after, "aws-b-ssh-decommission", "dc-1-ssh-roll")
    names = {r.name for r in after.of_type(Types.REMOTE_COMMAND)}
    assert "aws-b-ssh-roll" not in names and "aws-b-verification-run" not in names


def test_the_leaving_volume_is_unprotected_but_still_retained(recordings: tuple[Recording, Recording]) -> None:
    before, after = recordings

    def volume(rec: Recording, node: str) -> Any:
        [v] = [r for r in rec.of_type(Types.EBS_VOLUME) if r.name == f"{node}-data"]
        return v.options

    assert volume(before, "aws-b").protect is True
    assert volume(after, "aws-b").protect is False and volume(after, "aws-b").retain_on_delete is True
    assert volume(after, "aws-a").protect is True  # control: a member's volume stays protected


# -- the node script ------------------------------------------------------------

class LeavingNode(FakeNode):
    """FakeNode plus the files a decommission removes."""

    SECRETS = ("run/mariadb-kms/keyfile", "etc/mariadb-kms/datakey.blob", "etc/mariadb-kms/aws-credentials",
               "etc/mysql/tls/node-key.pem", "var/lib/mysql/aws-kms-key.1.1")

    def __init__(self, base: Path) -> None:
        super().__init__(base, ["127.0.0.2:4567", "127.0.0.3:4567", "127.0.0.4:4567"], "127.0.0.2")
        for script in ("mariadb-kms-decommission", "mariadb-kms-roll"):
            target = self.root / "usr/local/sbin" / script
            target.write_bytes((REPO / "node" / script).read_bytes())
            target.chmod(0o755)
        for rel in (*self.SECRETS, "var/lib/mysql/ibdata1", "run/galera/galera.cache"):
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text("x")
        self.set(active=True, status=status_lines(3))


@pytest.fixture
def node(tmp_path: Path) -> LeavingNode:
    return LeavingNode(tmp_path)


def test_decommission_leaves_forgets_the_key_and_keeps_data(node: LeavingNode) -> None:
    result = node.run("mariadb-kms-decommission", "--keep-data")
    assert result.returncode == 0, result.stderr
    log = node.log()
    assert "systemctl stop mariadb" in log
    assert any(line.startswith("systemctl mask") and "mariadb" in line for line in log)
    for rel in LeavingNode.SECRETS:
        assert not (node.root / rel).exists(), rel
    assert (node.root / "var/lib/mysql/ibdata1").exists()
    assert not (node.root / "run/galera/galera.cache").exists()
    # The roll refuses from now on: a decommissioned node never rejoins.
    again = node.run("mariadb-kms-roll", "--timeout", "5")
    assert again.returncode != 0 and "decommissioned" in again.stderr
    # And a second decommission finds nothing to do but succeeds.
    assert node.run("mariadb-kms-decommission", "--keep-data").returncode == 0


def test_decommission_wipes_data_when_told(node: LeavingNode) -> None:
    assert node.run("mariadb-kms-decommission", "--wipe-data").returncode == 0
    assert list((node.root / "var/lib/mysql").iterdir()) == []


def test_decommission_needs_a_data_choice(node: LeavingNode) -> None:
    result = node.run("mariadb-kms-decommission")
    assert result.returncode != 0 and "--keep-data or --wipe-data" in result.stderr
    # Control: nothing was touched.
    assert all((node.root / rel).exists() for rel in LeavingNode.SECRETS)
    assert "systemctl stop mariadb" not in node.log()


def test_decommission_waits_for_a_donor_to_finish_first(node: LeavingNode) -> None:
    node.set(status=status_lines(3, state="Donor/Desynced"))
    (node.bin / "sleep").write_text("#!/bin/bash\n" + textwrap.dedent(f"""
        printf 'wsrep_cluster_status\\tPrimary\\nwsrep_local_state_comment\\tSynced\\nwsrep_cluster_size\\t3\\n' \\
            > {node.state}/status
    """))
    (node.bin / "sleep").chmod(0o755)
    result = node.run("mariadb-kms-decommission", "--keep-data")
    assert result.returncode == 0, result.stderr
    assert "state 'Synced'" in result.stdout


def test_the_script_is_shipped() -> None:
    manifest = (REPO / "node/MANIFEST").read_text().split()
    assert "mariadb-kms-decommission" in manifest and "mariadb-kms-upgrade" in manifest
    subprocess.run(["bash", "-n", str(REPO / "node/mariadb-kms-decommission")], check=True)
