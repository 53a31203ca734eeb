"""The login-key rotation: the node script that keeps authorized_keys, and what each of the two `pulumi up`s runs.

The script is loaded from node/ and run against a home directory under tmp_path; the plans come from
tools/plan_diff (the engine's own rules over two recordings of the program), so the count of commands a
rotation re-executes is the program's, not a number written here.
"""

from __future__ import annotations

import io
import os
import pwd
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from mocks import SSH_AUTHORIZED_KEY, full_config
from node_scripts import NODE, load_node_script
from test_plan_diff import NODES, plan, steps

lk = load_node_script("mariadb_kms_login_keys", NODE / "mariadb_kms_login_keys.py")


def new_pair(comment: str) -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


OLD = SSH_AUTHORIZED_KEY
NEW_PRIVATE, NEW = new_pair("next")
_, ADMIN = new_pair("an administrator's own key")


def bare(line: str) -> str:
    return " ".join(line.split()[:2])


# -- the pure merge ---------------------------------------------------------------


def test_cloud_inits_copy_is_adopted_and_the_administrators_keys_are_kept() -> None:
    existing = f"{OLD}\n# the on-call key\n{ADMIN}\n"
    text, removed = lk.merge(existing, [OLD])
    lines = text.splitlines()
    assert lines == ["# the on-call key", ADMIN, lk.BEGIN, OLD, lk.END]
    assert removed == []
    # Run again on its own output: nothing changes.
    assert lk.merge(text, [OLD]) == (text, [])


def test_a_rotation_accepts_both_then_only_the_new_key() -> None:
    first, _ = lk.merge(f"{OLD}\n{ADMIN}\n", [OLD])
    both, _ = lk.merge(first, [OLD, NEW])
    assert [lk.key_of(x) for x in both.splitlines() if lk.key_of(x)] == [lk.key_of(k) for k in (ADMIN, OLD, NEW)]
    switched, removed = lk.merge(both, [NEW])
    keys = {lk.key_of(x) for x in switched.splitlines()} - {None}
    assert keys == {lk.key_of(ADMIN), lk.key_of(NEW)}
    assert removed == []


def test_a_stray_copy_of_a_retired_key_is_removed_too() -> None:
    both, _ = lk.merge("", [OLD, NEW])
    # Someone pasted the old key outside the block, with options in front.
    tampered = f'from="10.0.0.0/8",no-pty {bare(OLD)} pasted\n{both}'
    switched, removed = lk.merge(tampered, [NEW])
    assert lk.key_of(OLD) not in {lk.key_of(x) for x in switched.splitlines()}
    assert removed == [lk.fingerprint(lk.key_of(OLD))]
    # Control: the same stray line stays when the key was never the program's.
    kept, removed = lk.merge(f'from="10.0.0.0/8" {bare(ADMIN)}\n{both}', [NEW])
    assert lk.key_of(ADMIN) in {lk.key_of(x) for x in kept.splitlines()} and removed == []


@pytest.mark.parametrize("stdin", ["", "\n\n", "not a key\n", "ssh-ed25519 !!!notbase64\n"])
def test_no_usable_key_on_stdin_is_refused(stdin: str) -> None:
    with pytest.raises(lk.LoginKeysError):
        lk.parse_managed(stdin)


# -- the file on disk -------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    me = pwd.getpwuid(os.getuid())
    fake = pwd.struct_passwd(("admin", "x", me.pw_uid, me.pw_gid, "", str(tmp_path), "/bin/bash"))

    def getpwnam(name: str) -> Any:
        if name != "admin":
            raise KeyError(name)
        return fake

    monkeypatch.setattr(lk.pwd, "getpwnam", getpwnam)
    return tmp_path


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, user: str = "admin"
        ) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = lk.main(["--user", user])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_file_is_written_0600_in_a_0700_dir_and_a_rerun_changes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(monkeypatch, capsys, f"{OLD}\n{NEW}\n")
    assert rc == 0 and "installed admin's authorized_keys" in out
    path = home / ".ssh" / "authorized_keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert lk.fingerprint(lk.key_of(NEW)) in out
    before = path.stat().st_ino
    rc, out, _ = run(monkeypatch, capsys, f"{OLD}\n{NEW}\n")
    assert rc == 0 and "unchanged" in out
    assert path.stat().st_ino == before  # not even rewritten
    # A loose mode is repaired though the text is the same.
    path.chmod(0o644)
    rc, out, _ = run(monkeypatch, capsys, f"{OLD}\n{NEW}\n")
    assert "installed" in out and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unknown_user_or_a_symlinked_file_is_refused(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(monkeypatch, capsys, f"{OLD}\n", user="nobody-here")
    assert rc == 1 and "no user 'nobody-here'" in err
    (home / ".ssh").mkdir(mode=0o700)
    target = home / "elsewhere"
    target.write_text("")
    (home / ".ssh" / "authorized_keys").symlink_to(target)
    rc, _, err = run(monkeypatch, capsys, f"{OLD}\n")
    assert rc == 1 and "symlink" in err
    assert target.read_text() == ""


# -- what each `pulumi up` of a rotation runs (the engine's rules over the program's recordings) ---------


def test_the_first_up_runs_only_the_login_keys_step_on_every_node() -> None:
    p = plan(full_config(), full_config(sshNextAuthorizedKey=NEW))
    assert steps(p) == {(n, "login-keys"): "update" for n in NODES}
    assert all(s.runs == ["create"] for s in p.steps)
    assert p.restarts == [] and not p.bootstrap_runs and p.resources == []


def test_the_second_up_re_executes_every_command_but_the_bootstrap_and_restarts_nobody() -> None:
    during = full_config(sshNextAuthorizedKey=NEW)
    after = full_config(sshAuthorizedKey=NEW, sshPrivateKey=NEW_PRIVATE)
    p = plan(during, after)
    # A changed connection is an update of every remote command (no trigger changes, so none is replaced),
    # and an update of a command without `update` runs its `create` again.
    assert {a for a in steps(p).values()} == {"update"}
    assert all(s.runs == ["create"] for s in p.steps)
    per_node = {n: sorted(s for (node, s) in steps(p) if node == n) for n in NODES}
    assert per_node["aws-a"] == sorted(["first-boot", "node-files", "login-keys", "seed", "install", "tls",
                                        "tls-reload", "config", "escrow", "member-firewall", "preflight", "roll",
                                        "verification-run"])
    assert per_node["dc-1"] == sorted(["credentials", "node-files", "login-keys", "seed", "install", "tls",
                                       "tls-reload", "config", "escrow", "member-firewall", "preflight", "roll",
                                       "verification-run"])
    assert len(p.steps) == 39
    assert p.restarts == [] and not p.bootstrap_runs
    # The EC2 instances ignore their user-data (it holds the login key): nothing but commands changes.
    assert p.resources == []
    # Control: the same switch without the first up would run the same commands with a key the nodes refuse;
    # the plan cannot see that, which is why the runbook has two ups (rehearsed on hosts).
    assert steps(plan(full_config(), after)).keys() == steps(p).keys()
