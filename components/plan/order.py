"""The cluster's step order, in one place: which step runs on which node after which (pure: no pulumi).

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
``login-keys``        both      ``mariadb-kms-login-keys``: the login user's authorized_keys
                                holds ``sshAuthorizedKey`` (and ``sshNextAuthorizedKey`` during a
                                rotation) in a managed block; a key no longer listed is removed.
                                Only when ``sshAuthorizedKey`` is set. Keys on stdin (public).
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
``escrow``            both      a copy of the blob and unwrap.conf (key ARN, region) on the data
                                volume, beside the datadir (``escrow_command``): the volume
                                alone plus KMS gives the key back. Again whenever they change.
``member-firewall``   both      ``mariadb-kms-member-firewall``: the Galera ports admit the
                                members (and a node still leaving) only; the nft ruleset from
                                stdin (``components/member_firewall.py``), loaded without a
                                restart. Before the roll, so a joiner finds every member open.
``preflight``         both      ``mariadb-kms-roll --preflight``: ``mariadb-kms-unwrap --check``
                                with the node's own credentials, retried for a while (a new
                                access key takes seconds to become valid). Fails the deploy
                                while the node still runs on its old config.
``upgrade``           both      only with ``mariadbVersion``: ``mariadb-kms-upgrade`` unholds the
                                packages, installs that version with the package's own restart
                                blocked (policy-rc.d) and holds them again; the roll restarts.
``roll``              both      ``mariadb-kms-roll``: restart if the applied config is stale
                                (or start and join if MariaDB is not running), then wait until
                                this node is Synced and the cluster is back to its size.
====================  ========  ===============================================================

Cluster-wide steps: ``bootstrap`` (``bootstrap_step``: ``galera_new_cluster``
once, on the bootstrap node, create-only) and one ``verify`` per node
(``verify_step``).

Order rules (``cluster_plan`` states them as explicit edges between entries;
the recorded ``depends_on`` carries them; a replayer must keep them):

0. A node's steps that wait for no other step of that node (``first-boot`` on
   EC2; the put steps on-prem) wait for the machine's prerequisites (the EC2
   instance and the way to KMS).
1. Within a node, a step runs after every step named in its ``after``.
2. ``install`` of every node runs in parallel (first deploy: installs are slow).
3. ``bootstrap`` runs after ``install`` of every node and after ``preflight`` of
   the bootstrap node; ``roll`` of the bootstrap node runs after ``bootstrap``
   (and finds it running with the current config: a no-op).
4. Rolling: nodes are ordered bootstrap node first, then configuration order.
   ``config`` of node N+1 runs after ``roll`` of node N, so a change never
   restarts two nodes at once and a first deploy joins one node at a time.
5. ``verify`` of every node runs after its own ``roll`` and the last node's ``roll``.
6. ``tls`` and ``tls-reload`` are configure steps: node N+1 takes new certificates
   after node N is Synced again, so a renewal reloads one node at a time; and a
   node's config, which names the certificate files, arrives after them. So is
   ``upgrade``: node N+1 upgrades only once node N runs the new version, Synced.
7. A node with ``decommission: true`` is no member (no other node lists it, and
   verification expects the members only). Its path is ``first-boot`` (EC2),
   ``node-files`` and ``decommission`` (``mariadb-kms-decommission``: leave the
   cluster cleanly, wipe key material, blob and credentials, keep or wipe the
   data), run after the last member's roll, one leaving node after the other.
   Then every member's ``shut-out`` (``mariadb-kms-member-firewall`` with the
   members-only ruleset) drops the leavers' addresses from its Galera ports:
   Galera has no certificate revocation list, so this is what shuts them out.
   Until their leave, members still admit them, so the leave is clean. Every
   verification runs after the last of these.
8. An EC2 member's instance type (``instance-type``, no command: a stop, a
   modify and a start when it differs) waits for the previous node's roll and
   for its own install; its configure steps, and so its roll, wait for it. The
   instance itself ignores ``instanceType`` after launch (pulumi-aws would stop
   and start every changed instance at once), and the node's restart digest
   holds the type, so its roll runs again afterwards and ends only Synced.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from components.cloud_config import LOGIN_USER
from components.config import ClusterConfig, Ec2NodeConfig, NodeConfig, OnPremNodeConfig
from components.mycnf import verify_datadir_args
from components.node_files import BLOB_PATH, UNWRAP_CONF_PATH
from components.plan.steps import (
    BOOTSTRAP,
    BOOTSTRAP_TIMEOUT_S,
    DECOMMISSION,
    FIRST_BOOT,
    FIRST_BOOT_STEP,
    INSTALL,
    LOGIN_KEYS,
    MEMBER_FIREWALL,
    ROLL,
    ROLL_TIMEOUT_S,
    TLS_TOOL,
    UPGRADE,
    VERIFY,
    VERIFY_WAIT_S,
    Phase,
    Stdin,
    Step,
    Trigger,
    put_command,
)
from components.tls_material import verify_tls_args


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
    if cluster.login_keys and not node.decommission:
        steps.append(login_keys_step(node))
    if node.decommission:
        # The node's other steps leave the program: the engine deletes them from state after everything
        # else ran, and none has a delete command, so nothing runs on the host for them.
        steps.append(decommission_step(cluster))
        return NodePlan(node.name, node.kind, tuple(steps))
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
    steps.append(Step(
        "escrow", escrow_command(), Phase.CONFIGURE, triggers=(Trigger.IDENTITY, Trigger.KEY), after=("config",),
    ))
    steps.append(member_firewall_step())
    before_preflight = "config"
    if cluster.mariadb.version:
        steps.append(upgrade_step(cluster.mariadb.version))
        before_preflight = "upgrade"
    checks = (Trigger.IDENTITY, Trigger.CONFIG, *((Trigger.CREDENTIALS,) if onprem else ()))
    steps.append(Step(
        "preflight", f"sudo -n {ROLL} --preflight", Phase.CONFIGURE, triggers=checks,
        after=(before_preflight, *(("credentials",) if onprem else ())), touches_secret=True,
    ))
    steps.append(Step(
        "roll", f"sudo -n {ROLL} --timeout {ROLL_TIMEOUT_S}", Phase.ROLL, triggers=checks,
        after=("preflight", "member-firewall"), touches_secret=True,
    ))
    return NodePlan(node.name, node.kind, tuple(steps))


# The data volume's mount point on every node; the datadir is its data/ subdirectory. SST's joiner
# deletes files it does not know inside the datadir, so the escrow copy is a sibling of it.
DATA_VOLUME = "/srv/mariadb-kms"
ESCROW_DIR = f"{DATA_VOLUME}/escrow"
ESCROW_BLOB = f"{ESCROW_DIR}/{BLOB_PATH.rsplit('/', 1)[1]}"
ESCROW_UNWRAP_CONF = f"{ESCROW_DIR}/{UNWRAP_CONF_PATH.rsplit('/', 1)[1]}"


def escrow_command() -> str:
    """Copy the installed blob and unwrap.conf (ciphertext and the key ARN: no secret) to the data volume.

    Root-only like the originals. Each file is replaced by rename, so a reader
    (a restore from this volume) sees the old or the new copy, never half of
    one. A node whose volume is not mounted there still gets the copy on its
    root filesystem, and says so: the copy then dies with the instance.
    """
    script = (
        "set -euo pipefail; umask 077; "
        f"install -d -m 0700 -o root -g root {ESCROW_DIR}; "
        f"for pair in {BLOB_PATH}:{ESCROW_BLOB} {UNWRAP_CONF_PATH}:{ESCROW_UNWRAP_CONF}; do "
        "src=${pair%%:*}; dst=${pair#*:}; "
        "if cmp -s \"$src\" \"$dst\"; then echo \"unchanged $dst\"; continue; fi; "
        "install -m 0600 -o root -g root \"$src\" \"$dst.mariadb-kms-new\"; mv -f \"$dst.mariadb-kms-new\" \"$dst\"; "
        "echo \"escrowed $dst\"; done; sync; "
        f"mountpoint -q {DATA_VOLUME} || echo \"warning: {DATA_VOLUME} is not a mount point: "
        "this copy lives on the root filesystem\" >&2"
    )
    return f"sudo -n /bin/bash -c {shlex.quote(script)} mariadb-kms-escrow"


def login_user(node: NodeConfig) -> str:
    """The user every connection to ``node`` logs in as (EC2: the user first boot makes)."""
    return node.ssh_user if isinstance(node, OnPremNodeConfig) else LOGIN_USER


def login_keys_stdin(cluster: ClusterConfig) -> str | None:
    """What the login-keys step reads: one public key line each, the current key first (None: no step)."""
    if not cluster.login_keys:
        return None
    return "".join(f"{key.strip()}\n" for key in cluster.login_keys)


def login_keys_step(node: NodeConfig) -> Step:
    """``mariadb-kms-login-keys``: the login user accepts the program's login keys and no retired one.

    Its input is its stdin (the public keys), so a key change re-runs it as an
    update, with no trigger; it restarts nothing (sshd reads authorized_keys
    at each login). In the install phase: every node takes a new key at once,
    before any step that a later `pulumi up` could run with the new key.
    """
    return Step(
        "login-keys", f"sudo -n {LOGIN_KEYS} --user {shlex.quote(login_user(node))}", Phase.INSTALL,
        stdin=Stdin.LOGIN_KEYS, triggers=(Trigger.IDENTITY,), after=("node-files",),
    )


def upgrade_step(version: str) -> Step:
    """``mariadb-kms-upgrade``: the held packages to ``version``, the running server left alone (the roll restarts).

    In the configure phase, so node N+1 upgrades only after node N's roll has it
    Synced on the new version. Its trigger is the version: a new one runs it again.
    """
    return Step(
        "upgrade", f"sudo -n {UPGRADE} --version {shlex.quote(version)}", Phase.CONFIGURE,
        triggers=(Trigger.IDENTITY, Trigger.VERSION), after=("config",),
    )


def decommission_step(cluster: ClusterConfig) -> Step:
    """``mariadb-kms-decommission``: the node leaves the cluster and forgets its key (run once, as a create).

    Its only trigger is the machine, so it never runs again on the same host.
    """
    data = "--wipe-data" if cluster.decommission_data == "wipe" else "--keep-data"
    return Step(
        "decommission", f"sudo -n {DECOMMISSION} {data}", Phase.ROLL, triggers=(Trigger.IDENTITY,),
        after=("node-files",), touches_secret=True,
    )


def member_firewall_step() -> Step:
    """``mariadb-kms-member-firewall``: the Galera ports admit the members and any node still leaving.

    Its input is its stdin (the rendered ruleset), so a new member list re-runs
    it as an update; nft swaps the table atomically and MariaDB keeps running.
    A configure step: an existing member admits a new one before that one's
    roll starts it.
    """
    return Step(
        "member-firewall", f"sudo -n {MEMBER_FIREWALL}", Phase.CONFIGURE, stdin=Stdin.MEMBER_FIREWALL,
        triggers=(Trigger.IDENTITY,), after=("config",),
    )


def shut_out_step() -> Step:
    """The members-only ruleset on a member, once every leaving node has left (rule 7): their addresses
    leave its Galera ports. Only while a node is leaving; the next run's ``member-firewall`` carries the
    same list."""
    return Step(
        "shut-out", f"sudo -n {MEMBER_FIREWALL}", Phase.ROLL, stdin=Stdin.MEMBER_FIREWALL_CLOSED,
        triggers=(Trigger.IDENTITY,),
    )


INSTANCE_TYPE_KEY = "instance-type"


def instance_type_step(node: Ec2NodeConfig) -> Step:
    """Not a command: the type an EC2 node's instance must have (``components/instance_type_provider.py``).

    It is a plan entry so that it has its place in the order: after the previous
    node's roll, before this node's configure steps, hence before its roll.
    """
    return Step(INSTANCE_TYPE_KEY, f"instance type {node.instance_type}", Phase.CONFIGURE)


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
    # EC2: ebs (AWS encrypts the volume; nothing to see from the node). On premises: the config's mode, and
    # none stays a gap, as the stack config chose it.
    args = ["--canary", "--wait", str(VERIFY_WAIT_S), *verify_datadir_args(node, cluster),
            "--expect-size", str(expect_size)]
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
    """The members: bootstrap node first (it must be running before anyone can join), then configuration order.

    A node being decommissioned is no member: it leaves after every member rolled (``cluster_plan``).
    """
    members = cluster.members
    first = [n for n in members if n.name == cluster.bootstrap_node]
    return (*first, *(n for n in members if n.name != cluster.bootstrap_node))


# --------------------------------------------------------------------------
# The whole cluster: every (node, step) with its explicit edges
# --------------------------------------------------------------------------


class Role(Enum):
    """What an entry is to an executor: a step of a node's SSH path, the bootstrap, a verification, an
    EC2 instance's type."""

    NODE_STEP = "node-step"
    BOOTSTRAP = "bootstrap"
    VERIFY = "verify"
    INSTANCE_TYPE = "instance-type"  # no command: the EC2 instance's type, applied by stop/modify/start


BOOTSTRAP_KEY = "bootstrap"


def entry_key(node: str, step: str) -> str:
    return f"{node}/{step}"


@dataclass(frozen=True)
class PlanEntry:
    """One command of the cluster: where it runs, what it runs, and what it waits for."""

    key: str  # unique in the plan: "<node>/<step>" or "bootstrap"
    node: str  # whose SSH connection it uses
    role: Role
    step: Step
    after: tuple[str, ...]  # keys of entries it waits for
    after_machine: bool = False  # waits for the machine's prerequisites (rule 0)

    @property
    def create_only(self) -> bool:
        """Run once, never updated or replaced: every input change is ignored (the bootstrap)."""
        return self.role is Role.BOOTSTRAP


@dataclass(frozen=True)
class Plan:
    """Every command of the cluster in a topological order: an entry comes after everything it waits for."""

    nodes: tuple[str, ...]  # rolling order
    entries: tuple[PlanEntry, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for e in self.entries:
            if e.key in seen:
                raise ValueError(f"the plan has {e.key} twice")
            missing = [a for a in e.after if a not in seen]
            if missing:
                raise ValueError(f"{e.key} waits for {missing}, which come later or not at all")
            seen.add(e.key)

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries)

    def entry(self, key: str) -> PlanEntry:
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(f"the plan has no entry {key!r}")

    def of_node(self, node: str, role: Role = Role.NODE_STEP) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.node == node and e.role is role)

    def waits_for(self, key: str) -> set[str]:
        """Every entry ``key`` waits for, directly or through others."""
        out: set[str] = set()
        todo = list(self.entry(key).after)
        while todo:
            k = todo.pop()
            if k not in out:
                out.add(k)
                todo.extend(self.entry(k).after)
        return out


def cluster_plan(cluster: ClusterConfig) -> Plan:
    """The whole cluster's commands with the order rules above as explicit edges."""
    order = rolling_order(cluster)
    if not order:
        raise ValueError("a cluster needs at least one node")
    plans = {n.name: node_plan(n, cluster) for n in (*order, *cluster.leaving)}
    entries: list[PlanEntry] = []

    def add(node: str, step: Step, external: tuple[str, ...] = ()) -> PlanEntry:
        own = tuple(entry_key(node, a) for a in step.after)
        entry = PlanEntry(
            entry_key(node, step.key), node, Role.NODE_STEP, step, (*own, *external),
            after_machine=step.phase is Phase.INSTALL and not step.after,
        )
        entries.append(entry)
        return entry

    # Rule 2: the install phase of every node, with no edge between nodes.
    for n in (*order, *cluster.leaving):
        for step in plans[n.name].phase(Phase.INSTALL):
            add(n.name, step)
    installs = tuple(entry_key(n.name, "install") for n in order)

    # Rules 3, 4, 6: configure after the previous node's roll; the bootstrap before the first roll.
    previous_roll: tuple[str, ...] = ()
    for i, n in enumerate(order):
        configure = plans[n.name].phase(Phase.CONFIGURE)
        before_configure = previous_roll
        if isinstance(n, Ec2NodeConfig):
            # Rule 8: the instance's type, in the node's turn (it stops and starts the instance).
            resize = PlanEntry(
                entry_key(n.name, INSTANCE_TYPE_KEY), n.name, Role.INSTANCE_TYPE, instance_type_step(n),
                (entry_key(n.name, "install"), *previous_roll),
            )
            entries.append(resize)
            before_configure = (*previous_roll, resize.key)
        for step in configure:
            add(n.name, step, before_configure)
        roll_after: tuple[str, ...] = ()
        if i == 0:
            bootstrap = PlanEntry(
                BOOTSTRAP_KEY, n.name, Role.BOOTSTRAP, bootstrap_step(),
                (*installs, entry_key(n.name, "preflight")),
            )
            entries.append(bootstrap)
            roll_after = (bootstrap.key,)
        (roll,) = plans[n.name].phase(Phase.ROLL)
        previous_roll = (add(n.name, roll, roll_after).key,)

    # Rule 7: leaving nodes leave one at a time, after every member rolled.
    for n in cluster.leaving:
        (leave,) = plans[n.name].phase(Phase.ROLL)
        previous_roll = (add(n.name, leave, previous_roll).key,)
    if cluster.leaving:  # rule 7, after the last leave: the members' Galera ports drop the leavers
        previous_roll = tuple(add(n.name, shut_out_step(), previous_roll).key for n in order)

    # Rule 5: every verification after its own node's roll and the last roll (or leave).
    for n in cluster.members:
        own_roll = entry_key(n.name, "roll")
        entries.append(PlanEntry(
            entry_key(n.name, "verify"), n.name, Role.VERIFY,
            verify_step(n, cluster, expect_size=len(cluster.members)),
            tuple(dict.fromkeys((own_roll, *previous_roll))),
        ))
    return Plan(tuple(n.name for n in order), tuple(entries))
