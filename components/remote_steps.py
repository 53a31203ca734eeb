"""The SSH path of one node as data: which commands run, in which order, with which stdin (pure: no pulumi).

EC2 and on-prem nodes take every change after first boot by this one path;
``components/node_path.py`` turns a ``NodePlan`` into pulumi-command
resources and nothing else. Every step is self-contained: one ``create``
string (always ``sudo -n ...``, no environment, no reliance on
pulumi-command's ``PULUMI_COMMAND_STDOUT`` injection) plus, for some steps, a
stdin. So the rehearsal (``make demo``) can replay a recorded plan over plain
SSH exactly as pulumi-command runs it.

Steps of one node (``node_plan``), in this order:

====================  ========  ===============================================================
step                  kinds     what
====================  ========  ===============================================================
``first-boot``        ec2       ``mariadb-kms-first-boot``: waits for cloud-init, then re-does
                                what first boot left undone (IMDS guard, data volume) until its
                                marker is written; cloud-init's own error status is not fatal.
``node-files``        both      ``node/`` (per ``node/MANIFEST``) from a tarball on stdin.
``seed``              both      unwrap.conf, the blob and the encryption config, only where
                                missing: what the install path needs first (EC2 user-data
                                already placed the first two; afterwards ``config`` owns these
                                files and rolls them).
``credentials``       onprem    the node's AWS credentials file (and, in aws-plugin mode, the
                                plugin's environment file) from stdin: the secret exists only on
                                stdin and in that root 0600 file.
``install``           both      ``mariadb-kms-install``: packages where missing, held; datadir
                                initialised encrypted. A no-op on a node already installed.
``tls``               both      the cluster CA certificate and the node's certificate and key from
                                stdin (key 0600, owner mysql): the key exists only on stdin and in
                                that file. Only when some TLS channel is on.
``tls-reload``        both      ``mariadb-kms-tls reload`` when the certificates changed (a
                                renewal): the running server and Galera take them without a
                                restart, and it confirms both serve them. Nothing on a node that
                                does not run yet (it reads the files when it starts).
``config``            both      unwrap.conf, blob and both MariaDB config files (members!).
``preflight``         both      ``mariadb-kms-roll --preflight``: ``mariadb-kms-unwrap --check``
                                with the node's own credentials, retried for a while (a new
                                access key takes seconds to become valid). Fails the deploy
                                while the node still runs on its old config.
``roll``              both      ``mariadb-kms-roll``: restart if the applied config is stale
                                (or start and join if MariaDB is not running), then wait until
                                this node is Synced and the cluster is back to its size.
====================  ========  ===============================================================

Cluster-wide steps: ``bootstrap`` (``bootstrap_step``: ``galera_new_cluster``
once, on the bootstrap node, create-only) and one ``verify`` per node
(``verify_step``).

Order rules (the recorded ``depends_on`` carries them; a replayer must keep them):

1. Within a node, a step runs after every step named in its ``after``.
2. ``install`` of every node runs in parallel (first deploy: installs are slow).
3. ``bootstrap`` runs after ``install`` of every node and after ``preflight`` of
   the bootstrap node; ``roll`` of the bootstrap node runs after ``bootstrap``
   (and finds it running with the current config: a no-op).
4. Rolling: nodes are ordered bootstrap node first, then configuration order.
   ``config`` of node N+1 runs after ``roll`` of node N, so a change never
   restarts two nodes at once and a first deploy joins one node at a time.
5. ``verify`` of every node runs after the last node's ``roll``.
6. ``tls`` and ``tls-reload`` are configure steps: node N+1 takes new certificates
   after node N is Synced again, so a renewal reloads one node at a time; and a
   node's config, which names the certificate files, arrives after them.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from components.config import ClusterConfig, NodeConfig
from components.mycnf import render_encryption_cnf, render_mycnf
from components.node_files import (
    BLOB_PATH,
    CREDENTIALS_PATH,
    MYCNF_ENCRYPTION_PATH,
    UNWRAP_CONF_PATH,
    render_credentials_file,
    render_unwrap_conf,
)
from components.tls_material import verify_tls_args

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


class Trigger(Enum):
    """What makes a step run again (replace), beyond a change of its create string or stdin."""

    IDENTITY = "identity"  # the machine: EC2 instance id / on-prem host key. A new machine runs every step.
    NODE_FILES = "node-files"  # digest of node/ files
    CONFIG = "config"  # digest of everything a restart applies (config files and node files)
    CREDENTIALS = "credentials"  # the access key id (not the secret): a rotated key is checked again
    MEMBERS = "members"  # the member list
    TLS = "tls"  # digest of the CA and node certificates (public): a renewal reloads, and verifies again
    EVERY_UP = "every-up"  # a value that changes on each run (verifyOnEveryUp)


class Phase(Enum):
    """When the cluster creates a step: the install phase runs in parallel, the rest rolls."""

    INSTALL = "install"
    CONFIGURE = "configure"  # config, preflight: after the previous node's roll
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


@dataclass(frozen=True)
class NodePlan:
    node: str
    kind: str
    steps: tuple[Step, ...]

    def step(self, key: str) -> Step:
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(f"{self.node}: no step {key!r}")

    def phase(self, phase: Phase) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.phase is phase)


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
    "cp --preserve=mode,ownership \"$f\" \"$d.mariadb-kms-new\"; mv -f \"$d.mariadb-kms-new\" \"$d\"; "
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


# --------------------------------------------------------------------------
# The files of one node
# --------------------------------------------------------------------------


def seed_files(
    cluster: ClusterConfig, *, key_arn: str, blob_b64: str, on_premises: bool, kms_endpoint_url: str | None = None
) -> dict[str, FileSpec]:
    """What the install path needs before it runs and that holds nothing about membership.

    The same set EC2 user-data places at first boot (unwrap.conf, the blob, the
    encryption config), so both kinds of node start the install from one state.
    """
    return {
        UNWRAP_CONF_PATH: (
            render_unwrap_conf(
                mode=cluster.mariadb.key_management,
                key_arn=key_arn,
                region=cluster.region,
                on_premises=on_premises,
                endpoint_url=kms_endpoint_url,
            ),
            UNWRAP_CONF_MODE,
            ROOT,
        ),
        BLOB_PATH: (base64.b64decode(blob_b64, validate=True), BLOB_MODE, ROOT),
        MYCNF_ENCRYPTION_PATH: (
            render_encryption_cnf(cluster, key_arn=key_arn, kms_endpoint_url=kms_endpoint_url),
            MYCNF_MODE,
            ROOT,
        ),
    }


def config_files(
    node: NodeConfig,
    cluster: ClusterConfig,
    *,
    key_arn: str,
    blob_b64: str,
    node_address: str,
    member_addresses: Sequence[str],
    kms_endpoint_url: str | None = None,
) -> dict[str, FileSpec]:
    """Everything a restart applies that the program renders: the seed files plus the node's Galera config."""
    files = seed_files(
        cluster, key_arn=key_arn, blob_b64=blob_b64, on_premises=node.kind == "onprem",
        kms_endpoint_url=kms_endpoint_url,
    )
    mycnf = render_mycnf(
        node, cluster, node_address=node_address, member_addresses=member_addresses, key_arn=key_arn,
        kms_endpoint_url=kms_endpoint_url,
    )
    files.update({path: (text, MYCNF_MODE, ROOT) for path, text in mycnf.items()})
    return files


def credentials_files(cluster: ClusterConfig, *, access_key_id: str, secret_access_key: str) -> dict[str, FileSpec]:
    """The on-prem node's secrets, root 0600. Only ever rendered inside a secret Output."""
    # One file for both modes: in aws-plugin mode systemd hands it to mariadbd as a credential.
    return {CREDENTIALS_PATH: (render_credentials_file(access_key_id, secret_access_key), SECRET_MODE, ROOT)}


def galera_cluster_address(member_addresses: Iterable[str], port: int) -> str:
    """``gcomm://a:4567,b:4567``: the wsrep_cluster_address every node's config carries."""
    return "gcomm://" + ",".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in member_addresses)


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------


def node_plan(node: NodeConfig, cluster: ClusterConfig) -> NodePlan:
    """The steps of ``node``'s SSH path, in order (see the module docstring)."""
    ec2 = node.kind == "ec2"
    onprem = node.kind == "onprem"
    steps: list[Step] = []
    if ec2:
        steps.append(Step(
            "first-boot", FIRST_BOOT_STEP, Phase.INSTALL, triggers=(Trigger.IDENTITY,),
        ))
    before_files = ("first-boot",) if ec2 else ()
    steps.append(Step(
        "node-files", put_command(), Phase.INSTALL, stdin=Stdin.NODE_FILES, triggers=(Trigger.IDENTITY,),
        after=before_files,
    ))
    steps.append(Step(
        "seed", put_command(if_missing=True), Phase.INSTALL, stdin=Stdin.SEED_FILES,
        triggers=(Trigger.IDENTITY,), after=before_files,
    ))
    install_after = ["node-files", "seed"]
    if onprem:
        steps.append(Step(
            "credentials", put_command(), Phase.INSTALL, stdin=Stdin.CREDENTIALS, triggers=(Trigger.IDENTITY,),
            touches_secret=True,
        ))
        install_after.append("credentials")
    install = f"sudo -n {INSTALL}"
    if cluster.mariadb.key_management == "aws-plugin" and cluster.mariadb.aws_plugin_source:
        install += f" --aws-plugin-source {shlex.quote(cluster.mariadb.aws_plugin_source)}"
    steps.append(Step(
        # Re-run when node/ changes: it re-enables units, reloads systemd and re-holds packages.
        "install", install, Phase.INSTALL, triggers=(Trigger.IDENTITY, Trigger.NODE_FILES),
        after=tuple(install_after), touches_secret=True,
    ))
    config_after: tuple[str, ...] = ("install",)
    if cluster.tls.any_channel:
        # After install: the key belongs to the mysql user, which the install path creates.
        steps.append(Step(
            "tls", put_command(), Phase.CONFIGURE, stdin=Stdin.TLS_FILES, triggers=(Trigger.IDENTITY,),
            after=("install",), touches_secret=True,
        ))
        steps.append(Step(
            "tls-reload", f"sudo -n {TLS_TOOL} reload", Phase.CONFIGURE, triggers=(Trigger.IDENTITY, Trigger.TLS),
            after=("tls",),
        ))
        config_after = ("install", "tls-reload")
    steps.append(Step(
        "config", put_command(), Phase.CONFIGURE, stdin=Stdin.CONFIG_FILES, triggers=(Trigger.IDENTITY,),
        after=config_after,
    ))
    checks = (Trigger.IDENTITY, Trigger.CONFIG, *((Trigger.CREDENTIALS,) if onprem else ()))
    steps.append(Step(
        "preflight", f"sudo -n {ROLL} --preflight", Phase.CONFIGURE, triggers=checks,
        after=("config", *(("credentials",) if onprem else ())), touches_secret=True,
    ))
    steps.append(Step(
        "roll", f"sudo -n {ROLL} --timeout {ROLL_TIMEOUT_S}", Phase.ROLL, triggers=checks,
        after=("preflight",), touches_secret=True,
    ))
    return NodePlan(node.name, node.kind, tuple(steps))


def bootstrap_step() -> Step:
    """``galera_new_cluster`` once, on the bootstrap node: create-only, and the same string forever.

    The command takes nothing node-specific (the script reads the members from
    the node's own config), so neither a membership change nor a new bootstrap
    node changes it; the component also ignores every input change (see
    ``components/cluster.py``).
    """
    return Step("bootstrap", f"sudo -n {BOOTSTRAP} --timeout {BOOTSTRAP_TIMEOUT_S}", Phase.ROLL, touches_secret=True)


def verify_step(node: NodeConfig, cluster: ClusterConfig, *, expect_size: int) -> Step:
    """The verify tool with the canary; its JSON report is the step's stdout, a gap is a non-zero exit."""
    args = ["--canary", "--wait", str(VERIFY_WAIT_S), "--expect-size", str(expect_size)]
    if cluster.mariadb.general_log or cluster.mariadb.slow_query_log:
        args.append("--allow-query-logs")
    # Only a channel the stack config turned off may be plaintext.
    args += verify_tls_args(cluster.tls)
    command = f"sudo -n {VERIFY} {' '.join(args)}"
    if node.kind == "ec2":
        # First boot may still be running on a new instance (a replaced one, say).
        command = f"sudo -n {FIRST_BOOT} --check >/dev/null && {command}"
    triggers = [Trigger.IDENTITY, Trigger.CONFIG, Trigger.MEMBERS]
    if cluster.tls.any_channel:
        triggers.append(Trigger.TLS)
    if cluster.verify_on_every_up:
        triggers.append(Trigger.EVERY_UP)
    return Step("verify", command, Phase.ROLL, triggers=tuple(triggers))


def rolling_order(cluster: ClusterConfig) -> tuple[NodeConfig, ...]:
    """Bootstrap node first (it must be running before anyone can join), then configuration order."""
    first = [n for n in cluster.nodes if n.name == cluster.bootstrap_node]
    return (*first, *(n for n in cluster.nodes if n.name != cluster.bootstrap_node))
