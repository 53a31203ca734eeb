"""MariaDB minor upgrades: ``mariadbVersion``, one node at a time, the package's own restart blocked.

What is exercised here: the plan (an ``upgrade`` step per member after its
config and before its preflight and roll, node N+1's upgrade after node N's
roll, re-run by a new version), the recorded program (a new version re-runs
upgrade, preflight, roll and verify on every member, nothing else), and the
node script's logic against stand-ins for dpkg-query, apt-get, apt-cache and
apt-mark (real ``dpkg --compare-versions``). Not exercised here: a real
package upgrade on a host (see docs/runbooks/day-2.md).
"""

from __future__ import annotations

import itertools
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mocks import full_config, run_program
from test_plan_triggers import NO_TLS, retriggered, triggers
from test_remote_steps import FakeNode, status_lines

from components.config import ConfigError, parse_config
from components.plan import cluster_plan

REPO = Path(__file__).resolve().parents[2]
NODES = ("aws-a", "aws-b", "dc-1")
OLD, NEW = "1:10.11.6-0+deb12u1", "1:10.11.6-0+deb12u1.1"


def config(**changes: Any) -> dict[str, Any]:
    return full_config(**NO_TLS, **changes)


def parsed(raw: dict[str, Any]) -> Any:
    return parse_config({k: v for k, v in raw.items() if k != "sshPrivateKey"}, stack="dev", region="eu-west-1")


def test_mariadb_version_is_checked_and_defaults_to_empty() -> None:
    assert parsed(config()).mariadb.version == ""
    assert parsed(config(mariadbVersion=NEW)).mariadb.version == NEW
    with pytest.raises(ConfigError) as bad:
        parsed(config(mariadbVersion="latest; rm -rf /"))
    assert any(e.startswith("mariadb-kms:mariadbVersion = ") and "Debian package version" in e
               for e in bad.value.errors)


def test_the_plan_upgrades_one_member_at_a_time_before_its_roll() -> None:
    plan = cluster_plan(parsed(config(mariadbVersion=NEW)))
    order = plan.nodes
    for n in order:
        keys = [e.step.key for e in plan.of_node(n)]
        assert keys.index("config") < keys.index("upgrade") < keys.index("preflight") < keys.index("roll")
        upgrade = plan.entry(f"{n}/upgrade")
        assert upgrade.step.create == f"sudo -n /usr/local/sbin/mariadb-kms-upgrade --version {NEW}"
        assert upgrade.key in plan.waits_for(f"{n}/roll")
    for earlier, later in itertools.pairwise(order):
        assert f"{earlier}/roll" in plan.waits_for(f"{later}/upgrade")


def test_control_without_a_version_there_is_no_upgrade_step() -> None:
    plan = cluster_plan(parsed(config()))
    assert not [e for e in plan if e.step.key == "upgrade"]


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    return triggers(run_program(config(mariadbVersion=OLD), preview=False))


def test_a_new_version_reruns_upgrade_and_roll_on_every_member(pinned: dict[str, Any]) -> None:
    after = triggers(run_program(config(mariadbVersion=NEW), preview=False))
    expected = {f"{n}/{s}" for n in NODES for s in ("upgrade", "preflight", "roll", "verify")}
    assert retriggered(pinned, after) == expected


def test_control_the_same_version_reruns_nothing(pinned: dict[str, Any]) -> None:
    assert retriggered(pinned, triggers(run_program(config(mariadbVersion=OLD), preview=False))) == set()


# -- the node script, against stand-ins --------------------------------------------

STUBS = {
    # $STATE/version: the installed version of every package; $STATE/available: versions the sources have.
    "dpkg-query": """
        case "$*" in
          *Status-Status*) [ -s "$STATE/version" ] && echo installed ;;
          *) cat "$STATE/version" 2>/dev/null ;;
        esac
    """,
    "apt-get": """
        echo "apt-get $*" >> "$STATE/log"
        [ "$1" = update ] && exit 0
        policy="$MARIADB_KMS_TEST_ROOT/usr/sbin/policy-rc.d"
        if [ -x "$policy" ] && ! "$policy" mariadb restart; then echo "policy forbids restart" >> "$STATE/log"; fi
        [ -e "$STATE/install_fails" ] && exit 100
        last="${@: -1}"; echo "${last#*=}" > "$STATE/version"
    """,
    "apt-cache": """
        v="${2#*=}"; grep -qxF "$v" "$STATE/available"
    """,
    "apt-mark": """
        echo "apt-mark $*" >> "$STATE/log"
    """,
}


class UpgradingNode:
    def __init__(self, base: Path, installed: str) -> None:
        self.root, self.state, self.bin = base / "root", base / "state", base / "bin"
        for d in (self.root / "usr/local/sbin", self.root / "usr/sbin", self.state, self.bin):
            d.mkdir(parents=True)
        shutil.copy(REPO / "node/mariadb-kms-upgrade", self.root / "usr/local/sbin/mariadb-kms-upgrade")
        for name, body in STUBS.items():
            (self.bin / name).write_text("#!/bin/bash\n" + textwrap.dedent(body))
            (self.bin / name).chmod(0o755)
        (self.state / "version").write_text(installed + "\n")
        (self.state / "available").write_text(f"{OLD}\n{NEW}\n")
        (self.state / "log").write_text("")

    def run(self, *args: str) -> Any:
        import subprocess

        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "STATE": str(self.state), "MARIADB_KMS_TEST_ROOT": str(self.root)}
        return subprocess.run([str(self.root / "usr/local/sbin/mariadb-kms-upgrade"), *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def log(self) -> list[str]:
        return (self.state / "log").read_text().splitlines()


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_upgrade_blocks_the_package_restart_and_holds_again(tmp_path: Path) -> None:
    node = UpgradingNode(tmp_path, OLD)
    result = node.run("--version", NEW)
    assert result.returncode == 0, result.stderr
    log = node.log()
    install = next(i for i, line in enumerate(log) if line.startswith("apt-get") and "install" in line)
    assert log[install + 1] == "policy forbids restart"  # the package's own restart was refused
    assert f"mariadb-server={NEW}" in log[install]
    unhold = next(i for i, line in enumerate(log) if line.startswith("apt-mark unhold"))
    hold = max(i for i, line in enumerate(log) if line.startswith("apt-mark hold"))
    assert unhold < install < hold
    assert not (node.root / "usr/sbin/policy-rc.d").exists()
    assert (node.state / "version").read_text().strip() == NEW


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_upgrade_holds_again_and_removes_its_policy_when_the_install_fails(tmp_path: Path) -> None:
    node = UpgradingNode(tmp_path, OLD)
    (node.state / "install_fails").write_text("")
    result = node.run("--version", NEW)
    assert result.returncode != 0
    assert node.log()[-1].startswith("apt-mark hold")
    assert not (node.root / "usr/sbin/policy-rc.d").exists()


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_upgrade_refuses_a_downgrade_a_missing_version_and_a_foreign_policy(tmp_path: Path) -> None:
    newer = UpgradingNode(tmp_path / "a", NEW)
    down = newer.run("--version", OLD)
    assert down.returncode != 0 and "refusing to downgrade" in down.stderr
    same = newer.run("--version", NEW)
    assert same.returncode == 0 and "nothing to upgrade" in same.stdout
    assert not [line for line in newer.log() if line.startswith("apt-get")]
    missing = UpgradingNode(tmp_path / "b", OLD)
    gone = missing.run("--version", "1:10.11.99-1")
    assert gone.returncode != 0 and "not in the package sources" in gone.stderr
    foreign = UpgradingNode(tmp_path / "c", OLD)
    (foreign.root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 0\n")
    refused = foreign.run("--version", NEW)
    assert refused.returncode != 0 and "is not ours" in refused.stderr
    assert (foreign.root / "usr/sbin/policy-rc.d").read_text() == "#!/bin/sh\nexit 0\n"


def test_the_roll_restarts_after_an_upgrade(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, ["127.0.0.2:4567", "127.0.0.3:4567", "127.0.0.4:4567"], "127.0.0.2")
    (node.bin / "dpkg-query").write_text(f"#!/bin/bash\ncat {node.state}/version\n")
    (node.bin / "dpkg-query").chmod(0o755)
    (node.state / "version").write_text(OLD + "\n")
    node.set(active=True, status=status_lines(3), on_start=status_lines(3))
    assert node.run("mariadb-kms-roll", "--mark-applied").returncode == 0
    unchanged = node.run("mariadb-kms-roll", "--timeout", "5")
    assert unchanged.returncode == 0 and "nothing to restart" in unchanged.stdout
    (node.state / "version").write_text(NEW + "\n")
    upgraded = node.run("mariadb-kms-roll", "--timeout", "5")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "systemctl restart mariadb" in node.log()
