"""The unit tests' values for the one Pulumi mocks harness (``rehearsal/recorder.py``).

``run_program(config, preview=...)`` runs ``__main__.py`` under
``pulumi.runtime.set_mocks`` and returns a ``Recording`` of what the program
asked for (resources with inputs and options, invokes, outputs; see
``rehearsal/recorder.py`` for what a plain mock hides and the harness brings
out). Provider answers are ``rehearsal/aws_values.py``'s realistic ones, with
the test values here on top: known secrets planted in config and in the on-prem
access key (a test searches everything non-secret for them), deterministic SSH
host keys, and a canned passing report from every verification command.

The rehearsal (``make demo``) runs the same harness with the KMS emulator's
values instead; the harness itself lives under ``rehearsal/`` because the demo
is product code and must not import from tests.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pulumi.runtime import rpc

from rehearsal.aws_values import AwsMocks, ec2_id, fake_ciphertext_blob, stable_hex
from rehearsal.recorder import (
    MAIN,
    PROJECT,
    UNKNOWN,
    Computed,
    Invoke,
    Invokes,
    RecordedOptions,
    Recording,
    RegisteredResource,
    StackOutput,
    Types,
    record,
)
from rehearsal.recorder import (
    config_for_pulumi as _config_for_pulumi,
)

__all__ = [
    "MAIN",
    "PROJECT",
    "UNKNOWN",
    "Invoke",
    "Invokes",
    "RecordedOptions",
    "Recording",
    "RegisteredResource",
    "StackOutput",
    "Types",
    "fake_ciphertext_blob",
]

REPO = Path(__file__).resolve().parents[2]
STACK = "dev"
ACCOUNT_ID = "123456789012"
REGION = "eu-west-1"
PARTITION = "aws"


# The deploying role lives under a path, which an assumed-role session ARN
# drops: only get_session_context gives this ARN back.
DEPLOYER_ROLE_NAME = "pulumi-deployer"
DEPLOYER_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/ci/{DEPLOYER_ROLE_NAME}"
KMS_ADMIN_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/ops/kms-admin"


def _ed25519_line(seed: str, comment: str = "") -> str:
    """An OpenSSH ed25519 public key line with the real wire layout (fake key bytes)."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(seed.encode()).digest()
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}{' ' + comment if comment else ''}"


ONPREM_HOST_KEY = _ed25519_line("dc-1 host key")
SSH_AUTHORIZED_KEY = _ed25519_line("deploy key", "mariadb-kms-deploy")

# Secret values planted in config and in mock outputs. A test searches every
# non-secret output, input, state value and log line for them.
PLANTED_SSH_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nplanted-ssh-private-key-3f9c2a71\n-----END OPENSSH PRIVATE KEY-----\n"
)
PLANTED_ACCESS_KEY_SECRET = "plantedSecretAccessKey/7QmZ3xVb9Kc1Rt+Lw0Nd4Hs8Jp2"
PLANTED_SES_SMTP_PASSWORD = "BPlantedSesSmtpPassword9Xq4Lm2Zr7Tc0Vb5Wn8Hd3Kf"
PLANTED_SECRETS = (PLANTED_SSH_PRIVATE_KEY.splitlines()[1], PLANTED_ACCESS_KEY_SECRET, PLANTED_SES_SMTP_PASSWORD)

SECRET_CONFIG_KEYS = ("sshPrivateKey",)

FULL_CONFIG: Mapping[str, Any] = {
    "keyAdmins": [KMS_ADMIN_ARN, DEPLOYER_ROLE_ARN],
    "keyRotationPeriodDays": 180,
    "keyDeletionWindowDays": 21,
    "onPremEgressCidrs": ["203.0.113.0/28"],
    "kmsVpcEndpointId": "vpce-0a1b2c3d4e5f60718",
    "vpcId": "vpc-0123456789abcdef0",
    "amiId": "ami-0abcdef1234567890",
    "sshAuthorizedKey": SSH_AUTHORIZED_KEY,
    "sshPrivateKey": PLANTED_SSH_PRIVATE_KEY,
    "adminCidrs": ["198.51.100.0/24"],
    "clientCidrs": ["10.20.0.0/16"],
    "onPremCidrs": ["192.0.2.0/24"],
    "ec2Nodes": [
        {"name": "aws-a", "subnetId": "subnet-0a1b2c3d4e5f60718", "availabilityZone": "eu-west-1a"},
        {
            "name": "aws-b",
            "subnetId": "subnet-0f1e2d3c4b5a69788",
            "availabilityZone": "eu-west-1b",
            "instanceType": "r6i.large",
            "dataVolumeGiB": 200,
            "privateIp": "10.20.2.10",
        },
    ],
    "onPremNodes": [
        {
            "name": "dc-1",
            "address": "192.0.2.21",
            "sshUser": "deploy",
            "hostKey": ONPREM_HOST_KEY,
            "egressCidr": "203.0.113.7/32",
        }
    ],
    "tags": {"owner": "dba-team", "cost-center": "db-42"},
}


# The subnets FULL_CONFIG names are in the zones it states for them.
SUBNET_ZONES = {"subnet-0a1b2c3d4e5f60718": "eu-west-1a", "subnet-0f1e2d3c4b5a69788": "eu-west-1b"}


def full_config(**changes: Any) -> dict[str, Any]:
    """A deep copy of FULL_CONFIG; ``key=...`` (Ellipsis) removes a key."""
    cfg = copy.deepcopy(dict(FULL_CONFIG))
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


# --------------------------------------------------------------------------
# Test values on top of the realistic ones
# --------------------------------------------------------------------------

_ec2_id = ec2_id  # tests build expected ids with it


class RecordingMocks(AwsMocks):
    """Realistic AWS values, with planted secrets, deterministic host keys and canned verify reports."""

    def __init__(
        self, *, preview: bool, stack: str, region: str, caller_session: str, caller_arn: str | None = None
    ) -> None:
        super().__init__(
            preview=preview, stack=stack, region=region, deployer_role_name=DEPLOYER_ROLE_NAME,
            deployer_role_arn=DEPLOYER_ROLE_ARN, caller_session=caller_session, caller_arn=caller_arn,
            account_id=ACCOUNT_ID, partition=PARTITION,
        )

    def access_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        found = super().access_key(name, inputs)
        found.outputs.update({"secret": PLANTED_ACCESS_KEY_SECRET, "sesSmtpPasswordV4": PLANTED_SES_SMTP_PASSWORD})
        return found

    def private_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        if inputs.get("algorithm") != "ED25519":
            return super().private_key(name, inputs)
        private, public, pem = ed25519_openssh(f"{self.stack}/{name}")
        fingerprint = base64.b64encode(hashlib.sha256(base64.b64decode(public.split()[1])).digest())
        return Computed(stable_hex("tls", name, length=40), {
            "privateKeyOpenssh": private,
            "privateKeyPem": pem,
            "privateKeyPemPkcs8": pem,
            "publicKeyOpenssh": public,
            "publicKeyFingerprintSha256": "SHA256:" + fingerprint.decode().rstrip("="),
        })

    def subnet_zone(self, subnet_id: str) -> str:
        return SUBNET_ZONES.get(subnet_id) or super().subnet_zone(subnet_id)

    def ec2_id(self, prefix: str, name: str) -> str:
        return _ec2_id(prefix, name)  # looked up at call time: a test replaces it to model a new instance

    def remote_command(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """The verify tool's JSON report for verification commands, else empty output."""
        create = str(rpc.unwrap_rpc_secret(inputs.get("create")) or "")
        if "mariadb-kms-verify" in create:
            size = re.search(r"--expect-size (\d+)", create)
            node = name.removesuffix("-verification-run")
            report = canned_verify_report(node, int(size.group(1)) if size else 0)
            return {"stdout": json.dumps(report, indent=2), "stderr": ""}
        return {"stdout": "", "stderr": ""}


@cache
def ed25519_openssh(seed: str) -> tuple[str, str, str]:
    """A real ed25519 key pair derived from ``seed``: (OpenSSH private, OpenSSH public line + newline, PEM).

    Cached, so one resource name gives byte-identical keys for the whole test run
    (OpenSSH's private format carries random check bytes).
    """
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"ed25519/{seed}".encode()).digest())
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()).decode()
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return private, public + "\n", pem


def canned_verify_report(node: str, cluster_size: int) -> dict[str, Any]:
    """A passing report in the shape node/mariadb_kms_verify.py prints (the parts tests read)."""
    return {
        "node": node,
        "version": "10.11.6-MariaDB-0+deb12u1",
        "galera": {"wsrep_on": "ON", "ready": "ON", "connected": "ON", "cluster_status": "Primary",
                   "local_state": "Synced", "cluster_size": cluster_size},
        "key": {"plugins": [{"name": "file_key_management", "status": "ACTIVE",
                             "load_option": "FORCE_PLUS_PERMANENT"}]},
        "innodb": {"total": 7, "encrypted": 7, "in_progress": [], "unencrypted": []},
        "canary": {"found_in": [], "files_scanned": 42},
        "gaps": [],
        "ok": True,
    }


# --------------------------------------------------------------------------
# Running the program
# --------------------------------------------------------------------------


def config_for_pulumi(config: Mapping[str, Any], region: str | None) -> tuple[dict[str, str], list[str]]:
    """The program's config as the CLI hands it over: namespaced keys, values as strings (JSON for the rest)."""
    return _config_for_pulumi(config, region, SECRET_CONFIG_KEYS)


def run_program(
    config: Mapping[str, Any],
    *,
    preview: bool,
    region: str | None = REGION,
    stack: str = STACK,
    caller_session: str = "ci-run-1",
    caller_arn: str | None = None,
    expect_failure: bool = False,
    program: Callable[[], None] | None = None,
) -> Recording:
    """Run ``__main__.py`` (or ``program``, e.g. one component) once under mocks and return what it did.

    The caller is the deployer role's session ``caller_session`` unless
    ``caller_arn`` names another identity.

    A program exception is kept in ``Recording.exception``; unless
    ``expect_failure`` it is re-raised, so a broken program fails the test.
    """
    mocks = RecordingMocks(
        preview=preview, stack=stack, region=region or REGION, caller_session=caller_session, caller_arn=caller_arn
    )
    flat, secret_keys = config_for_pulumi(config, region)
    recording = record(mocks, flat, secret_keys, stack=stack, program=program)
    if recording.exception is not None and not expect_failure:
        raise AssertionError(f"the program failed: {recording.exception!r}; errors: {recording.errors}") from (
            recording.exception
        )
    if recording.exception is None and expect_failure:
        raise AssertionError("the program was expected to fail and did not")
    return recording


# --------------------------------------------------------------------------
# Secret scanning
# --------------------------------------------------------------------------


def _plain_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` that is not inside a secret wrapper, with its path."""
    if rpc.is_rpc_secret(value):
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _plain_strings(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _plain_strings(v, f"{path}[{i}]")


def plaintext_leaks(recording: Recording, needles: tuple[str, ...] = PLANTED_SECRETS) -> list[str]:
    """Where any of ``needles`` appears outside a secret: outputs, inputs, state, logs.

    A dynamic provider's ``__provider`` input is a base64 pickle that may
    capture values by closure, so it is decoded and searched too.
    """
    found: list[str] = []

    def check(where: str, text: str) -> None:
        found.extend(f"{where}: {needle[:12]}..." for needle in needles if needle in text)

    for name, out in recording.outputs.items():
        if not out.secret:
            for path, text in _plain_strings(out.value, f"output {name}"):
                check(path, text)
    for res in recording.resources:
        for what, values in (("input", res.inputs), ("state", res.state)):
            for path, text in _plain_strings(values, f"{res.type} {res.name} {what}"):
                check(path, text)
        provider = res.inputs.get("__provider")  # when secret, state keeps it encrypted
        if isinstance(provider, str):
            try:
                decoded = base64.b64decode(provider, validate=True).decode("latin-1")
            except ValueError:
                decoded = provider
            check(f"{res.type} {res.name} __provider (decoded)", decoded)
    for line in (*recording.warnings, *recording.errors):
        check("log", line)
    return found


# --------------------------------------------------------------------------
# Reading IAM policy documents
# --------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def statement_principals(statement: Mapping[str, Any]) -> list[str]:
    principal = statement.get("Principal", {})
    return [str(p) for p in _as_list(principal.get("AWS", []))] if isinstance(principal, Mapping) else []


def statement_allows(statement: Mapping[str, Any], action: str) -> bool:
    """Whether the statement's Action (wildcards included, case-insensitive as IAM) covers ``action``."""
    return any(fnmatch.fnmatchcase(action.lower(), str(a).lower()) for a in _as_list(statement.get("Action", [])))


def grants(document: Mapping[str, Any], principal: str, action: str) -> list[dict[str, Any] | None]:
    """The Condition block of every Allow statement that gives ``principal`` ``action`` (None = no condition)."""
    assert not [s for s in document["Statement"] if s.get("Effect") != "Allow"], "the evaluator knows Allow only"
    return [
        s.get("Condition")
        for s in document["Statement"]
        if principal in statement_principals(s) and statement_allows(s, action)
    ]


def allowed_actions(
    document: Mapping[str, Any], principal: str, universe: Iterable[str], *, unconditional: bool = False
) -> set[str]:
    """Which actions of ``universe`` the principal gets at all (or, with ``unconditional``, without a condition)."""
    return {
        a for a in universe
        if any(c is None or not unconditional for c in grants(document, principal, a))
    }
