"""The node files as the program installs them: one loader, right modes, sound units, no secrets."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from node_scripts import load_node_script

from components import node_files as nf

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "node"
SYSTEMD = "/etc/systemd/system"


def _unit(text: str) -> configparser.ConfigParser:
    # systemd allows repeated keys (they accumulate); configparser keeps the last, which is enough here.
    cp = configparser.ConfigParser(strict=False, interpolation=None, allow_no_value=True, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def _values(text: str, key: str) -> list[str]:
    """Every value of ``key`` in a unit file, repeated keys included."""
    return [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(key + "=")]


# --------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------


EXPECTED = {
    "/usr/local/sbin/mariadb-kms-unwrap": 0o755,
    "/usr/local/sbin/mariadb-kms-verify": 0o755,
    "/usr/local/sbin/mariadb-kms-install": 0o755,
    "/usr/local/sbin/mariadb-kms-recover": 0o755,
    f"{SYSTEMD}/mariadb-kms-unwrap.service": 0o644,
    f"{SYSTEMD}/run-galera.mount": 0o644,
    f"{SYSTEMD}/mariadb.service.d/50-mariadb-kms.conf": 0o644,
    "/etc/mariadb-kms/node/MANIFEST": 0o644,
}
AWS_PLUGIN_ONLY = {
    f"{SYSTEMD}/mariadb.service.d/60-mariadb-kms-aws-plugin.conf": 0o644,
    f"{SYSTEMD}/mariadb-kms-unwrap.service.d/60-aws-plugin.conf": 0o644,
}


def _modes(mode: str) -> dict[str, int]:
    return {dest: perm for dest, (_c, perm, _o) in nf.load_node_files(mode).items()}


def test_kms_envelope_gets_every_file_with_its_mode_and_owner() -> None:
    modes = _modes("kms-envelope")
    assert {dest: modes.get(dest) for dest in EXPECTED} == EXPECTED
    assert not set(AWS_PLUGIN_ONLY) & set(modes)
    # whatever else the manifest lists follows the same rules
    for dest, perm in modes.items():
        if dest.startswith("/usr/local/sbin/"):
            assert perm == 0o755, dest
        elif dest.startswith(SYSTEMD):
            assert perm == 0o644, dest
        assert not perm & 0o022, dest  # nobody but root may change what root runs
    assert {owner for (_c, _m, owner) in nf.load_node_files("kms-envelope").values()} == {"root:root"}


def test_aws_plugin_adds_its_drop_ins() -> None:
    modes = _modes("aws-plugin")
    assert {dest: modes.get(dest) for dest in {**EXPECTED, **AWS_PLUGIN_ONLY}} == {**EXPECTED, **AWS_PLUGIN_ONLY}
    assert set(_modes("kms-envelope")) < set(modes)


def test_contents_are_the_repository_bytes_and_read_once() -> None:
    first = nf.node_files("kms-envelope")
    for f in first:
        assert f.content == (NODE / f.source).read_bytes()
    assert nf.node_files("kms-envelope")[0] is first[0]  # cached: the disk is read once


def test_every_file_in_node_is_in_the_manifest() -> None:
    listed = {f.source for f in nf.node_files("aws-plugin")}
    on_disk = {
        str(p.relative_to(NODE)) for p in NODE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert on_disk == listed


def test_executables_are_executable_in_the_repository_too() -> None:
    for f in nf.node_files("kms-envelope"):
        if f.mode & 0o111:
            assert (NODE / f.source).stat().st_mode & 0o111, f.source


def test_unknown_mode_and_bad_manifest_lines_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        nf.load_node_files("plaintext")
    (tmp_path / "x").write_text("x")
    for bad in ("x /a 0644 root:root nowhere", "x relative 0644 root:root all", "x /a 0644 root all",
                "../etc/passwd /a 0644 root:root all", "x /a 0644 root:root"):
        (tmp_path / "MANIFEST").write_text(bad + "\n")
        with pytest.raises(nf.ManifestError):
            nf._parse_manifest(bad, tmp_path)


# --------------------------------------------------------------------------
# The units
# --------------------------------------------------------------------------


def _text(dest: str, mode: str = "aws-plugin") -> str:
    return nf.load_node_files(mode)[dest][0].decode()


def test_unwrap_unit_runs_once_before_mariadb_and_with_it() -> None:
    text = _text(f"{SYSTEMD}/mariadb-kms-unwrap.service")
    unit = _unit(text)
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["RemainAfterExit"] == "yes"
    assert unit["Service"]["ExecStart"] == "/usr/local/sbin/mariadb-kms-unwrap --wait"
    assert unit["Service"]["ExecStop"] == "/usr/local/sbin/mariadb-kms-unwrap --remove"
    assert "mariadb.service" in unit["Unit"]["Before"]
    assert unit["Unit"]["PartOf"] == "mariadb.service"  # a MariaDB (re)start unwraps afresh
    assert "network-online.target" in unit["Unit"]["After"] and "network-online.target" in unit["Unit"]["Wants"]
    assert unit["Install"]["RequiredBy"] == "mariadb.service"
    assert unit["Service"]["TimeoutStartSec"] == "infinity"  # it waits for KMS for as long as it takes


def test_unwrap_unit_is_hardened_but_can_write_where_it_must() -> None:
    service = _unit(_text(f"{SYSTEMD}/mariadb-kms-unwrap.service"))["Service"]
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "LimitCORE": "0", "UMask": "0077"}.items():
        assert service[key] == value, key
    assert service["RuntimeDirectory"] == Path(nf.RUNTIME_DIR).name
    assert nf.KEYFILE_PATH.startswith(nf.RUNTIME_DIR + "/")
    assert nf.GCACHE_DIR in service["ReadWritePaths"].split()
    plugin_dropin = _unit(_text(f"{SYSTEMD}/mariadb-kms-unwrap.service.d/60-aws-plugin.conf"))
    assert nf.DATADIR in plugin_dropin["Service"]["ReadWritePaths"].split()


def test_mariadb_drop_in_requires_the_unwrap_retries_joins_boundedly_and_dumps_no_core() -> None:
    text = _text(f"{SYSTEMD}/mariadb.service.d/50-mariadb-kms.conf")
    unit = _unit(text)
    assert unit["Unit"]["Requires"] == nf.UNWRAP_UNIT
    assert unit["Unit"]["After"] == nf.UNWRAP_UNIT
    assert set(_values(text, "AssertPathExists")) == {nf.MYCNF_ENCRYPTION_PATH, nf.MYCNF_NODE_PATH}
    assert unit["Service"]["Restart"] == "on-failure"  # Debian's on-abnormal never retries a failed join
    assert unit["Service"]["LimitCORE"] == "0"
    burst = int(unit["Unit"]["StartLimitBurst"])
    assert 1 < burst <= 60
    assert unit["Unit"]["StartLimitIntervalSec"] not in ("0", "infinity")
    assert "RestartSec" in unit["Service"]


def test_gcache_mount_is_tmpfs_at_the_configured_dir() -> None:
    unit = _unit(_text(f"{SYSTEMD}/run-galera.mount"))
    assert unit["Mount"]["Type"] == "tmpfs"
    assert unit["Mount"]["Where"] == nf.GCACHE_DIR
    # a mount unit's name is its escaped path
    assert Path(f"{SYSTEMD}/run-galera.mount").name == nf.GCACHE_DIR.strip("/").replace("/", "-") + ".mount"
    unwrap_unit = _unit(_text(f"{SYSTEMD}/mariadb-kms-unwrap.service"))
    assert "run-galera.mount" in unwrap_unit["Unit"]["Requires"]


# The only environment a unit may set: where the credentials file is and which profile, never a secret.
PATH_ONLY_ENVIRONMENT = {"AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE"}


def environment_secrets(text: str) -> list[str]:
    """Environment= names a unit sets that are not just a path or a profile name, and any EnvironmentFile=."""
    found = [f"EnvironmentFile={v}" for v in _values(text, "EnvironmentFile")]
    for value in _values(text, "Environment"):
        found += [pair for pair in value.split() if pair.split("=", 1)[0] not in PATH_ONLY_ENVIRONMENT]
    return found


def test_aws_plugin_credentials_reach_mariadbd_as_a_systemd_credential_never_environment() -> None:
    text = _text(f"{SYSTEMD}/mariadb.service.d/60-mariadb-kms-aws-plugin.conf")
    assert _values(text, "LoadCredential") == [f"aws-credentials:{nf.CREDENTIALS_PATH}"]
    assert [v.split(":", 1)[0] for v in _values(text, "SetCredential")] == ["aws-credentials"]  # EC2: no file
    assert _values(text, "Environment") == [
        f"AWS_SHARED_CREDENTIALS_FILE=%d/aws-credentials AWS_PROFILE={nf.CREDENTIALS_PROFILE}"
    ]
    for f in nf.node_files("aws-plugin"):
        assert environment_secrets(f.content.decode()) == [], f.source


def test_control_the_environment_check_finds_a_key_in_the_environment() -> None:
    leaky = "[Service]\nEnvironment=AWS_PROFILE=x AWS_SECRET_ACCESS_KEY=abc\nEnvironmentFile=-/etc/x.env\n"
    assert environment_secrets(leaky) == ["EnvironmentFile=-/etc/x.env", "AWS_SECRET_ACCESS_KEY=abc"]


def _analyze(paths: list[Path]) -> list[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    proc = subprocess.run([analyze, "verify", "--man=no", *map(str, paths)], capture_output=True, text=True,
                          check=False)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines()
            if "Unknown" in ln or "nvalid" in ln or "Failed to parse" in ln or "bad unit file" in ln]


def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    # The real hosts run `systemd-analyze verify` with everything installed (tests/node); here the
    # syntax and directives only, against a copy whose ExecStart binaries exist.
    names = ("mariadb-kms-unwrap.service", "run-galera.mount")
    for name in names:
        text = (NODE / name).read_text().replace("/usr/local/sbin/mariadb-kms-unwrap", "/bin/true")
        (tmp_path / name).write_text(text)
    assert _analyze([tmp_path / n for n in names]) == []
    # control: a misspelt directive is reported
    with open(tmp_path / names[0], "a") as f:
        f.write("[Service]\nProtectSytem=strict\n")
    assert any("ProtectSytem" in ln for ln in _analyze([tmp_path / names[0]]))


# --------------------------------------------------------------------------
# Scripts and secrets
# --------------------------------------------------------------------------


def test_scripts_parse() -> None:
    for name in ("mariadb-kms-install", "mariadb-kms-recover"):
        text = (NODE / name).read_text()
        assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
        subprocess.run(["bash", "-n", str(NODE / name)], check=True)
    for name in ("mariadb_kms_unwrap.py", "mariadb_kms_verify.py"):
        text = (NODE / name).read_text()
        assert text.startswith("#!/usr/bin/python3\n")  # Debian's python3 and python3-boto3, no venv
        compile(text, name, "exec")


def test_install_holds_mariadb_and_galera_and_masks_the_socket() -> None:
    text = (NODE / "mariadb-kms-install").read_text()
    held = re.search(r"HELD_PACKAGES=\(([^)]*)\)", text)
    assert held and {"mariadb-server", "galera-4", "mariadb-backup"} <= set(held.group(1).split())
    assert "apt-mark hold" in text
    assert "systemctl mask" in text and "mariadb.socket" in text
    assert "exit 101" in text  # the policy-rc.d that keeps the postinst from starting the server
    commands = [ln for ln in text.splitlines() if not ln.lstrip().startswith(("#", "say "))]
    # never starts or bootstraps MariaDB itself
    assert not [ln for ln in commands if re.search(r"^\s*(galera_new_cluster|systemctl (re)?start mariadb)", ln)]


SECRET_PATTERNS = (
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"aws_secret_access_key\s*=\s*[A-Za-z0-9/+]{20,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    # A credentials file's path and profile name are not secrets; anything else AWS_ in the environment is.
    re.compile(r"^\s*Environment=.*(AWS_(?!SHARED_CREDENTIALS_FILE=|PROFILE=)|SECRET|PASSWORD)", re.MULTILINE),
    re.compile(r"[0-9a-f]{64}"),  # a hex AES-256 key
)


def _secrets_in(text: str) -> list[str]:
    return [p.pattern for p in SECRET_PATTERNS if p.search(text)]


def test_the_secret_scan_catches_planted_secrets() -> None:
    planted = (
        "aws_access_key_id = AKIAABCDEFGHIJKLMNOP\n"
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        "-----BEGIN OPENSSH PRIVATE KEY-----\nEnvironment=AWS_SECRET_ACCESS_KEY=x\n1;" + "ab" * 32 + "\n"
    )
    assert len(_secrets_in(planted)) == len(SECRET_PATTERNS)


def test_no_node_file_contains_a_secret() -> None:
    for f in nf.node_files("aws-plugin"):
        assert _secrets_in(f.content.decode()) == [], f.source


# --------------------------------------------------------------------------
# unwrap.conf and the credentials files
# --------------------------------------------------------------------------

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("on_premises", [True, False])
def test_unwrap_conf_is_read_back_by_the_unwrap_tool(on_premises: bool, tmp_path: Path) -> None:
    unwrap = load_node_script("mariadb_kms_unwrap_for_conf", NODE / "mariadb_kms_unwrap.py")
    text = nf.render_unwrap_conf(mode="kms-envelope", key_arn=KEY_ARN, region="eu-west-1", on_premises=on_premises)
    conf = tmp_path / "unwrap.conf"
    conf.write_text(text)
    s = unwrap.load_settings(conf)
    assert (s.mode, s.key_arn, s.region) == ("kms-envelope", KEY_ARN, "eu-west-1")
    assert str(s.blob) == nf.BLOB_PATH and str(s.keyfile) == nf.KEYFILE_PATH
    assert str(s.gcache_dir) == nf.GCACHE_DIR and str(s.datadir) == nf.DATADIR
    assert s.endpoint_url is None and s.owner == "mysql"
    if on_premises:
        assert str(s.credentials_file) == nf.CREDENTIALS_PATH and s.profile == nf.CREDENTIALS_PROFILE
    else:
        assert s.credentials_file is None and s.profile is None
    assert _secrets_in(text) == []


def test_credentials_file_is_a_shared_credentials_profile() -> None:
    text = nf.render_credentials_file("AKIAABCDEFGHIJKLMNOP", "s3cr3t/value")
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    assert cp[nf.CREDENTIALS_PROFILE]["aws_access_key_id"] == "AKIAABCDEFGHIJKLMNOP"
    assert cp[nf.CREDENTIALS_PROFILE]["aws_secret_access_key"] == "s3cr3t/value"
