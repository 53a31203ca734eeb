"""The testbed itself: real hosts that boot, talk only to each other, install from the local repository,
keep their data across a restart, and leave nothing behind."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from rehearsal.kms_server import KmsServer
from rehearsal.testbed import Settings, Testbed, leftovers

REPO_ROOT = Path(__file__).resolve().parents[2]
# A second, throwaway testbed for the teardown tests, apart from the session's (other prefix and subnet).
SCRATCH = Settings(prefix="mkt", subnet=ipaddress.IPv4Network("10.231.1.0/24"))


def _tcp_check(address: str, port: int) -> str:
    return f"import socket; socket.create_connection(({address!r}, {port}), timeout=5).close()"


def test_hosts_boot_with_systemd_running(testbed: Testbed) -> None:
    machine_ids = set()
    for name in testbed.hosts:
        host = testbed.hosts[name]
        assert host.state == "running", f"{name} booted {host.state}"
        assert testbed.exec(name, ["ps", "-p", "1", "-o", "comm="]).stdout.strip() == "systemd"
        assert testbed.exec(name, ["hostname"]).stdout.strip() == name
        assert testbed.exec(name, ["systemctl", "is-active", "ssh.service"]).stdout.strip() == "active"
        machine_id = testbed.read_file(name, "/etc/machine-id").decode().strip()
        assert len(machine_id) == 32
        machine_ids.add(machine_id)
    assert len(machine_ids) == len(testbed.hosts) == 3, "hosts must not share a machine-id"


def test_cloud_init_ran_from_the_nocloud_seed(testbed: Testbed) -> None:
    result = testbed.exec("node1", ["cloud-init", "status", "--long"])
    assert "status: done" in result.stdout
    assert "DataSourceNoCloud" in result.stdout, result.stdout


def test_each_host_has_its_own_address_and_reaches_only_the_testbed(testbed: Testbed) -> None:
    repo_port = testbed.settings.repo_port
    for name in testbed.hosts:
        own = testbed.hosts[name].address
        addresses = testbed.exec(name, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f"inet {own}/" in addresses
        for other in testbed.hosts:
            other_address = testbed.hosts[other].address
            assert testbed.exec(name, ["getent", "hosts", other]).stdout.split()[0] == other_address
            reached = testbed.exec(name, ["python3", "-c", _tcp_check(other_address, 22)])
            assert reached.rc == 0, f"{name} cannot reach {other} ({other_address}:22): {reached.stderr}"
        reached = testbed.exec(name, ["python3", "-c", _tcp_check(testbed.bridge_address, repo_port)])
        assert reached.rc == 0, f"{name} cannot reach the bridge: {reached.stderr}"
        # No default route: nothing outside the testbed's subnet is reachable (`ip route get` sends nothing).
        assert "default" not in testbed.exec(name, ["ip", "route"]).stdout
        outside = testbed.exec(name, ["ip", "route", "get", "198.51.100.1"])
        assert outside.rc != 0 and "unreachable" in outside.stderr


def test_sshd_accepts_an_injected_key_and_answers_with_the_hosts_own_key(testbed: Testbed) -> None:
    client_key = paramiko.ECDSAKey.generate()
    stranger_key = paramiko.ECDSAKey.generate()
    host_keys = {}
    for name in testbed.hosts:
        testbed.exec(name, ["install", "-d", "-m", "700", "/root/.ssh"], check=True)
        testbed.put_file(
            name, "/root/.ssh/authorized_keys", f"{client_key.get_name()} {client_key.get_base64()}\n", 0o600
        )
        mode = testbed.exec(name, ["stat", "-c", "%a %U", "/root/.ssh/authorized_keys"]).stdout.split()
        assert mode == ["600", "root"]
        with paramiko.Transport((testbed.hosts[name].address, 22)) as transport:
            transport.start_client(timeout=10)
            server_key = transport.get_remote_server_key()
            key_type = server_key.get_name().removeprefix("ssh-").split("-")[0]
            on_host = testbed.read_file(name, f"/etc/ssh/ssh_host_{key_type}_key.pub").decode().split()
            assert on_host[:2] == [server_key.get_name(), server_key.get_base64()]
            host_keys[name] = server_key.get_base64()
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_publickey("root", stranger_key)  # control: only the injected key is let in
            transport.auth_publickey("root", client_key)
            channel = transport.open_session()
            channel.exec_command("hostname")
            assert channel.makefile("rb").read().decode().strip() == name
            assert channel.recv_exit_status() == 0
    assert len(set(host_keys.values())) == len(testbed.hosts), "each host must generate its own host keys"


def test_apt_installs_from_the_local_repository_without_internet(testbed: Testbed) -> None:
    name = "node2"
    update = testbed.exec(name, ["apt-get", "-q", "update"], timeout=120)
    assert update.rc == 0, update.stdout + update.stderr
    assert "Err:" not in update.stdout and "W:" not in update.stderr, update.stdout + update.stderr
    install = testbed.exec(name, ["apt-get", "-q", "-y", "install", "--reinstall", "socat"], timeout=300)
    assert install.rc == 0, install.stdout + install.stderr
    repo_url = f"http://{testbed.bridge_address}:{testbed.settings.repo_port}"
    assert re.search(rf"^Get:\d+ {re.escape(repo_url)}/? \./ socat ", install.stdout, re.M), install.stdout
    assert testbed.exec(name, ["socat", "-V"]).rc == 0
    sources = testbed.exec(name, ["apt-get", "indextargets", "--format", "$(URI)"]).stdout.split()
    assert sources and all(uri.startswith(repo_url + "/") for uri in sources), sources


def test_kms_emulator_answers_hosts_and_can_be_cut_off_from_one(testbed: Testbed, kms: KmsServer) -> None:
    key_id = kms.client().create_key(Description="testbed reachability")["KeyMetadata"]["KeyId"]
    # moto routes a request by the service named in its credential scope and checks no signature.
    scope = f"Credential=testing/20250101/{kms.region}/kms/aws4_request, SignedHeaders=host, Signature=0"
    list_keys = [
        "curl", "-sS", "--max-time", "10", "-X", "POST", kms.endpoint_url + "/",
        "-H", "Content-Type: application/x-amz-json-1.1", "-H", "X-Amz-Target: TrentService.ListKeys",
        "-H", f"Authorization: AWS4-HMAC-SHA256 {scope}", "-d", "{}",
    ]  # fmt: skip
    answer = testbed.exec("node1", list_keys)
    assert answer.rc == 0, answer.stderr
    assert key_id in [k["KeyId"] for k in json.loads(answer.stdout)["Keys"]]
    with testbed.unreachable("node1", kms.address):
        cut = testbed.exec("node1", list_keys)
        assert cut.rc != 0 and cut.stdout == ""
        assert testbed.exec("node2", list_keys).rc == 0, "only node1 is cut off"
    assert testbed.exec("node1", list_keys).rc == 0


def test_restart_keeps_the_hosts_data_and_identity(testbed: Testbed) -> None:
    name = "node3"
    token = secrets.token_hex(16)
    testbed.put_file(name, "/var/lib/restart-marker", token, 0o600)
    before = {path: testbed.read_file(name, path) for path in ("/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub")}
    old_leader = testbed.hosts[name].leader_pid
    assert old_leader is not None
    testbed.stop(name)
    assert not Path(f"/proc/{old_leader}").exists()
    assert (testbed.hosts[name].upper / "var/lib/restart-marker").read_text() == token
    assert testbed.start(name) == "running"
    assert testbed.hosts[name].leader_pid != old_leader
    assert testbed.read_file(name, "/var/lib/restart-marker").decode() == token
    for path, content in before.items():
        assert testbed.read_file(name, path) == content, f"{path} changed across a restart"


def test_hosts_never_write_the_cached_rootfs(testbed: Testbed) -> None:
    assert testbed.rootfs is not None
    marker = testbed.rootfs / ".mariadb-kms-complete"
    changed = subprocess.run(
        ["find", str(testbed.rootfs), "-xdev", "-newer", str(marker), "-print", "-quit"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert changed == "", f"the shared rootfs was modified: {changed}"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MARIADB_KMS_TESTBED_PREFIX": SCRATCH.prefix,
        "MARIADB_KMS_TESTBED_SUBNET": str(SCRATCH.subnet),
    }
    return subprocess.run(
        [sys.executable, "-m", "rehearsal.testbed", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _assert_nothing_left(settings: Settings) -> None:
    assert {k: v for k, v in leftovers(settings).items() if v} == {}
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"{settings.prefix}-" not in netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert f" {settings.bridge}:" not in links and f" {settings.prefix}v1@" not in links
    ours = (
        # With the separator: another testbed's prefix may start with this one's (mkt, mktls).
        (str(settings.run_dir()) + "/").encode(),
        f"--machine={settings.prefix}-".encode(),
        settings.bridge_address.encode(),
    )
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert not any(mark in cmdline for mark in ours), f"pid {pid} still runs: {cmdline!r}"


def test_down_removes_a_testbed_left_running_by_another_process(testbed: Testbed) -> None:
    # (`testbed` only for its skip/fail rule: this test makes its own, apart from the session's.)
    up = _cli("up", "1")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert "node1\t10.231.1.11\trunning" in up.stdout
        state = json.loads(_cli("status").stdout)
        assert state["hosts"]["node1"]["system"] == "running"
        assert state["resources"]["nspawn"] and state["resources"]["netns"] == ["mkt-node1"]
    finally:
        down = _cli("down")
    assert down.returncode == 0, down.stderr[-3000:]
    _assert_nothing_left(SCRATCH)
    again = _cli("down")
    assert again.returncode == 0 and again.stderr == "", "down twice is a no-op"


def test_context_manager_teardown_leaves_nothing_even_after_a_failure(testbed: Testbed) -> None:
    with pytest.raises(RuntimeError, match="simulated failure"), Testbed(["solo"], settings=SCRATCH) as bed:
        bed.boot()
        assert bed.exec("solo", ["systemctl", "is-system-running"]).stdout.strip() == "running"
        raise RuntimeError("simulated failure")
    _assert_nothing_left(SCRATCH)


def test_a_unit_that_failed_once_is_retried_and_a_broken_one_still_fails(testbed: Testbed) -> None:
    host = testbed.hosts["node3"]
    # Fails on its first run only, like the oneshots seen failing once under load.
    flaky = (
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sh -c 'test -e /run/flaky-ran || { touch /run/flaky-ran; exit 1; }'\n"
    )
    broken = "[Service]\nType=oneshot\nExecStart=/bin/false\n"
    testbed.put_file("node3", "/etc/systemd/system/flaky-once.service", flaky.encode(), mode=0o644)
    testbed.put_file("node3", "/etc/systemd/system/always-broken.service", broken.encode(), mode=0o644)
    try:
        testbed.exec("node3", ["systemctl", "daemon-reload"], check=True)
        testbed.exec("node3", ["systemctl", "start", "flaky-once.service"])
        assert testbed.exec("node3", ["systemctl", "is-system-running"]).stdout.strip() == "degraded"
        assert testbed._retry_failed_units(host) == "running"
        assert testbed.exec("node3", ["systemctl", "is-active", "flaky-once.service"]).stdout.strip() == "active"
        # Control: a unit that fails again keeps the host degraded.
        testbed.exec("node3", ["systemctl", "start", "always-broken.service"])
        assert testbed._retry_failed_units(host) == "degraded"
    finally:
        testbed.exec("node3", "systemctl stop flaky-once.service; rm -f /etc/systemd/system/flaky-once.service "
                     "/etc/systemd/system/always-broken.service /run/flaky-ran; systemctl daemon-reload; "
                     "systemctl reset-failed")
    assert testbed.exec("node3", ["systemctl", "is-system-running"]).stdout.strip() == "running"
