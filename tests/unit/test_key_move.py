"""Moving the data key to another KMS key (``kmsKeyArn``), as policy data and as the program wires it.

No emulator enforces key policies or grants, so the permissions are checked as data, per principal, and with
parliament: the admins' standing statement lets them make the temporary re-wrap grant and nothing wider; the
deployers' standing re-wrap stays on the same key; the node identities get Decrypt, with the context, on the new
key only. The program's side is read from a run under mocks: the data key, every unwrap.conf and the
``kmsKeyArn`` output follow the new key; the EBS volumes stay under the stack's own key.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from mocks import Recording, Types, allowed_actions, full_config, grants, run_program
from remote_plan import command as cmd
from remote_plan import decode_put, stdin_text
from test_iam_lint import KEY, lint
from test_key_policy import ADMIN_A, ADMIN_B, DEPLOYER, KMS_ACTIONS, NODE_ROLE, ONPREM_USER, policy

from components import key_policy as kp
from components.encryption_key import cluster_key_policy
from components.node_files import UNWRAP_CONF_PATH

CONTEXT = {"mariadb-kms:stack": "dev", "mariadb-kms:cluster": "mariadb-kms"}  # mocks' stack, clusterName default
NEW_KEY = "arn:aws:kms:eu-west-1:210987654321:key/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


# -- the admins' grant statement, evaluated ------------------------------------------------------------


def _condition_holds(condition: Mapping[str, Any] | None, request: Mapping[str, Any]) -> bool:
    """IAM's evaluation of the operators used here, on a request's condition keys (list values: any match)."""
    for operator, block in (condition or {}).items():
        for key, wanted in block.items():
            wanted_values = wanted if isinstance(wanted, list) else [wanted]
            got = request.get(key)
            if operator == "Null":
                if (got is None) != (wanted == "true"):
                    return False
            elif operator == "ForAllValues:StringEquals":
                if not all(v in wanted_values for v in (got or [])):
                    return False
            elif operator == "StringEquals":
                if got is None or got not in wanted_values:
                    return False
            elif operator == "Bool":
                if str(got).lower() != str(wanted).lower():
                    return False
            else:
                raise AssertionError(f"the evaluator does not know {operator}")
    return True


def may_create_grant(document: Mapping[str, Any], principal: str, *, operations: Iterable[str] | None,
                     grantee: str, context: Mapping[str, str] | None) -> bool:
    request: dict[str, Any] = {"kms:GranteePrincipal": grantee, "kms:GrantOperations": operations}
    if operations is None:
        request.pop("kms:GrantOperations")
    if context:
        request["kms:GrantConstraintType"] = "EncryptionContextEquals"
        request.update({f"kms:EncryptionContext:{k}": v for k, v in context.items()})
    return any(_condition_holds(c, request) for c in grants(document, principal, "kms:CreateGrant"))


@pytest.fixture(scope="module")
def bound() -> dict[str, Any]:
    return cluster_key_policy(policy(), CONTEXT)


def test_admins_may_grant_the_rewrap_to_a_deployer_bound_to_the_context(bound: dict[str, Any]) -> None:
    for admin in (ADMIN_A, ADMIN_B):
        for operation in ("ReEncryptFrom", "ReEncryptTo"):
            assert may_create_grant(bound, admin, operations=[operation], grantee=DEPLOYER, context=CONTEXT)


@pytest.mark.parametrize(
    ("why", "request_"),
    [
        ("a Decrypt grant", {"operations": ["ReEncryptFrom", "Decrypt"], "grantee": DEPLOYER, "context": CONTEXT}),
        ("a grant naming no operations", {"operations": None, "grantee": DEPLOYER, "context": CONTEXT}),
        ("to the admin itself", {"operations": ["ReEncryptFrom"], "grantee": ADMIN_A, "context": CONTEXT}),
        ("to a node", {"operations": ["ReEncryptTo"], "grantee": NODE_ROLE, "context": CONTEXT}),
        ("without a context constraint", {"operations": ["ReEncryptFrom"], "grantee": DEPLOYER, "context": None}),
        ("another cluster's context", {"operations": ["ReEncryptFrom"], "grantee": DEPLOYER,
                                       "context": {**CONTEXT, "mariadb-kms:cluster": "other"}}),
    ],
)
def test_control_every_wider_grant_is_refused(bound: dict[str, Any], why: str, request_: dict[str, Any]) -> None:
    assert not may_create_grant(bound, ADMIN_A, **request_), why


def test_nobody_else_may_create_grants_and_the_admins_only_with_conditions(bound: dict[str, Any]) -> None:
    for principal in (NODE_ROLE, ONPREM_USER):
        assert "kms:CreateGrant" not in allowed_actions(bound, principal, KMS_ACTIONS)
    assert "kms:CreateGrant" not in allowed_actions(bound, ADMIN_A, KMS_ACTIONS, unconditional=True)
    # The deployers' own CreateGrant is EC2's, for AWS resources only; it never passes a re-wrap grant request.
    assert not may_create_grant(bound, DEPLOYER, operations=["ReEncryptFrom"], grantee=DEPLOYER, context=CONTEXT)


def test_the_deployers_standing_rewrap_stays_on_the_same_key(bound: dict[str, Any]) -> None:
    for action in ("kms:ReEncryptFrom", "kms:ReEncryptTo"):
        conditions = grants(bound, DEPLOYER, action)
        assert conditions and all(
            c is not None and (c.get("Bool", {}).get("kms:ReEncryptOnSameKey") == "true"
                               or "kms:ViaService" in c.get("StringEquals", {}))
            for c in conditions
        ), (action, conditions)
        # Control for the evaluator: a cross-key ReEncrypt request fails every statement.
        assert not any(_condition_holds(c, {"kms:ReEncryptOnSameKey": "false"}) for c in conditions)


def test_the_bound_policy_with_the_grant_statement_is_parliament_clean(bound: dict[str, Any]) -> None:
    assert lint(bound, KEY) == []


def test_control_the_allow_list_entry_is_for_this_statement_only(bound: dict[str, Any]) -> None:
    renamed = json.loads(json.dumps(bound))
    for stmt in renamed["Statement"]:
        if stmt["Sid"] == kp.SID_ADMINS_REWRAP_GRANT:
            stmt["Sid"] = "SomethingElse"
    assert any(f.startswith("SomethingElse") for f in lint(renamed, KEY))


# -- the node identities' policy on a key the stack does not own ---------------------------------------


def test_the_node_identity_policy_is_decrypt_with_the_context_and_describe_on_that_key_only() -> None:
    doc = kp.wrapping_key_identity_policy(NEW_KEY, CONTEXT)
    assert {a for s in doc["Statement"] for a in s["Action"]} == {"kms:Decrypt", "kms:DescribeKey"}
    assert {s["Resource"] for s in doc["Statement"]} == {NEW_KEY}
    [decrypt] = [s for s in doc["Statement"] if s["Action"] == ["kms:Decrypt"]]
    assert decrypt["Condition"] == kp.context_condition(CONTEXT)
    assert lint(doc, "identity policy") == []
    # aws-plugin mode: the plugin decrypts without a context, so the statement cannot ask for one.
    assert "Condition" not in kp.wrapping_key_identity_policy(NEW_KEY, None)["Statement"][0]


# -- the program, with kmsKeyArn set ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def moved() -> Recording:
    return run_program(full_config(kmsKeyArn=NEW_KEY), preview=False)


@pytest.fixture(scope="module")
def own() -> Recording:
    return run_program(full_config(), preview=False)


def test_the_data_key_and_every_unwrap_conf_follow_the_new_key(moved: Recording, own: Recording) -> None:
    own_key = moved.one(Types.KMS_KEY).state["arn"]
    assert own_key != NEW_KEY
    assert moved.one(Types.DATA_KEY).input("key_arn") == NEW_KEY
    # Control: without kmsKeyArn the stack's own key wraps it.
    assert own.one(Types.DATA_KEY).input("key_arn") == own.one(Types.KMS_KEY).state["arn"]
    for node in ("aws-a", "dc-1"):
        files = decode_put(str(stdin_text(cmd(moved, f"{node}-ssh-config"))))
        conf = configparser.ConfigParser(interpolation=None)
        conf.read_string(files[UNWRAP_CONF_PATH][0].decode())
        assert conf["unwrap"]["key_arn"] == NEW_KEY, node
        assert json.loads(conf["unwrap"]["encryption_context"]) == CONTEXT


def test_the_ebs_volumes_stay_under_the_stacks_own_key(moved: Recording) -> None:
    # A volume's KMS key cannot change in place (kmsKeyId replaces it): they keep the key they were made with.
    own_key = moved.one(Types.KMS_KEY).state["arn"]
    volumes = moved.of_type(Types.EBS_VOLUME)
    assert volumes
    assert {v.input("kmsKeyId") for v in volumes} == {own_key}


def test_the_node_identities_get_their_side_of_the_new_key_and_the_output_names_it(
    moved: Recording, own: Recording
) -> None:
    expected = kp.wrapping_key_identity_policy(NEW_KEY, CONTEXT)
    [role_policy] = moved.of_type("aws:iam/rolePolicy:RolePolicy")
    [user_policy] = moved.of_type("aws:iam/userPolicy:UserPolicy")
    assert json.loads(role_policy.input("policy")) == expected
    assert json.loads(user_policy.input("policy")) == expected
    assert role_policy.input("role") == moved.one(Types.IAM_ROLE).id
    assert user_policy.input("user") == moved.one(Types.IAM_USER).state["name"]
    assert moved.outputs["kmsKeyArn"].value == NEW_KEY
    # Control: the stack's own key needs no IAM side (its key policy grants), and the output names that key.
    assert own.of_type("aws:iam/rolePolicy:RolePolicy") == [] and own.of_type("aws:iam/userPolicy:UserPolicy") == []
    assert own.outputs["kmsKeyArn"].value == own.one(Types.KMS_KEY).state["arn"]
