"""Typed, validated stack configuration.

One source of truth for every config key: its Pulumi type, default and
description live in ``SCHEMA``; ``Pulumi.yaml`` must agree with it (a unit
test checks). ``parse_config`` is pure (no pulumi import) so every rule is
tested directly; it reports *all* errors at once, each naming the key, the bad
value and what was expected, before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

PROJECT = "mariadb-kms"

KEY_MANAGEMENT_MODES = ("kms-envelope", "aws-plugin")
ENCRYPT_TABLES_VALUES = ("OFF", "ON", "FORCE")
DATADIR_ENCRYPTION_MODES = ("fscrypt", "luks", "none")  # onPremDatadirEncryption: docs/at-rest.md

_ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_PRINCIPAL_ARN = re.compile(r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:(role|user)/[\w+=,.@/-]{1,512}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_ALIAS = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
_NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SIZE = re.compile(r"^[1-9][0-9]*[KMG]?$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_VPC = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_VPCE = re.compile(r"^vpce-[0-9a-f]{8,17}$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_HOST_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}( \S.*)?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PLUGIN_SOURCE = re.compile(r"^(/[^\0]+|https://\S+)$")
_TAG_KEY = re.compile(r"^[\w .:/=+@-]{1,128}$")


# --------------------------------------------------------------------------
# The schema: every key, its Pulumi.yaml type, default and description.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str | None  # string, integer, boolean, array; None = object (untyped in Pulumi.yaml)
    description: str
    default: Any = None  # None = required, or derived (see ``derived``)
    required: bool = False
    secret: bool = False
    derived: str = ""  # how the default is computed when it depends on the stack


SCHEMA: tuple[ConfigKey, ...] = (
    ConfigKey(
        "keyAdmins",
        "array",
        "Role ARNs that administer the KMS key (at least one, two recommended). They can never decrypt.",
        required=True,
    ),
    ConfigKey(
        "deployers",
        "array",
        "Role ARNs allowed to wrap data keys and use the key through EC2 for EBS. Empty: the identity running `pulumi up`, normalised to its role ARN.",
        default=[],
    ),
    ConfigKey(
        "keyAlias",
        "string",
        "KMS alias for the key; must start with `alias/`. Empty: `alias/mariadb-kms-<stack>`.",
        default="",
        derived="alias/mariadb-kms-<stack>",
    ),
    ConfigKey("keyRotationPeriodDays", "integer", "Automatic key rotation period in days (90..2560).", default=365),
    ConfigKey(
        "keyDeletionWindowDays", "integer", "Days a scheduled key deletion can still be cancelled (7..30).", default=30
    ),
    ConfigKey(
        "allowAccountRootIamDelegation",
        "boolean",
        "Let IAM policies in this account grant use of the key (account-root statement). Off: only the key policy grants, so a deleted admin role locks the key until AWS support restores it.",
        default=False,
    ),
    ConfigKey(
        "onPremEgressCidrs",
        "array",
        "Public CIDRs the on-prem nodes reach KMS from (aws:SourceIp). Empty: no source-IP condition. Not seen through VPC endpoints.",
        default=[],
    ),
    ConfigKey(
        "kmsVpcEndpointId",
        "string",
        "If set (vpce-...), the EC2 node role may use the key only through this KMS VPC endpoint (aws:SourceVpce).",
        default="",
    ),
    ConfigKey(
        "attachSsmManagedPolicy", "boolean", "Attach AmazonSSMManagedInstanceCore to the EC2 node role.", default=False
    ),
    ConfigKey(
        "escrowDataKeyInSsm",
        "boolean",
        "Also store the cluster data key's ciphertext blob in an SSM SecureString parameter.",
        default=False,
    ),
    ConfigKey(
        "keyManagement",
        "string",
        "How MariaDB gets its key: `kms-envelope` (stock packages, file_key_management) or `aws-plugin` (aws_key_management, needs awsPluginSource).",
        default="kms-envelope",
    ),
    ConfigKey(
        "awsPluginSource",
        "string",
        "Where nodes get the aws_key_management plugin (.so): an absolute path on the node or an https URL. Required for `aws-plugin`.",
        default="",
    ),
    ConfigKey(
        "encryptTables",
        "string",
        "innodb_encrypt_tables: OFF, ON or FORCE (FORCE refuses unencrypted tables).",
        default="FORCE",
    ),
    ConfigKey("encryptionThreads", "integer", "innodb_encryption_threads (1..255).", default=4),
    ConfigKey(
        "gcacheSize", "string", "Galera gcache size (kept on tmpfs, so it costs memory), e.g. 256M, 1G.", default="256M"
    ),
    ConfigKey("generalLog", "boolean", "Enable the general query log (holds query text in plaintext).", default=False),
    ConfigKey("slowQueryLog", "boolean", "Enable the slow query log (holds query text in plaintext).", default=False),
    ConfigKey(
        "onPremDatadirEncryption",
        "string",
        "How on-prem nodes encrypt the datadir below MariaDB: `fscrypt` (ext4 volume made with -O encrypt, key derived "
        "from the cluster data key), `luks` (your dm-crypt volume) or `none` (stated as a gap).",
        default="fscrypt",
    ),
    ConfigKey("clusterName", "string", "wsrep_cluster_name.", default="mariadb-kms"),
    ConfigKey(
        "ec2Nodes",
        None,
        "EC2 nodes: list of {name, subnetId, availabilityZone, instanceType?, dataVolumeGiB?, privateIp?}.",
        default=[],
    ),
    ConfigKey(
        "onPremNodes",
        None,
        "On-prem nodes: list of {name, address, sshUser, hostKey, sshPort?, egressCidr?}.",
        default=[],
    ),
    ConfigKey("vpcId", "string", "VPC of the EC2 nodes (required when ec2Nodes is not empty).", default=""),
    ConfigKey(
        "amiId", "string", "Pinned Debian 12 AMI for EC2 nodes (required when ec2Nodes is not empty).", default=""
    ),
    ConfigKey("createKmsVpcEndpoint", "boolean", "Create a KMS interface VPC endpoint with private DNS, for nodes in private subnets (they must reach KMS on 443).", default=False),
    ConfigKey("kmsEndpointSubnetIds", "array", "Subnets for that endpoint. Empty: one node subnet per availability zone.", default=[]),
    ConfigKey("adminCidrs", "array", "CIDRs allowed to reach EC2 nodes on SSH (22).", default=[]),
    ConfigKey("clientCidrs", "array", "CIDRs allowed to reach EC2 nodes on MariaDB (3306).", default=[]),
    ConfigKey("onPremCidrs", "array", "CIDRs of on-prem Galera members, allowed on 4567/4568/4444.", default=[]),
    ConfigKey(
        "sshPrivateKey",
        "string",
        "Private key the program logs in with over SSH (set with --secret).",
        default="",
        secret=True,
    ),
    ConfigKey("sshAuthorizedKey", "string", "Public half of sshPrivateKey, installed on EC2 nodes.", default=""),
    ConfigKey(
        "bootstrapNode",
        "string",
        "Node that runs galera_new_cluster once. Empty: the first node.",
        default="",
        derived="first node",
    ),
    ConfigKey(
        "verifyOnEveryUp",
        "boolean",
        "Re-run the verification on every `pulumi up`, not only when a node changes.",
        default=False,
    ),
    ConfigKey(
        "tlsReplication",
        "boolean",
        "Encrypt Galera replication and IST (4567, 4568) with TLS under the cluster CA. Off only deliberately: the verification then accepts plaintext on this channel.",
        default=True,
    ),
    ConfigKey(
        "tlsSst",
        "boolean",
        "Encrypt SST (mariabackup through socat with OpenSSL, 4444); donor and joiner each verify the other against the cluster CA.",
        default=True,
    ),
    ConfigKey(
        "tlsClients",
        "boolean",
        "Serve client connections (3306) with TLS under the node's certificate (TLSv1.2 and TLSv1.3 only).",
        default=True,
    ),
    ConfigKey(
        "requireSecureTransport",
        "boolean",
        "require_secure_transport: refuse TCP client connections without TLS (needs tlsClients).",
        default=True,
    ),
    ConfigKey("tlsValidityDays", "integer", "Validity of each node certificate in days (2..3650).", default=365),
    ConfigKey(
        "tlsEarlyRenewalDays",
        "integer",
        "`pulumi up` renews a node certificate once fewer than this many days remain (1..tlsValidityDays-1), one node at a time.",
        default=30,
    ),
    ConfigKey(
        "tlsCaValidityDays",
        "integer",
        "Validity of the cluster root CA in days (more than tlsValidityDays, up to 36500). It is renewed with the same key when less than tlsValidityDays remain.",
        default=3650,
    ),
    ConfigKey("sshJumpHost", None, "Optional bastion every SSH connection goes through: {host, user, hostKey, port?}; its host key is pinned too.", default={}),
    ConfigKey("tags", None, "Tags added to every taggable AWS resource (map of string to string).", default={}),
)

SCHEMA_BY_NAME = {k.name: k for k in SCHEMA}


# --------------------------------------------------------------------------
# Typed result
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ec2NodeConfig:
    name: str
    subnet_id: str
    availability_zone: str
    instance_type: str = "t3.medium"
    data_volume_gib: int = 50
    private_ip: str | None = None
    kind: str = "ec2"


@dataclass(frozen=True)
class OnPremNodeConfig:
    name: str
    address: str
    ssh_user: str
    host_key: str
    ssh_port: int = 22
    egress_cidr: str | None = None
    kind: str = "onprem"


NodeConfig = Ec2NodeConfig | OnPremNodeConfig


@dataclass(frozen=True)
class JumpHostConfig:
    host: str
    user: str
    host_key: str
    port: int = 22


@dataclass(frozen=True)
class KeyConfig:
    alias: str
    admins: tuple[str, ...]
    deployers: tuple[str, ...]  # empty: the deploying identity
    rotation_period_days: int
    deletion_window_days: int
    allow_account_root_iam_delegation: bool
    onprem_egress_cidrs: tuple[str, ...]
    kms_vpc_endpoint_id: str | None
    escrow_in_ssm: bool


@dataclass(frozen=True)
class MariaDbSettings:
    key_management: str
    aws_plugin_source: str | None
    encrypt_tables: str
    encryption_threads: int
    gcache_size: str
    general_log: bool
    slow_query_log: bool
    cluster_name: str
    onprem_datadir_encryption: str = "fscrypt"


@dataclass(frozen=True)
class NetworkConfig:
    vpc_id: str | None
    ami_id: str | None
    create_kms_vpc_endpoint: bool
    kms_endpoint_subnet_ids: tuple[str, ...]
    admin_cidrs: tuple[str, ...]
    client_cidrs: tuple[str, ...]
    onprem_cidrs: tuple[str, ...]


@dataclass(frozen=True)
class TlsConfig:
    """Encryption in transit, per channel; every channel is on unless config turns it off."""

    replication: bool = True  # Galera replication and IST
    sst: bool = True
    clients: bool = True
    require_secure_transport: bool = True
    validity_days: int = 365
    early_renewal_days: int = 30
    ca_validity_days: int = 3650

    @property
    def any_channel(self) -> bool:
        """Whether nodes need certificates at all."""
        return self.replication or self.sst or self.clients


@dataclass(frozen=True)
class ClusterConfig:
    stack: str
    region: str
    key: KeyConfig
    mariadb: MariaDbSettings
    network: NetworkConfig
    ec2_nodes: tuple[Ec2NodeConfig, ...]
    onprem_nodes: tuple[OnPremNodeConfig, ...]
    bootstrap_node: str
    attach_ssm_policy: bool
    verify_on_every_up: bool
    ssh_authorized_key: str | None
    tags: Mapping[str, str]
    warnings: tuple[str, ...] = ()
    jump_host: JumpHostConfig | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)

    @property
    def nodes(self) -> tuple[NodeConfig, ...]:
        return (*self.ec2_nodes, *self.onprem_nodes)


class ConfigError(ValueError):
    """All configuration errors, reported together."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} configuration error(s):\n{lines}")


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


@dataclass
class _Collector:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.errors.append(f"{PROJECT}:{key} = {value!r}: expected {expected}")


def _typed(c: _Collector, raw: Mapping[str, Any], name: str) -> Any:
    """The raw value with the schema's default, checked against the schema type."""
    spec = SCHEMA_BY_NAME[name]
    if name not in raw or raw[name] is None:
        if spec.required:
            c.bad(name, None, f"a value ({spec.description})")
            return None
        return spec.default
    value = raw[name]
    checks: dict[str | None, tuple[Callable[[Any], bool], str]] = {
        "string": (lambda v: isinstance(v, str), "a string"),
        "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "boolean": (lambda v: isinstance(v, bool), "true or false"),
        "array": (lambda v: isinstance(v, list), "a list"),
    }
    if spec.type in checks:
        ok, what = checks[spec.type]
        if not ok(value):
            c.bad(name, value, what)
            return None
    return value


def _cidr_list(c: _Collector, key: str, values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    out = []
    for v in values:
        if _is_cidr(v):
            out.append(str(v))
        else:
            c.bad(key, v, "a CIDR such as 203.0.113.0/24")
    return tuple(out)


def _is_cidr(v: Any) -> bool:
    if not isinstance(v, str) or "/" not in v:
        return False
    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError:
        return False
    return True


def _is_ip(v: Any) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def _int_in(c: _Collector, key: str, value: Any, lo: int, hi: int) -> int:
    if value is None:
        return lo
    if not lo <= value <= hi:
        c.bad(key, value, f"an integer from {lo} to {hi}")
    return int(value)


def _one_of(c: _Collector, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value is not None and value not in choices:
        c.bad(key, value, "one of " + ", ".join(choices))
    return str(value)


def _node_fields(
    c: _Collector, key: str, i: int | None, item: Any, required: dict[str, str], optional: set[str]
) -> dict[str, Any] | None:
    where = key if i is None else f"{key}[{i}]"
    if not isinstance(item, dict):
        c.bad(where, item, "an object with " + ", ".join(required))
        return None
    for f in sorted(set(item) - set(required) - optional):
        c.bad(f"{where}.{f}", item[f], "no such field (known: " + ", ".join([*required, *sorted(optional)]) + ")")
    ok = True
    for f, what in required.items():
        if f not in item or item[f] in (None, ""):
            c.bad(f"{where}.{f}", item.get(f), what)
            ok = False
    return item if ok else None


def _ec2_nodes(c: _Collector, raw: Any) -> list[Ec2NodeConfig]:
    if not isinstance(raw, list):
        c.bad("ec2Nodes", raw, "a list of node objects")
        return []
    nodes = []
    for i, item in enumerate(raw):
        d = _node_fields(
            c,
            "ec2Nodes",
            i,
            item,
            {
                "name": "a node name",
                "subnetId": "a subnet id (subnet-...)",
                "availabilityZone": "an availability zone such as eu-west-1a",
            },
            {"instanceType", "dataVolumeGiB", "privateIp"},
        )
        if d is None:
            continue
        w = f"ec2Nodes[{i}]"
        if not _SUBNET.match(str(d["subnetId"])):
            c.bad(f"{w}.subnetId", d["subnetId"], "a subnet id such as subnet-0123456789abcdef0")
        if not re.match(r"^[a-z]{2}(-gov)?-[a-z]+-\d{1,2}[a-z]$", str(d["availabilityZone"])):
            c.bad(f"{w}.availabilityZone", d["availabilityZone"], "an availability zone such as eu-west-1a")
        itype = d.get("instanceType", "t3.medium")
        if not isinstance(itype, str) or not _INSTANCE_TYPE.match(itype):
            c.bad(f"{w}.instanceType", itype, "an EC2 instance type such as t3.medium")
        size = d.get("dataVolumeGiB", 50)
        if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 16384:
            c.bad(f"{w}.dataVolumeGiB", size, "an integer from 8 to 16384")
            size = 50
        ip = d.get("privateIp")
        if ip is not None and not _is_ip(ip):
            c.bad(f"{w}.privateIp", ip, "an IPv4 address inside the subnet")
        nodes.append(
            Ec2NodeConfig(
                name=str(d["name"]),
                subnet_id=str(d["subnetId"]),
                availability_zone=str(d["availabilityZone"]),
                instance_type=str(itype),
                data_volume_gib=int(size),
                private_ip=ip,
            )
        )
    return nodes


def _onprem_nodes(c: _Collector, raw: Any) -> list[OnPremNodeConfig]:
    if not isinstance(raw, list):
        c.bad("onPremNodes", raw, "a list of node objects")
        return []
    nodes = []
    for i, item in enumerate(raw):
        d = _node_fields(
            c,
            "onPremNodes",
            i,
            item,
            {
                "name": "a node name",
                "address": "the node's IP address or DNS name",
                "sshUser": "the SSH login user",
                "hostKey": "the node's pinned SSH host public key, e.g. 'ssh-ed25519 AAAA...'",
            },
            {"sshPort", "egressCidr"},
        )
        if d is None:
            continue
        w = f"onPremNodes[{i}]"
        addr = str(d["address"])
        if not (_is_ip(addr) or _HOSTNAME.match(addr)):
            c.bad(f"{w}.address", addr, "an IP address or DNS name")
        if not _SSH_USER.match(str(d["sshUser"])):
            c.bad(f"{w}.sshUser", d["sshUser"], "a Unix user name")
        if not _HOST_KEY.match(str(d["hostKey"]).strip()):
            c.bad(f"{w}.hostKey", d["hostKey"], "an OpenSSH public host key line such as 'ssh-ed25519 AAAA...'")
        port = d.get("sshPort", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            c.bad(f"{w}.sshPort", port, "a TCP port from 1 to 65535")
            port = 22
        egress = d.get("egressCidr")
        if egress is not None and not _is_cidr(egress):
            c.bad(f"{w}.egressCidr", egress, "a CIDR such as 203.0.113.7/32")
        nodes.append(
            OnPremNodeConfig(
                name=str(d["name"]),
                address=addr,
                ssh_user=str(d["sshUser"]),
                host_key=str(d["hostKey"]).strip(),
                ssh_port=int(port),
                egress_cidr=egress,
            )
        )
    return nodes


_TLS_CHANNELS = {
    "tlsReplication": "Galera replication and IST cross the network in plaintext",
    "tlsSst": "SST sends the datadir's unencrypted parts (.frm definitions, the Aria log) in plaintext",
    "tlsClients": "client connections carry queries and rows in plaintext",
}


def _tls(c: _Collector, v: Mapping[str, Any]) -> TlsConfig:
    for key, consequence in _TLS_CHANNELS.items():
        if v[key] is False:
            c.warnings.append(f"{key} is false: {consequence}")
    if v["requireSecureTransport"] and v["tlsClients"] is False:
        c.bad("requireSecureTransport", True, "false when tlsClients is false (no client could connect over TCP)")
    elif v["requireSecureTransport"] is False and v["tlsClients"]:
        c.warnings.append("requireSecureTransport is false: clients may still connect without TLS")
    validity = _int_in(c, "tlsValidityDays", v["tlsValidityDays"], 2, 3650)
    renewal = v["tlsEarlyRenewalDays"]
    if renewal is not None and not 1 <= renewal < validity:
        c.bad("tlsEarlyRenewalDays", renewal, f"an integer from 1 to {validity - 1} (less than tlsValidityDays)")
    ca_validity = v["tlsCaValidityDays"]
    if ca_validity is not None and not validity < ca_validity <= 36500:
        c.bad(
            "tlsCaValidityDays",
            ca_validity,
            f"an integer from {validity + 1} to 36500 (the CA must outlive a node certificate, tlsValidityDays)",
        )
    return TlsConfig(
        replication=bool(v["tlsReplication"]),
        sst=bool(v["tlsSst"]),
        clients=bool(v["tlsClients"]),
        require_secure_transport=bool(v["requireSecureTransport"]),
        validity_days=validity,
        early_renewal_days=int(renewal or 1),
        ca_validity_days=int(ca_validity or validity + 1),
    )


def _jump_host(c: _Collector, raw: Any) -> JumpHostConfig | None:
    if raw in (None, {}):
        return None
    d = _node_fields(
        c,
        "sshJumpHost",
        None,
        raw,
        {
            "host": "the bastion's IP address or DNS name",
            "user": "the SSH user on the bastion",
            "hostKey": "the bastion's pinned SSH host public key, e.g. 'ssh-ed25519 AAAA...'",
        },
        {"port"},
    )
    if d is None:
        return None
    host, user, host_key = str(d["host"]), str(d["user"]), str(d["hostKey"]).strip()
    if not (_is_ip(host) or _HOSTNAME.match(host)):
        c.bad("sshJumpHost.host", host, "an IP address or DNS name")
    if not _SSH_USER.match(user):
        c.bad("sshJumpHost.user", user, "a Unix user name")
    if not _HOST_KEY.match(host_key):
        c.bad("sshJumpHost.hostKey", d["hostKey"], "an OpenSSH public host key line such as 'ssh-ed25519 AAAA...'")
    port = d.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        c.bad("sshJumpHost.port", port, "a TCP port from 1 to 65535")
        port = 22
    return JumpHostConfig(host=host, user=user, host_key=host_key, port=int(port))


def parse_config(raw: Mapping[str, Any], *, stack: str, region: str | None) -> ClusterConfig:
    """Validate ``raw`` (config values keyed by the names in SCHEMA).

    Raises ConfigError naming every problem at once.
    """
    c = _Collector()
    for unknown in sorted(set(raw) - set(SCHEMA_BY_NAME)):
        # The value is not quoted: a misspelt key may have been set with --secret.
        c.errors.append(f"{PROJECT}:{unknown}: no such key (Pulumi.yaml lists the known keys)")
    v = {k.name: _typed(c, raw, k.name) for k in SCHEMA}

    if not region or not _REGION.match(region):
        c.errors.append(
            f"aws:region = {region!r}: expected an AWS region such as eu-west-1 (pulumi config set aws:region ...)"
        )

    admins = tuple(v["keyAdmins"] or ())
    if v["keyAdmins"] is not None and not admins:
        c.bad("keyAdmins", [], "at least one IAM role ARN")
    for a in admins:
        if not isinstance(a, str) or not _ROLE_ARN.match(a):
            c.bad("keyAdmins", a, "an IAM role ARN such as arn:aws:iam::123456789012:role/kms-admin")
    if len(admins) == 1:
        c.warnings.append(
            "keyAdmins has one role: losing it leaves the key without an administrator; two are recommended"
        )
    deployers = tuple(v["deployers"] or ())
    for d in deployers:
        if not isinstance(d, str) or not _PRINCIPAL_ARN.match(d):
            c.bad("deployers", d, "an IAM role or user ARN")

    alias = v["keyAlias"] or f"alias/{PROJECT}-{stack}"
    if not _ALIAS.match(alias) or alias.startswith("alias/aws/"):
        c.bad("keyAlias", alias, "a name starting with alias/ (letters, digits, / _ -), not alias/aws/...")

    rotation = _int_in(c, "keyRotationPeriodDays", v["keyRotationPeriodDays"], 90, 2560)
    deletion = _int_in(c, "keyDeletionWindowDays", v["keyDeletionWindowDays"], 7, 30)
    egress = _cidr_list(c, "onPremEgressCidrs", v["onPremEgressCidrs"])
    vpce = v["kmsVpcEndpointId"] or None
    if vpce is not None and not _VPCE.match(vpce):
        c.bad("kmsVpcEndpointId", vpce, "a VPC endpoint id such as vpce-0123456789abcdef0")

    mode = _one_of(c, "keyManagement", v["keyManagement"], KEY_MANAGEMENT_MODES)
    plugin = v["awsPluginSource"] or None
    if plugin is not None and not _PLUGIN_SOURCE.match(plugin):
        c.bad("awsPluginSource", plugin, "an absolute path on the node or an https:// URL of aws_key_management.so")
    if mode == "aws-plugin" and plugin is None:
        c.bad(
            "awsPluginSource",
            "",
            "the plugin's source when keyManagement is aws-plugin: no distribution ships aws_key_management",
        )

    encrypt_tables = _one_of(c, "encryptTables", v["encryptTables"], ENCRYPT_TABLES_VALUES)
    datadir_encryption = _one_of(c, "onPremDatadirEncryption", v["onPremDatadirEncryption"], DATADIR_ENCRYPTION_MODES)
    if v["encryptTables"] == "OFF":
        c.warnings.append("encryptTables is OFF: new InnoDB tables will not be encrypted")
    threads = _int_in(c, "encryptionThreads", v["encryptionThreads"], 1, 255)
    gcache = v["gcacheSize"]
    if gcache is not None and not _SIZE.match(gcache):
        c.bad("gcacheSize", gcache, "a size such as 256M or 1G")
    cluster_name = v["clusterName"]
    if cluster_name is not None and not _CLUSTER_NAME.match(cluster_name):
        c.bad("clusterName", cluster_name, "1-32 letters, digits, _ or -")

    ec2 = _ec2_nodes(c, v["ec2Nodes"])
    onprem = _onprem_nodes(c, v["onPremNodes"])
    names = [n.name for n in ec2] + [n.name for n in onprem]
    if not names and not c.errors:
        c.bad("ec2Nodes", [], "at least one node in ec2Nodes or onPremNodes")
    elif not names:
        c.errors.append(f"{PROJECT}:ec2Nodes/onPremNodes: expected at least one node")
    seen: set[str] = set()
    for n in names:
        if not _NODE_NAME.match(n):
            c.bad("node name", n, "2-32 lower-case letters, digits or -, starting with a letter")
        if n in seen:
            c.bad("node name", n, "names unique across ec2Nodes and onPremNodes")
        seen.add(n)
    ips = [n.private_ip for n in ec2 if n.private_ip] + [n.address for n in onprem]
    for ip in {i for i in ips if ips.count(i) > 1}:
        c.bad("node address", ip, "each node at its own address")

    vpc_id = v["vpcId"] or None
    ami_id = v["amiId"] or None
    if vpc_id is not None and not _VPC.match(vpc_id):
        c.bad("vpcId", vpc_id, "a VPC id such as vpc-0123456789abcdef0")
    if ami_id is not None and not _AMI.match(ami_id):
        c.bad("amiId", ami_id, "an AMI id such as ami-0123456789abcdef0")
    if ec2 and vpc_id is None:
        c.bad("vpcId", "", "the VPC id of the EC2 nodes' subnets (ec2Nodes is not empty)")
    if ec2 and ami_id is None:
        c.bad("amiId", "", "a pinned Debian 12 AMI id (ec2Nodes is not empty)")
    endpoint_subnets = tuple(str(x) for x in (v["kmsEndpointSubnetIds"] or ()))
    for sn in endpoint_subnets:
        if not _SUBNET.match(sn):
            c.bad("kmsEndpointSubnetIds", sn, "a subnet id such as subnet-0123456789abcdef0")
    if endpoint_subnets and not v["createKmsVpcEndpoint"]:
        c.bad("kmsEndpointSubnetIds", list(endpoint_subnets), "no value unless createKmsVpcEndpoint is true")
    if v["createKmsVpcEndpoint"] and not ec2:
        c.bad("createKmsVpcEndpoint", True, "false when there are no EC2 nodes (the endpoint serves them)")
    admin_cidrs = _cidr_list(c, "adminCidrs", v["adminCidrs"])
    client_cidrs = _cidr_list(c, "clientCidrs", v["clientCidrs"])
    onprem_cidrs = _cidr_list(c, "onPremCidrs", v["onPremCidrs"])
    authorized = (v["sshAuthorizedKey"] or "").strip() or None
    if authorized is not None and not _HOST_KEY.match(authorized):
        c.bad("sshAuthorizedKey", authorized, "an OpenSSH public key line such as 'ssh-ed25519 AAAA...'")
    if ec2 and authorized is None:
        c.bad("sshAuthorizedKey", "", "the public half of sshPrivateKey (ec2Nodes is not empty)")

    bootstrap = v["bootstrapNode"] or (names[0] if names else "")
    if names and bootstrap not in names:
        c.bad("bootstrapNode", bootstrap, "one of the node names: " + ", ".join(names))

    tls = _tls(c, v)

    jump_host = _jump_host(c, v["sshJumpHost"])

    tags = v["tags"]
    if not isinstance(tags, dict):
        c.bad("tags", tags, "a map of tag name to string value")
        tags = {}
    for tk, tv in tags.items():
        if not isinstance(tk, str) or not _TAG_KEY.match(tk) or tk.startswith("aws:"):
            c.bad(f"tags.{tk}", tk, "a tag name of 1-128 characters, not starting with aws:")
        if not isinstance(tv, str) or len(tv) > 256:
            c.bad(f"tags.{tk}", tv, "a string of at most 256 characters")

    if c.errors:
        raise ConfigError(c.errors)

    return ClusterConfig(
        stack=stack,
        region=str(region),
        key=KeyConfig(
            alias=alias,
            admins=admins,
            deployers=deployers,
            rotation_period_days=rotation,
            deletion_window_days=deletion,
            allow_account_root_iam_delegation=bool(v["allowAccountRootIamDelegation"]),
            onprem_egress_cidrs=egress,
            kms_vpc_endpoint_id=vpce,
            escrow_in_ssm=bool(v["escrowDataKeyInSsm"]),
        ),
        mariadb=MariaDbSettings(
            key_management=mode,
            aws_plugin_source=plugin,
            encrypt_tables=encrypt_tables,
            encryption_threads=threads,
            gcache_size=str(gcache),
            general_log=bool(v["generalLog"]),
            slow_query_log=bool(v["slowQueryLog"]),
            cluster_name=str(cluster_name),
            onprem_datadir_encryption=datadir_encryption,
        ),
        network=NetworkConfig(
            vpc_id=vpc_id,
            ami_id=ami_id,
            create_kms_vpc_endpoint=bool(v["createKmsVpcEndpoint"]),
            kms_endpoint_subnet_ids=endpoint_subnets,
            admin_cidrs=admin_cidrs,
            client_cidrs=client_cidrs,
            onprem_cidrs=onprem_cidrs,
        ),
        ec2_nodes=tuple(ec2),
        onprem_nodes=tuple(onprem),
        bootstrap_node=bootstrap,
        attach_ssm_policy=bool(v["attachSsmManagedPolicy"]),
        verify_on_every_up=bool(v["verifyOnEveryUp"]),
        ssh_authorized_key=authorized,
        tags={**{"project": PROJECT, "stack": stack}, **tags},
        warnings=tuple(c.warnings),
        tls=tls,
        jump_host=jump_host,
    )
