"""parse_config: defaults, derived values, and every rule reporting at once."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from components.config import ConfigError, parse_config, yaml_text

ADMIN_A = "arn:aws:iam::123456789012:role/kms-admin"
ADMIN_B = "arn:aws:iam::123456789012:role/ops/kms-breakglass"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0pq3L7Gd8nJk3s1m0y6rHc2QmX1pJ7vQzB8uX4k2Ty"
AUTH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb8m0BYyDQ8gSxZkq0dp0VXq3Vw9dtSxoYmu6Yb9r7N deploy"

VALID: dict[str, Any] = {
    "keyAdmins": [ADMIN_A, ADMIN_B],
    "vpcId": "vpc-0123456789abcdef0",
    "amiId": "ami-0123456789abcdef0",
    "sshAuthorizedKey": AUTH_KEY,
    "ec2Nodes": [
        {"name": "aws-a", "subnetId": "subnet-0123456789abcdef0", "availabilityZone": "eu-west-1a"},
        {
            "name": "aws-b",
            "subnetId": "subnet-0fedcba987654321a",
            "availabilityZone": "eu-west-1b",
            "privateIp": "10.20.2.10",
            "instanceType": "r6i.large",
            "dataVolumeGiB": 200,
        },
    ],
    "onPremNodes": [
        {"name": "dc-1", "address": "192.0.2.21", "sshUser": "deploy", "hostKey": HOST_KEY},
    ],
}


def parse(raw: dict[str, Any], region: str | None = "eu-west-1"):
    return parse_config(raw, stack="dev", region=region)


def errors_of(raw: dict[str, Any], region: str | None = "eu-west-1") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(raw, region)
    return info.value.errors


def with_(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    for k, v in changes.items():
        if v is ...:
            raw.pop(k, None)
        else:
            raw[k] = v
    return raw


def ec2(**fields: Any) -> list[dict[str, Any]]:
    node = {"name": "aws-a", "subnetId": "subnet-0123456789abcdef0", "availabilityZone": "eu-west-1a", **fields}
    return [{k: v for k, v in node.items() if v is not ...}]


def onprem(**fields: Any) -> list[dict[str, Any]]:
    node = {"name": "dc-1", "address": "192.0.2.21", "sshUser": "deploy", "hostKey": HOST_KEY, **fields}
    return [{k: v for k, v in node.items() if v is not ...}]


def test_valid_config_gets_secure_defaults() -> None:
    cfg = parse(VALID)
    assert cfg.key.alias == "alias/mariadb-kms-dev"
    assert cfg.key.rotation_period_days == 365
    assert cfg.key.deletion_window_days == 30
    assert cfg.key.allow_account_root_iam_delegation is False
    assert cfg.mariadb.key_management == "kms-envelope"
    assert cfg.mariadb.encrypt_tables == "FORCE"
    assert cfg.mariadb.encryption_threads == 4
    assert cfg.mariadb.general_log is False and cfg.mariadb.slow_query_log is False
    assert [n.name for n in cfg.nodes] == ["aws-a", "aws-b", "dc-1"]
    assert cfg.bootstrap_node == "aws-a"
    assert cfg.ec2_nodes[1].data_volume_gib == 200
    assert cfg.ec2_nodes[0].instance_type == "t3.medium"
    assert cfg.onprem_nodes[0].ssh_port == 22
    assert cfg.warnings == ()
    assert cfg.tags["stack"] == "dev"


def test_every_tls_channel_is_on_by_default() -> None:
    tls = parse(VALID).tls
    assert (tls.replication, tls.sst, tls.clients, tls.require_secure_transport) == (True, True, True, True)
    assert (tls.validity_days, tls.early_renewal_days, tls.ca_validity_days) == (365, 30, 3650)
    assert tls.any_channel


def test_turning_a_tls_channel_off_is_deliberate_and_warned_about() -> None:
    cfg = parse(with_(tlsReplication=False, tlsSst=False, tlsClients=False, requireSecureTransport=False))
    assert not cfg.tls.any_channel
    warned = " ".join(cfg.warnings)
    for key in ("tlsReplication", "tlsSst", "tlsClients"):
        assert f"{key} is false" in warned, key
    relaxed = parse(with_(requireSecureTransport=False))
    assert relaxed.tls.clients and not relaxed.tls.require_secure_transport
    assert any("requireSecureTransport is false" in w for w in relaxed.warnings)


def test_tls_lifetimes_come_from_config() -> None:
    tls = parse(with_(tlsValidityDays=90, tlsEarlyRenewalDays=20, tlsCaValidityDays=1825)).tls
    assert (tls.validity_days, tls.early_renewal_days, tls.ca_validity_days) == (90, 20, 1825)


def test_alias_default_differs_between_stacks() -> None:
    a = parse_config(VALID, stack="prod", region="eu-west-1").key.alias
    b = parse_config(VALID, stack="staging", region="eu-west-1").key.alias
    assert a != b and a.startswith("alias/") and b.startswith("alias/")


def test_one_admin_is_a_warning_not_an_error() -> None:
    cfg = parse(with_(keyAdmins=[ADMIN_A]))
    assert any("two are recommended" in w for w in cfg.warnings)


def test_onprem_only_cluster_needs_no_vpc_or_ami() -> None:
    cfg = parse({"keyAdmins": [ADMIN_A, ADMIN_B], "onPremNodes": onprem()})
    assert cfg.ec2_nodes == () and cfg.network.vpc_id is None


def test_aws_plugin_mode_with_source() -> None:
    cfg = parse(
        with_(keyManagement="aws-plugin", awsPluginSource="https://artifacts.example.com/aws_key_management.so",
              onPremDatadirEncryption="luks")
    )
    assert cfg.mariadb.key_management == "aws-plugin"


# Each case: the changed config, the key its error must name, and a fragment of
# what was expected. Every message must also quote the bad value.
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("alias without alias/", with_(keyAlias="mariadb"), "keyAlias", "alias/"),
    ("alias in the aws/ namespace", with_(keyAlias="alias/aws/ebs"), "keyAlias", "alias/aws"),
    ("encryptTables not OFF|ON|FORCE", with_(encryptTables="YES"), "encryptTables", "OFF, ON, FORCE"),
    ("encryptTables lower case", with_(encryptTables="force"), "encryptTables", "FORCE"),
    ("threads zero", with_(encryptionThreads=0), "encryptionThreads", "1 to 255"),
    ("threads too many", with_(encryptionThreads=256), "encryptionThreads", "1 to 255"),
    ("threads not an integer", with_(encryptionThreads="four"), "encryptionThreads", "an integer"),
    ("duplicate node names", with_(onPremNodes=onprem(name="aws-a")), "onPremNodes[0].name", "unique"),
    (
        "on-prem node without hostKey",
        with_(onPremNodes=onprem(hostKey=...)),
        "onPremNodes[0].hostKey",
        "host public key",
    ),
    ("on-prem hostKey not a key", with_(onPremNodes=onprem(hostKey="AAAA")), "onPremNodes[0].hostKey", "OpenSSH"),
    ("malformed CIDR", with_(adminCidrs=["10.0.0.0/33"]), "adminCidrs[0]", "CIDR"),
    ("CIDR with host bits", with_(clientCidrs=["10.0.0.1/16"]), "clientCidrs[0]", "CIDR"),
    ("egress CIDR not a CIDR", with_(onPremEgressCidrs=["203.0.113.10"]), "onPremEgressCidrs[0]", "CIDR"),
    ("malformed admin ARN", with_(keyAdmins=["arn:aws:iam::12345:role/x"]), "keyAdmins[0]", "role ARN"),
    (
        "admin is a user, not a role",
        with_(keyAdmins=["arn:aws:iam::123456789012:user/bob"]),
        "keyAdmins[0]",
        "role ARN",
    ),
    ("deployer not an ARN", with_(deployers=["bob"]), "deployers[0]", "ARN"),
    ("no nodes", with_(ec2Nodes=..., onPremNodes=...), "ec2Nodes", "at least one node"),
    ("unknown keyManagement", with_(keyManagement="vault"), "keyManagement", "kms-envelope"),
    ("aws-plugin without a source", with_(keyManagement="aws-plugin"), "awsPluginSource", "no distribution"),
    ("plugin source over http", with_(awsPluginSource="http://x/aws.so"), "awsPluginSource", "https://"),
    (
        "aws-plugin with on-prem nodes on fscrypt (the default)",
        with_(keyManagement="aws-plugin", awsPluginSource="/opt/aws_key_management.so"),
        "onPremDatadirEncryption",
        "luks (your dm-crypt volume at /srv/mariadb-kms) or none",
    ),
    (
        "logs left to the kernel on on-prem nodes without datadir encryption",
        with_(logEncryption="kernel", onPremDatadirEncryption="none", allowPlainDatadir=True),
        "logEncryption",
        "mariadb when onPremDatadirEncryption is none",
    ),
    ("missing keyAdmins", with_(keyAdmins=...), "keyAdmins", "a value"),
    ("empty keyAdmins", with_(keyAdmins=[]), "keyAdmins", "at least one"),
    ("rotation below 90 days", with_(keyRotationPeriodDays=30), "keyRotationPeriodDays", "90 to 2560"),
    ("deletion window above 30", with_(keyDeletionWindowDays=31), "keyDeletionWindowDays", "7 to 30"),
    ("gcache size not a size", with_(gcacheSize="lots"), "gcacheSize", "256M"),
    ("cluster name with spaces", with_(clusterName="my cluster"), "clusterName", "letters"),
    ("bad subnet id", with_(ec2Nodes=ec2(subnetId="sub-1")), "ec2Nodes[0].subnetId", "subnet-"),
    (
        "bad availability zone",
        with_(ec2Nodes=ec2(availabilityZone="eu-west-1")),
        "ec2Nodes[0].availabilityZone",
        "zone",
    ),
    ("tiny data volume", with_(ec2Nodes=ec2(dataVolumeGiB=1)), "ec2Nodes[0].dataVolumeGiB", "8 to 16384"),
    ("bad private IP", with_(ec2Nodes=ec2(privateIp="10.0.0.300")), "ec2Nodes[0].privateIp", "IPv4"),
    (
        "misspelt node field",
        with_(ec2Nodes=ec2(subnet="subnet-0123456789abcdef0")),
        "ec2Nodes[0].subnet",
        "no such field",
    ),
    ("node list not a list", with_(onPremNodes={"name": "dc-1"}), "onPremNodes", "list"),
    ("node name upper case", with_(onPremNodes=onprem(name="DC1")), "onPremNodes[0].name", "lower-case"),
    ("on-prem SSH port out of range", with_(onPremNodes=onprem(sshPort=70000)), "onPremNodes[0].sshPort", "1 to 65535"),
    ("on-prem bad address", with_(onPremNodes=onprem(address="not an address")), "onPremNodes[0].address", "IP"),
    (
        "two nodes on one address",
        with_(onPremNodes=onprem(address="10.20.2.10")),
        "onPremNodes[0].address",
        "its own address",
    ),
    ("EC2 nodes without vpcId", with_(vpcId=...), "vpcId", "VPC id"),
    ("EC2 nodes without amiId", with_(amiId=...), "amiId", "AMI"),
    ("EC2 nodes without SSH key", with_(sshAuthorizedKey=...), "sshAuthorizedKey", "public half"),
    ("malformed VPC endpoint", with_(kmsVpcEndpointId="vpc-123"), "kmsVpcEndpointId", "vpce-"),
    ("wrapping key given as an alias", with_(kmsKeyArn="alias/mariadb-kms-b"), "kmsKeyArn", "not an alias"),
    (
        "wrapping key in another region",
        with_(kmsKeyArn="arn:aws:kms:us-east-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"),
        "kmsKeyArn",
        "stack's region eu-west-1",
    ),
    ("mirror not a URL", with_(debianMirror="ftp.debian.org"), "debianMirror", "http:// or https:// URL"),
    ("bootstrap node not a node", with_(bootstrapNode="nope"), "bootstrapNode", "one of the node names"),
    ("boolean given as a string", with_(generalLog="yes"), "generalLog", "true or false"),
    (
        "endpoint subnet not a subnet",
        with_(createKmsVpcEndpoint=True, kmsEndpointSubnetIds=["sub-1"]),
        "kmsEndpointSubnetIds[0]",
        "subnet-",
    ),
    (
        "endpoint subnets without the endpoint",
        with_(kmsEndpointSubnetIds=["subnet-0123456789abcdef0"]),
        "kmsEndpointSubnetIds",
        "createKmsVpcEndpoint",
    ),
    (
        "jump host without hostKey",
        with_(sshJumpHost={"host": "bastion.example.net", "user": "jump"}),
        "sshJumpHost.hostKey",
        "host public key",
    ),
    (
        "jump host port out of range",
        with_(sshJumpHost={"host": "10.0.0.5", "user": "jump", "hostKey": HOST_KEY, "port": 0}),
        "sshJumpHost.port",
        "1 to 65535",
    ),
    ("tag in the aws: namespace", with_(tags={"aws:owner": "x"}), "tags.aws:owner", "not starting with aws:"),
    ("secure transport required without client TLS", with_(tlsClients=False), "requireSecureTransport", "tlsClients"),
    ("TLS switch given as a string", with_(tlsSst="yes"), "tlsSst", "true or false"),
    ("node certificate valid for 0 days", with_(tlsValidityDays=0), "tlsValidityDays", "2 to 3650"),
    ("node certificate valid for 20 years", with_(tlsValidityDays=7300), "tlsValidityDays", "2 to 3650"),
    (
        "early renewal not before expiry",
        with_(tlsValidityDays=30, tlsEarlyRenewalDays=30),
        "tlsEarlyRenewalDays",
        "less than tlsValidityDays",
    ),
    ("early renewal of 0 days", with_(tlsEarlyRenewalDays=0), "tlsEarlyRenewalDays", "from 1 to 364"),
    (
        "CA shorter-lived than a node certificate",
        with_(tlsCaValidityDays=365),
        "tlsCaValidityDays",
        "more than tlsValidityDays",
    ),
    ("CA validity not an integer", with_(tlsCaValidityDays="10y"), "tlsCaValidityDays", "an integer"),
]


@pytest.mark.parametrize(("case", "raw", "key", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_config_is_rejected_naming_key_and_expectation(
    case: str, raw: dict[str, Any], key: str, expected: str
) -> None:
    errors = errors_of(raw)
    matching = [e for e in errors if f"mariadb-kms:{key} " in e or f"mariadb-kms:{key}:" in e]
    assert matching, f"{case}: no error names {key!r}: {errors}"
    assert any(expected in e for e in matching), f"{case}: {matching}"
    assert all("expected" in e for e in matching)


def test_at_least_25_invalid_configs_are_covered() -> None:
    assert len(INVALID) >= 25


def test_malformed_region_is_rejected() -> None:
    errors = errors_of(VALID, region="Europe-1")
    assert any(e.startswith("aws:region = Europe-1:") and "eu-west-1" in e for e in errors)
    assert any("aws:region" in e for e in errors_of(VALID, region=None))


def test_unknown_key_is_rejected_without_quoting_its_value() -> None:
    errors = errors_of(with_(keyAdmin="arn:aws:iam::123456789012:role/typo-secret"))
    assert any("mariadb-kms:keyAdmin:" in e and "no such key" in e for e in errors)
    assert not any("typo-secret" in e for e in errors)


def test_all_errors_are_reported_at_once() -> None:
    raw = with_(
        keyAlias="bad",
        encryptTables="MAYBE",
        encryptionThreads=0,
        keyManagement="vault",
        adminCidrs=["nope"],
        ec2Nodes=ec2(subnetId="x"),
    )
    errors = errors_of(raw, region="nowhere")
    named = " ".join(errors)
    for key in (
        "keyAlias",
        "encryptTables",
        "encryptionThreads",
        "keyManagement",
        "adminCidrs",
        "ec2Nodes[0].subnetId",
        "aws:region",
    ):
        assert key in named, key
    assert len(errors) >= 7


def test_error_message_lists_every_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_(keyAlias="bad", encryptTables="MAYBE"))
    text = str(info.value)
    assert text.startswith("2 configuration error(s)")
    assert "keyAlias" in text and "encryptTables" in text


def test_jump_host_is_parsed_and_optional() -> None:
    assert parse(VALID).jump_host is None
    cfg = parse(with_(sshJumpHost={"host": "bastion.example.net", "user": "jump", "hostKey": HOST_KEY, "port": 2200}))
    assert cfg.jump_host is not None
    assert (cfg.jump_host.host, cfg.jump_host.user, cfg.jump_host.port) == ("bastion.example.net", "jump", 2200)
    assert cfg.jump_host.host_key == HOST_KEY


# -- SSH host keys: only types pulumi-command 1.2.x can verify against Debian 12's sshd ------------


def _public_line(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _keys() -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    return {
        "ssh-ed25519": _public_line(ed25519.Ed25519PrivateKey.generate()),
        "ecdsa-sha2-nistp256": _public_line(ec.generate_private_key(ec.SECP256R1())),
        "ecdsa-sha2-nistp384": _public_line(ec.generate_private_key(ec.SECP384R1())),
        "ecdsa-sha2-nistp521": _public_line(ec.generate_private_key(ec.SECP521R1())),
        "ssh-rsa": _public_line(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }


KEYS = _keys()
# A DSA key line in OpenSSH's format (cryptography no longer writes them): the type is all the check reads.
DSA_LINE = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7"


def jump(host_key: str) -> dict[str, Any]:
    return {"host": "bastion.example.net", "user": "jump", "hostKey": host_key}


@pytest.mark.parametrize("kind", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"])
def test_ed25519_and_ecdsa_host_keys_are_accepted_for_nodes_and_the_jump_host(kind: str) -> None:
    cfg = parse(with_(onPremNodes=onprem(hostKey=KEYS[kind] + " root@dc-1"), sshJumpHost=jump(KEYS[kind])))
    assert cfg.onprem_nodes[0].host_key.startswith(kind)
    assert cfg.jump_host is not None and cfg.jump_host.host_key == KEYS[kind]


@pytest.mark.parametrize(("kind", "why"), [("ssh-rsa", "OpenSSH 8.8"), ("ssh-dss", "OpenSSH 7.0")])
@pytest.mark.parametrize("where", ["onPremNodes[0].hostKey", "sshJumpHost.hostKey"])
def test_rsa_and_dsa_host_keys_are_refused_saying_why_and_how_to_read_the_right_one(
    kind: str, why: str, where: str
) -> None:
    line = KEYS["ssh-rsa"] if kind == "ssh-rsa" else DSA_LINE
    raw = with_(onPremNodes=onprem(hostKey=line)) if where.startswith("onPrem") else with_(sshJumpHost=jump(line))
    [error] = [e for e in errors_of(raw) if e.startswith(f"mariadb-kms:{where} = ")]
    assert "pulumi-command offers only the pinned key's own type" in error
    assert why in error and f"a {kind} key makes it offer only" in error
    assert "ssh-keyscan -t ed25519 HOST" in error


def test_the_next_login_key_is_accepted_beside_the_current_one() -> None:
    cfg = parse(with_(sshNextAuthorizedKey=KEYS["ssh-ed25519"] + " next"))
    assert cfg.login_keys == (AUTH_KEY, KEYS["ssh-ed25519"] + " next")
    assert parse(VALID).login_keys == (AUTH_KEY,)


def test_the_next_login_key_needs_a_current_one_and_must_differ_from_it() -> None:
    alone = with_(ec2Nodes=..., vpcId=..., amiId=..., sshAuthorizedKey=..., sshNextAuthorizedKey=KEYS["ssh-rsa"])
    [error] = [e for e in errors_of(alone) if "sshNextAuthorizedKey" in e]
    assert "no value unless sshAuthorizedKey is set" in error
    # The same key with another comment is the same key.
    [same] = [e for e in errors_of(with_(sshNextAuthorizedKey=AUTH_KEY + " again")) if "sshNextAuthorizedKey" in e]
    assert "a key other than sshAuthorizedKey" in same
    assert errors_of(with_(sshNextAuthorizedKey="ssh-ed25519 AAAA")) != []


def test_an_rsa_login_key_is_fine_it_is_the_client_that_signs() -> None:
    assert parse(with_(sshAuthorizedKey=KEYS["ssh-rsa"] + " deploy")).ssh_authorized_key


@pytest.mark.parametrize(
    ("host_key", "fragment"),
    [
        ("192.0.2.21 " + KEYS["ssh-ed25519"], "without the host name in front"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0pq3L7Gd8nJk3s1m0y6rHc", "not a ssh-ed25519 key"),
        (KEYS["ecdsa-sha2-nistp256"].replace("ecdsa-sha2-nistp256", "ssh-ed25519"), "not a ssh-ed25519 key"),
        ("ssh-ed448 AAAA", "ssh-keyscan -t ed25519"),
    ],
)
def test_malformed_host_keys_are_refused(host_key: str, fragment: str) -> None:
    errors = [e for e in errors_of(with_(onPremNodes=onprem(hostKey=host_key))) if "onPremNodes[0].hostKey" in e]
    assert errors and fragment in errors[0], errors


# -- AWS tag limits, and egress CIDRs the key policy admits -------------------------------------------


def tags(n: int, **extra: str) -> dict[str, str]:
    return {**{f"t{i}": "v" for i in range(n)}, **extra}


def test_tags_up_to_what_aws_allows_beside_the_programs_own() -> None:
    assert len(parse(with_(tags=tags(46))).tags) == 48
    [error] = errors_of(with_(tags=tags(47)))
    assert error.startswith("mariadb-kms:tags has 47 entries: expected at most 46 (AWS allows 50 tags")
    # A tag that replaces one of the program's own takes no extra room.
    assert len(parse(with_(tags=tags(46, project="billing"))).tags) == 48


@pytest.mark.parametrize(
    ("tag_map", "path", "fragment"),
    [
        ({"k" * 129: "v"}, "tags." + "k" * 129, "1-128"),
        ({"owner": "v" * 257}, "tags.owner", "at most 256"),
        ({"AWS:owner": "x"}, "tags.AWS:owner", "not starting with aws:"),
        ({"owner": "a,b"}, "tags.owner", "letters, digits"),
        ({"owner": 5}, "tags.owner", "a string"),
    ],
)
def test_tag_keys_and_values_within_aws_limits(tag_map: dict[str, Any], path: str, fragment: str) -> None:
    errors = [e for e in errors_of(with_(tags=tag_map)) if e.startswith(f"mariadb-kms:{path} = ")]
    assert errors and fragment in errors[0], errors
    assert len(parse(with_(tags={"k" * 128: "v" * 256})).tags) == 3  # control: the limits themselves pass


def test_a_node_egress_cidr_outside_the_stack_ranges_is_an_error() -> None:
    inside = parse(with_(onPremEgressCidrs=["203.0.113.0/28"], onPremNodes=onprem(egressCidr="203.0.113.7/32")))
    assert inside.onprem_nodes[0].egress_cidr == "203.0.113.7/32"
    [error] = errors_of(with_(onPremEgressCidrs=["203.0.113.0/28"], onPremNodes=onprem(egressCidr="198.51.100.7/32")))
    assert error.startswith("mariadb-kms:onPremNodes[0].egressCidr = 198.51.100.7/32: expected a CIDR inside one of")
    assert "203.0.113.0/28" in error
    assert errors_of(with_(onPremEgressCidrs=["2001:db8::/32"], onPremNodes=onprem(egressCidr="203.0.113.7/32")))
    # Without stack-wide ranges the per-node CIDRs are the condition themselves.
    assert parse(with_(onPremNodes=onprem(egressCidr="198.51.100.7/32"))).onprem_nodes[0].egress_cidr


# -- messages: YAML values, key paths as the user writes them, never a Python repr ----------------

PATH = re.compile(
    r"^(aws:region|mariadb-kms:[A-Za-z0-9]+(\[\d+\])?(\.[^ ]+)?(, mariadb-kms:[A-Za-z0-9]+)?)( = |: | is | has )"
)


def repr_leaks(message: str) -> list[str]:
    """Pieces of ``message`` that are Python reprs, not YAML, or a key path no user writes."""
    found = re.findall(r"\b(?:None|True|False)\b|[\[{(]'|'[\]})]", message)
    for quoted in re.findall(r"= '([^']*)'", message):
        if yaml_text(quoted) != f"'{quoted}'":  # YAML would not quote it: Python did
            found.append(f"'{quoted}'")
    if not PATH.match(message):
        found.append("key path: " + message.split(" ")[0])
    return found


def test_control_the_leak_check_finds_reprs_and_made_up_paths() -> None:
    for value in (None, True, False, "mariadb", ["nope"], {"host": "x"}, ("a",)):
        assert repr_leaks(f"mariadb-kms:keyAlias = {value!r}: expected x"), value
    assert repr_leaks("mariadb-kms:node name = aws-a: expected names unique")
    assert not repr_leaks("mariadb-kms:generalLog = 'yes': expected true or false")
    assert not repr_leaks("mariadb-kms:onPremNodes[1].hostKey is not set: expected a key")


# Configs that together reach every place the parser reports an error from (checked below).
EVERY_ERROR: list[tuple[str, dict[str, Any]]] = [
    *(("dev", raw) for _, raw, _, _ in INVALID),
    ("dev", with_(keyAlias=5, encryptionThreads="x", generalLog="yes", adminCidrs="10.0.0.0/8", keyAdmin="x")),
    ("prod.eu", VALID),
    ("dev", with_(ec2Nodes=..., onPremNodes=..., keyAlias="bad")),
    ("dev", with_(onPremNodes=[5, {"name": "dc-2", "adress": "x"}], sshJumpHost="bastion")),
    ("dev", with_(ec2Nodes=..., vpcId=..., amiId=..., sshAuthorizedKey=..., createKmsVpcEndpoint=True)),
    ("dev", with_(onPremEgressCidrs=["203.0.113.0/28"], onPremNodes=onprem(egressCidr="198.51.100.7/32"))),
    ("dev", with_(onPremCidrs=["192.0.2.0/24"], onPremNodes=onprem(address="198.18.0.5"))),
    ("dev", with_(tags="team=db")),
    ("dev", with_(tags={**tags(60), "aws:x": None, "owner": True})),
    ("dev", with_(sshAuthorizedKey="ssh-rsa AAAA")),
    ("dev", with_(ec2Nodes=..., vpcId=..., amiId=..., sshAuthorizedKey=..., sshNextAuthorizedKey=KEYS["ssh-rsa"])),
    ("dev", with_(sshNextAuthorizedKey=AUTH_KEY + " again")),
    ("dev", with_(tlsCaGeneration=3, tlsCaOtherGeneration=3)),
    ("dev", with_(ec2Nodes=..., onPremNodes=onprem(decommission=True))),
    ("dev", with_(ec2Nodes=ec2(decommission=True), onPremNodes=onprem(), bootstrapNode="aws-a")),
]


def _report_sites() -> set[int]:
    """Lines in parse.py that report an error: calls of c.bad, c.missing and c.errors.append outside _Collector."""
    import ast
    import inspect

    from components.config import parse as parse_module

    tree = ast.parse(inspect.getsource(parse_module))
    collector = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Collector")
    inside = {id(n) for n in ast.walk(collector)}
    sites = set()
    for node in ast.walk(tree):
        if id(node) in inside or not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = ast.unparse(node.func)
        if target in ("c.bad", "c.missing", "c.errors.append"):
            sites.add(node.lineno)
    return sites


def test_every_error_message_shows_yaml_values_and_user_key_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from components.config import parse as parse_module

    reached: set[int] = set()

    class Errors(list[str]):
        def append(self, message: str) -> None:
            frame = sys._getframe(1)
            if frame.f_code.co_name in ("bad", "missing"):
                frame = frame.f_back  # type: ignore[assignment]
            if frame.f_code.co_filename == parse_module.__file__:
                reached.add(frame.f_lineno)
            super().append(message)

    class Collector(parse_module._Collector):
        def __init__(self) -> None:
            super().__init__(errors=Errors())

    monkeypatch.setattr(parse_module, "_Collector", Collector)
    messages = []
    for stack, raw in EVERY_ERROR:
        with pytest.raises(ConfigError) as info:
            parse_config(raw, stack=stack, region="eu-west-1")
        messages += info.value.errors
    messages += errors_of(VALID, region=None)
    unreached = _report_sites() - reached
    assert not unreached, f"no test config reaches the errors reported on parse.py lines {sorted(unreached)}"
    leaks = {m: repr_leaks(m) for m in messages if repr_leaks(m)}
    assert not leaks, leaks


def test_a_wrapping_key_of_another_account_in_the_region_is_taken_and_none_means_the_stacks_own() -> None:
    other = "arn:aws:kms:eu-west-1:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert parse_config(with_(kmsKeyArn=other), stack="dev", region="eu-west-1").key.wrapping_key_arn == other
    assert parse_config(VALID, stack="dev", region="eu-west-1").key.wrapping_key_arn is None


def test_aws_plugin_with_fscrypt_is_refused_only_where_on_prem_nodes_would_need_it() -> None:
    plugin = {"keyManagement": "aws-plugin", "awsPluginSource": "/opt/aws_key_management.so"}
    # EC2 nodes only: their volumes are EBS's, fscrypt (the on-prem default) applies to no node.
    assert parse(with_(**plugin, onPremNodes=...)).mariadb.key_management == "aws-plugin"
    for mode in ("luks", "none"):
        assert parse(with_(**plugin, onPremDatadirEncryption=mode)).mariadb.onprem_datadir_encryption == mode
    # Control: kms-envelope keeps the default, fscrypt, with the same on-prem nodes.
    assert parse(with_()).mariadb.onprem_datadir_encryption == "fscrypt"


def test_log_encryption_kernel_is_refused_only_where_an_on_prem_datadir_is_not_kernel_encrypted() -> None:
    assert parse(with_()).mariadb.log_encryption == "mariadb"  # the default: MariaDB encrypts both logs
    for mode in ("fscrypt", "luks"):
        parsed = parse(with_(logEncryption="kernel", onPremDatadirEncryption=mode))
        assert parsed.mariadb.log_encryption == "kernel", mode
    # EC2 nodes only: their volumes are EBS's, encrypted with the cluster's key; the on-prem mode applies to no node.
    assert parse(with_(logEncryption="kernel", onPremDatadirEncryption="none",
                       onPremNodes=...)).mariadb.log_encryption == "kernel"
    # Control: on-prem nodes with no encryption below MariaDB, even with the plain datadir allowed.
    errors = errors_of(with_(logEncryption="kernel", onPremDatadirEncryption="none", allowPlainDatadir=True))
    assert errors == [
        "mariadb-kms:logEncryption = kernel: expected mariadb when onPremDatadirEncryption is none and onPremNodes "
        "is not empty: `kernel` leaves the redo and binary logs to the encryption below MariaDB, and these nodes "
        "have none (or set onPremDatadirEncryption to fscrypt or luks)"]


def test_log_encryption_errors_come_with_the_others_and_unknown_values_name_the_choices() -> None:
    errors = errors_of(with_(logEncryption="kernel", onPremDatadirEncryption="none", encryptTables="MAYBE"))
    assert [e.split(" = ")[0] for e in errors] == ["mariadb-kms:encryptTables", "mariadb-kms:logEncryption"]
    assert errors_of(with_(logEncryption="plaintext")) == [
        "mariadb-kms:logEncryption = plaintext: expected one of mariadb, kernel"]
