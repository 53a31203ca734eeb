"""The one Pulumi mocks harness for the unit tests.

``run_program(config, preview=...)`` runs ``__main__.py`` under
``pulumi.runtime.set_mocks`` and returns a ``Recording`` of what the program
asked for. Three things a real run shows and plain mocks hide are brought out
(DESIGN.md section 4):

- resource options: mock args carry none, so a stack transformation records
  ``protect``, ``retain_on_delete``, ``depends_on``, ``parent`` and the rest;
- unknowns: in preview mode computed outputs come back unknown, as in a real
  preview, so anything the program builds inside an ``apply`` goes missing
  from the preview recording (or fails) instead of passing unnoticed;
- secretness: the engine, not the SDK, marks ``additionalSecretOutputs``
  secret, so the mock monitor does it here.

Each run happens in a fresh ``contextvars.Context`` (the SDK keeps its
settings, root stack and config in context variables) with its own event loop,
so two runs in one process share nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import fnmatch
import hashlib
import json
import logging
import os
import re
import runpy
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pulumi
from pulumi.output import Unknown
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "__main__.py"
PROJECT = "mariadb-kms"
STACK = "dev"
ACCOUNT_ID = "123456789012"
REGION = "eu-west-1"
PARTITION = "aws"

UNKNOWN = pulumi.output.UNKNOWN
"""What an unknown input looks like in a Recording (preview mode)."""


class Types:
    """Type tokens, so tests never spell them by hand."""

    ENCRYPTION_KEY = "mariadb-kms:index:EncryptionKey"
    NODE_IDENTITY = "mariadb-kms:index:NodeIdentity"
    ONPREM_IDENTITY = "mariadb-kms:index:OnPremIdentity"
    CLUSTER_DATA_KEY = "mariadb-kms:index:ClusterDataKey"
    KMS_KEY = "aws:kms/key:Key"
    KMS_ALIAS = "aws:kms/alias:Alias"
    IAM_ROLE = "aws:iam/role:Role"
    IAM_ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
    IAM_INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
    IAM_USER = "aws:iam/user:User"
    IAM_ACCESS_KEY = "aws:iam/accessKey:AccessKey"
    SSM_PARAMETER = "aws:ssm/parameter:Parameter"
    # A dynamic resource's token is pulumi-python:dynamic[/<module>]:<name>.
    DYNAMIC_PREFIX = "pulumi-python:dynamic"
    DATA_KEY = "pulumi-python:dynamic/mariadb-kms:ClusterDataKey"
    # The SSH path (issue 4).
    MARIADB_CLUSTER = "mariadb-kms:index:MariaDbCluster"
    ONPREM_NODE = "mariadb-kms:index:OnPremNode"
    NODE_SSH_PATH = "mariadb-kms:index:NodeSshPath"
    VERIFICATION = "mariadb-kms:index:Verification"
    REMOTE_COMMAND = "command:remote:Command"
    REMOTE_COPY = "command:remote:CopyToRemote"
    # EC2 nodes (issue 4).
    EC2_NODE = "mariadb-kms:index:Ec2Node"
    NODE_SECURITY_GROUP = "mariadb-kms:index:NodeSecurityGroup"
    KMS_VPC_ENDPOINT = "mariadb-kms:index:KmsVpcEndpoint"
    TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
    EC2_INSTANCE = "aws:ec2/instance:Instance"
    EC2_NETWORK_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
    EBS_VOLUME = "aws:ebs/volume:Volume"
    EC2_VOLUME_ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
    EC2_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
    SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    SG_EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
    EC2_VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"


class Invokes:
    CALLER_IDENTITY = "aws:index/getCallerIdentity:getCallerIdentity"
    PARTITION = "aws:index/getPartition:getPartition"
    SESSION_CONTEXT = "aws:iam/getSessionContext:getSessionContext"


# --------------------------------------------------------------------------
# The realistic full config: 2 EC2 nodes + 1 on-prem node.
# --------------------------------------------------------------------------

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
# What a run records
# --------------------------------------------------------------------------


@dataclass
class RecordedOptions:
    """Resource options as the program gave them (seen by the stack transformation)."""

    protect: bool | None
    retain_on_delete: bool | None
    delete_before_replace: bool | None
    additional_secret_outputs: tuple[str, ...]
    ignore_changes: tuple[str, ...]
    replace_on_changes: tuple[str, ...]
    depends_on: tuple[str, ...]  # URNs
    parent: str | None  # URN; None = the stack


@dataclass
class RegisteredResource:
    type: str
    name: str
    urn: str
    id: str  # "" in preview, as a real preview leaves a new resource's id unknown
    custom: bool
    inputs: dict[str, Any]  # wire (camelCase) names; secrets stay rpc-wrapped; unknowns are UNKNOWN
    state: dict[str, Any]  # what the mock returned, after engine-style secret marking
    parent_urn: str  # as registered (the engine's view, incl. the stack)
    dependencies: tuple[str, ...]  # URNs the registration waited on, explicit and through inputs
    secret_outputs: tuple[str, ...]  # additionalSecretOutputs as sent to the engine
    options: RecordedOptions | None = None

    def input(self, key: str) -> Any:
        """An input's value with any secret wrapper taken off."""
        return rpc.unwrap_rpc_secret(self.inputs.get(key))

    def input_is_secret(self, key: str) -> bool:
        return rpc.is_rpc_secret(self.inputs.get(key))


@dataclass
class Invoke:
    token: str
    args: dict[str, Any]


@dataclass
class StackOutput:
    value: Any
    secret: bool
    known: bool


@dataclass
class Recording:
    preview: bool
    resources: list[RegisteredResource] = field(default_factory=list)
    invokes: list[Invoke] = field(default_factory=list)
    outputs: dict[str, StackOutput] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exception: BaseException | None = None
    # What the event loop reported on its own, e.g. a failed resolver nobody awaited
    # after the program had already failed; kept here instead of printed at exit.
    loop_errors: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> RegisteredResource:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, got {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> RegisteredResource:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)

    def children_of(self, parent: RegisteredResource) -> list[RegisteredResource]:
        return [r for r in self.resources if r.parent_urn == parent.urn]

    def identities(self) -> set[tuple[str, str]]:
        return {(r.type, r.name) for r in self.resources}


# --------------------------------------------------------------------------
# Mock values
# --------------------------------------------------------------------------


def _stable_hex(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def _autoname(name: str) -> str:
    # The provider's autonaming: the logical name plus a random suffix (here stable).
    return f"{name}-{_stable_hex('autoname', name, length=7)}"


def _aws_unique_id(prefix: str, name: str) -> str:
    return prefix + _stable_hex("uid", name, length=17).upper()


def fake_ciphertext_blob(key_arn: str) -> str:
    """Base64 of a KMS-shaped ciphertext blob: version bytes, the key ARN, then 'encrypted' bytes."""
    body = hashlib.sha512(key_arn.encode()).digest() * 2
    return base64.b64encode(b"\x01\x02\x02\x00x" + key_arn.encode() + body).decode()


@dataclass
class _Computed:
    id: str
    outputs: dict[str, Any]
    known_in_preview: frozenset[str] = frozenset()  # e.g. autonames, assigned by the provider's check


class RecordingMocks(pulumi_mocks.Mocks):
    """Returns realistic AWS values and records every registration and invoke."""

    def __init__(
        self, *, preview: bool, stack: str, region: str, caller_session: str, caller_arn: str | None = None
    ) -> None:
        self.preview = preview
        self.stack = stack
        self.region = region
        self.caller_session = caller_session
        self.caller_arn = caller_arn or (
            f"arn:{PARTITION}:sts::{ACCOUNT_ID}:assumed-role/{DEPLOYER_ROLE_NAME}/{caller_session}"
        )
        self.lock = threading.Lock()
        self.registrations: list[RegisteredResource] = []
        self.invokes: list[Invoke] = []

    # -- invokes ----------------------------------------------------------

    def call(self, args: pulumi_mocks.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        with self.lock:
            self.invokes.append(Invoke(args.token, dict(args.args)))
        if args.token == Invokes.CALLER_IDENTITY:
            return {
                "accountId": ACCOUNT_ID,
                "arn": self.caller_arn,
                "id": ACCOUNT_ID,
                "userId": f"{_aws_unique_id('AROA', DEPLOYER_ROLE_NAME)}:{self.caller_session}",
            }
        if args.token == Invokes.PARTITION:
            return {"id": PARTITION, "partition": PARTITION, "dnsSuffix": "amazonaws.com",
                    "reverseDnsPrefix": "com.amazonaws"}
        if args.token == Invokes.SESSION_CONTEXT:
            return self._session_context(str(args.args.get("arn", "")))
        raise NotImplementedError(f"the mocks do not model invoke {args.token}; add it to tests/unit/mocks.py")

    def _computed_ec2(self, typ: str, name: str, inputs: dict[str, Any]) -> _Computed | None:
        """EC2 nodes, their security group, the KMS endpoint and the SSH host key (issue 4)."""
        acct, region, part = ACCOUNT_ID, self.region, PARTITION
        if typ == Types.TLS_PRIVATE_KEY:
            if inputs.get("algorithm") != "ED25519":
                raise NotImplementedError("the mocks model ED25519 host keys only")
            private, public, pem = ed25519_openssh(f"{self.stack}/{name}")
            fingerprint = base64.b64encode(hashlib.sha256(base64.b64decode(public.split()[1])).digest())
            return _Computed(_stable_hex("tls", name, length=40), {
                "privateKeyOpenssh": private,
                "privateKeyPem": pem,
                "privateKeyPemPkcs8": pem,
                "publicKeyOpenssh": public,
                "publicKeyFingerprintSha256": "SHA256:" + fingerprint.decode().rstrip("="),
            })
        if typ == Types.EC2_NETWORK_INTERFACE:
            eni = _ec2_id("eni", name)
            ips = [str(ip) for ip in inputs.get("privateIps") or []] or [_mock_private_ip(name)]
            return _Computed(eni, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:network-interface/{eni}",
                "privateIp": ips[0],
                "privateIps": ips,
                "privateDnsName": f"ip-{ips[0].replace('.', '-')}.{region}.compute.internal",
                "macAddress": "02:" + ":".join(_stable_hex("mac", name, length=10)[i:i + 2] for i in range(0, 10, 2)),
                "ownerId": acct,
            })
        if typ == Types.EBS_VOLUME:
            vol = _ec2_id("vol", name)
            return _Computed(vol, {"arn": f"arn:{part}:ec2:{region}:{acct}:volume/{vol}", "iops": 3000,
                                   "throughput": 125})
        if typ == Types.EC2_INSTANCE:
            instance = _ec2_id("i", name)
            eni = (inputs.get("primaryNetworkInterface") or {}).get("networkInterfaceId")
            return _Computed(instance, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:instance/{instance}",
                "instanceState": "running",
                "primaryNetworkInterfaceId": eni,
            })
        if typ == Types.EC2_VOLUME_ATTACHMENT:
            return _Computed(f"vai-{int(_stable_hex('vai', name, length=8), 16)}", {})
        if typ == Types.EC2_SECURITY_GROUP:
            group = _ec2_id("sg", name)
            group_name = str(inputs.get("name") or _autoname(name))
            return _Computed(group, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:security-group/{group}",
                "name": group_name,
                "ownerId": acct,
            }, frozenset({"name"}))
        if typ in (Types.SG_INGRESS_RULE, Types.SG_EGRESS_RULE):
            rule = _ec2_id("sgr", name)
            return _Computed(rule, {"arn": f"arn:{part}:ec2:{region}:{acct}:security-group-rule/{rule}",
                                    "securityGroupRuleId": rule})
        if typ == Types.EC2_VPC_ENDPOINT:
            endpoint = _ec2_id("vpce", name)
            service = str(inputs.get("serviceName", "")).rsplit(".", 1)[-1]
            return _Computed(endpoint, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:vpc-endpoint/{endpoint}",
                "state": "available",
                "dnsEntries": [{"dnsName": f"{endpoint}.{service}.{region}.vpce.amazonaws.com",
                                "hostedZoneId": "Z7HUB22UULQXV"}],
                "networkInterfaceIds": [_ec2_id("eni", f"{name}/{s}") for s in inputs.get("subnetIds") or []],
            })
        return None

    def _session_context(self, arn: str) -> dict[str, Any]:
        # IAM looks the role up by name and answers with its full ARN, path included.
        prefix = f"arn:{PARTITION}:sts::{ACCOUNT_ID}:assumed-role/{DEPLOYER_ROLE_NAME}/"
        if arn.startswith(prefix):
            return {
                "arn": arn,
                "id": arn,
                "issuerArn": DEPLOYER_ROLE_ARN,
                "issuerId": _aws_unique_id("AROA", DEPLOYER_ROLE_NAME),
                "issuerName": DEPLOYER_ROLE_NAME,
                "sessionName": arn[len(prefix):],
            }
        return {"arn": arn, "id": arn, "issuerArn": arn, "issuerId": "", "issuerName": "", "sessionName": ""}

    # -- resources --------------------------------------------------------

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        request = _CURRENT_REQUEST.request
        inputs = _normalise_unknowns(args.inputs)
        if not args.custom:
            computed = _Computed(id="", outputs={})
        else:
            computed = self._computed(args.typ, args.name, inputs)
        state = {**inputs}
        for key, value in computed.outputs.items():
            state[key] = rpc.UNKNOWN if self.preview and key not in computed.known_in_preview else value
        secret_outputs = tuple(request.additionalSecretOutputs) if request is not None else ()
        for key in secret_outputs:
            if key in state:
                state[key] = rpc.wrap_rpc_secret(state[key])
        resource_id = "" if self.preview else computed.id
        record = RegisteredResource(
            type=args.typ,
            name=args.name,
            urn=request.urn if request is not None else "",
            id=resource_id,
            custom=bool(args.custom),
            inputs=inputs,
            state=state,
            parent_urn=request.parent if request is not None else "",
            dependencies=tuple(request.dependencies) if request is not None else (),
            secret_outputs=tuple(dict.fromkeys(secret_outputs)),
        )
        with self.lock:
            self.registrations.append(record)
        return resource_id, _to_wire(state)

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> _Computed:
        acct, region, part = ACCOUNT_ID, self.region, PARTITION
        if typ == Types.KMS_KEY:
            key_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.stack}/{name}"))
            return _Computed(key_id, {
                "arn": f"arn:{part}:kms:{region}:{acct}:key/{key_id}",
                "keyId": key_id,
                "isEnabled": True,
                "multiRegion": False,
                "tagsAll": inputs.get("tags") or {},
            })
        if typ == Types.KMS_ALIAS:
            alias = str(inputs.get("name") or _autoname(name))
            return _Computed(alias, {
                "name": alias,
                "arn": f"arn:{part}:kms:{region}:{acct}:{alias}",
                "targetKeyArn": f"arn:{part}:kms:{region}:{acct}:key/{inputs.get('targetKeyId')}",
            }, frozenset({"name"}))
        if typ in (Types.IAM_ROLE, Types.IAM_USER, Types.IAM_INSTANCE_PROFILE):
            kind, prefix = {
                Types.IAM_ROLE: ("role", "AROA"),
                Types.IAM_USER: ("user", "AIDA"),
                Types.IAM_INSTANCE_PROFILE: ("instance-profile", "AIPA"),
            }[typ]
            iam_name = str(inputs.get("name") or _autoname(name))
            path = str(inputs.get("path") or "/")
            return _Computed(iam_name, {
                "name": iam_name,
                "arn": f"arn:{part}:iam::{acct}:{kind}{path}{iam_name}",
                "uniqueId": _aws_unique_id(prefix, iam_name),
                "tagsAll": inputs.get("tags") or {},
            }, frozenset({"name"}))
        if typ == Types.IAM_ROLE_POLICY_ATTACHMENT:
            return _Computed(f"{inputs.get('role')}-{_stable_hex(name, length=8)}", {})
        if typ == Types.IAM_ACCESS_KEY:
            return _Computed(_aws_unique_id("AKIA", name)[:20], {
                "secret": PLANTED_ACCESS_KEY_SECRET,
                "sesSmtpPasswordV4": PLANTED_SES_SMTP_PASSWORD,
                "status": "Active",
            })
        if typ == Types.SSM_PARAMETER:
            param = str(inputs.get("name") or "/" + _autoname(name))
            return _Computed(param, {
                "name": param,
                "arn": f"arn:{part}:ssm:{region}:{acct}:parameter{param if param.startswith('/') else '/' + param}",
                "version": 1,
            }, frozenset({"name"}))
        if typ == Types.DATA_KEY:
            # Its outputs are None-valued props, which never reach the monitor; name them here.
            key_arn = str(rpc.unwrap_rpc_secret(inputs.get("key_arn")))
            blob = fake_ciphertext_blob(key_arn)
            return _Computed(f"{name}-{_stable_hex(key_arn, length=12)}", {"ciphertext_blob": blob})
        if typ == Types.REMOTE_COMMAND:
            return _Computed(f"{name}-{_stable_hex(typ, name, length=12)}", _remote_command_output(name, inputs))
        ec2 = self._computed_ec2(typ, name, inputs)
        if ec2 is not None:
            return ec2
        # Not modelled yet: echo the inputs, computed outputs stay absent
        # (unknown in preview, None in up).
        return _Computed(f"{name}-{_stable_hex(typ, name, length=12)}", {})


def _ec2_id(prefix: str, name: str) -> str:
    return f"{prefix}-{_stable_hex(prefix, name, length=17)}"


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


def _mock_private_ip(name: str) -> str:
    digest = hashlib.sha256(f"ip/{name}".encode()).digest()
    return f"10.20.{digest[0]}.{digest[1] % 250 + 4}"


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


def _remote_command_output(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A remote command's stdout/stderr: the verify tool's JSON report for verification commands, else empty."""
    create = str(rpc.unwrap_rpc_secret(inputs.get("create")) or "")
    if "mariadb-kms-verify" in create:
        size = re.search(r"--expect-size (\d+)", create)
        node = name.removesuffix("-verification-run")
        report = canned_verify_report(node, int(size.group(1)) if size else 0)
        return {"stdout": json.dumps(report, indent=2), "stderr": ""}
    return {"stdout": "", "stderr": ""}


class _RequestLocal(threading.local):
    request: Any = None


# The monitor calls new_resource on the same (executor) thread as RegisterResource,
# so a thread-local hands the raw request to new_resource without races.
_CURRENT_REQUEST = _RequestLocal()


class _Request:
    def __init__(self, urn: str, proto: Any) -> None:
        self.urn = urn
        self.parent = proto.parent
        self.dependencies = list(proto.dependencies)
        self.additionalSecretOutputs = list(proto.additionalSecretOutputs)


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, plus the raw request for the recording and loops that get closed.

    The SDK's monitor makes an event loop in every executor thread that calls
    it and never closes them; they would be garbage-collected in some later
    test. Here they are made up front, remembered and closed with the run.
    """

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.thread_loops: list[asyncio.AbstractEventLoop] = []
        self._loops_lock = threading.Lock()

    def _ensure_thread_loop(self) -> None:
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            with self._loops_lock:
                self.thread_loops.append(loop)

    def close_thread_loops(self) -> None:
        with self._loops_lock:
            loops, self.thread_loops = self.thread_loops, []
        for loop in loops:
            loop.close()

    def RegisterResource(self, request: Any) -> Any:
        self._ensure_thread_loop()
        _CURRENT_REQUEST.request = _Request(self.make_urn(request.parent, request.type, request.name), request)
        try:
            return super().RegisterResource(request)
        finally:
            _CURRENT_REQUEST.request = None

    def ReadResource(self, request: Any) -> Any:
        self._ensure_thread_loop()
        return super().ReadResource(request)

    def Invoke(self, request: Any) -> Any:
        self._ensure_thread_loop()
        return super().Invoke(request)


def _normalise_unknowns(value: Any) -> Any:
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {k: _normalise_unknowns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_unknowns(v) for v in value]
    return value


def _to_wire(value: Any) -> Any:
    if isinstance(value, Unknown):
        return rpc.UNKNOWN
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Options, through a stack transformation
# --------------------------------------------------------------------------


@dataclass
class _PendingOptions:
    opts: pulumi.ResourceOptions
    depends_on: list[pulumi.Resource]
    parent: pulumi.Resource | None


class OptionsRecorder:
    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], _PendingOptions] = {}
        self.duplicates: list[tuple[str, str]] = []

    def __call__(self, args: pulumi.ResourceTransformationArgs) -> None:
        opts = args.opts
        deps = opts.depends_on
        if deps is None:
            dep_list: list[pulumi.Resource] = []
        elif isinstance(deps, pulumi.Resource):
            dep_list = [deps]
        elif isinstance(deps, list):
            dep_list = [d for d in deps if isinstance(d, pulumi.Resource)]
            if len(dep_list) != len(deps):
                raise TypeError(f"{args.name}: depends_on holds non-resources; the harness records resources only")
        else:
            raise TypeError(f"{args.name}: depends_on is an Output; the harness records resources only")
        key = (args.type_, args.name)
        if key in self.pending:
            self.duplicates.append(key)
        self.pending[key] = _PendingOptions(opts=opts, depends_on=dep_list, parent=opts.parent)

    async def resolve(self, key: tuple[str, str]) -> RecordedOptions | None:
        p = self.pending.get(key)
        if p is None:
            return None
        deps = tuple([await d.urn.future() or "" for d in p.depends_on])
        parent = await p.parent.urn.future() if p.parent is not None else None
        o = p.opts
        return RecordedOptions(
            protect=o.protect,
            retain_on_delete=o.retain_on_delete,
            delete_before_replace=o.delete_before_replace,
            additional_secret_outputs=tuple(o.additional_secret_outputs or ()),
            ignore_changes=tuple(o.ignore_changes or ()),
            replace_on_changes=tuple(o.replace_on_changes or ()),
            depends_on=deps,
            parent=parent,
        )


# --------------------------------------------------------------------------
# Running the program
# --------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self, recording: Recording) -> None:
        super().__init__(level=logging.WARNING)
        self.recording = recording

    def emit(self, record: logging.LogRecord) -> None:
        target = self.recording.errors if record.levelno >= logging.ERROR else self.recording.warnings
        target.append(record.getMessage())


def config_for_pulumi(config: Mapping[str, Any], region: str | None) -> tuple[dict[str, str], list[str]]:
    """The program's config as the CLI hands it over: namespaced keys, values as strings (JSON for the rest)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        flat[f"{PROJECT}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    if region is not None:
        flat["aws:region"] = region
    secret_keys = [f"{PROJECT}:{k}" for k in SECRET_CONFIG_KEYS if k in config]
    return flat, secret_keys


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
    # Config must come from this call only, never from the environment.
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("PULUMI_CONFIG")}
    for k in saved_env:
        del os.environ[k]
    try:
        recording = contextvars.Context().run(
            _run_isolated, config, preview, region, stack, caller_session, caller_arn, program
        )
    finally:
        os.environ.update(saved_env)
    if recording.exception is not None and not expect_failure:
        raise AssertionError(f"the program failed: {recording.exception!r}; errors: {recording.errors}") from (
            recording.exception
        )
    if recording.exception is None and expect_failure:
        raise AssertionError("the program was expected to fail and did not")
    return recording


def _run_isolated(
    config: Mapping[str, Any], preview: bool, region: str | None, stack: str, caller_session: str,
    caller_arn: str | None, program_fn: Callable[[], None] | None = None,
) -> Recording:
    recording = Recording(preview=preview)
    mocks = RecordingMocks(
        preview=preview, stack=stack, region=region or REGION, caller_session=caller_session, caller_arn=caller_arn
    )
    recorder = OptionsRecorder()
    logger = logging.Logger(f"pulumi-mock-engine-{uuid.uuid4()}")
    logger.addHandler(_ListHandler(recording))
    logger.propagate = False

    monitor = RecordingMonitor(mocks)
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(
        lambda _loop, context: recording.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
    )
    asyncio.set_event_loop(loop)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        pulumi_settings.ROOT.set(None)
        # The SDK's default task set is shared process-wide; give this run its own.
        pulumi_settings.SETTINGS.outputs = set()
        flat, secret_keys = config_for_pulumi(config, region)
        pulumi.runtime.set_all_config(flat, secret_keys)
        pulumi_mocks.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview, logger=logger, monitor=monitor)
        pulumi.runtime.register_stack_transformation(recorder)

        def program() -> None:
            if program_fn is not None:
                program_fn()
            else:
                runpy.run_path(str(MAIN), run_name="__main__")

        try:
            loop.run_until_complete(run_pulumi_func(program))
        except BaseException as exc:
            recording.exception = exc

        if recorder.duplicates:
            raise AssertionError(f"resources registered twice under one type and name: {recorder.duplicates}")
        for reg in mocks.registrations:
            reg.options = loop.run_until_complete(recorder.resolve((reg.type, reg.name)))
        recording.resources = sorted(mocks.registrations, key=lambda r: r.urn)
        recording.invokes = list(mocks.invokes)
        if recording.exception is None:
            recording.outputs = loop.run_until_complete(_stack_outputs())
    finally:
        _close(loop)
        monitor.close_thread_loops()
    return recording


async def _stack_outputs() -> dict[str, StackOutput]:
    root = pulumi_settings.get_root_resource()
    exported: dict[str, Any] = getattr(root, "outputs", {})
    result: dict[str, StackOutput] = {}
    for name, value in exported.items():
        out = pulumi.Output.from_input(value)
        resolved = await out.future(with_unknowns=True)
        result[name] = StackOutput(
            value=_normalise_unknowns(resolved), secret=await out.is_secret(), known=await out.is_known()
        )
    return result


def _close(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


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
