"""Every shell command in README.md and docs/ runs as written, as far as it can run here without side effects,
and every relative link in them leads somewhere.

Commands come from fenced ``sh``/``bash``/``shell`` blocks. Per command:
- ``make TARGET [VAR=value]``: ``make -n`` of it succeeds (the target exists, its recipe expands);
- a node tool (named as installed, e.g. ``mariadb-kms-roll``, or as ``node/...``): it is in node/MANIFEST,
  and when the docs call it with ``--help`` that help runs in a sandbox without touching the system;
- anything else must be a program the docs may name (the Pulumi and AWS CLIs, systemd and Debian tools),
  and never ``python``/``pytest``/``pip``: those depend on the hidden venv, and every such command has a make target.
Controls prove a missing make target, an unknown node tool, a venv-dependent command and a broken help are caught.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from help_sandbox import help_failure

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "node"
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_LANGS = {"sh", "bash", "shell"}
SEPARATORS = re.compile(r"\s(?:&&|\|\||\||;)\s")

# Programs the docs may tell a reader to run that are not part of this repository.
EXTERNAL = {
    "pulumi", "aws", "jq", "ssh", "nsenter", "journalctl", "systemctl", "getent", "curl", "findmnt", "swapoff",
    "chown", "chmod", "nft", "mariadb", "galera_new_cluster", "cat", "time", "export", "cd", "git", "apt-get",
    "tar", "wc", "ls", "sed", "grep", "sudo", "python3", "ssh-keygen",
}
VENV_ONLY = {"python", "pytest", "pip", "ruff", "mypy", "moto_server"}


@dataclass(frozen=True)
class Command:
    source: str
    line: int
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {shlex.join(self.argv)}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def commands_in(text: str, source: str) -> list[Command]:
    found: list[Command] = []
    lang: str | None = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang not in SHELL_LANGS:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full, pending = pending + line, ""
        for part in SEPARATORS.split(full):
            argv = shlex.split(part, comments=True)
            while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
                argv = argv[1:]  # environment assignments in front of a command
            if argv and argv[0] == "sudo":
                argv = argv[1:]
            if argv:
                found.append(Command(source, start, tuple(argv)))
    return found


def all_commands() -> list[Command]:
    out: list[Command] = []
    for path in doc_files():
        out += commands_in(path.read_text(), str(path.relative_to(ROOT)))
    return out


def installed_tools() -> dict[str, Path]:
    """Installed name -> file in node/, from node/MANIFEST."""
    tools: dict[str, Path] = {}
    for line in (NODE / "MANIFEST").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#") and "/sbin/" in fields[1]:
            tools[Path(fields[1]).name] = NODE / fields[0]
    return tools


def problem(cmd: Command) -> str | None:
    program = cmd.argv[0]
    tools = installed_tools()
    if program == "make":
        args = [a for a in cmd.argv[1:] if a != "-n"]
        proc = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            return f"`make -n {' '.join(args)}` failed: {proc.stderr.strip()[-300:]}"
        return None
    if program in ("bash", "sh", "python3") and len(cmd.argv) > 1 and cmd.argv[1].startswith("node/"):
        cmd = Command(cmd.source, cmd.line, cmd.argv[1:])
        program = cmd.argv[0]
    if program.startswith("node/"):
        path = ROOT / program
        if not path.exists():
            return f"{program} does not exist"
    elif program in tools:
        path = tools[program]
    elif program.startswith("mariadb-kms") or program.startswith("mariadb_kms"):
        return f"{program} is not a node tool (not in node/MANIFEST)"
    elif program in VENV_ONLY or (program.startswith(("bench/", "rehearsal/")) and program.endswith(".py")):
        return (f"{program} runs only inside the hidden venv: give the command a make target "
                "(make pytest ARGS=..., make bench-..., make demo)")
    elif program.startswith(("tools/", "rehearsal/")):
        return None if (ROOT / program).exists() else f"{program} does not exist"
    elif program in EXTERNAL:
        return None
    else:
        return f"{program}: not a command these docs may assume"
    if "--help" in cmd.argv or "-h" in cmd.argv:
        with tempfile.TemporaryDirectory() as scratch:
            failure = help_failure(path, Path(scratch))
        if failure:
            return f"{program}: {failure}"
    return None


COMMANDS = all_commands()


def test_the_docs_have_commands() -> None:
    sources = {c.source for c in COMMANDS}
    assert "README.md" in sources
    assert any(c.argv[:2] == ("make", "demo") for c in COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_command_runs_as_written(cmd: Command) -> None:
    assert problem(cmd) is None


def test_control_broken_commands_are_caught() -> None:
    text = """
```sh
make no-such-target           # a target nobody wrote
sudo mariadb-kms-frobnicate   # a tool that does not exist
python -m rehearsal demo      # the hidden venv
python bench/tls_replication.py
frobctl --now
```
"""
    found = commands_in(text, "control.md")
    assert [c.argv[0] for c in found] == ["make", "mariadb-kms-frobnicate", "python", "python", "frobctl"]
    problems = [problem(c) for c in found]
    assert all(problems), problems
    assert "No rule to make target" in (problems[0] or "")


def test_control_a_help_that_acts_is_caught(tmp_path: Path) -> None:
    acting = tmp_path / "acting"
    acting.write_text("#!/bin/bash\nsystemctl start mariadb-kms-unwrap.service\necho 'usage: acting'\n")
    assert "systemctl start mariadb-kms-unwrap.service" in (help_failure(acting, tmp_path / "s") or "")
    noisy = tmp_path / "noisy"
    noisy.write_text("#!/bin/bash\necho 'usage: noisy'\nno-such-program-here\nexit 0\n")
    assert "stderr" in (help_failure(noisy, tmp_path / "n") or "")


def test_control_parsing_keeps_continuations_and_chains() -> None:
    text = "```bash\nsudo mariadb-kms-roll --preflight && sudo mariadb-kms-roll\nA=1 make demo \\\n  NODES=5\n```\n"
    found = commands_in(text, "x.md")
    assert [c.argv for c in found] == [("mariadb-kms-roll", "--preflight"), ("mariadb-kms-roll",),
                                       ("make", "demo", "NODES=5")]


# Pages other parts of the project are writing at the same time; a link to them may land first.
PAGES_LANDING_ELSEWHERE = {
    "docs/configuration.md", "docs/examples", "docs/running-for-real.md", "docs/review.md",
    "docs/RELIABILITY.md", "docs/at-rest.md",
}
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def broken_links(text: str, page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        resolved = (page.parent / target).resolve()
        relative = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
        if not resolved.exists() and relative.rstrip("/") not in PAGES_LANDING_ELSEWHERE:
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page.read_text(), page) == []


def test_control_a_broken_link_is_caught() -> None:
    page = ROOT / "docs" / "security.md"
    text = "[gone](no-such-page.md) [fine](troubleshooting.md) [web](https://example.org/x) [soon](configuration.md)"
    assert broken_links(text, page) == ["no-such-page.md"]
