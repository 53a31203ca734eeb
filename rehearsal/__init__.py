"""Real Debian 12 hosts on this machine: the testbed the node tests and the rehearsal run on.

- ``rootfs``: the bare base rootfs (a Debian cloud image without MariaDB), built once and cached.
- ``pkgrepo``: a local Debian package repository with MariaDB, Galera and boto3, served on the bridge,
  because the hosts have no route to the internet.
- ``testbed``: N hosts, each a ``systemd-nspawn --boot`` container in its own network namespace.
- ``kms_server``: moto's server as the KMS endpoint the hosts reach on the bridge.

This module holds what they share: the cache location, a lock, progress lines and a command runner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CACHE_ENV = "MARIADB_KMS_CACHE"
_STARTED = time.monotonic()
_HELD_LOCKS: set[str] = set()


class TestbedError(RuntimeError):
    """Something on the way to running hosts failed; the message says what and where to look."""

    __test__ = False  # not a pytest test class, despite the name


def cache_dir() -> Path:
    """Where expensive things live between runs (the Makefile exports the same variable)."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mariadb-kms")
    path.mkdir(parents=True, exist_ok=True)
    return path


def say(message: str) -> None:
    """One progress line on stderr, stamped with the time since this process started."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A long step: a line when it starts and one with its duration when it ends (or fails)."""
    say(f"{name} ...")
    start = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"{name}: FAILED after {time.monotonic() - start:.1f}s")
        raise
    say(f"{name}: done in {time.monotonic() - start:.1f}s")


@contextlib.contextmanager
def file_lock(path: Path, what: str, timeout: float = 1800.0) -> Iterator[None]:
    """Exclusive flock on ``path``; says who holds it while waiting, so a wait is never silent.

    The kernel drops the lock when its holder dies, so a crashed run never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if str(path) in _HELD_LOCKS:
                    # Waiting on ourselves would only time out: say so at once.
                    raise TestbedError(f"this process already holds the {what} lock ({path})") from None
                if not announced:
                    holder = path.read_text().strip() or "unknown"
                    say(f"waiting for the {what} lock ({path}), held by pid {holder}")
                    announced = True
                if time.monotonic() > deadline:
                    raise TestbedError(f"gave up after {timeout:.0f}s waiting for the {what} lock {path}") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD_LOCKS.add(str(path))
        try:
            yield
        finally:
            _HELD_LOCKS.discard(str(path))
    finally:
        os.close(fd)  # closing releases the flock


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 300,
    input: bytes | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a host command. Output goes to ``log`` (appended) when given, else is captured.

    A failure raises TestbedError naming the command, its exit code and the tail of its output,
    so the reason is in the exception and not only in some file.
    """
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.run(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                input=input,
                timeout=timeout,
                env=env,
                cwd=cwd,
                check=False,
            )
        proc_out = b""
    else:
        proc = subprocess.run(
            list(cmd), capture_output=True, input=input, timeout=timeout, env=env, cwd=cwd, check=False
        )
        proc_out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        if log is not None:
            proc_out = log.read_bytes()[-3000:]
        tail = proc_out.decode(errors="replace").strip()[-3000:]
        where = f" (full log: {log})" if log is not None else ""
        raise TestbedError(f"`{' '.join(cmd)}` exited {proc.returncode}{where}:\n{tail}")
    return proc


class BackgroundServer:
    """A server process on ``address:port`` that outlives nothing it shouldn't.

    It runs in its own session (so a terminal's Ctrl-C reaches the test runner, whose teardown stops it
    in order) and records its pid in ``pidfile`` with its command line, so a later ``down`` can stop one
    left by a crashed run without ever signalling a process that merely reused the pid.
    """

    def __init__(self, name: str, argv: Sequence[str], address: str, port: int, pidfile: Path, log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.address = address
        self.port = port
        self.pidfile = pidfile
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Start it and wait until ``ready()`` is true; a taken port or an early exit is a clear error."""
        ensure_port_free(self.address, self.port, self.name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(json.dumps({"pid": self.proc.pid, "argv": self.argv}))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_bytes()[-2000:].decode(errors="replace")
                raise TestbedError(
                    f"{self.name} exited with {self.proc.returncode} while starting (log {self.log}):\n{tail}"
                )
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise TestbedError(f"{self.name} did not answer on {self.address}:{self.port} within {timeout:.0f}s")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc.pid, self.argv)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None
        self.pidfile.unlink(missing_ok=True)

    @staticmethod
    def stop_recorded(pidfile: Path) -> None:
        """Stop the process a pidfile names, if it is still that process (same command line)."""
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            record = json.loads(pidfile.read_text())
            terminate(int(record["pid"]), list(record["argv"]))
        pidfile.unlink(missing_ok=True)


def process_argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def terminate(pid: int, argv: Sequence[str] | None = None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if the pid still runs ``argv`` when given."""
    if argv is not None and process_argv(pid) != list(argv):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def ensure_port_free(address: str, port: int, what: str) -> None:
    """Fail early, naming the listener, when something already holds the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as err:
            holder = subprocess.run(
                ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
            ).stdout.strip()
            raise TestbedError(
                f"cannot start {what}: {address}:{port} is not available ({err.strerror})"
                + (f"; listening there: {holder}" if holder else "")
            ) from None
