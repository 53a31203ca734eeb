"""The program's own plan, carried out on testbed hosts: how the node tests and benchmarks get a cluster.

The same steps as ``make demo``, minus the EC2 side:

1. ``ProgramStack.record(config, testbed)`` runs ``__main__.py`` under the rehearsal's
   mocks with a stack config (``onprem_config`` makes one whose on-prem nodes
   are testbed hosts); the KMS key, its alias and the cluster data key are
   made in the KMS emulator as they register (``rehearsal/emulator``). The
   result, a ``Program``, keeps the whole ``Recording``, the remote commands in
   replay order (``rehearsal/plan``) and what the declared overlay changed
   (``rehearsal/overlay``: on premises only the KMS endpoint in unwrap.conf).
2. ``Deployment.run()`` carries out those commands on the hosts in the
   recorded dependency order, independent ones at once, each with its recorded
   ``create`` string, ``environment`` and stdin, stopping at the first
   failure (the replay's own scheduler, ``rehearsal/replay``). ``stop_before``
   leaves a command, and everything that waits for it, for a later ``run()``,
   so a test can act between two of the program's steps (write rows before a
   node joins by SST, start a packet capture after the install). ``rerun``
   sends recorded commands again as they are (a node's roll, every
   verification). Every outcome is kept (``outcomes`` by name, ``history``).

A stack keeps what it made across recordings, as a Pulumi stack's state keeps
its resources across updates: record again with a changed config and the KMS
key, its alias, the data key and the on-prem access key stay the same, so the
nodes' datadirs stay readable (a changed encryption context, or a ``kmsKeyArn``
naming another key made in the emulator, goes through the provider's ``diff`` and
``update``, as the engine calls them: the same data key, re-wrapped). ``changed_commands`` names what a new
recording would run differently.

Transport: ``Testbed.exec`` (nsenter into the host), not SSH. The node tests'
hosts are booted once per session from the bare rootfs, before any stack
config and its login key exist, so nothing authorises that key on them; the
config pins each host's real host key all the same, so the recorded
connections are true ones (``make demo`` has an administrator's seed put the
key in place through cloud-init before the first boot and replays over real
SSH; tests/rehearsal covers that transport). What SSH
would add here is the transport, not the steps: each command still runs
through the connection user's login shell (``SHELL -c create``, as sshd runs
an exec request), with only the recorded environment added to the host's
fixed one, stdin written and then closed, no terminal, and one trailing
newline trimmed from stdout and stderr, as pulumi-command does.

    stack = ProgramStack(kms)
    attach_volumes(testbed)   # before testbed.boot(): the data volumes fscrypt needs
    deployed = deploy(testbed, stack, onprem_config(testbed, ["node1", "node2", "node3"]))
    deployed.outcomes["node1-verification-run"].stdout   # the program's verify report
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi.runtime import rpc

from components.data_key_provider import P_BLOB, P_CONTEXT
from components.onprem_identity import NODE_TAG
from rehearsal import TestbedError, say
from rehearsal import overlay as ov
from rehearsal.aws_values import ACCOUNT_ID
from rehearsal.emulator import EmulatedMocks, KmsEmulator, deployer_role_arn, emulator_credentials
from rehearsal.kms_server import KmsServer
from rehearsal.plan import RecordedCommand, recorded_commands
from rehearsal.recorder import Computed, Recording, Types, config_for_pulumi, record
from rehearsal.replay import Outcome, Progress, Replay, Sent, replay
from rehearsal.stack import SECRET_KEYS, new_ed25519
from rehearsal.testbed import Testbed
from rehearsal.volumes import LoopVolume, make_volumes

STACK = "nodetest"
# A host's data volume stand-in: sparse, so only what is written takes room on this machine's disk.
VOLUME_MIB = 2048
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key.pub"
# Every TLS channel off, as a user turns them off in the stack config (a control for encryption in transit).
TLS_OFF: Mapping[str, Any] = {
    "tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False,
}
# pulumi-command trims one trailing newline from stdout and stderr.
_TRIM = "\n"


class DeployFailed(AssertionError):
    """A command of the program's plan failed on a host; the message names node, step, status and output."""


# --------------------------------------------------------------------------
# The stack config
# --------------------------------------------------------------------------


def onprem_config(testbed: Testbed, names: Sequence[str] | None = None, **changes: Any) -> dict[str, Any]:
    """A stack config (keys as in Pulumi.<stack>.yaml, without the namespace) whose nodes are these hosts.

    Every node is on premises, reached as root, and pinned to the host key its
    sshd really has, so the recorded connections are true ones. Hosts with a
    data volume (``attach_volumes``) keep the default datadir encryption,
    fscrypt; hosts without one get ``none``, allowed. ``changes``
    set or override keys (``tlsReplication=False``, ``gcacheSize="64M"``).
    The deploying identity the mocks report is a key admin, as README asks.
    """
    chosen = list(names or testbed.hosts)
    login = new_ed25519("mariadb-kms-node-tests")
    config: dict[str, Any] = {
        "keyAdmins": [deployer_role_arn(ACCOUNT_ID), f"arn:aws:iam::{ACCOUNT_ID}:role/kms-breakglass"],
        "clusterName": "mariadb-kms-test",
        "onPremNodes": [
            {"name": n, "address": testbed.hosts[n].address, "sshUser": "root", "hostKey": host_key(testbed, n)}
            for n in chosen
        ],
        "sshPrivateKey": login.private_openssh,
        "sshAuthorizedKey": login.public_line,
    }
    unbacked = [n for n in chosen if n not in testbed.volumes]
    if unbacked:
        if len(unbacked) != len(chosen):
            raise TestbedError(f"hosts {unbacked} have no data volume and the others do: attach_volumes to all")
        # Hosts booted without a data volume (attach_volumes): the datadir stays on the root overlay, where
        # the node tests' upper-dir scans read it; what they prove is MariaDB's own encryption. Stated, and
        # accepted by verification, as a stack config would say it.
        config.update({"onPremDatadirEncryption": "none", "allowPlainDatadir": True})
    config.update(changes)
    return config


def host_key(testbed: Testbed, name: str) -> str:
    """The host's ed25519 host key line, as an administrator would hand it over for the pin."""
    parts = testbed.read_file(name, HOST_KEY_PATH).decode().split()
    if len(parts) < 2:
        raise TestbedError(f"{name}: {HOST_KEY_PATH} holds no host key")
    return f"{parts[0]} {parts[1]}"


# --------------------------------------------------------------------------
# Recording the program
# --------------------------------------------------------------------------


_TLS_TYPES = frozenset({Types.TLS_PRIVATE_KEY, Types.TLS_SELF_SIGNED_CERT, Types.TLS_CERT_REQUEST,
                        Types.TLS_LOCALLY_SIGNED_CERT})


class LastingMocks(EmulatedMocks):
    """The emulator's mocks, keeping what they made across recordings, as a stack's state does.

    The engine creates the KMS key, its alias, the data key and the access key
    once and keeps them on later updates (the key and the data key are
    protected); without this a second recording would make a second key, and
    a node's datadir, encrypted under the first, would be unreadable.
    """

    def __init__(self, *, emulator: KmsEmulator, stack: str, region: str,
                 kept: dict[tuple[str, str], Computed]) -> None:
        super().__init__(emulator=emulator, addresses={}, stack=stack, region=region, account_id=ACCOUNT_ID)
        self.kept = kept  # shared by the stack's recordings; a mocks object records one run only

    def _keep(self, kind: str, name: str, make: Callable[[], Computed]) -> Computed:
        if (kind, name) not in self.kept:
            self.kept[(kind, name)] = make()
        return self.kept[(kind, name)]

    def kms_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        return self._keep("kms_key", name, lambda: super(LastingMocks, self).kms_key(name, inputs))

    def kms_alias(self, name: str, inputs: dict[str, Any]) -> Computed:
        return self._keep("kms_alias", name, lambda: super(LastingMocks, self).kms_alias(name, inputs))

    def data_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        kept = self.kept.get(("data_key", name))
        if kept is None:
            return self._keep("data_key", name, lambda: super(LastingMocks, self).data_key(name, inputs))
        # A later up: the engine diffs the kept state against the new inputs and updates in place
        # (a new encryption context re-wraps the same data key), never mints another.
        outputs = self.emulator.update_data_key(kept.id, kept.outputs, inputs)
        self.kept[("data_key", name)] = Computed(kept.id, outputs, kept.known_in_preview)
        return self.kept[("data_key", name)]

    def access_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        return self._keep("access_key", name, lambda: super(LastingMocks, self).access_key(name, inputs))

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        if typ == Types.IAM_USER:
            # Made once (in moto's IAM too, when the emulator checks IAM authentication), as the engine keeps it.
            return self._keep("iam_user", name, lambda: super(LastingMocks, self).computed(typ, name, inputs))
        if typ not in _TLS_TYPES:
            return super().computed(typ, name, inputs)
        # The cluster CA, node keys and certificates: the engine keeps each until one of its inputs changes
        # (every input of a pulumi-tls resource forces a new one), so a later recording with the same inputs
        # gets the same key or certificate, and a node's roll does not install a CA the others do not trust.
        digest = hashlib.sha256(json.dumps(_plain_inputs(inputs), sort_keys=True, default=str).encode()).hexdigest()
        return self._keep(f"{typ}#{digest}", name, lambda: super(LastingMocks, self).computed(typ, name, inputs))


def _plain_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: rpc.unwrap_rpc_secret(v) for k, v in inputs.items() if not k.startswith("__")}


@dataclass
class Program:
    """One recording of the program and what the runner sends for it."""

    config: dict[str, Any] = field(repr=False)  # the stack config, the secret key included
    region: str
    stack: str
    recording: Recording = field(repr=False)
    commands: list[RecordedCommand] = field(repr=False)  # in replay order
    sent: list[Sent] = field(repr=False)  # the overlay applied, node = testbed host name
    changes: list[ov.Change] = field(repr=False)  # what the overlay changed, for a reader

    def command(self, name: str) -> RecordedCommand:
        found = [c for c in self.commands if c.name == name]
        if len(found) != 1:
            raise KeyError(f"no remote command {name!r} in the plan: {[c.name for c in self.commands]}")
        return found[0]

    def names(self, *, node: str | None = None, step: str | None = None) -> list[str]:
        """Command names in replay order, of one node (``node1-ssh-roll``) and/or one step (``roll``)."""
        out = []
        for s in self.sent:
            if node is not None and s.node != node:
                continue
            if step is not None and not s.command.name.endswith(f"-{step}"):
                continue
            out.append(s.command.name)
        return out

    @property
    def verification_commands(self) -> list[str]:
        """The commands of the program's Verification components (their stdout is a verify report)."""
        urns = {r.urn for r in self.recording.of_type(Types.VERIFICATION)}
        return [c.name for c in self.commands if self.recording.by_urn(c.urn).parent_urn in urns]

    @property
    def key_arn(self) -> str:
        return str(self.recording.one(Types.KMS_KEY).state["arn"])

    @property
    def key_id(self) -> str:
        """The bare key id (moto's DisableKey and EnableKey want it, not the ARN)."""
        return str(self.recording.one(Types.KMS_KEY).state["keyId"])

    @property
    def data_key_blob(self) -> bytes:
        """The cluster data key's CiphertextBlob, as the program stores it."""
        encoded = rpc.unwrap_rpc_secret(self.recording.one(Types.DATA_KEY).state[P_BLOB])
        return base64.b64decode(str(encoded))

    @property
    def encryption_context(self) -> dict[str, str]:
        """The context the blob is wrapped with ({} for none): KMS decrypts it only with this."""
        context = self.recording.one(Types.DATA_KEY).state.get(P_CONTEXT) or {}
        return {str(k): str(v) for k, v in dict(context).items()}

    @property
    def onprem_access_keys(self) -> dict[str, tuple[str, str]]:
        """{on-prem node: (access key id, secret access key)} of each node's own IAM user."""
        nodes = {str(u.state["name"]): str(rpc.unwrap_rpc_secret(u.inputs["tags"])[NODE_TAG])
                 for u in self.recording.of_type(Types.IAM_USER)}
        plain = rpc.unwrap_rpc_secret
        return {nodes[str(plain(k.inputs["user"]))]: (k.id, str(plain(k.state["secret"])))
                for k in self.recording.of_type(Types.IAM_ACCESS_KEY)}

    @property
    def onprem_access_key(self) -> tuple[str, str]:
        """(access key id, secret access key) of the one on-prem node of a single-node stack."""
        keys = self.onprem_access_keys
        if len(keys) != 1:
            raise KeyError(f"{len(keys)} on-prem access keys ({sorted(keys)}): name the node, onprem_access_keys")
        return next(iter(keys.values()))

    def iam_user(self, node: str) -> str:
        """The IAM user name of an on-prem node's identity."""
        for u in self.recording.of_type(Types.IAM_USER):
            if str(rpc.unwrap_rpc_secret(u.inputs["tags"])[NODE_TAG]) == node:
                return str(u.state["name"])
        raise KeyError(f"no IAM user for on-prem node {node}")


class ProgramStack:
    """One stack: records the program for a config, keeping its key resources across recordings."""

    def __init__(self, kms: KmsServer, *, stack: str | None = None) -> None:
        self.kms = kms
        # With IAM authentication on, the emulator signs as its administrator and makes the on-prem identities
        # in moto's IAM, so each node's key is one the emulator issued and can revoke.
        self.emulator = KmsEmulator(kms.endpoint_url, kms.region, credentials=kms.admin_credentials,
                                    iam=kms.iam_auth)
        self.stack = stack or self._free_name()
        self.kept: dict[tuple[str, str], Computed] = {}

    def _free_name(self) -> str:
        """``nodetest``, or ``nodetest2``... when another stack on this KMS server has the name already:
        the key alias is named after the stack, and a second one of the same name would fail to register."""
        with emulator_credentials(self.emulator.credentials):
            taken = {a["AliasName"] for a in self.emulator.client().list_aliases()["Aliases"]}
        n = 1
        while any(alias.endswith(f"-{STACK}{n if n > 1 else ''}") for alias in taken):
            n += 1
        return f"{STACK}{n if n > 1 else ''}"

    def record(self, config: Mapping[str, Any], testbed: Testbed) -> Program:
        config = dict(config)
        if config.get("ec2Nodes"):
            raise ValueError("ec2Nodes: the runner deploys on-prem nodes only; EC2 hosts boot from user-data, "
                             "which `make demo` seeds before their first boot")
        flat, secret_keys = config_for_pulumi(config, self.kms.region, SECRET_KEYS)
        with emulator_credentials(self.emulator.credentials):
            mocks = LastingMocks(emulator=self.emulator, stack=self.stack, region=self.kms.region, kept=self.kept)
            rec = record(mocks, flat, secret_keys, stack=self.stack)
        if rec.exception is not None or rec.errors:
            raise DeployFailed(f"the program failed under mocks: {rec.exception!r}; errors: {rec.errors}")
        commands = recorded_commands(rec)
        by_address = {h.address: h.name for h in testbed.hosts.values()}
        settings = ov.Settings(kms_endpoint_url=self.kms.endpoint_url)
        sent: list[Sent] = []
        changes: list[ov.Change] = []
        for cmd in commands:
            if cmd.host not in by_address:
                raise DeployFailed(f"{cmd.name}: connects to {cmd.host}, which is no testbed host")
            stdin, changed = ov.command_stdin(cmd, settings, ec2=False)
            changes += changed
            sent.append(Sent(command=cmd, node=by_address[cmd.host], stdin=stdin))
        undeclared = [c for c in changes if c.item == "UNDECLARED"]
        if undeclared:
            raise DeployFailed("the overlay changed what it does not declare: " +
                               ", ".join(f"{c.target} {c.path}" for c in undeclared))
        return Program(config, self.kms.region, self.stack, rec, commands, sent, changes)

    def delete_vanished(self, old: Program, new: Program) -> list[str]:
        """What the engine does last in a `pulumi up`: the IAM access keys and users of ``old`` that ``new`` no
        longer has are deleted (keys before their users, the reverse of their dependencies), in moto's IAM
        when the emulator keeps identities there; returns their logical names."""
        gone_keys = [r for r in old.recording.of_type(Types.IAM_ACCESS_KEY)
                     if r.urn not in {k.urn for k in new.recording.of_type(Types.IAM_ACCESS_KEY)}]
        gone_users = [r for r in old.recording.of_type(Types.IAM_USER)
                      if r.urn not in {u.urn for u in new.recording.of_type(Types.IAM_USER)}]
        with emulator_credentials(self.emulator.credentials):
            for key in gone_keys:
                if self.emulator.iam:
                    self.emulator.delete_access_key(str(rpc.unwrap_rpc_secret(key.inputs["user"])), key.id)
                self.kept.pop(("access_key", key.name), None)
            for user in gone_users:
                if self.emulator.iam:
                    self.emulator.delete_user(str(user.state["name"]))
                self.kept.pop(("iam_user", user.name), None)
        return [r.name for r in (*gone_keys, *gone_users)]


def changed_commands(old: Program, new: Program) -> list[str]:
    """Commands of ``new`` that ``old`` lacks or that run differently (command line, environment, stdin)."""
    before = {c.name: c for c in old.commands}

    def shape(c: RecordedCommand) -> tuple[str, dict[str, str], str | None, str, int, str]:
        return c.create, c.environment, c.stdin, c.host, c.port, c.user

    return [c.name for c in new.commands if c.name not in before or shape(before[c.name]) != shape(c)]


def engine_runs(base: Program, head: Program) -> list[str]:
    """The remote commands a `pulumi up` from ``base`` (the state) to ``head`` runs, by the engine's rules
    (``rehearsal/engine_rules``: create, update or replace with a script to run), in ``head``'s order."""
    from rehearsal.engine_rules import plan_changes, remote_runs

    running = set()
    for change in plan_changes(base.recording, head.recording):
        if change.type != Types.REMOTE_COMMAND or change.action == "delete":
            continue
        res = head.recording.by_urn(change.urn)
        if remote_runs(change, res):
            running.add(res.name)
    return [c.name for c in head.commands if c.name in running]


# --------------------------------------------------------------------------
# Carrying it out
# --------------------------------------------------------------------------


def host_argv(cmd: RecordedCommand, shell: str) -> list[str]:
    """What runs in the host for one command: the connection user's shell with ``-c create``, as sshd runs it."""
    inner = [shell, "-c", cmd.create]
    if cmd.environment:
        inner = ["env", *(f"{k}={v}" for k, v in cmd.environment.items()), *inner]
    if cmd.user != "root":
        inner = ["runuser", "-u", cmd.user, "--", *inner]
    return inner


@dataclass
class Deployment:
    """The program's plan on testbed hosts: what ran, with every outcome, and what is left."""

    testbed: Testbed
    program: Program
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by command name: its latest run
    history: list[Outcome] = field(default_factory=list)  # every run, in the order they finished
    quiet: bool = False
    _shells: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> set[str]:
        return {name for name, o in self.outcomes.items() if o.ok}

    @property
    def pending(self) -> list[str]:
        return [s.command.name for s in self.program.sent if s.command.name not in self.done]

    def run(self, *, stop_before: str | Sequence[str] | None = None, timeout: float = 1800.0) -> list[Outcome]:
        """Every command not yet done, except ``stop_before`` (one name or several) and what waits for it;
        raises on a failure."""
        held = {stop_before} if isinstance(stop_before, str) else set(stop_before or ())
        for name in held:
            self.program.command(name)  # a typo must not run the whole plan
        chosen: list[Sent] = []
        done = self.done
        for s in self.program.sent:
            name = s.command.name
            if name in done or name in held or held & set(s.command.after):
                continue
            after = tuple(d for d in s.command.after if d not in done)
            chosen.append(dataclasses.replace(s, command=dataclasses.replace(s.command, after=after)))
        result = replay(chosen, progress=self._progress(), timeout=timeout, run=self._run_one)
        self._take(result)
        return result.outcomes

    def run_only(self, names: Sequence[str], timeout: float = 1800.0) -> list[Outcome]:
        """Only these recorded commands, in the recorded order, each after those of them it waits for: what a
        `pulumi up` runs when the engine found only them changed (``engine_rules``); raises on a failure."""
        chosen_names = set(names)
        for name in chosen_names:
            self.program.command(name)
        chosen = [dataclasses.replace(s, command=dataclasses.replace(
            s.command, after=tuple(a for a in s.command.after if a in chosen_names)))
            for s in self.program.sent if s.command.name in chosen_names]
        result = replay(chosen, progress=self._progress(), timeout=timeout, run=self._run_one)
        self._take(result)
        return result.outcomes

    def run_command(self, name: str, timeout: float = 1800.0) -> Outcome:
        """One recorded command again, as the program would send it (e.g. a node's roll step)."""
        return self.rerun([name], timeout=timeout)[0]

    def rerun(self, names: Sequence[str], timeout: float = 1800.0) -> list[Outcome]:
        """Recorded commands again, all at once, whatever they waited for (every node's verification, say);
        their outcomes in the order of ``names``. Raises when one fails, as ``run`` does."""
        for name in names:
            self.program.command(name)
        chosen = [dataclasses.replace(s, command=dataclasses.replace(s.command, after=()))
                  for s in self.program.sent if s.command.name in names]
        result = replay(chosen, progress=self._progress(), timeout=timeout, run=self._run_one)
        self._take(result)
        by_name = {o.name: o for o in result.outcomes}
        return [by_name[name] for name in names]

    def report(self, name: str) -> str:
        """The stdout of a command that succeeded (a verification's JSON report, say)."""
        outcome = self.outcomes.get(name)
        if outcome is None or not outcome.ok:
            raise KeyError(f"{name} has not succeeded: {outcome}")
        return outcome.stdout

    def _take(self, result: Replay) -> None:
        for o in result.outcomes:
            self.outcomes[o.name] = o
            self.history.append(o)
        failed = result.failed
        if failed is not None:
            secret = self.program.command(failed.name).secret_output
            shown = "(secret output: not shown)" if secret else f"{failed.stdout[-2000:]}\n{failed.stderr[-3000:]}"
            status = f"exit {failed.rc}" if failed.rc is not None else str(failed.error)
            raise DeployFailed(f"node {failed.node}, step {failed.name}: {status}\n{shown}")

    def _progress(self) -> Progress:
        if self.quiet:
            return Progress()

        def finished(o: Outcome) -> None:
            status = "ok" if o.ok else f"FAILED (exit {o.rc})" if o.rc is not None else f"FAILED: {o.error}"
            say(f"plan: {o.name} on {o.node} {status} in {o.seconds:.1f}s")

        return Progress(finished=finished)

    def _shell(self, node: str, user: str) -> str:
        if (node, user) not in self._shells:
            entry = self.testbed.exec(node, ["getent", "passwd", user]).stdout.strip().split(":")
            if len(entry) < 7 or not entry[6]:
                raise DeployFailed(f"{node}: no login user {user!r} (the connection's user)")
            self._shells[(node, user)] = entry[6]
        return self._shells[(node, user)]

    def _run_one(self, sent: Sent, stop: threading.Event, timeout: float, abort: threading.Event | None) -> Outcome:
        cmd = sent.command
        outcome, data = Outcome.starting(sent)
        try:
            # Written and closed, like pulumi-command's session stdin; empty when the command has none.
            result = self.testbed.exec(sent.node, host_argv(cmd, self._shell(sent.node, cmd.user)), input=data,
                                       timeout=timeout)
            outcome.rc = result.rc
            outcome.stdout = result.stdout.removesuffix(_TRIM)
            outcome.stderr = result.stderr.removesuffix(_TRIM)
        except subprocess.TimeoutExpired:
            outcome.error = f"no exit after {timeout:.0f}s: the runner gave up on it"
        except (TestbedError, DeployFailed, OSError) as err:
            outcome.error = str(err)
        outcome.seconds = time.monotonic() - outcome.started
        return outcome


# --------------------------------------------------------------------------
# The hosts' data volumes
# --------------------------------------------------------------------------


def attach_volumes(testbed: Testbed, names: Sequence[str] | None = None, *, encrypt: bool = True,
                   size_mib: int = VOLUME_MIB) -> dict[str, LoopVolume]:
    """Before ``testbed.boot()``: each host gets a data volume at /srv/mariadb-kms, as an on-prem administrator
    prepares one (docs/at-rest.md): a loop-backed ext4 image made here (``-O encrypt`` unless ``encrypt`` is
    false), bound into the host (rehearsal/volumes.py). The program's default ``onPremDatadirEncryption``,
    fscrypt, needs it; the testbed's teardown removes it."""
    chosen = list(testbed.hosts if names is None else names)
    if any(testbed.hosts[n].nspawn_pid for n in chosen):
        raise TestbedError("attach_volumes: a volume is bound at boot; call it before testbed.boot()")
    volumes = make_volumes(testbed.run_dir, {n: encrypt for n in chosen}, size_mib=size_mib)
    for name, volume in volumes.items():
        testbed.volumes[name] = volume.mount_point
    return volumes


def _check_volumes(testbed: Testbed, program: Program) -> None:
    """fscrypt needs a volume of its own on each node; say so before the install fails on a host without one."""
    if program.config.get("onPremDatadirEncryption", "fscrypt") != "fscrypt":
        return
    missing = sorted({s.node for s in program.sent} - set(testbed.volumes))
    if missing:
        raise DeployFailed(f"hosts {missing} have no data volume at /srv/mariadb-kms, which onPremDatadirEncryption "
                           "fscrypt needs: call rehearsal.runner.attach_volumes before booting them (or deploy "
                           "with onPremDatadirEncryption none)")


def deploy(testbed: Testbed, stack: ProgramStack, config: Mapping[str, Any], *, stop_before: str | None = None,
           timeout: float = 1800.0, quiet: bool = False) -> Deployment:
    """Record the program for ``config`` and run its plan on the testbed's hosts (up to ``stop_before``)."""
    program = stack.record(config, testbed)
    _check_volumes(testbed, program)
    for name in {s.node for s in program.sent}:
        # Declared in the overlay (dpkg-unsafe-io): the hosts share one disk; packages and MariaDB are unchanged.
        testbed.put_file(name, ov.DPKG_UNSAFE_IO_PATH, ov.DPKG_UNSAFE_IO, 0o644, "root:root")
    deployment = Deployment(testbed, program, quiet=quiet)
    deployment.run(stop_before=stop_before, timeout=timeout)
    return deployment

