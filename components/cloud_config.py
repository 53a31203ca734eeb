"""An EC2 node's first-boot cloud-config and its user-data (pure: no pulumi).

``render_cloud_config`` builds the cloud-config as data from plain values;
``render_user_data`` dumps it with pyyaml, gzips it deterministically (no file
name, mtime 0) and base64-encodes it for ``user_data_base64``.

User-data covers first boot only and holds what belongs to the instance for
its whole life: its name, its pinned SSH host key, the login key, the IMDS
guard, its data volume, the cluster data key blob and unwrap.conf. It holds
nothing that changes with membership or settings, so no such change ever
touches every instance at once.

It does not hold the node software: ``node/`` gzipped is larger than EC2's
16 KB user-data limit (``render_user_data`` refuses anything larger, with the
size), so MariaDB is installed over SSH by the same path as on premises
(the ``node-files`` step, then ``mariadb-kms-install``), once first boot is done. First boot writes
only the scripts that must run before anyone logs in: the IMDS guard, the data
volume and ``mariadb-kms-first-boot``, which runs them and which the SSH path
runs again until its marker says first boot succeeded (cloud-init's own
status stays "error" for good after one failed module).
"""

from __future__ import annotations

import base64
import binascii
import copy
import gzip
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from components.node_files import BLOB_PATH, CONF_DIR, UNWRAP_CONF_PATH, NodeFile

BASE_PATH = Path(__file__).resolve().parent.parent / "cloud-init" / "ec2-node.yaml"
HEADER = "#cloud-config\n"

# EC2 takes at most 16 KB of user-data, counted before base64.
USER_DATA_LIMIT = 16 * 1024

# Debian's AMIs log in as admin; it is named here, not taken from the image's
# default user, so a bare Debian rootfs (the rehearsal) gets the same account.
LOGIN_USER = "admin"

DATA_VOLUME_CONF_PATH = f"{CONF_DIR}/data-volume.conf"
DATA_VOLUME_SCRIPT = "/usr/local/sbin/mariadb-kms-data-volume"
# Runs first boot's steps; the SSH path runs it again until its marker says they all succeeded.
FIRST_BOOT_SCRIPT = "/usr/local/sbin/mariadb-kms-first-boot"
IMDS_GUARD_UNIT = "mariadb-kms-imds-guard.service"

# The node files first boot needs (sources under node/). The rest of node/
# arrives over SSH; these are installed again then, byte for byte the same.
FIRST_BOOT_SOURCES = (
    "mariadb-kms-imds-guard",
    "imds-root-only.nft",
    IMDS_GUARD_UNIT,
    "mariadb-kms-data-volume",
    "mariadb-kms-first-boot",
)

# Owners that exist when cloud-init's write_files runs (init stage). Files for
# the login user wait for the final stage (defer), after users-groups made it.
_EARLY_USERS = frozenset({"root"})
_DEFERRED_USERS = frozenset({LOGIN_USER})

_NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_VOLUME_ID = re.compile(r"^vol-[0-9a-f]{8,17}$")
_ED25519_PUBLIC = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+={0,3}( \S.*)?$")
_OPENSSH_PRIVATE = re.compile(
    r"^-----BEGIN OPENSSH PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+-----END OPENSSH PRIVATE KEY-----\n?$"
)
_AUTHORIZED_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}( \S.*)?$")


class UserDataTooLarge(ValueError):
    pass


@lru_cache(maxsize=1)
def _base(path: Path = BASE_PATH) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def first_boot_files(files: Iterable[NodeFile]) -> tuple[NodeFile, ...]:
    """The node files user-data carries, in FIRST_BOOT_SOURCES order; every one must be in the manifest."""
    by_source = {f.source: f for f in files}
    missing = [s for s in FIRST_BOOT_SOURCES if s not in by_source]
    if missing:
        raise ValueError(f"node/MANIFEST lacks the first-boot file(s) {', '.join(missing)}")
    return tuple(by_source[s] for s in FIRST_BOOT_SOURCES)


def _file_entry(path: str, content: bytes, mode: int, owner: str) -> dict[str, Any]:
    user = owner.split(":", 1)[0]
    if user not in _EARLY_USERS | _DEFERRED_USERS:
        # cloud-init cannot chown to a user that only a later install creates (mysql).
        raise ValueError(f"{path}: owner {owner!r} does not exist at first boot; install it over SSH instead")
    entry: dict[str, Any] = {"path": path, "permissions": f"0{mode:o}", "owner": owner}
    try:
        entry["content"] = content.decode("utf-8")
    except UnicodeDecodeError:
        entry["encoding"] = "b64"
        entry["content"] = base64.b64encode(content).decode("ascii")
    if user in _DEFERRED_USERS:
        entry["defer"] = True
    return entry


def _blob_bytes(data_key_blob: str) -> bytes:
    try:
        blob = base64.b64decode("".join(data_key_blob.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data key blob is not base64 (expected a KMS CiphertextBlob)") from None
    if not blob:
        raise ValueError("the data key blob is empty")
    return blob


def render_data_volume_conf(volume_id: str) -> str:
    return (
        "# mariadb-kms: this node's data volume, for mariadb-kms-data-volume (written at first boot).\n"
        "# Overrides go in data-volume.conf.d/*.conf (the rehearsal sets device=none there).\n"
        f"volume_id={volume_id}\n"
    )


def render_cloud_config(
    *,
    node_name: str,
    files: Sequence[NodeFile],
    data_key_blob: str,
    unwrap_conf: str,
    host_private_key: str,
    host_public_key: str,
    authorized_key: str,
    data_volume_id: str,
    debian_mirror: str | None = None,
) -> dict[str, Any]:
    """The node's first-boot cloud-config as data.

    ``files`` are the node files to write (``first_boot_files(node_files(mode))``);
    ``data_key_blob`` is the KMS ciphertext blob, base64; the host key is the
    ed25519 pair in OpenSSH format that the program pins.
    """
    if not _NODE_NAME.match(node_name):
        raise ValueError(f"node name {node_name!r} is not a valid host name")
    if not _VOLUME_ID.match(data_volume_id):
        raise ValueError(f"data volume id {data_volume_id!r} is not an EBS volume id (vol-...)")
    public = host_public_key.strip()
    if not _ED25519_PUBLIC.match(public):
        raise ValueError("the SSH host public key is not an OpenSSH ssh-ed25519 line")
    if not _OPENSSH_PRIVATE.match(host_private_key):
        raise ValueError("the SSH host private key is not an OpenSSH private key")
    login_key = authorized_key.strip()
    if not _AUTHORIZED_KEY.match(login_key):
        raise ValueError("the login user's authorized key is not an OpenSSH public key line")
    blob = _blob_bytes(data_key_blob)

    write_files = [_file_entry(f.dest, f.content, f.mode, f.owner) for f in files]
    write_files += [
        _file_entry(DATA_VOLUME_CONF_PATH, render_data_volume_conf(data_volume_id).encode(), 0o644, "root:root"),
        _file_entry(UNWRAP_CONF_PATH, unwrap_conf.encode("utf-8"), 0o644, "root:root"),
        # Not secret by itself (only KMS can open it), but nobody but root needs to read it.
        _file_entry(BLOB_PATH, blob, 0o600, "root:root"),
    ]
    if len({e["path"] for e in write_files}) != len(write_files):
        raise ValueError("two files for one path in write_files")

    config: dict[str, Any] = {
        **copy.deepcopy(_base()),
        "hostname": node_name,
        "ssh_keys": {
            "ed25519_private": host_private_key if host_private_key.endswith("\n") else host_private_key + "\n",
            "ed25519_public": public,
        },
        "users": [
            {
                "name": LOGIN_USER,
                "gecos": "mariadb-kms administrator",
                "shell": "/bin/bash",
                "lock_passwd": True,
                # The program's SSH path runs everything with sudo -n.
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": [login_key],
            }
        ],
        "write_files": write_files,
        # One shell script (cloud-init joins these lines); set -e so a failed step
        # fails first boot (cloud-init status: error) instead of running on. The
        # steps live in the first-boot script, which the SSH path re-runs until
        # its own marker is written: a failed first boot is retried, not fatal.
        "runcmd": [
            "set -eu",
            [FIRST_BOOT_SCRIPT, "--from-cloud-init"],
        ],
    }
    if debian_mirror:
        # cloud-init configures apt before it installs `packages:`, so first boot's own installs use it too.
        config["apt"] = {"primary": [{"arches": ["default"], "uri": debian_mirror}]}
    return config


# libyaml's emitter where PyYAML has it, for the same text: measured on a 15-node program (10 EC2), the
# user-data's rendering took 105 ms of process CPU with the pure-Python emitter and 8 ms with libyaml's.
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):  # type: ignore[misc]
    """Multi-line strings as literal blocks, so a file reads as itself in the user-data."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)

# Both emitters close a document whose last scalar keeps its trailing blank lines ("|+") with an explicit
# "..." line; libyaml also does once any such scalar came earlier. Dropping it in that case only keeps the
# user-data byte for byte what the pure-Python emitter (and earlier versions) rendered, so no stack sees a
# user-data change from the emitter alone. A "|+" scalar ends in a blank line, which is how it is told apart.
_DOCUMENT_END = "\n...\n"
_KEPT_BLANK_END = "\n\n...\n"


def cloud_config_text(cloud_config: dict[str, Any]) -> str:
    """The cloud-config as YAML with its ``#cloud-config`` header (what cloud-init reads)."""
    body = yaml.dump(cloud_config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)
    if body.endswith(_DOCUMENT_END) and not body.endswith(_KEPT_BLANK_END):
        body = body[: -len(_DOCUMENT_END) + 1]
    return HEADER + body


def render_user_data(cloud_config: dict[str, Any], *, limit: int = USER_DATA_LIMIT) -> str:
    """gzip (deterministic: no name, mtime 0) + base64 of the cloud-config, for ``user_data_base64``.

    Raises UserDataTooLarge when the compressed bytes exceed EC2's limit.
    """
    raw = gzip.compress(cloud_config_text(cloud_config).encode("utf-8"), compresslevel=9, mtime=0)
    if len(raw) > limit:
        raise UserDataTooLarge(
            f"user-data is {len(raw)} bytes gzipped, over EC2's limit of {limit} bytes: "
            "move files out of first boot (they can be installed over SSH)"
        )
    return base64.b64encode(raw).decode("ascii")


def decode_user_data(user_data_base64: str) -> str:
    """The cloud-config text inside ``user_data_base64`` (for the rehearsal and tests)."""
    text = gzip.decompress(base64.b64decode(user_data_base64, validate=True)).decode("utf-8")
    if not text.startswith(HEADER):
        raise ValueError("user-data is not a #cloud-config document")
    return text
