"""The steps of the SSH path as data: commands, stdin payload kinds, triggers, and the put transport (pure).

Every step is self-contained: one ``create`` string (always ``sudo -n ...``,
no environment, no reliance on pulumi-command's ``PULUMI_COMMAND_STDOUT``
injection) plus, for some steps, a stdin. So the rehearsal (``make demo``)
can replay a recorded plan over plain SSH exactly as pulumi-command runs it.
Which steps a node has and in which order is ``components/plan/order.py``.

Files travel as a tarball on stdin, never by ``CopyToRemote``: a copied file
gets the login user's umask and owner, lands in a directory the login user
(or anyone, under /tmp) can write to, and needs SFTP. The put script unpacks
as root into a fresh root-only directory on tmpfs and installs every file with
the mode and owner from its tar header, atomically (``put_command``).

Re-run rules: a command re-runs when its ``create``/``stdin`` change (the put
steps) or when one of its ``triggers`` changes; a changed ``connection`` (a new
host key or address) replaces every command of that node. A trigger change
*replaces* the command too (pulumi-command 1.2.1 marks ``triggers[*]``
replace-on-change even when an ``update`` command is given,
pulumi/pulumi-command#855). Replacement is
create-before-delete by default, so a ``delete`` of the old command would run
after the new ``create`` and undo it; every triggered step is therefore
``delete_before_replace`` and no step has a ``delete`` at all (nothing the
path installs may be removed by Pulumi: the node and its data outlive the
stack, and a delete would need SSH to a host that may be gone).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import shlex
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

SBIN = "/usr/local/sbin"
INSTALL = f"{SBIN}/mariadb-kms-install"
ROLL = f"{SBIN}/mariadb-kms-roll"
BOOTSTRAP = f"{SBIN}/mariadb-kms-bootstrap"
VERIFY = f"{SBIN}/mariadb-kms-verify"
FIRST_BOOT = f"{SBIN}/mariadb-kms-first-boot"
# An instance booted before the first-boot script existed has none until node-files installs it;
# its first boot went by cloud-init alone, so that is what it waits for.
FIRST_BOOT_STEP = (
    f"sudo -n /bin/sh -c 'if [ -x {FIRST_BOOT} ]; then exec {FIRST_BOOT}; fi; exec cloud-init status --wait'"
)
TLS_TOOL = f"{SBIN}/mariadb-kms-tls"
DECOMMISSION = f"{SBIN}/mariadb-kms-decommission"
UPGRADE = f"{SBIN}/mariadb-kms-upgrade"
LOGIN_KEYS = f"{SBIN}/mariadb-kms-login-keys"
MEMBER_FIREWALL = f"{SBIN}/mariadb-kms-member-firewall"

ROLL_TIMEOUT_S = 1800  # an SST of a large datadir over a WAN takes a while
VERIFY_WAIT_S = 600  # InnoDB encryption threads still rotating after a settings change
BOOTSTRAP_TIMEOUT_S = 600

FileSpec = tuple[bytes | str, int, str]
"""(content, mode, "user:group") of one file a put step installs."""

# Modes of the files the program places (node files take theirs from node/MANIFEST).
UNWRAP_CONF_MODE = 0o644
BLOB_MODE = 0o600  # only the root unwrap unit reads it; ciphertext, but nobody else needs it
MYCNF_MODE = 0o644  # mariadbd (user mysql) reads it
SECRET_MODE = 0o600
ROOT = "root:root"


class Stdin(Enum):
    """Which payload a step reads on stdin (the component supplies the value)."""

    NONE = "none"
    NODE_FILES = "node-files"
    SEED_FILES = "seed-files"
    CREDENTIALS = "credentials"
    CONFIG_FILES = "config-files"
    TLS_FILES = "tls-files"  # the CA certificate, the node's certificate and its private key
    LOGIN_KEYS = "login-keys"  # the login user's public keys, one line each (not secret)
    MEMBER_FIREWALL = "member-firewall"  # nft ruleset admitting the members and any node still leaving
    MEMBER_FIREWALL_CLOSED = "member-firewall-closed"  # nft ruleset admitting the members only


class Trigger(Enum):
    """What makes a step run again (replace), beyond a change of its create string or stdin."""

    IDENTITY = "identity"  # the machine: EC2 instance id / on-prem host key. A new machine runs every step.
    NODE_FILES = "node-files"  # digest of node/ files
    CONFIG = "config"  # digest of everything a restart applies (config files and node files)
    CREDENTIALS = "credentials"  # the access key id (not the secret): a rotated key is checked again
    MEMBERS = "members"  # the member list
    TLS = "tls"  # digest of the CA and node certificates (public): a renewal reloads, and verifies again
    EVERY_UP = "every-up"  # a value that changes on each run (verifyOnEveryUp)
    VERSION = "version"  # mariadbVersion: a new version upgrades the node again
    KEY = "key"  # digest of what the escrow copy holds: the blob, the key ARN, the region and the mode


class Phase(Enum):
    """When the cluster creates a step: the install phase runs in parallel, the rest rolls."""

    INSTALL = "install"
    CONFIGURE = "configure"  # config, upgrade, preflight: after the previous node's roll
    ROLL = "roll"  # after preflight (and, on the bootstrap node, after the bootstrap)


@dataclass(frozen=True)
class Step:
    key: str
    create: str
    phase: Phase
    stdin: Stdin = Stdin.NONE
    triggers: tuple[Trigger, ...] = ()
    after: tuple[str, ...] = ()  # keys of steps of the same node
    touches_secret: bool = False  # reads a secret or unwraps the key: stdout/stderr are secret outputs

    @property
    def replaced_on_change(self) -> bool:
        return bool(self.triggers)




# --------------------------------------------------------------------------
# Put: install files from a tarball on stdin, with explicit mode and owner
# --------------------------------------------------------------------------

# Runs as root (sudo -n bash -c). Needs only what Debian's minbase has (bash,
# coreutils, tar, gzip, diffutils, findutils): it also places node/ itself.
# The tarball is unpacked into a fresh root-only directory on tmpfs (/run), so
# a secret never touches disk outside its final 0600 file and no other user
# can swap a file between unpacking and installing. Mode and owner come from
# the tar headers (tar as root keeps both): never the login user's umask, the
# trap CopyToRemote sets. Each file replaces its destination by rename, so a
# reader sees the old or the new file, never half of one. It prints paths,
# never content.
_PUT_SCRIPT = (
    "set -euo pipefail; umask 077; "
    "s=$(mktemp -d /run/mariadb-kms-put.XXXXXX); trap \"rm -rf -- $s\" EXIT; "
    "base64 -d | tar -xzf - -C \"$s\" --same-owner --same-permissions --no-overwrite-dir; "
    "cd \"$s\"; "
    "find . -type f -printf \"%P\\n\" | LC_ALL=C sort | while IFS= read -r f; do "
    "d=\"/$f\"; "
    "if [ \"${1:-}\" = --if-missing ] && [ -e \"$d\" ]; then echo \"kept $d\"; continue; fi; "
    "if [ -f \"$d\" ] && cmp -s \"$f\" \"$d\" "
    "&& [ \"$(stat -c %a.%U.%G \"$f\")\" = \"$(stat -c %a.%U.%G \"$d\")\" ]; then echo \"unchanged $d\"; continue; fi; "
    "p=$(dirname \"$d\"); [ -d \"$p\" ] || (umask 022 && mkdir -p \"$p\"); "
    "cp --preserve=mode,ownership \"$f\" \"$d.mariadb-kms-new\"; mv -fT \"$d.mariadb-kms-new\" \"$d\"; "
    "echo \"installed $d\"; "
    "done"
)


def put_command(*, if_missing: bool = False) -> str:
    """The create string of a put step: the whole script inline, so it needs nothing on the node."""
    args = " mariadb-kms-put --if-missing" if if_missing else " mariadb-kms-put"
    return f"sudo -n /bin/bash -c {shlex.quote(_PUT_SCRIPT)}{args}"


def put_payload(files: Mapping[str, FileSpec]) -> str:
    """Base64 of a deterministic tar.gz of ``files`` ({absolute dest: (content, mode, "user:group")}).

    Same files, same bytes: fixed mtimes and order, no gzip name or timestamp,
    so an unchanged payload never shows a diff.
    """
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for dest in sorted(files):
                content, mode, owner = files[dest]
                if not dest.startswith("/") or ".." in dest.split("/"):
                    raise ValueError(f"{dest!r}: a put destination must be an absolute path without '..'")
                user, sep, group = owner.partition(":")
                if not sep or not user or not group:
                    raise ValueError(f"{dest}: owner {owner!r} is not user:group")
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(dest.lstrip("/"))
                info.size = len(data)
                info.mode = mode
                info.mtime = 0
                # A name the node does not know falls back to these ids: root, never someone else.
                info.uid = info.gid = 0
                info.uname, info.gname = user, group
                tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(raw.getvalue()).decode("ascii")


def files_digest(files: Mapping[str, FileSpec]) -> str:
    """A digest of paths, modes, owners and contents: what a trigger compares."""
    h = hashlib.sha256()
    for dest in sorted(files):
        content, mode, owner = files[dest]
        data = content.encode() if isinstance(content, str) else content
        h.update(f"{dest}\0{mode:o}\0{owner}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()

