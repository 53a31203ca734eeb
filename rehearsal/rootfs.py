"""The bare base rootfs: Debian 12 as a cloud image has it, without MariaDB and without boto3.

Built once with debootstrap and cached under ``$MARIADB_KMS_CACHE/rootfs/bare-<hash>``. The hash covers
everything that decides the contents (suite, mirrors, package list, the files written and the script run
inside), so a change to any of them builds a new one. A build goes into a temporary directory that is
renamed into place only when complete, under a lock, so a half-built tree is never used and two runs
never build at once. Hosts boot it through an overlay, so it is never written after the build.

Run ``python -m rehearsal.rootfs`` to build it (or see where it is).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from rehearsal import TestbedError, cache_dir, file_lock, phase, run, say

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# What a Debian 12 cloud image has that the node software and the testbed rely on. Not MariaDB, not boto3:
# those come from the package repository, installed by the paths under test.
BARE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "iproute2",
    "sudo",
    "python3",
    "cloud-init",
    "ca-certificates",
    "nftables",  # the EC2 node restricts IMDS to root with a firewall rule
    "procps",
    "netbase",
    "curl",
    "less",
    "locales",  # cloud-init's locale module fails the boot without it
)

# The image's apt sources, as a Debian 12 cloud image ships them (deb822).
DEBIAN_SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY_MIRROR}
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# cloud-init sees only a NoCloud seed, like an image whose provider hands one over. Network config is off:
# the testbed gives each host its address in its network namespace before boot (as a cloud's DHCP would),
# and a generated fallback DHCP config would only wait for a server that is not there.
CLOUD_CFG = """\
# mariadb-kms testbed image
datasource_list: [ NoCloud, None ]
network: {config: disabled}
"""

# Debian's openssh-server makes host keys when installed, so the build deletes them (every host would
# otherwise share them). cloud-init's ssh module makes new ones on first boot; this unit covers a boot
# where cloud-init did not (it runs after it, and only when the keys are still missing).
SSH_HOSTKEYS_UNIT = """\
[Unit]
Description=Generate SSH host keys missing on first boot
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
After=cloud-init.service
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""

# Run inside the new tree (systemd-nspawn, not booted) with the host's network; "$@" is BARE_PACKAGES.
# Packages are installed by apt here rather than by debootstrap's --include, which resolves neither
# virtual packages nor alternatives (python3-cryptography, pulled in by cloud-init, needs one).
CONFIGURE_SCRIPT = """\
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get -q update
apt-get -q -y -o Dpkg::Options::=--force-confold dist-upgrade
apt-get -q -y -o Dpkg::Options::=--force-confold --no-install-recommends install "$@"
apt-get -q -y clean
# Generated now, so cloud-init's locale module finds it set and each first boot is quicker.
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
locale-gen
update-locale LANG=en_US.UTF-8
# Like a cloud image: root has no password, logins are by SSH key only.
usermod -p '*' root
systemctl enable ssh.service ssh-hostkeys.service
# Hosts have no route to the mirrors; stale lists would only mislead.
rm -rf /var/lib/apt/lists/*
"""

HOSTS_FILE = """\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
"""

# Hosts have no DNS: names resolve through /etc/hosts, which the testbed writes per host.
RESOLV_CONF = "# mariadb-kms testbed: no DNS; names are in /etc/hosts\n"

BUILD_FORMAT = 1  # bump when build() changes in a way the texts above do not capture


def bare_key() -> str:
    """Hash of everything that decides the bare rootfs' contents."""
    recipe = {
        "format": BUILD_FORMAT,
        "suite": SUITE,
        "mirrors": [MIRROR, SECURITY_MIRROR],
        "packages": sorted(BARE_PACKAGES),
        "files": [DEBIAN_SOURCES, CLOUD_CFG, SSH_HOSTKEYS_UNIT, HOSTS_FILE, RESOLV_CONF],
        "script": CONFIGURE_SCRIPT,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def bare_rootfs_path(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "rootfs" / f"bare-{bare_key()}"


def ensure_bare_rootfs(cache: Path | None = None) -> Path:
    """The cached bare rootfs, built first if missing. Safe to call from concurrent runs."""
    target = bare_rootfs_path(cache)
    if _complete(target):
        return target
    with file_lock(target.parent / f".{target.name}.lock", "rootfs build"):
        if _complete(target):  # someone else built it while we waited
            return target
        for stale in target.parent.glob(f".tmp-{target.name}-*"):
            say(f"removing the half-built rootfs {stale} left by an interrupted build")
            remove_tree(stale)
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
        log = target.parent / f"{target.name}.build.log"
        log.unlink(missing_ok=True)
        try:
            with phase(f"building the bare rootfs {target.name} (debootstrap {SUITE}; log {log})"):
                build(tmp, log, (cache or cache_dir()) / "debootstrap-archives")
            (tmp / ".mariadb-kms-complete").write_text(bare_key() + "\n")
            os.rename(tmp, target)
        except BaseException:
            remove_tree(tmp)
            raise
    prune_unused(target.parent, "bare-*", keep=target)
    return target


def prune_unused(parent: Path, pattern: str, keep: Path) -> None:
    """Remove older builds (their recipe changed) that no running process still uses."""
    in_use = b"\0".join(_all_cmdlines())
    for old in parent.glob(pattern):
        if old != keep and old.is_dir() and str(old).encode() not in in_use:
            say(f"removing the outdated build {old}")
            remove_tree(old)
            old.with_name(old.name + ".build.log").unlink(missing_ok=True)


def _all_cmdlines() -> list[bytes]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes())
            except OSError:
                continue
    return found


def _complete(path: Path) -> bool:
    return (path / ".mariadb-kms-complete").is_file()


def build(root: Path, log: Path, archives: Path) -> None:
    """debootstrap, bring it up to date, then configure it like a cloud image."""
    archives.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True)
    try:
        run(
            ["debootstrap", "--variant=minbase", f"--cache-dir={archives}", SUITE, str(root), MIRROR],
            log=log,
            timeout=1200,
        )
    except TestbedError:
        # debootstrap's own log, which names the failing package, lives in the tree about to be removed.
        detail = root / "debootstrap" / "debootstrap.log"
        if detail.is_file():
            with log.open("ab") as out:
                out.write(b"\n--- debootstrap/debootstrap.log ---\n" + detail.read_bytes())
        raise
    _write(root, "etc/apt/sources.list.d/debian.sources", DEBIAN_SOURCES)
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    _write(root, "etc/cloud/cloud.cfg.d/90-mariadb-kms-testbed.cfg", CLOUD_CFG)
    _write(root, "etc/systemd/system/ssh-hostkeys.service", SSH_HOSTKEYS_UNIT)
    run(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            f"--directory={root}",
            "--resolv-conf=copy-host",  # a copy, not a bind mount: the tree's file is overwritten below
            "--timezone=off",
            "--link-journal=no",
            "--console=pipe",
            "/bin/sh",
            "-c",
            CONFIGURE_SCRIPT,
            "configure",
            *BARE_PACKAGES,
        ],
        log=log,
        timeout=1200,
    )
    # Each host must get its own identity at first boot: machine-id empty, no SSH host keys.
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"  # dbus' postinst made a fixed one; point it at the host's own
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root, "etc/hostname", "localhost\n")
    _write(root, "etc/hosts", HOSTS_FILE)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    _write(root, "etc/resolv.conf", RESOLV_CONF)


def _write(root: Path, relpath: str, text: str, mode: int = 0o644) -> None:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def remove_tree(path: Path) -> None:
    """Remove a directory tree that an interrupted build or boot may have left mounts in.

    Mounts under it are detached first, and ``rm --one-file-system`` never crosses into one it missed,
    so a stray bind mount of /proc or /dev can never take the host's files with it.
    """
    if not path.exists():
        return
    real = os.path.realpath(path)
    mounts = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            mountpoint = line.split()[4].encode().decode("unicode_escape")
            if mountpoint == real or mountpoint.startswith(real + "/"):
                mounts.append(mountpoint)
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)
    proc = subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, check=False)
    if proc.returncode != 0 and path.exists():
        raise TestbedError(f"could not remove {path}: {proc.stderr.decode(errors='replace').strip()}")


def main() -> None:
    path = ensure_bare_rootfs()
    print(path)


if __name__ == "__main__":
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is missing: run `make deps` (rehearsal/install-host-deps.sh)")
    main()
