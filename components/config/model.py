"""The typed, validated configuration the program is built from. Defaults come from the schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from components.config.schema import (
    DEFAULT_SSH_PORT,
    EC2_NODE_FIELDS,
    default_of,
    field_default,
)


@dataclass(frozen=True)
class Ec2NodeConfig:
    name: str
    subnet_id: str
    availability_zone: str
    instance_type: str = field_default(EC2_NODE_FIELDS, "instanceType")
    data_volume_gib: int = field_default(EC2_NODE_FIELDS, "dataVolumeGiB")
    private_ip: str | None = None
    ami_id: str | None = None  # the node's own AMI; None: the cluster's amiId at launch, ignored afterwards
    decommission: bool = False
    kind: str = "ec2"


@dataclass(frozen=True)
class OnPremNodeConfig:
    name: str
    address: str
    ssh_user: str
    host_key: str
    ssh_port: int = DEFAULT_SSH_PORT
    egress_cidr: str | None = None
    decommission: bool = False
    access_key_generation: int = 1
    kind: str = "onprem"


NodeConfig = Ec2NodeConfig | OnPremNodeConfig


@dataclass(frozen=True)
class JumpHost:
    """A bastion the program reaches every node through (pulumi-command's ``proxy``); its host key is pinned too."""

    host: str
    user: str
    host_key: str
    port: int = DEFAULT_SSH_PORT


# The name the config layer used first; the SSH wiring and the config share the one type.
JumpHostConfig = JumpHost


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
    restore_principals: tuple[str, ...] = ()  # roles that may Decrypt to restore a backup elsewhere
    encryption_context: bool = True  # dataKeyEncryptionContext (kms-envelope mode only)
    # kmsKeyArn: the key that wraps the data key when it is not the stack's own (None: the stack's own key)
    wrapping_key_arn: str | None = None


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
    onprem_datadir_encryption: str = default_of("onPremDatadirEncryption")
    allow_plain_datadir: bool = default_of("allowPlainDatadir")
    log_encryption: str = default_of("logEncryption")  # mariadb | kernel: who encrypts the redo and binary logs
    version: str = ""  # mariadbVersion: empty = the distribution's current at install, never upgraded


@dataclass(frozen=True)
class NetworkConfig:
    vpc_id: str | None
    ami_id: str | None
    create_kms_vpc_endpoint: bool
    kms_endpoint_subnet_ids: tuple[str, ...]
    admin_cidrs: tuple[str, ...]
    client_cidrs: tuple[str, ...]
    onprem_cidrs: tuple[str, ...]
    debian_mirror: str | None = None


@dataclass(frozen=True)
class TlsConfig:
    """Encryption in transit, per channel; every channel is on unless config turns it off."""

    replication: bool = default_of("tlsReplication")  # Galera replication and IST
    sst: bool = default_of("tlsSst")
    clients: bool = default_of("tlsClients")
    require_secure_transport: bool = default_of("requireSecureTransport")
    validity_days: int = default_of("tlsValidityDays")
    early_renewal_days: int = default_of("tlsEarlyRenewalDays")
    ca_validity_days: int = default_of("tlsCaValidityDays")
    ca_generation: int = default_of("tlsCaGeneration")  # the CA key that issues node certificates
    ca_other_generation: int = default_of("tlsCaOtherGeneration")  # also trusted during a CA rotation; 0: none

    @property
    def ca_generations(self) -> tuple[int, ...]:
        """Every CA generation the nodes trust, the issuing one first."""
        return (self.ca_generation, *((self.ca_other_generation,) if self.ca_other_generation else ()))

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
    jump_host: JumpHost | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    decommission_data: str = "keep"  # keep | wipe
    ssh_next_authorized_key: str | None = None  # accepted besides ssh_authorized_key during a rotation

    @property
    def login_keys(self) -> tuple[str, ...]:
        """The public keys the login user accepts on every node (the current one first); empty: unmanaged."""
        if self.ssh_authorized_key is None:
            return ()
        return tuple(k for k in (self.ssh_authorized_key, self.ssh_next_authorized_key) if k)

    @property
    def nodes(self) -> tuple[NodeConfig, ...]:
        return (*self.ec2_nodes, *self.onprem_nodes)

    @property
    def members(self) -> tuple[NodeConfig, ...]:
        """The nodes that stay in the cluster: every node not being decommissioned."""
        return tuple(n for n in self.nodes if not n.decommission)

    @property
    def leaving(self) -> tuple[NodeConfig, ...]:
        """The nodes being decommissioned in this run."""
        return tuple(n for n in self.nodes if n.decommission)


class ConfigError(ValueError):
    """All configuration errors, reported together."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} configuration error(s):\n{lines}")
