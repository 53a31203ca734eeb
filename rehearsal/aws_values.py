"""Realistic provider answers for the recorder: AWS ids and ARNs, pulumi-tls keys, empty command output.

``AwsMocks`` answers every resource the program registers the way its
provider would, with ids and ARNs of the right shape derived from the
resource's name (stable across runs, so two recordings compare). The values a
caller may want to choose are hooks:

- ``kms_key`` / ``kms_alias`` / ``data_key``: the unit tests take made-up
  ones; the rehearsal makes them in the KMS emulator (``rehearsal/emulator``);
- ``access_key``: the on-prem IAM user's key (the unit tests plant known
  secrets; otherwise a fresh random one, never derived from the name);
- ``private_key``: pulumi-tls keys (real, random by default: the rehearsal
  pins them as SSH host keys);
- ``network_interface_ips``: an EC2 node's address;
- ``remote_command``: what a remote command printed.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
import uuid
from collections.abc import Callable
from typing import Any

from pulumi.runtime import rpc

from rehearsal import tls_values
from rehearsal.recorder import Computed, Invokes, RecordingMocks, Types

ACCOUNT_ID = "123456789012"  # also moto's default account, so emulator ARNs and mock ARNs agree
PARTITION = "aws"
GET_SUBNET = "aws:ec2/getSubnet:getSubnet"


def stable_hex(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def autoname(name: str) -> str:
    # The provider's autonaming: the logical name plus a random suffix (here stable).
    return f"{name}-{stable_hex('autoname', name, length=7)}"


def aws_unique_id(prefix: str, name: str) -> str:
    return prefix + stable_hex("uid", name, length=17).upper()


def ec2_id(prefix: str, name: str) -> str:
    return f"{prefix}-{stable_hex(prefix, name, length=17)}"


def mock_private_ip(name: str) -> str:
    digest = hashlib.sha256(f"ip/{name}".encode()).digest()
    return f"10.20.{digest[0]}.{digest[1] % 250 + 4}"


def fake_ciphertext_blob(key_arn: str) -> str:
    """Base64 of a KMS-shaped ciphertext blob: version bytes, the key ARN, then 'encrypted' bytes."""
    body = hashlib.sha512(key_arn.encode()).digest() * 2
    return base64.b64encode(b"\x01\x02\x02\x00x" + key_arn.encode() + body).decode()


def plain(value: Any) -> Any:
    """``value`` with every secret wrapper taken off, at any depth (a secret output fed into an input)."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def random_secret_access_key() -> str:
    """40 characters of the alphabet AWS uses for secret access keys."""
    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


_CERT_OUTPUTS = ("certPem", "validityStartTime", "validityEndTime", "readyForRenewal")
_TLS_CERTIFICATES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], tuple[str, ...]]] = {
    Types.TLS_SELF_SIGNED_CERT: (tls_values.self_signed_cert, (*_CERT_OUTPUTS, "keyAlgorithm")),
    Types.TLS_CERT_REQUEST: (tls_values.cert_request, ("certRequestPem", "keyAlgorithm")),
    Types.TLS_LOCALLY_SIGNED_CERT: (tls_values.locally_signed_cert, (*_CERT_OUTPUTS, "caKeyAlgorithm")),
}


class AwsMocks(RecordingMocks):
    """Returns realistic AWS values for every resource and invoke the program uses."""

    def __init__(
        self,
        *,
        preview: bool,
        stack: str,
        region: str,
        deployer_role_name: str,
        deployer_role_arn: str,
        caller_session: str,
        caller_arn: str | None = None,
        account_id: str = ACCOUNT_ID,
        partition: str = PARTITION,
    ) -> None:
        super().__init__(preview=preview)
        self.stack = stack
        self.region = region
        self.account_id = account_id
        self.partition = partition
        self.deployer_role_name = deployer_role_name
        self.deployer_role_arn = deployer_role_arn
        self.caller_session = caller_session
        self.caller_arn = caller_arn or (
            f"arn:{partition}:sts::{account_id}:assumed-role/{deployer_role_name}/{caller_session}"
        )

    # -- hooks ------------------------------------------------------------

    def kms_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        key_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.stack}/{name}"))
        return Computed(key_id, {
            "arn": f"arn:{self.partition}:kms:{self.region}:{self.account_id}:key/{key_id}",
            "keyId": key_id,
            "isEnabled": True,
            "multiRegion": False,
            "tagsAll": inputs.get("tags") or {},
        })

    def kms_alias(self, name: str, inputs: dict[str, Any]) -> Computed:
        alias = str(inputs.get("name") or autoname(name))
        return Computed(alias, {
            "name": alias,
            "arn": f"arn:{self.partition}:kms:{self.region}:{self.account_id}:{alias}",
            "targetKeyArn": f"arn:{self.partition}:kms:{self.region}:{self.account_id}:key/{inputs.get('targetKeyId')}",
        }, frozenset({"name"}))

    def data_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        # Its outputs are None-valued props, which never reach the monitor; name them here.
        key_arn = str(rpc.unwrap_rpc_secret(inputs.get("key_arn")))
        return Computed(f"{name}-{stable_hex(key_arn, length=12)}", {"ciphertext_blob": fake_ciphertext_blob(key_arn)})

    def access_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        return Computed(aws_unique_id("AKIA", name)[:20], {
            "secret": random_secret_access_key(),
            "sesSmtpPasswordV4": "B" + random_secret_access_key()[:43],
            "status": "Active",
        })

    def private_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        return Computed(stable_hex("tls", name, length=40), tls_values.private_key(plain(inputs)))

    def network_interface_ips(self, name: str, inputs: dict[str, Any]) -> list[str]:
        return [str(ip) for ip in inputs.get("privateIps") or []] or [mock_private_ip(name)]

    def remote_command(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"stdout": "", "stderr": ""}

    def subnet_zone(self, subnet_id: str) -> str:
        """The availability zone a subnet is in (stable per subnet id)."""
        return self.region + "abc"[int(stable_hex("az", subnet_id), 16) % 3]

    def ec2_id(self, prefix: str, name: str) -> str:
        """An EC2 resource id (``i-``, ``vol-``, ``eni-``...) for the resource named ``name``."""
        return ec2_id(prefix, name)

    # -- invokes ----------------------------------------------------------

    def invoke(self, token: str, args: dict[str, Any]) -> dict[str, Any]:
        if token == Invokes.CALLER_IDENTITY:
            return {
                "accountId": self.account_id,
                "arn": self.caller_arn,
                "id": self.account_id,
                "userId": f"{aws_unique_id('AROA', self.deployer_role_name)}:{self.caller_session}",
            }
        if token == Invokes.PARTITION:
            return {"id": self.partition, "partition": self.partition, "dnsSuffix": "amazonaws.com",
                    "reverseDnsPrefix": "com.amazonaws"}
        if token == Invokes.SESSION_CONTEXT:
            return self._session_context(str(args.get("arn", "")))
        if token == GET_SUBNET:
            subnet = str(args.get("id", ""))
            return {"id": subnet, "availabilityZone": self.subnet_zone(subnet), "vpcId": "", "cidrBlock": ""}
        raise NotImplementedError(f"the mocks do not model invoke {token}; add it to rehearsal/aws_values.py")

    def _session_context(self, arn: str) -> dict[str, Any]:
        # IAM looks the role up by name and answers with its full ARN, path included.
        prefix = f"arn:{self.partition}:sts::{self.account_id}:assumed-role/{self.deployer_role_name}/"
        if arn.startswith(prefix):
            return {
                "arn": arn,
                "id": arn,
                "issuerArn": self.deployer_role_arn,
                "issuerId": aws_unique_id("AROA", self.deployer_role_name),
                "issuerName": self.deployer_role_name,
                "sessionName": arn[len(prefix):],
            }
        return {"arn": arn, "id": arn, "issuerArn": arn, "issuerId": "", "issuerName": "", "sessionName": ""}

    # -- resources --------------------------------------------------------

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        acct, region, part = self.account_id, self.region, self.partition
        if typ == Types.KMS_KEY:
            return self.kms_key(name, inputs)
        if typ == Types.KMS_ALIAS:
            return self.kms_alias(name, inputs)
        if typ in (Types.IAM_ROLE, Types.IAM_USER, Types.IAM_INSTANCE_PROFILE):
            kind, prefix = {
                Types.IAM_ROLE: ("role", "AROA"),
                Types.IAM_USER: ("user", "AIDA"),
                Types.IAM_INSTANCE_PROFILE: ("instance-profile", "AIPA"),
            }[typ]
            iam_name = str(inputs.get("name") or autoname(name))
            path = str(inputs.get("path") or "/")
            return Computed(iam_name, {
                "name": iam_name,
                "arn": f"arn:{part}:iam::{acct}:{kind}{path}{iam_name}",
                "uniqueId": aws_unique_id(prefix, iam_name),
                "tagsAll": inputs.get("tags") or {},
            }, frozenset({"name"}))
        if typ == Types.IAM_ROLE_POLICY_ATTACHMENT:
            return Computed(f"{inputs.get('role')}-{stable_hex(name, length=8)}", {})
        if typ == Types.IAM_ACCESS_KEY:
            return self.access_key(name, inputs)
        if typ == Types.SSM_PARAMETER:
            param = str(inputs.get("name") or "/" + autoname(name))
            return Computed(param, {
                "name": param,
                "arn": f"arn:{part}:ssm:{region}:{acct}:parameter{param if param.startswith('/') else '/' + param}",
                "version": 1,
            }, frozenset({"name"}))
        if typ == Types.DATA_KEY:
            return self.data_key(name, inputs)
        if typ == Types.REMOTE_COMMAND:
            return Computed(f"{name}-{stable_hex(typ, name, length=12)}", self.remote_command(name, inputs))
        if typ == Types.TLS_PRIVATE_KEY:
            return self.private_key(name, inputs)
        if typ in _TLS_CERTIFICATES:
            make, outputs = _TLS_CERTIFICATES[typ]
            if self.preview:
                # The signing inputs are unknown in a preview, and so is every computed output.
                return Computed(stable_hex("cert", name, length=32), dict.fromkeys(outputs, ""))
            return Computed(stable_hex("cert", name, length=32), make(plain(inputs)))
        ec2 = self._computed_ec2(typ, name, inputs)
        if ec2 is not None:
            return ec2
        # Not modelled: echo the inputs, computed outputs stay absent
        # (unknown in preview, None in up).
        return Computed(f"{name}-{stable_hex(typ, name, length=12)}", {})

    def _computed_ec2(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed | None:
        """EC2 nodes, their security group and the KMS endpoint."""
        acct, region, part = self.account_id, self.region, self.partition
        if typ == Types.EC2_NETWORK_INTERFACE:
            eni = self.ec2_id("eni", name)
            ips = self.network_interface_ips(name, inputs)
            return Computed(eni, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:network-interface/{eni}",
                "privateIp": ips[0],
                "privateIps": ips,
                "privateDnsName": f"ip-{ips[0].replace('.', '-')}.{region}.compute.internal",
                "macAddress": "02:" + ":".join(stable_hex("mac", name, length=10)[i:i + 2] for i in range(0, 10, 2)),
                "ownerId": acct,
            })
        if typ == Types.EBS_VOLUME:
            vol = self.ec2_id("vol", name)
            return Computed(vol, {"arn": f"arn:{part}:ec2:{region}:{acct}:volume/{vol}", "iops": 3000,
                                  "throughput": 125})
        if typ == Types.EC2_INSTANCE:
            instance = self.ec2_id("i", name)
            primary = (inputs.get("primaryNetworkInterface") or {}).get("networkInterfaceId")
            return Computed(instance, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:instance/{instance}",
                "instanceState": "running",
                "primaryNetworkInterfaceId": primary,
            })
        if typ == Types.EC2_VOLUME_ATTACHMENT:
            return Computed(f"vai-{int(stable_hex('vai', name, length=8), 16)}", {})
        if typ == Types.EC2_SECURITY_GROUP:
            group = self.ec2_id("sg", name)
            group_name = str(inputs.get("name") or autoname(name))
            return Computed(group, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:security-group/{group}",
                "name": group_name,
                "ownerId": acct,
            }, frozenset({"name"}))
        if typ in (Types.SG_INGRESS_RULE, Types.SG_EGRESS_RULE):
            rule = self.ec2_id("sgr", name)
            return Computed(rule, {"arn": f"arn:{part}:ec2:{region}:{acct}:security-group-rule/{rule}",
                                   "securityGroupRuleId": rule})
        if typ == Types.EC2_VPC_ENDPOINT:
            endpoint = self.ec2_id("vpce", name)
            service = str(inputs.get("serviceName", "")).rsplit(".", 1)[-1]
            return Computed(endpoint, {
                "arn": f"arn:{part}:ec2:{region}:{acct}:vpc-endpoint/{endpoint}",
                "state": "available",
                "dnsEntries": [{"dnsName": f"{endpoint}.{service}.{region}.vpce.amazonaws.com",
                                "hostedZoneId": "Z7HUB22UULQXV"}],
                "networkInterfaceIds": [self.ec2_id("eni", f"{name}/{s}") for s in inputs.get("subnetIds") or []],
            })
        return None
