"""N real Debian 12 hosts on this machine, each a ``systemd-nspawn --boot`` container.

Every host boots the cached bare rootfs through an overlay (its own upper directory, so the rootfs stays
pristine and a host's writes survive a stop/start), in its own network namespace whose veth is plugged
into one Linux bridge that carries this machine's address. Hosts reach each other and the bridge address
(where the package repository and the KMS emulator listen) and nothing else: they have no default route.

    with Testbed(["node1", "node2", "node3"]) as tb:   # network, package repository, host directories
        tb.seed("node1", user_data=...)                  # optional cloud-init NoCloud data, before boot
        tb.boot()                                        # boots them all, waits for systemd and sshd
        rc, out, err = tb.exec("node1", ["systemctl", "is-active", "ssh"])

CLI: ``python -m rehearsal.testbed up N | status | down``. ``down`` also removes whatever a crashed run
left behind, found by the name prefix (``MARIADB_KMS_TESTBED_PREFIX``, default ``mk``); the subnet is
``MARIADB_KMS_TESTBED_SUBNET`` (default ``10.231.0.0/24``), so two testbeds can run side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from rehearsal import (
    BackgroundServer,
    TestbedError,
    cache_dir,
    file_lock,
    phase,
    pid_alive,
    process_argv,
    run,
    say,
)
from rehearsal.pkgrepo import APT_SOURCE_PATH, DEFAULT_PORT, REPO_PACKAGES, RepoServer, ensure_repo
from rehearsal.rootfs import ensure_bare_rootfs, remove_tree
from rehearsal.volumes import VOLUME_MOUNT, VOLUMES_DIR, cleanup_volumes

PREFIX_ENV = "MARIADB_KMS_TESTBED_PREFIX"
SUBNET_ENV = "MARIADB_KMS_TESTBED_SUBNET"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")
_HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
# Commands run in a host get this environment, never ours (which may hold AWS variables or a venv PATH).
HOST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
DEBIAN_SOURCES_PATH = "/etc/apt/sources.list.d/debian.sources"
SEED_DIR = "/var/lib/cloud/seed/nocloud"
DEFAULT_SUBNET = ipaddress.IPv4Network("10.231.0.0/24")  # private, and unlikely to be in use already


@dataclass(frozen=True)
class Settings:
    """Names and addresses of one testbed; the prefix keeps two testbeds' resources apart."""

    prefix: str = "mk"
    subnet: ipaddress.IPv4Network = DEFAULT_SUBNET
    repo_port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise TestbedError(f"testbed prefix {self.prefix!r}: 1 to 6 lowercase letters or digits, a letter first")
        if self.subnet.num_addresses < 16:
            raise TestbedError(f"testbed subnet {self.subnet}: needs at least a /28")

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            prefix=os.environ.get(PREFIX_ENV, "mk"),
            subnet=ipaddress.IPv4Network(os.environ.get(SUBNET_ENV, str(DEFAULT_SUBNET))),
        )

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def bridge_address(self) -> str:
        return str(self.subnet.network_address + 1)

    def host_address(self, index: int) -> str:
        address = self.subnet.network_address + 10 + index
        if address >= self.subnet.broadcast_address:
            raise TestbedError(f"subnet {self.subnet} has no address for host number {index}")
        return str(address)

    def run_dir(self) -> Path:
        return cache_dir() / "run" / self.prefix

    def owns_netns(self, name: str) -> bool:
        return name.startswith(f"{self.prefix}-")

    def owns_link(self, name: str) -> bool:
        return name == self.bridge or re.fullmatch(rf"{self.prefix}[vc]\d+", name) is not None

    def owns_nspawn(self, argv: Sequence[str]) -> bool:
        return (
            bool(argv)
            and os.path.basename(argv[0]) == "systemd-nspawn"
            and any(arg.startswith(f"--machine={self.prefix}-") for arg in argv)
        )


class ExecResult(NamedTuple):
    rc: int
    stdout: str
    stderr: str


@dataclass
class Host:
    name: str
    index: int
    address: str
    machine: str  # nspawn machine name, also the network namespace's name
    veth: str  # the host end, on the bridge
    dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    nspawn_pid: int | None = None
    leader_pid: int | None = None  # the container's PID 1, seen from this machine
    state: str = "down"

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.machine}"


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_INSTANCES_WANTED = 1024


def raise_inotify_instances(path: Path = INOTIFY_INSTANCES, wanted: int = INOTIFY_INSTANCES_WANTED) -> int:
    """Every host's systemd (and its journald, udev-less units, logind) takes inotify instances from
    the machine's one per-user budget; the kernel's default of 128 ran out with about 20 hosts up
    ("Too many open files" at boot). Raised for this boot of the machine only, never lowered."""
    current = int(path.read_text().strip())
    if current < wanted:
        path.write_text(f"{wanted}\n")
        say(f"fs.inotify.max_user_instances raised from {current} to {wanted} for the testbed's hosts")
        return wanted
    return current


class Testbed:
    """Hosts, their network and the package repository; a context manager that always cleans up."""

    __test__ = False

    def __init__(
        self,
        names: Sequence[str] | int = 3,
        *,
        rootfs: Path | None = None,
        settings: Settings | None = None,
        repo_packages: Sequence[str] = REPO_PACKAGES,
    ) -> None:
        self.settings = settings or Settings.from_env()
        if isinstance(names, int):
            names = [f"node{i}" for i in range(1, names + 1)]
        for name in names:
            if not _HOST_NAME.match(name):
                raise TestbedError(f"host name {name!r}: lowercase letters, digits and '-', 2 to 32 characters")
        if len(set(names)) != len(names):
            raise TestbedError(f"host names repeat: {list(names)}")
        self.run_dir = self.settings.run_dir()
        self.hosts: dict[str, Host] = {}
        for index, name in enumerate(names, start=1):
            machine = f"{self.settings.prefix}-{name}"
            self.hosts[name] = Host(
                name=name,
                index=index,
                address=self.settings.host_address(index),
                machine=machine,
                veth=f"{self.settings.prefix}v{index}",
                dir=self.run_dir / "hosts" / name,
            )
        self.rootfs = rootfs
        self.repo_packages = tuple(repo_packages)
        self.repo: RepoServer | None = None
        self._lock = contextlib.ExitStack()
        # host name -> a directory on this machine bound at the host's data volume mount point at boot
        self.volumes: dict[str, Path] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Testbed:
        self._exit_on_sigterm()
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _exit_on_sigterm(self) -> None:
        """Let SIGTERM unwind through ``__exit__`` (as Ctrl-C does), so a killed run still cleans up.

        Only where SIGTERM would otherwise kill the process outright: a handler someone set stays.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

            def _raise(signum: int, frame: object) -> None:
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, _raise)
            self._lock.callback(signal.signal, signal.SIGTERM, signal.SIG_DFL)

    def setup(self) -> None:
        """Everything but booting: leftovers removed, rootfs and repository ready, network up, hosts seeded."""
        # One testbed per prefix at a time; a second one in the same process needs another prefix and subnet.
        self._lock.enter_context(file_lock(self.run_dir.with_suffix(".lock"), f"testbed {self.settings.prefix}"))
        cleanup(self.settings)
        raise_inotify_instances()
        self.rootfs = self.rootfs or ensure_bare_rootfs()
        repo_dir = ensure_repo(ensure_bare_rootfs(), self.repo_packages)
        with phase(f"testbed network {self.settings.bridge} {self.settings.bridge_address}/{self.subnet_bits}"):
            self._make_network()
        self.repo = RepoServer(repo_dir, self.settings.bridge_address, self.settings.repo_port, self.run_dir)
        self.repo.start()
        for host in self.hosts.values():
            host.upper.mkdir(parents=True)
            for path, text in self.overlay_files(host.name).items():
                self._write_upper(host, path, text.encode(), 0o644)
            self.seed(host.name)
        self._save_state()

    def teardown(self) -> None:
        """Stop every host, the repository server and the network; remove upper dirs. Idempotent."""
        with phase(f"testbed {self.settings.prefix} teardown"):
            self._stop_many([h for h in self.hosts.values() if h.nspawn_pid], timeout=30)
            if self.repo is not None:
                self.repo.stop()
                self.repo = None
            cleanup(self.settings)
        self._lock.close()

    @property
    def subnet_bits(self) -> int:
        return self.settings.subnet.prefixlen

    @property
    def bridge_address(self) -> str:
        return self.settings.bridge_address

    @property
    def apt_source(self) -> str:
        if self.repo is None:
            raise TestbedError("the package repository is not served: call setup() first")
        return self.repo.apt_source

    # ------------------------------------------------------------------ what goes on a host before boot

    def overlay_files(self, name: str) -> dict[str, str]:
        """Files the testbed puts on a host that a real deployment would not: the declared overlay.

        - /etc/hosts: names of all hosts (a cloud's DNS does this); mariadb-install-db needs its own.
        - /etc/hostname: the host's name (cloud-init sets the same from the seed's meta-data).
        - the Debian mirror sources, emptied: hosts have no route to them.
        - the local package repository's apt source.
        """
        host = self.hosts[name]
        hosts_lines = [
            "127.0.0.1\tlocalhost",
            "::1\t\tlocalhost ip6-localhost ip6-loopback",
            f"{self.bridge_address}\ttestbed-gateway",
            *(f"{h.address}\t{h.name}" for h in self.hosts.values()),
        ]
        return {
            "/etc/hosts": "\n".join(hosts_lines) + "\n",
            "/etc/hostname": f"{host.name}\n",
            DEBIAN_SOURCES_PATH: "# mariadb-kms testbed: no route to the Debian mirrors; see " + APT_SOURCE_PATH + "\n",
            APT_SOURCE_PATH: self.apt_source,
        }

    def seed(self, name: str, user_data: str | None = None, meta_data: str | None = None) -> None:
        """Give a host a cloud-init NoCloud seed; only before its first boot (cloud-init reads it then)."""
        host = self.hosts[name]
        if host.nspawn_pid is not None or (host.upper / "var/lib/cloud/instance").exists():
            raise TestbedError(f"{name} has booted already: a seed is read at first boot only")
        if meta_data is None:
            # The instance id stays the same across a stop/start, or cloud-init would make new host keys.
            meta_data = f"instance-id: iid-{host.machine}-{secrets.token_hex(4)}\nlocal-hostname: {host.name}\n"
        self._write_upper(host, f"{SEED_DIR}/meta-data", meta_data.encode(), 0o600)
        self._write_upper(host, f"{SEED_DIR}/user-data", (user_data or "#cloud-config\n{}\n").encode(), 0o600)

    def _write_upper(self, host: Host, path: str, data: bytes, mode: int) -> None:
        """Write a file into a stopped host's upper directory.

        Directories it creates copy mode and owner from the rootfs, because an upper directory's
        attributes replace the lower one's in the merged view.
        """
        assert self.rootfs is not None
        relative = Path(path.lstrip("/"))
        lower_parent = self.rootfs
        upper_parent = host.upper
        for part in relative.parent.parts:
            lower_parent = lower_parent / part
            upper_parent = upper_parent / part
            if not upper_parent.exists():
                upper_parent.mkdir(mode=0o755)
                if lower_parent.is_dir():
                    info = lower_parent.stat()
                    os.chown(upper_parent, info.st_uid, info.st_gid)
                    upper_parent.chmod(info.st_mode & 0o7777)
        target = host.upper / relative
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        target.chmod(mode)

    # ------------------------------------------------------------------ network

    def _make_network(self) -> None:
        bridge = self.settings.bridge
        run(["ip", "link", "add", bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.bridge_address}/{self.subnet_bits}", "dev", bridge])
        run(["ip", "link", "set", bridge, "up"])
        for host in self.hosts.values():
            peer = f"{self.settings.prefix}c{host.index}"
            run(["ip", "netns", "add", host.machine])
            run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
            run(["ip", "link", "set", host.veth, "master", bridge, "up"])
            run(["ip", "link", "set", peer, "netns", host.machine])
            run(["ip", "-n", host.machine, "link", "set", peer, "name", "eth0"])
            run(["ip", "-n", host.machine, "addr", "add", f"{host.address}/{self.subnet_bits}", "dev", "eth0"])
            run(["ip", "-n", host.machine, "link", "set", "eth0", "up"])
            run(["ip", "-n", host.machine, "link", "set", "lo", "up"])
            # No default route: the bridge's subnet is all a host can reach.

    @contextlib.contextmanager
    def unreachable(self, name: str, address: str) -> Iterator[None]:
        """Make ``address`` unreachable from one host (its connections fail at once), e.g. a KMS outage."""
        host = self.hosts[name]
        run(["ip", "-n", host.machine, "route", "add", "prohibit", f"{address}/32"])
        try:
            yield
        finally:
            run(["ip", "-n", host.machine, "route", "del", "prohibit", f"{address}/32"], check=False)

    # ------------------------------------------------------------------ boot, stop, start

    def boot(self, names: Iterable[str] | None = None, timeout: float = 480) -> dict[str, str]:
        """Boot hosts in parallel; wait until systemd has finished booting and sshd answers on each.

        Returns each host's ``systemctl is-system-running`` state ("running" or "degraded").
        """
        chosen = [self.hosts[n] for n in (names or self.hosts)]
        with phase(f"booting {', '.join(h.name for h in chosen)}"):
            for host in chosen:
                if host.nspawn_pid is None or not pid_alive(host.nspawn_pid):
                    # Never booted, stopped, or it powered itself off (a reboot inside ends nspawn too).
                    if host.proc is not None:
                        host.proc.wait(timeout=10)
                    self._spawn(host)
            started = time.monotonic()
            deadline = started + timeout
            for host in chosen:
                self._wait_booted(host, deadline)
                say(f"  {host.name} ({host.address}) {host.state} after {time.monotonic() - started:.1f}s")
        self._save_state()
        return {h.name: h.state for h in chosen}

    def start(self, name: str, timeout: float = 240) -> str:
        return self.boot([name], timeout)[name]

    def stop(self, name: str, timeout: float = 60) -> None:
        """Power a host off cleanly (its upper directory, hence its data, stays)."""
        host = self.hosts[name]
        with phase(f"stopping {name}"):
            self._stop_many([host], timeout)
        self._save_state()

    def _spawn(self, host: Host) -> None:
        assert self.rootfs is not None
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",  # no systemd-machined here (PID 1 of this machine is not systemd)
            "--keep-unit",  # nor a systemd to create a scope unit in
            f"--machine={host.machine}",
            f"--hostname={host.name}",
            f"--directory={self.rootfs}",
            f"--overlay={self.rootfs}:{host.upper}:/",
            f"--network-namespace-path={host.netns_path}",
            # nspawn drops CAP_NET_ADMIN, which root on a real host has and a node needs: it loads nftables
            # rules (the Galera-port allowlist, and the IMDS guard on EC2). Each host has a network namespace
            # of its own, so its rules stay inside it.
            "--capability=CAP_NET_ADMIN",
            "--resolv-conf=off",  # the rootfs' own: no DNS; names come from /etc/hosts
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",  # boot messages go to console.log, for when a boot fails
            *self._volume_args(host),
        ]
        cgroups = host_cgroups(host.machine)
        for path in cgroups:
            path.mkdir(parents=True, exist_ok=True)
        with host.console_log.open("ab") as out:
            out.write(f"\n===== boot {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
            out.flush()
            host.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: _enter_cgroups(cgroups),
            )
        host.nspawn_pid = host.proc.pid
        host.leader_pid = None
        host.state = "booting"

    def _volume_args(self, host: Host) -> list[str]:
        """The host's data volume stand-in (rehearsal/volumes.py), if it has one."""
        volume = self.volumes.get(host.name)
        return [f"--bind={volume}:{VOLUME_MOUNT}"] if volume is not None else []

    def _wait_booted(self, host: Host, deadline: float) -> None:
        host.leader_pid = self._find_leader(host, deadline)
        state = ""
        while time.monotonic() < deadline:
            self._check_alive(host)
            remaining = max(1.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                # Fails at once while the container's systemd is not yet listening; --wait then blocks
                # until the boot has finished.
                result = self._nsenter(host, ["systemctl", "is-system-running", "--wait"], None, remaining)
                state = result.stdout.decode().strip()
                if state in ("running", "degraded"):
                    break
            time.sleep(0.5)
        else:
            raise self._boot_error(host, f"systemd did not finish booting (last state {state or 'unknown'!r})")
        while not _ssh_banner(host.address):
            self._check_alive(host)
            if time.monotonic() > deadline:
                raise self._boot_error(host, f"sshd does not answer on {host.address}:22")
            time.sleep(0.5)
        if state == "degraded":
            state = self._retry_failed_units(host)
        host.state = state

    def _retry_failed_units(self, host: Host) -> str:
        """Start once more the units that failed at boot; the boot state after that.

        Seen here under load, with several hosts booting at once: a oneshot such as
        systemd-remount-fs or systemd-sysusers fails once and succeeds when started again. A
        unit that fails a second time leaves the host degraded, and says which.
        """
        listed = self.exec(host.name, ["systemctl", "--failed", "--no-legend", "--plain"]).stdout.split("\n")
        units = [line.split()[0] for line in listed if line.strip()]
        for unit in units:
            self.exec(host.name, ["systemctl", "reset-failed", unit])
            self.exec(host.name, ["systemctl", "restart", unit], timeout=120)
        state = self.exec(host.name, ["systemctl", "is-system-running"]).stdout.strip()
        still = self.exec(host.name, ["systemctl", "--failed", "--no-legend", "--plain"]).stdout.strip()
        if state == "running":
            say(f"{host.name}: {', '.join(units)} failed at boot and succeeded when started again")
        else:
            say(f"{host.name} booted {state}; failed units: {still or 'none listed'}")
        return state

    def _find_leader(self, host: Host, deadline: float) -> int:
        """The container's PID 1: the child of systemd-nspawn that lives in a new PID namespace."""
        assert host.nspawn_pid is not None
        own_pidns = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            self._check_alive(host)
            for child in _children(host.nspawn_pid):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{child}/ns/pid") != own_pidns:
                        return child
            time.sleep(0.1)
        raise self._boot_error(host, "systemd-nspawn started no container")

    def _check_alive(self, host: Host) -> None:
        if host.nspawn_pid is None or not pid_alive(host.nspawn_pid):
            code = host.proc.poll() if host.proc is not None else None
            host.nspawn_pid = host.leader_pid = None
            host.state = "down"
            raise self._boot_error(host, f"systemd-nspawn exited (code {code})")

    def _boot_error(self, host: Host, reason: str) -> TestbedError:
        tail = ""
        with contextlib.suppress(OSError):
            tail = host.console_log.read_bytes()[-2500:].decode(errors="replace")
        return TestbedError(f"host {host.name}: {reason}; console ({host.console_log}):\n{tail}")

    def _stop_many(self, hosts: Sequence[Host], timeout: float) -> None:
        """Ask every container to power off at once (nspawn turns SIGTERM into an orderly shutdown)."""
        for host in hosts:
            if host.nspawn_pid is not None and pid_alive(host.nspawn_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host.nspawn_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for host in hosts:
            if host.nspawn_pid is None:
                continue
            while pid_alive(host.nspawn_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_alive(host.nspawn_pid):
                say(f"{host.name} did not power off within {timeout:.0f}s: killing it")
                _kill_container(host.nspawn_pid)
            if host.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.proc.wait(timeout=10)
            host.proc = None
            host.nspawn_pid = host.leader_pid = None
            host.state = "down"

    # ------------------------------------------------------------------ commands and files in a host

    def exec(
        self,
        name: str,
        cmd: Sequence[str] | str,
        input: bytes | str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> ExecResult:
        """Run a command inside a host as root (a string goes through ``sh -c``); returns (rc, stdout, stderr)."""
        host = self._running(name)
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        data = input.encode() if isinstance(input, str) else input
        proc = self._nsenter(host, argv, data, timeout)
        result = ExecResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if check and result.rc != 0:
            raise TestbedError(f"{name}: `{' '.join(argv)}` exited {result.rc}: {result.stderr.strip()[-2000:]}")
        return result

    def put_file(self, name: str, path: str, data: bytes | str, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write a file in a running host, atomically, never readable by others before its mode is set."""
        script = (
            'set -e; mkdir -p "$(dirname "$1")"; t=$(mktemp "$1.XXXXXX"); cat > "$t"; '
            'chown "$2" "$t"; chmod "$3" "$t"; mv -f "$t" "$1"'
        )
        self.exec(name, ["/bin/sh", "-c", script, "put_file", path, owner, f"{mode:o}"], input=data, check=True)

    def read_file(self, name: str, path: str) -> bytes:
        proc = self._nsenter(self._running(name), ["cat", "--", path], None, 60)
        if proc.returncode != 0:
            raise TestbedError(f"{name}: cannot read {path}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def _running(self, name: str) -> Host:
        host = self.hosts[name]
        if host.leader_pid is None or not pid_alive(host.leader_pid):
            raise TestbedError(f"host {name} is not running")
        return host

    def _nsenter(
        self, host: Host, argv: Sequence[str], data: bytes | None, timeout: float
    ) -> subprocess.CompletedProcess[bytes]:
        assert host.leader_pid is not None
        return subprocess.run(
            ["nsenter", "-t", str(host.leader_pid), "-a", "--", *argv],
            input=data,
            capture_output=True,
            timeout=timeout,
            env=HOST_ENV,
            check=False,
        )

    # ------------------------------------------------------------------ state for the CLI

    def _save_state(self) -> None:
        state = {
            "prefix": self.settings.prefix,
            "subnet": str(self.settings.subnet),
            "bridge": self.settings.bridge,
            "bridge_address": self.bridge_address,
            "rootfs": str(self.rootfs),
            "repo": self.repo.url if self.repo else None,
            "hosts": {
                h.name: {
                    "address": h.address,
                    "machine": h.machine,
                    "nspawn_pid": h.nspawn_pid,
                    "leader_pid": h.leader_pid,
                }
                for h in self.hosts.values()
            },
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")


# ---------------------------------------------------------------------- module-level helpers


CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CGROUP_PURE_V2 = Path("/sys/fs/cgroup")
CGROUP_GROUP = "mariadb-kms-testbed"


def _own_cgroup(hierarchy: Path) -> str:
    """This process's cgroup path in a mounted hierarchy (from /proc/self/cgroup)."""
    wanted = "name=systemd" if hierarchy.name == "systemd" else ""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == wanted:
            return path
    return "/"


def host_cgroups(machine: str) -> list[Path]:
    """A cgroup of the host's own, in each hierarchy its systemd uses.

    With no systemd on this machine to make a scope, ``systemd-nspawn
    --keep-unit`` puts the container's payload in the cgroup it was started
    in, and every host started from one process would share it: the systemd
    of each host would see the other hosts' processes in "its"
    ``system.slice/mariadb.service``, fail to kill that cgroup on a stop
    (EIO: they are in other PID namespaces) and race the others' systemd
    creating and removing unit cgroups (a stop's control process then fails
    with 219/CGROUP). Seen here with three hosts' mariadbd in one cgroup.
    """
    found = [h for h in CGROUP_HIERARCHIES if (h / "cgroup.procs").exists()]
    if not found and (CGROUP_PURE_V2 / "cgroup.controllers").exists():
        found = [CGROUP_PURE_V2]
    return [h / _own_cgroup(h).lstrip("/") / CGROUP_GROUP / machine for h in found]


def _enter_cgroups(paths: Sequence[Path]) -> None:
    """Run in the child between fork and exec: move it into the host's own cgroups."""
    for path in paths:
        (path / "cgroup.procs").write_text("0\n")


def _remove_cgroups(settings: Settings) -> None:
    """The testbed's host cgroups, deepest first; a cgroup that still holds a process stays."""
    for base in {p.parent for p in host_cgroups(f"{settings.prefix}-x")}:
        for top in base.glob(f"{settings.prefix}-*"):
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _kill_container(nspawn_pid: int) -> None:
    """SIGKILL a container's PID 1 (the kernel then kills its whole PID namespace), then nspawn itself."""
    own_pidns = os.readlink("/proc/self/ns/pid")
    for child in _children(nspawn_pid):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/ns/pid") != own_pidns:
                os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(nspawn_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(nspawn_pid, signal.SIGKILL)


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=2) as conn:
            return conn.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def _nspawn_processes(settings: Settings) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = process_argv(int(entry))
            if argv and settings.owns_nspawn(argv):
                pids.append(int(entry))
    return pids


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def leftovers(settings: Settings) -> dict[str, list[str]]:
    """What of this testbed exists on the machine right now, found by its name prefix."""
    servers = [p.name for p in settings.run_dir().glob("*.pid")]
    return {
        "nspawn": [str(p) for p in _nspawn_processes(settings)],
        "netns": [n for n in _netns_names() if settings.owns_netns(n)],
        "links": [name for name in _link_names() if settings.owns_link(name)],
        "servers": servers,
        "host_dirs": [str(p) for p in (settings.run_dir() / "hosts").glob("*")],
        "volumes": [str(p) for p in (settings.run_dir() / VOLUMES_DIR).glob("*")],
    }


def cleanup(settings: Settings) -> None:
    """Remove everything of this testbed, including what a crashed run left. Idempotent."""
    found = leftovers(settings)
    if not any(found.values()):
        return
    say(f"removing testbed {settings.prefix} resources: " + ", ".join(f"{k}={v}" for k, v in found.items() if v))
    nspawns = _nspawn_processes(settings)
    for pid in nspawns:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in nspawns:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            _kill_container(pid)
    for pidfile in settings.run_dir().glob("*.pid"):
        BackgroundServer.stop_recorded(pidfile)
    for netns in [n for n in _netns_names() if settings.owns_netns(n)]:
        # Anything still inside the namespace is ours by construction (e.g. an orphaned `ip netns exec`).
        members = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False).stdout
        for member in members.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(member), signal.SIGKILL)
        run(["ip", "netns", "delete", netns], check=False)
    for link in [name for name in _link_names() if settings.owns_link(name)]:
        run(["ip", "link", "delete", link], check=False)
    _remove_cgroups(settings)
    remove_tree(settings.run_dir() / "hosts")
    cleanup_volumes(settings.run_dir())
    (settings.run_dir() / "state.json").unlink(missing_ok=True)
    remaining = {k: v for k, v in leftovers(settings).items() if v}
    if remaining:
        raise TestbedError(f"testbed {settings.prefix}: could not remove {remaining}")


def status(settings: Settings) -> dict[str, object]:
    state_file = settings.run_dir() / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    live = leftovers(settings)
    hosts = {}
    for name, info in (state.get("hosts") or {}).items():
        leader = info.get("leader_pid")
        running = bool(leader) and pid_alive(int(leader))
        system = "down"
        if running:
            proc = subprocess.run(
                ["nsenter", "-t", str(leader), "-a", "--", "systemctl", "is-system-running"],
                capture_output=True,
                text=True,
                env=HOST_ENV,
                timeout=30,
                check=False,
            )
            system = proc.stdout.strip() or "unknown"
        hosts[name] = {"address": info.get("address"), "system": system}
    return {
        "prefix": settings.prefix,
        "bridge": state.get("bridge_address"),
        "repo": state.get("repo"),
        "hosts": hosts,
        "resources": live,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rehearsal.testbed", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="boot N hosts and leave them running")
    up.add_argument("count", type=int, nargs="?", default=3)
    up.add_argument("--names", help="comma-separated host names (default node1..nodeN)")
    sub.add_parser("down", help="stop and remove everything of this testbed, also after a crashed run")
    sub.add_parser("status", help="show hosts and the testbed resources that exist")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "up":
        names = args.names.split(",") if args.names else args.count
        testbed = Testbed(names, settings=settings)
        try:
            testbed.setup()
            states = testbed.boot()
        except BaseException:
            testbed.teardown()
            raise
        testbed._lock.close()  # leave it running for later commands; `down` (or the next `up`) removes it
        for host in testbed.hosts.values():
            print(f"{host.name}\t{host.address}\t{states[host.name]}\tnsenter -t {host.leader_pid} -a")
        print(f"package repository: {testbed.apt_source.strip()}")
    elif args.command == "down":
        with file_lock(settings.run_dir().with_suffix(".lock"), f"testbed {settings.prefix}"):
            cleanup(settings)
    else:
        print(json.dumps(status(settings), indent=2))
    return 0


if __name__ == "__main__":
    if shutil.which("systemd-nspawn") is None:
        raise SystemExit("systemd-nspawn is missing: run `make deps` (rehearsal/install-host-deps.sh)")
    raise SystemExit(main())
