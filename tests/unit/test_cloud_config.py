"""The EC2 first-boot cloud-config and user-data, as data (no pulumi), plus cloud-init's own schema check."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from mocks import SSH_AUTHORIZED_KEY, ed25519_openssh, fake_ciphertext_blob

from components import cloud_config as cc
from components.node_files import BLOB_PATH, UNWRAP_CONF_PATH, NodeFile, node_files, render_unwrap_conf

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VOLUME_ID = "vol-0123456789abcdef0"
PRIVATE, PUBLIC, _PEM = ed25519_openssh("test/aws-a")
CI = bool(os.environ.get("CI"))
# The longest OpenSSH login key a user is likely to configure: RSA 4096 (a 535-byte blob).
RSA_4096_LINE = (
    "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"\x01" * 524).decode() + " a-long-comment@host"
)


def inputs(**changes: Any) -> dict[str, Any]:
    mode = changes.pop("mode", "kms-envelope")
    values: dict[str, Any] = {
        "node_name": "aws-a",
        "files": cc.first_boot_files(node_files(mode)),
        "data_key_blob": fake_ciphertext_blob(KEY_ARN),
        "unwrap_conf": render_unwrap_conf(mode=mode, key_arn=KEY_ARN, region="eu-west-1", on_premises=False),
        "host_private_key": PRIVATE,
        "host_public_key": PUBLIC,
        "authorized_key": SSH_AUTHORIZED_KEY,
        "data_volume_id": VOLUME_ID,
    }
    values.update(changes)
    return values


def render(**changes: Any) -> dict[str, Any]:
    return cc.render_cloud_config(**inputs(**changes))


def files_by_path(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in config["write_files"]}


def content_bytes(entry: dict[str, Any]) -> bytes:
    if entry.get("encoding") == "b64":
        return base64.b64decode(entry["content"])
    return str(entry["content"]).encode("utf-8")


# -- what first boot does ------------------------------------------------------


def test_logins_are_key_only_for_the_admin_user() -> None:
    config = render()
    assert config["ssh_pwauth"] is False and config["disable_root"] is True
    assert config["allow_public_ssh_keys"] is False, "an EC2 key pair must not add a second way in"
    [user] = config["users"]
    assert user["name"] == "admin" == cc.LOGIN_USER
    assert user["ssh_authorized_keys"] == [SSH_AUTHORIZED_KEY]
    assert user["lock_passwd"] is True and user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"


def test_only_our_pinned_host_key_is_installed() -> None:
    config = render()
    assert config["ssh_deletekeys"] is True
    assert set(config["ssh_keys"]) == {"ed25519_private", "ed25519_public"}
    assert config["ssh_keys"]["ed25519_public"] == PUBLIC.strip()
    # The private half really is the pinned public key's (not just any key).
    private = serialization.load_ssh_private_key(config["ssh_keys"]["ed25519_private"].encode(), password=None)
    derived = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert derived.decode() == PUBLIC.strip()


def test_first_boot_files_are_the_repository_bytes_with_their_modes() -> None:
    config = render()
    written = files_by_path(config)
    for f in cc.first_boot_files(node_files("kms-envelope")):
        entry = written[f.dest]
        assert content_bytes(entry) == f.content, f.dest
        assert entry["permissions"] == f"0{f.mode:o}" and entry["owner"] == f.owner
        assert "defer" not in entry  # root-owned: written in the init stage
    assert {f.source for f in cc.first_boot_files(node_files("aws-plugin"))} == set(cc.FIRST_BOOT_SOURCES)


def test_blob_unwrap_conf_and_volume_id_are_placed() -> None:
    written = files_by_path(render())
    blob = written[BLOB_PATH]
    assert blob["encoding"] == "b64" and blob["permissions"] == "0600" and blob["owner"] == "root:root"
    assert content_bytes(blob) == base64.b64decode(fake_ciphertext_blob(KEY_ARN))
    conf = written[UNWRAP_CONF_PATH]["content"]
    assert KEY_ARN in conf and "mode = kms-envelope" in conf and "credentials_file" not in conf
    assert f"volume_id={VOLUME_ID}\n" in written[cc.DATA_VOLUME_CONF_PATH]["content"]


def test_runcmd_runs_the_first_boot_script() -> None:
    runcmd = render()["runcmd"]
    assert runcmd == ["set -eu", [cc.FIRST_BOOT_SCRIPT, "--from-cloud-init"]]
    assert render()["packages"] == ["nftables"]


def test_nothing_about_members_or_settings_is_in_user_data() -> None:
    text = cc.cloud_config_text(render(mode="aws-plugin"))
    # (unwrap.conf names the gcache tmpfs directory, a fixed path; its size is a setting.)
    words = (
        "wsrep", "gcomm", "gcache.size", "256M", "innodb_encryption_threads", "encrypt_tables", "10.20.", "192.0.2."
    )
    for word in words:
        assert word not in text, word


def test_owner_that_exists_later_is_deferred_or_refused() -> None:
    base = cc.first_boot_files(node_files("kms-envelope"))[0]
    for_admin = dataclasses.replace(base, dest="/home/admin/.note", owner="admin:admin")
    entry = files_by_path(render(files=(for_admin,)))["/home/admin/.note"]
    assert entry["defer"] is True
    for_mysql = dataclasses.replace(base, dest="/etc/mysql/x", owner="mysql:mysql")
    with pytest.raises(ValueError, match="does not exist at first boot"):
        render(files=(for_mysql,))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data_key_blob": "alias/not-a-blob!"}, "not base64"),
        ({"data_key_blob": ""}, "empty"),
        ({"data_volume_id": "vol_123"}, "EBS volume id"),
        ({"host_public_key": "ssh-rsa AAAAB3NzaC1yc2E="}, "ssh-ed25519"),
        ({"host_private_key": "-----BEGIN RSA PRIVATE KEY-----\nAAA\n-----END RSA PRIVATE KEY-----\n"}, "OpenSSH"),
        ({"authorized_key": "not a key"}, "authorized key"),
        ({"node_name": "Bad_Name"}, "host name"),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(**change)


def test_manifest_lists_every_first_boot_file() -> None:
    # The control for first_boot_files: a manifest without one of them is refused by name.
    files = [f for f in node_files("kms-envelope") if f.source != "mariadb-kms-data-volume"]
    with pytest.raises(ValueError, match="mariadb-kms-data-volume"):
        cc.first_boot_files(files)


# -- user-data: deterministic, decodable, small ----------------------------------


def test_user_data_is_deterministic_gzip_without_name_or_time() -> None:
    first, second = cc.render_user_data(render()), cc.render_user_data(render())
    assert first == second
    raw = base64.b64decode(first)
    assert raw[:3] == b"\x1f\x8b\x08"
    assert raw[3] == 0, "no FNAME/FCOMMENT/FEXTRA flags"
    assert raw[4:8] == b"\x00\x00\x00\x00", "mtime 0"


def test_user_data_decodes_to_the_cloud_config() -> None:
    config = render()
    text = cc.decode_user_data(cc.render_user_data(config))
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == config
    # The node files read as themselves (literal blocks), not as escaped strings.
    assert "    #!/bin/bash\n" in text


def test_user_data_changes_with_what_it_carries() -> None:
    # The control for the determinism test: a different input gives different bytes.
    assert cc.render_user_data(render()) != cc.render_user_data(render(data_volume_id="vol-0fedcba9876543210"))


def test_largest_config_fits_in_ec2_user_data() -> None:
    # aws-plugin mode, a 32-character node name, a long key ARN and an RSA 4096 login key.
    # (Nothing in user-data depends on the number of nodes; test_ec2_node checks that with 27.)
    long_arn = "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
    config = render(
        mode="aws-plugin",
        node_name="a" * 31 + "z",
        data_key_blob=fake_ciphertext_blob(long_arn),
        unwrap_conf=render_unwrap_conf(mode="aws-plugin", key_arn=long_arn, region="us-gov-west-1", on_premises=False),
        authorized_key=RSA_4096_LINE,
    )
    size = len(base64.b64decode(cc.render_user_data(config)))
    assert size <= cc.USER_DATA_LIMIT
    print(f"largest user-data: {size} bytes gzipped of {cc.USER_DATA_LIMIT}")


def test_user_data_over_the_limit_is_refused() -> None:
    # The whole node/ directory, as the issue first imagined it, does not fit: render_user_data says so.
    every_file = tuple(f for f in node_files("aws-plugin") if f.source != "MANIFEST")
    config = render(files=every_file)
    with pytest.raises(cc.UserDataTooLarge, match=r"user-data is \d+ bytes gzipped, over EC2's limit of 16384"):
        cc.render_user_data(config)
    with pytest.raises(cc.UserDataTooLarge):
        cc.render_user_data(render(), limit=1000)


# -- cloud-init's own checks ----------------------------------------------------------


def _cloud_init() -> str:
    found = shutil.which("cloud-init")
    if found is None:
        if CI:
            pytest.fail("cloud-init is not installed (rehearsal/install-host-deps.sh installs it in CI)")
        pytest.skip("cloud-init is not installed here (apt-get install cloud-init)")
    return found


def _schema(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "user-data.yaml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [_cloud_init(), "schema", "-c", str(path)], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("mode", ["kms-envelope", "aws-plugin"])
def test_cloud_init_schema_accepts_the_cloud_config(tmp_path: Path, mode: str) -> None:
    result = _schema(tmp_path, cc.decode_user_data(cc.render_user_data(render(mode=mode))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_a_debian_mirror_becomes_cloud_inits_apt_primary_mirror(tmp_path: Path) -> None:
    mirror = "http://mirror.example.net/debian"
    config = render(debian_mirror=mirror)
    assert config["apt"] == {"primary": [{"arches": ["default"], "uri": mirror}]}
    assert "apt" not in render(), "without a mirror the AMI's own sources stay"
    result = _schema(tmp_path, cc.cloud_config_text(config))
    assert result.returncode == 0, result.stdout + result.stderr
    # Control: cloud-init's schema does check this block (a mirror list where it wants a list of objects).
    config["apt"]["primary"] = mirror
    assert _schema(tmp_path, cc.cloud_config_text(config)).returncode != 0


def test_cloud_init_schema_rejects_a_wrong_type(tmp_path: Path) -> None:
    # The control: the same check fails on a cloud-config with one value of the wrong type.
    config = render()
    config["write_files"][0]["permissions"] = 755
    result = _schema(tmp_path, cc.cloud_config_text(config))
    assert result.returncode != 0
    assert "permissions" in result.stdout + result.stderr


def _shellify(runcmd: list[Any]) -> str:
    """The script cloud-init's runcmd module makes from ``runcmd`` (cloudinit.util.shellify, Debian's python)."""
    _cloud_init()
    code = "import json, sys; from cloudinit.util import shellify; sys.stdout.write(shellify(json.load(sys.stdin)))"
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    result = subprocess.run(
        [python, "-c", code], input=json.dumps(runcmd), capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


FIRST_BOOT_SOURCE = Path(__file__).resolve().parents[2] / "node" / "mariadb-kms-first-boot"
needs_root = pytest.mark.skipif(os.geteuid() != 0 and not CI, reason="the first-boot script runs as root only")


def _run_first_boot(
    tmp_path: Path, runcmd: list[Any], *, enable_fails: bool, source: Path = FIRST_BOOT_SOURCE
) -> tuple[int, list[str], Path]:
    """Run the runcmd script, and through it the real first-boot script, with stubs that log their calls.

    The stubs: systemctl (``enable`` fails when asked), nft (present), the data volume script (next to
    the first-boot script, where it finds it). Returns the exit status, the calls and the marker path.
    """
    stubs, sbin = tmp_path / "bin", tmp_path / "sbin"
    stubs.mkdir(exist_ok=True)
    sbin.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    enable = '[ "$1" = enable ] && exit 1; exit 0' if enable_fails else "exit 0"
    for path, rc in ((stubs / "systemctl", enable), (stubs / "nft", "exit 0"),
                     (sbin / "mariadb-kms-data-volume", "exit 0")):
        path.write_text(f'#!/bin/sh\necho "{path.name}${{*:+ $*}}" >> {log}\n{rc}\n')
        path.chmod(0o755)
    script = sbin / "mariadb-kms-first-boot"
    shutil.copy(source, script)
    script.chmod(0o755)
    marker = tmp_path / "state" / "first-boot.done"
    text = _shellify(runcmd).replace(f"'{cc.FIRST_BOOT_SCRIPT}'", f"'{script}' --marker '{marker}'")
    assert str(script) in text
    (tmp_path / "runcmd").write_text(text)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", str(tmp_path / "runcmd")], env=env, timeout=30, check=False)
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, marker


@needs_root
def test_a_failed_first_boot_step_stops_the_rest_and_leaves_no_marker(tmp_path: Path) -> None:
    rc, calls, marker = _run_first_boot(tmp_path, render()["runcmd"], enable_fails=True)
    assert rc != 0  # cloud-init's runcmd fails: status error
    assert calls == ["systemctl daemon-reload", "systemctl enable --now mariadb-kms-imds-guard.service"]
    assert not marker.exists()


@needs_root
def test_a_rerun_completes_what_failed_then_finds_the_marker(tmp_path: Path) -> None:
    _run_first_boot(tmp_path, render()["runcmd"], enable_fails=True)
    rc, calls, marker = _run_first_boot(tmp_path, render()["runcmd"], enable_fails=False)
    assert rc == 0 and marker.exists()
    assert calls == [
        "systemctl daemon-reload", "systemctl enable --now mariadb-kms-imds-guard.service", "mariadb-kms-data-volume",
    ]
    rc, calls, _ = _run_first_boot(tmp_path, render()["runcmd"], enable_fails=True)
    assert (rc, calls) == (0, [])  # done once: nothing runs again, so nothing can fail again


@needs_root
def test_without_set_e_in_the_script_a_failed_step_would_run_on(tmp_path: Path) -> None:
    # The control: the same script, its failure checks taken out, runs past the failed enable.
    original = FIRST_BOOT_SOURCE.read_text()
    assert "set -euo pipefail\n" in original
    patched = tmp_path / "patched"
    patched.write_text(original.replace("set -euo pipefail\n", "set -uo pipefail\n").replace(
        'systemctl enable --now "$GUARD_UNIT" || die', 'systemctl enable --now "$GUARD_UNIT" ||  true; : die'))
    rc, calls, marker = _run_first_boot(tmp_path, render()["runcmd"], enable_fails=True, source=patched)
    assert rc == 0 and calls[-1] == "mariadb-kms-data-volume" and marker.exists()


def test_gzip_of_the_text_is_what_ec2_receives() -> None:
    config = render()
    assert gzip.decompress(base64.b64decode(cc.render_user_data(config))).decode() == cc.cloud_config_text(config)


def test_node_file_fixture_is_real() -> None:
    # first_boot_files hands over NodeFile objects read from node/, not copies inside Python strings.
    files = cc.first_boot_files(node_files("kms-envelope"))
    assert all(isinstance(f, NodeFile) for f in files)
    node_dir = Path(__file__).resolve().parents[2] / "node"
    assert all((node_dir / f.source).read_bytes() == f.content for f in files)


def _check(tmp_path: Path, *, marker: bool, cloud_init_rc: int, runcmd_names_script: bool) -> int:
    """``mariadb-kms-first-boot --check`` with a stub cloud-init; its exit status."""
    stubs = tmp_path / "check-bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "cloud-init").write_text(f"#!/bin/sh\nexit {cloud_init_rc}\n")
    (stubs / "cloud-init").chmod(0o755)
    marker_path = tmp_path / "check-state" / "first-boot.done"
    marker_path.parent.mkdir(exist_ok=True)
    marker_path.unlink(missing_ok=True)
    if marker:
        marker_path.write_text("done\n")
    runcmd = tmp_path / "runcmd-script"
    runcmd.write_text(_shellify(render()["runcmd"]) if runcmd_names_script else "#!/bin/sh\nsystemctl daemon-reload\n")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["/bin/bash", str(FIRST_BOOT_SOURCE), "--check", "--marker", str(marker_path), "--runcmd", str(runcmd)],
        env=env, capture_output=True, timeout=30, check=False,
    )
    return done.returncode


@needs_root
def test_check_goes_by_the_marker_not_by_cloud_init(tmp_path: Path) -> None:
    assert _check(tmp_path, marker=True, cloud_init_rc=1, runcmd_names_script=True) == 0  # recovered first boot
    assert _check(tmp_path, marker=False, cloud_init_rc=0, runcmd_names_script=True) != 0  # its steps never ran
    assert _check(tmp_path, marker=False, cloud_init_rc=1, runcmd_names_script=True) != 0
    # An instance booted before the script existed: cloud-init's success is all there is to go by.
    assert _check(tmp_path, marker=False, cloud_init_rc=0, runcmd_names_script=False) == 0
    assert _check(tmp_path, marker=False, cloud_init_rc=1, runcmd_names_script=False) != 0


def test_the_first_boot_step_falls_back_to_cloud_init_where_the_script_is_missing(tmp_path: Path) -> None:
    from components.plan.steps import FIRST_BOOT, FIRST_BOOT_STEP

    stubs = tmp_path / "step-bin"
    stubs.mkdir()
    log = tmp_path / "step-calls"
    (stubs / "cloud-init").write_text(f'#!/bin/sh\necho "cloud-init $*" >> {log}\nexit 1\n')
    (stubs / "cloud-init").chmod(0o755)
    script = tmp_path / "first-boot"
    inner = FIRST_BOOT_STEP.removeprefix("sudo -n ").replace(FIRST_BOOT, str(script))
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    missing = subprocess.run(["/bin/sh", "-c", inner], env=env, timeout=30, check=False)
    assert missing.returncode == 1 and log.read_text() == "cloud-init status --wait\n"
    script.write_text(f'#!/bin/sh\necho "script $*" >> {log}\nexit 0\n')
    script.chmod(0o755)
    present = subprocess.run(["/bin/sh", "-c", inner], env=env, timeout=30, check=False)
    assert present.returncode == 0 and log.read_text().splitlines()[-1].strip() == "script"
