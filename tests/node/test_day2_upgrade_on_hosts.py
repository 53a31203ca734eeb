"""A rolling MariaDB minor upgrade on real hosts, from a locally rebuilt higher version of Debian's packages.

The testbed's repository holds Debian 12's MariaDB packages. Every package
built from the ``mariadb`` source is repacked here with its version bumped
(``+mkbump1``) and every ``(= old)`` / ``(>= old)`` relation among them
bumped too, into a second, flat repository placed on each host. Same binaries,
higher version: this exercises the rolling mechanics (unhold, upgrade with the
package's own restart blocked, hold again, the roll restarts, Synced before
the next node), not a real schema or binary upgrade.

The cluster is the program's plan carried out on the hosts (``rehearsal/runner``);
the upgrade is the program's too: the stack recorded again with
``mariadbVersion`` set, and each node's ``upgrade`` and ``roll`` commands of
that recording run in the plan's order, node1 then node2.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import release_hosts

from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import main_pid, sql, wait_synced
from rehearsal.runner import TLS_OFF, Deployment, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Testbed

HOSTS = ("node1", "node2")
BUMP = "+mkbump1"
BUMP_DIR = "/srv/mariadb-kms-bump"


def installed(testbed: Testbed, host: str) -> str:
    return testbed.exec(host, ["dpkg-query", "-W", "-f=${Version}", "mariadb-server"]).stdout.strip()


def bumped_repository(source: Path, out: Path, old: str) -> str:
    """Repack every package of the mariadb source at ``old`` as ``old + BUMP``; returns the new version."""
    new = old + BUMP
    out.mkdir(parents=True)
    for deb in sorted(source.glob("*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Source", "Version"], capture_output=True, text=True,
                                check=True).stdout
        if "Source: mariadb" not in fields or f"Version: {old}" not in fields:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-R", str(deb), tmp], check=True)
            control = Path(tmp, "DEBIAN/control")
            text = control.read_text().replace(f"Version: {old}", f"Version: {new}")
            text = text.replace(f"(= {old})", f"(= {new})").replace(f"(>= {old})", f"(>= {new})")
            control.write_text(text)
            subprocess.run(["dpkg-deb", "-Zgzip", "-z1", "-b", tmp, str(out / deb.name.replace(".deb", "+b.deb"))],
                           check=True, capture_output=True)
    packages = subprocess.run(["apt-ftparchive", "packages", "."], cwd=out, capture_output=True, text=True,
                              check=True).stdout
    (out / "Packages").write_text(packages)
    return new


@dataclass
class Upgrade:
    stack: ProgramStack
    deployed: Deployment
    version: str  # the bumped version, in the second repository on every host


@pytest.fixture(scope="module")
def cluster(testbed: Testbed, kms: KmsServer) -> Iterator[Upgrade]:
    stack = ProgramStack(kms)
    try:
        # The program's plan: install, bootstrap node1, each node's roll (which records the applied config).
        # TLS off, as a user may set it: a second recording issues new certificates (the runner keeps the
        # stack's keys, not its TLS material), which would add a renewal to the upgrade.
        deployed = deploy(testbed, stack, onprem_config(testbed, HOSTS, gcacheSize="64M", **TLS_OFF))
        old = installed(testbed, "node1")
        assert testbed.repo is not None
        with tempfile.TemporaryDirectory() as tmp:
            new = bumped_repository(testbed.repo.directory, Path(tmp, "bump"), old)
            # Through the host (an overlay's upper directory is not written behind its back).
            payload = io.BytesIO()
            with tarfile.open(fileobj=payload, mode="w") as tar:
                tar.add(Path(tmp, "bump"), arcname=BUMP_DIR.lstrip("/"))
                line = f"deb [trusted=yes] file:{BUMP_DIR} ./\n".encode()
                info = tarfile.TarInfo("etc/apt/sources.list.d/mariadb-kms-bump.list")
                info.size, info.mode = len(line), 0o644
                tar.addfile(info, io.BytesIO(line))
            for h in HOSTS:
                placed = testbed.exec(h, ["tar", "-xf", "-", "-C", "/", "--no-same-owner"], input=payload.getvalue(),
                                      timeout=300)
                assert placed.rc == 0, placed.stderr
        yield Upgrade(stack, deployed, new)
    finally:
        for h in HOSTS:
            testbed.exec(h, ["rm", "-rf", BUMP_DIR, "/etc/apt/sources.list.d/mariadb-kms-bump.list"], timeout=60)
        release_hosts(testbed, HOSTS)


def test_rolling_upgrade_one_node_at_a_time(testbed: Testbed, cluster: Upgrade) -> None:
    new = cluster.version
    upgraded = cluster.stack.record({**cluster.deployed.program.config, "mariadbVersion": new}, testbed)
    assert upgraded.names(step="upgrade") == [f"{h}-ssh-upgrade" for h in HOSTS]
    steps = Deployment(testbed, upgraded)
    sql(testbed, "node1", "CREATE DATABASE IF NOT EXISTS up; CREATE TABLE IF NOT EXISTS up.t (id INT PRIMARY KEY);"
        " REPLACE INTO up.t VALUES (1);")
    for h in HOSTS:
        before = main_pid(testbed, h)
        steps.run_command(f"{h}-ssh-upgrade")  # raises, with the step's output, when it fails
        assert installed(testbed, h) == new
        # The package's own restart was blocked: the same server still runs, and the policy is gone again.
        assert main_pid(testbed, h) == before
        assert testbed.exec(h, ["test", "-e", "/usr/sbin/policy-rc.d"]).rc != 0
        held = testbed.exec(h, ["apt-mark", "showhold"]).stdout.split()
        assert {"mariadb-server", "mariadb-server-core", "galera-4"} <= set(held)
        # The other node has not been touched yet while this one upgrades.
        rolled = steps.run_command(f"{h}-ssh-roll")
        assert "restarting MariaDB" in rolled.stdout, rolled.stdout[-2000:]
        assert main_pid(testbed, h) != before
        for other in HOSTS:
            wait_synced(testbed, other, 2, timeout=60)
    assert sql(testbed, "node2", "SELECT COUNT(*) FROM up.t").strip() == "1"
    again = steps.run_command("node1-ssh-upgrade")
    assert "nothing to upgrade" in again.stdout, again.stdout[-2000:]
