"""The SSH path as data (components/plan/), and the node-side scripts it runs, on this machine.

The put script and mariadb-kms-roll / mariadb-kms-bootstrap run for real
here: the put script as root into a scratch directory, the node scripts
against a scratch root with stand-ins for systemctl, the mariadb client,
galera_new_cluster and the unwrap tool (they model the server's state in
files). The bootstrap's probe of other members talks to loopback only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mocks import PLANTED_ACCESS_KEY_SECRET, full_config
from remote_plan import decode_put

from components.config import ClusterConfig, parse_config
from components.mycnf import DATADIR_CONF_PATH, GALERA_PORT
from components.node_files import (
    BLOB_PATH,
    CREDENTIALS_PATH,
    MYCNF_ENCRYPTION_PATH,
    MYCNF_NODE_PATH,
    UNWRAP_CONF_PATH,
)
from components.plan.files import config_files, credentials_files, galera_cluster_address, seed_files
from components.plan.order import bootstrap_step, node_plan, rolling_order, verify_step
from components.plan.steps import (
    BOOTSTRAP,
    BOOTSTRAP_TIMEOUT_S,
    FIRST_BOOT,
    FIRST_BOOT_STEP,
    TLS_TOOL,
    VERIFY,
    VERIFY_WAIT_S,
    FileSpec,
    Phase,
    Stdin,
    Trigger,
    files_digest,
    put_command,
    put_payload,
)

REPO = Path(__file__).resolve().parents[2]
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/0f0e0d0c-0b0a-4909-8887-868584838281"
BLOB_B64 = "AQICAHh0ZXN0LWJsb2ItYnl0ZXM="
IS_ROOT = os.geteuid() == 0


def cluster(**changes: Any) -> ClusterConfig:
    return parse_config(full_config(**changes), stack="dev", region="eu-west-1")


def node(cfg: ClusterConfig, name: str) -> Any:
    [n] = [n for n in cfg.nodes if n.name == name]
    return n


# -- the plan ----------------------------------------------------------------


def test_onprem_plan_steps_and_order() -> None:
    cfg = cluster()
    plan = node_plan(node(cfg, "dc-1"), cfg)
    assert [s.key for s in plan.steps] == [
        "node-files", "login-keys", "seed", "credentials", "install", "tls", "tls-reload", "config", "escrow",
        "member-firewall", "preflight", "roll",
    ]
    assert plan.step("install").after == ("node-files", "seed", "credentials")
    assert plan.step("login-keys").after == ("node-files",)
    # The certificates after install (the key belongs to mysql) and before the config that names them.
    assert plan.step("tls").after == ("install",)
    assert plan.step("tls-reload").after == ("tls",)
    assert plan.step("config").after == ("install", "tls-reload")
    assert set(plan.step("preflight").after) == {"config", "credentials"}
    # The allowlist before the roll: the node never answers on its Galera ports without it.
    assert plan.step("member-firewall").after == ("config",)
    assert plan.step("roll").after == ("preflight", "member-firewall")
    assert [s.key for s in plan.phase(Phase.INSTALL)] == ["node-files", "login-keys", "seed", "credentials", "install"]
    assert [s.key for s in plan.phase(Phase.CONFIGURE)] == [
        "tls", "tls-reload", "config", "escrow", "member-firewall", "preflight",
    ]
    assert [s.key for s in plan.phase(Phase.ROLL)] == ["roll"]


def test_ec2_plan_waits_for_first_boot_and_has_no_credentials_step() -> None:
    cfg = cluster()
    plan = node_plan(node(cfg, "aws-a"), cfg)
    assert [s.key for s in plan.steps] == [
        "first-boot", "node-files", "login-keys", "seed", "install", "tls", "tls-reload", "config", "escrow",
        "member-firewall", "preflight", "roll",
    ]
    assert plan.step("first-boot").create == FIRST_BOOT_STEP
    assert plan.step("node-files").after == plan.step("seed").after == ("first-boot",)
    assert plan.step("install").after == ("node-files", "seed")
    assert all(s.stdin is not Stdin.CREDENTIALS for s in plan.steps)
    assert Trigger.CREDENTIALS not in plan.step("roll").triggers


@pytest.mark.parametrize("name", ["aws-a", "dc-1"])
def test_every_step_is_self_contained(name: str) -> None:
    cfg = cluster()
    plan = node_plan(node(cfg, name), cfg)
    seen: set[str] = set()
    for step in plan.steps:
        # Each runs as root through sudo without a password prompt, and waits only for earlier steps.
        assert step.create.startswith("sudo -n "), step.key
        assert set(step.after) <= seen, step.key
        seen.add(step.key)
        # Every step a later change must reach again is tied to the machine: a new machine runs it.
        assert Trigger.IDENTITY in step.triggers, step.key


def test_only_the_credentials_and_tls_steps_read_a_secret_and_every_key_user_is_marked() -> None:
    cfg = cluster()
    plan = node_plan(node(cfg, "dc-1"), cfg)
    assert [s.key for s in plan.steps if s.stdin is Stdin.CREDENTIALS] == ["credentials"]
    assert [s.key for s in plan.steps if s.stdin is Stdin.TLS_FILES] == ["tls"]
    # Installing, the pre-flight and the restart unwrap the data key, the tls step reads the node's private key:
    # their output is kept secret.
    assert {s.key for s in plan.steps if s.touches_secret} == {"credentials", "install", "tls", "preflight", "roll"}
    assert bootstrap_step().touches_secret


def test_tls_steps_reload_on_a_renewal_and_vanish_when_every_channel_is_off() -> None:
    cfg = cluster()
    plan = node_plan(node(cfg, "dc-1"), cfg)
    reload = plan.step("tls-reload")
    assert reload.create == f"sudo -n {TLS_TOOL} reload"
    assert set(reload.triggers) == {Trigger.IDENTITY, Trigger.TLS}
    assert plan.step("tls").create == put_command()
    # A renewal is no restart: the roll's triggers do not name the certificates.
    assert Trigger.TLS not in plan.step("roll").triggers
    off = cluster(tlsReplication=False, tlsSst=False, tlsClients=False, requireSecureTransport=False)
    plain = node_plan(node(off, "dc-1"), off)
    assert not {"tls", "tls-reload"} & {s.key for s in plain.steps}
    assert plain.step("config").after == ("install",)
    # One channel on is enough for certificates.
    sst_only = cluster(tlsReplication=False, tlsClients=False, requireSecureTransport=False)
    assert "tls" in {s.key for s in node_plan(node(sst_only, "dc-1"), sst_only).steps}


def test_rolling_order_puts_the_bootstrap_node_first() -> None:
    assert [n.name for n in rolling_order(cluster())] == ["aws-a", "aws-b", "dc-1"]
    assert [n.name for n in rolling_order(cluster(bootstrapNode="dc-1"))] == ["dc-1", "aws-a", "aws-b"]


def test_bootstrap_step_is_the_same_whatever_the_cluster() -> None:
    step = bootstrap_step()
    assert step.triggers == () and step.stdin is Stdin.NONE
    assert step.create == f"sudo -n {BOOTSTRAP} --timeout {BOOTSTRAP_TIMEOUT_S}"


def test_verify_step() -> None:
    cfg = cluster()
    ec2 = verify_step(node(cfg, "aws-a"), cfg, expect_size=3)
    onprem = verify_step(node(cfg, "dc-1"), cfg, expect_size=3)
    assert ec2.create.startswith(f"sudo -n {FIRST_BOOT} --check >/dev/null && sudo -n ")
    assert onprem.create == (
        f"sudo -n {VERIFY} --canary --wait {VERIFY_WAIT_S} --datadir-encryption fscrypt --expect-size 3"
    )
    assert " --datadir-encryption ebs " in ec2.create  # EBS encrypts the volume with the cluster's key
    plain = cluster(onPremDatadirEncryption="none")
    assert " --datadir-encryption none " in verify_step(node(plain, "dc-1"), plain, expect_size=3).create
    assert Trigger.EVERY_UP not in onprem.triggers
    assert {Trigger.CONFIG, Trigger.MEMBERS} <= set(onprem.triggers)
    every = verify_step(node(cluster(verifyOnEveryUp=True), "dc-1"), cluster(verifyOnEveryUp=True), expect_size=3)
    assert Trigger.EVERY_UP in every.triggers
    logs = cluster(generalLog=True)
    assert verify_step(node(logs, "dc-1"), logs, expect_size=3).create.endswith(" --allow-query-logs")
    assert Trigger.TLS in onprem.triggers


def test_verify_step_accepts_plaintext_only_on_channels_config_turned_off() -> None:
    cfg = cluster()
    assert "--tls-off" not in verify_step(node(cfg, "dc-1"), cfg, expect_size=3).create
    relaxed = cluster(requireSecureTransport=False, tlsSst=False)
    create = verify_step(node(relaxed, "dc-1"), relaxed, expect_size=3).create
    assert create.endswith(" --tls-off sst --tls-off secure-transport")
    off = cluster(tlsReplication=False, tlsSst=False, tlsClients=False, requireSecureTransport=False)
    step = verify_step(node(off, "dc-1"), off, expect_size=3)
    assert step.create.count("--tls-off") == 4 and Trigger.TLS not in step.triggers


def test_aws_plugin_mode_installs_the_plugin_and_one_credentials_file() -> None:
    cfg = cluster(keyManagement="aws-plugin", awsPluginSource="/opt/mariadb plugins/aws_key_management.so",
                  onPremDatadirEncryption="luks")
    install = node_plan(node(cfg, "dc-1"), cfg).step("install").create
    assert install.endswith("--aws-plugin-source '/opt/mariadb plugins/aws_key_management.so'")
    files = credentials_files(cfg, access_key_id="AKIAEXAMPLE", secret_access_key=PLANTED_ACCESS_KEY_SECRET)
    assert set(files) == {CREDENTIALS_PATH}  # systemd hands the same file to mariadbd (LoadCredential=)
    assert all(mode == 0o600 and owner == "root:root" for _, mode, owner in files.values())
    assert set(credentials_files(cluster(), access_key_id="A", secret_access_key="B")) == {CREDENTIALS_PATH}


# -- what the steps install --------------------------------------------------


def test_config_files_of_a_node() -> None:
    cfg = cluster()
    members = ["10.20.1.5", "10.20.2.10", "192.0.2.21"]
    files = config_files(
        node(cfg, "dc-1"), cfg, key_arn=KEY_ARN, blob_b64=BLOB_B64, node_address="192.0.2.21",
        member_addresses=members,
    )
    assert set(files) == {UNWRAP_CONF_PATH, BLOB_PATH, MYCNF_ENCRYPTION_PATH, MYCNF_NODE_PATH}
    assert files[BLOB_PATH] == (b"\x01\x02\x02\x00xtest-blob-bytes", 0o600, "root:root")
    unwrap_conf = str(files[UNWRAP_CONF_PATH][0])
    assert f"credentials_file = {CREDENTIALS_PATH}" in unwrap_conf and KEY_ARN in unwrap_conf
    node_cnf = str(files[MYCNF_NODE_PATH][0])
    assert files[MYCNF_NODE_PATH][1:] == (0o644, "root:root")
    # The output the program exports is exactly what every node's config carries.
    [line] = [ln for ln in node_cnf.splitlines() if ln.startswith("wsrep_cluster_address")]
    assert line.split(" = ", 1)[1] == galera_cluster_address(members, GALERA_PORT)
    ec2 = config_files(
        node(cfg, "aws-a"), cfg, key_arn=KEY_ARN, blob_b64=BLOB_B64, node_address="10.20.1.5",
        member_addresses=members,
    )
    assert "credentials_file" not in str(ec2[UNWRAP_CONF_PATH][0])


def test_seed_files_hold_nothing_about_membership() -> None:
    cfg = cluster()
    seed = seed_files(cfg, key_arn=KEY_ARN, blob_b64=BLOB_B64, on_premises=True)
    assert set(seed) == {UNWRAP_CONF_PATH, BLOB_PATH, MYCNF_ENCRYPTION_PATH, DATADIR_CONF_PATH}
    assert str(seed[DATADIR_CONF_PATH][0]).splitlines()[-1] == "encryption=fscrypt"
    luks = cluster(onPremDatadirEncryption="luks")
    on_prem = seed_files(luks, key_arn=KEY_ARN, blob_b64=BLOB_B64, on_premises=True)[DATADIR_CONF_PATH]
    ec2 = seed_files(luks, key_arn=KEY_ARN, blob_b64=BLOB_B64, on_premises=False)[DATADIR_CONF_PATH]
    assert str(on_prem[0]).splitlines()[-1] == "encryption=luks" and on_prem[1:] == (0o644, "root:root")
    assert str(ec2[0]).splitlines()[-1] == "encryption=none"  # EBS encrypts below the node
    assert "192.0.2.21" not in "".join(str(c) for c, _, _ in seed.values())


def test_galera_cluster_address_brackets_ipv6() -> None:
    assert galera_cluster_address(["10.0.0.1", "fd00::7"], 4567) == "gcomm://10.0.0.1:4567,[fd00::7]:4567"


def test_put_payload_is_deterministic_and_carries_modes_and_owners() -> None:
    files: dict[str, FileSpec] = {
        "/etc/mariadb-kms/b": ("bee\n", 0o600, "root:root"),
        "/usr/local/sbin/a": (b"#!/bin/sh\n", 0o755, "root:root"),
    }
    payload = put_payload(files)
    assert payload == put_payload(dict(reversed(files.items())))
    assert decode_put(payload) == {
        "/etc/mariadb-kms/b": (b"bee\n", 0o600, "root:root"),
        "/usr/local/sbin/a": (b"#!/bin/sh\n", 0o755, "root:root"),
    }
    changed = {**files, "/etc/mariadb-kms/b": ("bee\n", 0o644, "root:root")}
    assert put_payload(changed) != payload
    assert files_digest(changed) != files_digest(files)
    assert files_digest({**files, "/etc/mariadb-kms/b": ("bee\n", 0o600, "root:mysql")}) != files_digest(files)
    assert files_digest(dict(reversed(files.items()))) == files_digest(files)


@pytest.mark.parametrize(
    ("dest", "owner"), [("etc/relative", "root:root"), ("/etc/../shadow", "root:root"), ("/etc/x", "root")]
)
def test_put_payload_refuses_bad_destinations_and_owners(dest: str, owner: str) -> None:
    with pytest.raises(ValueError):
        put_payload({dest: ("x", 0o644, owner)})


# -- the put script, run for real ---------------------------------------------


def run_put(payload: str, *, if_missing: bool = False, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    command = put_command(if_missing=if_missing)
    assert command.startswith("sudo -n ")
    # As root already, so the same command line without sudo (which may not be installed here).
    return subprocess.run(
        ["/bin/sh", "-c", f"umask {umask:03o}; {command.removeprefix('sudo -n ')}"],
        input=payload, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("the put script keeps owners only as root (it always runs as root through sudo)")
    yield tmp_path


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_put_script_installs_with_explicit_modes_whatever_the_umask(scratch: Path, umask: int) -> None:
    secret_file = scratch / "etc/mariadb-kms/aws-credentials"
    files: dict[str, FileSpec] = {
        str(secret_file): (f"secret = {PLANTED_ACCESS_KEY_SECRET}\n", 0o600, "root:root"),
        str(scratch / "usr/local/sbin/tool"): ("#!/bin/sh\necho hi\n", 0o755, "root:root"),
        str(scratch / "etc/mysql/x.cnf"): ("[mariadb]\n", 0o644, "root:root"),
    }
    result = run_put(put_payload(files), umask=umask)
    assert result.returncode == 0, result.stderr
    for dest, (content, mode, _owner) in files.items():
        st = os.stat(dest)
        assert stat.S_IMODE(st.st_mode) == mode, dest
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert Path(dest).read_text() == content
    # Directories it had to make are traversable, not the umask's 0700 (nor 0777).
    assert stat.S_IMODE(os.stat(scratch / "etc/mariadb-kms").st_mode) == 0o755
    # It says what it did by path, never by content.
    assert f"installed {secret_file}" in result.stdout
    assert PLANTED_ACCESS_KEY_SECRET not in result.stdout + result.stderr
    assert not list(scratch.rglob("*.mariadb-kms-new"))
    assert not list(Path("/run").glob("mariadb-kms-put.*")), "the staging directory was left behind"


def test_put_script_is_idempotent_and_replaces_changed_files(scratch: Path) -> None:
    dest = scratch / "etc/unwrap.conf"
    files: dict[str, FileSpec] = {str(dest): ("one\n", 0o644, "root:root")}
    assert run_put(put_payload(files)).returncode == 0
    inode = dest.stat().st_ino
    again = run_put(put_payload(files))
    assert again.returncode == 0 and f"unchanged {dest}" in again.stdout
    assert dest.stat().st_ino == inode
    # A changed mode alone is a change (CopyToRemote would have left the umask's mode).
    os.chmod(dest, 0o640)
    fixed = run_put(put_payload(files))
    assert f"installed {dest}" in fixed.stdout and stat.S_IMODE(dest.stat().st_mode) == 0o644
    # New content replaces the file by rename: a reader has the old inode or the new one, never half.
    inode = dest.stat().st_ino
    changed = run_put(put_payload({str(dest): ("two\n", 0o644, "root:root")}))
    assert changed.returncode == 0 and dest.read_text() == "two\n" and dest.stat().st_ino != inode


def test_put_script_if_missing_keeps_what_is_there(scratch: Path) -> None:
    kept, new = scratch / "etc/kept.cnf", scratch / "etc/new.cnf"
    kept.parent.mkdir(parents=True)
    kept.write_text("edited by the config step\n")
    files: dict[str, FileSpec] = {
        str(kept): ("seed\n", 0o644, "root:root"),
        str(new): ("seed\n", 0o644, "root:root"),
    }
    result = run_put(put_payload(files), if_missing=True)
    assert result.returncode == 0, result.stderr
    assert kept.read_text() == "edited by the config step\n" and f"kept {kept}" in result.stdout
    assert new.read_text() == "seed\n"


def test_put_script_fails_when_a_directory_stands_at_a_destination(scratch: Path) -> None:
    # Plain `mv -f file dir` would move the file INTO the directory and the step would report success.
    dest = scratch / "etc/mysql/x.cnf"
    dest.mkdir(parents=True)
    result = run_put(put_payload({str(dest): ("[mariadb]\n", 0o644, "root:root")}))
    assert result.returncode != 0
    assert f"installed {dest}" not in result.stdout
    assert dest.is_dir() and not list(dest.iterdir())


def test_put_script_fails_on_a_corrupt_payload(scratch: Path) -> None:
    result = run_put("not base64 at all !!")
    assert result.returncode != 0


# -- mariadb-kms-roll and mariadb-kms-bootstrap, against stand-ins -------------

STUBS = {
    # The server's state lives in $STATE: active (yes/no), status (name<TAB>value lines),
    # on_start (the status a start leads to), and every call is logged.
    "systemctl": """
        echo "systemctl $*" >> "$STATE/log"
        case "$1" in
          is-active) [ "$(cat "$STATE/active")" = yes ] ;;
          start|restart) echo yes > "$STATE/active"; cp "$STATE/on_start" "$STATE/status" ;;
          stop) echo no > "$STATE/active"; : > "$STATE/status" ;;
          *) exit 0 ;;
        esac
    """,
    "mariadb": """
        [ "$(cat "$STATE/active")" = yes ] || { echo "ERROR 2002: Can't connect" >&2; exit 1; }
        query="${@: -1}"; name=${query#*LIKE \\'}; name=${name%\\'}
        awk -F '\\t' -v n="$name" '$1 == n { print $0 }' "$STATE/status"
    """,
    "galera_new_cluster": """
        echo "galera_new_cluster" >> "$STATE/log"
        echo yes > "$STATE/active"
        printf 'wsrep_cluster_status\\tPrimary\\nwsrep_local_state_comment\\tSynced\\nwsrep_cluster_size\\t1\\n' \\
            > "$STATE/status"
    """,
    # Exit statuses to return, one per call, from $STATE/unwrap_rc (last one repeats).
    "mariadb-kms-unwrap": """
        echo "unwrap $*" >> "$STATE/log"
        rc=$(head -n1 "$STATE/unwrap_rc")
        [ "$(wc -l < "$STATE/unwrap_rc")" -gt 1 ] && sed -i 1d "$STATE/unwrap_rc"
        exit "$rc"
    """,
}


def status_lines(size: int, state: str = "Synced", component: str = "Primary") -> str:
    return (
        f"wsrep_cluster_status\t{component}\nwsrep_local_state_comment\t{state}\nwsrep_cluster_size\t{size}\n"
    )


class FakeNode:
    """A scratch root with the node's files, the two scripts, and stand-ins that model the server."""

    def __init__(self, base: Path, members: list[str], self_address: str) -> None:
        self.root = base / "root"
        self.state = base / "state"
        self.bin = base / "bin"
        for d in (self.state, self.bin, self.root / "usr/local/sbin", self.root / "etc/mariadb-kms/node",
                  self.root / "etc/mysql/mariadb.conf.d"):
            d.mkdir(parents=True, exist_ok=True)
        for name, body in STUBS.items():
            target = self.root / "usr/local/sbin" / name if name == "mariadb-kms-unwrap" else self.bin / name
            target.write_text("#!/bin/bash\n" + textwrap.dedent(body))
            target.chmod(0o755)
        for script in ("mariadb-kms-roll", "mariadb-kms-bootstrap"):
            shutil.copy(REPO / "node" / script, self.root / "usr/local/sbin" / script)
        (self.root / "etc/mariadb-kms/node/MANIFEST").write_text(
            "# source dest mode owner modes\nmariadb-kms-roll /usr/local/sbin/mariadb-kms-roll 0755 root:root all\n"
        )
        (self.root / "etc/mariadb-kms/unwrap.conf").write_text("[unwrap]\nmode = kms-envelope\n")
        (self.root / "etc/mysql/mariadb.conf.d/90-mariadb-kms-encryption.cnf").write_text("[mariadb]\n")
        self.write_node_cnf(members, self_address)
        self.set(active=False, on_start=status_lines(len(members)), unwrap_rc="0")
        (self.state / "log").write_text("")

    def write_node_cnf(self, members: list[str], self_address: str) -> None:
        (self.root / "etc/mysql/mariadb.conf.d/91-mariadb-kms-node.cnf").write_text(
            "[mariadb]\n"
            f"wsrep_cluster_address = gcomm://{','.join(members)}\n"
            f"wsrep_node_address = {self_address}\n"
        )

    def set(self, *, active: bool | None = None, status: str | None = None, on_start: str | None = None,
            unwrap_rc: str | None = None) -> None:
        if active is not None:
            (self.state / "active").write_text("yes\n" if active else "no\n")
        if status is not None:
            (self.state / "status").write_text(status)
        elif not (self.state / "status").exists():
            (self.state / "status").write_text("")
        if on_start is not None:
            (self.state / "on_start").write_text(on_start)
        if unwrap_rc is not None:
            (self.state / "unwrap_rc").write_text(unwrap_rc.replace(" ", "\n") + "\n")

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "STATE": str(self.state),
            "MARIADB_KMS_TEST_ROOT": str(self.root),
            "MARIADB_KMS_POLL": "0.05",
            "MARIADB_KMS_PREFLIGHT_DELAY": "0",
            "MARIADB_KMS_PROBE_TIMEOUT": "1",
        }
        return subprocess.run(
            [str(self.root / "usr/local/sbin" / script), *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )

    def log(self) -> list[str]:
        return (self.state / "log").read_text().splitlines()

    def stamp(self) -> str | None:
        path = self.root / "var/lib/mariadb-kms/applied"
        return path.read_text().strip() if path.exists() else None


MEMBERS = ["127.0.0.2:4567", "127.0.0.3:4567", "127.0.0.4:4567"]


@pytest.fixture
def fake_node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path, MEMBERS, "127.0.0.2")


def test_roll_starts_a_stopped_node_which_joins(fake_node: FakeNode) -> None:
    result = fake_node.run("mariadb-kms-roll", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    log = fake_node.log()
    assert log.index("unwrap --check") < log.index("systemctl start --no-block mariadb")
    assert "galera_new_cluster" not in log
    assert fake_node.stamp()
    # Nothing changed since: a second run restarts nothing.
    again = fake_node.run("mariadb-kms-roll", "--timeout", "5")
    assert again.returncode == 0 and "nothing to restart" in again.stdout
    assert not [c for c in fake_node.log()[len(log):] if re.match(r"systemctl (re)?start", c)]


def test_roll_restarts_a_running_node_only_when_its_config_changed(fake_node: FakeNode) -> None:
    fake_node.set(active=True, status=status_lines(3))
    assert fake_node.run("mariadb-kms-roll", "--mark-applied").returncode == 0
    unchanged = fake_node.run("mariadb-kms-roll", "--timeout", "5")
    assert unchanged.returncode == 0 and "systemctl restart mariadb" not in fake_node.log()
    before = fake_node.stamp()
    fake_node.write_node_cnf(MEMBERS, "127.0.0.3")  # the member list alone restarts nothing (test_day2_members)
    changed = fake_node.run("mariadb-kms-roll", "--timeout", "5")
    assert changed.returncode == 0, changed.stderr
    log = fake_node.log()
    assert log.index("unwrap --check") < log.index("systemctl restart mariadb")
    assert fake_node.stamp() != before


def test_roll_waits_until_the_cluster_is_back_to_its_size(fake_node: FakeNode) -> None:
    fake_node.set(active=True, status=status_lines(3), on_start=status_lines(2))
    result = fake_node.run("mariadb-kms-roll", "--timeout", "1")
    # After the restart the component has 2 of 3: not back, so the roll fails rather than go on.
    assert result.returncode != 0
    assert "not Synced after 1s" in result.stderr and "wanted >= 3" in result.stderr
    assert fake_node.stamp() is None


def test_preflight_retries_an_unreachable_kms_then_passes(fake_node: FakeNode) -> None:
    # A new access key is waited out inside the unwrap (its one window), not here.
    fake_node.set(unwrap_rc="10 11 0")  # unreachable, then throttled
    result = fake_node.run("mariadb-kms-roll", "--preflight")
    assert result.returncode == 0, result.stderr
    assert fake_node.log().count("unwrap --check") == 3


# invalid ciphertext, disabled key, config, access denied, credentials still unrecognised after the window
@pytest.mark.parametrize("rc", ["15", "13", "18", "12", "22"])
def test_preflight_fails_at_once_on_causes_a_retry_cannot_fix(fake_node: FakeNode, rc: str) -> None:
    fake_node.set(active=True, status=status_lines(3), unwrap_rc=rc)
    fake_node.write_node_cnf([*MEMBERS, "127.0.0.5:4567"], "127.0.0.2")  # a change to apply
    result = fake_node.run("mariadb-kms-roll", "--timeout", "5")
    assert result.returncode != 0 and f"exit {rc}" in result.stderr
    assert fake_node.log().count("unwrap --check") == 1
    # The node keeps running on its old config.
    assert not [c for c in fake_node.log() if "restart" in c or "stop" in c]


def test_preflight_gives_up_after_its_attempts(fake_node: FakeNode) -> None:
    fake_node.set(unwrap_rc="10")
    result = subprocess.run(
        [str(fake_node.root / "usr/local/sbin/mariadb-kms-roll"), "--preflight"],
        env={"PATH": f"{fake_node.bin}:/usr/bin:/bin", "STATE": str(fake_node.state),
             "MARIADB_KMS_TEST_ROOT": str(fake_node.root), "MARIADB_KMS_PREFLIGHT_DELAY": "0",
             "MARIADB_KMS_PREFLIGHT_ATTEMPTS": "4"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0 and "attempt 4/4" in result.stderr
    assert fake_node.log().count("unwrap --check") == 4


def test_roll_refuses_to_restart_a_node_alone_in_a_cluster_of_several(fake_node: FakeNode) -> None:
    fake_node.set(active=True, status=status_lines(1))
    result = fake_node.run("mariadb-kms-roll", "--timeout", "5")
    assert result.returncode != 0 and "leave no primary component" in result.stderr
    assert not [c for c in fake_node.log() if "restart" in c or "stop" in c]


def test_a_single_member_cluster_restarts_by_bootstrapping(tmp_path: Path) -> None:
    solo = FakeNode(tmp_path, ["127.0.0.2:4567"], "127.0.0.2")
    solo.set(active=True, status=status_lines(1))
    result = solo.run("mariadb-kms-roll", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    log = solo.log()
    assert log.index("systemctl stop mariadb") < log.index("galera_new_cluster")


def listening_port() -> tuple[socket.socket, int]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server, server.getsockname()[1]


def free_port() -> int:
    s, port = listening_port()
    s.close()
    return port


def test_bootstrap_refuses_when_another_member_answers(tmp_path: Path) -> None:
    server, port = listening_port()
    try:
        boot = FakeNode(tmp_path, ["127.0.0.2:4567", f"127.0.0.1:{port}"], "127.0.0.2")
        result = boot.run("mariadb-kms-bootstrap", "--timeout", "5")
    finally:
        server.close()
    assert result.returncode != 0
    assert f"member 127.0.0.1 answers on Galera port {port}" in result.stderr
    assert "galera_new_cluster" not in boot.log() and boot.stamp() is None


def test_bootstrap_starts_a_new_cluster_when_nobody_answers(tmp_path: Path) -> None:
    boot = FakeNode(tmp_path, ["127.0.0.2:4567", f"127.0.0.1:{free_port()}", f"[::1]:{free_port()}"], "127.0.0.2")
    result = boot.run("mariadb-kms-bootstrap", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    log = boot.log()
    assert log.index("unwrap --check") < log.index("galera_new_cluster")
    assert "member ::1: nothing answers" in result.stdout
    # The roll that follows finds the config applied and restarts nothing.
    assert boot.stamp()
    roll = boot.run("mariadb-kms-roll", "--timeout", "5")
    assert roll.returncode == 0 and "nothing to restart" in roll.stdout


def test_bootstrap_is_a_no_op_on_a_running_primary_and_refuses_a_non_primary(fake_node: FakeNode) -> None:
    fake_node.set(active=True, status=status_lines(3))
    result = fake_node.run("mariadb-kms-bootstrap")
    assert result.returncode == 0 and "nothing to bootstrap" in result.stdout
    fake_node.set(status=status_lines(1, state="Initialized", component="non-Primary"))
    refused = fake_node.run("mariadb-kms-bootstrap")
    assert refused.returncode != 0 and "not Primary" in refused.stderr
    assert "galera_new_cluster" not in fake_node.log()
