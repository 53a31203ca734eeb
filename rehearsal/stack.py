"""The rehearsal's stack config: ``Pulumi.rehearsal.yaml``, sized and completed for one run.

The file holds what a user would write; per run the rehearsal adds what only
exists at run time (see the file's header): a fresh SSH login key pair, each
on-prem node's testbed address and a fresh host key for it, and the node
count. The result is validated by the program's own ``parse_config`` before
anything starts, so a bad file fails in a second, naming the key.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.config import PROJECT, ClusterConfig, parse_config
from rehearsal.recorder import REPO

STACK_FILE = REPO / "Pulumi.rehearsal.yaml"
STACK = "rehearsal"
SECRET_KEYS = ("sshPrivateKey",)


class StackError(ValueError):
    pass


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    public_line: str  # "ssh-ed25519 AAAA... comment", no newline


def new_ed25519(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}")


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # "ec2" or "onprem"
    address: str


@dataclass
class RehearsalStack:
    config: dict[str, Any]  # mariadb-kms keys without the namespace, the secret one included
    region: str
    cluster: ClusterConfig
    nodes: list[Node]  # in the program's node order, which is also the testbed's host order
    login: KeyPair
    onprem_host_keys: dict[str, KeyPair]


def load_file(path: Path = STACK_FILE) -> tuple[dict[str, Any], str]:
    """(mariadb-kms keys without namespace, aws:region) from a Pulumi stack file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise StackError(f"{path}: 'config' is not a mapping")
    prefix = PROJECT + ":"
    raw = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
    others = sorted(k for k in config if not k.startswith(prefix) and k != "aws:region")
    if others:
        raise StackError(f"{path}: keys the rehearsal does not pass on: {others}")
    region = config.get("aws:region")
    if not isinstance(region, str):
        raise StackError(f"{path}: aws:region is missing")
    return raw, region


def _letters(index: int) -> str:
    letters = string.ascii_lowercase
    out = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = letters[rest] + out
    return out


def with_node_count(raw: Mapping[str, Any], count: int | None) -> dict[str, Any]:
    """``raw`` with EC2 nodes added (aws-c, aws-d, ... in the listed subnets, round robin) or dropped
    from the end until there are ``count`` nodes; on-prem nodes stay as listed."""
    out = copy.deepcopy(dict(raw))
    if count is None:
        return out
    ec2 = list(out.get("ec2Nodes") or [])
    onprem = list(out.get("onPremNodes") or [])
    if count < max(1, len(onprem)):
        raise StackError(f"NODES={count}: the stack lists {len(onprem)} on-prem node(s); at least that many")
    wanted = count - len(onprem)
    if wanted and not ec2:
        raise StackError("the stack lists no EC2 node to copy subnets from")
    taken = {n["name"] for n in ec2} | {n["name"] for n in onprem}
    i = 0
    while len(ec2) < wanted:
        name = f"aws-{_letters(i)}"
        i += 1
        if name in taken:
            continue
        template = ec2[len(ec2) % len(raw.get("ec2Nodes") or ec2)]
        ec2.append({**{k: v for k, v in template.items() if k != "privateIp"}, "name": name})
        taken.add(name)
    out["ec2Nodes"] = ec2[:wanted]
    return out


def prepare(
    raw: Mapping[str, Any], region: str, *, address_of: Callable[[int], str], nodes: int | None = None
) -> RehearsalStack:
    """The run's config: sized, completed with fresh keys and addresses, validated by ``parse_config``.

    ``address_of(i)`` is the testbed address of host number ``i`` (1-based, in node order).
    """
    if raw.get("keyManagement", "kms-envelope") != "kms-envelope":
        raise StackError("the rehearsal runs keyManagement kms-envelope only: no distribution ships the "
                         "aws_key_management plugin that aws-plugin needs")
    for key in ("sshPrivateKey", "sshAuthorizedKey"):
        if key in raw:
            raise StackError(f"{key}: the rehearsal makes its own login key; leave it out of {STACK_FILE.name}")
    config = with_node_count(raw, nodes)
    login = new_ed25519("mariadb-kms-rehearsal")
    config["sshPrivateKey"] = login.private_openssh
    config["sshAuthorizedKey"] = login.public_line
    names = [n["name"] for n in config.get("ec2Nodes") or []] + [n["name"] for n in config.get("onPremNodes") or []]
    addresses = {name: address_of(i) for i, name in enumerate(names, start=1)}
    host_keys: dict[str, KeyPair] = {}
    for node in config.get("onPremNodes") or []:
        for key in ("address", "hostKey"):
            if key in node:
                raise StackError(f"onPremNodes {node['name']}: {key} is filled in by the rehearsal; leave it out")
        host_keys[node["name"]] = new_ed25519(f"root@{node['name']}")
        node["address"] = addresses[node["name"]]
        node["hostKey"] = host_keys[node["name"]].public_line
    public = {k: v for k, v in config.items() if k not in SECRET_KEYS}
    try:
        cluster = parse_config(public, stack=STACK, region=region)
    except ValueError as err:
        raise StackError(f"{STACK_FILE.name}: {err}") from None
    ordered = [Node(n.name, n.kind, addresses[n.name]) for n in cluster.nodes]
    if [n.name for n in ordered] != names:
        raise StackError("the program orders nodes differently from the rehearsal; addresses would not match")
    return RehearsalStack(config, region, cluster, ordered, login, host_keys)
