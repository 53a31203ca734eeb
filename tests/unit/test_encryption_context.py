"""The encryption context that binds the cluster data key to its stack and cluster, and the same-key re-wrap.

KMS itself (moto's, in process) shows what the context does: a blob made with it does not decrypt without
it, and ReEncrypt moves an old blob under the context without changing the data key. Error paths use
botocore's Stubber. The key policy side is checked as data, per principal.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from mocks import ACCOUNT_ID, allowed_actions, grants
from moto import mock_aws
from test_iam_lint import KEY, lint
from test_key_policy import DEPLOYER, KMS_ACTIONS, NODE_ROLE, ONPREM_USER, policy

from components import data_key_provider as dkp
from components import encryption_context as ec
from components import key_policy as kp

CONTEXT = ec.encryption_context("prod", "orders")
RESTORE = f"arn:aws:iam::{ACCOUNT_ID}:role/dr/mariadb-restore"
NO_WAIT = dkp.RetryPolicy(attempts=3, first_delay=0, max_delay=0)


def test_the_context_names_stack_and_cluster() -> None:
    assert CONTEXT == {"mariadb-kms:stack": "prod", "mariadb-kms:cluster": "orders"}
    with pytest.raises(ValueError):
        ec.encryption_context("", "orders")


def test_generate_passes_the_context_only_when_there_is_one() -> None:
    assert ec.generate_request("arn:k", CONTEXT)["EncryptionContext"] == CONTEXT
    assert "EncryptionContext" not in ec.generate_request("arn:k", None)  # existing stacks: unchanged call


def test_in_kms_a_blob_with_context_decrypts_only_with_it_and_rewrap_keeps_the_data_key() -> None:
    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        arn = kms.create_key()["KeyMetadata"]["Arn"]
        made = kms.generate_data_key_without_plaintext(**ec.generate_request(arn, CONTEXT))["CiphertextBlob"]
        with pytest.raises(ClientError) as refused:
            kms.decrypt(CiphertextBlob=made)
        assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"
        other = ec.encryption_context("prod", "another-cluster")
        with pytest.raises(ClientError):
            kms.decrypt(CiphertextBlob=made, EncryptionContext=other)
        assert len(kms.decrypt(CiphertextBlob=made, EncryptionContext=CONTEXT)["Plaintext"]) == 32

        # An existing stack's blob, made without a context, moved under it.
        old = kms.generate_data_key_without_plaintext(KeyId=arn, KeySpec="AES_256")["CiphertextBlob"]
        data_key = kms.decrypt(CiphertextBlob=old)["Plaintext"]
        new = ec.rewrap_blob(kms, old, arn, new_context=CONTEXT, old_context=None, policy=NO_WAIT)
        assert new != old
        assert kms.decrypt(CiphertextBlob=new, EncryptionContext=CONTEXT)["Plaintext"] == data_key
        with pytest.raises(ClientError):
            kms.decrypt(CiphertextBlob=new)  # control: the context is now required


def _stubbed() -> tuple[Any, Stubber]:
    client = botocore.session.get_session().create_client(
        "kms", region_name="eu-west-1", aws_access_key_id="stub", aws_secret_access_key="stub"
    )
    return client, Stubber(client)


ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_rewrap_asks_for_the_same_key_on_both_sides() -> None:
    client, stub = _stubbed()
    expected = {"CiphertextBlob": b"old", "SourceKeyId": ARN, "DestinationKeyId": ARN,
                "DestinationEncryptionContext": CONTEXT}
    stub.add_response("re_encrypt", {"CiphertextBlob": b"new", "KeyId": ARN, "SourceKeyId": ARN}, expected)
    with stub:
        assert ec.rewrap_blob(client, b"old", ARN, new_context=CONTEXT, old_context=None, policy=NO_WAIT) == b"new"
    stub.assert_no_pending_responses()


def test_rewrap_retries_throttling_and_names_a_denial() -> None:
    client, stub = _stubbed()
    stub.add_client_error("re_encrypt", "ThrottlingException", "slow down")
    stub.add_response("re_encrypt", {"CiphertextBlob": b"new", "KeyId": ARN})
    with stub:
        assert ec.rewrap_blob(client, b"old", ARN, new_context=CONTEXT, old_context=None, policy=NO_WAIT) == b"new"
    client, stub = _stubbed()
    stub.add_client_error("re_encrypt", "AccessDeniedException", "not allowed")
    with stub, pytest.raises(dkp.DataKeyError) as denied:
        ec.rewrap_blob(client, b"old", ARN, new_context=CONTEXT, old_context=None, policy=NO_WAIT)
    assert ARN in str(denied.value) and "not retried" in str(denied.value)


def test_control_a_blob_under_another_key_is_refused() -> None:
    client, stub = _stubbed()
    stub.add_response("re_encrypt", {"CiphertextBlob": b"new", "KeyId": ARN.replace("1234abcd", "9999abcd")})
    with stub, pytest.raises(dkp.DataKeyError, match="under"):
        ec.rewrap_blob(client, b"old", ARN, new_context=CONTEXT, old_context=None, policy=NO_WAIT)


# -- the key policy side ------------------------------------------------------


def _conditioned() -> dict[str, Any]:
    doc = policy(restore_principals=[RESTORE])
    doc["Statement"].append(kp.rewrap_statement([DEPLOYER]))
    return kp.with_encryption_context(
        doc, CONTEXT, condition_sids=(kp.SID_EC2_NODES, kp.SID_ONPREM_NODES, kp.SID_RESTORE)
    )


@pytest.mark.parametrize("principal", [NODE_ROLE, ONPREM_USER, RESTORE])
def test_every_unwrapping_principal_decrypts_only_with_the_clusters_context(principal: str) -> None:
    conditions = grants(_conditioned(), principal, "kms:Decrypt")
    assert conditions and all(c is not None for c in conditions)
    for c in conditions:
        assert c["StringEquals"]["kms:EncryptionContext:mariadb-kms:stack"] == "prod"  # type: ignore[index]
        assert c["StringEquals"]["kms:EncryptionContext:mariadb-kms:cluster"] == "orders"  # type: ignore[index]
    assert allowed_actions(_conditioned(), principal, KMS_ACTIONS, unconditional=True) <= {"kms:DescribeKey"}


def test_the_vpce_condition_survives_the_context() -> None:
    doc = kp.with_encryption_context(
        policy(kms_vpc_endpoint_id="vpce-0a1b2c3d4e5f60718"), CONTEXT, condition_sids=(kp.SID_EC2_NODES,)
    )
    [cond] = grants(doc, NODE_ROLE, "kms:Decrypt")
    assert cond is not None and cond["StringEquals"]["aws:SourceVpce"] == "vpce-0a1b2c3d4e5f60718"


def test_the_deployers_rewrap_only_on_the_same_key() -> None:
    doc = _conditioned()
    for action in ("kms:ReEncryptFrom", "kms:ReEncryptTo"):
        conditions = grants(doc, DEPLOYER, action)
        # The same-key statement, and the EC2-only one EBS already needed; never unconditioned.
        assert {"Bool": {"kms:ReEncryptOnSameKey": "true"}} in conditions and None not in conditions
        assert all(c is not None and ("kms:ReEncryptOnSameKey" in c.get("Bool", {}) or "kms:ViaService"
                                      in c.get("StringEquals", {})) for c in conditions)
    assert lint(doc, KEY) == []


def test_control_without_the_context_the_policy_is_unchanged_and_unconditioned() -> None:
    plain = policy(restore_principals=[RESTORE])
    assert kp.with_encryption_context(plain, CONTEXT, condition_sids=()) == plain
    assert None in grants(plain, RESTORE, "kms:Decrypt")
