"""Every node tool answers --help without touching the system, and the answer is one an operator can act on.

Each tool runs with --help in a sandbox: system commands (systemctl, nft, mariadb, apt-get, mount, ...)
are stubs on PATH that record any call and fail, and, where this machine allows it, a network namespace
of its own with no interfaces up. The help must say it runs as root on a node, list the exit statuses
and give an example. A control proves the sandbox notices a tool that acts on --help.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from help_sandbox import network_isolation, run_help

NODE = Path(__file__).resolve().parents[2] / "node"

# The tools whose help this suite checks. mariadb-kms-verify (mariadb_kms_verify.py) and mariadb-kms-unwrap
# (mariadb_kms_unwrap.py) join this list when their help carries the same parts.
TOOLS = [
    "mariadb-kms-roll",
    "mariadb-kms-bootstrap",
    "mariadb-kms-data-volume",
    "mariadb-kms-imds-guard",
    "mariadb-kms-install",
    "mariadb-kms-recover",
    "mariadb_kms_tls.py",
    "mariadb_kms_verify.py",
    "mariadb_kms_unwrap.py",
    "mariadb_kms_fscrypt.py",
    "mariadb_kms_backup.py",
    "mariadb_kms_restore.py",
    "mariadb-kms-first-boot",
    "mariadb-kms-upgrade",
    "mariadb-kms-decommission",
]

def help_problems(path: Path, tmp_path: Path) -> list[str]:
    proc, touched = run_help(path, tmp_path)
    text = proc.stdout
    problems = [f"called {call!r}" for call in touched]
    if proc.returncode != 0:
        problems.append(f"--help exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    if proc.stderr.strip():
        problems.append(f"--help wrote to stderr: {proc.stderr.strip()[:200]}")
    if "usage:" not in text:
        problems.append("no usage line")
    if "as root" not in text or "node" not in text:
        problems.append("does not say it runs as root on a node")
    if "exit status" not in text or " 0 " not in text or " 1 " not in text:
        problems.append("does not list its exit statuses")
    if "example:" not in text:
        problems.append("gives no example")
    return problems


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_complete_and_touches_nothing(tool: str, tmp_path: Path) -> None:
    assert help_problems(NODE / tool, tmp_path) == []


@pytest.mark.parametrize("tool", TOOLS)
def test_short_option_too(tool: str, tmp_path: Path) -> None:
    proc, touched = run_help(NODE / tool, tmp_path, "-h")
    assert proc.returncode == 0 and "usage:" in proc.stdout
    assert touched == []


def test_control_a_tool_that_acts_on_help_is_caught(tmp_path: Path) -> None:
    acting = tmp_path / "acting-tool"
    # The shape of a tool that parses no arguments: --help runs it.
    acting.write_text("#!/bin/bash\nsystemctl start mariadb-kms-unwrap.service\n"
                      "echo 'usage: acting-tool; run it as root on a node; exit status 0 1; example: acting-tool'\n")
    problems = help_problems(acting, tmp_path / "a")
    assert any("systemctl start mariadb-kms-unwrap.service" in p for p in problems), problems


def test_control_an_incomplete_help_is_caught(tmp_path: Path) -> None:
    terse = tmp_path / "terse-tool"
    terse.write_text("#!/bin/bash\necho 'usage: terse-tool [--timeout SECONDS]'\n")
    problems = help_problems(terse, tmp_path / "t")
    assert "does not say it runs as root on a node" in problems
    assert "does not list its exit statuses" in problems
    assert "gives no example" in problems


def test_the_sandbox_has_no_network_when_it_can_isolate() -> None:
    prefix = network_isolation()
    if not prefix:
        pytest.skip("no network namespace available here (unshare refused)")
    out = subprocess.run([*prefix, "cat", "/proc/net/dev"], capture_output=True, text=True, check=True).stdout
    interfaces = {line.split(":")[0].strip() for line in out.splitlines()[2:]}
    assert interfaces <= {"lo"}, interfaces
    assert os.path.exists("/proc/net/dev")
