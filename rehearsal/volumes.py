"""Data volume stand-ins for testbed hosts: loop-backed ext4 images made and mounted on this machine.

A real on-prem node keeps its datadir on a volume of its own, mounted at ``/srv/mariadb-kms``; an EC2
node has an EBS volume there. Testbed hosts have neither, and see no ``/dev/loop*`` (nspawn gives them no
device nodes), so this machine makes a sparse image per host, formats it ext4 (``-O encrypt`` unless told
otherwise, so fscrypt works on it), mounts it through a loop device and lets nspawn bind the mount point
into the host at boot (``Testbed.volumes``). The image is then what lies on the "device": the at-rest
scans read it byte for byte from this side, whatever the host has mounted, keyed or not.

Everything lives under ``<testbed run dir>/volumes/<host>/``; ``cleanup_volumes`` unmounts and removes
what a crashed run left there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rehearsal import TestbedError, run

VOLUME_MOUNT = "/srv/mariadb-kms"  # where a node's data volume is mounted (node/mariadb-kms-install)
VOLUMES_DIR = "volumes"


@dataclass
class LoopVolume:
    host: str
    dir: Path
    size_mib: int = 1024
    encrypt_feature: bool = True

    @property
    def image(self) -> Path:
        return self.dir / "volume.img"

    @property
    def mount_point(self) -> Path:
        return self.dir / "mnt"

    def create(self) -> LoopVolume:
        """A sparse image, formatted and loop-mounted here; ready to be bound into the host."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mib << 20)
        features = ["-O", "encrypt"] if self.encrypt_feature else []
        run(["mkfs.ext4", "-q", "-F", "-L", "mariadb-data", *features, str(self.image)])
        self.mount_point.mkdir(exist_ok=True)
        run(["mount", "-o", "loop", str(self.image), str(self.mount_point)])
        return self

    def sync(self) -> None:
        """Write back what the host's filesystem holds in memory (syncfs), so the image shows it."""
        subprocess.run(["sync", "-f", str(self.mount_point)], check=False, timeout=120)

    def remove(self) -> None:
        _unmount(self.mount_point)
        shutil.rmtree(self.dir, ignore_errors=True)


def _unmount(mount_point: Path) -> None:
    if os.path.ismount(mount_point):
        # Lazy: a host that still runs holds its own bind of it; the loop device goes when the last user does.
        run(["umount", "--lazy", str(mount_point)], check=False)


def make_volumes(run_dir: Path, hosts: Mapping[str, bool], size_mib: int = 1024) -> dict[str, LoopVolume]:
    """One volume per host; ``hosts`` maps a host name to whether its filesystem gets the encrypt feature."""
    volumes: dict[str, LoopVolume] = {}
    try:
        for host, encrypt in hosts.items():
            volumes[host] = LoopVolume(host, run_dir / VOLUMES_DIR / host, size_mib, encrypt).create()
    except BaseException:
        for volume in volumes.values():
            volume.remove()
        raise
    return volumes


def cleanup_volumes(run_dir: Path) -> None:
    """Unmount and remove every volume under ``run_dir`` (also what a crashed run left). Idempotent."""
    root = run_dir / VOLUMES_DIR
    if not root.is_dir():
        return
    for host_dir in sorted(root.iterdir()):
        _unmount(host_dir / "mnt")
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        raise TestbedError(f"could not remove {root}")


@dataclass
class ImageScan:
    bytes: int = 0
    hits: dict[str, list[int]] = field(default_factory=dict)  # needle name -> offsets in the image


def scan_image(image: Path, needles: Mapping[str, bytes], chunk: int = 16 << 20) -> ImageScan:
    """Every byte of ``image`` searched for each needle (offsets of the first hits, across chunk boundaries)."""
    if not needles or any(not n for n in needles.values()):
        raise ValueError("needles must be non-empty byte strings")
    keep = max(len(n) for n in needles.values()) - 1
    result = ImageScan(hits={name: [] for name in needles})
    offset, tail = 0, b""
    with open(image, "rb") as f:
        while block := f.read(chunk):
            data = tail + block
            base = offset - len(tail)
            for name, needle in needles.items():
                start = data.find(needle)
                while start != -1 and len(result.hits[name]) < 16:
                    if base + start not in result.hits[name]:
                        result.hits[name].append(base + start)
                    start = data.find(needle, start + 1)
            offset += len(block)
            tail = data[-keep:] if keep else b""
    result.bytes = offset
    return result
