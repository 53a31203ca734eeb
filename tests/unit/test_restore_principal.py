"""The restore principal in the key policy, checked per principal: Decrypt, and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mocks import ACCOUNT_ID, Types, allowed_actions, full_config, run_program
from test_iam_lint import KEY, lint
from test_key_policy import CRYPTO, KMS_ACTIONS, policy

from components import key_policy as kp
from components.config import ConfigError, parse_config

RESTORE = f"arn:aws:iam::{ACCOUNT_ID}:role/dr/mariadb-restore"
RESTORE_2 = f"arn:aws:iam::{ACCOUNT_ID}:role/dr/mariadb-restore-2"


def _statement(doc: dict[str, Any]) -> dict[str, Any]:
    [stmt] = [s for s in doc["Statement"] if s["Sid"] == kp.SID_RESTORE]
    return stmt


def test_a_restore_principal_may_decrypt_and_nothing_else() -> None:
    doc = policy(restore_principals=[RESTORE])
    assert allowed_actions(doc, RESTORE, KMS_ACTIONS) == {"kms:Decrypt"}
    # Not even DescribeKey, and nothing that makes, re-wraps or hands out a key.
    assert not (allowed_actions(doc, RESTORE, KMS_ACTIONS) & (CRYPTO - {"kms:Decrypt"}))
    stmt = _statement(doc)
    assert stmt["Principal"] == {"AWS": [RESTORE]} and stmt["Resource"] == "*"


def test_the_restore_statement_is_its_own_and_changes_nobody_elses() -> None:
    with_restore, without = policy(restore_principals=[RESTORE_2, RESTORE, RESTORE]), policy()
    others = [s for s in with_restore["Statement"] if s["Sid"] != kp.SID_RESTORE]
    assert others == without["Statement"]
    assert _statement(with_restore)["Principal"]["AWS"] == sorted({RESTORE, RESTORE_2})
    assert kp.SID_RESTORE not in {s["Sid"] for s in without["Statement"]}


def test_the_restore_statement_passes_parliament() -> None:
    assert lint(policy(restore_principals=[RESTORE]), KEY) == []


def test_control_a_widened_restore_statement_is_caught() -> None:
    doc = policy(restore_principals=[RESTORE])
    _statement(doc)["Action"] = ["kms:Decrypt", "kms:ReEncrypt*"]
    assert "kms:ReEncryptFrom" in allowed_actions(doc, RESTORE, KMS_ACTIONS)


def test_the_program_puts_configured_restore_principals_into_the_key_policy() -> None:
    rec = run_program(full_config(restorePrincipals=[RESTORE]), preview=False)
    doc = json.loads(rec.one(Types.KMS_KEY).input("policy"))
    assert allowed_actions(doc, RESTORE, KMS_ACTIONS) == {"kms:Decrypt"}


@pytest.mark.parametrize("bad", ["arn:aws:iam::123456789012:user/restore", "restore-role", "*"])
def test_restore_principals_must_be_role_arns(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(full_config(restorePrincipals=[bad]), stack="dev", region="eu-west-1")
    assert "restorePrincipals" in str(err.value) and bad in str(err.value)
