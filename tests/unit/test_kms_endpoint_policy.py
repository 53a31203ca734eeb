"""A KMS VPC endpoint the program creates is named in the key policy's ``aws:SourceVpce`` condition.

The endpoint is a child of the cluster component, built after the key; the key
gets its id through a deferred output, so the key waits for the endpoint and is
created with the final policy, and no resource moves to another URN.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from mocks import ACCOUNT_ID, DEPLOYER_ROLE_ARN, KMS_ADMIN_ARN, REGION, Recording, Types, grants, run_program
from remote_plan import closure

from components import key_policy as kp

CONFIGURED = "vpce-0a1b2c3d4e5f60718"


def _policy(rec: Recording) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(rec.one(Types.KMS_KEY).input("policy"))
    return doc


def source_vpces(doc: dict[str, Any], principal: str) -> set[str]:
    """Every endpoint id the policy's Decrypt grants to ``principal`` are bound to."""
    found: set[str] = set()
    for condition in grants(doc, principal, "kms:Decrypt"):
        value = (condition or {}).get("StringEquals", {}).get("aws:SourceVpce")
        found |= {value} if isinstance(value, str) else set(value or ())
    return found


def test_control_the_checker_sees_only_the_configured_endpoint_in_the_old_policy() -> None:
    # What the key policy was before: only the configured id, whatever the cluster created.
    role = f"arn:aws:iam::{ACCOUNT_ID}:role/node"
    old = kp.key_policy(
        account_id=ACCOUNT_ID, partition="aws", region=REGION, admins=[KMS_ADMIN_ARN], deployers=[DEPLOYER_ROLE_ARN],
        node_role_arn=role, onprem_user_arns=(), kms_vpc_endpoint_id=CONFIGURED,
    )
    assert source_vpces(old, role) == {CONFIGURED}
    assert "vpce-created" not in source_vpces(old, role)


@pytest.mark.parametrize("configured", [CONFIGURED, ""], ids=["with-configured-id", "created-only"])
def test_the_created_endpoint_is_in_the_key_policy(full_config: dict[str, Any], configured: str) -> None:
    rec = run_program({**full_config, "createKmsVpcEndpoint": True, "kmsVpcEndpointId": configured}, preview=False)
    endpoint = rec.one(Types.EC2_VPC_ENDPOINT)
    assert endpoint.id.startswith("vpce-")
    role_arn = rec.one(Types.IAM_ROLE).state["arn"]
    expected = {endpoint.id, *([configured] if configured else [])}
    assert source_vpces(_policy(rec), role_arn) == expected
    # The key waits for the endpoint: it is created once, with this policy.
    key = rec.one(Types.KMS_KEY)
    assert endpoint.urn in closure(rec, through_inputs=True)[key.urn]


def test_without_a_created_endpoint_the_policy_and_the_urns_are_unchanged(full_config: dict[str, Any]) -> None:
    rec = run_program(full_config, preview=False)
    assert not rec.of_type(Types.EC2_VPC_ENDPOINT)
    role_arn = rec.one(Types.IAM_ROLE).state["arn"]
    policy_text = rec.one(Types.KMS_KEY).input("policy")
    # One configured id stays a plain string: the same document, byte for byte, as before.
    assert f'"aws:SourceVpce": "{CONFIGURED}"' in policy_text
    assert source_vpces(_policy(rec), role_arn) == {CONFIGURED}
    with_endpoint = run_program({**full_config, "createKmsVpcEndpoint": True}, preview=False)
    added = {r.urn for r in with_endpoint.resources} - {r.urn for r in rec.resources}
    assert added and all("KmsVpcEndpoint" in urn for urn in added)
    assert {r.urn for r in rec.resources} <= {r.urn for r in with_endpoint.resources}


def test_preview_with_a_new_endpoint_leaves_the_policy_unknown_and_does_not_crash(full_config: dict[str, Any]) -> None:
    rec = run_program({**full_config, "createKmsVpcEndpoint": True}, preview=True)
    assert rec.one(Types.KMS_KEY).urn
