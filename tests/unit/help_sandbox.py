"""Run a node tool's --help where it cannot touch the system: system commands are stubs that record calls.

Shared by the help test and the docs-commands test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

STUBBED = (
    "systemctl", "journalctl", "nft", "mariadb", "mysql", "mariadbd", "galera_new_cluster", "galera_recovery",
    "apt-get", "apt-cache", "dpkg", "dpkg-query", "mount", "umount", "mkfs.ext4", "blkid", "curl", "wget",
    "pgrep", "socat", "openssl", "useradd", "install", "cloud-init", "ip", "ss",
)


def network_isolation() -> list[str]:
    """A prefix that runs the tool in a network namespace of its own, if this machine lets us make one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in ([unshare, "--net"], [unshare, "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


def run_help(path: Path, scratch: Path, flag: str = "--help") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """(the finished process, the stubbed system commands it called)."""
    stubs = scratch / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    calls = scratch / "calls"
    for name in STUBBED:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(scratch), "LANG": "C.UTF-8"}
    interpreter = [sys.executable] if path.suffix == ".py" else ["/bin/bash"]
    proc = subprocess.run([*network_isolation(), *interpreter, str(path), flag], env=env,
                          capture_output=True, text=True, timeout=30)
    touched = calls.read_text().splitlines() if calls.exists() else []
    return proc, touched


def help_failure(path: Path, scratch: Path) -> str | None:
    """Why ``path --help`` is not a clean, side-effect-free help, or None."""
    proc, touched = run_help(path, scratch)
    if touched:
        return f"--help called {', '.join(touched)}"
    if proc.returncode != 0:
        return f"--help exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    if proc.stderr.strip():
        return f"--help wrote to stderr: {proc.stderr.strip()[-300:]}"
    if "usage:" not in proc.stdout:
        return "--help printed no usage line"
    return None
