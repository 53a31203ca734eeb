"""Every config key, stated once: its Pulumi.yaml type, default, range, choices, fields and description.

The parser validates against these declarations and the generator
(tools/gen_config_docs.py) writes Pulumi.yaml and docs/configuration.md from
them, so a range or default written here is the one enforced and the one
documented. Descriptions name ranges, choices and fields only through the
``{range}``, ``{choices}``, ``{default}`` and ``{fields}`` placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.config import checks
from components.config.checks import Check

PROJECT = "mariadb-kms"

KEY_MANAGEMENT_MODES = ("kms-envelope", "aws-plugin")
ENCRYPT_TABLES_VALUES = ("OFF", "ON", "FORCE")
DATADIR_ENCRYPTION_MODES = ("fscrypt", "luks", "none")  # onPremDatadirEncryption: docs/at-rest.md
LOG_ENCRYPTION_MODES = ("mariadb", "kernel")  # logEncryption: docs/at-rest.md
DECOMMISSION_DATA_VALUES = ("keep", "wipe")

# AWS allows 50 user tags per resource, keys up to 128 and values up to 256
# characters, and reserves the aws: prefix in any case
# (https://docs.aws.amazon.com/tag-editor/latest/userguide/tagging.html#tag-conventions).
AWS_MAX_TAGS = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
# Tags the program adds itself (ClusterConfig.tags; Name and mariadb-kms:node on EC2 resources): they count too.
PROGRAM_TAG_KEYS = ("project", "stack", "Name", f"{PROJECT}:node")


@dataclass(frozen=True)
class Bounds:
    """An inclusive integer range; ``above``/``below`` name a key whose value this must exceed / stay under."""

    low: int
    high: int
    above: str = ""
    below: str = ""

    def text(self) -> str:
        low = f"{self.above}+1" if self.above else str(self.low)
        high = f"{self.below}-1" if self.below else str(self.high)
        return f"{low}..{high}"


@dataclass(frozen=True)
class Field:
    """One field of an object-valued key (an EC2 node, an on-prem node, the jump host)."""

    name: str
    expected: str  # what the field holds, for messages and docs
    check: Check | None = None
    required: bool = False
    default: Any = None
    bounds: Bounds | None = None

    def doc(self) -> str:
        notes = [self.bounds.text()] if self.bounds else []
        if self.default is not None:
            notes.append(f"default {checks.yaml_text(self.default)}")
        suffix = f" ({', '.join(notes)})" if notes else ""
        return f"{self.name}{'' if self.required else '?'}{suffix}"


def _fields_doc(fields: tuple[Field, ...]) -> str:
    return "{" + ", ".join(f.doc() for f in fields) + "}"


def field_default(fields: tuple[Field, ...], name: str) -> Any:
    return next(f.default for f in fields if f.name == name)


SSH_PORT = Bounds(1, 65535)
DEFAULT_SSH_PORT = 22

# The fields every node has, EC2 or on premises.
NODE_NAME_FIELD = Field("name", f"the node's name: {checks.NODE_NAME_RULE}", checks.node_name, required=True)
DECOMMISSION_FIELD = Field(
    "decommission",
    "true to take the node out of the cluster (it leaves, its key material is wiped); remove the entry in a "
    "later `pulumi up`",
    checks.boolean,
    default=False,
)
EC2_NODE_FIELDS = (
    NODE_NAME_FIELD,
    Field("subnetId", "a subnet id (subnet-...)", checks.subnet_id, required=True),
    Field("availabilityZone", "an availability zone such as eu-west-1a", checks.availability_zone, required=True),
    Field("instanceType", "an EC2 instance type", checks.instance_type, default="t3.medium"),
    Field("dataVolumeGiB", "the data volume's size in GiB", default=50, bounds=Bounds(8, 16384)),
    Field("privateIp", "the node's private IPv4 address inside its subnet", checks.ipv4_address),
    Field(
        "amiId",
        "this node's own AMI: setting or changing it replaces this node alone, launched from that AMI with its "
        "data volume re-attached (a rolling replace: one node per `pulumi up`); without it the node keeps the "
        "AMI it was launched with",
        checks.ami_id,
    ),
    DECOMMISSION_FIELD,
)
ONPREM_NODE_FIELDS = (
    NODE_NAME_FIELD,
    Field("address", "the node's IP address or DNS name", checks.host, required=True),
    Field("sshUser", "the SSH login user", checks.ssh_user, required=True),
    Field(
        "hostKey", "the node's pinned SSH host public key, e.g. 'ssh-ed25519 AAAA...'", checks.host_key, required=True
    ),
    Field("sshPort", "the node's SSH port", default=DEFAULT_SSH_PORT, bounds=SSH_PORT),
    Field("egressCidr", "the public CIDR this node reaches KMS from", checks.cidr("203.0.113.7/32")),
    Field(
        "accessKeyGeneration",
        "the generation of the node's own IAM access key: raise it by one to rotate that key in one `pulumi up` "
        "(the new key is made, put on the node and checked, then the old one is deleted; MariaDB keeps running; "
        "docs/runbooks/credentials.md)",
        default=1,
        bounds=Bounds(1, 9999),
    ),
    DECOMMISSION_FIELD,
)
JUMP_HOST_FIELDS = (
    Field("host", "the bastion's IP address or DNS name", checks.host, required=True),
    Field("user", "the SSH user on the bastion", checks.ssh_user, required=True),
    Field(
        "hostKey",
        "the bastion's pinned SSH host public key, e.g. 'ssh-ed25519 AAAA...'",
        checks.host_key,
        required=True,
    ),
    Field("port", "the bastion's SSH port", default=DEFAULT_SSH_PORT, bounds=SSH_PORT),
)


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str | None  # string, integer, boolean, array; None = object (untyped in Pulumi.yaml)
    text: str  # the description, with {range}, {choices}, {default} or {fields} where they belong
    default: Any = None  # None: required (see ``required``)
    required: bool = False
    secret: bool = False
    derived: str = ""  # how an empty default is filled in when it depends on the stack
    check: Check | None = None  # for a string value other than the empty default
    item_check: Check | None = None  # for each entry of an array
    bounds: Bounds | None = None
    choices: tuple[str, ...] = ()
    fields: tuple[Field, ...] = ()
    declared: bool = True  # listed in Pulumi.yaml's config block

    @property
    def description(self) -> str:
        return self.text.format(
            range=self.bounds.text() if self.bounds else "",
            choices=", ".join(self.choices),
            default=checks.yaml_text(self.default),
            fields=_fields_doc(self.fields),
        )


_LOGIN_KEY_TEXT = (
    "Private key the program logs in with over SSH, set with `pulumi config set --secret`. Optional: without it "
    "pulumi-command uses the SSH agent at SSH_AUTH_SOCK. Not declared in Pulumi.yaml, because the CLI would then "
    "require it on every stack (a secret key cannot have a default)."
)

SCHEMA: tuple[ConfigKey, ...] = (
    ConfigKey(
        "keyAdmins",
        "array",
        "Role ARNs that administer the KMS key (at least one, two recommended). The key policy grants them no "
        "Decrypt, but kms:PutKeyPolicy lets them grant it to themselves: treat them as able to decrypt.",
        required=True,
        item_check=checks.role_arn,
    ),
    ConfigKey(
        "deployers",
        "array",
        "IAM role or user ARNs allowed to wrap data keys and use the key through EC2 for EBS. Empty: the identity "
        "running `pulumi up`, normalised to its role ARN.",
        default=[],
        item_check=checks.principal_arn,
    ),
    ConfigKey(
        "keyAlias",
        "string",
        "KMS alias for the key; must start with `alias/`. Empty: `alias/mariadb-kms-<stack>`.",
        default="",
        derived="alias/mariadb-kms-<stack>",
        check=checks.alias_name,
    ),
    ConfigKey(
        "keyRotationPeriodDays",
        "integer",
        "Automatic key rotation period in days ({range}).",
        default=365,
        bounds=Bounds(90, 2560),
    ),
    ConfigKey(
        "keyDeletionWindowDays",
        "integer",
        "The waiting period ({range}) pulumi-aws would use if the engine deleted the key. The key is retained on "
        "delete, so a destroy never schedules its deletion: one you schedule by hand with `aws kms "
        "schedule-key-deletion` takes its own `--pending-window-in-days`.",
        default=30,
        bounds=Bounds(7, 30),
    ),
    ConfigKey(
        "allowAccountRootIamDelegation",
        "boolean",
        "Let IAM policies in this account grant use of the key (account-root statement). Off: only the key policy "
        "grants, so a deleted admin role locks the key until AWS support restores it.",
        default=False,
    ),
    ConfigKey(
        "onPremEgressCidrs",
        "array",
        "Public CIDRs the on-prem nodes reach KMS from (aws:SourceIp). Empty: no source-IP condition. Not seen "
        "through VPC endpoints. When set, every on-prem node's egressCidr must lie inside one of them.",
        default=[],
        item_check=checks.cidr("203.0.113.0/24"),
    ),
    ConfigKey(
        "kmsVpcEndpointId",
        "string",
        "If set (vpce-...), the EC2 node role may use the key only through this KMS VPC endpoint (aws:SourceVpce).",
        default="",
        check=checks.vpce_id,
    ),
    ConfigKey(
        "attachSsmManagedPolicy", "boolean", "Attach AmazonSSMManagedInstanceCore to the EC2 node role.", default=False
    ),
    ConfigKey(
        "escrowDataKeyInSsm",
        "boolean",
        "Also store the cluster data key's ciphertext blob in an SSM SecureString parameter "
        "(`/mariadb-kms/<stack>/cluster-data-key`), so it outlives the stack's state. Ciphertext only: reading it "
        "still needs kms:Decrypt on the key. Every node also keeps a copy on its data volume, beside the datadir.",
        default=True,
    ),
    ConfigKey(
        "dataKeyEncryptionContext",
        "boolean",
        "Wrap the cluster data key with a KMS encryption context naming the stack and the cluster "
        "(`mariadb-kms:stack`, `mariadb-kms:cluster`), and allow node and restore Decrypt only with it. Turning it "
        "on for an existing stack re-wraps the same data key in place (kms:ReEncrypt on the same key) in one "
        "`pulumi up` and rolls the new blob to the nodes. kms-envelope mode only: MariaDB's aws_key_management "
        "plugin decrypts without a context, so aws-plugin mode ignores it (the weaker mode, docs/security.md).",
        default=True,
    ),
    ConfigKey(
        "kmsKeyArn",
        "string",
        "The KMS key that wraps the cluster data key, if not the key this stack creates: the full ARN of a key in "
        "the stack's region (another account's is allowed). Empty: the stack's own key. Changing it re-wraps the "
        "same data key onto the new key (kms:ReEncrypt) in one `pulumi up` and rolls the new blob to the nodes; "
        "the identity running pulumi then needs a temporary grant on both keys "
        "(docs/runbooks/key-lifecycle.md). The stack's own key stays: it still encrypts the EC2 EBS volumes, and "
        "blobs in backups made before the move.",
        default="",
        check=checks.kms_key_arn,
    ),
    ConfigKey(
        "restorePrincipals",
        "array",
        "Role ARNs allowed to restore a backup on a host outside the cluster: the key policy grants them "
        "kms:Decrypt and nothing else. Empty: only the nodes can unwrap the cluster data key.",
        default=[],
        item_check=checks.role_arn,
    ),
    ConfigKey(
        "keyManagement",
        "string",
        "How MariaDB gets its key ({choices}): `kms-envelope` uses stock packages and file_key_management; "
        "`aws-plugin` uses aws_key_management and needs awsPluginSource.",
        default="kms-envelope",
        choices=KEY_MANAGEMENT_MODES,
    ),
    ConfigKey(
        "awsPluginSource",
        "string",
        "Where nodes get the aws_key_management plugin (.so): an absolute path on the node or an https URL. "
        "Required for `aws-plugin`.",
        default="",
        check=checks.plugin_source,
    ),
    ConfigKey(
        "encryptTables",
        "string",
        "innodb_encrypt_tables, one of {choices} (`FORCE` refuses unencrypted tables).",
        default="FORCE",
        choices=ENCRYPT_TABLES_VALUES,
    ),
    ConfigKey("encryptionThreads", "integer", "innodb_encryption_threads ({range}).", default=4, bounds=Bounds(1, 255)),
    ConfigKey(
        "gcacheSize",
        "string",
        "Galera gcache size (kept on tmpfs, so it costs memory), e.g. 256M, 1G.",
        default="256M",
        check=checks.size,
    ),
    ConfigKey("generalLog", "boolean", "Enable the general query log (holds query text in plaintext).", default=False),
    ConfigKey("slowQueryLog", "boolean", "Enable the slow query log (holds query text in plaintext).", default=False),
    ConfigKey("clusterName", "string", "wsrep_cluster_name.", default="mariadb-kms", check=checks.cluster_name),
    ConfigKey(
        "onPremDatadirEncryption",
        "string",
        "How on-prem nodes encrypt the datadir below MariaDB, one of {choices}: `fscrypt` (an ext4 volume made with "
        "-O encrypt mounted at /srv/mariadb-kms, checked before the install; key derived from the cluster data key), "
        "`luks` (your dm-crypt volume there) or `none` (verification reports it as a gap). Placed on a node once, "
        "before its install: a later change reaches a node by the SST runbook (docs/at-rest.md). EC2 nodes: their "
        "EBS volumes are encrypted with the cluster's KMS key.",
        default="fscrypt",
        choices=DATADIR_ENCRYPTION_MODES,
    ),
    ConfigKey(
        "allowPlainDatadir",
        "boolean",
        "With onPremDatadirEncryption `none`: verification states the unencrypted datadir (Galera spill pages, "
        "GRA_*.log, .frm, the Aria log, ddl_recovery.log in plaintext) instead of failing on it.",
        default=False,
    ),
    ConfigKey(
        "logEncryption",
        "string",
        "Who encrypts the redo log and the binary log, one of {choices}. `mariadb`: MariaDB does (innodb_encrypt_log "
        "and encrypt_binlog ON), on top of whatever encrypts the volume. `kernel`: both flags OFF and the logs are "
        "left to the layer below MariaDB (fscrypt or luks on premises, EBS on EC2), which saves the CPU the two logs "
        "cost every commit (about 5% of read-write throughput in memory on the benchmark machine, docs/BENCHMARKS.md). "
        "The trade-off: the redo and binary logs hold row images of recent "
        "changes, and with `kernel` they are plaintext to anyone who reads the files on a running host with the "
        "volume unlocked, in any copy taken below MariaDB that is not the encrypted volume itself (a binlog shipped "
        "elsewhere, a file-level copy), and in a mariadb-kms-backup's copies of the redo log and the current binary "
        "log (its manifest lists them as plaintext). Refused with onPremDatadirEncryption `none` when onPremNodes is "
        "not empty. Changing it later rewrites 90-mariadb-kms-encryption.cnf: the nodes roll one at a time, each "
        "restarted, Synced and verified before the next.",
        default="mariadb",
        choices=LOG_ENCRYPTION_MODES,
    ),
    ConfigKey(
        "mariadbVersion",
        "string",
        "The MariaDB package version every node runs (Debian's version string, as `apt-cache policy mariadb-server` "
        "shows it). Empty: the distribution's current version at install, never upgraded. A higher version is "
        "installed one node at a time, each Synced and verified before the next; a lower one is refused on the node.",
        default="",
        check=checks.deb_version,
    ),
    ConfigKey(
        "decommissionData",
        "string",
        "What the decommission step does with a leaving node's datadir: {choices}. Its key material, blob and "
        "credentials are wiped either way (kept data stays encrypted under a key the host no longer holds).",
        default="keep",
        choices=DECOMMISSION_DATA_VALUES,
    ),
    ConfigKey("ec2Nodes", None, "EC2 nodes: list of {fields}.", default=[], fields=EC2_NODE_FIELDS),
    ConfigKey("onPremNodes", None, "On-prem nodes: list of {fields}.", default=[], fields=ONPREM_NODE_FIELDS),
    ConfigKey(
        "vpcId",
        "string",
        "VPC of the EC2 nodes (required when ec2Nodes is not empty).",
        default="",
        check=checks.vpc_id,
    ),
    ConfigKey(
        "amiId",
        "string",
        "Pinned Debian 12 AMI for EC2 nodes (required when ec2Nodes is not empty).",
        default="",
        check=checks.ami_id,
    ),
    ConfigKey(
        "debianMirror",
        "string",
        "Debian archive mirror EC2 nodes install packages from (cloud-init's apt primary mirror; set at first boot "
        "only). Empty: the AMI's own sources, which need a NAT to reach deb.debian.org. On-prem nodes keep their own "
        "apt sources.",
        default="",
        check=checks.debian_mirror,
    ),
    ConfigKey(
        "createKmsVpcEndpoint",
        "boolean",
        "Create a KMS interface VPC endpoint with private DNS, for nodes in private subnets (they must reach KMS on "
        "443).",
        default=False,
    ),
    ConfigKey(
        "kmsEndpointSubnetIds",
        "array",
        "Subnets for that endpoint. Empty: one node subnet per availability zone.",
        default=[],
        item_check=checks.subnet_id,
    ),
    ConfigKey(
        "adminCidrs",
        "array",
        "CIDRs allowed to reach EC2 nodes on SSH (22).",
        default=[],
        item_check=checks.cidr("198.51.100.0/24"),
    ),
    ConfigKey(
        "clientCidrs",
        "array",
        "CIDRs allowed to reach EC2 nodes on MariaDB (3306).",
        default=[],
        item_check=checks.cidr("10.20.0.0/16"),
    ),
    ConfigKey(
        "onPremCidrs",
        "array",
        "CIDRs of on-prem Galera members. With EC2 nodes, each member's address must lie inside one; the EC2 "
        "group admits that address (these ranges, if a member is a DNS name) on 4567/4568/4444.",
        default=[],
        item_check=checks.cidr("192.0.2.0/24"),
    ),
    ConfigKey("sshPrivateKey", "string", _LOGIN_KEY_TEXT, default="", secret=True, declared=False),
    ConfigKey(
        "sshAuthorizedKey",
        "string",
        "Public half of the login key (sshPrivateKey or the agent's): placed by EC2 first boot, and kept in the "
        "login user's authorized_keys on every node (EC2 and on-prem) by the login-keys step. Empty: that step "
        "is left out and on-prem login keys are the administrator's.",
        default="",
        check=checks.login_key,
    ),
    ConfigKey(
        "sshNextAuthorizedKey",
        "string",
        "A second public key the login user accepts, for a login-key rotation in two `pulumi up`s: set it "
        "(the nodes accept both keys), then move sshPrivateKey and sshAuthorizedKey to the new pair and unset "
        "it (the old key is removed). Needs sshAuthorizedKey; docs/runbooks/credentials.md.",
        default="",
        check=checks.login_key,
    ),
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
        "Encrypt Galera replication and IST (4567, 4568) with TLS under the cluster CA. Off only deliberately: the "
        "verification then accepts plaintext on this channel.",
        default=True,
    ),
    ConfigKey(
        "tlsSst",
        "boolean",
        "Encrypt SST (mariabackup through socat with OpenSSL, 4444); donor and joiner each verify the other against "
        "the cluster CA.",
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
    ConfigKey(
        "tlsValidityDays",
        "integer",
        "Validity of each node certificate in days ({range}).",
        default=365,
        bounds=Bounds(2, 3650),
    ),
    ConfigKey(
        "tlsEarlyRenewalDays",
        "integer",
        "`pulumi up` renews a node certificate once fewer than this many days remain ({range}), one node at a time.",
        default=30,
        bounds=Bounds(1, 3649, below="tlsValidityDays"),
    ),
    ConfigKey(
        "tlsCaValidityDays",
        "integer",
        "Validity of the cluster root CA in days ({range}: the CA outlives every node certificate). It is renewed "
        "with the same key when less than tlsValidityDays remain.",
        default=3650,
        bounds=Bounds(3, 36500, above="tlsValidityDays"),
    ),
    ConfigKey(
        "tlsCaGeneration",
        "integer",
        "Generation of the cluster CA key that issues node certificates ({range}). A new generation is a new CA "
        "key: rotate with tlsCaOtherGeneration, one stage per `pulumi up` (docs/runbooks/credentials.md).",
        default=1,
        bounds=Bounds(1, 99),
    ),
    ConfigKey(
        "tlsCaOtherGeneration",
        "integer",
        "A second CA generation every node trusts besides tlsCaGeneration during a CA rotation ({range}; unset: "
        "none). Stages, one `pulumi up` each: set it to the new generation (both trusted); swap the two (node "
        "certificates from the new CA); unset it (the old CA dropped). Each stage reloads one node at a time "
        "without a restart.",
        default=0,
        bounds=Bounds(0, 99),
    ),
    ConfigKey(
        "sshJumpHost",
        None,
        "Optional bastion every SSH connection goes through: {fields}; its host key is pinned too.",
        default={},
        fields=JUMP_HOST_FIELDS,
    ),
    ConfigKey(
        "tags",
        None,
        "Tags added to every taggable AWS resource (map of string to string; at most "
        f"{AWS_MAX_TAGS - len(PROGRAM_TAG_KEYS)} besides the program's own " + ", ".join(PROGRAM_TAG_KEYS) + "; "
        f"keys up to {TAG_KEY_MAX} and values up to {TAG_VALUE_MAX} characters, no aws: prefix).",
        default={},
    ),
)

SCHEMA_BY_NAME = {k.name: k for k in SCHEMA}


def default_of(name: str) -> Any:
    return SCHEMA_BY_NAME[name].default
