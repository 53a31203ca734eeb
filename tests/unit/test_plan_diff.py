"""tools/plan_diff.py on pairs of configs: what runs where, in which order, who restarts, what the engine refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mocks import ONPREM_HOST_KEY, PLANTED_SSH_PRIVATE_KEY, Recording, full_config

from tools import plan_diff
from tools.plan_diff import PlanDiff, StackFile, config_changes, diff_plans, record_plan, render

NODES = ["aws-a", "aws-b", "dc-1"]
REGION = "eu-west-1"


def plan(base: dict[str, Any], head: dict[str, Any]) -> PlanDiff:
    memo: plan_diff.Memo = {}
    a, b = StackFile(base, REGION, ["sshPrivateKey"]), StackFile(head, REGION, ["sshPrivateKey"])
    return diff_plans(record_plan(a, memo, stack="dev"), record_plan(b, memo, stack="dev"), config_changes(a, b))


def steps(p: PlanDiff) -> dict[tuple[str | None, str], str]:
    return {(s.node, s.step): s.action for s in p.steps}


def with_dc2(config: dict[str, Any]) -> dict[str, Any]:
    config["onPremNodes"] = [*config["onPremNodes"], {
        "name": "dc-2", "address": "192.0.2.22", "sshUser": "deploy", "hostKey": ONPREM_HOST_KEY,
        "egressCidr": "203.0.113.8/32"}]
    return config


def test_an_unchanged_config_runs_nothing() -> None:
    p = plan(full_config(), full_config())
    assert p.steps == [] and p.resources == [] and p.restarts == [] and not p.bootstrap_runs
    assert p.rolling_order == NODES
    # Control: the mocks would otherwise mint new keys and certificates on every run; the plan must not see them.
    assert "No remote step runs." in render(p)


def test_a_tunable_change_rolls_every_node_one_at_a_time() -> None:
    p = plan(full_config(), full_config(gcacheSize="1G"))
    assert p.config_changes == ['`gcacheSize`: set to `"1G"`']
    assert p.restarts == NODES and p.one_at_a_time
    expected = {(n, s): a for n in NODES for s, a in (("config", "update"), ("preflight", "replace"),
                                                     ("roll", "replace"), ("verification-run", "replace"))}
    assert steps(p) == expected
    # Each restart comes after the previous node's roll, in the rolling order.
    order = [s.node for s in p.steps if s.restart]
    assert order == NODES
    config = next(s for s in p.steps if (s.node, s.step) == ("aws-a", "config"))
    assert config.runs == ["create"] and config.why == ["files: `/etc/mysql/mariadb.conf.d/91-mariadb-kms-node.cnf`"]
    assert not p.bootstrap_runs and p.resources == [] and p.blocked == []


def test_adding_a_node_restarts_nobody() -> None:
    # The member list (wsrep_cluster_address) is out of every restart digest: a running member accepts a joiner
    # as it is and reads the new list at its next start. Existing nodes only take the new config file.
    p = plan(full_config(), with_dc2(full_config()))
    assert p.config_changes == ["`onPremNodes`: added dc-2"]
    assert p.restarts == []
    assert {k: v for k, v in steps(p).items() if k[0] == "dc-2"} == {
        ("dc-2", s): "create" for s in ("credentials", "node-files", "login-keys", "seed", "install", "tls",
                                          "tls-reload", "config", "escrow", "member-firewall", "preflight", "roll",
                                          "verification-run")}
    assert {(n, "config") for n in NODES} <= set(steps(p))
    # Every existing member admits the new node on its Galera ports (an update: no restart) before dc-2 starts.
    assert {(n, "member-firewall"): "update" for n in NODES}.items() <= steps(p).items()
    assert not any(k[0] in NODES and k[1] == "roll" for k in steps(p))
    assert not p.bootstrap_runs
    assert p.rolling_order == [*NODES, "dc-2"]


def test_a_tls_renewal_reloads_one_node_at_a_time_without_a_restart() -> None:
    # New certificates for every node, as a renewal gives; a new lifetime re-issues them whatever the mocks do.
    # (The CA renews too: its early renewal follows the node certificates' lifetime.)
    p = plan(full_config(), full_config(tlsValidityDays=300))
    assert p.restarts == []
    assert steps(p) == {(n, s): a for n in NODES for s, a in (("tls", "update"), ("tls-reload", "replace"),
                                                              ("verification-run", "replace"))}
    reloads = [s for s in p.steps if s.step == "tls-reload"]
    assert [s.node for s in reloads] == NODES and all(s.runs == ["create"] for s in reloads)
    assert {c.name for c, _why in p.resources} == {"cluster-ca-ca-cert", *(f"cluster-ca-{n}-cert" for n in NODES)}


def test_replacing_a_protected_volume_is_refused_by_the_engine() -> None:
    # The volume's zone is its subnet's: a subnet in another zone replaces the volume.
    head = full_config()
    head["ec2Nodes"][0]["subnetId"] = "subnet-0123456789abcdef1"
    p = plan(full_config(), head)
    assert [(c.name, c.action) for c in p.blocked] == [("aws-a-data", "replace")]
    text = render(p)
    assert "⛔ **The engine refuses this update:**" in text and "| aws-a-data |" in text


def test_removing_an_ec2_node_is_refused_on_its_protected_data_volume() -> None:
    head = full_config()
    head["ec2Nodes"] = head["ec2Nodes"][:1]
    p = plan(full_config(), head)
    assert [(c.name, c.action, c.retain_on_delete) for c in p.blocked] == [("aws-b-data", "delete", True)]
    assert p.restarts == []  # a smaller member list restarts nobody either


def _recordings(base: dict[str, Any], head: dict[str, Any]) -> tuple[Recording, Recording]:
    memo: plan_diff.Memo = {}
    a, b = StackFile(base, REGION, ["sshPrivateKey"]), StackFile(head, REGION, ["sshPrivateKey"])
    return record_plan(a, memo, stack="dev"), record_plan(b, memo, stack="dev")


def test_the_bootstrap_never_runs_again_even_when_its_node_changes() -> None:
    # The bootstrap node's address changes: every input of the bootstrap command changes, and it ignores them.
    head_config = full_config()
    head_config["ec2Nodes"][0]["privateIp"] = "10.20.1.99"
    base, head = _recordings(full_config(), head_config)
    p = diff_plans(base, head)
    assert not p.bootstrap_runs
    assert "cluster-bootstrap" not in {s.step for s in p.steps}
    assert "**Bootstrap:** does not run." in render(p)
    # Control: without its ignore_changes the same change would run galera_new_cluster again, and the plan says so.
    boot = next(r for r in head.resources if r.name == "cluster-bootstrap")
    assert boot.options is not None
    boot.options.ignore_changes = ()
    p = diff_plans(base, head)
    assert p.bootstrap_runs
    assert "⛔ **Bootstrap would run again**" in render(p)


def test_a_changed_secret_is_named_never_shown() -> None:
    head = full_config(sshPrivateKey=PLANTED_SSH_PRIVATE_KEY.replace("planted", "rotated"))
    p = plan(full_config(), head)
    text = render(p)
    assert "`sshPrivateKey`: changed (secret)" in text
    assert "planted-ssh-private-key" not in text and "rotated-ssh-private-key" not in text
    # Every command's connection carries the key: all of them update (none restarts a node).
    assert p.restarts == [] and p.steps and all(s.action in ("update", "same") for s in p.steps)


def test_the_rolling_order_is_checked_not_assumed() -> None:
    base, head = _recordings(full_config(), full_config(gcacheSize="1G"))
    assert diff_plans(base, head).one_at_a_time
    # Control: cut every wait on another node's roll; the same restarts are then no longer one at a time.
    rolls = {r.urn for r in head.resources if r.name.endswith("-ssh-roll")}
    for r in head.resources:
        if r.options is not None:
            r.options.depends_on = tuple(u for u in r.options.depends_on if u not in rolls or r.urn in rolls)
        r.dependencies = tuple(u for u in r.dependencies if u not in rolls)
    p = diff_plans(base, head)
    assert sorted(p.restarts) == NODES and not p.one_at_a_time
    assert "NOT one at a time" in render(p)


def test_the_command_line_reads_stack_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def stack_file(path: Path, config: dict[str, Any]) -> Path:
        entries: dict[str, Any] = {"aws:region": REGION}
        for k, v in config.items():
            entries[f"mariadb-kms:{k}"] = {"secure": "v1:AAAA" + k} if k == "sshPrivateKey" else v
        path.write_text(yaml.safe_dump({"config": entries}))
        return path

    base = stack_file(tmp_path / "Pulumi.dev.yaml", full_config())
    head = stack_file(tmp_path / "Pulumi.head.yaml",
                      full_config(gcacheSize="1G"))
    assert plan_diff.main(["--base", str(base), "--head", str(head), "--stack", "dev"]) == 0
    out = capsys.readouterr().out
    assert "**Nodes that restart:** aws-a, aws-b, dc-1 (one at a time" in out
    assert "| aws-a | roll | replace | `create` → **restarts MariaDB** |" in out
    assert "v1:AAAA" not in out


def test_a_git_ref_as_the_base_records_the_program_at_that_ref(capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert plan_diff.main(["--base", "HEAD", "--head", str(repo / "Pulumi.dev.yaml")]) == 0
    out = capsys.readouterr().out
    assert "Change plan: `HEAD` → this change (`Pulumi.dev.yaml`)" in out
    assert "**Rolling order:** aws-a → aws-b → dc-1" in out
