"""Replay the recorded remote commands over real SSH, as pulumi-command runs them.

pulumi-command (1.2.1, ``remote.Command``) dials the host with the connection's
user and private key (retrying a refused dial up to ``dialErrorLimit`` times,
each attempt bounded by ``perDialTimeout``), checks the host key against
``hostKey`` when one is given, opens one session per command, sets only the
``environment`` it was given, writes ``stdin`` and closes it, and runs the
``create`` string with no pseudo-terminal. A non-zero exit fails the
resource. The replay does the same with paramiko, one fresh connection per
command; a host key that differs from the pinned one is a failure, never a
prompt, and with no pinned key it refuses (the program always pins).

Independent commands run in parallel, as the engine runs independent
resources; a command starts when every command it waits for has succeeded.
On the first failure nothing new starts, the running ones finish, and the
result names the node, the command and its exit status.
"""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import paramiko

from rehearsal.plan import RecordedCommand

# pulumi-command trims one trailing newline from stdout and stderr.
_TRIM = "\n"


@dataclass(frozen=True)
class Sent:
    """What the replay sends for one command: the recorded command, with the overlay's stdin."""

    command: RecordedCommand
    node: str
    stdin: str | None


@dataclass
class Outcome:
    name: str
    node: str
    create: str  # the command line actually sent
    stdin_sha256: str | None  # of the stdin actually sent
    stdin_bytes: int
    rc: int | None  # None: never ran (a dependency failed) or could not connect
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    error: str | None = None  # connection or protocol trouble, or why it was skipped
    started: float = 0.0

    @classmethod
    def starting(cls, sent: Sent) -> tuple[Outcome, bytes]:
        """The outcome of ``sent`` as it starts now, and the stdin bytes it is given (empty for none)."""
        cmd = sent.command
        data = sent.stdin.encode() if sent.stdin else b""
        outcome = cls(
            name=cmd.name, node=sent.node, create=cmd.create,
            stdin_sha256=hashlib.sha256(data).hexdigest() if sent.stdin else None, stdin_bytes=len(data), rc=None,
            started=time.monotonic(),
        )
        return outcome, data

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "node": self.node, "create": self.create, "stdin_sha256": self.stdin_sha256,
            "stdin_bytes": self.stdin_bytes, "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr,
            "seconds": round(self.seconds, 2), "error": self.error,
        }


SKIPPED = "skipped"


class ReplayError(RuntimeError):
    pass


def pinned_key(line: str) -> paramiko.PKey:
    """The pinned host key line ("ssh-ed25519 AAAA... [comment]") as a paramiko key."""
    parts = line.split()
    if len(parts) < 2:
        raise ReplayError(f"pinned host key {line!r} is not an OpenSSH public key line")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))


def login_key(text: str) -> paramiko.PKey:
    """The connection's private key (OpenSSH or PEM), whatever its type."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ReplayError("the connection's private key is in no format paramiko reads")


class HostKeyMismatch(ReplayError):
    pass


def _connect(cmd: RecordedCommand, stop: threading.Event) -> paramiko.Transport:
    """Dial, check the pinned host key, log in; retried as pulumi-command retries a failed dial.

    pulumi-command counts any failure of its dial, refused connection or
    failed login alike, against ``dialErrorLimit`` (a new instance's sshd
    answers before cloud-init has made the login user). A host key that is not
    the pinned one fails at once: no retry makes it right.
    """
    if cmd.host_key is None:
        raise ReplayError("no pinned host key: the replay never connects unchecked")
    if cmd.private_key is None:
        raise ReplayError("no private key in the connection (the replay does not use an SSH agent)")
    expected = pinned_key(cmd.host_key)
    key = login_key(cmd.private_key)
    attempts = 0
    delay = 1.0
    while True:
        attempts += 1
        try:
            return _dial_once(cmd, expected, key)
        except HostKeyMismatch:
            raise
        except (OSError, paramiko.SSHException) as err:
            if (cmd.dial_error_limit >= 0 and attempts > cmd.dial_error_limit) or stop.is_set():
                where = f"{cmd.user}@{cmd.host}:{cmd.port}"
                raise ReplayError(f"{where}: {attempts} dial(s) failed, the last: {err}") from err
            time.sleep(delay)
            delay = min(delay * 1.5, 10.0)


def _dial_once(cmd: RecordedCommand, expected: paramiko.PKey, key: paramiko.PKey) -> paramiko.Transport:
    sock = socket.create_connection((cmd.host, cmd.port), timeout=cmd.per_dial_timeout or None)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=cmd.per_dial_timeout or None)
        offered = transport.get_remote_server_key()
        if offered.get_name() != expected.get_name() or offered.asbytes() != expected.asbytes():
            raise HostKeyMismatch(
                f"host key of {cmd.host}:{cmd.port} is {offered.get_name()} {offered.get_base64()[:24]}..., "
                f"not the pinned {expected.get_name()} {expected.get_base64()[:24]}...: refusing to log in"
            )
        transport.auth_publickey(cmd.user, key)
    except BaseException:
        transport.close()
        raise
    return transport


def run_one(sent: Sent, stop: threading.Event, timeout: float, abort: threading.Event | None = None) -> Outcome:
    """One command on one fresh connection. ``stop``: stop dialling; ``abort``: leave a running command."""
    cmd = sent.command
    outcome, data = Outcome.starting(sent)
    try:
        transport = _connect(cmd, stop)
    except ReplayError as err:
        outcome.error = str(err)
        outcome.seconds = time.monotonic() - outcome.started
        return outcome
    try:
        channel = transport.open_session(timeout=30)
        for name, value in cmd.environment.items():
            channel.set_environment_variable(name, value)
        channel.exec_command(cmd.create)  # no get_pty: as pulumi-command, no terminal
        writer = threading.Thread(target=_feed, args=(channel, data), daemon=True)
        writer.start()
        out, errout = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            progressed = False
            if channel.recv_ready():
                out += channel.recv(65536)
                progressed = True
            if channel.recv_stderr_ready():
                errout += channel.recv_stderr(65536)
                progressed = True
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                outcome.error = f"no exit after {timeout:.0f}s: the replay gave up on it"
                break
            if abort is not None and abort.is_set():
                outcome.error = "interrupted"
                break
            if not progressed:
                time.sleep(0.05)
        writer.join(timeout=5)
        outcome.rc = channel.recv_exit_status() if outcome.error is None else None
        outcome.stdout = out.decode(errors="replace").removesuffix(_TRIM)
        outcome.stderr = errout.decode(errors="replace").removesuffix(_TRIM)
    except (OSError, paramiko.SSHException) as exc:
        outcome.error = f"SSH session failed: {exc}"
    finally:
        transport.close()
        outcome.seconds = time.monotonic() - outcome.started
    return outcome


def _feed(channel: paramiko.Channel, data: bytes) -> None:
    try:
        if data:
            channel.sendall(data)
        channel.shutdown_write()
    except (OSError, paramiko.SSHException):
        pass  # the command exited without reading all of it; its exit status tells


RunOne = Callable[[Sent, threading.Event, float, threading.Event | None], Outcome]
"""Carries out one command: (command, stop dialling, timeout, abort) -> its outcome."""


@dataclass
class Progress:
    """Callbacks for the caller's display; all optional."""

    started: Callable[[Sent], None] = lambda _s: None
    finished: Callable[[Outcome], None] = lambda _o: None
    waiting: Callable[[Sequence[tuple[Sent, float]]], None] = lambda _r: None  # still running, with seconds


@dataclass
class Replay:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> Outcome | None:
        """The command that failed (not one skipped because of it)."""
        return next((o for o in self.outcomes if not o.ok and not (o.error or "").startswith(SKIPPED)), None)


def replay(
    commands: Sequence[Sent],
    *,
    progress: Progress | None = None,
    timeout: float = 1800.0,
    heartbeat: float = 15.0,
    run: RunOne = run_one,
) -> Replay:
    """Run ``commands`` (in recorded order, each with its ``after`` list) and return every outcome.

    ``run`` carries out one command: over SSH by default; the runner for the
    node tests (``rehearsal/runner``) passes its own, with the same ordering.
    """
    by_name: Mapping[str, Sent] = {s.command.name: s for s in commands}
    for s in commands:
        missing = [d for d in s.command.after if d not in by_name]
        if missing:
            raise ReplayError(f"{s.command.name} waits for commands that are not in the plan: {missing}")
    return _Scheduler(commands, progress or Progress(), timeout, heartbeat, run).run()


class _Scheduler:
    """Starts each command once all it waits for succeeded; after a failure starts nothing new."""

    def __init__(
        self, commands: Sequence[Sent], progress: Progress, timeout: float, heartbeat: float, run: RunOne
    ) -> None:
        self.commands = commands
        self.run_one = run
        self.progress = progress
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.stop = threading.Event()  # start nothing new
        self.abort = threading.Event()  # leave what runs (Ctrl-C)
        self.done: dict[str, Outcome] = {}
        self.running: dict[Future[Outcome], Sent] = {}
        self.started_at: dict[str, float] = {}
        self.result = Replay()

    def run(self) -> Replay:
        with ThreadPoolExecutor(max_workers=max(1, len(self.commands))) as pool:
            try:
                self._loop(pool)
            except BaseException:
                # Ctrl-C or SIGTERM: the running sessions are closed instead of waited out.
                self.stop.set()
                self.abort.set()
                raise
        for s in self.commands:
            if s.command.name not in self.done:
                self.result.outcomes.append(Outcome(
                    name=s.command.name, node=s.node, create=s.command.create, stdin_sha256=None, stdin_bytes=0,
                    rc=None, error=f"{SKIPPED}: an earlier command failed",
                ))
        return self.result

    def _start_ready(self, pool: ThreadPoolExecutor) -> None:
        busy = {r.command.name for r in self.running.values()}
        for s in self.commands:
            name = s.command.name
            if name in self.done or name in busy:
                continue
            if all(d in self.done and self.done[d].ok for d in s.command.after):
                self.progress.started(s)
                self.started_at[name] = time.monotonic()
                self.running[pool.submit(self.run_one, s, self.stop, self.timeout, self.abort)] = s

    def _loop(self, pool: ThreadPoolExecutor) -> None:
        last_beat = time.monotonic()
        while True:
            if not self.stop.is_set():
                self._start_ready(pool)
            if not self.running:
                return
            finished, _ = wait(list(self.running), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                s = self.running.pop(future)
                outcome = future.result()
                self.done[s.command.name] = outcome
                self.result.outcomes.append(outcome)
                self.progress.finished(outcome)
                if not outcome.ok:
                    self.stop.set()
            now = time.monotonic()
            if self.running and now - last_beat >= self.heartbeat:
                last_beat = now
                self.progress.waiting([(s, now - self.started_at[s.command.name]) for s in self.running.values()])
