"""The cluster plan (components/plan) as data: its order rules, checked on the Plan itself.

The rules (``components/plan/order.py``'s docstring): bootstrap exactly once,
on the bootstrap node, before any roll; at most one node restarting at a
time; every verification after every roll. Each is checked on several cluster
shapes, and each checker is shown to find a plan that breaks its rule.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mocks import full_config

from components.config import ClusterConfig, parse_config
from components.plan import BOOTSTRAP_KEY, Plan, PlanEntry, Role, cluster_plan, entry_key

REPO = Path(__file__).resolve().parents[2]
# Steps after which MariaDB on that node runs with something new: a restart or a reload.
DISRUPTIVE = ("instance-type", "tls-reload", "roll")  # instance-type stops and starts the instance


def cluster(**changes: Any) -> ClusterConfig:
    return parse_config(full_config(**changes), stack="dev", region="eu-west-1")


def _five(config: dict[str, Any]) -> dict[str, Any]:
    extra = [{"name": f"aws-{c}", "subnetId": "subnet-0a1b2c3d4e5f60718", "availabilityZone": "eu-west-1a"}
             for c in "cd"]
    dc2 = {**config["onPremNodes"][0], "name": "dc-2", "address": "192.0.2.22"}
    return {**config, "ec2Nodes": [*config["ec2Nodes"], *extra], "onPremNodes": [*config["onPremNodes"], dc2]}


SHAPES = {
    "2 ec2 + 1 onprem": full_config(),
    "bootstrap on-prem": full_config(bootstrapNode="dc-1"),
    "tls off": full_config(tlsReplication=False, tlsSst=False, tlsClients=False, requireSecureTransport=False),
    "one node": full_config(ec2Nodes=[], bootstrapNode=...),
    "five nodes": _five(full_config()),
    "verify every up": full_config(verifyOnEveryUp=True),
}


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def plan(request: pytest.FixtureRequest) -> Plan:
    return cluster_plan(parse_config(SHAPES[request.param], stack="dev", region="eu-west-1"))


# -- the checkers: each returns what breaks its rule ----------------------------------


def bootstrap_problems(plan: Plan, bootstrap_node: str) -> list[str]:
    found = [e for e in plan if e.role is Role.BOOTSTRAP]
    if len(found) != 1:
        return [f"{len(found)} bootstraps"]
    (b,) = found
    problems = []
    if b.node != bootstrap_node or not b.create_only or b.step.triggers:
        problems.append(f"bootstrap on {b.node}, create-only {b.create_only}, triggers {b.step.triggers}")
    waits = plan.waits_for(b.key)
    for node in plan.nodes:
        if entry_key(node, "install") not in waits:
            problems.append(f"bootstrap does not wait for {node}'s install")
        roll = entry_key(node, "roll")
        if roll in waits:
            problems.append(f"bootstrap waits for {roll}")
        if b.key not in plan.waits_for(roll):
            problems.append(f"{roll} does not wait for the bootstrap")
    return problems


def concurrent_disruptions(plan: Plan) -> list[tuple[str, str]]:
    """Pairs of disruptive steps on two different nodes that no edge orders: they could run at once."""
    steps = [e for e in plan if e.role in (Role.NODE_STEP, Role.INSTANCE_TYPE) and e.step.key in DISRUPTIVE]
    pairs = []
    for i, a in enumerate(steps):
        for b in steps[i + 1:]:
            if a.node != b.node and a.key not in plan.waits_for(b.key) and b.key not in plan.waits_for(a.key):
                pairs.append((a.key, b.key))
    return pairs


def verifications_before_a_roll(plan: Plan) -> list[tuple[str, str]]:
    rolls = [e.key for e in plan if e.role is Role.NODE_STEP and e.step.key == "roll"]
    return [(v.key, r) for v in plan if v.role is Role.VERIFY for r in rolls if r not in plan.waits_for(v.key)]


# -- the rules on every shape --------------------------------------------------------


def test_bootstrap_exactly_once_on_the_bootstrap_node_and_first_among_rolls(plan: Plan) -> None:
    assert bootstrap_problems(plan, plan.nodes[0]) == []


def test_at_most_one_node_restarts_at_a_time(plan: Plan) -> None:
    assert concurrent_disruptions(plan) == []
    # Rolling order: every node's config waits for the previous node's roll.
    for previous, node in zip(plan.nodes, plan.nodes[1:], strict=False):
        assert entry_key(previous, "roll") in plan.entry(entry_key(node, "config")).after


def test_every_verification_after_every_roll(plan: Plan) -> None:
    assert verifications_before_a_roll(plan) == []
    assert {e.node for e in plan if e.role is Role.VERIFY} == set(plan.nodes)


def test_installs_wait_for_nothing_on_other_nodes(plan: Plan) -> None:
    for e in plan:
        if e.role is Role.NODE_STEP and e.step.key == "install":
            assert {plan.entry(k).node for k in plan.waits_for(e.key)} <= {e.node}, e.key


def test_the_plan_is_in_topological_order_and_refuses_otherwise() -> None:
    plan = cluster_plan(cluster())
    seen: set[str] = set()
    for e in plan:
        assert set(e.after) <= seen, e.key
        seen.add(e.key)
    with pytest.raises(ValueError, match="come later"):
        Plan(plan.nodes, tuple(reversed(plan.entries)))
    with pytest.raises(ValueError, match="twice"):
        Plan(plan.nodes, (*plan.entries, plan.entries[0]))


def test_first_steps_wait_for_the_machine() -> None:
    plan = cluster_plan(cluster())
    assert [e.key for e in plan if e.after_machine] == [
        "aws-a/first-boot", "aws-b/first-boot", "dc-1/node-files", "dc-1/seed", "dc-1/credentials",
    ]


# -- controls: each checker finds a plan that breaks its rule ------------------------------


def _without_edge(plan: Plan, key: str, dropped: str) -> Plan:
    entries = tuple(replace(e, after=tuple(a for a in e.after if a != dropped)) if e.key == key else e for e in plan)
    return Plan(plan.nodes, entries)


def test_controls_each_checker_finds_a_broken_plan() -> None:
    plan = cluster_plan(cluster())
    # Node 2's configure steps no longer wait for node 1's roll: two nodes may restart at once.
    loose = plan
    for step in ("instance-type", "tls", "tls-reload", "config", "preflight"):
        loose = _without_edge(loose, entry_key("aws-b", step), entry_key("aws-a", "roll"))
    assert concurrent_disruptions(loose)
    # aws-b's instance stop no longer waits for aws-a's roll (its configure steps still do).
    stop = _without_edge(plan, entry_key("aws-b", "instance-type"), entry_key("aws-a", "roll"))
    assert (entry_key("aws-a", "roll"), entry_key("aws-b", "instance-type")) in concurrent_disruptions(stop)
    # A second bootstrap, and a roll that no longer waits for the bootstrap.
    second = PlanEntry("bootstrap-2", "aws-b", Role.BOOTSTRAP, plan.entry(BOOTSTRAP_KEY).step, ())
    assert bootstrap_problems(Plan(plan.nodes, (second, *plan.entries)), "aws-a") == ["2 bootstraps"]
    early = _without_edge(plan, entry_key("aws-a", "roll"), BOOTSTRAP_KEY)
    assert "aws-a/roll does not wait for the bootstrap" in bootstrap_problems(early, "aws-a")
    assert bootstrap_problems(plan, "dc-1")
    # A verification that waits for its own roll only.
    hasty = _without_edge(plan, entry_key("aws-a", "verify"), entry_key("dc-1", "roll"))
    assert verifications_before_a_roll(hasty)


# -- purity ------------------------------------------------------------------------------


def _imports_pulumi(module: str) -> bool:
    probe = f"import sys, {module}; print('pulumi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_the_plan_imports_no_pulumi() -> None:
    assert not _imports_pulumi("components.plan")
    assert not _imports_pulumi("components.plan.files")
    # Control: the probe sees pulumi where it is imported.
    assert _imports_pulumi("components.cluster")
