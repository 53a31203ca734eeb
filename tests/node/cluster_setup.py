"""Install a kms-envelope Galera cluster on testbed hosts the way the program installs it, and talk to it.

The program's on-prem path, carried out by hand on real hosts:

1. ``node/`` copied to a staging directory per ``node/MANIFEST`` (what ``CopyToRemote`` / the put step
   carries), then the seed files with the program's modes: ``unwrap.conf`` (0644), the ciphertext blob
   (0600 root), ``90-mariadb-kms-encryption.cnf`` (0644) and the on-prem AWS credentials file (0600 root,
   shared-credentials format; a fake access key pair, which moto accepts);
2. ``mariadb-kms-install --from <staging dir>`` (packages from the testbed's repository, datadir born
   encrypted; it never starts MariaDB);
3. ``91-mariadb-kms-node.cnf`` (Galera, members), then ``galera_new_cluster`` once on the first node and
   ``systemctl start mariadb`` on the others.

The cluster data key is made as the program makes it: a KMS key in the emulator, then
``DataKeyProvider.create`` (GenerateDataKeyWithoutPlaintext) against the emulator's endpoint.
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from components.config import ClusterConfig, NodeConfig, parse_config
from components.data_key_provider import P_BLOB, P_ENDPOINT, P_ESCROW, P_KEY_ARN, P_TAGS, DataKeyProvider
from components.mycnf import ERROR_LOG, render_mycnf
from components.node_files import (
    BLOB_PATH,
    CREDENTIALS_PATH,
    MYCNF_ENCRYPTION_PATH,
    MYCNF_NODE_PATH,
    UNWRAP_CONF_PATH,
    node_files,
    render_credentials_file,
    render_unwrap_conf,
)
from components.tls_material import verify_tls_args
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import (
    join,
    journal_cursor,
    journal_since,
    keyfile_present,
    sql,
    start,
    stop,
    unit_state,
    wait_synced,
    wsrep_status,
)
from rehearsal.testbed import ExecResult, Testbed

# Talking to a host's MariaDB has one copy, in rehearsal.mariadb_on_host (shared with the runner); the
# modules that still set up by hand import it from here.
__all__ = [
    "join",
    "journal_cursor",
    "journal_since",
    "keyfile_present",
    "sql",
    "start",
    "stop",
    "unit_state",
    "wait_synced",
    "wsrep_status",
]

MODE = "kms-envelope"
STAGING_DIR = "/root/mariadb-kms-node"  # the copy of node/ that `mariadb-kms-install --from` reads
# The modes the program gives the files it places (components/remote_steps.py, components/cloud_config.py).
UNWRAP_CONF_MODE = 0o644
BLOB_MODE = 0o600
MYCNF_MODE = 0o644
CREDENTIALS_MODE = 0o600
# Encryption in transit needs certificates from the program's cluster CA (pulumi-tls), which has no stand-in
# here; these hosts prove encryption at rest, so every TLS channel is off, as config can turn them off, and
# the verify tool is told so the way the program tells it (``verify_args``).
TLS_OFF = {"tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False}
ADMIN_ROLE = "arn:aws:iam::123456789012:role/kms-admin"
# A syntactically valid host key: the testbed reaches hosts by nsenter, the config only needs one.
DUMMY_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmAzJ0x7dGVzdGJlZCBkdW1teSBob3N0IGtleSEhISE="


class ClusterSetupError(AssertionError):
    """A step of the install or a wait failed; the message carries the command's output tail."""


@dataclass(frozen=True)
class ClusterKey:
    key_id: str  # the bare key id (moto's DisableKey/EnableKey need it, not the ARN)
    key_arn: str
    blob: bytes  # the cluster data key's CiphertextBlob, as the program stores it


@dataclass(frozen=True, repr=False)
class FakeCredentials:
    """An on-prem node's access key pair: random, so a search for it can only find what we planted."""

    access_key_id: str
    secret_access_key: str

    @classmethod
    def generate(cls) -> FakeCredentials:
        key_id = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
        secret = "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(40))
        return cls(key_id, secret)

    def __repr__(self) -> str:  # never in test output
        return f"FakeCredentials({self.access_key_id[:4]}…)"


def make_cluster_key(kms: KmsServer, description: str = "mariadb-kms node tests") -> ClusterKey:
    """A KMS key in the emulator and the cluster data key under it, made by the program's own provider."""
    kms_client = kms.client()
    meta = kms_client.create_key(Description=description)["KeyMetadata"]

    def emulator_client(service: str, region: str, endpoint_url: str | None) -> Any:
        assert service == "kms" and endpoint_url == kms.endpoint_url, (service, endpoint_url)
        return kms.client()

    provider = DataKeyProvider(client_factory=emulator_client)
    created = provider.create({P_KEY_ARN: meta["Arn"], P_ESCROW: False, P_ENDPOINT: kms.endpoint_url, P_TAGS: {}})
    outs = created.outs or {}
    return ClusterKey(key_id=meta["KeyId"], key_arn=str(outs[P_KEY_ARN]), blob=base64.b64decode(outs[P_BLOB]))


def cluster_config(testbed: Testbed, names: Sequence[str], *, gcache_size: str = "64M") -> ClusterConfig:
    """The stack config of an all-on-premises cluster whose nodes are these testbed hosts."""
    raw = {
        "keyAdmins": [ADMIN_ROLE, ADMIN_ROLE.replace("kms-admin", "kms-admin-2")],
        "gcacheSize": gcache_size,
        "clusterName": "mariadb-kms-test",
        **TLS_OFF,
        "onPremNodes": [
            {"name": n, "address": testbed.hosts[n].address, "sshUser": "root", "hostKey": DUMMY_HOST_KEY}
            for n in names
        ],
    }
    return parse_config(raw, stack="nodetest", region="us-east-1")


def verify_args(cluster: ClusterConfig) -> list[str]:
    """What the program passes to mariadb-kms-verify for this config (the channels turned off)."""
    return verify_tls_args(cluster.tls)


def node_config(cluster: ClusterConfig, name: str) -> NodeConfig:
    return next(n for n in cluster.nodes if n.name == name)


def member_addresses(testbed: Testbed, cluster: ClusterConfig) -> list[str]:
    return [testbed.hosts[n.name].address for n in cluster.nodes]


def rendered_mycnf(testbed: Testbed, cluster: ClusterConfig, name: str, key: ClusterKey) -> dict[str, str]:
    return render_mycnf(
        node_config(cluster, name),
        cluster,
        node_address=testbed.hosts[name].address,
        member_addresses=member_addresses(testbed, cluster),
        key_arn=key.key_arn,
    )


def _require(result: ExecResult, what: str) -> ExecResult:
    if result.rc != 0:
        raise ClusterSetupError(f"{what} exited {result.rc}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def tmp_on_disk(testbed: Testbed, host: str) -> None:
    """Put /tmp back on the root disk, as on a Debian 12 cloud image.

    systemd-nspawn mounts a tmpfs on a container's /tmp, where MariaDB's tmpdir (/tmp) would not be at
    rest and a spilled sort would prove nothing about encrypt_tmp_files. Done before MariaDB first starts
    (mariadb.service has PrivateTmp=false, so mariadbd uses this /tmp).
    """
    if testbed.exec(host, ["findmnt", "-n", "-o", "FSTYPE", "/tmp"]).stdout.strip() == "tmpfs":
        _require(testbed.exec(host, ["umount", "/tmp"]), f"{host}: umount /tmp")


def stage_node_files(testbed: Testbed, host: str) -> str:
    """A copy of node/ on the host, per node/MANIFEST: what the program's on-prem path carries over."""
    testbed.exec(host, ["install", "-d", "-m", "0700", STAGING_DIR], check=True)
    for f in node_files(MODE):
        testbed.put_file(host, f"{STAGING_DIR}/{f.source}", f.content, f.mode)
    return STAGING_DIR


def place_seed_files(
    testbed: Testbed,
    host: str,
    *,
    cluster: ClusterConfig,
    key: ClusterKey,
    kms: KmsServer,
    credentials: FakeCredentials,
) -> None:
    """What the install path needs first: unwrap.conf, the blob, the encryption config, the credentials."""
    unwrap_conf = render_unwrap_conf(
        mode=MODE, key_arn=key.key_arn, region=cluster.region, on_premises=True, endpoint_url=kms.endpoint_url
    )
    testbed.put_file(host, UNWRAP_CONF_PATH, unwrap_conf, UNWRAP_CONF_MODE)
    testbed.put_file(host, BLOB_PATH, key.blob, BLOB_MODE)
    mycnf = rendered_mycnf(testbed, cluster, host, key)
    testbed.put_file(host, MYCNF_ENCRYPTION_PATH, mycnf[MYCNF_ENCRYPTION_PATH], MYCNF_MODE)
    # The secret travels on stdin only (put_file), as the program's credentials step does.
    testbed.put_file(
        host,
        CREDENTIALS_PATH,
        render_credentials_file(credentials.access_key_id, credentials.secret_access_key),
        CREDENTIALS_MODE,
    )


def install_node(
    testbed: Testbed,
    host: str,
    *,
    cluster: ClusterConfig,
    key: ClusterKey,
    kms: KmsServer,
    credentials: FakeCredentials,
) -> ExecResult:
    """Stage node/, place the seed files, run mariadb-kms-install --from, then place the node's Galera config."""
    tmp_on_disk(testbed, host)
    staging = stage_node_files(testbed, host)
    place_seed_files(testbed, host, cluster=cluster, key=key, kms=kms, credentials=credentials)
    result = _require(
        testbed.exec(host, [f"{staging}/mariadb-kms-install", "--from", staging], timeout=900),
        f"{host}: mariadb-kms-install",
    )
    mycnf = rendered_mycnf(testbed, cluster, host, key)
    testbed.put_file(host, MYCNF_NODE_PATH, mycnf[MYCNF_NODE_PATH], MYCNF_MODE)
    return result


def in_parallel(names: Iterable[str], action: Callable[[str], Any]) -> dict[str, Any]:
    """``action(name)`` for every host at once; the first failure is raised after all have finished."""
    names = list(names)
    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = {name: pool.submit(action, name) for name in names}
    return {name: future.result() for name, future in futures.items()}


# --------------------------------------------------------------------------
# Talking to MariaDB on a host
# --------------------------------------------------------------------------


def bootstrap(testbed: Testbed, host: str) -> None:
    """``galera_new_cluster``: run once, by the program, on the one chosen node."""
    result = testbed.exec(host, ["galera_new_cluster"], timeout=300)
    if result.rc != 0:
        # The cause is in the units' journal and in MariaDB's error log on the data volume, not in the exit.
        journal = testbed.exec(host, "journalctl -u mariadb-kms-unwrap -u mariadb-kms-datadir-key -u mariadb "
                                     "--no-pager -o short-monotonic -n 80").stdout
        error_log = testbed.exec(host, ["tail", "-n", "40", ERROR_LOG]).stdout
        raise ClusterSetupError(f"{host}: galera_new_cluster exited {result.rc}:\n{result.stderr[-2000:]}\n"
                                f"--- journal ---\n{journal}\n--- error log ---\n{error_log}")
    wait_synced(testbed, host, 1)


# --------------------------------------------------------------------------
# The journal
# --------------------------------------------------------------------------


