"""A local Debian package repository for the testbed hosts, which have no route to the internet.

It holds MariaDB, Galera, mariabackup, boto3 and socat, and everything they need on top of the bare
rootfs: the .debs are downloaded once by apt itself, running inside a throwaway overlay of the bare
rootfs (so apt resolves against exactly what the hosts have installed), then indexed as a flat
repository with a Release file. The cache key covers the bare rootfs and the package list.

It is served over HTTP on the bridge address; hosts reach it through one apt source line,
``APT_SOURCE_PATH`` with ``apt_source_line(url)``: that line is part of the rehearsal's declared overlay.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from rehearsal import BackgroundServer, TestbedError, cache_dir, file_lock, phase, run, say
from rehearsal.rootfs import prune_unused, remove_tree

REPO_PACKAGES = ("mariadb-server", "galera-4", "mariadb-backup", "mariadb-client", "python3-boto3", "socat")
APT_SOURCE_PATH = "/etc/apt/sources.list.d/mariadb-kms-rehearsal.list"
DEFAULT_PORT = 8231
REPO_FORMAT = 1  # bump when the download or indexing below changes
ROOTFS_STAMP = ".bare-rootfs"  # which bare rootfs a repository was resolved against

# Run inside the overlay of the bare rootfs, with the host's network. Recommends are downloaded too:
# cloud-init's `packages:` installs them, as apt does by default.
_DOWNLOAD_SCRIPT = """\
set -eu
export DEBIAN_FRONTEND=noninteractive
mkdir -p /var/cache/apt/archives/partial
apt-get -q update
apt-get -q -y --download-only install "$@"
"""


def apt_source_line(url: str) -> str:
    """The one apt source a testbed host uses: the flat local repository, unsigned but trusted."""
    return f"deb [trusted=yes] {url.rstrip('/')}/ ./\n"


def repo_key(bare_rootfs: Path, packages: Sequence[str]) -> str:
    recipe = {"format": REPO_FORMAT, "rootfs": bare_rootfs.name, "packages": sorted(packages)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_repo(bare_rootfs: Path, packages: Sequence[str] = REPO_PACKAGES, cache: Path | None = None) -> Path:
    """The indexed repository directory for ``packages`` on top of ``bare_rootfs``, downloaded if missing."""
    root = (cache or cache_dir()) / "pkgrepo"
    target = root / f"repo-{repo_key(bare_rootfs, packages)}"
    if (target / "Release").is_file():
        return target
    with file_lock(root / f".{target.name}.lock", "package repository build"):
        if (target / "Release").is_file():
            return target
        for stale in root.glob(f".tmp-{target.name}-*"):
            remove_tree(stale)
        tmp = root / f".tmp-{target.name}-{os.getpid()}"
        log = root / f"{target.name}.build.log"
        log.unlink(missing_ok=True)
        try:
            with phase(f"downloading the package repository {target.name} ({' '.join(packages)}; log {log})"):
                debs = tmp / "debs"
                _download(bare_rootfs, packages, tmp / "upper", debs, log)
                _index(debs, log)
                (debs / ROOTFS_STAMP).write_text(bare_rootfs.name + "\n")
            os.rename(debs, target)
        finally:
            remove_tree(tmp)
        # Repositories for another package list stay; those resolved against an outdated rootfs go.
        for old in root.glob("repo-*"):
            if (old / ROOTFS_STAMP).is_file() and (old / ROOTFS_STAMP).read_text().strip() != bare_rootfs.name:
                prune_unused(root, old.name, keep=target)
    return target


def _download(bare_rootfs: Path, packages: Sequence[str], upper: Path, debs: Path, log: Path) -> None:
    upper.mkdir(parents=True)
    debs.mkdir(parents=True)
    run(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            f"--directory={bare_rootfs}",
            f"--overlay={bare_rootfs}:{upper}:/",  # apt's lists and lock go to the throwaway upper
            f"--bind={debs}:/var/cache/apt/archives",
            "--resolv-conf=copy-host",
            "--timezone=off",
            "--link-journal=no",
            "--console=pipe",
            "/bin/sh",
            "-c",
            _DOWNLOAD_SCRIPT,
            "download",
            *packages,
        ],
        log=log,
        timeout=1200,
    )
    remove_tree(debs / "partial")
    (debs / "lock").unlink(missing_ok=True)
    if not any(debs.glob("*.deb")):
        raise TestbedError(f"apt downloaded no packages for {' '.join(packages)} (log {log})")


def _index(debs: Path, log: Path) -> None:
    packages = run(["apt-ftparchive", "packages", "."], log=None, timeout=300, cwd=debs).stdout
    (debs / "Packages").write_bytes(packages)
    (debs / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    release = run(["apt-ftparchive", "release", "."], log=None, timeout=60, cwd=debs).stdout
    (debs / "Release").write_bytes(release)
    with log.open("ab") as out:
        out.write(f"\nindexed {len(list(debs.glob('*.deb')))} packages\n".encode())


class RepoServer:
    """Serves a repository directory over HTTP on one address (the bridge's), nothing else."""

    def __init__(self, directory: Path, address: str, port: int = DEFAULT_PORT, run_dir: Path | None = None) -> None:
        self.directory = directory
        state = run_dir or directory.parent
        self.server = BackgroundServer(
            "package repository",
            [sys.executable, "-m", "http.server", "--bind", address, "--directory", str(directory), str(port)],
            address,
            port,
            pidfile=state / "pkgrepo.pid",
            log=state / "pkgrepo.log",
        )

    @property
    def url(self) -> str:
        return f"http://{self.server.address}:{self.server.port}"

    @property
    def apt_source(self) -> str:
        return apt_source_line(self.url)

    def start(self) -> None:
        with phase(f"serving the package repository on {self.url}"):
            self.server.start(self._answers)

    def stop(self) -> None:
        self.server.stop()

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/Release", timeout=2) as reply:  # noqa: S310 - our own http URL
            return bool(reply.status == 200)


def main() -> None:
    from rehearsal.rootfs import ensure_bare_rootfs

    repo = ensure_repo(ensure_bare_rootfs())
    say(f"{len(list(repo.glob('*.deb')))} packages in {repo}")
    print(repo)


if __name__ == "__main__":
    main()
