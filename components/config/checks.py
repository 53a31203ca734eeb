"""Value checks shared by every key and field that holds the same kind of thing, and value rendering.

A check takes the value as the user wrote it and returns None when it is
acceptable, else what was expected (the text an error message ends with). The
SSH checks (host, port, user, host key) serve on-prem nodes and the jump host
alike, so both follow the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

Check = Callable[[Any], "str | None"]

# Host key types pulumi-command 1.2.x can verify against Debian 12's OpenSSH (9.2).
# pulumi-command pins HostKeyAlgorithms to the pinned key's own type
# (pulumi/pulumi-command v1.2.1, commit 7f3eb6f3b77cd0fa3895ba437a695dd393f7dd25,
# provider/pkg/provider/remote/connection.go, connectionBase.SSHConfig:
# `hostKeyAlgorithms = []string{publicKey.Type()}`, shared by the proxy connection),
# so the type named here is the only signature algorithm it offers.
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
# What each refused type would make pulumi-command offer, and why sshd refuses it.
REFUSED_HOST_KEY_TYPES = {
    "ssh-rsa": "only SHA-1 RSA signatures (ssh-rsa), which OpenSSH 8.8 and later refuse (Debian 12 ships 9.2)",
    "ssh-dss": "only DSA signatures (ssh-dss), which OpenSSH 7.0 and later refuse",
}
# A login key is a client key: Go's SSH client signs with rsa-sha2-256/512 for RSA keys, so RSA is fine there.
LOGIN_KEY_TYPES = (*HOST_KEY_TYPES, "ssh-rsa")

_ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_PRINCIPAL_ARN = re.compile(r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:iam::\d{12}:(role|user)/[\w+=,.@/-]{1,512}$")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
# A key's full ARN (an alias or a bare id would let the wrapping key change without the state saying so).
_KMS_KEY_ARN = re.compile(
    r"^arn:aws(-cn|-us-gov|-iso|-iso-b)?:kms:(?P<region>[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}):\d{12}:key/"
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)
_ALIAS = re.compile(r"^alias/[a-zA-Z0-9/_-]{1,250}$")
_NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SIZE = re.compile(r"^[1-9][0-9]*[KMG]?$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_VPC = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_VPCE = re.compile(r"^vpce-[0-9a-f]{8,17}$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_AZ = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d{1,2}[a-z]$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_DEBIAN_MIRROR = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$")
# A Debian package version: [epoch:]upstream[-revision] (deb-version(7)).
_DEB_VERSION = re.compile(r"^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")
_PLUGIN_SOURCE = re.compile(r"^(/[^\0]+|https://\S+)$")
# AWS tag keys and values: letters, digits, spaces and _ . : / = + - @
# (https://docs.aws.amazon.com/tag-editor/latest/userguide/tagging.html).
TAG_CHARS = re.compile(r"^[\w .:/=+@-]*$")


def yaml_text(value: Any) -> str:
    """``value`` as the user would write it in a stack file: null, true, [a, b], {host: x}; never a Python repr."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True, sort_keys=False)
    if text.endswith("\n...\n"):  # the end-of-document marker PyYAML adds after a bare scalar
        text = text[: -len("\n...\n")]
    return text.strip()


def _matching(pattern: re.Pattern[str], expected: str) -> Check:
    def check(value: Any) -> str | None:
        return None if isinstance(value, str) and pattern.match(value) else expected

    return check


def is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_cidr(value: Any) -> bool:
    if not isinstance(value, str) or "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


def covered_by(cidr: str, ranges: tuple[str, ...]) -> bool:
    """Whether ``cidr`` lies inside one of ``ranges`` (CIDRs of another IP version never cover it)."""
    net = ipaddress.ip_network(cidr)
    for r in ranges:
        outer = ipaddress.ip_network(r)
        if outer.version == net.version and net.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False


def cidr(example: str) -> Check:
    def check(value: Any) -> str | None:
        return None if is_cidr(value) else f"a CIDR such as {example}"

    return check


def host(value: Any) -> str | None:
    ok = isinstance(value, str) and (is_ip(value) or bool(_HOSTNAME.match(value)))
    return None if ok else "an IP address or DNS name"


def ipv4_address(value: Any) -> str | None:
    ok = isinstance(value, str) and is_ip(value) and ipaddress.ip_address(value).version == 4
    return None if ok else "an IPv4 address inside the subnet"


ssh_user = _matching(_SSH_USER, "a Unix user name")
role_arn = _matching(_ROLE_ARN, "an IAM role ARN such as arn:aws:iam::123456789012:role/kms-admin")
principal_arn = _matching(_PRINCIPAL_ARN, "an IAM role or user ARN")
kms_key_arn = _matching(
    _KMS_KEY_ARN, "a KMS key ARN such as arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab "
    "(not an alias or a bare key id)"
)


def kms_key_region(value: str) -> str | None:
    match = _KMS_KEY_ARN.match(value)
    return match["region"] if match else None


alias = _matching(_ALIAS, "a name starting with alias/ (letters, digits, / _ -), not alias/aws/...")
NODE_NAME_RULE = "2-32 lower-case letters, digits or -, starting with a letter and ending with a letter or digit"
node_name = _matching(_NODE_NAME, NODE_NAME_RULE)
cluster_name = _matching(_CLUSTER_NAME, "1-32 letters, digits, _ or -")
size = _matching(_SIZE, "a size such as 256M or 1G")
subnet_id = _matching(_SUBNET, "a subnet id such as subnet-0123456789abcdef0")
vpc_id = _matching(_VPC, "a VPC id such as vpc-0123456789abcdef0")
vpce_id = _matching(_VPCE, "a VPC endpoint id such as vpce-0123456789abcdef0")
ami_id = _matching(_AMI, "an AMI id such as ami-0123456789abcdef0")
availability_zone = _matching(_AZ, "an availability zone such as eu-west-1a")
instance_type = _matching(_INSTANCE_TYPE, "an EC2 instance type such as t3.medium")
debian_mirror = _matching(
    _DEBIAN_MIRROR, "an http:// or https:// URL of a Debian archive mirror, such as http://mirror.example.net/debian"
)

deb_version = _matching(
    _DEB_VERSION, "a Debian package version such as 1:10.11.14-0+deb12u2 (apt-cache policy mariadb-server)"
)


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


plugin_source = _matching(_PLUGIN_SOURCE, "an absolute path on the node or an https:// URL of aws_key_management.so")


def alias_name(value: Any) -> str | None:
    if alias(value) is None and not str(value).startswith("alias/aws/"):
        return None
    return alias(None)


_READ_HOST_KEY = "read it on a trusted path with `ssh-keyscan -t ed25519 HOST` and drop the leading host name"


def _key_line(value: Any, types: tuple[str, ...], what: str) -> str | None:
    expected = f"{what} such as 'ssh-ed25519 AAAA...'"
    if not isinstance(value, str):
        return expected
    parts = value.split()
    if len(parts) >= 3 and parts[1] in types:
        return f"{expected} without the host name in front ({_READ_HOST_KEY})"
    if len(parts) < 2 or parts[0] not in types:
        return expected
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, UnsupportedAlgorithm):
        return f"{expected}: the base64 part is not a {parts[0]} key"
    return None


def host_key(value: Any) -> str | None:
    """A host key pulumi-command can pin and Debian 12's sshd can sign for."""
    kind = value.split()[0] if isinstance(value, str) and value.split() else ""
    if kind in REFUSED_HOST_KEY_TYPES:
        return (
            "an ed25519 or ECDSA host key (" + ", ".join(HOST_KEY_TYPES) + "): pulumi-command offers only the "
            f"pinned key's own type, so a {kind} key makes it offer {REFUSED_HOST_KEY_TYPES[kind]}; "
            f"every connection would fail. {_READ_HOST_KEY[0].upper()}{_READ_HOST_KEY[1:]}"
        )
    problem = _key_line(value, HOST_KEY_TYPES, "an OpenSSH public host key line (ed25519 or ECDSA)")
    if problem is not None and "host name in front" not in problem and "base64" not in problem:
        return f"{problem}; {_READ_HOST_KEY}"
    return problem


def login_key(value: Any) -> str | None:
    return _key_line(value, LOGIN_KEY_TYPES, "an OpenSSH public key line")
