"""`make demo` end to end: the program's recorded plan, replayed on real hosts, proves a verified cluster.

Runs the rehearsal exactly as `make demo` does (``python -m rehearsal demo``,
in a subprocess) on a testbed of its own (prefix and subnet differ from a
user's demo and from the node tests), then asserts on the JSON report and on
the hosts themselves, and removes everything afterwards.

Each checker here has a control case that shows it finds what it looks for.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.rehearsal

REPO = Path(__file__).resolve().parents[2]
UNWRAP_CONF = "/etc/mariadb-kms/unwrap.conf"
CREDENTIALS = "/etc/mariadb-kms/aws-credentials"
DATA_VOLUME_OVERRIDE = "/etc/mariadb-kms/data-volume.conf.d/rehearsal.conf"
# Its own testbed: a user's `make demo` (mkdemo, 10.231.5.0/24) and the node tests (mk) keep running. A
# demo prefix and subnet set in the environment are taken instead (several checkouts on one machine).
TEST_ENV = {
    "MARIADB_KMS_DEMO_PREFIX": os.environ.get("MARIADB_KMS_DEMO_PREFIX", "mkdt"),
    "MARIADB_KMS_DEMO_SUBNET": os.environ.get("MARIADB_KMS_DEMO_SUBNET", "10.231.8.0/24"),
}
REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "ip", "apt-ftparchive")


def require_root_and_tools() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "the rehearsal needs root (network namespaces, systemd-nspawn, overlay mounts)"
    for tool in REQUIRED_TOOLS:
        if reason is None and shutil.which(tool) is None:
            reason = f"{tool} is missing: run `make deps`"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI runs as root and must run the rehearsal, but: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class DemoRun:
    rc: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    report_text: str
    overlay_diff: str
    login_key: Path
    known_hosts: Path

    def node_exec(self, node: str, *argv: str) -> subprocess.CompletedProcess[str]:
        pid = self.report["nodes"][node]["host"]["leader_pid"]
        return subprocess.run(["nsenter", "-t", str(pid), "-a", "--", *argv], capture_output=True, text=True,
                              timeout=60, check=False)


def _rehearsal(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **TEST_ENV}
    return subprocess.run([sys.executable, "-m", "rehearsal", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    require_root_and_tools()
    report_path = tmp_path_factory.mktemp("demo") / "report.json"
    try:
        proc = _rehearsal("demo", "--report", str(report_path), timeout=1500)
        if not report_path.is_file():
            pytest.fail(f"no report; exit {proc.returncode}\n{proc.stderr[-4000:]}", pytrace=False)
        text = report_path.read_text()
        from rehearsal import cache_dir

        out = cache_dir() / f"demo-{TEST_ENV['MARIADB_KMS_DEMO_PREFIX']}"
        yield DemoRun(proc.returncode, proc.stdout, proc.stderr, json.loads(text), text,
                      (out / "overlay.diff").read_text(), out / "ssh" / "id_ed25519", out / "ssh" / "known_hosts")
    finally:
        down = _rehearsal("down", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
        assert_nothing_left()


def assert_nothing_left() -> None:
    """After `down`: no host, namespace, link, server or nspawn setting of the test's testbed remains."""
    import ipaddress

    from rehearsal.testbed import Settings, leftovers

    settings = Settings(prefix=TEST_ENV["MARIADB_KMS_DEMO_PREFIX"],
                        subnet=ipaddress.IPv4Network(TEST_ENV["MARIADB_KMS_DEMO_SUBNET"]))
    assert {k: v for k, v in leftovers(settings).items() if v} == {}
    assert list(Path("/run/systemd/nspawn").glob(f"{settings.prefix}-*")) == []


def test_the_demo_verifies_a_cluster(demo: DemoRun) -> None:
    assert demo.rc == 0, f"make demo failed: {demo.report.get('failure')}\n{demo.stderr[-4000:]}"
    assert demo.report["ok"] is True
    assert all(c["rc"] == 0 for c in demo.report["commands"])


def test_three_nodes_synced_in_one_cluster(demo: DemoRun) -> None:
    nodes = demo.report["nodes"]
    assert sorted(n["kind"] for n in nodes.values()) == ["ec2", "ec2", "onprem"]
    uuids = set()
    for name, node in nodes.items():
        s = node["summary"]
        assert (s["cluster_state"], s["cluster_status"], s["cluster_size"]) == ("Synced", "Primary", 3), name
        uuids.add(node["verify"]["galera"]["cluster_state_uuid"])
    assert len(uuids) == 1, f"three nodes, but not one cluster: {uuids}"


def test_every_tablespace_encrypted_on_every_node(demo: DemoRun) -> None:
    for name, node in demo.report["nodes"].items():
        s, innodb = node["summary"], node["verify"]["innodb"]
        assert s["tablespaces_total"] > 0, name
        assert s["tablespaces_encrypted"] == s["tablespaces_total"], (name, innodb)
        assert innodb["unencrypted"] == [] and innodb["in_progress"] == [], name
        assert node["verify"]["gaps"] == [], name


def test_canary_absent_from_every_file_at_rest(demo: DemoRun) -> None:
    for name, node in demo.report["nodes"].items():
        canary = node["summary"]["canary"]
        assert canary is not None, f"{name}: the verification ran without the canary"
        assert canary["files_scanned"] > 0 and canary["bytes_scanned"] > 0, name
        assert canary["found_in"] == [], name


def test_the_onprem_datadir_is_fscrypt_on_its_volume_and_ec2_says_ebs(demo: DemoRun) -> None:
    for name, node in demo.report["nodes"].items():
        datadir = node["verify"]["datadir_encryption"]
        if node["kind"] == "onprem":
            assert (datadir["mode"], datadir["state"]) == ("fscrypt", "encrypted (fscrypt v2, AES-256-XTS)"), name
            assert len(datadir["fscrypt_policy"]) == 32, name  # a v2 key identifier
            mount = demo.node_exec(name, "findmnt", "-n", "-o", "FSTYPE,FSROOT", "/var/lib/mysql").stdout.split()
            assert mount == ["ext4", "/data"], name  # the volume's data/ subdirectory, bound while the key is in
        else:
            # The rehearsal's stand-in for the EBS volume is not encrypted: EBS's encryption is AWS's.
            assert datadir["mode"] == "ebs" and datadir["state"].startswith("encrypted by EBS"), name


def test_the_key_came_from_the_emulator_and_stays_on_tmpfs(demo: DemoRun) -> None:
    key_arn = demo.report["kms"]["key_arn"]
    assert key_arn.startswith("arn:aws:kms:")
    for name, node in demo.report["nodes"].items():
        key = node["verify"]["key"]
        assert [p["name"] for p in key["plugins"] if p["status"] == "ACTIVE"] == ["file_key_management"], name
        assert key["keyfile"]["filesystem"] == "tmpfs", name
        conf = configparser.ConfigParser()
        conf.read_string(demo.node_exec(name, "cat", UNWRAP_CONF).stdout)
        assert conf["unwrap"]["key_arn"] == key_arn, name


# --------------------------------------------------------------------------
# The overlay: only the declared items differ from the recorded plan
# --------------------------------------------------------------------------


def undeclared_differences(recorded: dict[str, Any], sent: dict[str, Any]) -> list[str]:
    """Everything that differs between the recorded and the sent plan beyond the declared overlay."""
    found = []
    if set(recorded["commands"]) != set(sent["commands"]):
        found.append(f"commands differ: {sorted(set(recorded['commands']) ^ set(sent['commands']))}")
    for name, rec in recorded["commands"].items():
        out = sent["commands"].get(name)
        if out is None:
            continue
        if rec["create"] != out["create"]:
            found.append(f"{name}: command line changed")
        rs, ss = rec["stdin"], out["stdin"]
        if rs is None or ss is None or "files" not in rs:
            if rs != ss:
                found.append(f"{name}: stdin changed")
            continue
        for path in set(rs["files"]) | set(ss.get("files", {})):
            if rs["files"].get(path) != ss.get("files", {}).get(path) and path != UNWRAP_CONF:
                found.append(f"{name}: {path} changed")
    for node, files in recorded["user_data"].items():
        now = sent["user_data"].get(node, {})
        for path in set(files) | set(now):
            if files.get(path) == now.get(path):
                continue
            if path == UNWRAP_CONF and path in files and path in now:
                continue
            if path == DATA_VOLUME_OVERRIDE and path not in files:
                continue
            found.append(f"user-data {node}: {path} changed")
    return found


def test_overlay_is_limited_to_the_declared_items(demo: DemoRun) -> None:
    plan = demo.report["plan"]
    assert len(plan["recorded"]["commands"]) >= 20  # the whole path: install, bootstrap, rolls, verification
    assert undeclared_differences(plan["recorded"], plan["sent"]) == []
    changes = demo.report["overlay"]["changes"]
    declared = {i["key"] for i in demo.report["overlay"]["declared"]}
    assert changes and all(set(c["item"].split("+")) <= declared for c in changes), changes
    # What the unwrap.conf changes add, line by line: the endpoint everywhere, credentials on EC2 only.
    kinds = {n: v["kind"] for n, v in demo.report["nodes"].items()}
    node_of = {c["name"]: c["node"] for c in demo.report["commands"]}
    for c in (c for c in changes if c["path"] == UNWRAP_CONF):
        added = [line[1:] for line in c["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
        removed = [line for line in c["diff"].splitlines() if line.startswith("-") and not line.startswith("---")]
        keys = {line.split("=", 1)[0].strip() for line in added if line.strip()}
        kind, where = c["target"].split(" ", 1)
        node = where if kind == "user-data" else node_of[where]
        expected = {"endpoint_url"} | ({"credentials_file", "profile"} if kinds.get(node) == "ec2" else set())
        assert removed == [] and keys == expected, (c["target"], added, removed)
    # The seeded user-data of each EC2 host is the recorded one plus exactly these changes.
    assert {c["target"] for c in changes if c["target"].startswith("user-data")} == {
        f"user-data {n}" for n, k in kinds.items() if k == "ec2"}


def test_the_overlay_checker_finds_an_undeclared_change(demo: DemoRun) -> None:
    """Control: the comparison above fails on a plan that differs beyond the overlay."""
    recorded = demo.report["plan"]["recorded"]
    sent = json.loads(json.dumps(demo.report["plan"]["sent"]))
    name = next(n for n, c in sent["commands"].items() if c["stdin"] and "files" in c["stdin"])
    sent["commands"][name]["create"] += " --extra"
    some_file = next(p for p in sent["commands"][name]["stdin"]["files"] if p != UNWRAP_CONF)
    sent["commands"][name]["stdin"]["files"][some_file]["sha256"] = "0" * 64
    node = next(iter(sent["user_data"]))
    sent["user_data"][node]["/etc/evil"] = {"sha256": "0" * 64, "mode": "644", "owner": "root:root"}
    found = undeclared_differences(recorded, sent)
    assert f"{name}: command line changed" in found
    assert f"{name}: {some_file} changed" in found
    assert f"user-data {node}: /etc/evil changed" in found


# --------------------------------------------------------------------------
# Secrets: the on-prem secret access key reached the node, and nothing else
# --------------------------------------------------------------------------


def credentials_secret(demo: DemoRun, node: str) -> str:
    mode = demo.node_exec(node, "stat", "-c", "%a %U:%G", CREDENTIALS).stdout.strip()
    assert mode == "600 root:root", f"{node}: {CREDENTIALS} is {mode}"
    conf = configparser.ConfigParser()
    conf.read_string(demo.node_exec(node, "cat", CREDENTIALS).stdout)
    [profile] = conf.sections()
    secret = conf[profile]["aws_secret_access_key"]
    assert len(secret) >= 30
    return secret


def places_holding(needle: str, haystacks: dict[str, str]) -> list[str]:
    variants = {needle, base64.b64encode(needle.encode()).decode()}
    return [where for where, text in haystacks.items() if any(v in text for v in variants)]


def everything_the_run_showed(demo: DemoRun) -> dict[str, str]:
    places = {
        "demo stdout": demo.stdout,
        "demo stderr": demo.stderr,
        "report": demo.report_text,
        "overlay diff": demo.overlay_diff,
    }
    for c in demo.report["commands"]:
        places[f"{c['name']} command line"] = c["create"]
        places[f"{c['name']} stdout"] = c["stdout"]
        places[f"{c['name']} stderr"] = c["stderr"]
    return places


def test_onprem_credentials_never_in_a_command_line_or_output(demo: DemoRun) -> None:
    onprem = [n for n, v in demo.report["nodes"].items() if v["kind"] == "onprem"]
    ec2 = [n for n, v in demo.report["nodes"].items() if v["kind"] == "ec2"]
    places = everything_the_run_showed(demo)
    assert len(places) > 50
    for node in onprem + ec2:
        secret = credentials_secret(demo, node)
        assert places_holding(secret, places) == [], node
        # Control: the search finds the secret where it is, in either form.
        planted = {**places, "control": f"xx{secret}yy", "control-b64": base64.b64encode(secret.encode()).decode()}
        assert places_holding(secret, planted) == ["control", "control-b64"]


def test_no_secret_on_a_unit_environment(demo: DemoRun) -> None:
    """``systemctl show`` (readable by every local user) holds no credential on any node."""
    for node in demo.report["nodes"]:
        secret = credentials_secret(demo, node)
        for unit in ("mariadb.service", "mariadb-kms-unwrap.service"):
            shown = demo.node_exec(node, "systemctl", "show", "--all", unit).stdout
            assert "\nEnvironment=" in shown  # control: the property is there to look at
            assert secret not in shown, (node, unit)


# --------------------------------------------------------------------------
# The replay itself: pinned host keys, failures named
# --------------------------------------------------------------------------


def _command(demo: DemoRun, node: str, create: str, host_key: str | None) -> Any:
    from rehearsal.plan import RecordedCommand

    address = demo.report["nodes"][node]["address"]
    login = "admin" if demo.report["nodes"][node]["kind"] == "ec2" else "deploy"
    return RecordedCommand(
        name=f"test-{node}", urn="", create=create, stdin=None, stdin_secret=False, host=address, port=22,
        user=login, host_key=host_key, private_key=demo.login_key.read_text(), dial_error_limit=1,
        per_dial_timeout=10, environment={}, after=(), secret_output=False,
    )


def _pinned(demo: DemoRun, node: str) -> str:
    address = demo.report["nodes"][node]["address"]
    line = next(line for line in demo.known_hosts.read_text().splitlines() if line.split()[0] == address)
    return " ".join(line.split()[1:3])


def test_replay_logs_in_only_with_the_pinned_host_key(demo: DemoRun) -> None:
    from rehearsal.replay import Sent, run_one
    from rehearsal.stack import new_ed25519

    stop = threading.Event()
    node = "aws-a"
    good = run_one(Sent(_command(demo, node, "sudo -n true", _pinned(demo, node)), node, None), stop, 60)
    assert good.ok, good.error or good.stderr
    other = new_ed25519("not-the-host").public_line
    bad = run_one(Sent(_command(demo, node, "sudo -n true", other), node, None), stop, 60)
    assert bad.rc is None and bad.error is not None and "not the pinned" in bad.error


def test_a_failed_command_stops_the_replay_and_names_node_and_step(demo: DemoRun) -> None:
    from dataclasses import replace

    from rehearsal.replay import Sent, replay

    node = "dc-1"
    pinned = _pinned(demo, node)
    failing = replace(_command(demo, node, "sudo -n sh -c 'echo why >&2; exit 7'", pinned), name="step-that-fails")
    after = replace(_command(demo, node, "sudo -n true", pinned), name="step-after", after=("step-that-fails",))
    result = replay([Sent(failing, node, None), Sent(after, node, None)], timeout=60)
    assert result.failed is not None
    assert (result.failed.node, result.failed.name, result.failed.rc) == (node, "step-that-fails", 7)
    assert result.failed.stderr == "why"
    [skipped] = [o for o in result.outcomes if o.name == "step-after"]
    assert skipped.rc is None and "skipped" in (skipped.error or "")
