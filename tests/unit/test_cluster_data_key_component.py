"""ClusterDataKey as Pulumi registers it, under pulumi.runtime.set_mocks.

The mock here is deliberately tiny and local; it should move onto the shared
harness in tests/unit/mocks.py once that runs single components as well as
``__main__.py``. As there, resource options are recorded with a stack
transformation, because mock arguments do not carry them.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dill
import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_pulumi_func

from components.cluster_data_key import COMPONENT_TYPE, ClusterDataKey, default_escrow_parameter_name
from components.data_key_provider import DataKeyProvider

DYNAMIC_TYPE = "pulumi-python:dynamic/mariadb-kms:ClusterDataKey"
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MOCK_BLOB = base64.b64encode(b"mock ciphertext blob").decode()
STACK = "dev"


@dataclass
class Recording:
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by resource type
    options: dict[str, pulumi.ResourceOptions] = field(default_factory=dict)  # by resource type
    outputs: dict[str, Any] = field(default_factory=dict)


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.recording.inputs[args.typ] = dict(args.inputs)
        if args.typ == DYNAMIC_TYPE:
            state = {k: v for k, v in args.inputs.items() if k != "__provider"}
            return "mock-blob-digest", {**state, "ciphertext_blob": MOCK_BLOB}
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def _run(make: Callable[[], ClusterDataKey]) -> Recording:
    """Run one program in a context of its own: the SDK keeps its root stack and settings in context variables."""
    recording = Recording()

    def in_fresh_context() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            pulumi.runtime.set_mocks(_Mocks(recording), project="mariadb-kms", stack=STACK, preview=False)

            def record(args: pulumi.ResourceTransformationArgs) -> None:
                recording.options[args.type_] = args.opts

            pulumi.runtime.register_stack_transformation(record)

            async def program() -> None:
                component = make()
                recording.outputs["ciphertext_blob"] = await component.ciphertext_blob.future()
                recording.outputs["key_arn"] = await component.key_arn.future()

            loop.run_until_complete(run_pulumi_func(program))
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    contextvars.Context().run(in_fresh_context)
    return recording


def _component(**overrides: Any) -> Callable[[], ClusterDataKey]:
    kwargs: dict[str, Any] = {"key_arn": KEY_ARN, "escrow_in_ssm": False, "tags": {"project": "mariadb-kms"}}
    kwargs.update(overrides)
    return lambda: ClusterDataKey("cluster-data-key", **kwargs)


def test_component_wires_a_protected_retained_dynamic_child() -> None:
    rec = _run(_component())
    assert COMPONENT_TYPE == "mariadb-kms:index:ClusterDataKey"
    assert COMPONENT_TYPE in rec.options and DYNAMIC_TYPE in rec.options
    child = rec.options[DYNAMIC_TYPE]
    assert child.protect is True
    assert child.retain_on_delete is True
    assert isinstance(child.parent, ClusterDataKey)
    assert rec.outputs == {"ciphertext_blob": MOCK_BLOB, "key_arn": KEY_ARN}


def test_component_passes_inputs_and_no_escrow_name_when_escrow_is_off() -> None:
    inputs = _run(_component()).inputs[DYNAMIC_TYPE]
    assert inputs["key_arn"] == KEY_ARN
    assert inputs["escrow_in_ssm"] is False
    assert inputs.get("escrow_parameter_name") is None
    assert inputs.get("endpoint_url") is None
    assert inputs["tags"] == {"project": "mariadb-kms"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, default_escrow_parameter_name(STACK)), ("/custom/escrow", "/custom/escrow")],
)
def test_escrow_parameter_name_defaults_per_stack(given: str | None, expected: str) -> None:
    inputs = _run(_component(escrow_in_ssm=True, escrow_parameter_name=given)).inputs[DYNAMIC_TYPE]
    assert inputs["escrow_in_ssm"] is True
    assert inputs["escrow_parameter_name"] == expected
    assert default_escrow_parameter_name(STACK) == "/mariadb-kms/dev/cluster-data-key"


def test_the_registered_provider_is_ours_by_reference() -> None:
    serialized = _run(_component()).inputs[DYNAMIC_TYPE]["__provider"]
    assert rpc.is_rpc_secret(serialized)  # Pulumi keeps the pickled provider secret in state
    provider = dill.loads(base64.b64decode(rpc.unwrap_rpc_secret(serialized)))  # noqa: S301 - bytes made by this test
    assert type(provider) is DataKeyProvider
    assert type(provider).__module__ == "components.data_key_provider"


def test_the_callers_depends_on_reaches_the_data_key() -> None:
    recorded: dict[str, Any] = {}

    def make() -> ClusterDataKey:
        policy = pulumi.CustomResource("test:index:KeyPolicy", "key-policy")
        recorded["policy"] = policy
        return ClusterDataKey(
            "cluster-data-key", key_arn=KEY_ARN, escrow_in_ssm=False, tags={},
            opts=pulumi.ResourceOptions(depends_on=[policy]),
        )

    child = _run(make).options[DYNAMIC_TYPE]
    assert child.depends_on == [recorded["policy"]]
