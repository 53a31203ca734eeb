"""Removing a node on real hosts: the others take the shorter member list without a restart, the node leaves.

A 3-node kms-envelope cluster deployed by the program's own plan
(``rehearsal/runner``); then the stack recorded again with ``decommission:
true`` on node3 (and ``decommissionData: wipe``), and what that `pulumi up`
carries out, command by command of that recording: node1 and node2 get a
config without node3 and run their roll (no restart: the same mariadbd keeps
running), node3 runs its decommission step, and the verification on the
others expects 2 members.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import release_hosts

from components.node_files import BLOB_PATH, CREDENTIALS_PATH, DATADIR
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import main_pid, sql, wait_synced, wsrep_status
from rehearsal.runner import TLS_OFF, Deployment, Program, ProgramStack, changed_commands, deploy, onprem_config
from rehearsal.testbed import Testbed

HOSTS = ("node1", "node2", "node3")
STAYING = ("node1", "node2")
LEAVING = "node3"


@dataclass
class Removal:
    first: Program  # the stack as deployed
    smaller: Program  # the stack recorded again with node3 leaving
    steps: Deployment  # the commands of ``smaller``, run one by one by the tests


@pytest.fixture(scope="module")
def cluster(testbed: Testbed, kms: KmsServer) -> Iterator[Removal]:
    stack = ProgramStack(kms)
    try:
        # TLS off, as a user may set it: a second recording issues new certificates (the runner keeps the
        # stack's keys, not its TLS material), which would add a renewal to the removal.
        first = deploy(testbed, stack, onprem_config(testbed, HOSTS, gcacheSize="64M", **TLS_OFF)).program
        nodes = [{**n, "decommission": True} if n["name"] == LEAVING else n for n in first.config["onPremNodes"]]
        smaller = stack.record({**first.config, "onPremNodes": nodes, "decommissionData": "wipe"}, testbed)
        yield Removal(first, smaller, Deployment(testbed, smaller))
    finally:
        for h in HOSTS:
            testbed.exec(h, ["systemctl", "unmask", "--quiet", "mariadb", "mariadb-kms-unwrap"], timeout=60)
            testbed.exec(h, ["rm", "-f", "/var/lib/mariadb-kms/decommissioned"], timeout=60)
        release_hosts(testbed, HOSTS)


def test_the_update_runs_the_staying_nodes_config_the_removal_and_the_verification_only(cluster: Removal) -> None:
    assert sorted(changed_commands(cluster.first, cluster.smaller)) == sorted([
        *(f"{h}-ssh-config" for h in STAYING), f"{LEAVING}-ssh-decommission",
        *(f"{h}-ssh-shut-out" for h in STAYING), *(f"{h}-verification-run" for h in STAYING),
    ])


def test_the_others_take_the_shorter_member_list_without_a_restart(testbed: Testbed, cluster: Removal) -> None:
    for h in STAYING:  # in the plan's rolling order
        pid = main_pid(testbed, h)
        cluster.steps.run_command(f"{h}-ssh-config")
        rolled = cluster.steps.run_command(f"{h}-ssh-roll")
        assert "nothing to restart" in rolled.stdout, rolled.stdout[-2000:]
        assert main_pid(testbed, h) == pid
    assert wsrep_status(testbed, "node1").get("wsrep_cluster_size") == "3"  # node3 still a member, as it should be


def test_decommission_leaves_and_the_others_verify_two_members(testbed: Testbed, cluster: Removal) -> None:
    sql(testbed, "node1", "CREATE DATABASE IF NOT EXISTS day2; CREATE TABLE IF NOT EXISTS day2.t (id INT PRIMARY KEY);"
        " REPLACE INTO day2.t VALUES (1);")
    cluster.steps.run_command(f"{LEAVING}-ssh-decommission")  # raises, with the step's output, when it fails
    for h in STAYING:
        wait_synced(testbed, h, 2, timeout=30)  # a graceful leave: no suspect timeout to sit out
    for path in (BLOB_PATH, CREDENTIALS_PATH, "/run/mariadb-kms/keyfile"):
        assert testbed.exec(LEAVING, ["test", "-e", path]).rc != 0, path
    assert testbed.exec(LEAVING, ["find", DATADIR, "-mindepth", "1"]).stdout.strip() == ""
    assert testbed.exec(LEAVING, ["systemctl", "is-enabled", "mariadb"]).stdout.strip() == "masked"
    refused = testbed.exec(LEAVING, ["mariadb-kms-roll", "--timeout", "30"])
    assert refused.rc != 0 and "decommissioned" in refused.stderr
    verifications = cluster.smaller.verification_commands
    assert verifications == [f"{h}-verification-run" for h in STAYING]
    for name, outcome in zip(verifications, cluster.steps.rerun(verifications), strict=True):
        assert "--expect-size 2" in cluster.smaller.command(name).create
        assert json.loads(outcome.stdout)["ok"] is True
    assert sql(testbed, "node2", "SELECT COUNT(*) FROM day2.t").strip() == "1"
