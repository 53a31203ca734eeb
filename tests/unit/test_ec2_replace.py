"""Replacing an EC2 node: which AMI and user-data the engine launches it with, and what `rehearsal up` plans.

The program side (components/ec2_node.py): a new cluster ``amiId`` replaces no instance (new nodes only);
a node's own ``amiId`` replaces that node alone, with the new AMI. The engine side (rehearsal/engine_rules,
rehearsal/instances): ``pulumi up --replace`` replaces what it names, the replacement travels to what
depends on the instance, and an ignored input keeps the state's value in the replacement. The rehearsal side
(rehearsal/up.py): one host action in the instance's place, no stop/start for the instance-type resource that
only follows the new instance id, and the plan as printed. tests/rehearsal/test_day2_replace.py runs it on
hosts.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from mocks import Recording, Types, full_config
from rich.console import Console
from test_ec2_node import child, run

from components.cloud_config import decode_user_data
from rehearsal.engine_rules import Change, plain, plan_changes
from rehearsal.instances import engine_inputs, meta_data
from rehearsal.stack import StackError
from rehearsal.state import NodeHost, RehearsalState
from rehearsal.up import INSTANCE_TYPE, forward_steps, print_plan, targets

NEW_AMI = "ami-0fedcba9876543210"


class _Settings:
    kms_endpoint_url = "http://10.0.0.1:4599"


def with_node_ami(config: dict[str, Any], node: str, ami: str) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for n in config["ec2Nodes"]:
        if n["name"] == node:
            n["amiId"] = ami
    return config


def by_name(changes: list[Change]) -> dict[str, Change]:
    return {c.name: c for c in changes}


def instance_urn(rec: Recording, node: str) -> str:
    return child(rec, Types.EC2_INSTANCE, node).urn


def nodes_of(rec: Recording) -> dict[str, NodeHost]:
    return {i.parent_urn.split("::")[-1]: NodeHost(i.parent_urn.split("::")[-1], "ec2", f"10.0.0.{n}")
            for n, i in enumerate(rec.of_type(Types.EC2_INSTANCE), start=11)}


def test_a_new_cluster_ami_replaces_no_instance() -> None:
    base = run()
    changes = by_name(plan_changes(base, run(full_config(amiId=NEW_AMI))))
    assert {changes[f"{n}-instance"].action for n in ("aws-a", "aws-b")} == {"same"}
    # Control: an input the instance does not ignore is diffed (the instance profile's name).
    assert not any(c.action == "replace" for c in changes.values())


def test_a_nodes_own_ami_replaces_that_node_alone_with_the_new_ami() -> None:
    base = run()
    head = run(with_node_ami(full_config(), "aws-a", NEW_AMI))
    changes = by_name(plan_changes(base, head))
    replaced = changes["aws-a-instance"]
    assert (replaced.action, replaced.replace_keys) == ("replace", ("ami",))
    assert changes["aws-a-data-attachment"].action == "replace"  # it names the instance id
    assert changes["aws-b-instance"].action == "same" and changes["aws-b-data-attachment"].action == "same"
    assert changes["aws-a-data"].action == "same", "the data volume is kept"
    sent = engine_inputs(base.by_urn(replaced.urn), head.by_urn(replaced.urn))
    assert sent["ami"] == NEW_AMI
    # The user-data stays ignored: the replacement boots the user-data of the first launch.
    assert sent["userDataBase64"] == base.by_urn(replaced.urn).inputs["userDataBase64"]


def test_pulumi_up_replace_keeps_the_state_ami_of_an_ignored_input() -> None:
    base = run()
    head = run(full_config(amiId=NEW_AMI))
    urn = instance_urn(head, "aws-b")
    changes = by_name(plan_changes(base, head, replace=[urn]))
    replaced = changes["aws-b-instance"]
    assert replaced.action == "replace" and "targeted by --replace" in replaced.notes
    assert "ami" in replaced.ignored_kept
    assert engine_inputs(base.by_urn(urn), head.by_urn(urn))["ami"] == "ami-0abcdef1234567890"
    assert changes["aws-b-data-attachment"].action == "replace"
    assert changes["aws-a-instance"].action == "same"  # control: only the named one
    # A resource the state does not hold is created with the program's inputs.
    assert engine_inputs(None, head.by_urn(urn))["ami"] == NEW_AMI


def test_a_replaced_instance_is_one_host_action_with_the_engines_user_data_and_ami() -> None:
    base = run()
    head = run(with_node_ami(full_config(), "aws-a", NEW_AMI))
    changes = plan_changes(base, head)
    steps = forward_steps(changes, head, nodes_of(head), _Settings(), base)  # type: ignore[arg-type]
    [step] = [s for s in steps if s.runs[0].script == "replace-host"]
    assert (step.node, step.name, step.action) == ("aws-a", "aws-a-instance", "replace")
    launch = step.runs[0].launch
    assert launch["ami"] == NEW_AMI
    old_user_data = decode_user_data(str(plain(base.by_urn(step.urn).inputs["userDataBase64"])))
    assert "aws-a" in launch["user_data"] and launch["user_data"].startswith("#cloud-config")
    # The old launch's host key is in it (the host-key resource is not replaced): the same host identity.
    assert old_user_data.split("ssh_keys:")[1][:200] in launch["user_data"]
    # Control: without a change, no host action at all.
    assert not [s for s in forward_steps(plan_changes(base, base), base, nodes_of(base), _Settings(), base)]  # type: ignore[arg-type]


def test_the_instance_type_resource_that_follows_a_new_instance_id_stops_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from test_rehearsal_up import resource

    import rehearsal.up as up

    monkeypatch.setattr(up, "decode_user_data", lambda text: "#cloud-config\n")
    monkeypatch.setattr(up.ov, "user_data", lambda text, settings: text)
    parent = "urn:pulumi:rehearsal::mariadb-kms::mariadb-kms:index:Ec2Node::n1"

    def instance(ami: str) -> Any:
        return resource(Types.EC2_INSTANCE, "n1-instance",
                        {"ami": ami, "instanceType": "t3.medium", "userDataBase64": "x"}, parent=parent)

    def instance_type(instance_id: str, type_: str) -> Any:
        return resource(INSTANCE_TYPE, "n1-instance-type", {"instance_id": instance_id, "instance_type": type_},
                        parent=parent)

    base = Recording(preview=False, resources=[instance("ami-1"), instance_type("i-1", "t3.medium")])
    nodes = {"n1": NodeHost("n1", "ec2", "10.0.0.11")}

    def scripts(head: Recording) -> list[str]:
        changes = plan_changes(base, head)
        assert by_name(changes)["n1-instance"].action == "replace"
        return [r.script for s in forward_steps(changes, head, nodes, _Settings(), base)  # type: ignore[arg-type]
                for r in s.runs]

    assert scripts(Recording(preview=False, resources=[instance("ami-2"), instance_type("i-2", "t3.medium")])) \
        == ["replace-host"]
    # Control: a new type on the same replacement is a stop and start after it.
    assert scripts(Recording(preview=False, resources=[instance("ami-2"), instance_type("i-2", "t3.large")])) \
        == ["replace-host", "stop-start"]


def test_the_printed_plan_names_the_replacement_and_why() -> None:
    base = run()
    head = run(full_config(amiId=NEW_AMI))
    urn = instance_urn(head, "aws-b")
    out = io.StringIO()
    print_plan(plan_changes(base, head, replace=[urn]), Console(file=out, width=300, highlight=False))
    text = out.getvalue()
    line = next(x for x in text.splitlines() if "aws-b-instance" in x)
    assert "+-" in line and "targeted by --replace" in line and "keeps the old value of" in line
    assert "+-2 replace" in text  # the instance and its volume attachment
    out = io.StringIO()
    print_plan(plan_changes(base, head), Console(file=out, width=300, highlight=False))  # control
    assert "aws-b-instance" not in out.getvalue() and "+-0 replace" in out.getvalue()


def test_replace_names_a_urn_or_a_resource_name_and_refuses_others() -> None:
    rec = run()
    state = RehearsalState(config={}, region="eu-west-1", resources={r.urn: r for r in rec.resources}, nodes={})
    urn = instance_urn(rec, "aws-a")
    assert targets(["aws-a-instance"], state) == [urn] == targets([urn], state)
    with pytest.raises(StackError, match=r"--replace aws-z-instance: .*aws-a-instance"):
        targets(["aws-z-instance"], state)


def test_a_new_instance_gets_a_new_id_and_names_its_ami() -> None:
    first, second = meta_data("rpd-aws-a", "aws-a", NEW_AMI), meta_data("rpd-aws-a", "aws-a", NEW_AMI)
    assert first != second and f"ami-id: {NEW_AMI}" in first and "local-hostname: aws-a" in first


def test_what_depends_on_a_created_resource_is_diffed_by_value() -> None:
    from test_engine_rules import command, res

    eni = res("aws:ec2/networkInterface:NetworkInterface", "new-eni", {"subnetId": "subnet-1"})
    same = command("roll", triggers=["digest-1"], deps={"triggers": ("urn:new-eni",)})
    changes = by_name(plan_changes(Recording(preview=False, resources=[same]),
                                   Recording(preview=False, resources=[eni, same])))
    assert changes["new-eni"].action == "create" and changes["roll"].action == "same"
    # Control: the same dependency with a value that changed is a replacement.
    moved = command("roll", triggers=["digest-2"], deps={"triggers": ("urn:new-eni",)})
    changes = by_name(plan_changes(Recording(preview=False, resources=[same]),
                                   Recording(preview=False, resources=[eni, moved])))
    assert changes["roll"].action == "replace"


def test_the_state_after_an_up_keeps_the_ignored_inputs_old_values() -> None:
    from rehearsal.instances import engine_state

    base = run()
    head = run(full_config(amiId=NEW_AMI))
    saved = engine_state(base, head)
    urn = instance_urn(head, "aws-a")
    assert saved.by_urn(urn).inputs["ami"] == "ami-0abcdef1234567890"
    # So a node's own amiId naming the newer AMI is a change against that state, and replaces the node.
    changes = by_name(plan_changes(saved, run(with_node_ami(full_config(amiId=NEW_AMI), "aws-a", NEW_AMI))))
    assert changes["aws-a-instance"].action == "replace"
    # Control: the program's inputs saved as they are would hide it.
    changes = by_name(plan_changes(head, run(with_node_ami(full_config(amiId=NEW_AMI), "aws-a", NEW_AMI))))
    assert changes["aws-a-instance"].action == "same"
