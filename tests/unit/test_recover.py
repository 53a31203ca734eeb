"""mariadb-kms-recover on a scratch tree with stand-in tools: what it reports and the next command it prints.

The tools it calls (systemctl, mariadb, pgrep, hostname, galera_recovery, timeout) are small scripts that log
their arguments and answer from files, so every branch runs here without a host; the real thing runs in
tests/reliability (a clean shutdown of every host, then the runbook).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "node" / "mariadb-kms-recover"
UUID = "8a1c3a1e-0f0b-11ef-9a5b-0242ac120002"

GVWSTATE = """my_uuid: 0dae1307-1606-11e4-aa94-5255b1455aa0
#vwbeg
view_id: 3 0dae1307-1606-11e4-aa94-5255b1455aa0 12
bootstrap: 0
member: 0dae1307-1606-11e4-aa94-5255b1455aa0 1
member: 47bbe2e2-1606-11e4-8593-2a6d8335bc79 1
member: d3124bc8-1605-11e4-aa3d-ab44303c044a 1
#vwend
"""

TOOLS = {
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$STATE/log"
case "$*" in
  *"--value mariadb"*ActiveState*|*ActiveState*"--value mariadb") cat "$STATE/active" ;;
  *SubState*) echo running ;;
  *) : ;;
esac
case "$*" in "stop mariadb") echo inactive > "$STATE/active"; rm -f "$STATE/pgrep" ;; esac
exit 0
""",
    "pgrep": '#!/bin/sh\necho "pgrep $*" >> "$STATE/log"\n[ -e "$STATE/pgrep" ]\n',
    "mariadb": '#!/bin/sh\necho "mariadb $*" >> "$STATE/log"\ncat "$STATE/status" 2>/dev/null\n',
    "hostname": "#!/bin/sh\necho node7\n",
    "galera_recovery": (
        f'#!/bin/sh\necho "galera_recovery" >> "$STATE/log"\necho "--wsrep_start_position={UUID}:4242"\n'
    ),
    "timeout": '#!/bin/sh\nshift\nexec "$@"\n',
}


class Node:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.bin = tmp / "bin"
        self.state = tmp / "state"
        for d in (self.root / "var/lib/mysql", self.root / "etc/mysql/mariadb.conf.d", self.bin, self.state):
            d.mkdir(parents=True)
        for name, text in TOOLS.items():
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        (self.state / "active").write_text("inactive\n")
        (self.state / "log").write_text("")

    def grastate(self, seqno: int, safe: int) -> None:
        text = f"# GALERA saved state\nversion: 2.1\nuuid:    {UUID}\nseqno:   {seqno}\nsafe_to_bootstrap: {safe}\n"
        (self.root / "var/lib/mysql/grastate.dat").write_text(text)

    def gvwstate(self) -> None:
        (self.root / "var/lib/mysql/gvwstate.dat").write_text(GVWSTATE)

    def restart_loop(self) -> None:
        (self.state / "active").write_text("activating\n")
        (self.state / "pgrep").write_text("")
        (self.state / "status").write_text("non-Primary\n")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "STATE": str(self.state), "MARIADB_KMS_TEST_ROOT": str(self.root)}
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, check=False)

    def log(self) -> list[str]:
        return (self.state / "log").read_text().splitlines()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_help_parses_without_touching_the_system(node: Node) -> None:
    result = node.run("--help")
    assert result.returncode == 0 and "--stop" in result.stdout and "usage:" in result.stdout
    assert node.log() == []  # control below: a real run calls the stand-ins
    node.grastate(10, 1)
    assert node.run().returncode == 0 and node.log() != []


def test_help_works_for_a_user_who_is_not_root() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    result = subprocess.run(["bash", str(SCRIPT), "--help"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "must run as root" not in result.stderr


def test_unknown_argument_is_refused_with_the_usage(node: Node) -> None:
    result = node.run("--bogus")
    assert result.returncode == 2 and "unknown argument: --bogus" in result.stderr and "usage:" in result.stderr
    assert node.log() == []


def test_after_a_clean_shutdown_it_names_the_bootstrap_commands(node: Node) -> None:
    node.grastate(1234, 0)
    result = node.run()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gvwstate.dat: absent" in out and "will not re-form the cluster by itself" in out
    assert f"RECOVERY node=node7 primary=no position={UUID}:1234 safe_to_bootstrap=0 gvwstate=absent" in out
    assert ("sed -i 's/^safe_to_bootstrap:.*/safe_to_bootstrap: 1/' /var/lib/mysql/grastate.dat && galera_new_cluster"
            in out)
    assert "systemctl start mariadb" in out
    assert "galera_recovery" not in node.log()  # the position is in grastate.dat: no key, no KMS needed


def test_safe_to_bootstrap_already_set_needs_no_edit(node: Node) -> None:
    node.grastate(1234, 1)
    out = node.run().stdout
    assert "      galera_new_cluster" in out and "sed -i" not in out


def test_after_a_power_loss_pc_recovery_re_forms_the_cluster(node: Node) -> None:
    node.grastate(-1, 0)
    node.gvwstate()
    result = node.run()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gvwstate.dat: present" in out and "47bbe2e2-1606-11e4-8593-2a6d8335bc79" in out
    assert "re-form the primary component by themselves" in out
    assert "Next on node7: systemctl start mariadb" in out and "galera_new_cluster" not in out
    # seqno -1: the position comes from the redo log, with the key unwrapped for it and removed after.
    assert f"position={UUID}:4242" in out
    log = node.log()
    # The datadir key unit requires the unwrap: starting it unwraps the key (and, with fscrypt, opens the datadir).
    assert "systemctl start mariadb-kms-datadir-key.service" in log and "galera_recovery" in log
    assert log[-1] == "systemctl stop mariadb-kms-datadir-key.service mariadb-kms-unwrap.service"


def test_pc_recovery_turned_off_in_config_means_bootstrap(node: Node) -> None:
    node.grastate(77, 0)
    node.gvwstate()
    cnf = node.root / "etc/mysql/mariadb.conf.d/91-mariadb-kms-node.cnf"
    cnf.write_text('[galera]\nwsrep_provider_options = "gcache.size=64M; pc.recovery=false"\n')
    out = node.run().stdout
    assert "pc_recovery=off" in out and "galera_new_cluster" in out


def test_in_its_restart_loop_it_refuses_without_asking_then_stops_with_stop(node: Node) -> None:
    node.grastate(-1, 0)
    node.restart_loop()
    refused = node.run()  # stdin is not a terminal: no question, no stop
    assert refused.returncode != 0 and "--stop" in refused.stderr
    assert "systemctl stop mariadb" not in node.log()
    stopped = node.run("--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "systemctl stop mariadb" in node.log()
    assert "RECOVERY node=node7 primary=no" in stopped.stdout


def test_a_node_in_a_primary_component_is_left_alone(node: Node) -> None:
    node.grastate(-1, 0)
    node.restart_loop()
    (node.state / "status").write_text("Primary\n")
    result = node.run("--stop")
    assert result.returncode == 0 and "nothing to recover here" in result.stdout
    assert "systemctl stop mariadb" not in node.log()
