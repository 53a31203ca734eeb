"""The change plan a reviewer reads: which remote steps run on which node, in which order, who restarts.

    python -m tools.plan_diff --base CONFIG_OR_GITREF --head CONFIG [--stack NAME]

``--head`` is a stack file (``Pulumi.<stack>.yaml``). ``--base`` is either
another stack file, or a git ref: then the program and the stack file at the
same path are taken from that ref (the base branch of a pull request).

Both are recorded under mocks (``rehearsal/recorder``) in up mode; no cloud
credentials, no network. The two recordings are compared with the engine's
rules (``rehearsal/engine_rules``), and the result is printed as Markdown:

- per node, the remote steps that will run, what the engine does with each and
  why (which input changed; for a file put, which files);
- the rolling order, and whether the nodes that restart do so one at a time;
- the nodes that will restart;
- whether the one-time bootstrap could run (it must never after the first up);
- resources replaced or deleted, protected ones flagged (the engine would
  refuse the whole update).

What the mocks answer for a resource depends on its inputs only, and a
resource whose inputs did not change keeps the answer it had in the base run,
as the engine keeps a resource's outputs when it has nothing to do. So a
random key or a freshly issued certificate changes only when the engine would
make a new one.

Secret values are never printed: a changed secret input is named, never shown.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import pickle
import runpy
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime import rpc

from rehearsal.aws_values import AwsMocks
from rehearsal.engine_rules import Change, blocking, plain, plan_changes, remote_runs
from rehearsal.plan import closure, decode_put, is_put_payload, replay_order
from rehearsal.recorder import PROJECT, REPO, Computed, Recording, RegisteredResource, Types, config_for_pulumi, record

DEPLOYER_ROLE_NAME = "pulumi-deployer"
ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "eu-west-1"
NODE_TYPES = (Types.EC2_NODE, Types.ONPREM_NODE)

Memo = dict[tuple[str, str, str], Computed]


# --------------------------------------------------------------------------
# Recording with answers that follow the inputs
# --------------------------------------------------------------------------


class PlanMocks(AwsMocks):
    """Realistic values; the same resource with the same inputs gets the same answer in every run sharing ``memo``."""

    def __init__(self, memo: Memo, *, stack: str, region: str) -> None:
        super().__init__(
            preview=False, stack=stack, region=region, deployer_role_name=DEPLOYER_ROLE_NAME,
            deployer_role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/{DEPLOYER_ROLE_NAME}", caller_session="plan-diff",
            account_id=ACCOUNT_ID,
        )
        self.memo = memo

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        key = (typ, name, json.dumps(plain(inputs), sort_keys=True, default=str))
        if key not in self.memo:
            self.memo[key] = super().computed(typ, name, inputs)
        return self.memo[key]

    def remote_command(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        # A verification passes: the plan is about what runs, not about what a node reports.
        if "mariadb-kms-verify" in str(plain(inputs.get("create")) or ""):
            return {"stdout": json.dumps({"ok": True, "gaps": []}), "stderr": ""}
        return {"stdout": "", "stderr": ""}


@dataclass
class StackFile:
    config: dict[str, Any]  # program keys without the project prefix
    region: str
    secret_keys: list[str]


def load_stack_file(path: Path) -> StackFile:
    """A ``Pulumi.<stack>.yaml``'s config. A secure value becomes a placeholder named after its ciphertext:
    equal ciphertexts compare equal, and the plaintext is never needed nor known."""
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("config") or {}
    config: dict[str, Any] = {}
    secrets: list[str] = []
    for key, value in entries.items():
        namespace, _, name = str(key).partition(":")
        if namespace != PROJECT:
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = f"secret-{hashlib.sha256(str(value['secure']).encode()).hexdigest()[:16]}"
            secrets.append(name)
        config[name] = value
    region = str(entries.get("aws:region") or DEFAULT_REGION)
    return StackFile(config, region, secrets)


def record_plan(
    stack_file: StackFile, memo: Memo, *, stack: str, program: Callable[[], None] | None = None
) -> Recording:
    flat, secret_keys = config_for_pulumi(stack_file.config, stack_file.region, stack_file.secret_keys)
    rec = record(PlanMocks(memo, stack=stack, region=stack_file.region), flat, secret_keys, stack=stack,
                 program=program)
    if rec.exception is not None:
        raise SystemExit(f"the program failed under mocks: {rec.exception}; errors: {rec.errors}")
    return rec


def _record_into(out: Path, program_root: Path, stack_file: Path, memo_path: Path, stack: str) -> None:
    """Record the program found at ``program_root`` (another checkout) and pickle (recording, memo)."""
    sys.path.insert(0, str(program_root))  # its components/, not this checkout's
    # Written by the parent process a moment ago, in a directory of its own.
    memo: Memo = pickle.loads(memo_path.read_bytes()) if memo_path.exists() else {}  # noqa: S301

    def program() -> None:
        runpy.run_path(str(program_root / "__main__.py"), run_name="__main__")

    rec = record_plan(load_stack_file(stack_file), memo, stack=stack, program=program)
    rec.exception = None
    out.write_bytes(pickle.dumps((rec, memo)))


def record_at_ref(ref: str, stack_rel: Path, memo: Memo, *, stack: str) -> Recording:
    """The program and stack file as they are at git ``ref``, recorded in a process of their own."""
    with tempfile.TemporaryDirectory(prefix="plan-diff-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        memo_path, out = Path(tmp) / "memo.pickle", Path(tmp) / "out.pickle"
        memo_path.write_bytes(pickle.dumps(memo))
        subprocess.run(
            [sys.executable, "-m", "tools.plan_diff", "--record-into", str(out), "--program-root", str(tree),
             "--head", str(tree / stack_rel), "--memo", str(memo_path), "--stack", stack],
            cwd=REPO, check=True,
        )
        rec, new_memo = pickle.loads(out.read_bytes())  # noqa: S301 - written just now by our own child process
    memo.update(new_memo)
    assert isinstance(rec, Recording)
    return rec


# --------------------------------------------------------------------------
# What the steps mean
# --------------------------------------------------------------------------


def node_of(rec: Recording, res: RegisteredResource) -> str | None:
    """The node a resource belongs to: its nearest ancestor that is an EC2 or on-prem node."""
    by_urn = {r.urn: r for r in rec.resources}
    parent = by_urn.get(res.parent_urn)
    while parent is not None:
        if parent.type in NODE_TYPES:
            return parent.name
        parent = by_urn.get(parent.parent_urn)
    return None


def _create(res: RegisteredResource) -> str:
    return str(plain(res.inputs.get("create")) or "")


def is_restart(res: RegisteredResource) -> bool:
    """The roll step: ``mariadb-kms-roll`` restarts MariaDB when the node's applied config is stale."""
    create = _create(res)
    return "mariadb-kms-roll" in create and "--preflight" not in create and "--mark-applied" not in create


def only_access_keys_changed(
    old: RegisteredResource | None, new: RegisteredResource | None, access_key_ids: set[str]
) -> bool:
    """Whether the triggers that changed are all access key ids: a rotated on-prem key re-runs the roll, which
    finds its applied config current (the credentials file is no part of it) and restarts nothing."""
    if old is None or new is None:
        return False
    before, after = plain(old.inputs.get("triggers")) or [], plain(new.inputs.get("triggers")) or []
    if len(before) != len(after):
        return False
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    return bool(changed) and all(str(a) in access_key_ids and str(b) in access_key_ids for a, b in changed)


def is_bootstrap(res: RegisteredResource) -> bool:
    return "mariadb-kms-bootstrap" in _create(res)


def step_label(res: RegisteredResource, node: str | None) -> str:
    if node is None:
        return res.name
    return res.name.removeprefix(f"{node}-ssh-").removeprefix(f"{node}-")


def _put_files(stdin: Any) -> dict[str, str] | None:
    """A put payload's files as {path: digest of content, mode and owner}; None if it is no put payload."""
    text = plain(stdin)
    if not isinstance(text, str) or not is_put_payload(text):
        return None
    try:
        files = decode_put(text)
    except (tarfile.TarError, ValueError, OSError):
        return None
    return {p: hashlib.sha256(c + f"{m}{o}".encode()).hexdigest() for p, (c, m, o) in files.items()}


def explain(change: Change, old: RegisteredResource | None, new: RegisteredResource | None) -> list[str]:
    """Why the engine acts, input by input, never showing a secret value."""
    if change.action == "create":
        return ["new"]
    if change.action == "delete":
        return ["no longer in the program"]
    reasons: list[str] = []
    for key in change.changed:
        if key in change.unknown_via:
            reasons.append(f"`{key}` comes from a resource being replaced")
            continue
        if key == "stdin" and old is not None and new is not None:
            before, after = _put_files(old.inputs.get("stdin")), _put_files(new.inputs.get("stdin"))
            if before is not None and after is not None:
                paths = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
                reasons.append("files: " + ", ".join(f"`{p}`" for p in paths))
                continue
        if key == "triggers" and old is not None and new is not None:
            a, b = plain(old.inputs.get("triggers")) or [], plain(new.inputs.get("triggers")) or []
            idx = [str(i) for i in range(max(len(a), len(b))) if (a[i:i + 1] or [None]) != (b[i:i + 1] or [None])]
            reasons.append(f"`triggers[{','.join(idx)}]`")
            continue
        secret = new is not None and rpc.is_rpc_secret(new.inputs.get(key))
        reasons.append(f"`{key}`" + (" (secret)" if secret else ""))
    if change.replace_keys:
        reasons.append("replaces on " + ", ".join(f"`{k}`" for k in change.replace_keys))
    reasons.extend(change.notes)
    if change.rule_unknown:
        reasons.append("this type's replace rules are not modelled: shown as an update")
    return reasons


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------


@dataclass
class StepRun:
    node: str | None
    step: str
    action: str
    runs: list[str]
    why: list[str]
    restart: bool
    bootstrap: bool


@dataclass
class PlanDiff:
    config_changes: list[str]
    steps: list[StepRun]  # remote commands that run, in execution order
    rolling_order: list[str]  # every node, in the order the roll reaches it
    restarts: list[str]  # nodes that restart, in rolling order
    one_at_a_time: bool  # every restarting node's roll waits for the previous one
    bootstrap_runs: bool
    first_up: bool
    resources: list[tuple[Change, list[str]]]  # non-command custom resources that change
    blocked: list[Change] = field(default_factory=list)


def _named(value: Any) -> dict[str, Any] | None:
    """A list of named entries (ec2Nodes, onPremNodes) as {name: entry}; None for anything else."""
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return {str(v["name"]): v for v in value}
    return None


def _value_change(key: str, a: Any, b: Any) -> str:
    if a is None:
        return f"`{key}`: set to `{json.dumps(b)}`"
    if b is None:
        return f"`{key}`: removed (was `{json.dumps(a)}`)"
    before, after = _named(a), _named(b)
    if before is not None and after is not None:
        parts = [f"added {n}" for n in after if n not in before] + [f"removed {n}" for n in before if n not in after]
        for n in before.keys() & after.keys():
            keys = sorted(k for k in set(before[n]) | set(after[n]) if before[n].get(k) != after[n].get(k))
            parts += [f"{n}.{k}: `{json.dumps(before[n].get(k))}` → `{json.dumps(after[n].get(k))}`" for k in keys]
        return f"`{key}`: " + ", ".join(parts)
    return f"`{key}`: `{json.dumps(a)}` → `{json.dumps(b)}`"


def config_changes(base: StackFile, head: StackFile) -> list[str]:
    """What the stack config changed, key by key as the user writes them; secrets named, never shown."""
    out = []
    for key in sorted(set(base.config) | set(head.config)):
        a, b = base.config.get(key), head.config.get(key)
        if a == b:
            continue
        if key in base.secret_keys or key in head.secret_keys:
            out.append(f"`{key}`: changed (secret)")
        else:
            out.append(_value_change(key, a, b))
    if base.region != head.region:
        out.append(f"`aws:region`: `{base.region}` → `{head.region}`")
    return out


def diff_plans(base: Recording, head: Recording, config: list[str] | None = None) -> PlanDiff:
    changes = plan_changes(base, head)
    by_urn = {c.urn: c for c in changes}
    old = {r.urn: r for r in base.resources}
    new = {r.urn: r for r in head.resources}

    access_key_ids = {r.id for rec in (base, head) for r in rec.of_type(Types.IAM_ACCESS_KEY)}
    steps: list[StepRun] = []
    ordered = [r.urn for r in replay_order(head, through_inputs=True)]
    gone = sorted(u for u, c in by_urn.items() if c.type == Types.REMOTE_COMMAND and u not in new)
    for urn in [*ordered, *gone]:
        change = by_urn[urn]
        res = new.get(urn) or old[urn]
        runs = remote_runs(change, res)
        if change.action == "same":
            continue
        node = node_of(head if urn in new else base, res)
        steps.append(StepRun(
            node=node, step=step_label(res, node), action=change.action, runs=runs,
            why=explain(change, old.get(urn), new.get(urn)),
            restart=is_restart(res) and bool(runs) and change.action != "create" and "triggers" in change.changed
            and not only_access_keys_changed(old.get(urn), new.get(urn), access_key_ids),
            bootstrap=is_bootstrap(res) and bool(runs),
        ))

    rolls = [r for r in replay_order(head, through_inputs=True) if is_restart(r)]
    rolling_order = [node_of(head, r) or r.name for r in rolls]
    restarting = [s.node or s.step for s in steps if s.restart]
    restarts = [n for n in rolling_order if n in restarting]
    deps = closure(head, through_inputs=True)
    roll_urn = {node_of(head, r) or r.name: r.urn for r in rolls}
    one_at_a_time = all(
        roll_urn[earlier] in deps.get(roll_urn[later], set())
        for earlier, later in itertools.pairwise(restarts)
    )
    resources = [
        (c, explain(c, old.get(c.urn), new.get(c.urn)))
        for c in changes
        if c.action != "same" and c.type != Types.REMOTE_COMMAND
    ]
    return PlanDiff(
        config_changes=config or [],
        steps=steps,
        rolling_order=rolling_order,
        restarts=restarts,
        one_at_a_time=one_at_a_time,
        bootstrap_runs=any(s.bootstrap for s in steps),
        first_up=not base.resources,
        resources=resources,
        blocked=blocking(changes),
    )


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def _runs_text(step: StepRun) -> str:
    if not step.runs:
        return "nothing (no script for this step)"
    text = " then ".join(f"`{r}`" for r in step.runs)
    if step.restart:
        text += " → **restarts MariaDB**"
    return text


def render(plan: PlanDiff, *, title: str = "Change plan") -> str:
    lines = [f"## {title}", ""]
    if plan.config_changes:
        lines += ["**Config changes:** " + "; ".join(plan.config_changes), ""]
    if plan.blocked:
        names = ", ".join(f"`{c.name}` ({c.action})" for c in plan.blocked)
        lines += [f"⛔ **The engine refuses this update:** protected resources would be deleted or replaced: {names}. "
                  "`pulumi preview` fails; see the runbook before unprotecting anything.", ""]
    if plan.bootstrap_runs and not plan.first_up:
        lines += ["⛔ **Bootstrap would run again** (`galera_new_cluster` on a running cluster is a split brain).", ""]
    else:
        lines += [f"**Bootstrap:** {'runs (first up)' if plan.first_up else 'does not run'}.", ""]
    if plan.restarts:
        how = "one at a time, each after the previous node is Synced" if plan.one_at_a_time else \
            "⚠️ NOT one at a time: some restarts are not ordered after the previous node"
        lines += [f"**Nodes that restart:** {', '.join(plan.restarts)} ({how}).", ""]
    else:
        lines += ["**Nodes that restart:** none.", ""]
    lines += ["**Rolling order:** " + (" → ".join(plan.rolling_order) or "no nodes"), ""]

    if plan.steps:
        lines += ["### Remote steps, in the order they run", "",
                  "| node | step | engine | runs on the node | why |", "| --- | --- | --- | --- | --- |"]
        for s in plan.steps:
            lines.append(f"| {s.node or '(cluster)'} | {s.step} | {s.action} | {_runs_text(s)} | {'; '.join(s.why)} |")
        lines.append("")
    else:
        lines += ["No remote step runs.", ""]

    if plan.resources:
        lines += ["### Other resources", "", "| resource | type | engine | protected | why |",
                  "| --- | --- | --- | --- | --- |"]
        for c, why in plan.resources:
            flag = "**yes: refused**" if c.blocked else ("yes" if c.protected else "")
            if c.action == "delete" and c.retain_on_delete:
                why = [*why, "retained: left in the cloud, dropped from the state"]
            lines.append(f"| {c.name} | `{c.type}` | {c.action} | {flag} | {'; '.join(why)} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plan_diff", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the base: a stack file, or a git ref (its program and stack file)")
    parser.add_argument("--head", required=True, help="the stack file of the change (Pulumi.<stack>.yaml)")
    parser.add_argument("--stack", help="the stack name (default: from the head file name)")
    parser.add_argument("--record-into", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--program-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    head_path = Path(args.head)
    stack = args.stack or head_path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    if args.record_into is not None:
        _record_into(args.record_into, args.program_root, head_path, args.memo, stack)
        return 0
    if not args.base:
        parser.error("--base is required")
    memo: Memo = {}
    head_file = load_stack_file(head_path)
    base_path = Path(args.base)
    if base_path.is_file():
        base_file = load_stack_file(base_path)
        base = record_plan(base_file, memo, stack=stack)
        title = f"Change plan: `{base_path}` → `{head_path}`"
    else:
        rel = head_path.resolve().relative_to(REPO)
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{args.base}:{rel}"], capture_output=True, text=True)
        if shown.returncode != 0:
            parser.error(f"--base {args.base}: neither a file nor a git ref holding {rel} ({shown.stderr.strip()})")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(shown.stdout)
            f.flush()
            base_file = load_stack_file(Path(f.name))
        base = record_at_ref(args.base, rel, memo, stack=stack)
        title = f"Change plan: `{args.base}` → this change (`{rel}`)"
    head = record_plan(head_file, memo, stack=stack)
    print(render(diff_plans(base, head, config_changes(base_file, head_file)), title=title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
