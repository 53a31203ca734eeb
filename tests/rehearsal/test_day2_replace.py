"""EC2 nodes added and replaced by later `pulumi up`s, rehearsed on the demo's cluster under client load.

One `make demo` for the module (aws-a, aws-b, dc-1), then, as docs/runbooks/day-2.md runs them:

1. ``5-add-aws-c.yaml``: a newer cluster ``amiId`` and a new EC2 node aws-c. aws-c is launched from the
   new AMI and booted by cloud-init, and joins; nobody restarts; aws-a and aws-b keep their AMI (the
   instance ignores ``ami``: the "new nodes only" policy).
2. ``6-replace-aws-a.yaml``: aws-a given its own ``amiId``. aws-a alone is replaced: its host is stopped,
   its root disk thrown away, a new instance boots from the new AMI with the same data volume bound, and
   rejoins by IST. The bootstrap does not run again.
3. ``--replace aws-b-instance`` (``pulumi up --replace``) with the same file: aws-b is replaced too, and
   the engine launches it with the AMI the state holds, not the cluster's newer one (ignore_changes).
4. ``7-decommission-aws-c.yaml`` then ``8-forget-aws-c.yaml``: aws-c removed in two ups. The first moves its
   interface to the SSH-only leaving group, unprotects its data volume and runs its decommission; the
   members drop its address from their Galera allowlist. The second deletes only: the instance (its host
   powered off), the interface and the rest; the data volume leaves the stack but is retained.

The AMI stand-in is the AMI id in the host's cloud-init meta-data (``rehearsal/instances.py``). Each
scenario prints the figures of tests/rehearsal/day2.py; the module prints them as a table at the end.
Marked ``scenarios``: `make scenarios` runs it, `make test` does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from day2 import RESULTS, Day2Scenario, DemoCluster, prepare_bank, rehearsal, settings, table

from rehearsal.instances import instance_id, launched_ami

pytestmark = [pytest.mark.rehearsal, pytest.mark.scenarios]

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "runbooks" / "day-2"
ADD_AWS_C = RUNBOOK / "5-add-aws-c.yaml"
REPLACE_AWS_A = RUNBOOK / "6-replace-aws-a.yaml"
DECOMMISSION_AWS_C = RUNBOOK / "7-decommission-aws-c.yaml"
FORGET_AWS_C = RUNBOOK / "8-forget-aws-c.yaml"
OLD_AMI, NEW_AMI = "ami-0deb1a2b3c4d5e6f7", "ami-0deb1a2b3c4d5e6f8"
ROOT_DISK_MARK = "/root/mariadb-kms-old-root-disk"  # written on a host before its instance is replaced
NODES = ["aws-a", "aws-b", "dc-1", "aws-c"]
FIRST_BOOT_DONE = "/var/lib/mariadb-kms/first-boot.done"  # node/mariadb-kms-first-boot's marker


def print_figures(sc: Day2Scenario) -> None:
    assert sc.figures is not None
    print(f"\n{sc.name}: " + json.dumps({**sc.figures.to_dict(), "max_members_down_or_joining": out_at_once(sc)}))


def out_at_once(sc: Day2Scenario) -> int:
    """The most members down or joining at once: not Synced, and not a donor (Donor/Desynced) either.

    ``max_members_not_synced`` counts a donor too; the donor serving a rejoining node's IST is still a
    member that takes writes, so this figure is the one the at-most-one-node-out rule is about.
    """
    serving = ("Synced", "Donor/Desynced")
    return max((sum(1 for n in sc.members if (p := s.probes.get(n)) is None or p.state not in serving)
                for s in sc.samples), default=0)


def ran(proc_stderr: str) -> list[str]:
    """The steps an `up` ran, as "name on node"."""
    return re.findall(r"up: (\S+ on \S+) ok in ", proc_stderr)


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
        addresses["aws-c"] = settings().host_address(len(addresses) + 1)  # the next testbed host
        yield prepare_bank(["aws-a", "aws-b", "dc-1"], addresses, tmp_path_factory.mktemp("day2-replace"))
    finally:
        if RESULTS:
            print("\n" + table(RESULTS))
        down = rehearsal("down", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]


def test_add_an_ec2_node_restarts_nobody_and_only_it_takes_the_new_ami(cluster: DemoCluster) -> None:
    preview = rehearsal("up", "--config", str(ADD_AWS_C), "--preview", timeout=600)
    assert preview.returncode == 0, preview.stderr[-4000:]
    assert "aws-c-instance" in preview.stderr
    # The newer amiId changes no existing instance: an unchanged resource is not listed.
    for node in ("aws-a", "aws-b"):
        assert f"{node}-instance " not in preview.stderr, f"{node}'s instance is in the plan"
        assert f"{node}-ssh-roll" not in preview.stderr, f"a roll in the plan would restart {node}"
    with Day2Scenario(cluster, "add an EC2 node", members=["aws-a", "aws-b", "dc-1"], nodes=NODES) as sc:
        proc = sc.up(ADD_AWS_C)
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert "booted aws-c" in proc.stderr
    assert "aws-c-ssh-first-boot on aws-c" in ran(proc.stderr)
    tb = cluster.testbed()
    assert launched_ami(tb, "aws-c") == NEW_AMI
    assert tb.exec("aws-c", ["test", "-e", FIRST_BOOT_DONE]).rc == 0, "aws-c: first boot did not complete"
    assert f.nodes_restarted == [], f"adding a member restarted {f.nodes_restarted}"
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0
    assert f.state_transfer["aws-c"] in ("SST", "IST")
    sample = cluster.sample("aws-c")
    assert sample is not None and sample[0] == "Synced"
    assert out_at_once(sc) <= 1, f.notes


def _mark_root_disks(cluster: DemoCluster) -> None:
    tb = cluster.testbed()
    for n in NODES:
        tb.put_file(n, ROOT_DISK_MARK, "written before the replacement\n", 0o600)


def _replaced(cluster: DemoCluster, node: str, before_id: str, ami: str) -> None:
    """``node`` is a new instance (new id, new root disk, that AMI) on its old data volume, Synced."""
    tb = cluster.testbed()
    assert instance_id(cluster.testbed(), node) not in ("", before_id)
    assert tb.exec(node, ["test", "-e", ROOT_DISK_MARK]).rc == 1, f"{node} kept its root disk"
    assert launched_ami(tb, node) == ami
    first_boot = tb.exec(node, ["test", "-e", FIRST_BOOT_DONE])
    assert first_boot.rc == 0, f"{node}: first boot did not complete on the new instance"
    sample = cluster.sample(node)
    assert sample is not None and sample[0] == "Synced"


def test_a_new_ami_on_one_node_replaces_it_and_it_rejoins_by_ist(cluster: DemoCluster) -> None:
    preview = rehearsal("up", "--config", str(REPLACE_AWS_A), "--preview", timeout=600)
    assert preview.returncode == 0, preview.stderr[-4000:]
    assert re.search(r"\+-[\s│]+aws:ec2/instance:Instance[\s│]+aws-a-instance[\s│]+changed: ami", preview.stderr), \
        preview.stderr[-4000:]
    assert "aws-a-data-attachment" in preview.stderr  # it names the instance id: replaced with it
    assert "aws-b-instance " not in preview.stderr and "aws-c-instance " not in preview.stderr  # control
    _mark_root_disks(cluster)
    before = instance_id(cluster.testbed(), "aws-a")
    with Day2Scenario(cluster, "replace aws-a (its own amiId)", members=NODES, nodes=NODES) as sc:
        proc = sc.up(REPLACE_AWS_A)
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert re.search(r"up: done in .*, replaced aws-a$", proc.stderr, flags=re.M), "not aws-a alone replaced"
    steps = ran(proc.stderr)
    assert not any(s.startswith("cluster-bootstrap ") for s in steps), "the bootstrap ran again"
    assert {s.split(" on ")[1] for s in steps} == {"aws-a"}, f"steps ran on other nodes: {steps}"
    _replaced(cluster, "aws-a", before, NEW_AMI)
    tb = cluster.testbed()
    for other in ("aws-b", "aws-c", "dc-1"):  # control: the others kept their root disks
        assert tb.exec(other, ["test", "-e", ROOT_DISK_MARK]).rc == 0, other
    assert f.state_transfer["aws-a"] == "IST", f.state_transfer
    assert set(f.nodes_restarted) == {"aws-a"}
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0
    assert out_at_once(sc) <= 1, f.notes


def test_pulumi_up_replace_keeps_the_ami_the_state_holds(cluster: DemoCluster) -> None:
    _mark_root_disks(cluster)
    before = instance_id(cluster.testbed(), "aws-b")
    with Day2Scenario(cluster, "replace aws-b (--replace)", members=NODES, nodes=NODES) as sc:
        proc = sc.up(REPLACE_AWS_A, "--replace", "aws-b-instance")
        assert proc.returncode == 0, proc.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    assert "targeted by --replace" in proc.stderr
    assert re.search(r"up: done in .*, replaced aws-b$", proc.stderr, flags=re.M), "not aws-b alone replaced"
    # The cluster's amiId is the newer one, but the instance ignores ami: the engine launches the state's.
    _replaced(cluster, "aws-b", before, OLD_AMI)
    assert f.state_transfer["aws-b"] == "IST", f.state_transfer
    assert set(f.nodes_restarted) == {"aws-b"}
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0
    assert out_at_once(sc) <= 1, f.notes


def plan_rows(proc_stderr: str) -> list[tuple[str, str, str]]:
    """The printed plan's rows as (symbol, type, name); a wrapped "why" continues on rows without a symbol."""
    return re.findall(r"^\s*│\s*(\+-|[+~-])\s*│\s*(\S+)\s*│\s*(\S+)\s*│", proc_stderr, flags=re.M)


def members_v4(cluster: DemoCluster, node: str) -> str:
    """The node's Galera-port allowlist set, as the runbook has it checked (`nft list set ...`)."""
    got = cluster.testbed().exec(node, ["nft", "list", "set", "inet", "mariadb_kms_members", "members_v4"])
    assert got.rc == 0, f"{node}: {got.stderr}"
    return got.stdout


def listed(set_text: str, address: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(address)}(?![\d.])", set_text) is not None


def cluster_size(cluster: DemoCluster, node: str) -> int:
    conn = cluster.connect(cluster.addresses[node])
    try:
        cur = conn.cursor()
        cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_cluster_size'")
        return int(cur.fetchone()[1])
    finally:
        conn.close()


def protected() -> list[str]:
    """`make demo-protected`: the URNs the stack's state protects."""
    proc = rehearsal("state", "protected", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_remove_an_ec2_node_in_two_ups(cluster: DemoCluster) -> None:
    from rehearsal.demo import out_dir
    from rehearsal.state import load
    from rehearsal.volumes import VOLUMES_DIR

    remaining = ["aws-a", "aws-b", "dc-1"]
    address = cluster.addresses["aws-c"]
    # Controls: aws-c's volume is protected, and every member admits aws-c on the Galera ports.
    volume_urns = [u for u in protected() if u.endswith("::aws-c-data")]
    assert len(volume_urns) == 1, "aws-c's data volume is not protected before its decommission"
    volume_urn = volume_urns[0]
    for n in remaining:
        assert listed(members_v4(cluster, n), address), f"{n} does not admit aws-c before its decommission"
    assert not listed("elements = { 10.0.0.1 }", address)  # the matcher does not find what is absent
    volume_id = load(out_dir(settings())).resources[volume_urn].id
    assert volume_id.startswith("vol-"), volume_id

    with Day2Scenario(cluster, "remove aws-c (two ups)", members=remaining, nodes=NODES) as sc:
        first = sc.up(DECOMMISSION_AWS_C)
        assert first.returncode == 0, first.stderr[-6000:]
        after_first = {"protected": protected(), "sets": {n: members_v4(cluster, n) for n in remaining},
                       "sizes": {n: cluster_size(cluster, n) for n in remaining}}
        second = sc.up(FORGET_AWS_C)
        assert second.returncode == 0, second.stderr[-6000:]
    f = sc.figures
    assert f is not None
    print_figures(sc)
    for label, proc in (("first up", first), ("second up", second)):
        print(f"\n{label} plan: " + "; ".join(" ".join(r) for r in plan_rows(proc.stderr)))
        print(f"{label}: " + " | ".join(re.findall(r"^.*(?:create, ~|up: done in ).*$", proc.stderr, flags=re.M)))

    # First up: the interface moves to the SSH-only group (an in-place update), the volume is unprotected.
    rows = plan_rows(first.stderr)
    assert ("~", "aws:ec2/networkInterface:NetworkInterface", "aws-c-eni") in rows, first.stderr[-6000:]
    assert re.search(r"aws-c-eni[\s│]+changed: [^│]*securityGroups", first.stderr), first.stderr[-6000:]
    assert ("+", "aws:ec2/securityGroup:SecurityGroup", "cluster-nodes-leaving-group") in rows
    # Only aws-c's steps and its instance-type resource leave in the first up; its instance, interface, volume
    # and attachment stay until the second (the decommission needs the host).
    gone_first = {r[2] for r in rows if r[0] in ("-", "+-")}
    assert not gone_first & {"aws-c-instance", "aws-c-eni", "aws-c-data", "aws-c-data-attachment"}, rows
    assert "aws-c-ssh-roll" in gone_first and "aws-c-instance-type" in gone_first, rows  # control
    assert volume_urn not in after_first["protected"], "aws-c's data volume is still protected after the first up"
    assert "aws-c-ssh-decommission on aws-c ok" in first.stderr
    steps = ran(first.stderr)
    for n in remaining:
        assert f"{n}-ssh-shut-out on {n}" in steps, steps
        assert any(s.startswith(f"{n}-verification") and s.endswith(f" on {n}") for s in steps), steps
        assert not listed(after_first["sets"][n], address), f"{n} still admits aws-c: {after_first['sets'][n]}"
        assert after_first["sizes"][n] == 3, after_first["sizes"]

    # Second up: deletes, and the members' allowlist updated to the list shut-out loaded already.
    totals = re.search(r"\+(\d+) create, ~(\d+) update, \+-(\d+) replace, -(\d+) delete", second.stderr)
    assert totals is not None, second.stderr[-4000:]
    created, updated, replaced, deleted = map(int, totals.groups())
    assert created == 0 and replaced == 0 and deleted > 0, totals.group(0)
    rows = plan_rows(second.stderr)
    updates = sorted(r[2] for r in rows if r[0] == "~")
    assert updates == [f"{n}-ssh-member-firewall" for n in sorted(remaining)], updates
    assert len(updates) == updated
    deletes = {r[2] for r in rows if r[0] == "-"}
    for gone in ("aws-c-instance", "aws-c-eni", "aws-c-data", "aws-c-data-attachment", "cluster-nodes-leaving-group"):
        assert gone in deletes, f"{gone} is not deleted: {sorted(deletes)}"
    assert "is protected and would be" not in second.stderr
    # The plan's "why" may wrap onto the next table line: read it with the table's rules taken out.
    flat = re.sub(r"[\s│]+", " ", second.stderr)
    assert "aws-c-data no longer in the program; retain_on_delete: forgotten, not deleted" in flat, flat[-6000:]
    for n in remaining:
        assert f"{n}-ssh-member-firewall on {n}" in ran(second.stderr)
        assert not listed(members_v4(cluster, n), address), n
    assert re.search(r"up: done in .*, powered off aws-c$", second.stderr, flags=re.M), second.stderr[-3000:]
    tb = cluster.testbed()
    host = tb.hosts.get("aws-c")
    assert host is None or not host.leader_pid, "aws-c's host still runs"
    assert cluster.sample("aws-c") is None
    # The volume left the stack, and its stand-in still holds aws-c's datadir (decommissionData: keep).
    state = load(out_dir(settings()))
    assert volume_urn not in state.resources and not any(r.id == volume_id for r in state.resources.values())
    image = settings().run_dir() / VOLUMES_DIR / "aws-c" / "volume.img"
    assert image.is_file() and image.stat().st_size > 0, f"{image}: the retained volume's image is gone"
    print(f"\nretained {volume_id}: {image}")

    assert f.nodes_restarted == [], f"removing aws-c restarted {f.nodes_restarted}"
    assert f.max_members_out <= 1 and out_at_once(sc) <= 1, f.notes
    assert f.acknowledged_lost == 0 and f.invariant_violations == 0
    assert all(cluster_size(cluster, n) == 3 for n in remaining)


def test_out_at_once_counts_down_and_joining_members_not_donors() -> None:
    from types import SimpleNamespace

    from rehearsal.availability import Probe, Sample

    def probe(state: str) -> Probe:
        return Probe(state, primary=True, ready=state in ("Synced", "Donor/Desynced"))

    donor_and_joiner = Sample(0.0, {"a": probe("Synced"), "b": probe("Donor/Desynced"), "c": probe("Joining")})
    sc = SimpleNamespace(members=["a", "b", "c"], samples=[donor_and_joiner])
    assert out_at_once(sc) == 1  # type: ignore[arg-type]
    # Control: a second member down counts.
    sc.samples = [donor_and_joiner, Sample(1.0, {"a": None, "b": probe("Donor/Desynced"), "c": probe("Joining")})]
    assert out_at_once(sc) == 2  # type: ignore[arg-type]
