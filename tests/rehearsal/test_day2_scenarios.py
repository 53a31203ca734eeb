"""Every later `pulumi up`, rehearsed: `make demo`, then `make demo-up CONFIG=FILE` per change, under client load.

One cluster for the whole module, changed step by step as a user would (each test's config builds on the
last): an unchanged `up` runs nothing; adding an on-prem node restarts nobody; a destroy is refused by
the protected resources; the rest (marked ``scenarios``, run by `make scenarios` with the others) change an
instance type, remove the node again in two ups, and upgrade MariaDB. Each scenario prints its figures
(wall time, nodes restarted, the most members out of service at once and the most not Synced, with who,
acknowledged writes lost, client errors and the longest gap, SST or IST); the module prints them as a
table at the end (``day2.table``). At most one member may be out at once, and a second one not Synced
only as the donor serving it.

The commands are the runbook's (docs/runbooks/day-2.md): `python -m rehearsal up --config FILE`, which
`make demo-up CONFIG=FILE` runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from day2 import (
    RESULTS,
    Day2Scenario,
    DemoCluster,
    Figures,
    offer_bumped_version,
    prepare_bank,
    rehearsal,
    settings,
    table,
)

pytestmark = pytest.mark.rehearsal

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "Pulumi.rehearsal.yaml"
# The runbook's config files, in the order docs/runbooks/day-2.md applies them.
RUNBOOK = REPO / "docs" / "runbooks" / "day-2"
ADD_DC2 = RUNBOOK / "1-add-dc-2.yaml"
INSTANCE_TYPE = RUNBOOK / "2-instance-type.yaml"
DECOMMISSION_DC2 = RUNBOOK / "3-decommission-dc-2.yaml"
FORGET_DC2 = RUNBOOK / "4-forget-dc-2.yaml"


def print_figures(sc: Day2Scenario) -> None:
    assert sc.figures is not None
    print(f"\n{sc.name}: " + json.dumps(sc.figures.to_dict()))


def assert_at_most_one_out(f: Figures) -> None:
    """The rolling rule: at most one member out of service at once, and any second member not Synced only a
    donor serving the node that is out or joining (Galera desyncs the donor of an IST too)."""
    assert f.max_members_out <= 1, f"{f.max_members_out} members out at once: {f.worst_out}"
    assert f.extra_not_synced == [], f"not Synced without being out or a serving donor: {f.extra_not_synced}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoCluster]:
    from test_rehearsal import require_root_and_tools

    require_root_and_tools()
    try:
        demo = rehearsal("demo", timeout=1800)
        assert demo.returncode == 0, f"make demo failed:\n{demo.stderr[-4000:]}"
        from rehearsal.demo import out_dir

        report = json.loads((out_dir(settings()) / "report.json").read_text())
        addresses = {name: node["address"] for name, node in report["nodes"].items()}
        addresses["dc-2"] = settings().host_address(len(addresses) + 1)  # the next testbed host
        yield prepare_bank(["aws-a", "aws-b", "dc-1"], addresses, tmp_path_factory.mktemp("day2"))
    finally:
        if RESULTS:
            print("\n" + table(RESULTS))
        down = rehearsal("down", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]


def test_unchanged_up_runs_nothing(cluster: DemoCluster) -> None:
    with Day2Scenario(cluster, "unchanged up", members=["aws-a", "aws-b", "dc-1"],
                      nodes=["aws-a", "aws-b", "dc-1"]) as sc:
        proc = sc.up(STACK_FILE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no changes: nothing runs" in proc.stderr
    assert "+0 create, ~0 update, +-0 replace, -0 delete" in proc.stderr
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert f.steps_run == 0 and f.nodes_restarted == []
    assert f.acknowledged > 0 and f.acknowledged_lost == 0 and f.invariant_violations == 0
    assert f.max_members_not_synced == 0


def test_preview_prints_the_plan_and_runs_nothing(cluster: DemoCluster) -> None:
    proc = rehearsal("up", "--config", str(ADD_DC2), "--preview", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The runbook's "Add a member": config updated and verification replaced on every existing node, no roll.
    for node in ("aws-a", "aws-b", "dc-1"):
        assert f"{node}-ssh-config" in proc.stderr and f"{node}-verification-run" in proc.stderr
        assert f"{node}-ssh-roll" not in proc.stderr, f"{node}: a roll in the plan would restart it"
    assert "dc-2-ssh-install" in proc.stderr
    assert "nothing runs" in proc.stderr
    assert not re.search(r"up: \S+ on \S+ ok in", proc.stderr), "a preview ran a step"


def test_add_an_onprem_node_restarts_nobody(cluster: DemoCluster) -> None:
    config = ADD_DC2
    with Day2Scenario(cluster, "add an on-prem node", members=["aws-a", "aws-b", "dc-1"],
                      nodes=["aws-a", "aws-b", "dc-1", "dc-2"]) as sc:
        proc = sc.up(config)
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert "dc-2-ssh-install on dc-2 ok" in proc.stderr
    assert f.nodes_restarted == [], f"adding a member restarted {f.nodes_restarted}"
    assert_at_most_one_out(f)  # the donor is Donor/Desynced while it sends the joiner's SST
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0
    assert f.state_transfer["dc-2"] in ("SST", "IST")
    sample = cluster.sample("dc-2")
    assert sample is not None and sample[0] == "Synced"
    # A second `up` with the same file: the state has it all, nothing runs.
    again = rehearsal("up", "--config", str(config), timeout=600)
    assert again.returncode == 0 and "no changes: nothing runs" in again.stderr, again.stderr[-3000:]


@pytest.mark.scenarios
def test_change_instance_type_one_node_at_a_time(cluster: DemoCluster) -> None:
    config = INSTANCE_TYPE
    with Day2Scenario(cluster, "instanceType on both EC2 nodes", members=["aws-a", "aws-b", "dc-1", "dc-2"],
                      nodes=["aws-a", "aws-b", "dc-1", "dc-2"]) as sc:
        proc = sc.up(config)
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert "aws-a-instance-type" in proc.stderr and "aws-b-instance-type" in proc.stderr
    assert set(f.nodes_restarted) == {"aws-a", "aws-b"}
    assert_at_most_one_out(f)
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0


@pytest.mark.scenarios
def test_remove_a_node_in_two_ups(cluster: DemoCluster) -> None:
    leave, forget = DECOMMISSION_DC2, FORGET_DC2
    with Day2Scenario(cluster, "remove dc-2 (two ups)", members=["aws-a", "aws-b", "dc-1"],
                      nodes=["aws-a", "aws-b", "dc-1", "dc-2"]) as sc:
        first = sc.up(leave)
        assert first.returncode == 0, first.stderr[-6000:]
        second = sc.up(forget)
        assert second.returncode == 0, second.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert "dc-2-ssh-decommission on dc-2 ok" in first.stderr
    assert sc.cluster.sample("dc-2") is None, "dc-2 still answers after its decommission"
    # Besides deletes, the second up updates each member's allowlist to the members-only list its shut-out
    # already loaded in the first (the step's input lost the leaver's address): nothing changes on the hosts.
    assert "-0 delete" not in second.stderr and "+0 create, ~3 update, +-0 replace" in second.stderr
    for n in ("aws-a", "aws-b", "dc-1"):
        assert f"{n}-ssh-shut-out on {n} ok" in first.stderr and f"{n}-ssh-member-firewall on {n} ok" in second.stderr
    assert f.nodes_restarted == []
    assert f.max_members_not_synced == 0
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0


@pytest.mark.scenarios
def test_minor_upgrade_one_node_at_a_time(cluster: DemoCluster, tmp_path: Path) -> None:
    nodes = ["aws-a", "aws-b", "dc-1"]
    new = offer_bumped_version(nodes, tmp_path)
    # The runbook's step: mariadbVersion set to the version apt offers (known only once it is offered).
    data = yaml.safe_load(FORGET_DC2.read_text())
    data["config"]["mariadb-kms:mariadbVersion"] = new
    config = tmp_path / "5-upgrade.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with Day2Scenario(cluster, "MariaDB minor upgrade", members=nodes, nodes=nodes) as sc:
        proc = sc.up(config)
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    tb = cluster.testbed()
    for n in nodes:
        assert tb.exec(n, ["dpkg-query", "-W", "-f=${Version}", "mariadb-server"]).stdout.strip() == new, n
    assert sorted(f.nodes_restarted) == nodes
    assert_at_most_one_out(f)
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0


def test_destroy_is_refused_by_the_protected_resources(cluster: DemoCluster) -> None:
    proc = rehearsal("destroy", "--preview", timeout=600)  # make demo-destroy PREVIEW=1
    assert proc.returncode == 3, proc.stderr[-4000:]
    assert "is protected and would be deleted" in proc.stderr
    assert "aws:kms/key:Key" in proc.stderr
    # Control: the refusal changed nothing; the next `up` has nothing to do.
    assert all((s := cluster.sample(n)) is not None and s[0] == "Synced" for n in ("aws-a", "aws-b", "dc-1"))
