"""A fresh Debian 12 host, following only the README: the install order up to booting test hosts.

A clean bookworm tree (an overlay of the testbed's cached bare rootfs, which stays untouched) gets a copy
of this repository, and runs in a chroot what a new user runs: ``apt-get install make``, then the
Makefile's own steps. Checked:

- the environment checks and their errors, each on a host that lacks one thing: another OS, not root,
  an old python3, a testbed address range in use (in a network namespace of the test's own), all at once;
- the order: on a tree whose python3 has no venv module, ``make deps`` checks the host, installs the host
  packages (python3-venv among them) and only then creates the Python environment, which then imports
  the program's dependencies; ``make -n demo`` plans the rest.

It installs as ``make deps`` does on any fresh host: Debian packages from the Debian mirror the tree's
apt sources name, Python packages from the index this machine's pip configuration names. It stops
before the rehearsal's own rootfs build and before booting hosts (nested nspawn is not needed here).
It takes minutes, so it runs by ``make test-fresh-host`` (marker ``fresh_host``), not in ``make test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.fresh_host

# The environment's own package access, handed to the tree as a fresh host on this network would have it.
PIP_SOURCES = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")
PIP_CONFIG = "/etc/pip.conf"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # this network's TLS passes through its own CA


def sh(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


class Tree:
    """An overlay of the bare rootfs with /proc, /sys, /dev and this repository in it, run by chroot."""

    def __init__(self, lower: Path, base: Path) -> None:
        self.base = base
        self.root = base / "merged"
        self.mounts: list[Path] = []
        for d in ("upper", "work", "merged"):
            (base / d).mkdir()
        self._mount(["-t", "overlay", "overlay", "-o",
                     f"lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}"], self.root)
        for fs, target in (("proc", "proc"), ("sysfs", "sys")):
            self._mount(["-t", fs, fs], self.root / target)
        self._mount(["--rbind", "/dev"], self.root / "dev")
        for src in PIP_SOURCES:
            if Path(src).is_dir():
                target = self.root / src.lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                self._mount(["--bind", "-o", "ro", src], target)
        for config in (PIP_CONFIG, CA_BUNDLE):
            if Path(config).exists():
                shutil.copy(config, self.root / config.lstrip("/"))
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        self.repo = Path("/srv/mariadb-kms")  # readable by the unprivileged user of the root check
        files = sh("git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z").stdout
        dest = self.root / self.repo.relative_to("/")
        dest.mkdir(parents=True)
        packed = subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", "-"], input=files.encode(),
                                capture_output=True, check=True).stdout
        subprocess.run(["tar", "-C", str(dest), "-xf", "-"], input=packed, check=True)

    def _mount(self, args: list[str], target: Path) -> None:
        sh("mount", *args, str(target))
        self.mounts.append(target)
        if "--rbind" in args:
            sh("mount", "--make-rslave", str(target))

    def run(self, script: str, *, user: str = "root", net: bool = True, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``script`` in bash inside the tree, in the repository; ``net=False``: a network namespace of its own."""
        base_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": "/root" if user == "root" else "/tmp",
                    "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}
        inner = ["chroot"]
        if user != "root":
            inner += [f"--userspec={user}"]
        inner += [str(self.root), "/bin/bash", "-c", f"cd {self.repo} && {script}"]
        prefix = [] if net else ["unshare", "--net"]
        return subprocess.run([*prefix, *inner], env=base_env, capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-R", "-l", str(target)], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def tree() -> Iterator[Tree]:
    if os.geteuid() != 0:
        pytest.skip("needs root (overlay mounts, chroot)")
    from rehearsal.rootfs import ensure_bare_rootfs

    base = Path(tempfile.mkdtemp(prefix="mariadb-kms-fresh-host-"))
    t = Tree(ensure_bare_rootfs(), base)
    try:
        yield t
    finally:
        t.close()


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_a_fresh_tree_lacks_what_the_makefile_installs(tree: Tree) -> None:
    # The premise: Debian 12 as a cloud image has it has python3 3.11 but neither make nor python3's venv.
    assert tree.run("python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)'").returncode == 0
    assert tree.run("command -v make").returncode != 0
    assert tree.run("python3 -c 'import ensurepip'").returncode != 0


def test_the_readme_first_step_installs_make(tree: Tree) -> None:
    started = time.monotonic()
    proc = tree.run("apt-get -q update >/dev/null && apt-get -q -y install --no-install-recommends make git >/dev/null")
    assert proc.returncode == 0, output(proc)
    print(f"apt-get install make git: {time.monotonic() - started:.0f} s")
    assert tree.run("make --version").returncode == 0


def test_each_check_names_what_is_wrong(tree: Tree) -> None:
    fedora = 'ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n'
    proc = tree.run(f"printf '{fedora}' > /tmp/os-release && CHECK_HOST_OS_RELEASE=/tmp/os-release "
                    "bash tools/check-host.sh python")
    assert proc.returncode == 1
    assert "needs a Debian or Ubuntu host (found: Fedora Linux 40)" in output(proc)

    proc = tree.run("bash tools/check-host.sh testbed", user="nobody:nogroup", net=False)
    assert proc.returncode == 1
    assert "must run as root" in output(proc)

    # python3 3.9, as an older distribution has it: a stand-in that answers the version questions as 3.9 would.
    old = tree.root / "tmp/old/python3"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('#!/bin/sh\ncase "$2" in *print*) echo 3.9 ;; *) exit 1 ;; esac\n')
    old.chmod(0o755)
    proc = tree.run("PATH=/tmp/old:$PATH bash tools/check-host.sh python")
    assert proc.returncode == 1
    assert "python3 is 3.9, 3.11 or newer is needed" in output(proc)

    proc = tree.run("ip link set lo up && ip addr add 10.231.0.1/24 dev lo && bash tools/check-host.sh testbed",
                    net=False)
    assert proc.returncode == 1
    assert "10.231.0.0/24 (MARIADB_KMS_TESTBED_SUBNET) is already in use here: address 10.231.0.1/24 on lo" \
        in output(proc)

    # All at once: not root and a range in use are both listed by one run.
    proc = tree.run("bash tools/check-host.sh testbed", user="nobody:nogroup",
                    env={"MARIADB_KMS_TESTBED_SUBNET": "127.0.0.0/24"})
    text = output(proc)
    assert "must run as root" in text and "127.0.0.0/24 (MARIADB_KMS_TESTBED_SUBNET) is already in use" in text


def test_make_deps_installs_host_packages_before_the_venv(tree: Tree) -> None:
    started = time.monotonic()
    proc = tree.run("make deps", timeout=1800)
    elapsed = time.monotonic() - started
    text = output(proc)
    assert proc.returncode == 0, text[-3000:]
    print(f"make deps on a fresh tree: {elapsed:.0f} s")
    # python3-venv first (the host check installs it as soon as it finds python3 without venv), then the
    # testbed's packages, and only then the Python environment.
    venv_module_at = text.find("==> installing python3-venv")
    packages_at = text.find("==> installing host packages")
    venv_at = text.find("==> creating Python environment")
    assert 0 <= venv_module_at < packages_at < venv_at, text[-3000:]
    proc = tree.run("make -s -n venv | grep -c . ; ls -d ~/.cache/mariadb-kms/venv-*/bin/python")
    assert proc.returncode == 0, output(proc)
    python = proc.stdout.split()[-1]
    proc = tree.run(f"{python} -c 'import pulumi, pulumi_aws, pulumi_command, boto3, rich, paramiko, moto'")
    assert proc.returncode == 0, output(proc)
    for tool in ("debootstrap", "systemd-nspawn", "apt-ftparchive", "dot"):
        assert tree.run(f"command -v {tool}").returncode == 0, tool


def test_the_rest_is_planned_from_here(tree: Tree) -> None:
    proc = tree.run("make -n demo && make -n test")
    assert proc.returncode == 0, output(proc)
    assert "rehearsal demo" in proc.stdout
