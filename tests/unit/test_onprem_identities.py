"""Per-node on-prem identities: one IAM user and access key per node, a rotation by `accessKeyGeneration`, and a
leaving node's identity revoked, each read from the program's own recordings under the engine's rules."""

from __future__ import annotations

import json
from typing import Any

from mocks import full_config, run_program
from test_plan_diff import NODES, REGION, plan, steps, with_dc2

import components.key_policy as kp
from rehearsal.plan import decode_put
from rehearsal.recorder import Recording, Types
from tools import plan_diff
from tools.plan_diff import StackFile, record_plan

CREDENTIALS = "/etc/mariadb-kms/aws-credentials"


def two_onprem(**dc1: Any) -> dict[str, Any]:
    config = with_dc2(full_config())
    config["onPremNodes"][0].update(dc1)
    return config


def recorded(config: dict[str, Any], memo: plan_diff.Memo | None = None) -> Recording:
    return record_plan(StackFile(config, REGION, ["sshPrivateKey"]), {} if memo is None else memo, stack="dev")


def by_node_tag(rec: Recording, typ: str) -> dict[str, Any]:
    users = {r.state["name"]: r for r in rec.of_type(Types.IAM_USER)}
    if typ == Types.IAM_USER:
        return {str(r.input("tags")["mariadb-kms:node"]): r for r in users.values()}
    return {str(users[r.input("user")].input("tags")["mariadb-kms:node"]): r for r in rec.of_type(typ)}


def credentials_on(rec: Recording, node: str) -> str:
    [cmd] = [r for r in rec.of_type(Types.REMOTE_COMMAND) if r.name == f"{node}-ssh-credentials"]
    content, mode, owner = decode_put(str(plain_secret(cmd.inputs["stdin"])))[CREDENTIALS]
    assert (mode, owner) == (0o600, "root:root")
    return content.decode()


def plain_secret(value: Any) -> Any:
    from pulumi.runtime import rpc

    return rpc.unwrap_rpc_secret(value)


def test_each_onprem_node_has_its_own_user_and_key_and_the_key_policy_names_each() -> None:
    rec = recorded(two_onprem())
    users, keys = by_node_tag(rec, Types.IAM_USER), by_node_tag(rec, Types.IAM_ACCESS_KEY)
    assert sorted(users) == sorted(keys) == ["dc-1", "dc-2"]
    assert keys["dc-1"].id != keys["dc-2"].id
    assert {u.input("path") for u in users.values()} == {"/mariadb-kms/"}
    # Each node's credentials file holds its own key and not the other's.
    for node, other in (("dc-1", "dc-2"), ("dc-2", "dc-1")):
        text = credentials_on(rec, node)
        assert keys[node].id in text and keys[other].id not in text
    policy = json.loads(rec.one(Types.KMS_KEY).input("policy"))
    onprem = [s for s in policy["Statement"] if s["Sid"].startswith(kp.SID_ONPREM_NODES)]
    assert onprem, policy
    for stmt in onprem:
        assert stmt["Principal"]["AWS"] == sorted(u.state["arn"] for u in users.values())
    # The outputs: per node, never the secret.
    outputs = run_program(two_onprem(), preview=False).outputs
    assert set(outputs["onPremUserName"].value) == set(outputs["onPremAccessKeyId"].value) == {"dc-1", "dc-2"}


def test_a_rotation_runs_credentials_preflight_and_roll_on_that_node_only_and_restarts_nobody() -> None:
    p = plan(two_onprem(), two_onprem(accessKeyGeneration=2))
    assert steps(p) == {("dc-1", "credentials"): "update", ("dc-1", "preflight"): "replace",
                        ("dc-1", "roll"): "replace"}
    assert all(s.runs == ["create"] for s in p.steps)
    # The roll runs again (it would start a node that is down) but finds its applied config current.
    assert p.restarts == [] and not p.bootstrap_runs
    # The new key is a new resource; the old one leaves the program, so the engine deletes it after every create
    # and update of the run (the credentials step and the pre-flight with the new key among them).
    resources = {(c.type, c.name): c.action for c, _ in p.resources}
    assert resources == {(Types.IAM_ACCESS_KEY, "onprem-identity-dc-1-key-2"): "create",
                         (Types.IAM_ACCESS_KEY, "onprem-identity-dc-1-key"): "delete"}
    # Control: the same plan reader calls a config change a restart.
    assert plan(full_config(), full_config(gcacheSize="1G")).restarts == NODES


def test_the_rotated_nodes_file_changes_and_the_other_nodes_does_not() -> None:
    memo: plan_diff.Memo = {}
    before, after = recorded(two_onprem(), memo), recorded(two_onprem(accessKeyGeneration=2), memo)
    assert credentials_on(before, "dc-2") == credentials_on(after, "dc-2")
    assert credentials_on(before, "dc-1") != credentials_on(after, "dc-1")
    new_key = by_node_tag(after, Types.IAM_ACCESS_KEY)["dc-1"]
    assert new_key.name == "onprem-identity-dc-1-key-2" and new_key.id in credentials_on(after, "dc-1")
    # The user stays: the key policy does not change, so KMS is not touched.
    assert before.one(Types.KMS_KEY).input("policy") == after.one(Types.KMS_KEY).input("policy")


def test_a_leaving_nodes_user_and_key_are_deleted_after_its_decommission_step() -> None:
    base, head = two_onprem(), two_onprem()
    head["onPremNodes"][1]["decommission"] = True
    p = plan(base, head)
    resources = {(c.type, c.name): c.action for c, _ in p.resources}
    assert resources[(Types.IAM_USER, "onprem-identity-dc-2-user")] == "delete"
    assert resources[(Types.IAM_ACCESS_KEY, "onprem-identity-dc-2-key")] == "delete"
    assert resources[("aws:kms/key:Key", "encryption-key-key")] == "update"
    # The decommission step is a create: it runs in the forward pass, the identity's deletes after it.
    assert steps(p)[("dc-2", "decommission")] == "create"
    memo: plan_diff.Memo = {}
    after = recorded(head, memo)
    policy = json.loads(after.one(Types.KMS_KEY).input("policy"))
    principals = {a for s in policy["Statement"] if s["Sid"].startswith(kp.SID_ONPREM_NODES)
                  for a in s["Principal"]["AWS"]}
    assert principals == {by_node_tag(after, Types.IAM_USER)["dc-1"].state["arn"]}


def test_access_key_generation_is_checked_with_key_value_and_expectation() -> None:
    rec = run_program(two_onprem(accessKeyGeneration=0), preview=True, expect_failure=True)
    assert "mariadb-kms:onPremNodes[0].accessKeyGeneration = 0: expected an integer from 1 to 9999" in rec.errors
    assert not rec.of_type(Types.IAM_ACCESS_KEY)


def test_the_two_node_key_policy_is_parliament_clean() -> None:
    from test_iam_lint import KEY, lint

    policy = json.loads(recorded(two_onprem()).one(Types.KMS_KEY).input("policy"))
    assert lint(policy, KEY) == []
    # Control: the linter sees the node statements (a write action slipped in is flagged).
    broken = json.loads(json.dumps(policy))
    [stmt] = [s for s in broken["Statement"] if s["Sid"] == kp.SID_ONPREM_NODES]
    stmt["Action"] = [*stmt["Action"], "kms:PutKeyPolicy"]
    assert lint(broken, KEY) != []
