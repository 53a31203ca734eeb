"""Adding a member restarts nobody: the new member list reaches every config file, no roll runs for it.

A running Galera member accepts a joiner whatever its own
``wsrep_cluster_address`` says: the variable is the address a node first
connects to (MariaDB's reference, "Address to initially connect to cluster",
https://mariadb.com/docs/reference/mdb/system-variables/wsrep_cluster_address/),
read at start; setting it at runtime makes the node close its connection to the
cluster and reconnect (https://mariadb.com/kb/en/galera-cluster-system-variables/#wsrep_cluster_address).
So the list is left out of both restart decisions:

- the program's: the ``config`` trigger of ``preflight``/``roll``
  (``components/plan/files.restart_digest``), read here from two recordings
  of the whole program (3 nodes, then 4);
- the node's: ``mariadb-kms-roll``'s own "applied config" digest, run here
  against a scratch root with stand-ins for systemctl and the client.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mocks import Recording, full_config, run_program
from remote_plan import decode_put, remote_commands, stdin_text
from test_plan_triggers import NO_TLS, entry_of, retriggered, triggers
from test_remote_steps import FakeNode, status_lines

from components.mycnf import RESTART_EXEMPT_OPTIONS, restart_relevant
from components.node_files import MYCNF_NODE_PATH
from components.plan.files import restart_digest

REPO = Path(__file__).resolve().parents[2]
EXISTING = ("aws-a", "aws-b", "dc-1")
NEW = {"name": "aws-c", "subnetId": "subnet-0a1b2c3d4e5f60718", "availabilityZone": "eu-west-1a"}


def three() -> dict[str, Any]:
    return full_config(**NO_TLS)


def four() -> dict[str, Any]:
    cfg = three()
    return {**cfg, "ec2Nodes": [*cfg["ec2Nodes"], NEW]}


def node_cnf(rec: Recording, node: str) -> str:
    (config,) = [r for r in remote_commands(rec) if r.name == f"{node}-ssh-config"]
    stdin = stdin_text(config)
    assert stdin is not None
    content = decode_put(stdin)[MYCNF_NODE_PATH][0]
    return content.decode()


def creates(rec: Recording) -> dict[str, str]:
    return {entry_of(r.name): str(r.inputs.get("create")) for r in remote_commands(rec)}


@pytest.fixture(scope="module")
def recordings() -> tuple[Recording, Recording]:
    return run_program(three(), preview=False), run_program(four(), preview=False)


def test_a_new_member_reruns_no_roll_and_no_preflight_on_existing_nodes(
    recordings: tuple[Recording, Recording],
) -> None:
    before, after = recordings
    changed = retriggered(triggers(before), triggers(after))
    assert not {f"{n}/{s}" for n in EXISTING for s in ("preflight", "roll")} & changed
    # Verification runs again everywhere: it expects the new size.
    assert {f"{n}/verify" for n in EXISTING} <= changed
    for n in EXISTING:
        assert "--expect-size 4" in creates(after)[f"{n}/verify"]
    # The new node runs its whole path (it is new: every entry is a create).
    assert {"aws-c/config", "aws-c/roll", "aws-c/verify"} <= set(creates(after)) - set(creates(before))


def test_existing_nodes_still_get_the_new_member_list_in_their_config_file(
    recordings: tuple[Recording, Recording],
) -> None:
    before, after = recordings
    for n in EXISTING:
        old, new = node_cnf(before, n), node_cnf(after, n)
        assert old != new  # the config step's stdin changed: an update, which runs the put again
        members_old = re.search(r"^wsrep_cluster_address = (.*)$", old, re.M)
        members_new = re.search(r"^wsrep_cluster_address = (.*)$", new, re.M)
        assert members_old and members_new
        assert members_new.group(1).count(",") == members_old.group(1).count(",") + 1
        # ... and the member list is the only difference.
        assert restart_relevant(old) == restart_relevant(new)


def test_control_a_tunable_change_does_rerun_the_rolls() -> None:
    base = triggers(run_program(three(), preview=False))
    tuned = triggers(run_program({**three(), "encryptionThreads": 8}, preview=False))
    assert {f"{n}/{s}" for n in EXISTING for s in ("preflight", "roll")} <= retriggered(base, tuned)


CNF = "[mariadb]\nwsrep_cluster_address = gcomm://10.0.0.1:4567,10.0.0.2:4567\nwsrep_node_address = 10.0.0.1\n"


def test_restart_relevant_drops_the_member_list_only() -> None:
    assert RESTART_EXEMPT_OPTIONS == ("wsrep_cluster_address",)
    assert restart_relevant(CNF) == "[mariadb]\nwsrep_node_address = 10.0.0.1\n"
    # Control: every other line stays, including one that only mentions the option.
    other = "# wsrep_cluster_address is the member list\nwsrep_cluster_name = x\n"
    assert restart_relevant(other) == other


def test_restart_digest_ignores_members_but_not_other_lines() -> None:
    def files(text: str) -> dict[str, tuple[bytes | str, int, str]]:
        return {MYCNF_NODE_PATH: (text, 0o644, "root:root")}

    more = CNF.replace("10.0.0.2:4567", "10.0.0.2:4567,10.0.0.3:4567")
    assert restart_digest(files(CNF), "n") == restart_digest(files(more), "n")
    assert restart_digest(files(CNF), "n") != restart_digest(files(CNF.replace("10.0.0.1\n", "10.0.0.9\n")), "n")
    assert restart_digest(files(CNF), "n") != restart_digest(files(CNF), "other node files")


# -- the node's own decision (mariadb-kms-roll) --------------------------------

MEMBERS = ["127.0.0.2:4567", "127.0.0.3:4567", "127.0.0.4:4567"]


@pytest.fixture
def running_node(tmp_path: Path) -> FakeNode:
    node = FakeNode(tmp_path, MEMBERS, "127.0.0.2")
    node.set(active=True, status=status_lines(3), on_start=status_lines(3))
    assert node.run("mariadb-kms-roll", "--mark-applied").returncode == 0
    return node


def test_the_roll_digest_leaves_out_the_member_list(running_node: FakeNode) -> None:
    stamp = running_node.stamp()
    running_node.write_node_cnf([*MEMBERS, "127.0.0.5:4567"], "127.0.0.2")
    assert running_node.run("mariadb-kms-roll", "--mark-applied").returncode == 0
    assert running_node.stamp() == stamp


def test_a_running_node_is_not_restarted_for_a_new_member(running_node: FakeNode) -> None:
    running_node.write_node_cnf([*MEMBERS, "127.0.0.5:4567"], "127.0.0.2")
    result = running_node.run("mariadb-kms-roll", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert "nothing to restart" in result.stdout
    assert not [line for line in running_node.log() if "restart" in line or "stop" in line]


def test_control_the_roll_restarts_for_any_other_change(running_node: FakeNode) -> None:
    path = running_node.root / "etc/mysql/mariadb.conf.d/91-mariadb-kms-node.cnf"
    path.write_text(path.read_text() + "wsrep_slave_threads = 4\n")
    result = running_node.run("mariadb-kms-roll", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert "systemctl restart mariadb" in running_node.log()


def test_nothing_sets_the_member_list_on_a_running_server() -> None:
    # SET GLOBAL wsrep_cluster_address makes a running node leave and reconnect.
    pattern = re.compile(r"SET\s+(GLOBAL\s+|@@GLOBAL\.)?wsrep_cluster_address", re.I)
    sources = [p for d in ("node", "components", "rehearsal") for p in (REPO / d).rglob("*") if p.is_file()]
    hits = [p for p in sources if pattern.search(p.read_text(errors="replace"))]
    assert hits == []
    # Control: the scan finds such a statement.
    assert pattern.search("mariadb -e 'SET GLOBAL wsrep_cluster_address=\"gcomm://\"'")
