"""``parse_config``: raw stack values in, a validated ClusterConfig out, or every error at once.

Pure (no pulumi import), so every rule is tested directly. Each message names
the key path as the user writes it (``onPremNodes[1].hostKey``), the value in
YAML terms, and what was expected; nothing is registered before it passes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.config import checks
from components.config.model import (
    ClusterConfig,
    ConfigError,
    Ec2NodeConfig,
    JumpHost,
    KeyConfig,
    MariaDbSettings,
    NetworkConfig,
    OnPremNodeConfig,
    TlsConfig,
)
from components.config.schema import (
    AWS_MAX_TAGS,
    PROGRAM_TAG_KEYS,
    PROJECT,
    SCHEMA,
    SCHEMA_BY_NAME,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
    Bounds,
    Field,
)


@dataclass
class _Collector:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def bad(self, path: str, value: Any, expected: str) -> None:
        self.errors.append(f"{PROJECT}:{path} = {checks.yaml_text(value)}: expected {expected}")

    def missing(self, path: str, expected: str) -> None:
        self.errors.append(f"{PROJECT}:{path} is not set: expected {expected}")


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "string": (lambda v: isinstance(v, str), "a string"),
    "integer": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "array": (lambda v: isinstance(v, list), "a list"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_bounds(c: _Collector, path: str, value: Any, bounds: Bounds, values: Mapping[str, Any]) -> bool:
    """Whether ``value`` is an integer inside ``bounds``, whose ends may come from another key's value."""
    low, high, why = bounds.low, bounds.high, ""
    if bounds.above and _is_int(values.get(bounds.above)):
        low, why = values[bounds.above] + 1, f" (more than {bounds.above})"
    if bounds.below and _is_int(values.get(bounds.below)):
        high, why = values[bounds.below] - 1, f" (less than {bounds.below})"
    if _is_int(value) and low <= value <= high:
        return True
    c.bad(path, value, f"an integer from {low} to {high}{why}")
    return False


def _typed(c: _Collector, raw: Mapping[str, Any], name: str) -> Any:
    """The raw value, or the schema's default, checked against the key's declared type, choices and checks."""
    spec = SCHEMA_BY_NAME[name]
    if name not in raw or raw[name] is None:
        if spec.required:
            c.missing(name, f"a value ({spec.description})")
        return spec.default
    value = raw[name]
    if spec.type in _TYPE_CHECKS:
        ok, what = _TYPE_CHECKS[spec.type]
        if not ok(value):
            c.bad(name, value, what)
            return spec.default
    if spec.choices and value not in spec.choices:
        c.bad(name, value, "one of " + ", ".join(spec.choices))
    if spec.check is not None and value != spec.default:
        problem = spec.check(value)
        if problem is not None:
            c.bad(name, value, problem)
    if spec.item_check is not None:
        for i, item in enumerate(value):
            problem = spec.item_check(item)
            if problem is not None:
                c.bad(f"{name}[{i}]", item, problem)
    return value


def _object(c: _Collector, path: str, item: Any, fields: tuple[Field, ...]) -> dict[str, Any] | None:
    """An object's fields, defaults filled in, each checked; None when it is no object or lacks a required field."""
    required = [f.name for f in fields if f.required]
    if not isinstance(item, dict):
        c.bad(path, item, "an object with " + ", ".join(required))
        return None
    known = [f.name for f in fields]
    for name in sorted(set(item) - set(known), key=str):
        c.bad(f"{path}.{name}", item[name], "no such field (known: " + ", ".join(known) + ")")
    out: dict[str, Any] = {}
    complete = True
    for f in fields:
        value = item.get(f.name)
        where = f"{path}.{f.name}"
        if value is None or (f.required and value == ""):
            if f.required:
                c.missing(where, f.expected)
                complete = False
            out[f.name] = f.default
            continue
        if f.bounds is not None:
            if not _in_bounds(c, where, value, f.bounds, {}):
                value = f.default
        elif f.check is not None:
            problem = f.check(value)
            if problem is not None:
                c.bad(where, value, problem)
        out[f.name] = value
    return out if complete else None


def _objects(c: _Collector, name: str, raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """The entries of a list-of-objects key with their paths (``ec2Nodes[0]``)."""
    if not isinstance(raw, list):
        c.bad(name, raw, "a list of node objects")
        return []
    fields = SCHEMA_BY_NAME[name].fields
    found = []
    for i, item in enumerate(raw):
        d = _object(c, f"{name}[{i}]", item, fields)
        if d is not None:
            found.append((f"{name}[{i}]", d))
    return found


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
    if v["tlsCaOtherGeneration"] and v["tlsCaOtherGeneration"] == v["tlsCaGeneration"]:
        c.bad("tlsCaOtherGeneration", v["tlsCaOtherGeneration"],
              "0 or a generation other than tlsCaGeneration (the CA trusted beside it during a rotation)")
    return TlsConfig(
        replication=bool(v["tlsReplication"]),
        sst=bool(v["tlsSst"]),
        clients=bool(v["tlsClients"]),
        require_secure_transport=bool(v["requireSecureTransport"]),
        validity_days=int(v["tlsValidityDays"]),
        early_renewal_days=int(v["tlsEarlyRenewalDays"]),
        ca_validity_days=int(v["tlsCaValidityDays"]),
        ca_generation=int(v["tlsCaGeneration"]),
        ca_other_generation=int(v["tlsCaOtherGeneration"]),
    )


def _jump_host(c: _Collector, raw: Any) -> JumpHost | None:
    if raw in (None, {}):
        return None
    d = _object(c, "sshJumpHost", raw, SCHEMA_BY_NAME["sshJumpHost"].fields)
    if d is None:
        return None
    return JumpHost(host=str(d["host"]), user=str(d["user"]), host_key=str(d["hostKey"]).strip(), port=int(d["port"]))


def _tags(c: _Collector, tags: Any) -> dict[str, str]:
    if not isinstance(tags, dict):
        c.bad("tags", tags, "a map of tag name to string value")
        return {}
    room = AWS_MAX_TAGS - len(set(PROGRAM_TAG_KEYS) - set(tags))
    if len(tags) > room:
        c.errors.append(
            f"{PROJECT}:tags has {len(tags)} entries: expected at most {room} (AWS allows {AWS_MAX_TAGS} tags per "
            "resource and the program adds " + ", ".join(PROGRAM_TAG_KEYS) + ")"
        )
    for tk, tv in tags.items():
        path = f"tags.{tk}"
        key_ok = isinstance(tk, str) and 1 <= len(tk) <= TAG_KEY_MAX and bool(checks.TAG_CHARS.match(tk))
        if not key_ok or str(tk).lower().startswith("aws:"):
            c.bad(
                path,
                tk,
                f"a tag name of 1-{TAG_KEY_MAX} letters, digits, spaces or _ . : / = + - @, not starting with aws:",
            )
        if not isinstance(tv, str) or len(tv) > TAG_VALUE_MAX or not checks.TAG_CHARS.match(tv):
            c.bad(path, tv, f"a string of at most {TAG_VALUE_MAX} letters, digits, spaces or _ . : / = + - @")
    return {str(k): str(v) for k, v in tags.items()}


def parse_config(raw: Mapping[str, Any], *, stack: str, region: str | None) -> ClusterConfig:
    """Validate ``raw`` (config values keyed by the names in SCHEMA).

    Raises ConfigError naming every problem at once.
    """
    c = _Collector()
    for unknown in sorted(set(raw) - set(SCHEMA_BY_NAME)):
        # The value is not quoted: a misspelt key may have been set with --secret.
        c.errors.append(f"{PROJECT}:{unknown}: no such key (docs/configuration.md lists the known keys)")
    v = {k.name: _typed(c, raw, k.name) for k in SCHEMA}
    # Ranges are checked once every value is read: some ends are other keys' values.
    for spec in SCHEMA:
        if spec.bounds is not None and _is_int(v[spec.name]):
            if not _in_bounds(c, spec.name, v[spec.name], spec.bounds, v):
                v[spec.name] = spec.default

    if not region or not checks.REGION.match(region):
        c.errors.append(
            f"aws:region = {checks.yaml_text(region)}: expected an AWS region such as eu-west-1 "
            "(pulumi config set aws:region ...)"
        )

    admins = tuple(str(a) for a in v["keyAdmins"] or ())
    if v["keyAdmins"] == []:
        c.bad("keyAdmins", [], "at least one IAM role ARN")
    if len(admins) == 1:
        c.warnings.append(
            "keyAdmins has one role: losing it leaves the key without an administrator; two are recommended"
        )
    deployers = tuple(str(d) for d in v["deployers"])
    alias = v["keyAlias"] or f"alias/{PROJECT}-{stack}"
    if not v["keyAlias"] and checks.alias_name(alias) is not None:
        c.bad("keyAlias", alias, f"{checks.alias_name(alias)} (derived from the stack name: set keyAlias)")

    egress = tuple(str(x) for x in v["onPremEgressCidrs"] if checks.is_cidr(x))
    vpce = v["kmsVpcEndpointId"] or None
    wrapping_key = v["kmsKeyArn"] or None
    if wrapping_key is not None and region and checks.kms_key_arn(wrapping_key) is None:
        key_region = checks.kms_key_region(wrapping_key)
        if key_region != region:
            c.bad("kmsKeyArn", wrapping_key, f"a key in the stack's region {region} (this one is in {key_region}): "
                  "the SSM escrow and every node's unwrap.conf name one region")

    mode = str(v["keyManagement"])
    plugin = v["awsPluginSource"] or None
    if mode == "aws-plugin" and plugin is None:
        c.missing(
            "awsPluginSource",
            "the plugin's source when keyManagement is aws-plugin: no distribution ships aws_key_management",
        )
    if v["encryptTables"] == "OFF":
        c.warnings.append("encryptTables is OFF: new InnoDB tables will not be encrypted")

    ec2 = [
        (
            path,
            Ec2NodeConfig(
                name=str(d["name"]),
                subnet_id=str(d["subnetId"]),
                availability_zone=str(d["availabilityZone"]),
                instance_type=str(d["instanceType"]),
                data_volume_gib=int(d["dataVolumeGiB"]),
                private_ip=d["privateIp"],
                ami_id=d["amiId"] or None,
                decommission=d["decommission"] is True,
            ),
        )
        for path, d in _objects(c, "ec2Nodes", v["ec2Nodes"])
    ]
    onprem = [
        (
            path,
            OnPremNodeConfig(
                name=str(d["name"]),
                address=str(d["address"]),
                ssh_user=str(d["sshUser"]),
                host_key=str(d["hostKey"]).strip(),
                ssh_port=int(d["sshPort"]),
                egress_cidr=d["egressCidr"],
                decommission=d["decommission"] is True,
                access_key_generation=int(d["accessKeyGeneration"]),
            ),
        )
        for path, d in _objects(c, "onPremNodes", v["onPremNodes"])
    ]
    named = [(f"{p}.name", n.name) for p, n in ec2] + [(f"{p}.name", n.name) for p, n in onprem]
    names = [n for _, n in named]
    if not names and not c.errors:
        c.bad("ec2Nodes", [], "at least one node in ec2Nodes or onPremNodes")
    elif not names:
        c.errors.append(f"{PROJECT}:ec2Nodes, {PROJECT}:onPremNodes: expected at least one node between them")
    seen: set[str] = set()
    for path, n in named:
        if n in seen:
            c.bad(path, n, "names unique across ec2Nodes and onPremNodes")
        seen.add(n)
    addressed = [(f"{p}.privateIp", n.private_ip) for p, n in ec2 if n.private_ip]
    addressed += [(f"{p}.address", n.address) for p, n in onprem]
    taken: set[str] = set()
    for path, address in addressed:
        if address in taken:
            c.bad(path, address, "each node at its own address")
        taken.add(address)
    for path, node in onprem:
        if node.egress_cidr and egress and checks.is_cidr(node.egress_cidr):
            if not checks.covered_by(node.egress_cidr, egress):
                c.bad(
                    f"{path}.egressCidr",
                    node.egress_cidr,
                    "a CIDR inside one of onPremEgressCidrs (" + ", ".join(egress) + "): the key policy admits "
                    "the node's KMS calls only from those, so add its range there or correct it",
                )

    if mode == "aws-plugin" and onprem and v["onPremDatadirEncryption"] == "fscrypt":
        # fscrypt's key is derived from the plaintext data key the kms-envelope unwrap puts on tmpfs; in
        # aws-plugin mode that key exists only inside mariadbd (docs/at-rest.md says what wiring it would take).
        c.bad("onPremDatadirEncryption", "fscrypt", "luks (your dm-crypt volume at /srv/mariadb-kms) or none "
              "(with allowPlainDatadir: true) when keyManagement is aws-plugin and onPremNodes is not empty: fscrypt "
              "takes its key from kms-envelope's unwrap, which aws-plugin mode does not have (fscrypt is the "
              "default; or set keyManagement to kms-envelope)")

    if v["logEncryption"] == "kernel" and onprem and v["onPremDatadirEncryption"] == "none":
        # Nothing below MariaDB would encrypt the logs: their row images would rest on disk in plaintext.
        c.bad("logEncryption", "kernel", "mariadb when onPremDatadirEncryption is none and onPremNodes is not "
              "empty: `kernel` leaves the redo and binary logs to the encryption below MariaDB, and these nodes "
              "have none (or set onPremDatadirEncryption to fscrypt or luks)")

    onprem_ranges = tuple(str(x) for x in v["onPremCidrs"] if checks.is_cidr(x))
    if ec2 and onprem_ranges:
        # The EC2 group admits each on-prem member's own address, and only inside these ranges.
        for path, node in onprem:
            if checks.is_ip(node.address) and not checks.covered_by(
                str(ipaddress.ip_network(node.address)), onprem_ranges
            ):
                c.bad(f"{path}.address", node.address, "an address inside one of onPremCidrs ("
                      + ", ".join(onprem_ranges) + "): the EC2 nodes' security group admits on-prem members "
                      "only there, so add its range there or correct it")

    vpc_id = v["vpcId"] or None
    ami_id = v["amiId"] or None
    if ec2 and vpc_id is None:
        c.missing("vpcId", "the VPC id of the EC2 nodes' subnets (ec2Nodes is not empty)")
    if ec2 and ami_id is None:
        c.missing("amiId", "a pinned Debian 12 AMI id (ec2Nodes is not empty)")
    endpoint_subnets = tuple(str(x) for x in v["kmsEndpointSubnetIds"])
    if endpoint_subnets and not v["createKmsVpcEndpoint"]:
        c.bad("kmsEndpointSubnetIds", list(endpoint_subnets), "no value unless createKmsVpcEndpoint is true")
    if v["createKmsVpcEndpoint"] and not ec2:
        c.bad("createKmsVpcEndpoint", True, "false when there are no EC2 nodes (the endpoint serves them)")
    authorized = (v["sshAuthorizedKey"] or "").strip() or None
    if ec2 and authorized is None:
        c.missing("sshAuthorizedKey", "the public half of the login key (ec2Nodes is not empty)")
    next_key = (v["sshNextAuthorizedKey"] or "").strip() or None
    if next_key is not None and authorized is None:
        c.bad("sshNextAuthorizedKey", next_key, "no value unless sshAuthorizedKey is set (the key accepted now)")
    elif next_key is not None and authorized is not None and next_key.split()[:2] == authorized.split()[:2]:
        c.bad("sshNextAuthorizedKey", next_key, "a key other than sshAuthorizedKey (the next login key)")

    leaving = [(p, n.name) for p, n in ec2 if n.decommission] + [(p, n.name) for p, n in onprem if n.decommission]
    staying = [n for n in names if n not in {name for _, name in leaving}]
    if names and not staying:
        c.bad(leaving[-1][0] + ".decommission", True, "false on at least one node: a cluster keeps one member")
    # The bootstrap runs once; a later bootstrapNode only names who would, so a leaving node hands it on.
    bootstrap = v["bootstrapNode"] or (staying[0] if staying else names[0] if names else "")
    if names and bootstrap not in names:
        c.bad("bootstrapNode", bootstrap, "one of the node names: " + ", ".join(names))
    elif bootstrap in {name for _, name in leaving}:
        c.bad("bootstrapNode", bootstrap, "a node that stays (this one is being decommissioned): "
              + ", ".join(staying))

    tls = _tls(c, v)
    jump_host = _jump_host(c, v["sshJumpHost"])
    tags = _tags(c, v["tags"])

    if c.errors:
        raise ConfigError(c.errors)

    return ClusterConfig(
        stack=stack,
        region=str(region),
        key=KeyConfig(
            alias=alias,
            admins=admins,
            deployers=deployers,
            rotation_period_days=int(v["keyRotationPeriodDays"]),
            deletion_window_days=int(v["keyDeletionWindowDays"]),
            allow_account_root_iam_delegation=bool(v["allowAccountRootIamDelegation"]),
            onprem_egress_cidrs=egress,
            kms_vpc_endpoint_id=vpce,
            escrow_in_ssm=bool(v["escrowDataKeyInSsm"]),
            restore_principals=tuple(sorted(set(str(r) for r in v["restorePrincipals"]))),
            encryption_context=bool(v["dataKeyEncryptionContext"]),
            wrapping_key_arn=wrapping_key,
        ),
        mariadb=MariaDbSettings(
            key_management=mode,
            aws_plugin_source=plugin,
            encrypt_tables=str(v["encryptTables"]),
            encryption_threads=int(v["encryptionThreads"]),
            gcache_size=str(v["gcacheSize"]),
            general_log=bool(v["generalLog"]),
            slow_query_log=bool(v["slowQueryLog"]),
            cluster_name=str(v["clusterName"]),
            onprem_datadir_encryption=str(v["onPremDatadirEncryption"]),
            allow_plain_datadir=bool(v["allowPlainDatadir"]),
            log_encryption=str(v["logEncryption"]),
            version=str(v["mariadbVersion"] or ""),
        ),
        network=NetworkConfig(
            vpc_id=vpc_id,
            ami_id=ami_id,
            create_kms_vpc_endpoint=bool(v["createKmsVpcEndpoint"]),
            kms_endpoint_subnet_ids=endpoint_subnets,
            admin_cidrs=tuple(v["adminCidrs"]),
            client_cidrs=tuple(v["clientCidrs"]),
            onprem_cidrs=tuple(v["onPremCidrs"]),
            debian_mirror=v["debianMirror"] or None,
        ),
        ec2_nodes=tuple(n for _, n in ec2),
        onprem_nodes=tuple(n for _, n in onprem),
        bootstrap_node=bootstrap,
        attach_ssm_policy=bool(v["attachSsmManagedPolicy"]),
        verify_on_every_up=bool(v["verifyOnEveryUp"]),
        ssh_authorized_key=authorized,
        tags={"project": PROJECT, "stack": stack, **tags},
        warnings=tuple(c.warnings),
        tls=tls,
        jump_host=jump_host,
        decommission_data=str(v["decommissionData"]),
        ssh_next_authorized_key=next_key,
    )
