"""What a change of each relevant config key re-runs: a table, checked on the recorded program.

pulumi-command replaces a command whose ``triggers`` changed (and runs it
again); any other input change is an update. So the table below is "which
(node, step) entries get new trigger values when this key changes", read from
two recordings of the whole program under mocks. The plan names each step's
triggers (``components/plan/order.py``); the executor resolves them
(``components/node_path.StepInputs``); this test sees both together.

The base config turns every TLS channel off: the mocks generate real random
certificates, so TLS triggers would differ on every run; the TLS steps'
triggers are checked in test_plan_order / test_remote_steps.
"""

from __future__ import annotations

from typing import Any

import pytest
from mocks import Recording, full_config, run_program
from remote_plan import remote_commands

from rehearsal.aws_values import plain

NODES = ("aws-a", "aws-b", "dc-1")
NO_TLS = {"tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False}


def base() -> dict[str, Any]:
    return full_config(**NO_TLS)


def entry_of(name: str) -> str:
    if name == "cluster-bootstrap":
        return "bootstrap"
    if name.endswith("-verification-run"):
        return f"{name.removesuffix('-verification-run')}/verify"
    node, _, step = name.partition("-ssh-")
    return f"{node}/{step}"


def triggers(rec: Recording) -> dict[str, Any]:
    return {entry_of(r.name): plain(r.inputs.get("triggers")) for r in remote_commands(rec)}


def retriggered(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() & after.keys() if before[k] != after[k]}


def every(*steps: str, nodes: tuple[str, ...] = NODES) -> set[str]:
    return {f"{n}/{s}" for n in nodes for s in steps}


def _with_host_key(config: dict[str, Any]) -> dict[str, Any]:
    # A reinstalled on-prem host: a new host key, the same address.
    node = {**config["onPremNodes"][0], "hostKey": full_config()["sshAuthorizedKey"].rsplit(" ", 1)[0]}
    return {**config, "onPremNodes": [node]}


def _with_new_member(config: dict[str, Any]) -> dict[str, Any]:
    extra = {"name": "aws-c", "subnetId": "subnet-0a1b2c3d4e5f60718", "availabilityZone": "eu-west-1a"}
    return {**config, "ec2Nodes": [*config["ec2Nodes"], extra]}


RESTART = ("preflight", "roll", "verify")
DC1_PATH = ("node-files", "login-keys", "seed", "credentials", "install", "config", "escrow", "member-firewall",
            "preflight", "roll", "verify")

# key changed -> the entries it re-runs by a trigger (all others keep their trigger values)
TABLE: dict[str, tuple[Any, set[str]]] = {
    "tags": (lambda c: {**c, "tags": {"owner": "someone-else"}}, set()),
    "keyRotationPeriodDays": (lambda c: {**c, "keyRotationPeriodDays": 90}, set()),
    "amiId": (lambda c: {**c, "amiId": "ami-0fedcba9876543210"}, set()),
    "encryptionThreads": (lambda c: {**c, "encryptionThreads": 8}, every(*RESTART)),
    "gcacheSize": (lambda c: {**c, "gcacheSize": "2G"}, every(*RESTART)),
    "clusterName": (lambda c: {**c, "clusterName": "another"}, every(*RESTART)),
    "generalLog": (lambda c: {**c, "generalLog": True}, every(*RESTART)),
    "verifyOnEveryUp": (lambda c: {**c, "verifyOnEveryUp": True}, every("verify")),
    "onPremNodes hostKey": (_with_host_key, every(*DC1_PATH, nodes=("dc-1",))),
    # The member list restarts nobody: only verification (it expects the new size) runs again.
    "ec2Nodes (a new member)": (_with_new_member, every("verify")),
    "keyManagement": (
        lambda c: {**c, "keyManagement": "aws-plugin", "awsPluginSource": "/opt/aws_key_management.so",
                   "onPremDatadirEncryption": "luks"},
        every("install", "escrow", *RESTART),
    ),
}


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    return triggers(run_program(base(), preview=False))


@pytest.mark.parametrize("key", list(TABLE))
def test_a_config_change_retriggers_what_the_table_says(before: dict[str, Any], key: str) -> None:
    change, expected = TABLE[key]
    after = triggers(run_program(change(base()), preview=False))
    assert retriggered(before, after) == expected
    assert "bootstrap" not in retriggered(before, after)


def test_the_same_config_retriggers_nothing(before: dict[str, Any]) -> None:
    # Control for the table: equal inputs, equal triggers (nothing random leaks into them).
    assert retriggered(before, triggers(run_program(base(), preview=False))) == set()
    assert len(before) == 11 * len(NODES) + 1, sorted(before)  # eleven steps per node, one bootstrap
