"""The encryption context, wired: the program asks for the blob with it, binds node Decrypt to it, and every
node's unwrap.conf carries it to the unwrap, which passes it to KMS.

moto's KMS (in process) answers whether a Decrypt with the unwrap's own request opens a blob made with the
context; the key policy is checked as data, per principal, and with parliament.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from mocks import Recording, Types, full_config, grants, run_program
from moto import mock_aws
from node_scripts import load_node_script
from remote_plan import command as cmd
from remote_plan import decode_put, stdin_text
from test_iam_lint import KEY, lint

from components import key_policy as kp
from components.encryption_context import cluster_context, encryption_context
from components.encryption_key import cluster_key_policy
from components.node_files import UNWRAP_CONF_PATH, render_unwrap_conf

REPO = Path(__file__).resolve().parents[2]
unwrap = load_node_script("mariadb_kms_unwrap_context", REPO / "node" / "mariadb_kms_unwrap.py")
CONTEXT = {"mariadb-kms:stack": "dev", "mariadb-kms:cluster": "mariadb-kms"}  # mocks' stack, clusterName default
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _up(**changes: Any) -> Recording:
    return run_program(full_config(**changes), preview=False)


def _policy(rec: Recording) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(rec.one(Types.KMS_KEY).input("policy"))
    return doc


def _node_principals(rec: Recording) -> list[str]:
    return [rec.one(Types.IAM_ROLE).state["arn"], rec.one(Types.IAM_USER).state["arn"]]


@pytest.fixture(scope="module")
def envelope() -> Recording:
    return _up()


@pytest.fixture(scope="module")
def plugin() -> Recording:
    return _up(keyManagement="aws-plugin", awsPluginSource="https://example.com/aws_key_management.so",
               onPremDatadirEncryption="luks")


def test_the_context_is_the_stack_and_the_cluster_and_none_in_aws_plugin_mode() -> None:
    assert cluster_context("dev", "orders", "kms-envelope") == encryption_context("dev", "orders")
    assert cluster_context("dev", "orders", "aws-plugin") is None


def test_the_program_asks_for_the_blob_with_the_context(envelope: Recording, plugin: Recording) -> None:
    assert envelope.one(Types.DATA_KEY).input("encryption_context") == CONTEXT
    # aws-plugin: the plugin decrypts without a context, so the blob has none (and the input is absent).
    assert plugin.one(Types.DATA_KEY).input("encryption_context") is None


def test_node_decrypt_needs_the_context_describe_key_does_not(envelope: Recording) -> None:
    doc = _policy(envelope)
    for principal in _node_principals(envelope):
        conditions = grants(doc, principal, "kms:Decrypt")
        assert conditions, principal
        for condition in conditions:
            assert condition is not None
            for key, value in CONTEXT.items():
                assert condition["StringEquals"][f"kms:EncryptionContext:{key}"] == value
        # DescribeKey stays in the original statement, with its own conditions only.
        for condition in grants(doc, principal, "kms:DescribeKey"):
            assert not any("EncryptionContext" in k for c in (condition or {}).values() for k in c)
    # The network conditions survive the split.
    role, user = _node_principals(envelope)
    [role_cond] = grants(doc, role, "kms:Decrypt")
    assert role_cond is not None and role_cond["StringEquals"]["aws:SourceVpce"] == "vpce-0a1b2c3d4e5f60718"
    [user_cond] = grants(doc, user, "kms:Decrypt")
    assert user_cond is not None and user_cond["IpAddress"]["aws:SourceIp"] == ["203.0.113.0/28", "203.0.113.7/32"]


def test_aws_plugin_mode_keeps_an_unconditioned_node_decrypt(plugin: Recording) -> None:
    doc = _policy(plugin)
    for principal in _node_principals(plugin):
        for condition in grants(doc, principal, "kms:Decrypt"):
            assert "EncryptionContext" not in json.dumps(condition)
    assert kp.SID_DEPLOYERS_REWRAP not in {s["Sid"] for s in doc["Statement"]}


def test_the_deployers_may_rewrap_only_on_the_same_key(envelope: Recording) -> None:
    doc = _policy(envelope)
    [stmt] = [s for s in doc["Statement"] if s["Sid"] == kp.SID_DEPLOYERS_REWRAP]
    assert stmt["Action"] == ["kms:ReEncryptFrom", "kms:ReEncryptTo"]
    assert stmt["Condition"] == {"Bool": {"kms:ReEncryptOnSameKey": "true"}}


def test_the_bound_policy_is_parliament_clean(envelope: Recording) -> None:
    assert lint(_policy(envelope), KEY) == []


def test_control_parliament_flags_the_context_condition_on_describe_key() -> None:
    # Why Decrypt gets its own statement: the same condition on a statement with DescribeKey is flagged.
    doc = kp.key_policy(
        account_id="123456789012", partition="aws", region="eu-west-1", admins=["arn:aws:iam::123456789012:role/a"],
        deployers=["arn:aws:iam::123456789012:role/d"], node_role_arn="arn:aws:iam::123456789012:role/n",
        onprem_user_arns=(),
    )
    for stmt in doc["Statement"]:
        if stmt["Sid"] == kp.SID_EC2_NODES:
            stmt["Condition"] = kp.context_condition(CONTEXT)
    assert any(f.startswith(kp.SID_EC2_NODES) for f in lint(doc, KEY))


def test_without_a_context_the_policy_is_unchanged() -> None:
    doc = {"Version": "2012-10-17", "Statement": [{"Sid": kp.SID_EC2_NODES, "Action": ["kms:Decrypt"]}]}
    assert cluster_key_policy(doc, None) == doc


@pytest.mark.parametrize("kind", ["aws-a", "dc-1"])
def test_every_nodes_unwrap_conf_carries_the_context(envelope: Recording, plugin: Recording, kind: str) -> None:
    for rec, expected in ((envelope, CONTEXT), (plugin, None)):
        files = decode_put(str(stdin_text(cmd(rec, f"{kind}-ssh-config"))))
        conf = configparser.ConfigParser(interpolation=None)
        conf.read_string(files[UNWRAP_CONF_PATH][0].decode())
        got = conf["unwrap"].get("encryption_context")
        assert (json.loads(got) if got else None) == expected


def test_the_unwrap_decrypts_a_blob_made_with_the_context_only_when_its_conf_names_it(tmp_path: Path) -> None:
    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        arn = kms.create_key()["KeyMetadata"]["Arn"]
        blob = kms.generate_data_key_without_plaintext(KeyId=arn, KeySpec="AES_256", EncryptionContext=CONTEXT)[
            "CiphertextBlob"
        ]
        with_context = _settings(tmp_path, arn, CONTEXT)
        assert with_context.encryption_context == CONTEXT
        got = unwrap.decrypt_blob(kms, blob, arn, encryption_context=with_context.encryption_context)
        assert len(got) == 32
        # Control: the unwrap of a conf without it (every node before this change) is refused.
        without = _settings(tmp_path, arn, None)
        assert without.encryption_context == {}
        with pytest.raises(unwrap.UnwrapError) as refused:
            unwrap.decrypt_blob(kms, blob, arn, encryption_context=without.encryption_context, say=lambda _m: None)
        assert refused.value.cause == unwrap.INVALID_CIPHERTEXT


def _settings(tmp_path: Path, arn: str, context: dict[str, str] | None) -> Any:
    conf = tmp_path / "unwrap.conf"
    conf.write_text(render_unwrap_conf(
        mode="kms-envelope", key_arn=arn, region="eu-west-1", on_premises=False, encryption_context=context
    ))
    return unwrap.load_settings(conf)


@pytest.mark.parametrize(
    "value", ['{"mariadb-kms:stack": ', '["dev"]', '{"mariadb-kms:stack": 1}', '{"mariadb-kms:stack": ""}']
)
def test_a_bad_context_line_is_a_config_error_naming_file_and_value(tmp_path: Path, value: str) -> None:
    conf = tmp_path / "unwrap.conf"
    conf.write_text(
        f"[unwrap]\nmode = kms-envelope\nkey_arn = {KEY_ARN}\nregion = eu-west-1\nblob = /b\n"
        f"encryption_context = {value}\n"
    )
    with pytest.raises(unwrap.UnwrapError) as err:
        unwrap.load_settings(conf)
    assert err.value.cause == unwrap.CONFIG
    assert str(conf) in err.value.detail and "encryption_context" in err.value.detail
