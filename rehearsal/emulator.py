"""The documented translator: the program's recorded AWS side, made real in the KMS emulator.

The rehearsal runs the program under mocks (``rehearsal/recorder``) and, as
the KMS resources register, makes them in moto's KMS server, so every ARN,
key id and blob the program renders afterwards (key policy, unwrap.conf,
user-data, the blob on stdin) names a key that exists and decrypts:

==============================================  ===========================================================
recorded                                        emulator
==============================================  ===========================================================
``aws.kms.Key`` ``description``                 CreateKey ``Description``
``policy`` (the rendered key policy)            CreateKey ``Policy`` (stored; moto enforces no key policy)
``keyUsage``, ``customerMasterKeySpec``         CreateKey ``KeyUsage``, ``KeySpec``
``tags``                                        CreateKey ``Tags``
``multiRegion``                                 CreateKey ``MultiRegion``
``bypassPolicyLockoutSafetyCheck``              CreateKey ``BypassPolicyLockoutSafetyCheck``
``enableKeyRotation``, ``rotationPeriodInDays`` EnableKeyRotation (moto keeps rotation on, ignores the period)
``isEnabled`` false                             DisableKey
``deletionWindowInDays``                        not sent: it applies to ScheduleKeyDeletion only
``aws.kms.Alias`` ``name``, ``targetKeyId``     CreateAlias
``ClusterDataKey``                              the program's own ``DataKeyProvider.create``, unchanged,
                                                with ``endpoint_url`` set to the emulator
``ClusterDataKey`` recorded again, changed      ``DataKeyProvider.diff`` then ``update``, as the engine
                                                calls them (a re-wrap for a new encryption context or,
                                                with ``kmsKeyArn``, onto another key)
==============================================  ===========================================================

With ``iam=True`` (the runner sets it when the KMS server checks IAM
authentication) the on-prem identities are made in moto's IAM too, so a node
signs with a key the emulator issued and a deleted key is refused:

==============================================  ===========================================================
``aws.iam.User`` ``path``, the name             CreateUser; PutUserPolicy ``kms:Decrypt``/``kms:DescribeKey``
                                                (moto enforces identity policies, not the key policy that
                                                grants the node in AWS; the key policy is checked as data)
``aws.iam.AccessKey`` ``user``                  CreateAccessKey: its id and secret are the resource's
a user or key that left the program             DeleteAccessKey / DeleteUser, after the run (the engine's
                                                order: ``ProgramStack.delete_vanished``)
==============================================  ===========================================================

Otherwise IAM, EC2 and networking get realistic mock values
(``rehearsal/aws_values``); the testbed's hosts stand in for the instances,
and the on-prem access keys are generated here (moto's KMS accepts any
credentials while IAM authentication is off). The emulator is a stand-in for
AWS in the rehearsal only, never a default for users.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
from pulumi.runtime import rpc

from components.data_key_provider import P_ENDPOINT, DataKeyProvider
from rehearsal.aws_values import AwsMocks, random_secret_access_key
from rehearsal.kms_server import NODE_POLICY
from rehearsal.recorder import Computed, Types

# The deploying identity the mocks report (moto's default account), and so the role the key policy names.
DEPLOYER_ROLE_NAME = "rehearsal-deployer"


def deployer_role_arn(account_id: str) -> str:
    return f"arn:aws:iam::{account_id}:role/{DEPLOYER_ROLE_NAME}"


def _plain(value: Any) -> Any:
    return rpc.unwrap_rpc_secret(value)


def generated_access_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))


@contextlib.contextmanager
def emulator_credentials(credentials: tuple[str, str] | None = None) -> Iterator[None]:
    """Only made-up credentials reach boto3 while the emulator is used: nothing from the environment or
    ~/.aws (a real profile must never be sent anywhere, not even to a local stand-in). ``credentials``: the
    emulator administrator's own key, when the emulator checks IAM authentication."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_ROLE_ARN",
             "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.pop(n, None)
    key_id, secret = credentials or (generated_access_key_id(), random_secret_access_key())
    os.environ.update({
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


class KmsEmulator:
    """Makes the recorded KMS resources in moto's server at ``endpoint_url`` (see the module docstring)."""

    def __init__(self, endpoint_url: str, region: str, *, credentials: tuple[str, str] | None = None,
                 iam: bool = False) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials = credentials  # the emulator administrator's key when IAM authentication is on
        self.iam = iam  # make the on-prem identities in moto's IAM (see the module docstring)
        self.keys: dict[str, dict[str, Any]] = {}  # key id -> KeyMetadata
        self.aliases: dict[str, str] = {}  # alias name -> key id

    def client(self, service: str = "kms") -> Any:
        # Credentials from emulator_credentials() or the administrator's: made up, never the caller's.
        key_id, secret = self.credentials or (None, None)
        return boto3.session.Session(region_name=self.region).client(
            service, endpoint_url=self.endpoint_url, aws_access_key_id=key_id, aws_secret_access_key=secret,
        )

    def create_user(self, name: str, path: str) -> None:
        iam = self.client("iam")
        iam.create_user(UserName=name, Path=path)
        iam.put_user_policy(UserName=name, PolicyName="node", PolicyDocument=json.dumps(NODE_POLICY))

    def create_access_key(self, user: str) -> tuple[str, str]:
        key = self.client("iam").create_access_key(UserName=user)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def delete_access_key(self, user: str, access_key_id: str) -> None:
        self.client("iam").delete_access_key(UserName=user, AccessKeyId=access_key_id)

    def delete_user(self, name: str) -> None:
        iam = self.client("iam")
        iam.delete_user_policy(UserName=name, PolicyName="node")
        iam.delete_user(UserName=name)

    def create_key(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        kms = self.client()
        request: dict[str, Any] = {
            "Description": str(_plain(inputs.get("description")) or ""),
            "KeyUsage": str(_plain(inputs.get("keyUsage")) or "ENCRYPT_DECRYPT"),
            "KeySpec": str(_plain(inputs.get("customerMasterKeySpec")) or _plain(inputs.get("keySpec"))
                           or "SYMMETRIC_DEFAULT"),
            "MultiRegion": bool(_plain(inputs.get("multiRegion"))),
            "BypassPolicyLockoutSafetyCheck": bool(_plain(inputs.get("bypassPolicyLockoutSafetyCheck"))),
        }
        policy = _plain(inputs.get("policy"))
        if policy:
            request["Policy"] = str(policy)
        tags = _plain(inputs.get("tags")) or {}
        if tags:
            request["Tags"] = [{"TagKey": str(k), "TagValue": str(v)} for k, v in dict(tags).items()]
        metadata: dict[str, Any] = kms.create_key(**request)["KeyMetadata"]
        key_id = str(metadata["KeyId"])
        if _plain(inputs.get("enableKeyRotation")):
            rotation: dict[str, Any] = {"KeyId": key_id}
            period = _plain(inputs.get("rotationPeriodInDays"))
            if period:
                rotation["RotationPeriodInDays"] = int(period)
            kms.enable_key_rotation(**rotation)
        if _plain(inputs.get("isEnabled")) is False:
            kms.disable_key(KeyId=key_id)
        self.keys[key_id] = metadata
        return metadata

    def create_alias(self, inputs: Mapping[str, Any]) -> str:
        name = str(_plain(inputs.get("name")) or "")
        target = str(_plain(inputs.get("targetKeyId")) or "")
        if not name.startswith("alias/") or not target:
            raise ValueError(f"aws.kms.Alias: cannot translate name={name!r} targetKeyId={target!r}")
        self.client().create_alias(AliasName=name, TargetKeyId=target)
        self.aliases[name] = target
        return name

    def make_data_key(self, inputs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The program's dynamic provider, unchanged, pointed at the emulator."""
        props = {k: _plain(v) for k, v in inputs.items() if not k.startswith("__")}
        props[P_ENDPOINT] = self.endpoint_url
        provider = DataKeyProvider()
        checked = provider.check({}, props)
        if checked.failures:
            raise ValueError(f"the data key's inputs fail the provider's check: {checked.failures}")
        result = provider.create(dict(checked.inputs or props))
        return str(result.id), dict(result.outs or {})

    def update_data_key(self, resource_id: str, olds: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
        """What the engine does with the data key on a later ``up``: the provider's diff, then its update.

        A replacement is refused, as Pulumi refuses it for the protected resource.
        """
        news = {k: _plain(v) for k, v in inputs.items() if not k.startswith("__")}
        news[P_ENDPOINT] = self.endpoint_url
        provider = DataKeyProvider()
        checked = provider.check(dict(olds), news)
        if checked.failures:
            raise ValueError(f"the data key's inputs fail the provider's check: {checked.failures}")
        news = dict(checked.inputs or news)
        diff = provider.diff(resource_id, dict(olds), news)
        if diff.replaces:
            raise ValueError(f"the data key would be replaced ({diff.replaces}); it is protected, Pulumi refuses")
        if not diff.changes:
            return dict(olds)
        return dict(provider.update(resource_id, dict(olds), news).outs or {})


class EmulatedMocks(AwsMocks):
    """The rehearsal's provider answers: the KMS side from the emulator, EC2 addresses from the testbed.

    ``addresses`` maps each EC2 node's network interface name (``<node>-eni``)
    to its testbed address. The on-prem access key is generated per run; its
    secret stays in this process (and reaches the node on stdin, like every
    secret of the program).
    """

    def __init__(self, *, emulator: KmsEmulator, addresses: Mapping[str, str], stack: str, region: str,
                 account_id: str) -> None:
        super().__init__(
            preview=False, stack=stack, region=region, deployer_role_name=DEPLOYER_ROLE_NAME,
            deployer_role_arn=deployer_role_arn(account_id), caller_session="make-demo", account_id=account_id,
        )
        self.emulator = emulator
        self.addresses = dict(addresses)

    def kms_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        metadata = self.emulator.create_key(inputs)
        return Computed(str(metadata["KeyId"]), {
            "arn": str(metadata["Arn"]),
            "keyId": str(metadata["KeyId"]),
            "isEnabled": bool(metadata.get("Enabled", True)),
            "multiRegion": bool(metadata.get("MultiRegion", False)),
            "tagsAll": inputs.get("tags") or {},
        })

    def kms_alias(self, name: str, inputs: dict[str, Any]) -> Computed:
        computed = super().kms_alias(name, inputs)
        self.emulator.create_alias(inputs)
        key_id = str(_plain(inputs.get("targetKeyId")))
        arn = self.emulator.keys.get(key_id, {}).get("Arn")
        if arn:
            computed.outputs["targetKeyArn"] = str(arn)
        return computed

    def data_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        resource_id, outputs = self.emulator.make_data_key(inputs)
        return Computed(resource_id, outputs)

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        found = super().computed(typ, name, inputs)
        if typ == Types.IAM_USER and self.emulator.iam:
            self.emulator.create_user(str(found.outputs["name"]), str(_plain(inputs.get("path")) or "/"))
        return found

    def access_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        if self.emulator.iam:
            key_id, secret = self.emulator.create_access_key(str(_plain(inputs.get("user"))))
            return Computed(key_id, {"secret": secret, "sesSmtpPasswordV4": "B" + random_secret_access_key()[:43],
                                     "status": "Active", "user": str(_plain(inputs.get("user")))})
        return Computed(generated_access_key_id(), {
            "secret": random_secret_access_key(),
            "sesSmtpPasswordV4": "B" + random_secret_access_key()[:43],
            "status": "Active",
        })

    def network_interface_ips(self, name: str, inputs: dict[str, Any]) -> list[str]:
        if name not in self.addresses:
            raise KeyError(f"{name}: no testbed address for this network interface (have {sorted(self.addresses)})")
        wanted = [str(ip) for ip in inputs.get("privateIps") or []]
        if wanted and wanted[0] != self.addresses[name]:
            raise ValueError(
                f"{name}: privateIp {wanted[0]} in config, but the testbed host has {self.addresses[name]}"
            )
        return [self.addresses[name]]
