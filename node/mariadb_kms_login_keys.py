#!/usr/bin/python3
"""mariadb-kms-login-keys: the login user's authorized_keys holds exactly the program's login keys.

Installed as /usr/local/sbin/mariadb-kms-login-keys; run as root on the node by the login-keys step:

    mariadb-kms-login-keys --user USER    the public keys on stdin (one OpenSSH line each) become the
                                          managed block of USER's ~/.ssh/authorized_keys

The program's keys live between two marker lines. Lines outside the block are
the administrator's and are kept, except a copy of a key the block holds now
(cloud-init's copy of the first login key is adopted that way) or held before
and no longer does: a key the program retired must not stay accepted through a
stray copy. So a rotation is: the block holds old and new (first `pulumi up`),
then only the new one (second `pulumi up`, which already logs in with it).

The file is replaced by rename (sshd reads the old or the new file, never half
of one), owned by USER, mode 0600, in a 0700 ~/.ssh. Nothing restarts: sshd
reads authorized_keys at each login. Prints "unchanged" or "installed" and the
SHA-256 fingerprints of the accepted keys (public: no secret is involved).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import pwd
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

PROG = "mariadb-kms-login-keys"
BEGIN = "# BEGIN mariadb-kms login keys (pulumi up rewrites this block: sshAuthorizedKey, sshNextAuthorizedKey)"
END = "# END mariadb-kms login keys"
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})


class LoginKeysError(Exception):
    pass


def key_of(line: str) -> tuple[str, str] | None:
    """(type, base64) of an authorized_keys line, options in front allowed; None for a comment or blank."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    tokens = stripped.split()
    for i, token in enumerate(tokens[:-1]):
        if token in KEY_TYPES:
            return token, tokens[i + 1]
    return None


def fingerprint(key: tuple[str, str]) -> str:
    digest = hashlib.sha256(base64.b64decode(key[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_managed(text: str) -> list[str]:
    """The keys on stdin: one OpenSSH public key line each, no options, at least one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise LoginKeysError("no login key on stdin: refusing to leave the login user without the program's key")
    for ln in lines:
        parts = ln.split()
        if parts[0] not in KEY_TYPES or len(parts) < 2:
            raise LoginKeysError(f"not an OpenSSH public key line: {ln[:40]!r}")
        try:
            base64.b64decode(parts[1], validate=True)
        except ValueError as err:
            raise LoginKeysError(f"the base64 part of a {parts[0]} key does not decode") from err
    return lines


def split_block(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """(lines outside the managed block, lines inside it)."""
    outside: list[str] = []
    inside: list[str] = []
    in_block = False
    for ln in lines:
        if ln.strip() == BEGIN:
            in_block = True
        elif ln.strip() == END and in_block:
            in_block = False
        else:
            (inside if in_block else outside).append(ln)
    return outside, inside


def merge(existing: str, managed: Sequence[str]) -> tuple[str, list[str]]:
    """The new authorized_keys text and the fingerprints removed from outside the block (pure)."""
    outside, inside = split_block(existing.splitlines())
    wanted = {key_of(k) for k in managed}
    retired = {key_of(ln) for ln in inside} - wanted
    kept: list[str] = []
    removed: list[str] = []
    for ln in outside:
        key = key_of(ln)
        if key is not None and (key in wanted or key in retired):
            if key in retired:
                removed.append(fingerprint(key))
            continue
        kept.append(ln)
    while kept and not kept[-1].strip():
        kept.pop()
    body = [*kept, BEGIN, *managed, END]
    return "\n".join(body) + "\n", removed


def write_atomically(path: Path, text: str, uid: int, gid: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".authorized_keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply(user: str, managed: Sequence[str]) -> tuple[bool, list[str]]:
    """Install the block for ``user``; (changed, fingerprints removed from outside the block)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError as err:
        raise LoginKeysError(f"no user {user!r} on this host") from err
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    if ssh_dir.is_symlink():
        raise LoginKeysError(f"{ssh_dir} is a symlink: refusing to write through it")
    if not ssh_dir.exists():
        ssh_dir.mkdir(mode=0o700)
        os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
    path = ssh_dir / "authorized_keys"
    if path.is_symlink():
        raise LoginKeysError(f"{path} is a symlink: refusing to write through it")
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    text, removed = merge(existing, managed)
    st = path.stat() if path.exists() else None
    if text == existing and st is not None and (st.st_uid, st.st_mode & 0o777) == (entry.pw_uid, 0o600):
        return False, removed
    write_atomically(path, text, entry.pw_uid, entry.pw_gid)
    return True, removed


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--user", required=True, help="the SSH login user whose authorized_keys is managed")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        managed = parse_managed(sys.stdin.read())
        changed, removed = apply(args.user, managed)
    except (LoginKeysError, OSError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    for fp in removed:
        print(f"{PROG}: removed a retired login key outside the block: {fp}")
    status = "installed" if changed else "unchanged"
    accepted = ", ".join(fingerprint(k) for k in (key_of(m) for m in managed) if k is not None)
    print(f"{PROG}: {status} {args.user}'s authorized_keys; the program's keys: {accepted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
