"""The node software (``node/``) as the program installs it, and the node's own small config file.

One loader, one copy: ``node/MANIFEST`` names each file's destination, mode,
owner and the key-management modes it belongs to. The SSH path's tarball on
stdin (every node, EC2 and on premises) and the first-boot files in EC2
user-data both start from what ``load_node_files`` returns, so the bytes a node
runs are the bytes in the repository. Pure: no pulumi import; the disk is read once per
process (cached).

The paths below are the contract between the renderer (``components/mycnf``),
the node files and the program; they are Debian 12's where Debian decides.
"""

from __future__ import annotations

import ast
import configparser
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
MANIFEST_NAME = "MANIFEST"

Mode = Literal["kms-envelope", "aws-plugin"]
KEY_MANAGEMENT_MODES: tuple[Mode, ...] = get_args(Mode)

# Where things live on a node.
CONF_DIR = "/etc/mariadb-kms"
UNWRAP_CONF_PATH = f"{CONF_DIR}/unwrap.conf"
BLOB_PATH = f"{CONF_DIR}/datakey.blob"  # the cluster data key's KMS ciphertext blob (not secret by itself)
CREDENTIALS_PATH = f"{CONF_DIR}/aws-credentials"  # on premises only; root 0600, AWS shared-credentials format
CREDENTIALS_PROFILE = "mariadb-kms"
RUNTIME_DIR = "/run/mariadb-kms"  # tmpfs: the plaintext key lives here and nowhere else on disk
KEYFILE_PATH = f"{RUNTIME_DIR}/keyfile"
GCACHE_DIR = "/run/galera"  # its own tmpfs mount (run-galera.mount): /run is capped at 20% of RAM
DATADIR = "/var/lib/mysql"
MYCNF_DIR = "/etc/mysql/mariadb.conf.d"
# Two files: the encryption part holds nothing about membership, so it can be
# placed at first boot (user-data) and the datadir initialised under it; the
# node part (Galera, members, tunables) arrives by the rolling SSH path.
MYCNF_ENCRYPTION_PATH = f"{MYCNF_DIR}/90-mariadb-kms-encryption.cnf"
MYCNF_NODE_PATH = f"{MYCNF_DIR}/91-mariadb-kms-node.cnf"
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"  # Debian's galera-4
PLUGIN_DIR = "/usr/lib/mysql/plugin"  # Debian's @@plugin_dir
AWS_PLUGIN_SO = f"{PLUGIN_DIR}/aws_key_management.so"
UNWRAP_UNIT = "mariadb-kms-unwrap.service"


@cache
def node_constant(source: str, name: str) -> Any:
    """A literal a node tool assigns at its top level (``ENCRYPTION_FLAGS_ON = (...)``), read from its file.

    The node tools run with the standard library only and cannot import ``components``; where the program
    needs the same fact, it reads the tool's own assignment, so the fact is written once, in the file the
    node runs.
    """
    tree = ast.parse((NODE_DIR / source).read_text(encoding="utf-8"))
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return ast.literal_eval(stmt.value)
    raise LookupError(f"node/{source} assigns no top-level literal {name}")


@dataclass(frozen=True)
class NodeFile:
    source: str  # path under node/
    dest: str  # absolute path on the node
    mode: int
    owner: str  # "user:group"
    modes: tuple[str, ...]  # key-management modes that install it
    content: bytes


class ManifestError(ValueError):
    pass


def _parse_manifest(text: str, node_dir: Path) -> tuple[NodeFile, ...]:
    files: list[NodeFile] = []
    seen_dest: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 5:
            raise ManifestError(f"{MANIFEST_NAME}:{lineno}: expected 'source dest mode owner modes', got {raw!r}")
        source, dest, mode_text, owner, modes_text = parts
        modes = KEY_MANAGEMENT_MODES if modes_text == "all" else tuple(modes_text.split(","))
        unknown = set(modes) - set(KEY_MANAGEMENT_MODES)
        if unknown:
            raise ManifestError(f"{MANIFEST_NAME}:{lineno}: unknown mode(s) {sorted(unknown)}")
        if not dest.startswith("/") or dest in seen_dest:
            raise ManifestError(f"{MANIFEST_NAME}:{lineno}: destination {dest!r} not absolute or listed twice")
        if ":" not in owner:
            raise ManifestError(f"{MANIFEST_NAME}:{lineno}: owner {owner!r} is not user:group")
        path = (node_dir / source).resolve()
        if node_dir.resolve() not in path.parents or not path.is_file():
            raise ManifestError(f"{MANIFEST_NAME}:{lineno}: {source!r} is not a file under {node_dir}")
        seen_dest.add(dest)
        files.append(NodeFile(source, dest, int(mode_text, 8), owner, modes, path.read_bytes()))
    return tuple(files)


@lru_cache(maxsize=4)
def _manifest(node_dir: Path) -> tuple[NodeFile, ...]:
    return _parse_manifest((node_dir / MANIFEST_NAME).read_text(encoding="utf-8"), node_dir)


def node_files(mode: str, node_dir: Path = NODE_DIR) -> tuple[NodeFile, ...]:
    """Every node file for ``mode``, in manifest order, MANIFEST itself included (the on-prem installer reads it)."""
    if mode not in KEY_MANAGEMENT_MODES:
        raise ValueError(f"unknown key-management mode {mode!r}")
    listed = tuple(f for f in _manifest(node_dir) if mode in f.modes)
    manifest = NodeFile(
        MANIFEST_NAME, f"{CONF_DIR}/node/{MANIFEST_NAME}", 0o644, "root:root", KEY_MANAGEMENT_MODES,
        (node_dir / MANIFEST_NAME).read_bytes(),
    )
    return (*listed, manifest)


def load_node_files(mode: str, node_dir: Path = NODE_DIR) -> dict[str, tuple[bytes, int, str]]:
    """``{dest_path: (content, mode, owner)}`` for every node file a node in ``mode`` runs."""
    return {f.dest: (f.content, f.mode, f.owner) for f in node_files(mode, node_dir)}


def render_unwrap_conf(
    *,
    mode: str,
    key_arn: str,
    region: str,
    on_premises: bool,
    endpoint_url: str | None = None,
    encryption_context: Mapping[str, str] | None = None,
) -> str:
    """``/etc/mariadb-kms/unwrap.conf``: what the unwrap unit decrypts, with whose credentials, and where it writes.

    Holds no secret: the credentials file it names is installed separately (root 0600, on stdin).
    ``endpoint_url`` is for the node tests' local KMS stand-in only (the program never sets it; the
    rehearsal adds it by its overlay); leave it unset against AWS.
    """
    if mode not in KEY_MANAGEMENT_MODES:
        raise ValueError(f"unknown key-management mode {mode!r}")
    cp = configparser.ConfigParser(interpolation=None)
    cp["unwrap"] = {
        "mode": mode,
        "key_arn": key_arn,
        "region": region,
        "blob": BLOB_PATH,
        "keyfile": KEYFILE_PATH,
        "datadir": DATADIR,
        "gcache_dir": GCACHE_DIR,
    }
    if on_premises:
        cp["unwrap"]["credentials_file"] = CREDENTIALS_PATH
        cp["unwrap"]["profile"] = CREDENTIALS_PROFILE
    if endpoint_url:
        cp["unwrap"]["endpoint_url"] = endpoint_url
    if encryption_context:
        # One JSON line: the context's keys hold ':', which configparser takes as a delimiter.
        cp["unwrap"]["encryption_context"] = json.dumps(dict(encryption_context), sort_keys=True)
    out = io.StringIO()
    out.write("# mariadb-kms unwrap settings; rendered by the program, do not edit on the node.\n")
    cp.write(out)
    return out.getvalue()


def render_credentials_file(access_key_id: str, secret_access_key: str) -> str:
    """The on-prem node's AWS shared-credentials file (goes to the node on stdin, stored root 0600)."""
    return (
        f"[{CREDENTIALS_PROFILE}]\n"
        f"aws_access_key_id = {access_key_id}\n"
        f"aws_secret_access_key = {secret_access_key}\n"
    )
