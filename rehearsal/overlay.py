"""The declared overlay: what reaches a rehearsal host that ``pulumi up`` would not send, and nothing else.

Pure (no pulumi, no hosts): functions from the recorded plan to what the
rehearsal sends, and the diff between the two. Each change belongs to one
declared item (``DECLARED``); ``changes`` compares what was recorded with what
is sent, file by file, so anything outside the declared items shows up.

The items, and why each is needed on this machine:

- ``kms-endpoint``: ``endpoint_url`` in ``/etc/mariadb-kms/unwrap.conf``
  (wherever the plan carries that file: EC2 user-data, the seed and config
  payloads): the unwrap unit talks to moto's KMS server on the bridge instead
  of AWS.
- ``ec2-credentials``: an EC2 node has no instance profile here (no IMDS), so
  its unwrap.conf also names a credentials file, ``credentials_file`` and
  ``profile``, exactly as an on-prem node's does, and the rehearsal writes
  that file (root, 0600) before the SSH path starts. Only the root unwrap unit
  reads it; ``mariadb.service`` and ``mariadbd`` see nothing new.
- ``data-volume``: ``device=none`` in
  ``/etc/mariadb-kms/data-volume.conf.d/rehearsal.conf`` (added to EC2
  user-data): there is no EBS volume to find and format; the testbed binds a
  loop-backed ext4 image, unencrypted, at ``/srv/mariadb-kms`` instead. EBS
  encryption is AWS's and is not rehearsed. (The on-prem host's volume is
  what its administrator prepares, ``onprem-admin``.)
- ``package-repository``: the local Debian repository's apt source, and
  Debian's own sources emptied (hosts have no internet route).
- ``addresses``: ``/etc/hosts`` and ``/etc/hostname`` (a cloud's DNS and
  cloud-init's meta-data do this on EC2).
- ``dpkg-unsafe-io``: ``force-unsafe-io`` for dpkg (a file in
  ``/etc/dpkg/dpkg.cfg.d/``): dpkg syncs every file it unpacks, and the hosts
  share this machine's one disk, so three installs at once wait on each
  other's syncs. Disposable hosts need no crash-safe package unpacking; the
  packages, their configuration and MariaDB itself are unchanged.
- ``onprem-admin``: what an on-prem administrator provides before the first
  ``pulumi up``: the SSH user with passwordless sudo, the program's public
  key in its ``authorized_keys``, and the host key that config pins (made
  with cloud-init's NoCloud seed on that host); and the data volume, an ext4
  filesystem made with ``-O encrypt`` mounted at ``/srv/mariadb-kms`` (a
  loop-backed image made on this machine and bound into the host).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from components.cloud_config import DATA_VOLUME_CONF_PATH, cloud_config_text
from components.node_files import CREDENTIALS_PATH, CREDENTIALS_PROFILE, UNWRAP_CONF_PATH, render_credentials_file
from components.remote_steps import put_payload
from rehearsal.plan import PutFiles, RecordedCommand, decode_put, is_put_payload

DATA_VOLUME_OVERRIDE_PATH = f"{DATA_VOLUME_CONF_PATH}.d/rehearsal.conf"
DPKG_UNSAFE_IO_PATH = "/etc/dpkg/dpkg.cfg.d/mariadb-kms-rehearsal"
DPKG_UNSAFE_IO = (
    "# mariadb-kms rehearsal: disposable hosts on one shared disk (rehearsal/overlay.py)\nforce-unsafe-io\n"
)
REDACTED = "<secret: not shown>"


@dataclass(frozen=True)
class Item:
    key: str
    summary: str


DECLARED: tuple[Item, ...] = (
    Item("kms-endpoint", "endpoint_url in unwrap.conf: the unwrap unit talks to moto's KMS server on the bridge"),
    Item("ec2-credentials", "EC2 nodes: a root 0600 credentials file named in unwrap.conf, instead of an instance "
                            "profile (no IMDS here); read by the unwrap unit only, as on premises"),
    Item("data-volume", f"EC2 nodes: device=none in {DATA_VOLUME_OVERRIDE_PATH}: no EBS volume; an unencrypted "
                        "loop-backed ext4 stand-in is bound at /srv/mariadb-kms (EBS encryption is not rehearsed)"),
    Item("package-repository", "the local Debian repository's apt source; Debian's sources emptied (no internet)"),
    Item("addresses", "/etc/hosts and /etc/hostname of the testbed hosts"),
    Item("dpkg-unsafe-io", f"{DPKG_UNSAFE_IO_PATH}: dpkg does not sync each unpacked file (speed only; the hosts "
                           "share one disk)"),
    Item("onprem-admin", "on-prem host: the SSH user with passwordless sudo, the program's authorized key, the "
                         "host key config pins and an ext4 -O encrypt data volume at /srv/mariadb-kms (what its "
                         "administrator provides)"),
)
DECLARED_KEYS = frozenset(i.key for i in DECLARED)


@dataclass(frozen=True)
class Settings:
    kms_endpoint_url: str


# --------------------------------------------------------------------------
# From the recorded plan to what is sent
# --------------------------------------------------------------------------


def unwrap_conf(text: str, settings: Settings, *, ec2: bool) -> str:
    """unwrap.conf with the endpoint (and, on EC2, the credentials file) added to its [unwrap] section.

    Line edits, not a re-render, so the diff shows exactly the added lines.
    """
    values = {"endpoint_url": settings.kms_endpoint_url}
    if ec2:
        values.update({"credentials_file": CREDENTIALS_PATH, "profile": CREDENTIALS_PROFILE})
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "[unwrap]")
    except StopIteration:
        raise ValueError("unwrap.conf has no [unwrap] section") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    body = lines[start + 1:end]
    present = {line.split("=", 1)[0].strip(): i for i, line in enumerate(body) if "=" in line}
    for key in values:
        if key in present:
            raise ValueError(f"unwrap.conf already sets {key}: the recorded plan is not what the overlay expects")
    while body and not body[-1].strip():
        body.pop()
    body += [f"{k} = {v}" for k, v in values.items()]
    tail = lines[end:]
    return "\n".join([*lines[:start + 1], *body, "", *tail]).rstrip("\n") + "\n\n"


def put_stdin(stdin: str, settings: Settings, *, ec2: bool) -> str:
    """A put payload with the overlay applied; the very same string when it carries no unwrap.conf."""
    files = decode_put(stdin)
    if UNWRAP_CONF_PATH not in files:
        return stdin
    content, mode, owner = files[UNWRAP_CONF_PATH]
    changed: dict[str, tuple[bytes | str, int, str]] = dict(files)
    changed[UNWRAP_CONF_PATH] = (unwrap_conf(content.decode(), settings, ec2=ec2).encode(), mode, owner)
    return put_payload(changed)


def command_stdin(cmd: RecordedCommand, settings: Settings, *, ec2: bool) -> tuple[str | None, list[Change]]:
    """What a recorded command gets on stdin (the overlay applied to a put payload), and the diff of it."""
    stdin = cmd.stdin
    if stdin is None or not is_put_payload(stdin):
        return stdin, []
    new = put_stdin(stdin, settings, ec2=ec2)
    if new is stdin:
        return stdin, []
    return new, file_changes(f"stdin {cmd.name}", decode_put(stdin), decode_put(new), ec2=ec2,
                             secret=cmd.stdin_secret)


def user_data(cloud_config: str, settings: Settings) -> str:
    """An EC2 node's cloud-config text with unwrap.conf overlaid and the data-volume override added."""
    data = yaml.safe_load(cloud_config)
    if cloud_config_text(data) != cloud_config:
        raise ValueError("the recorded user-data does not round-trip through the program's own dumper")
    entries = data.get("write_files") or []
    found = [e for e in entries if e.get("path") == UNWRAP_CONF_PATH]
    if len(found) != 1 or found[0].get("encoding"):
        raise ValueError(f"user-data: expected one plain-text {UNWRAP_CONF_PATH} in write_files")
    found[0]["content"] = unwrap_conf(found[0]["content"], settings, ec2=True)
    entries.append({
        "path": DATA_VOLUME_OVERRIDE_PATH,
        "permissions": "0644",
        "owner": "root:root",
        "content": "# mariadb-kms rehearsal: no EBS volume; the testbed binds an unencrypted stand-in there.\n"
                   "device=none\n",
    })
    return cloud_config_text(data)


def ec2_credentials(access_key_id: str, secret_access_key: str) -> str:
    """The file an EC2 host gets instead of an instance profile: the program's own on-prem format."""
    return render_credentials_file(access_key_id, secret_access_key)


def onprem_admin_cloud_config(*, hostname: str, user: str, authorized_key: str, host_private_key: str,
                              host_public_key: str) -> str:
    """What the on-prem host's administrator set up, as a NoCloud seed for that host."""
    config = {
        "hostname": hostname,
        "ssh_pwauth": False,
        "disable_root": True,
        "ssh_deletekeys": True,
        "ssh_keys": {"ed25519_private": host_private_key, "ed25519_public": host_public_key},
        "users": [{
            "name": user,
            "gecos": "mariadb-kms deploy user (on-prem admin)",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": [authorized_key],
        }],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=4096)


# --------------------------------------------------------------------------
# What differs, file by file
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    target: str  # "user-data aws-a", "stdin aws-a-ssh-config", "host dc-1"
    path: str
    kind: str  # "modified", "added", "removed"
    item: str  # the declared item it belongs to, or "UNDECLARED"
    diff: str  # unified diff; secret content replaced by REDACTED

    def as_dict(self) -> dict[str, str]:
        return {"target": self.target, "path": self.path, "kind": self.kind, "item": self.item, "diff": self.diff}


def _text(content: bytes, secret: bool, which: str) -> list[str]:
    if secret:
        return [f"{REDACTED} ({which})\n"]
    try:
        return content.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return [f"<{len(content)} bytes of binary content>\n"]


def _unified(target: str, path: str, old: list[str], new: list[str], *, added: bool = False) -> str:
    before = "/dev/null" if added else f"recorded:{target}:{path}"
    return "".join(difflib.unified_diff(old, new, before, f"sent:{target}:{path}", n=2))


def classify(path: str, *, ec2: bool, added_lines: list[str]) -> str:
    """Which declared item a changed file belongs to (``UNDECLARED`` if none)."""
    if path == UNWRAP_CONF_PATH:
        keys = {line.split("=", 1)[0].strip() for line in added_lines if "=" in line}
        allowed = {"endpoint_url"} | ({"credentials_file", "profile"} if ec2 else set())
        if keys and keys <= allowed:
            return "kms-endpoint" if keys == {"endpoint_url"} else "kms-endpoint+ec2-credentials"
    if path == DATA_VOLUME_OVERRIDE_PATH and ec2:
        return "data-volume"
    return "UNDECLARED"


def file_changes(target: str, recorded: PutFiles, sent: PutFiles, *, ec2: bool, secret: bool) -> list[Change]:
    out: list[Change] = []
    for path in sorted(set(recorded) | set(sent)):
        old, new = recorded.get(path), sent.get(path)
        if old == new:
            continue
        if old is not None and new is not None and old[1:] != new[1:]:
            out.append(Change(target, path, "modified", "UNDECLARED", f"mode/owner {old[1]:o} {old[2]} -> "
                                                                      f"{new[1]:o} {new[2]}\n"))
            continue
        old_lines = _text(old[0], secret, "recorded") if old else []
        new_lines = _text(new[0], secret, "sent") if new else []
        diff = _unified(target, path, old_lines, new_lines, added=old is None)
        added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
        removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
        kind = "added" if old is None else "removed" if new is None else "modified"
        item = classify(path, ec2=ec2, added_lines=added) if not removed and kind != "removed" else "UNDECLARED"
        out.append(Change(target, path, kind, item, diff))
    return out


def user_data_files(cloud_config: str) -> tuple[PutFiles, dict[str, Any]]:
    """write_files as {path: (content, mode, owner)} and every other top-level key of a cloud-config."""
    import base64

    data = yaml.safe_load(cloud_config) or {}
    files: PutFiles = {}
    for entry in data.pop("write_files", None) or []:
        content = str(entry.get("content", ""))
        raw = base64.b64decode(content) if entry.get("encoding") == "b64" else content.encode()
        files[str(entry["path"])] = (raw, int(str(entry.get("permissions", "0644")), 8), str(entry.get("owner", "")))
    return files, data


def user_data_changes(node: str, recorded: str, sent: str) -> list[Change]:
    target = f"user-data {node}"
    old_files, old_rest = user_data_files(recorded)
    new_files, new_rest = user_data_files(sent)
    out = file_changes(target, old_files, new_files, ec2=True, secret=False)
    for key in sorted(set(old_rest) | set(new_rest)):
        if old_rest.get(key) != new_rest.get(key):
            # Only the key's name: its value may be the host's private key (ssh_keys).
            out.append(Change(target, key, "modified", "UNDECLARED", f"top-level key {key!r} differs\n"))
    return out


def host_file_changes(node: str, files: Mapping[str, tuple[str, str]]) -> list[Change]:
    """Files put on a host outside the plan: {path: (content or REDACTED, item)}."""
    return [
        Change(f"host {node}", path, "added", item,
               _unified(f"host {node}", path, [], content.splitlines(keepends=True), added=True))
        for path, (content, item) in sorted(files.items())
    ]
