"""Talking to MariaDB, systemd and the journal on a testbed host, through ``Testbed.exec`` (as root).

For the node tests and benchmarks, once the program's plan has built the
cluster (``rehearsal/runner``): SQL over the unix socket, Galera's state, a
node stopped or started, journal lines since a cursor. Nothing here installs
or configures a node; that is the program's business.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence

from components.node_files import KEYFILE_PATH, UNWRAP_UNIT
from rehearsal.testbed import ExecResult, Testbed


class HostCommandFailed(AssertionError):
    """A command on a host failed; the message carries its output's tail."""


def check(testbed: Testbed, host: str, cmd: Sequence[str] | str, *, input: str | bytes | None = None,
          timeout: float = 120) -> ExecResult:
    """``testbed.exec`` that raises, naming the host, the command and its output, when the command fails."""
    result = testbed.exec(host, cmd, input=input, timeout=timeout)
    if result.rc != 0:
        shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
        raise HostCommandFailed(f"{host}: `{shown}` exited {result.rc}:\n{result.stdout[-3000:]}\n"
                                f"{result.stderr[-3000:]}")
    return result


def sql(testbed: Testbed, host: str, statements: str, timeout: float = 300) -> str:
    """Run SQL through the stock client over the unix socket (as root); statements on stdin, not in argv."""
    return check(testbed, host, ["mariadb", "--batch", "--skip-column-names"], input=statements,
                 timeout=timeout).stdout


def status(testbed: Testbed, host: str, variable: str) -> str:
    """One global status value ("" when the server does not report it)."""
    out = sql(testbed, host, f"SHOW GLOBAL STATUS LIKE '{variable}'")
    return out.split("\t", 1)[1].strip() if "\t" in out else ""


def wsrep_status(testbed: Testbed, host: str) -> dict[str, str]:
    """Every wsrep status value; empty while the server does not answer."""
    result = testbed.exec(
        host, ["mariadb", "--batch", "--skip-column-names", "-e", "SHOW GLOBAL STATUS LIKE 'wsrep%'"], timeout=30
    )
    if result.rc != 0:
        return {}
    return dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)


def wait_synced(testbed: Testbed, host: str, size: int, timeout: float = 180) -> dict[str, str]:
    """Poll until the node is Primary, Synced and sees ``size`` members; returns its wsrep status."""
    deadline = time.monotonic() + timeout
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = wsrep_status(testbed, host)
        if (
            state.get("wsrep_cluster_status") == "Primary"
            and state.get("wsrep_local_state_comment") == "Synced"
            and state.get("wsrep_cluster_size") == str(size)
        ):
            return state
        time.sleep(1)
    wanted = ("wsrep_cluster_status", "wsrep_local_state_comment", "wsrep_cluster_size")
    raise HostCommandFailed(
        f"{host} is not Primary/Synced with {size} members after {timeout:.0f}s: { {k: state.get(k) for k in wanted} }"
    )


def start(testbed: Testbed, host: str, timeout: float = 600) -> ExecResult:
    """``systemctl start mariadb`` (unwrap first, then join); returns the result, failed or not."""
    return testbed.exec(host, ["systemctl", "start", "mariadb"], timeout=timeout)


def join(testbed: Testbed, host: str, size: int) -> None:
    """Start a stopped node and wait until it is Synced in a cluster of ``size``."""
    result = start(testbed, host)
    if result.rc != 0:
        raise HostCommandFailed(f"{host}: systemctl start mariadb exited {result.rc}:\n{result.stderr[-3000:]}")
    wait_synced(testbed, host, size)


def stop(testbed: Testbed, host: str, timeout: float = 60) -> None:
    """``systemctl stop mariadb``, then wait for the unwrap unit's stop (PartOf) to finish too.

    systemctl returns when mariadb.service is down; the unwrap unit, ordered before it, stops right
    after, and only then is the keyfile gone.
    """
    check(testbed, host, ["systemctl", "stop", "mariadb"], timeout=300)
    deadline = time.monotonic() + timeout
    while unit_state(testbed, host, UNWRAP_UNIT) not in ("inactive", "failed"):
        if time.monotonic() > deadline:
            raise HostCommandFailed(f"{host}: {UNWRAP_UNIT} still active {timeout:.0f}s after MariaDB stopped")
        time.sleep(0.2)


def unit_state(testbed: Testbed, host: str, unit: str) -> str:
    """ActiveState: ``systemctl is-active`` fails alike for "inactive" and "deactivating"; this tells them apart."""
    return testbed.exec(host, ["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout.strip()


def keyfile_present(testbed: Testbed, host: str) -> bool:
    return testbed.exec(host, ["test", "-f", KEYFILE_PATH]).rc == 0


def journal_cursor(testbed: Testbed, host: str) -> str:
    out = check(testbed, host, ["journalctl", "-q", "-n", "0", "--show-cursor"]).stdout
    for line in out.splitlines():
        if line.startswith("-- cursor: "):
            return line.removeprefix("-- cursor: ").strip()
    raise HostCommandFailed(f"{host}: journalctl printed no cursor: {out!r}")


def journal_since(testbed: Testbed, host: str, cursor: str, *units: str) -> str:
    """Messages after ``cursor`` (of ``units``, or all), one per line."""
    argv = ["journalctl", "-q", "--no-pager", "-o", "cat", f"--after-cursor={cursor}"]
    for unit in units:
        argv += ["-u", unit]
    return check(testbed, host, argv, timeout=60).stdout


def epoch(testbed: Testbed, host: str) -> int:
    """The host's clock, in seconds (for ``journalctl --since @N``)."""
    return int(check(testbed, host, ["date", "+%s"]).stdout.strip())


def main_pid(testbed: Testbed, host: str, unit: str = "mariadb") -> str:
    """The unit's MainPID ("0" when it does not run): the same value before and after means no restart."""
    return testbed.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()


def tmp_on_disk(testbed: Testbed, host: str) -> None:
    """Put /tmp back on the root disk, as on a Debian 12 cloud image: a testbed difference, undone here.

    systemd-nspawn mounts a tmpfs on a container's /tmp, where MariaDB's tmpdir (/tmp) would not be at
    rest and a spilled sort would prove nothing about encrypt_tmp_files. Done before MariaDB first starts
    (mariadb.service has PrivateTmp=false, so mariadbd uses this /tmp).
    """
    if testbed.exec(host, ["findmnt", "-n", "-o", "FSTYPE", "/tmp"]).stdout.strip() == "tmpfs":
        check(testbed, host, ["umount", "/tmp"])
