"""``python -m rehearsal up --config FILE`` (``make demo-up CONFIG=FILE``): a later ``pulumi up``, rehearsed.

``make demo`` leaves the stack's state (``rehearsal/state``). ``up``:

1. completes FILE as ``make demo`` completes ``Pulumi.rehearsal.yaml`` (the
   login key and every known node's address and host key from the state; a new
   node gets the next testbed host and, on premises, a fresh host key). A new
   login key comes as a 0600 file (``--ssh-private-key``, the stand-in for
   ``pulumi config set --secret sshPrivateKey``) with its public half as
   FILE's ``sshAuthorizedKey``;
2. records the program under mocks that answer, for every resource the state
   holds, what the state holds (the engine keeps a resource's outputs when it
   has nothing to do), and records it again with fresh answers for the
   resources the engine rules replace (a new certificate, a new instance);
3. diffs the state against that recording with the engine's rules
   (``rehearsal/engine_rules``) and prints the plan resource by resource, as
   ``pulumi preview`` does: same / create / update / replace / delete, and why;
4. refuses the whole update, before anything runs, when a protected resource
   would be deleted or replaced (the engine does so, preview included);
5. carries out exactly that plan on the running hosts: a new node's host boots
   (EC2 hosts with their recorded user-data through cloud-init, on-prem hosts
   as their administrator set them up); every created, updated or replaced
   remote command runs its ``create``, ``update`` or ``delete`` script over
   SSH (``delete`` first under delete-before-replace), in the recorded
   dependency order; an instance-type update stops and starts that host in its
   turn (pulumi-aws's in-place stop/start); then what left the program is
   deleted, in reverse dependency order (a removed EC2 node's host is powered
   off; a retained resource is only forgotten);
6. writes the new state when every step succeeded. After a failure the state is
   left as it was, so the next ``up`` plans the unfinished changes again.

Everything else (IAM, security groups, TLS, KMS) changes in the state only:
the testbed has no cloud to change, and the hosts see those changes through
the remote commands' inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from components.cloud_config import decode_user_data
from components.config import parse_config
from components.node_files import CREDENTIALS_PATH
from rehearsal import TestbedError, file_lock, run, say
from rehearsal import overlay as ov
from rehearsal.aws_values import ACCOUNT_ID, random_secret_access_key
from rehearsal.emulator import EmulatedMocks, KmsEmulator, emulator_credentials, generated_access_key_id
from rehearsal.engine_rules import Change, blocking, plain, plan_changes, remote_runs
from rehearsal.instances import engine_inputs, engine_state, meta_data, replace_host
from rehearsal.kms_server import DEFAULT_PORT as KMS_PORT
from rehearsal.plan import RecordedCommand, closure, recorded_commands
from rehearsal.recorder import Computed, Recording, RegisteredResource, Types, config_for_pulumi, record
from rehearsal.replay import Outcome, Progress, Sent, replay, run_one
from rehearsal.stack import SECRET_KEYS, STACK, StackError, load_file, new_ed25519
from rehearsal.state import NodeHost, RehearsalState, load, save
from rehearsal.testbed import Host, Settings, Testbed
from rehearsal.volumes import VOLUMES_DIR, make_volumes

INSTANCE_TYPE = "pulumi-python:dynamic/mariadb-kms:InstanceType"
# Exit statuses.
OK, FAILED, USAGE, REFUSED = 0, 1, 2, 3

Key = tuple[str, str]  # (type, name): what a mock sees of a resource


class UpFailed(RuntimeError):
    pass


# --------------------------------------------------------------------------
# The config, completed from the state
# --------------------------------------------------------------------------


@dataclass
class Completed:
    config: dict[str, Any]
    nodes: dict[str, NodeHost]  # the program's nodes now, in its order
    new_host_keys: dict[str, tuple[str, str]]  # new on-prem node -> (private OpenSSH, public line)


def complete_config(raw: Mapping[str, Any], region: str, state: RehearsalState,
                    address_of: Callable[[int], str], next_index: int, *, login: str | None = None) -> Completed:
    """FILE's config with what only the rehearsal knows; a known node keeps its host, a new one gets the next.

    The login key is the state's, unless ``login`` (a new private key, OpenSSH) is given: then FILE names
    its public half as ``sshAuthorizedKey``, as the runbook's second `up` of a login-key rotation sets both.
    """
    if "sshPrivateKey" in raw:
        raise StackError("sshPrivateKey: a secret never goes into the config file; give the rehearsal the "
                         "new key as a 0600 file (--ssh-private-key FILE, make demo-up SSH_KEY=FILE)")
    if "sshAuthorizedKey" in raw and login is None:
        raise StackError("sshAuthorizedKey: the rehearsal keeps the demo's login key unless a new private key "
                         "comes with it (--ssh-private-key FILE); leave it out of the config file")
    if raw.get("keyManagement", "kms-envelope") != "kms-envelope":
        raise StackError("keyManagement: the rehearsal runs kms-envelope only")
    config = copy.deepcopy(dict(raw))
    for key in (*SECRET_KEYS, "sshAuthorizedKey"):
        config[key] = state.config[key]
    if login is not None:
        config["sshPrivateKey"] = login
        config["sshAuthorizedKey"] = new_login_public(raw.get("sshAuthorizedKey"), login)
    nodes: dict[str, NodeHost] = {}
    new_keys: dict[str, tuple[str, str]] = {}
    index = next_index
    for kind, key in (("ec2", "ec2Nodes"), ("onprem", "onPremNodes")):
        for node in config.get(key) or []:
            name = node.get("name")
            known = state.nodes.get(name)
            if known is not None and known.kind != kind:
                raise StackError(f"{key} {name}: was an {known.kind} node; a node does not change kind")
            if known is None:
                known = NodeHost(name, kind, address_of(index))
                index += 1
            nodes[name] = known
            if kind == "onprem":
                for field_ in ("address", "hostKey"):
                    if field_ in node:
                        raise StackError(f"onPremNodes {name}: {field_} is filled in by the rehearsal; leave it out")
                node["address"] = known.address
                if name in state.host_keys:
                    node["hostKey"] = state.host_keys[name]
                else:
                    pair = new_ed25519(f"root@{name}")
                    new_keys[name] = (pair.private_openssh, pair.public_line)
                    node["hostKey"] = pair.public_line
            elif node.get("privateIp") not in (None, known.address):
                raise StackError(f"ec2Nodes {name}: privateIp {node['privateIp']}, but its testbed host has "
                                 f"{known.address}; leave privateIp out")
    public = {k: v for k, v in config.items() if k not in SECRET_KEYS}
    try:
        parse_config(public, stack=STACK, region=region)
    except ValueError as err:
        raise StackError(str(err)) from None
    return Completed(config, nodes, new_keys)


def public_half(private_openssh: str) -> str:
    """"type base64" of an OpenSSH private key's public key (no comment)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    try:
        key = ser.load_ssh_private_key(private_openssh.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise StackError("--ssh-private-key: not an unencrypted OpenSSH private key") from None
    return key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()


def new_login_public(authorized: Any, private_openssh: str) -> str:
    """FILE's ``sshAuthorizedKey`` when it is the new private key's public half; else an error naming both."""
    public = public_half(private_openssh)
    if not isinstance(authorized, str) or not authorized.strip():
        raise StackError(f"sshAuthorizedKey: missing; with a new private key the config file sets it to that key's "
                         f"public half ({public[:40]}...), or the nodes would drop the key the program logs in with")
    if authorized.split()[:2] != public.split():
        raise StackError(f"sshAuthorizedKey: {authorized.strip()[:40]}... is not the public half of the new private "
                         f"key (expected {public[:40]}...)")
    return authorized.strip()


def read_login_key(path: Path) -> str:
    """A private key file as ssh reads one: refused when others may read it."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise StackError(f"--ssh-private-key {path}: {err.strerror}") from None
    if mode & 0o077:
        raise StackError(f"--ssh-private-key {path}: mode {oct(mode & 0o777)}, expected 0600 (or stricter): "
                         "a private key others can read is refused, as ssh refuses it")
    return path.read_text()


# --------------------------------------------------------------------------
# Recording against the state
# --------------------------------------------------------------------------


def kept_answers(resources: Iterable[RegisteredResource]) -> dict[Key, Computed]:
    """What each resource's provider answered last time: its id and its outputs that are not inputs."""
    out: dict[Key, Computed] = {}
    for r in resources:
        if r.custom:
            out[(r.type, r.name)] = Computed(r.id, {k: plain(v) for k, v in r.state.items() if k not in r.inputs})
    return out


class StateMocks(EmulatedMocks):
    """The emulator's answers, except that a resource the state holds keeps its answer unless it is replaced."""

    def __init__(self, *, kept: Mapping[Key, Computed], fresh: set[Key], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kept = kept
        self.fresh = fresh

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        key = (typ, name)
        if key in self.kept and key not in self.fresh:
            return self.kept[key]
        return super().computed(typ, name, inputs)

    def access_key(self, name: str, inputs: dict[str, Any]) -> Computed:
        return Computed(generated_access_key_id(), {"secret": random_secret_access_key(), "status": "Active"})


def record_against(state: RehearsalState, config: Mapping[str, Any], nodes: Mapping[str, NodeHost],
                   kms_url: str, replace: Sequence[str] = ()) -> tuple[Recording, list[Change]]:
    """The program's recording for ``config`` and the engine's plan against the state.

    Twice when something is replaced: a replacement's new outputs (a new certificate, a new instance id) are
    unknown to the engine until it runs, and the first pass shows which resources those are.
    """
    base = state.recording()
    kept = kept_answers(base.resources)
    addresses = {f"{n.name}-eni": n.address for n in nodes.values() if n.kind == "ec2"}
    emulator = KmsEmulator(kms_url, state.region)
    flat, secret_keys = config_for_pulumi(dict(config), state.region, SECRET_KEYS)
    fresh: set[Key] = set()
    while True:
        mocks = StateMocks(kept=kept, fresh=set(fresh), emulator=emulator, addresses=addresses, stack=STACK,
                           region=state.region, account_id=ACCOUNT_ID)
        with emulator_credentials():
            rec = record(mocks, flat, secret_keys, stack=STACK)
        if rec.exception is not None or rec.errors:
            raise UpFailed(f"the program failed under mocks: {rec.exception!r}; errors: {rec.errors}")
        changes = plan_changes(base, rec, replace)
        replaced = {(c.type, c.name) for c in changes if c.action == "replace"}
        if replaced <= fresh:
            return rec, changes
        fresh |= replaced


# --------------------------------------------------------------------------
# The plan, printed
# --------------------------------------------------------------------------

SYMBOL = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": " "}
STYLE = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red", "same": "dim"}


def why(change: Change) -> str:
    parts: list[str] = []
    if change.action == "create":
        parts.append("not in the state")
    elif change.action == "delete":
        parts.append("no longer in the program")
        if change.retain_on_delete:
            parts.append("retain_on_delete: forgotten, not deleted")
    elif change.changed:
        parts.append("changed: " + ", ".join(change.changed))
        if change.replace_keys:
            parts.append("replaced because of: " + ", ".join(change.replace_keys))
        if change.unknown_via:
            parts.append("unknown until a replacement runs: " + ", ".join(change.unknown_via))
        if change.delete_before_replace and change.action == "replace":
            parts.append("delete before replace")
    if change.action == "replace" and change.delete_before_replace and not change.changed:
        parts.append("delete before replace")
    if change.rule_unknown:
        parts.append("(no replacement rule for this type: shown as an update)")
    parts += list(change.notes)
    if change.blocked:
        parts.append("PROTECTED: the engine refuses the whole update")
    return "; ".join(parts)


def counts(changes: Sequence[Change]) -> dict[str, int]:
    out = {a: 0 for a in SYMBOL}
    for c in changes:
        if c.type.startswith("pulumi:pulumi:Stack"):
            continue
        out[c.action] += 1
    return out


def print_plan(changes: Sequence[Change], console: Console) -> None:
    """Every resource that changes, as ``pulumi preview`` lists them, and the totals."""
    table = Table(title="the engine's plan (pulumi up)", show_lines=False, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("why")
    for c in sorted(changes, key=lambda c: (c.action == "same", c.urn)):
        if c.action == "same":
            continue
        table.add_row(SYMBOL[c.action], c.type, c.name, why(c), style="bold red" if c.blocked else STYLE[c.action])
    n = counts(changes)
    if any(n[a] for a in ("create", "update", "replace", "delete")):
        console.print(table)
    console.print("Resources: " + ", ".join(f"{SYMBOL[a].strip() or '='}{n[a]} {'unchanged' if a == 'same' else a}"
                                           for a in ("create", "update", "replace", "delete", "same")))


# --------------------------------------------------------------------------
# Carrying it out
# --------------------------------------------------------------------------


@dataclass
class Run:
    """One script of one resource on one host."""

    script: str  # "create", "update", "delete", "stop-start", "power-off", "replace-host"
    command: RecordedCommand | None  # None for a host action
    stdin: str | None = None
    launch: Mapping[str, str] = field(default_factory=dict)  # replace-host: the new instance's user-data and AMI


@dataclass
class Step:
    name: str
    urn: str
    node: str
    action: str
    runs: list[Run]


@dataclass
class Executed:
    """What ran, for the caller (tests count restarts and the steps that ran)."""

    steps: list[str] = field(default_factory=list)  # "name:script", in the order they finished
    booted: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # nodes whose instance was replaced
    powered_off: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def _node_of(address: str, nodes: Mapping[str, NodeHost]) -> str:
    for n in nodes.values():
        if n.address == address:
            return n.name
    raise UpFailed(f"a remote command connects to {address}, which is no node's host")


def forward_steps(changes: Sequence[Change], head: Recording, nodes: Mapping[str, NodeHost],
                  ov_settings: ov.Settings, base: Recording) -> list[Step]:
    """Creates, updates and replacements that touch a host, each after the steps it depends on."""
    by_urn = {c.urn: c for c in changes}
    head_cmds = {c.urn: c for c in recorded_commands(head)}
    base_cmds = {c.urn: c for c in recorded_commands(base)} if base.resources else {}
    kinds = {n.address: n.kind for n in nodes.values()}
    steps: list[Step] = []
    for res in head.resources:
        change = by_urn.get(res.urn)
        if change is None or change.action not in ("create", "update", "replace"):
            continue
        if res.type == Types.REMOTE_COMMAND:
            cmd = head_cmds[res.urn]
            runs: list[Run] = []
            for script in remote_runs(change, res):
                if script == "delete":
                    old = base.by_urn(res.urn)
                    old_cmd = base_cmds[res.urn]
                    sent = dataclasses.replace(old_cmd, create=str(plain(old.inputs["delete"])))
                    runs.append(Run("delete", sent, _stdin(sent, ov_settings, kinds)))
                else:
                    text = str(plain(res.inputs[script]))
                    sent = dataclasses.replace(cmd, create=text)
                    runs.append(Run(script, sent, _stdin(sent, ov_settings, kinds)))
            if runs:
                steps.append(Step(res.name, res.urn, _node_of(cmd.host, nodes), change.action, runs))
        elif res.type == INSTANCE_TYPE and change.action == "update":
            node = res.parent_urn.split("::")[-1]
            if _retypes(res, head, base, by_urn):
                steps.append(Step(res.name, res.urn, node, change.action, [Run("stop-start", None)]))
        elif res.type == Types.EC2_INSTANCE and change.action == "replace":
            # delete_before_replace on the instance and on its volume attachment (which names the instance id,
            # so it is replaced with it): one host action, in the instance's place in the dependency order.
            node = res.parent_urn.split("::")[-1]
            given = engine_inputs(_in(base, res.urn), res)
            user_data = ov.user_data(decode_user_data(str(plain(given["userDataBase64"]))), ov_settings)
            launch = {"user_data": user_data, "ami": str(plain(given["ami"]))}
            steps.append(Step(res.name, res.urn, node, change.action, [Run("replace-host", None, launch=launch)]))
    return steps


def _retypes(res: RegisteredResource, head: Recording, base: Recording, by_urn: Mapping[str, Change]) -> bool:
    """Whether an InstanceType update stops and starts its instance: only when the instance's type differs.

    Its provider (components/instance_type_provider.py) compares the instance's type with the wanted one. An
    update that only follows a replaced instance (a new instance id) finds the type the engine launched the
    replacement with: the state's, since the instance ignores instanceType changes.
    """
    old = _in(base, res.urn)
    wanted = plain(res.inputs.get("instance_type"))
    instance = next((r for r in head.resources if r.type == Types.EC2_INSTANCE and r.parent_urn == res.parent_urn),
                    None)
    if instance is not None and by_urn.get(instance.urn, None) is not None \
            and by_urn[instance.urn].action == "replace":
        launched = plain(engine_inputs(_in(base, instance.urn), instance).get("instanceType"))
        return bool(launched != wanted)
    return old is None or plain(old.inputs.get("instance_type")) != wanted


def _in(rec: Recording, urn: str) -> RegisteredResource | None:
    return next((r for r in rec.resources if r.urn == urn), None)


def _stdin(cmd: RecordedCommand, settings: ov.Settings, kinds: Mapping[str, str]) -> str | None:
    stdin, changed = ov.command_stdin(cmd, settings, ec2=kinds.get(cmd.host) == "ec2")
    undeclared = [c for c in changed if c.item == "UNDECLARED"]
    if undeclared:
        raise UpFailed("the overlay changed what it does not declare: " + ", ".join(c.path for c in undeclared))
    return stdin


def delete_steps(changes: Sequence[Change], base: Recording, nodes: Mapping[str, NodeHost]) -> list[Step]:
    """What left the program, in reverse dependency order: a resource goes before what it depends on."""
    deleted = {c.urn for c in changes if c.action == "delete"}
    deps = closure(base, through_inputs=True)
    order: list[RegisteredResource] = []
    placed: set[str] = set()
    remaining = [r for r in base.resources if r.urn in deleted]
    while remaining:
        # Ready: nothing still to delete depends on it.
        ready = [r for r in remaining
                 if not any(r.urn in deps.get(o.urn, set()) for o in remaining if o.urn != r.urn)]
        if not ready:
            raise UpFailed("the deleted resources depend on each other in a cycle")
        for r in sorted(ready, key=lambda r: r.name):
            order.append(r)
            placed.add(r.urn)
        remaining = [r for r in remaining if r.urn not in placed]
    cmds = {c.urn: c for c in recorded_commands(base)}
    by_urn = {c.urn: c for c in changes}
    steps: list[Step] = []
    for r in order:
        if by_urn[r.urn].retain_on_delete:
            continue
        if r.type == Types.REMOTE_COMMAND and plain(r.inputs.get("delete")):
            cmd = dataclasses.replace(cmds[r.urn], create=str(plain(r.inputs["delete"])), after=())
            steps.append(Step(r.name, r.urn, _node_of(cmd.host, nodes), "delete", [Run("delete", cmd, cmd.stdin)]))
        elif r.type == Types.EC2_INSTANCE:
            node = r.parent_urn.split("::")[-1]
            steps.append(Step(r.name, r.urn, node, "delete", [Run("power-off", None)]))
    return steps


def _placeholder(step: Step, after: tuple[str, ...], address: str) -> RecordedCommand:
    """A scheduler entry for a step (the replay's scheduler orders RecordedCommands by name and ``after``)."""
    return RecordedCommand(
        name=step.name, urn=step.urn, create=" ; ".join(r.script for r in step.runs), stdin=None, stdin_secret=False,
        host=address, port=22, user="root", host_key=None, private_key=None, dial_error_limit=0, per_dial_timeout=0,
        environment={}, after=after, secret_output=False,
    )


class Executor:
    """Runs steps on the testbed: scripts over SSH, host actions through the testbed."""

    def __init__(self, testbed: Testbed, nodes: Mapping[str, NodeHost], *, timeout: float = 1800.0,
                 console: Console | None = None) -> None:
        self.testbed = testbed
        self.nodes = nodes
        self.timeout = timeout
        self.console = console or Console(stderr=True, highlight=False)
        self.executed = Executed()
        self._lock = threading.Lock()

    def forward(self, steps: Sequence[Step], head: Recording) -> None:
        if not steps:
            return
        deps = closure(head, through_inputs=True)
        names = {s.urn: s.name for s in steps}
        by_name = {s.name: s for s in steps}
        if len(by_name) != len(steps):
            raise UpFailed("two steps share a resource name")
        sent = []
        for s in steps:
            after = tuple(sorted(names[u] for u in deps.get(s.urn, set()) if u in names and u != s.urn))
            sent.append(Sent(_placeholder(s, after, self.nodes[s.node].address), s.node, None))

        def run_step(entry: Sent, stop: threading.Event, timeout: float, abort: threading.Event | None) -> Outcome:
            return self._run_step(by_name[entry.command.name], stop, timeout, abort)

        result = replay(sent, progress=self._progress(), timeout=self.timeout, run=run_step)
        failed = result.failed
        if failed is not None:
            secret = any(r.command is not None and r.command.secret_output for r in by_name[failed.name].runs)
            shown = "" if secret else failed.stdout[-3000:]  # a verify report says which gap failed it
            raise UpFailed(f"node {failed.node}, step {failed.name}: "
                           + (f"exit {failed.rc}" if failed.rc is not None else str(failed.error))
                           + (f"\n{shown}" if shown else "")
                           + (f"\n{failed.stderr[-3000:]}" if failed.stderr else ""))

    def backward(self, steps: Sequence[Step]) -> None:
        for s in steps:  # one at a time, already in reverse dependency order
            outcome = self._run_step(s, threading.Event(), self.timeout, None)
            self._progress().finished(outcome)
            if not outcome.ok:
                raise UpFailed(f"node {s.node}, delete of {s.name}: exit {outcome.rc} {outcome.error or ''}\n"
                               f"{outcome.stderr[-3000:]}")

    def _run_step(self, step: Step, stop: threading.Event, timeout: float, abort: threading.Event | None) -> Outcome:
        started = time.monotonic()
        last = Outcome(name=step.name, node=step.node, create="", stdin_sha256=None, stdin_bytes=0, rc=0,
                       started=started)
        for r in step.runs:
            if r.command is not None:
                last = run_one(Sent(r.command, step.node, r.stdin), stop, timeout, abort)
                last.name = step.name
            else:
                last = self._host_action(step, r, started)
            with self._lock:
                self.executed.outcomes.append(last)
                if last.ok:
                    self.executed.steps.append(f"{step.name}:{r.script}")
            if not last.ok:
                break
        last.seconds = time.monotonic() - started
        return last

    def _host_action(self, step: Step, run_: Run, started: float) -> Outcome:
        script = run_.script
        outcome = Outcome(name=step.name, node=step.node, create=script, stdin_sha256=None, stdin_bytes=0, rc=None,
                          started=started)
        try:
            if script == "stop-start":
                # pulumi-aws changes an instance's type by stopping it and starting it again.
                self.testbed.stop(step.node, timeout=120)
                self.testbed.start(step.node, timeout=300)
            elif script == "replace-host":
                replace_host(self.testbed, step.node, user_data=run_.launch["user_data"], ami=run_.launch["ami"],
                             base_files=base_files(self.testbed, step.node, self._apt_source()))
                self._after_boot(step.node)
                with self._lock:
                    self.executed.replaced.append(step.node)
            elif script == "power-off":
                self.testbed.stop(step.node, timeout=120)
                with self._lock:
                    self.executed.powered_off.append(step.node)
            outcome.rc = 0
        except (TestbedError, OSError) as err:
            outcome.error = str(err)
        return outcome

    def _apt_source(self) -> str:
        from rehearsal.pkgrepo import APT_SOURCE_PATH

        running = next(h for h in self.testbed.hosts.values() if h.leader_pid)
        return self.testbed.read_file(running.name, APT_SOURCE_PATH).decode()

    def _after_boot(self, node: str) -> None:
        after_boot(self.testbed, node, ec2=self.nodes[node].kind == "ec2")

    def _progress(self) -> Progress:
        def finished(o: Outcome) -> None:
            status = "ok" if o.ok else f"FAILED (exit {o.rc})" if o.rc is not None else f"FAILED: {o.error}"
            say(f"up: {o.name} on {o.node} {status} in {o.seconds:.1f}s")

        return Progress(finished=finished)


# --------------------------------------------------------------------------
# The testbed the demo left
# --------------------------------------------------------------------------


def attach(settings: Settings) -> Testbed:
    """The demo's running testbed, as its state file describes it (nothing is set up or cleaned)."""
    path = settings.run_dir() / "state.json"
    if not path.exists():
        raise UpFailed(f"no testbed {settings.prefix} is running ({path} is missing): run `make demo` first")
    data = json.loads(path.read_text())
    tb = Testbed(list(data["hosts"]), settings=settings)
    tb.rootfs = Path(data["rootfs"])
    for name, h in data["hosts"].items():
        host = tb.hosts[name]
        if host.address != h["address"]:
            raise UpFailed(f"{name}: the testbed says {h['address']}, expected {host.address}")
        host.nspawn_pid, host.leader_pid = h["nspawn_pid"], h["leader_pid"]
        host.state = "running" if host.leader_pid else "down"
        # The host's data volume (make demo attached one to every host): bound again whenever the host
        # is powered on again (an instance-type change), or it would come back without its datadir.
        volume = tb.run_dir / VOLUMES_DIR / name / "mnt"
        if volume.is_mount():
            tb.volumes[name] = volume
    return tb


def add_host(tb: Testbed, name: str, apt_source: str) -> Host:
    """A new host on the running testbed's bridge (its network, upper directory and overlay files), not booted."""
    settings = tb.settings
    index = len(tb.hosts) + 1
    host = Host(name=name, index=index, address=settings.host_address(index), machine=f"{settings.prefix}-{name}",
                veth=f"{settings.prefix}v{index}", dir=tb.run_dir / "hosts" / name)
    tb.hosts[name] = host
    peer = f"{settings.prefix}c{index}"
    run(["ip", "netns", "add", host.machine])
    run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
    run(["ip", "link", "set", host.veth, "master", settings.bridge, "up"])
    run(["ip", "link", "set", peer, "netns", host.machine])
    run(["ip", "-n", host.machine, "link", "set", peer, "name", "eth0"])
    run(["ip", "-n", host.machine, "addr", "add", f"{host.address}/{tb.subnet_bits}", "dev", "eth0"])
    run(["ip", "-n", host.machine, "link", "set", "eth0", "up"])
    run(["ip", "-n", host.machine, "link", "set", "lo", "up"])
    host.upper.mkdir(parents=True)
    for path, text in base_files(tb, name, apt_source).items():
        tb._write_upper(host, path, text.encode(), 0o644)
    return host


def base_files(tb: Testbed, name: str, apt_source: str) -> dict[str, str]:
    """What a host's root disk holds before its first boot: names of the testbed's hosts, the package source."""
    from rehearsal.pkgrepo import APT_SOURCE_PATH
    from rehearsal.testbed import DEBIAN_SOURCES_PATH

    hosts_lines = ["127.0.0.1\tlocalhost", "::1\t\tlocalhost ip6-localhost ip6-loopback",
                   f"{tb.bridge_address}\ttestbed-gateway", *(f"{h.address}\t{h.name}" for h in tb.hosts.values())]
    return {
        "/etc/hosts": "\n".join(hosts_lines) + "\n",
        "/etc/hostname": f"{name}\n",
        DEBIAN_SOURCES_PATH: "# mariadb-kms testbed: no route to the Debian mirrors; see " + APT_SOURCE_PATH + "\n",
        APT_SOURCE_PATH: apt_source,
    }


def after_boot(tb: Testbed, node: str, *, ec2: bool) -> None:
    """What the testbed gives a host after its first boot, as make demo does (rehearsal/demo.py, boot_hosts)."""
    tb.put_file(node, ov.DPKG_UNSAFE_IO_PATH, ov.DPKG_UNSAFE_IO, 0o644, "root:root")
    if ec2:
        tb.put_file(node, CREDENTIALS_PATH,
                    ov.ec2_credentials(generated_access_key_id(), random_secret_access_key()), 0o600, "root:root")


def boot_new_hosts(tb: Testbed, new: Sequence[NodeHost], head: Recording, completed: Completed,
                   ov_settings: ov.Settings, login_public: str, executed: Executed) -> None:
    from rehearsal.demo import ec2_user_data, grant_net_admin
    from rehearsal.pkgrepo import APT_SOURCE_PATH

    if not new:
        return
    running = next(h for h in tb.hosts.values() if h.leader_pid)
    apt_source = tb.read_file(running.name, APT_SOURCE_PATH).decode()
    user_data = ec2_user_data(head)
    launched = {i.parent_urn.split("::")[-1]: str(plain(i.inputs.get("ami"))) for i in head.of_type(Types.EC2_INSTANCE)}
    for n in new:
        host = add_host(tb, n.name, apt_source)
        if host.address != n.address:
            raise UpFailed(f"{n.name}: the testbed's next host has {host.address}, the plan expected {n.address}")
        # A data volume as make demo gives every host: ext4 -O encrypt on premises (fscrypt, the default),
        # the unencrypted stand-in for the EBS volume on "EC2".
        for name, volume in make_volumes(tb.run_dir, {n.name: n.kind != "ec2"}).items():
            tb.volumes[name] = volume.mount_point
        if n.kind == "ec2":
            tb.seed(n.name, user_data=ov.user_data(user_data[n.name], ov_settings),
                    meta_data=meta_data(host.machine, n.name, launched[n.name]))
        else:
            private, public = completed.new_host_keys[n.name]
            onprem = next(o for o in completed.config["onPremNodes"] if o["name"] == n.name)
            tb.seed(n.name, user_data=ov.onprem_admin_cloud_config(
                hostname=n.name, user=onprem.get("sshUser", "root"), authorized_key=login_public,
                host_private_key=private, host_public_key=public))
    grant_net_admin(tb.settings, [n.name for n in new])
    try:
        tb.boot([n.name for n in new], timeout=300)
    except TestbedError as err:
        # Seen on the shared machine: a boot that starves (the host's systemd cannot get an inotify
        # instance when the machine's per-user limit is used up) succeeds on a second power-on; cloud-init
        # keeps the seed's instance id, so the second boot is the same instance.
        say(f"up: a new host did not boot ({str(err).splitlines()[0]}); powering it off and on once more")
        for n in new:
            tb.stop(n.name, timeout=120)
        tb.boot([n.name for n in new], timeout=300)
    for n in new:
        after_boot(tb, n.name, ec2=n.kind == "ec2")
        executed.booted.append(n.name)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


@dataclass
class UpResult:
    rc: int
    changes: list[Change]
    executed: Executed


def targets(names: Sequence[str], state: RehearsalState) -> list[str]:
    """``--replace`` values (a URN, or a resource name as the plan prints it) as URNs of the state's resources."""
    by_name: dict[str, list[str]] = {}
    for r in state.resources.values():
        if r.custom:
            by_name.setdefault(r.name, []).append(r.urn)
    urns, unknown = [], []
    for name in names:
        if name in state.resources:
            urns.append(name)
        elif len(by_name.get(name, [])) == 1:
            urns.append(by_name[name][0])
        else:
            unknown.append(name)
    if unknown:
        instances = sorted(r.name for r in state.resources.values() if r.type == Types.EC2_INSTANCE)
        raise StackError(f"--replace {', '.join(unknown)}: no resource of the stack has that URN or name; "
                         f"expected a URN or a resource name, e.g. {', '.join(instances) or 'an instance'}")
    return urns


def up(config_file: Path, *, settings: Settings, directory: Path, preview: bool = False,
       timeout: float = 1800.0, console: Console | None = None, login: str | None = None,
       replace: Sequence[str] = ()) -> UpResult:
    """``pulumi up`` with FILE's config; ``replace``: what ``pulumi up --replace`` names (URNs or names)."""
    console = console or Console(stderr=True, highlight=False, width=200)
    started = time.monotonic()
    state = load(directory)
    raw, region = load_file(config_file)
    replace_urns = targets(replace, state)
    if region != state.region:
        raise StackError(f"aws:region {region}: the stack is in {state.region}")
    with file_lock(settings.run_dir().with_suffix(".lock"), f"testbed {settings.prefix}"):
        tb = attach(settings)
        known = {n.address for n in state.nodes.values()} | {h.address for h in tb.hosts.values()}
        next_index = len(tb.hosts) + 1
        completed = complete_config(raw, region, state, settings.host_address, next_index, login=login)
        new = [n for n in completed.nodes.values() if n.name not in state.nodes and n.address not in known]
        kms_url = f"http://{settings.bridge_address}:{KMS_PORT}"
        all_nodes = {**state.nodes, **completed.nodes}
        head, changes = record_against(state, completed.config, all_nodes, kms_url, replace_urns)
        print_plan(changes, console)
        refused = blocking(changes)
        if refused:
            for c in refused:
                console.print(f"error: {c.type} {c.name} is protected and would be "
                              f"{'deleted' if c.action == 'delete' else 'replaced'}: the engine refuses the whole "
                              "update; nothing was changed", style="bold red", markup=False)
            return UpResult(REFUSED, changes, Executed())
        base = state.recording()
        ov_settings = ov.Settings(kms_endpoint_url=kms_url)
        forward = forward_steps(changes, head, all_nodes, ov_settings, base)
        backward = delete_steps(changes, base, all_nodes)
        executor = Executor(tb, all_nodes, timeout=timeout, console=console)
        if preview:
            console.print(f"preview: {len(forward)} step(s) on hosts, then {len(backward)} delete step(s); "
                          "nothing runs", markup=False)
            return UpResult(OK, changes, executor.executed)
        if not any(c.action != "same" for c in changes):
            console.print("no changes: nothing runs", markup=False)
            return UpResult(OK, changes, executor.executed)
        boot_new_hosts(tb, new, head, completed, ov_settings, str(state.config["sshAuthorizedKey"]),
                       executor.executed)
        executor.forward(forward, head)
        executor.backward(backward)
        tb._save_state()
        nodes = {**state.nodes, **completed.nodes}
        host_keys = {**state.host_keys, **{k: v[1] for k, v in completed.new_host_keys.items()}}
        save(RehearsalState.from_recording(engine_state(base, head), config=completed.config, region=region,
                                           nodes=nodes, host_keys=host_keys, ups=state.ups + 1), directory)
        executor.executed.seconds = round(time.monotonic() - started, 1)
        say(f"up: done in {executor.executed.seconds:.0f}s: {len(executor.executed.steps)} script(s) ran"
            + (f", booted {', '.join(executor.executed.booted)}" if executor.executed.booted else "")
            + (f", replaced {', '.join(executor.executed.replaced)}" if executor.executed.replaced else "")
            + (f", powered off {', '.join(executor.executed.powered_off)}" if executor.executed.powered_off else ""))
        return UpResult(OK, changes, executor.executed)


def destroy(*, settings: Settings, directory: Path, preview: bool = False,
            console: Console | None = None) -> UpResult:
    """``pulumi destroy``: every resource of the state deleted, so a protected one refuses the whole run.

    The program's protected resources (the KMS key, the data key, EC2 data volumes) refuse it until
    ``state unprotect`` clears them: retiring a cluster is that runbook (docs/runbooks/retire.md). Then
    the delete steps run as in ``up`` (an EC2 node's host is powered off; a remote command runs its
    ``delete``, and the program gives none), a ``retain_on_delete`` resource is only forgotten, and the
    state is left empty, as the engine leaves a destroyed stack.
    """
    console = console or Console(stderr=True, highlight=False, width=200)
    state = load(directory)
    changes = plan_changes(state.recording(), Recording(preview=False))
    print_plan(changes, console)
    refused = blocking(changes)
    for c in refused:
        console.print(f"error: {c.type} {c.name} is protected and would be deleted: the engine refuses the whole "
                      "destroy; nothing was changed", style="bold red", markup=False)
    if refused:
        return UpResult(REFUSED, changes, Executed())
    if preview:
        return UpResult(OK, changes, Executed())
    with file_lock(settings.run_dir().with_suffix(".lock"), f"testbed {settings.prefix}"):
        tb = attach(settings)
        executor = Executor(tb, state.nodes, console=console)
        executor.backward(delete_steps(changes, state.recording(), state.nodes))
        tb._save_state()
        forgotten = [c for c in changes if c.action == "delete" and c.retain_on_delete]
        save(dataclasses.replace(state, resources={}), directory)
    for c in forgotten:
        console.print(f"retained: {c.type} {c.name} (retain_on_delete: forgotten, not deleted)", markup=False)
    say(f"destroy: done: {len(executor.executed.steps)} delete script(s) ran, "
        f"{len([c for c in changes if c.action == 'delete'])} resource(s) left the state, {len(forgotten)} retained"
        + (f", powered off {', '.join(executor.executed.powered_off)}" if executor.executed.powered_off else ""))
    return UpResult(OK, changes, executor.executed)


def main(config_file: Path | None, *, preview: bool, timeout: float, ssh_private_key: Path | None = None,
         replace: Sequence[str] = ()) -> int:
    from rehearsal.demo import demo_settings, out_dir
    from rehearsal.state import NoState

    settings = demo_settings()
    try:
        if config_file is None:
            return destroy(settings=settings, directory=out_dir(settings), preview=preview).rc
        login = read_login_key(ssh_private_key) if ssh_private_key is not None else None
        rc = up(config_file, settings=settings, directory=out_dir(settings), preview=preview, timeout=timeout,
                login=login, replace=replace).rc
        hint = out_dir(settings) / "ssh"
        if rc == OK and login is not None and not preview and hint.is_dir():
            # make demo's `ssh -i .../ssh/id_ed25519` hint logs in with the stack's key: now the new one.
            fd = os.open(hint / "id_ed25519", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(login)
        return rc
    except (StackError, NoState) as err:
        print(f"up: {err}", file=sys.stderr)
        return USAGE
    except (UpFailed, TestbedError) as err:
        print(f"\nup: FAILED: {err}\nthe state is left as it was: the next `up` plans the same changes again",
              file=sys.stderr)
        return FAILED

