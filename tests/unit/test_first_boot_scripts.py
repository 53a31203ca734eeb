"""The EC2 first-boot node scripts, run for real: the data volume on loop devices in a private mount
namespace, the IMDS guard in a network namespace made here (no traffic leaves it).

Both need root and a few Debian tools; without them the tests skip, except in CI where they must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NODE = Path(__file__).resolve().parents[2] / "node"
DATA_VOLUME = NODE / "mariadb-kms-data-volume"
IMDS_GUARD = NODE / "mariadb-kms-imds-guard"
IMDS_RULES = NODE / "imds-root-only.nft"
CI = bool(os.environ.get("CI"))
NOBODY = 65534
FSTAB_GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root (loop devices, mount and network namespaces)"
    elif missing:
        reason = f"needs {', '.join(missing)}"
    if reason:
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)


# -- the data volume ---------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    need("losetup", "unshare", "blkid", "mkfs.ext4", "mkswap", "findmnt", "mountpoint")
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, timeout=30)


def settings(tmp_path: Path, **values: Any) -> Path:
    defaults: dict[str, Any] = {
        "mount_point": tmp_path / "mysql",
        "fstab": tmp_path / "fstab",
        "wait_seconds": 2,
    }
    conf = tmp_path / "data-volume.conf"
    lines = [f"{k}={v}" for k, v in {**defaults, **values}.items()]
    conf.write_text("# test settings\n" + "\n".join(lines) + "\n")
    (tmp_path / "fstab").touch()
    return conf


def run_volume(conf: Path, then: str = "true") -> subprocess.CompletedProcess[str]:
    """The script in a private mount namespace (its mount vanishes with it), then ``then`` in the same namespace."""
    script = f'bash {DATA_VOLUME} --config "$1" && {then}'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "run", str(conf)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def blkid(device: str, tag: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-s", tag, "-o", "value", device], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()


def test_blank_volume_is_formatted_mounted_and_kept_on_rerun(tmp_path: Path, loop_device: str) -> None:
    conf = settings(tmp_path, device=loop_device)
    mnt = tmp_path / "mysql"
    first = run_volume(conf, f"findmnt -n -o SOURCE --mountpoint {mnt} && touch {mnt}/marker")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating ext4" in first.stdout
    assert loop_device in first.stdout.splitlines()[-1]  # findmnt: it really was mounted there
    uuid = blkid(loop_device, "UUID")
    assert uuid and blkid(loop_device, "TYPE") == "ext4"
    entries = [line for line in (tmp_path / "fstab").read_text().splitlines() if line and not line.startswith("#")]
    [entry] = entries
    fields = entry.split()
    assert fields[0] == f"UUID={uuid}" and fields[1] == str(mnt) and fields[2] == "ext4"
    options = fields[3].split(",")
    assert "nofail" in options
    for unit in ("mariadb.service", "mariadb-kms-unwrap.service"):
        assert f"x-systemd.required-by={unit}" in options and f"x-systemd.before={unit}" in options

    second = run_volume(conf, f"test -f {mnt}/marker")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "creating" not in second.stdout and "already has the entry" in second.stdout
    assert blkid(loop_device, "UUID") == uuid, "never formatted again"
    assert (tmp_path / "fstab").read_text().count(f"UUID={uuid}") == 1


def test_formatted_volume_keeps_its_data(tmp_path: Path, loop_device: str) -> None:
    subprocess.run(["mkfs.ext4", "-q", loop_device], check=True, timeout=60)
    uuid = blkid(loop_device, "UUID")
    mnt = tmp_path / "mysql"
    seed = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         f"mkdir -p {tmp_path}/seed && mount {loop_device} {tmp_path}/seed && echo row > {tmp_path}/seed/data"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert seed.returncode == 0, seed.stderr
    result = run_volume(settings(tmp_path, device=loop_device), f"cat {mnt}/data")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "row"
    assert blkid(loop_device, "UUID") == uuid


def test_device_with_another_signature_is_refused_untouched(tmp_path: Path, loop_device: str) -> None:
    # The control for "never mkfs a formatted device": a swap signature is not ext4, so it is refused.
    subprocess.run(["mkswap", loop_device], check=True, capture_output=True, timeout=60)
    swap_uuid = blkid(loop_device, "UUID")
    result = run_volume(settings(tmp_path, device=loop_device))
    assert result.returncode != 0
    assert "refusing to format or mount" in result.stderr and "TYPE=swap" in result.stderr
    assert blkid(loop_device, "TYPE") == "swap" and blkid(loop_device, "UUID") == swap_uuid
    assert (tmp_path / "fstab").read_text() == ""


def test_missing_volume_waits_then_fails_naming_its_stable_path(tmp_path: Path) -> None:
    need("unshare")
    result = run_volume(settings(tmp_path, volume_id="vol-0123456789abcdef0", wait_seconds=1))
    assert result.returncode != 0
    assert "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0" in result.stderr
    assert "vol-0123456789abcdef0 is not attached" in result.stderr
    assert (tmp_path / "fstab").read_text() == ""


def test_rehearsal_override_skips_the_volume(tmp_path: Path) -> None:
    need("unshare")
    conf = settings(tmp_path, volume_id="vol-0123456789abcdef0", wait_seconds=600)
    (tmp_path / "data-volume.conf.d").mkdir()
    (tmp_path / "data-volume.conf.d" / "rehearsal.conf").write_text("device=none\n")
    result = run_volume(conf)
    assert result.returncode == 0, result.stderr
    assert "device=none" in result.stdout and (tmp_path / "fstab").read_text() == ""


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    need("unshare")
    conf = settings(tmp_path, device="none")
    conf.write_text(conf.read_text() + "mountpoint=/srv\n")
    result = run_volume(conf)
    assert result.returncode != 0 and "unknown setting 'mountpoint'" in result.stderr


def test_systemd_reads_the_fstab_entry_as_required_by_mariadb(tmp_path: Path, loop_device: str) -> None:
    if not FSTAB_GENERATOR.exists():
        pytest.skip("systemd's fstab generator is not installed")
    result = run_volume(settings(tmp_path, device=loop_device))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "generated"
    out.mkdir()
    subprocess.run(
        [str(FSTAB_GENERATOR), str(out), str(out), str(out)],
        env={**os.environ, "SYSTEMD_FSTAB": str(tmp_path / "fstab"), "SYSTEMD_LOG_LEVEL": "err"},
        check=True, timeout=60,
    )
    unit = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", str(tmp_path / "mysql")],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    for service in ("mariadb.service", "mariadb-kms-unwrap.service"):
        assert (out / f"{service}.requires" / unit).is_symlink(), service
    text = (out / unit).read_text()
    before = {u for line in text.splitlines() if line.startswith("Before=") for u in line[len("Before="):].split()}
    assert {"mariadb.service", "mariadb-kms-unwrap.service"} <= before
    # nofail: a missing volume does not hold up boot (local-fs.target does not require the mount).
    assert not (out / "local-fs.target.requires" / unit).exists()


# -- the IMDS guard ----------------------------------------------------------------------

_PROBE = r"""
import json, socket, subprocess, sys, threading
IMDS = "169.254.169.254"
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", IMDS + "/32", "dev", "lo"], check=True)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((IMDS, 80))
server.listen(16)
threading.Thread(target=lambda: [server.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
guard = [subprocess.run(cmd, capture_output=True, text=True) for cmd in json.loads(sys.argv[1])]
connect = "import socket; socket.create_connection(('%s', 80), timeout=1).close()" % IMDS
def reaches(prefix):
    return subprocess.run([*prefix, "/usr/bin/python3", "-c", connect], capture_output=True).returncode == 0
print(json.dumps({
    "guard": [[g.returncode, g.stdout, g.stderr] for g in guard],
    "root": reaches([]),
    "nobody": reaches(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]),
    "ruleset": subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout,
}))
"""


def in_netns(tmp_path: Path, *commands: list[str]) -> dict[str, Any]:
    """Run the guard commands in a fresh network namespace, then probe IMDS there as root and as nobody."""
    need("unshare", "ip", "nft", "setpriv")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs /usr/bin/python3 (the probe runs it as nobody)")
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE)
    result = subprocess.run(
        ["unshare", "--net", sys.executable, str(probe), json.dumps(list(commands))],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def unwrap_conf(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"unwrap-{mode}.conf"
    path.write_text(f"# test\n[unwrap]\nmode = {mode}\nkey_arn = arn:aws:kms:eu-west-1:1:key/x\n")
    return path


def guard(tmp_path: Path, mode: str = "kms-envelope", *extra: str) -> list[str]:
    return [
        "bash", str(IMDS_GUARD), "--rules", str(IMDS_RULES), "--unwrap-conf", str(unwrap_conf(tmp_path, mode)),
        *extra,
    ]


def test_only_root_reaches_imds(tmp_path: Path) -> None:
    report = in_netns(tmp_path, guard(tmp_path))
    assert report["guard"][0][0] == 0, report["guard"]
    assert "only root may reach" in report["guard"][0][1]
    assert report["root"] is True
    assert report["nobody"] is False


def test_without_the_guard_everyone_reaches_imds(tmp_path: Path) -> None:
    # The control: the probe can tell a blocked user from an allowed one.
    report = in_netns(tmp_path)
    assert report["root"] is True and report["nobody"] is True


def test_reloading_the_guard_is_idempotent(tmp_path: Path) -> None:
    report = in_netns(tmp_path, guard(tmp_path), guard(tmp_path), guard(tmp_path, "kms-envelope", "--if-loaded"))
    assert [g[0] for g in report["guard"]] == [0, 0, 0]
    assert report["ruleset"].count("table inet mariadb_kms_imds") == 1
    assert report["ruleset"].count("169.254.169.254") == 1
    assert report["nobody"] is False


def test_aws_plugin_mode_lets_mariadbs_user_through(tmp_path: Path) -> None:
    # nobody stands in for mysql here: the account aws_key_management runs as inside mariadbd.
    plugin = in_netns(tmp_path, guard(tmp_path, "aws-plugin", "--plugin-user", "nobody"))
    assert plugin["guard"][0][0] == 0 and plugin["root"] is True and plugin["nobody"] is True
    envelope = in_netns(tmp_path, guard(tmp_path, "kms-envelope", "--plugin-user", "nobody"))
    assert envelope["nobody"] is False


def test_if_loaded_does_nothing_where_no_guard_runs(tmp_path: Path) -> None:
    # On premises (or before first boot's guard) mariadb.service's ExecStartPre must neither fail nor add a guard.
    report = in_netns(tmp_path, guard(tmp_path, "aws-plugin", "--if-loaded", "--plugin-user", "nobody"))
    assert report["guard"][0][0] == 0
    assert "mariadb_kms_imds" not in report["ruleset"]
    assert report["nobody"] is True


# -- the guard's unit ----------------------------------------------------------------------


def _verify_unit(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    need("systemd-analyze")
    root = tmp_path / "root"
    sbin = root / "usr/local/sbin"
    units = root / "etc/systemd/system"
    sbin.mkdir(parents=True)
    units.mkdir(parents=True)
    shutil.copy2(IMDS_GUARD, sbin / IMDS_GUARD.name)
    (units / "mariadb-kms-imds-guard.service").write_text(unit_text)
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/mariadb-kms-imds-guard.service"],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_guard_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify_unit(tmp_path, (NODE / "mariadb-kms-imds-guard.service").read_text())
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The control: a unit whose ExecStart names no executable is refused.
    text = (NODE / "mariadb-kms-imds-guard.service").read_text()
    result = _verify_unit(tmp_path, text.replace("/usr/local/sbin/mariadb-kms-imds-guard", "/usr/local/sbin/nope"))
    assert result.returncode != 0 and "nope" in result.stdout + result.stderr
