"""``make demo``: the whole deployment rehearsed on this machine, from the program's own rendered plan.

1. the KMS emulator (moto's server) on the testbed bridge;
2. the program (``__main__.py``) runs under mocks with ``Pulumi.rehearsal.yaml``
   and a fresh login key; the KMS key, its alias and the cluster data key are
   made in the emulator as they register (``rehearsal/emulator``), the rest
   gets realistic values; everything registered is recorded;
3. the declared overlay (``rehearsal/overlay``) is applied and printed as a
   diff against the recorded plan;
4. the testbed boots: "EC2" hosts from the bare rootfs with their recorded
   user-data through cloud-init's NoCloud seed, the on-prem host as its
   administrator prepared it; then every recorded remote command runs over
   real SSH in the recorded order with its stdin (``rehearsal/replay``): the
   install path, the one-time bootstrap, the rolling steps, the verification;
5. the verification reports become a table and a JSON report;
6. the exit status is non-zero when anything failed, naming node and step.

The cluster is left running (``ssh`` into it with the printed command);
``python -m rehearsal down`` (``make demo-down``) removes everything, also
after a failed or interrupted run. A new ``demo`` removes the previous one
first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from components.cloud_config import decode_user_data
from components.node_files import CREDENTIALS_PATH
from rehearsal import TestbedError, cache_dir, file_lock, phase, say
from rehearsal import overlay as ov
from rehearsal import report as rp
from rehearsal.aws_values import ACCOUNT_ID, random_secret_access_key
from rehearsal.emulator import EmulatedMocks, KmsEmulator, emulator_credentials, generated_access_key_id
from rehearsal.kms_server import DEFAULT_PORT as KMS_PORT
from rehearsal.kms_server import KmsServer
from rehearsal.pkgrepo import APT_SOURCE_PATH
from rehearsal.plan import RecordedCommand, recorded_commands
from rehearsal.recorder import Recording, Types, config_for_pulumi, record
from rehearsal.replay import Outcome, Progress, Sent, replay
from rehearsal.runner import attach_volumes
from rehearsal.stack import SECRET_KEYS, STACK, RehearsalStack, StackError, load_file, prepare
from rehearsal.testbed import DEBIAN_SOURCES_PATH, SEED_DIR, Settings, Testbed, cleanup

PREFIX_ENV = "MARIADB_KMS_DEMO_PREFIX"
SUBNET_ENV = "MARIADB_KMS_DEMO_SUBNET"
NODES_ENV = "MARIADB_KMS_DEMO_NODES"
# Its own prefix and subnet, so `make demo` and the node tests (prefix mk, 10.231.0.0/24) run side by side.
DEFAULT_PREFIX = "mkdemo"
DEFAULT_SUBNET = "10.231.5.0/24"


def demo_settings() -> Settings:
    return Settings(
        prefix=os.environ.get(PREFIX_ENV, DEFAULT_PREFIX),
        subnet=ipaddress.IPv4Network(os.environ.get(SUBNET_ENV, DEFAULT_SUBNET)),
    )


# nspawn's trusted settings directory: a file named after a machine adds settings to its boot.
NSPAWN_SETTINGS_DIR = Path("/run/systemd/nspawn")


def grant_net_admin(settings: Settings, names: Sequence[str]) -> None:
    """Give the demo's hosts CAP_NET_ADMIN, which systemd-nspawn drops by default.

    Root on an EC2 instance has it, and first boot needs it: the IMDS guard loads
    an nftables rule. Each host has a network namespace of its own, so the rule
    stays inside the host. Since every node loads the Galera-port allowlist, the
    testbed's own nspawn command line grants it to every host as well
    (``--capability=CAP_NET_ADMIN``), so this settings file only repeats it.
    """
    NSPAWN_SETTINGS_DIR.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = NSPAWN_SETTINGS_DIR / f"{settings.prefix}-{name}.nspawn"
        path.write_text("# mariadb-kms make demo: root on an EC2 instance may load nftables rules\n"
                        "[Exec]\nCapability=CAP_NET_ADMIN\n")


def remove_nspawn_settings(settings: Settings) -> None:
    for path in NSPAWN_SETTINGS_DIR.glob(f"{settings.prefix}-*.nspawn"):
        path.unlink(missing_ok=True)


def out_dir(settings: Settings | None = None) -> Path:
    """Where the report, the overlay diff and the login key go: one directory per testbed prefix."""
    prefix = (settings or demo_settings()).prefix
    path = cache_dir() / ("demo" if prefix == DEFAULT_PREFIX else f"demo-{prefix}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class DemoFailed(RuntimeError):
    """A phase failed; the message names what (and, in the replay, the node and the step)."""


@dataclass
class Run:
    stack: RehearsalStack
    settings: Settings
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def timed(run: Run, name: str) -> Iterator[None]:
    """A phase with progress lines; its duration goes into the report."""
    start = time.monotonic()
    try:
        with phase(name):
            yield
    finally:
        run.phases[name] = round(time.monotonic() - start, 1)


# --------------------------------------------------------------------------
# Reading the recording
# --------------------------------------------------------------------------


def _parent_type(urn: str) -> str:
    # urn:pulumi:<stack>::<project>::<parent types joined by $>::<name>
    parts = urn.split("::")
    return parts[2].split("$")[-1] if len(parts) >= 4 else ""


def ec2_user_data(rec: Recording) -> dict[str, str]:
    """Each EC2 node's recorded cloud-config text, by node (the Ec2Node component the instance belongs to)."""
    out: dict[str, str] = {}
    for instance in rec.of_type(Types.EC2_INSTANCE):
        node = instance.parent_urn.split("::")[-1]
        encoded = instance.input("userDataBase64")
        if not isinstance(encoded, str):
            raise DemoFailed(f"{instance.name}: no user-data recorded")
        out[node] = decode_user_data(encoded)
    return out


def key_arn_of(rec: Recording) -> str | None:
    keys = rec.of_type(Types.KMS_KEY)
    return str(keys[0].state.get("arn")) if len(keys) == 1 else None


def verification_commands(rec: Recording) -> set[str]:
    """The commands the program's Verification components run (their stdout is the verify report)."""
    return {r.name for r in rec.of_type(Types.REMOTE_COMMAND) if _parent_type(r.parent_urn) == Types.VERIFICATION}


# --------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------


def record_program(run: Run, kms_url: str) -> Recording:
    stack = run.stack
    addresses = {f"{n.name}-eni": n.address for n in stack.nodes if n.kind == "ec2"}
    emulator = KmsEmulator(kms_url, stack.region)
    mocks = EmulatedMocks(emulator=emulator, addresses=addresses, stack=STACK, region=stack.region,
                          account_id=ACCOUNT_ID)
    flat, secret_keys = config_for_pulumi(stack.config, stack.region, SECRET_KEYS)
    with emulator_credentials():
        rec = record(mocks, flat, secret_keys, stack=STACK)
    for warning in rec.warnings:
        say(f"program warning: {warning}")
    if rec.exception is not None or rec.errors:
        raise DemoFailed(f"the program failed under mocks: {rec.exception!r}; errors: {rec.errors}")
    say(f"recorded {len(rec.resources)} resources, {len(rec.of_type(Types.REMOTE_COMMAND))} remote commands; "
        f"KMS key {key_arn_of(rec)} and its data key made in the emulator")
    return rec


# What the testbed writes on every host (Testbed.overlay_files), by declared item.
TESTBED_FILE_ITEMS = {
    "/etc/hosts": "addresses",
    "/etc/hostname": "addresses",
    DEBIAN_SOURCES_PATH: "package-repository",
    APT_SOURCE_PATH: "package-repository",
}


@dataclass
class Overlaid:
    sent: list[Sent]
    user_data: dict[str, str]  # node -> cloud-config text that is seeded
    recorded_user_data: dict[str, str]
    host_files: dict[str, dict[str, tuple[str, str]]]  # node -> path -> (shown content, item)
    changes: list[ov.Change]


def apply_overlay(run: Run, rec: Recording, plan: Sequence[RecordedCommand], tb: Testbed,
                  settings: ov.Settings) -> Overlaid:
    nodes = {n.address: n for n in run.stack.nodes}
    sent: list[Sent] = []
    changes: list[ov.Change] = []
    for cmd in plan:
        node = nodes.get(cmd.host)
        if node is None:
            raise DemoFailed(f"{cmd.name}: connects to {cmd.host}, which is no node of the stack")
        stdin, changed = ov.command_stdin(cmd, settings, ec2=node.kind == "ec2")
        changes += changed
        sent.append(Sent(command=cmd, node=node.name, stdin=stdin))
    recorded = ec2_user_data(rec)
    seeded = {name: ov.user_data(text, settings) for name, text in recorded.items()}
    for name in recorded:
        changes += ov.user_data_changes(name, recorded[name], seeded[name])
    host_files: dict[str, dict[str, tuple[str, str]]] = {}
    for n in run.stack.nodes:
        files = {path: (text, TESTBED_FILE_ITEMS.get(path, "UNDECLARED"))
                 for path, text in tb.overlay_files(n.name).items()}
        files[ov.DPKG_UNSAFE_IO_PATH] = (ov.DPKG_UNSAFE_IO, "dpkg-unsafe-io")
        if n.kind == "ec2":
            files[CREDENTIALS_PATH] = (ov.REDACTED + "\n", "ec2-credentials")
        else:
            files[f"{SEED_DIR}/user-data"] = (onprem_seed(run, n.name, shown=True), "onprem-admin")
        host_files[n.name] = files
        changes += ov.host_file_changes(n.name, files)
    return Overlaid(sent, seeded, recorded, host_files, changes)


def print_overlay(changes: Sequence[ov.Change], path: Path) -> None:
    """The whole diff to ``path``; on the console each distinct change once, with the places it applies to."""
    path.write_text("".join(c.diff if c.diff.endswith("\n") else c.diff + "\n" for c in changes))
    groups: dict[tuple[str, str], list[ov.Change]] = {}
    for c in changes:
        body = "\n".join(line for line in c.diff.splitlines() if not line.startswith(("---", "+++")))
        groups.setdefault((c.path, body), []).append(c)
    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=True, highlight=False, width=160)  # a log: keep diff lines whole
    console.rule("the declared overlay: what the rehearsal sends beyond the recorded plan")
    for (file_path, body), found in groups.items():
        items = sorted({c.item for c in found})
        where = ", ".join(c.target for c in found)
        console.print(f"{file_path}  [{', '.join(items)}]  in {where}", style="bold", markup=False)
        for line in body.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print("    " + line, style=style, markup=False)
    undeclared = [c for c in changes if c.item == "UNDECLARED"]
    if undeclared:
        console.print(f"{len(undeclared)} UNDECLARED change(s); full diff: {path}", style="bold red", markup=False)
    else:
        console.print(f"{len(changes)} changes, each one of the declared items (README, \"make demo\"); "
                      f"full diff: {path}", markup=False)
    console.rule()
    if undeclared:
        raise DemoFailed("the overlay changed what it does not declare: " +
                         ", ".join(f"{c.target} {c.path}" for c in undeclared))


def onprem_seed(run: Run, name: str, *, shown: bool) -> str:
    """The on-prem host's NoCloud user-data: what its administrator set up (``shown``: host key redacted)."""
    onprem = next(o for o in run.stack.cluster.onprem_nodes if o.name == name)
    keys = run.stack.onprem_host_keys[name]
    return ov.onprem_admin_cloud_config(
        hostname=name, user=onprem.ssh_user, authorized_key=run.stack.login.public_line,
        host_private_key=ov.REDACTED if shown else keys.private_openssh, host_public_key=keys.public_line,
    )


def boot_hosts(run: Run, tb: Testbed, overlaid: Overlaid) -> dict[str, str]:
    stack = run.stack
    grant_net_admin(run.settings, [n.name for n in stack.nodes])
    for n in stack.nodes:
        if n.kind == "ec2":
            tb.seed(n.name, user_data=overlaid.user_data[n.name])
        else:
            tb.seed(n.name, user_data=onprem_seed(run, n.name, shown=False))
    # Data volumes at /srv/mariadb-kms: on premises what its administrator prepares (ext4 -O encrypt, for
    # fscrypt); on "EC2" the stand-in for the EBS volume, unencrypted (the data-volume overlay item).
    # A caller that made a host's volume itself (a smaller one, to fill it) keeps it.
    bare = [n for n in stack.nodes if n.name not in tb.volumes]
    attach_volumes(tb, [n.name for n in bare if n.kind != "ec2"])
    attach_volumes(tb, [n.name for n in bare if n.kind == "ec2"], encrypt=False)
    states = tb.boot(timeout=300)
    for n in stack.nodes:
        tb.put_file(n.name, ov.DPKG_UNSAFE_IO_PATH, ov.DPKG_UNSAFE_IO, 0o644, "root:root")
        if n.kind == "ec2":
            # The instance profile's stand-in (see overlay.py); generated here, never printed.
            tb.put_file(n.name, CREDENTIALS_PATH,
                        ov.ec2_credentials(generated_access_key_id(), random_secret_access_key()), 0o600, "root:root")
    return states


def run_replay(run: Run, sent: Sequence[Sent], timeout: float) -> list[Outcome]:
    def started(s: Sent) -> None:
        say(f"replay: {s.command.name} on {s.node} ({s.command.user}@{s.command.host}) started")

    def finished(o: Outcome) -> None:
        status = "ok" if o.ok else f"FAILED (exit {o.rc})" if o.rc is not None else f"FAILED: {o.error}"
        say(f"replay: {o.name} on {o.node} {status} in {o.seconds:.1f}s")

    def waiting(items: Sequence[tuple[Sent, float]]) -> None:
        say("replay: still running " + ", ".join(f"{s.command.name} ({sec:.0f}s)" for s, sec in items))

    result = replay(sent, progress=Progress(started, finished, waiting), timeout=timeout)
    failed = result.failed
    if failed is not None:
        print(f"\nFAILED: node {failed.node}, step {failed.name}: "
              + (f"exit {failed.rc}" if failed.rc is not None else str(failed.error)), file=sys.stderr)
        if failed.stderr:
            # The program guarantees that no command prints a secret (remote_steps).
            tail = "\n".join(failed.stderr.splitlines()[-60:])
            print(f"--- stderr of {failed.name} (last 60 lines) ---\n{tail}\n---", file=sys.stderr)
    return result.outcomes


def write_ssh_help(run: Run, plan: Sequence[RecordedCommand], directory: Path) -> list[str]:
    """The login key and the pinned host keys, so a user can look at a node afterwards."""
    ssh = directory / "ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    key = ssh / "id_ed25519"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(run.stack.login.private_openssh)
    known = {f"{c.host} {c.host_key}" for c in plan if c.host_key}
    (ssh / "known_hosts").write_text("\n".join(sorted(known)) + "\n")
    hints = []
    for n in run.stack.nodes:
        user = next((c.user for c in plan if c.host == n.address), "root")
        hints.append(f"ssh -i {key} -o UserKnownHostsFile={ssh / 'known_hosts'} {user}@{n.address}   # {n.name}")
    return hints


def build_report(run: Run, rec: Recording | None, overlaid: Overlaid | None, outcomes: Sequence[Outcome],
                 tb: Testbed | None, plan: Sequence[RecordedCommand], failure: str | None) -> dict[str, Any]:
    key_arn = key_arn_of(rec) if rec is not None else None
    verifications = verification_commands(rec) if rec is not None else set()
    by_node_verify: dict[str, dict[str, Any] | None] = {}
    for o in outcomes:
        if o.name in verifications:
            by_node_verify[o.node] = rp.parse_verify(o.stdout)
    nodes: dict[str, Any] = {}
    for n in run.stack.nodes:
        host = tb.hosts[n.name] if tb is not None else None
        nodes[n.name] = {
            "kind": n.kind,
            "address": n.address,
            "host": {"machine": host.machine, "leader_pid": host.leader_pid} if host else None,
            "summary": rp.node_summary(by_node_verify.get(n.name), key_arn=key_arn),
            "verify": by_node_verify.get(n.name),
        }
    failed = next((o for o in outcomes if not o.ok and not (o.error or "").startswith("skipped")), None)
    recorded_ud = {} if overlaid is None else {
        node: ov.user_data_files(text)[0] for node, text in overlaid.recorded_user_data.items()}
    sent_ud = {} if overlaid is None else {
        node: ov.user_data_files(text)[0] for node, text in overlaid.user_data.items()}
    ok = failure is None and failed is None and bool(outcomes) and all(o.ok for o in outcomes) and all(
        v["summary"].get("ok") for v in nodes.values())
    return {
        "ok": ok,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - run.started, 1),
        "phases": run.phases,
        "failure": failure or (
            {"node": failed.node, "step": failed.name, "rc": failed.rc, "error": failed.error,
             "stderr": failed.stderr} if failed else None),
        "testbed": {"prefix": run.settings.prefix, "subnet": str(run.settings.subnet),
                    "bridge": run.settings.bridge_address},
        "kms": {"key_arn": key_arn, "endpoint": f"http://{run.settings.bridge_address}:{KMS_PORT}"},
        "nodes": nodes,
        "commands": [o.as_dict() for o in outcomes],
        "overlay": {
            "declared": [{"key": i.key, "summary": i.summary} for i in ov.DECLARED],
            "changes": [c.as_dict() for c in overlaid.changes] if overlaid else [],
        },
        "plan": {
            "recorded": rp.plan_digest([(c.name, c.create, c.stdin) for c in plan], recorded_ud),
            "sent": rp.plan_digest(
                [(s.command.name, s.command.create, s.stdin) for s in overlaid.sent] if overlaid else [], sent_ud),
        },
    }


def demo(nodes: int | None, report_path: Path, command_timeout: float) -> int:
    settings = demo_settings()
    directory = out_dir(settings)
    try:
        raw, region = load_file()
        stack = prepare(raw, region, address_of=settings.host_address, nodes=nodes)
    except StackError as err:
        print(f"make demo: {err}", file=sys.stderr)
        return 2
    run = Run(stack=stack, settings=settings)
    say(f"make demo: {len(stack.nodes)} nodes ({', '.join(f'{n.name}={n.kind}@{n.address}' for n in stack.nodes)})")
    with timed(run, "removing what an earlier demo left"):
        down(settings)
    tb = Testbed([n.name for n in stack.nodes], settings=settings)
    rec: Recording | None = None
    overlaid: Overlaid | None = None
    plan: list[RecordedCommand] = []
    outcomes: list[Outcome] = []
    failure: str | None = None
    try:
        with timed(run, "testbed: rootfs, package repository, network"):
            tb.setup()
        kms = KmsServer(tb.bridge_address, state_dir=tb.run_dir, region=region)
        with timed(run, "KMS emulator"):
            kms.start()
        with timed(run, "recording the program under mocks"):
            rec = record_program(run, kms.endpoint_url)
            plan = recorded_commands(rec)
        overlaid = apply_overlay(run, rec, plan, tb, ov.Settings(kms_endpoint_url=kms.endpoint_url))
        print_overlay(overlaid.changes, directory / "overlay.diff")
        with timed(run, "booting the hosts (EC2 hosts run their user-data with cloud-init)"):
            boot_hosts(run, tb, overlaid)
        with timed(run, f"replaying {len(plan)} remote commands over SSH"):
            outcomes = run_replay(run, overlaid.sent, command_timeout)
    except (TestbedError, DemoFailed, OSError) as err:
        failure = str(err)
        print(f"\nFAILED: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        failure = "interrupted"
        print("\ninterrupted: `make demo-down` removes what is left", file=sys.stderr)
    except Exception as err:  # unexpected: shown in full, and still reported
        failure = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    report = build_report(run, rec, overlaid, outcomes, tb, plan, failure)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if report["nodes"] and any(n["verify"] for n in report["nodes"].values()):
        rp.print_table(report["nodes"], key_arn=report["kms"]["key_arn"])
    hints = write_ssh_help(run, plan, directory) if plan else []
    if report["ok"] and rec is not None:
        save_state(run, rec, directory)
    say(f"report: {report_path}")
    if report["ok"]:
        say(f"make demo: verified in {report['seconds']:.0f}s; the cluster keeps running:")
        for hint in hints:
            print(f"  {hint}")
        print("  make demo-down   # removes it")
        return 0
    say(f"make demo: FAILED after {report['seconds']:.0f}s; hosts are left as they are for a look "
        "(`make demo-down` removes them)")
    return 1


def save_state(run: Run, rec: Recording, directory: Path) -> None:
    """The stack's state for a later `up` (rehearsal/state.py, rehearsal/up.py)."""
    from rehearsal.state import NodeHost, RehearsalState, save

    stack = run.stack
    nodes = {n.name: NodeHost(n.name, n.kind, n.address) for n in stack.nodes}
    host_keys = {name: pair.public_line for name, pair in stack.onprem_host_keys.items()}
    path = save(RehearsalState.from_recording(rec, config=stack.config, region=stack.region, nodes=nodes,
                                              host_keys=host_keys), directory)
    say(f"state for `make demo-up CONFIG=...`: {path}")


def down(settings: Settings | None = None) -> None:
    from rehearsal.state import path_in

    settings = settings or demo_settings()
    with file_lock(settings.run_dir().with_suffix(".lock"), f"testbed {settings.prefix}"):
        cleanup(settings)
        remove_nspawn_settings(settings)
    path_in(out_dir(settings)).unlink(missing_ok=True)  # the state of a cluster that is gone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("demo", help="rehearse the deployment on this machine (leaves the cluster running)")
    run_p.add_argument("--nodes", type=int, default=int(os.environ[NODES_ENV]) if os.environ.get(NODES_ENV) else None,
                       help=f"total node count (default: as Pulumi.rehearsal.yaml lists; env {NODES_ENV})")
    run_p.add_argument("--report", type=Path, default=None, help="where to write the JSON report")
    run_p.add_argument("--command-timeout", type=float, default=1800.0, help="give up on one remote command after")
    sub.add_parser("down", help="remove every host, server and network interface of the demo")
    up_p = sub.add_parser("up", help="a later `pulumi up` with a changed stack config, on the demo's cluster")
    up_p.add_argument("--config", type=Path, required=True, help="a stack file like Pulumi.rehearsal.yaml")
    up_p.add_argument("--preview", action="store_true", help="print the plan only (pulumi preview)")
    up_p.add_argument("--command-timeout", type=float, default=1800.0, help="give up on one remote command after")
    up_p.add_argument("--replace", action="append", default=[], metavar="URN",
                      help="replace this resource (a URN or a name), as `pulumi up --replace`; repeatable")
    up_p.add_argument("--ssh-private-key", type=Path, default=None,
                      help="a new login key (a 0600 file): `pulumi config set --secret sshPrivateKey`, rehearsed")
    state_p = sub.add_parser("state", help="`pulumi state` on the demo's stack: list protected URNs, unprotect")
    state_p.add_argument("action", choices=("protected", "unprotect"))
    state_p.add_argument("urns", nargs="*", metavar="URN", help="for unprotect: the resources to unprotect")
    state_p.add_argument("--all", action="store_true", help="for unprotect: every protected resource")
    destroy_p = sub.add_parser("destroy", help="`pulumi destroy` on the demo's stack (protected resources refuse)")
    destroy_p.add_argument("--preview", action="store_true", help="print the plan only")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces, systemd-nspawn, overlay mounts)", file=sys.stderr)
        return 2
    if args.command == "down":
        with phase("make demo-down"):
            down()
        return 0
    if args.command == "up":
        from rehearsal.up import main as up_main

        return up_main(args.config, preview=args.preview, timeout=args.command_timeout,
                       ssh_private_key=args.ssh_private_key, replace=args.replace)
    if args.command == "state":
        from rehearsal.state import NoState, state_main

        try:
            return state_main(out_dir(), args.action, args.urns, every=args.all)
        except NoState as err:
            print(f"state: {err}", file=sys.stderr)
            return 2
    if args.command == "destroy":
        from rehearsal.up import main as up_main

        return up_main(None, preview=args.preview, timeout=1800.0)
    return demo(args.nodes, args.report or out_dir() / "report.json", args.command_timeout)
