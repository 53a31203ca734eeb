"""instanceType changes one node at a time, each Synced before the next stops.

pulumi-aws updates ``instanceType`` in place with a stop and a start ("Updates
to this field will trigger a stop/start of the EC2 instance": pulumi_aws 7.51.1,
``pulumi_aws/ec2/instance.py``, parameter ``instance_type``), and the engine
would run the updates of every changed instance at once. So the instance
ignores ``instanceType`` and the cluster plan applies it in each node's turn
(``components/instance_type_provider.py``): checked on the plan, on the
recorded program, and the provider's stop/modify/start against moto's EC2
(in process, no network).
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from mocks import Recording, Types, full_config, run_program
from moto import mock_aws
from remote_plan import closure
from test_plan_triggers import NO_TLS, retriggered, triggers

from components.config import parse_config
from components.instance_type_provider import (
    P_ENDPOINT,
    P_INSTANCE_ID,
    P_INSTANCE_TYPE,
    P_REGION,
    InstanceTypeProvider,
    ensure_instance_type,
)
from components.plan import Role, cluster_plan, entry_key

DYNAMIC = "pulumi-python:dynamic/mariadb-kms:InstanceType"


def config(a: str = "t3.medium", b: str = "r6i.large") -> dict[str, Any]:
    cfg = full_config(**NO_TLS)
    cfg["ec2Nodes"][0]["instanceType"] = a
    cfg["ec2Nodes"][1]["instanceType"] = b
    return cfg


def test_the_plan_gives_each_ec2_instance_its_turn() -> None:
    plan = cluster_plan(parse_config(
        {k: v for k, v in config().items() if k != "sshPrivateKey"}, stack="dev", region="eu-west-1"
    ))
    resizes = [e for e in plan if e.role is Role.INSTANCE_TYPE]
    assert [e.node for e in resizes] == ["aws-a", "aws-b"]  # on-prem nodes have none
    assert entry_key("aws-a", "instance-type") in plan.waits_for(entry_key("aws-a", "roll"))
    assert entry_key("aws-a", "roll") in plan.waits_for(entry_key("aws-b", "instance-type"))
    assert entry_key("aws-b", "instance-type") in plan.waits_for(entry_key("aws-b", "config"))
    # Installs still run in parallel on a first deploy: no install waits for another node's resize.
    for e in plan:
        if e.step.key == "install":
            assert not any(plan.entry(k).role is Role.INSTANCE_TYPE for k in plan.waits_for(e.key))


@pytest.fixture(scope="module")
def recordings() -> tuple[Recording, Recording]:
    return run_program(config(), preview=False), run_program(config("t3.large", "r6i.xlarge"), preview=False)


def test_the_instance_ignores_its_type_and_the_resize_follows_the_previous_roll(
    recordings: tuple[Recording, Recording],
) -> None:
    _, after = recordings
    by_name = {r.name: r for r in after.resources}
    for node in ("aws-a", "aws-b"):
        instance = by_name[f"{node}-instance"]
        assert instance.options is not None and "instanceType" in instance.options.ignore_changes
        resize = by_name[f"{node}-instance-type"]
        assert resize.type == DYNAMIC and resize.parent_urn == by_name[node].urn
    assert by_name["aws-b-instance-type"].inputs[P_INSTANCE_TYPE] == "r6i.xlarge"
    deps = closure(after)
    assert by_name["aws-a-ssh-roll"].urn in deps[by_name["aws-b-instance-type"].urn]
    assert by_name["aws-a-instance-type"].urn in deps[by_name["aws-a-ssh-roll"].urn]
    assert by_name["aws-b-instance-type"].urn in deps[by_name["aws-b-ssh-roll"].urn]


def test_a_new_type_reruns_that_nodes_roll_and_verification_only(recordings: tuple[Recording, Recording]) -> None:
    before, _ = recordings
    only_b = triggers(run_program(config(b="r6i.xlarge"), preview=False))
    assert retriggered(triggers(before), only_b) == {"aws-b/preflight", "aws-b/roll", "aws-b/verify"}


def test_control_the_same_types_rerun_nothing(recordings: tuple[Recording, Recording]) -> None:
    before, _ = recordings
    assert retriggered(triggers(before), triggers(run_program(config(), preview=False))) == set()
    assert len([r for r in before.resources if r.type == Types.EC2_INSTANCE]) == 2


# -- the provider, against moto's EC2 ----------------------------------------------

REGION = "eu-west-1"


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def launch(client: Any, instance_type: str) -> str:
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    found = client.run_instances(ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1)
    return str(found["Instances"][0]["InstanceId"])


def described(client: Any, instance_id: str) -> tuple[str, str]:
    i = client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return i["InstanceType"], i["State"]["Name"]


def test_a_new_type_is_applied_by_stop_modify_start(ec2: Any) -> None:
    instance = launch(ec2, "t3.medium")
    assert ensure_instance_type(ec2, instance, "t3.large", delay=0) is True
    assert described(ec2, instance) == ("t3.large", "running")
    # The same type again: nothing stops.
    assert ensure_instance_type(ec2, instance, "t3.large", delay=0) is False


def test_the_provider_creates_and_updates_through_the_same_path(ec2: Any) -> None:
    instance = launch(ec2, "t3.medium")
    provider = InstanceTypeProvider()
    provider.client_factory = lambda region, endpoint: ec2  # type: ignore[assignment,misc]
    provider.wait_delay = 0
    props = {P_INSTANCE_ID: instance, P_INSTANCE_TYPE: "t3.medium", P_REGION: REGION, P_ENDPOINT: None}
    created = provider.create(props)
    assert created.id == instance and created.outs is not None and created.outs["changed"] is False
    news = {**props, P_INSTANCE_TYPE: "m5.large"}
    diff = provider.diff(instance, props, news)
    assert diff.changes is True and not diff.replaces
    assert provider.diff(instance, props, dict(props)).changes is False  # control
    updated = provider.update(instance, props, news)
    assert updated.outs is not None and updated.outs["changed"] is True
    assert described(ec2, instance) == ("m5.large", "running")
