"""`python -m rehearsal up`: the config completed from the state, the plan printed, the steps it carries out.

Pure parts only, on hand-made recordings: which script of which resource runs, in which order, with which
inputs. tests/rehearsal/test_day2_scenarios.py runs the whole thing on the demo's hosts.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from rehearsal.engine_rules import plan_changes
from rehearsal.recorder import Computed, RecordedOptions, Recording, RegisteredResource, Types
from rehearsal.stack import StackError, load_file, new_ed25519
from rehearsal.state import NodeHost, RehearsalState, load, save
from rehearsal.up import (
    INSTANCE_TYPE,
    StateMocks,
    complete_config,
    delete_steps,
    forward_steps,
    kept_answers,
    print_plan,
)

PROJECT = "urn:pulumi:rehearsal::mariadb-kms"
NODES = {"n1": NodeHost("n1", "onprem", "10.0.0.11"), "n2": NodeHost("n2", "onprem", "10.0.0.12")}


class _Settings:
    kms_endpoint_url = "http://10.0.0.1:4599"


def options(*, depends_on: tuple[str, ...] = (), protect: bool | None = None, retain: bool | None = None,
            dbr: bool | None = None, roc: tuple[str, ...] = ()) -> RecordedOptions:
    return RecordedOptions(protect=protect, retain_on_delete=retain, delete_before_replace=dbr,
                           additional_secret_outputs=(), ignore_changes=(), replace_on_changes=roc,
                           depends_on=depends_on, parent=None)


def command(name: str, host: str, create: str, *, delete: str | None = None, update: str | None = None,
            triggers: Any = None, after: tuple[str, ...] = (), dbr: bool = True) -> RegisteredResource:
    inputs: dict[str, Any] = {
        "create": create,
        "connection": {"host": host, "user": "root", "hostKey": "ssh-ed25519 AAAA", "privateKey": "k"},
    }
    if delete is not None:
        inputs["delete"] = delete
    if update is not None:
        inputs["update"] = update
    if triggers is not None:
        inputs["triggers"] = triggers
    urn = f"{PROJECT}::{Types.REMOTE_COMMAND}::{name}"
    deps = tuple(f"{PROJECT}::{Types.REMOTE_COMMAND}::{a}" for a in after)
    return RegisteredResource(type=Types.REMOTE_COMMAND, name=name, urn=urn, id=name, custom=True, inputs=inputs,
                              state=dict(inputs), parent_urn="", dependencies=deps, secret_outputs=(),
                              options=options(depends_on=deps, dbr=dbr, roc=("triggers[*]",)))


def resource(type_: str, name: str, inputs: dict[str, Any], *, protect: bool = False, retain: bool = False,
             parent: str = "") -> RegisteredResource:
    return RegisteredResource(type=type_, name=name, urn=f"{PROJECT}::{type_}::{name}", id=f"id-{name}", custom=True,
                              inputs=inputs, state={**inputs, "arn": f"arn-{name}"}, parent_urn=parent,
                              dependencies=(), secret_outputs=(), options=options(protect=protect, retain=retain))


def rec(*resources: RegisteredResource) -> Recording:
    return Recording(preview=False, resources=list(resources))


# --------------------------------------------------------------------------- the config


LOGIN = new_ed25519("login")
DC1_KEY = new_ed25519("root@dc-1").public_line


def state_for(config: dict[str, Any]) -> RehearsalState:
    return RehearsalState(config=config, region="eu-west-1", resources={},
                          nodes={"aws-a": NodeHost("aws-a", "ec2", "10.231.9.11"),
                                 "dc-1": NodeHost("dc-1", "onprem", "10.231.9.12")},
                          host_keys={"dc-1": DC1_KEY})


def stack_file() -> dict[str, Any]:
    raw, _region = load_file()
    raw = dict(raw)
    raw["ec2Nodes"] = [raw["ec2Nodes"][0]]
    return raw


def test_known_nodes_keep_their_hosts_and_a_new_node_gets_the_next_one() -> None:
    raw = stack_file()
    raw["onPremNodes"] = [*raw["onPremNodes"], {"name": "dc-2", "sshUser": "deploy"}]
    state = state_for({"sshPrivateKey": LOGIN.private_openssh, "sshAuthorizedKey": LOGIN.public_line})
    done = complete_config(raw, "eu-west-1", state, lambda i: f"10.231.9.{10 + i}", next_index=3)
    assert done.nodes["aws-a"].address == "10.231.9.11" and done.nodes["dc-1"].address == "10.231.9.12"
    assert done.nodes["dc-2"] == NodeHost("dc-2", "onprem", "10.231.9.13")
    by_name = {n["name"]: n for n in done.config["onPremNodes"]}
    assert by_name["dc-1"]["hostKey"] == DC1_KEY
    assert by_name["dc-2"]["hostKey"] == done.new_host_keys["dc-2"][1]
    assert done.config["sshPrivateKey"] == LOGIN.private_openssh


def test_the_config_file_may_not_bring_its_own_login_key_or_addresses() -> None:
    state = state_for({"sshPrivateKey": LOGIN.private_openssh, "sshAuthorizedKey": LOGIN.public_line})
    raw = stack_file()
    with pytest.raises(StackError, match="sshPrivateKey"):
        complete_config({**raw, "sshPrivateKey": "x"}, "eu-west-1", state, str, 3)
    raw["ec2Nodes"] = [{**raw["ec2Nodes"][0], "privateIp": "10.9.9.9"}]
    with pytest.raises(StackError, match=r"privateIp 10\.9\.9\.9"):
        complete_config(raw, "eu-west-1", state, str, 3)


# --------------------------------------------------------------------------- recording against the state


def test_a_resource_in_the_state_keeps_its_answer_unless_it_is_replaced() -> None:
    old = resource(Types.TLS_PRIVATE_KEY, "k", {"algorithm": "ED25519"})
    kept = kept_answers([old])
    assert kept[(old.type, "k")] == Computed("id-k", {"arn": "arn-k"})

    class Fresh(StateMocks):
        def __init__(self, fresh: set[tuple[str, str]]) -> None:
            self.kept, self.fresh = kept, fresh
            self.account_id, self.region, self.partition = "123456789012", "eu-west-1", "aws"

        def private_key(self, name: str, inputs: dict[str, Any]) -> Computed:
            return Computed("new", {"arn": "new"})

    assert Fresh(set()).computed(old.type, "k", {"algorithm": "ED25519"}).id == "id-k"
    assert Fresh({(old.type, "k")}).computed(old.type, "k", {"algorithm": "ED25519"}).id != "id-k"  # control


# --------------------------------------------------------------------------- what runs


def test_replacement_runs_the_old_delete_first_then_the_new_create() -> None:
    base = rec(command("c", "10.0.0.11", "echo old", delete="echo bye-old", triggers=["1"]))
    head = rec(command("c", "10.0.0.11", "echo new", delete="echo bye-new", triggers=["2"]))
    [step] = forward_steps(plan_changes(base, head), head, NODES, _Settings(), base)  # type: ignore[arg-type]
    assert step.action == "replace"
    assert [(r.script, r.command.create if r.command else None) for r in step.runs] == [
        ("delete", "echo bye-old"), ("create", "echo new")]


def test_create_before_delete_when_delete_before_replace_is_off() -> None:
    base = rec(command("c", "10.0.0.11", "echo old", delete="echo bye-old", triggers=["1"], dbr=False))
    head = rec(command("c", "10.0.0.11", "echo new", delete="echo bye-new", triggers=["2"], dbr=False))
    [step] = forward_steps(plan_changes(base, head), head, NODES, _Settings(), base)  # type: ignore[arg-type]
    assert [r.script for r in step.runs] == ["create", "delete"]


def test_an_update_runs_update_or_else_create_and_unchanged_runs_nothing() -> None:
    base = rec(command("u", "10.0.0.11", "a", update="upd"), command("c", "10.0.0.12", "a"),
               command("same", "10.0.0.12", "s"))
    head = rec(command("u", "10.0.0.11", "b", update="upd"), command("c", "10.0.0.12", "b"),
               command("same", "10.0.0.12", "s"))
    steps = {s.name: s for s in forward_steps(plan_changes(base, head), head, NODES, _Settings(), base)}  # type: ignore[arg-type]
    assert [r.script for r in steps["u"].runs] == ["update"]
    assert [r.script for r in steps["c"].runs] == ["create"]
    assert "same" not in steps


def test_an_instance_type_update_is_a_stop_and_start_of_that_host() -> None:
    parent = f"{PROJECT}::mariadb-kms:index:Ec2Node::n1"
    base = rec(resource(INSTANCE_TYPE, "n1-instance-type", {"instance_type": "t3.medium"}, parent=parent))
    head = rec(resource(INSTANCE_TYPE, "n1-instance-type", {"instance_type": "t3.large"}, parent=parent))
    [step] = forward_steps(plan_changes(base, head), head, NODES, _Settings(), base)  # type: ignore[arg-type]
    assert (step.node, [r.script for r in step.runs]) == ("n1", ["stop-start"])


def test_deletes_run_in_reverse_dependency_order_and_a_retained_resource_is_only_forgotten() -> None:
    base = rec(
        command("first", "10.0.0.11", "x", delete="undo-first"),
        command("second", "10.0.0.11", "x", delete="undo-second", after=("first",)),
        command("third", "10.0.0.12", "x", delete="undo-third", after=("second",)),
        resource(Types.EBS_VOLUME, "vol", {"size": 8}, retain=True),
    )
    steps = delete_steps(plan_changes(base, rec()), base, NODES)
    assert [s.name for s in steps] == ["third", "second", "first"]
    assert [s.runs[0].command.create for s in steps if s.runs[0].command] == ["undo-third", "undo-second",
                                                                               "undo-first"]


def test_the_plan_names_a_protected_delete_as_refused() -> None:
    base = rec(resource(Types.KMS_KEY, "key", {"description": "k"}, protect=True),
               resource(Types.IAM_USER, "user", {"name": "u"}))
    out = io.StringIO()
    print_plan(plan_changes(base, rec()), Console(file=out, width=250, highlight=False))
    text = out.getvalue()
    assert "PROTECTED" in text and "key" in text
    assert "-2 delete" in text
    out = io.StringIO()
    print_plan(plan_changes(base, base), Console(file=out, width=250))  # control: nothing to refuse
    assert "PROTECTED" not in out.getvalue() and "=2 unchanged" in out.getvalue()


def test_the_state_file_is_private(tmp_path: Any) -> None:
    state = state_for({"sshPrivateKey": LOGIN.private_openssh})
    path = save(state, tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load(tmp_path).nodes == state.nodes
