"""MariaDB configuration for a node, rendered from the cluster config (pure: no pulumi).

Two files, because they change for different reasons and arrive at different
times (see ``render_mycnf``):

- ``90-mariadb-kms-encryption.cnf`` (``render_encryption_cnf``): the key
  management plugin and every encryption flag. Nothing about membership, so it
  can be placed at first boot and the datadir initialised under it: the
  system tables are born encrypted (Aria never re-encrypts existing tables).
- ``91-mariadb-kms-node.cnf`` (``render_node_cnf``): Galera (members, this
  node's address and segment, gcache on tmpfs, SST), binlog and query logs,
  and encryption in transit (``tls_lines``, ``tls_provider_options``,
  ``render_sst_section``): the server's certificate for clients, Galera's
  socket.ssl_* provider options for replication and IST, and an ``[sst]``
  group for mariabackup SST over TLS. Every channel is on unless config turns
  it off; an off channel is stated in the file.

Output is deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from components.config import ClusterConfig, NodeConfig, TlsConfig
from components.node_files import (
    DATADIR,
    GALERA_PROVIDER,
    GCACHE_DIR,
    KEYFILE_PATH,
    MYCNF_ENCRYPTION_PATH,
    MYCNF_NODE_PATH,
    node_constant,
)
from components.tls_material import CA_CERT_PATH, CERT_PATH, KEY_PATH, SST_SSL_MODE, TLS_VERSIONS

# The data volume: mounted at one place on EC2 and on premises alike. The datadir lives in a subdirectory
# of it (ext4 cannot encrypt a filesystem's root directory; the subdirectory is bound at DATADIR), and what
# is ours sits beside the datadir, never inside it: an SST joiner deletes files it does not know there.
VOLUME_ROOT = "/srv/mariadb-kms"
VOLUME_DATADIR = f"{VOLUME_ROOT}/data"
# The only directory LOAD DATA INFILE, LOAD_FILE() and SELECT ... INTO OUTFILE may touch: dedicated, empty,
# mysql 0700. With secure_file_priv empty, any account with FILE reads every file mariadbd can open, the
# tmpfs keyfile included (measured), and the key would then replicate as table data.
SECURE_FILE_PRIV_DIR = f"{VOLUME_ROOT}/secure-file-priv"
# The error log on the data volume, not in the journal: applier errors quote row values.
ERROR_LOG_DIR = f"{VOLUME_ROOT}/log"
ERROR_LOG = f"{ERROR_LOG_DIR}/mariadb.err"
# Galera keeps a write-set that does not fit its ring buffer (gcache.size) in a page file of its own, in the
# gcache dir: on tmpfs, so it must be sized for it. wsrep_max_ws_size caps a write-set (a larger transaction
# fails with an error instead of filling the tmpfs), and the tmpfs gets gcache.size plus two such pages: a
# local write-set while it replicates and one received meanwhile (docs/at-rest.md). A tmpfs size is a limit,
# not a reservation: only what is written uses memory.
MAX_WRITE_SET_BYTES = 1 << 30
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size_bytes(text: str) -> int:
    """``256M`` -> bytes (the gcacheSize form: digits and an optional K, M or G)."""
    text = text.strip().upper()
    unit = text[-1] if text and text[-1] in "KMG" else ""
    return int(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit]


def gcache_tmpfs_bytes(cluster: ClusterConfig) -> int:
    """The gcache tmpfs's size= : the ring buffer plus a page file each for two of the largest write-sets."""
    return size_bytes(cluster.mariadb.gcache_size) + 2 * MAX_WRITE_SET_BYTES


# Read by mariadb-kms-install and mariadb-kms-fscrypt: how the datadir is encrypted below MariaDB.
DATADIR_CONF_PATH = "/etc/mariadb-kms/datadir.conf"

# Galera segments: replication traffic crosses the WAN once per segment, not once per node.
SEGMENTS = {"ec2": 0, "onprem": 1}
GALERA_PORT = 4567
LOG_DIR = "/var/log/mysql"
BINLOG_BASENAME = "mariadb-bin"  # relative: in the datadir, so SST and the verify scan see it
SST_USER = "mysql"  # unix_socket account mysql@localhost made by mariadb-install-db --user=mysql

# Options a running member takes as they are without a restart, so a change of them alone restarts
# nobody: a running member accepts a joiner whatever its own member list says, and reads the list again
# only at its next start (a SET GLOBAL of it would reconnect the node, so nothing sets it live).
# node/mariadb-kms-roll leaves the same lines out of its own "applied config" digest.
RESTART_EXEMPT_OPTIONS = ("wsrep_cluster_address",)
_RESTART_EXEMPT_LINE = re.compile(
    r"^[ \t]*(?:" + "|".join(RESTART_EXEMPT_OPTIONS) + r")[ \t]*=[^\n]*(?:\n|$)", re.MULTILINE
)

_HEADER = """\
# mariadb-kms: {what}. Rendered by the program; do not edit on the node.
#
# Encrypted at rest with the cluster data key (KMS-wrapped, one per cluster):
#   InnoDB tablespaces (system, file-per-table, undo), the redo log, the InnoDB
#   temporary tablespace, binary logs, temporary files (filesort, binlog
#   cache, ...), on-disk internal temporary tables, and Aria tables with
#   ROW_FORMAT=PAGE (the mysql.* system tables among them).
# Never encrypted by MariaDB, stated rather than hidden:
#   .frm table definitions (names, columns, types, comments), the error log
#   (on the data volume, which the kernel or EBS encrypts as a whole),
#   the Aria transaction log aria_log.* (row images of changes to the mysql.*
#   system tables: accounts, grants, routines; measured, see mariadb-kms-verify),
#   Galera's grastate.dat/gvwstate.dat (cluster ids, positions), MyISAM/CSV
#   tables and Aria tables in other row formats (mariadb-kms-verify lists any
#   as gaps), and the general/slow query logs (off unless configured).
# Not at rest at all: Galera's gcache (community Galera does not encrypt it)
#   lives on tmpfs ({gcache_dir}); the plaintext key lives on tmpfs
#   ({keyfile}) only while MariaDB runs.
"""


def _header(what: str) -> str:
    return _HEADER.format(what=what, gcache_dir=GCACHE_DIR, keyfile=KEYFILE_PATH)


def _section(name: str, lines: Sequence[tuple[str, str] | str]) -> str:
    out = [f"[{name}]"]
    for line in lines:
        out.append(line if isinstance(line, str) else f"{line[0]} = {line[1]}")
    return "\n".join(out) + "\n"


def _on(flag: bool) -> str:
    return "ON" if flag else "OFF"


def key_management_lines(cluster: ClusterConfig, *, key_arn: str | None) -> list[tuple[str, str] | str]:
    """The key management plugin, loaded FORCE_PLUS_PERMANENT: the server never runs without it."""
    mode = cluster.mariadb.key_management
    if mode == "kms-envelope":
        return [
            "# kms-envelope: mariadb-kms-unwrap.service decrypts the blob into a tmpfs keyfile before each start.",
            ("plugin_load_add", "file_key_management"),
            ("file_key_management", "FORCE_PLUS_PERMANENT"),
            ("file_key_management_filename", KEYFILE_PATH),
            ("file_key_management_encryption_algorithm", "AES_CTR"),
        ]
    if mode == "aws-plugin":
        if not key_arn:
            raise ValueError("aws-plugin mode needs the KMS key ARN (aws_key_management_master_key_id)")
        lines: list[tuple[str, str] | str] = [
            "# aws-plugin: aws_key_management decrypts aws-kms-key.1.1 (the cluster blob, placed in the",
            "# datadir before each start by mariadb-kms-unwrap.service) with KMS itself.",
            ("plugin_load_add", "aws_key_management"),
            ("aws_key_management", "FORCE_PLUS_PERMANENT"),
            ("aws_key_management_master_key_id", key_arn),
            ("aws_key_management_region", cluster.region),
            "# the plugin's default is AES_128; the cluster blob is an AES_256 data key",
            ("aws_key_management_key_spec", "AES_256"),
            ("aws_key_management_request_timeout", "10000"),
            ("aws_key_management_log_level", "Warn"),
        ]
        return lines
    raise ValueError(f"unknown key-management mode {mode!r}")


# Flags that are simply ON: the list the verify tool checks on the node, read from that tool
# (node/mariadb_kms_verify.py), so the program turns on exactly what the node checks.
ENCRYPTION_FLAGS_ON: tuple[str, ...] = tuple(node_constant("mariadb_kms_verify.py", "ENCRYPTION_FLAGS_ON"))


# logEncryption `kernel`: the logs every commit writes, left to the encryption below MariaDB (read from the
# verify tool too, which accepts exactly these OFF when told so and the datadir is kernel-encrypted).
LOG_FLAGS: tuple[str, ...] = tuple(node_constant("mariadb_kms_verify.py", "LOG_FLAGS"))


def logs_left_to_kernel(cluster: ClusterConfig) -> bool:
    return cluster.mariadb.log_encryption == "kernel"


def encryption_flag_lines(cluster: ClusterConfig) -> list[tuple[str, str] | str]:
    m = cluster.mariadb
    off = LOG_FLAGS if logs_left_to_kernel(cluster) else ()
    on = [(flag, "OFF" if flag in off else "ON") for flag in ENCRYPTION_FLAGS_ON]
    # This order, always: a reordered file is a changed config, which restarts every node.
    return [
        ("innodb_encrypt_tables", m.encrypt_tables),
        *on[:2],
        ("innodb_encryption_threads", str(m.encryption_threads)),
        *on[2:],
    ]


def render_encryption_cnf(cluster: ClusterConfig, *, key_arn: str | None) -> str:
    """``90-mariadb-kms-encryption.cnf``: key management and every encryption flag, no membership."""
    lines = key_management_lines(cluster, key_arn=key_arn)
    if logs_left_to_kernel(cluster):
        lines += ["", "# Everything MariaDB can encrypt, encrypted, except the redo and binary logs (logEncryption:",
                  "# kernel): those are encrypted only below MariaDB (fscrypt, dm-crypt or EBS), so they read in",
                  "# plaintext on this running host and in any copy taken below MariaDB (docs/at-rest.md)."]
    else:
        lines += ["", "# Everything MariaDB can encrypt, encrypted."]
    lines += encryption_flag_lines(cluster)
    return _header("key management and encryption") + "\n" + _section("mariadb", lines)


def provider_options(node: NodeConfig, cluster: ClusterConfig, *, node_address: str) -> list[tuple[str, str]]:
    """wsrep_provider_options as ordered pairs, the socket.ssl_* options last."""
    return [
        # Replication listens on the member address only, like the SQL port (bind_address).
        ("gmcast.listen_addr", f"tcp://{_member(node_address)}"),
        ("gmcast.segment", str(SEGMENTS[node.kind])),
        ("gcache.dir", GCACHE_DIR),
        ("gcache.size", cluster.mariadb.gcache_size),
        # gcache is on tmpfs and gone after a restart anyway; don't try to recover it.
        ("gcache.recover", "no"),
        *tls_provider_options(cluster.tls),
    ]


def tls_provider_options(tls: TlsConfig) -> list[tuple[str, str]]:
    """Galera replication and IST over TLS. Galera verifies every peer's chain against socket.ssl_ca and
    refuses peers without a certificate; socket.dynamic stays off, so no plaintext peer is accepted."""
    if not tls.replication:
        return []
    return [
        ("socket.ssl", "YES"),
        ("socket.ssl_ca", CA_CERT_PATH),
        ("socket.ssl_cert", CERT_PATH),
        ("socket.ssl_key", KEY_PATH),
    ]


def tls_lines(tls: TlsConfig) -> list[tuple[str, str] | str]:
    """The server's side of client TLS and whether clients must use it."""
    if not tls.clients:
        return [
            "# Client connections without TLS: tlsClients is false in the stack config.",
            ("require_secure_transport", "OFF"),
        ]
    return [
        "# Clients: TLS under this node's certificate from the cluster CA (clusterCaCertificate verifies it).",
        ("ssl_ca", CA_CERT_PATH),
        ("ssl_cert", CERT_PATH),
        ("ssl_key", KEY_PATH),
        ("tls_version", TLS_VERSIONS),
        "# ON: a TCP client without TLS is refused (the unix socket stays open to local tools).",
        ("require_secure_transport", _on(tls.require_secure_transport)),
    ]


def render_sst_section(tls: TlsConfig) -> str:
    """``[sst]``: read by wsrep_sst_mariabackup, which streams the backup through socat."""
    if not tls.sst:
        return _section("sst", [
            "# SST without TLS: tlsSst is false in the stack config.",
            ("ssl-mode", "DISABLED"),
        ])
    return _section("sst", [
        "# socat with OpenSSL on both ends: each verifies the other's certificate against the cluster CA,",
        "# the donor checks the joiner's certificate name, the joiner checks the donor's one-time secret.",
        ("ssl-mode", SST_SSL_MODE),
        ("ssl-ca", CA_CERT_PATH),
        ("ssl-cert", CERT_PATH),
        ("ssl-key", KEY_PATH),
    ])


def _member(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{GALERA_PORT}"


def no_sql_path_lines() -> list[tuple[str, str] | str]:
    """Files reach SQL only through one dedicated empty directory; the error log goes to the data volume."""
    return [
        "# LOAD DATA INFILE, LOAD_FILE() and SELECT ... INTO OUTFILE only in this empty mysql-only directory:",
        "# no SQL statement reads the keyfile, the blob, credentials or /proc (mariadb-kms-verify tries them).",
        ("secure_file_priv", SECURE_FILE_PRIV_DIR),
        "# On the data volume, beside the datadir (the journal only says where it is).",
        ("log_error", ERROR_LOG),
    ]


def render_node_cnf(
    node: NodeConfig, cluster: ClusterConfig, *, node_address: str, member_addresses: Sequence[str]
) -> str:
    """``91-mariadb-kms-node.cnf``: Galera, binlog, query logs and the listen address for ``node``."""
    if not member_addresses:
        raise ValueError("member_addresses is empty: a node must at least list itself")
    if node_address not in member_addresses:
        raise ValueError(f"node address {node_address!r} is not among the member addresses")
    m = cluster.mariadb
    options = "; ".join(f"{k}={v}" for k, v in provider_options(node, cluster, node_address=node_address))
    lines: list[tuple[str, str] | str] = [
        "# Galera (a node never bootstraps by itself: galera_new_cluster runs once, from the program).",
        ("wsrep_on", "ON"),
        ("wsrep_provider", GALERA_PROVIDER),
        ("wsrep_cluster_name", m.cluster_name),
        ("wsrep_cluster_address", "gcomm://" + ",".join(_member(a) for a in member_addresses)),
        ("wsrep_node_address", node_address),
        ("wsrep_node_name", node.name),
        ("wsrep_provider_options", f'"{options}"'),
        # The largest write-set a transaction may make; the gcache tmpfs has room for two of them.
        ("wsrep_max_ws_size", str(MAX_WRITE_SET_BYTES)),
        "# Physical SST copies encrypted pages (every node holds the same key); it logs in as the",
        "# unix_socket account mysql@localhost, so no password exists anywhere.",
        ("wsrep_sst_method", "mariabackup"),
        ("wsrep_sst_auth", f"{SST_USER}:"),
        ("binlog_format", "ROW"),
        ("default_storage_engine", "InnoDB"),
        ("innodb_autoinc_lock_mode", "2"),
        "",
        "# Clients reach this node on its member address (always local: Galera's IST receiver binds",
        "# it too); the node's own tools use the unix socket.",
        ("bind_address", node_address),
        ("datadir", DATADIR),
        "",
        *no_sql_path_lines(),
        "",
        "# Binary log on (encrypted): changes are kept for point-in-time recovery, and the verify",
        "# tool's canary proves encrypt_binlog on every node.",
        ("log_bin", BINLOG_BASENAME),
        ("log_slave_updates", "ON"),
        "",
        "# Query logs hold statement text in plaintext: off unless configured.",
        ("log_output", "FILE"),
        ("general_log", _on(m.general_log)),
        ("slow_query_log", _on(m.slow_query_log)),
    ]
    if m.general_log:
        lines.append(("general_log_file", f"{LOG_DIR}/general.log"))
    if m.slow_query_log:
        lines.append(("slow_query_log_file", f"{LOG_DIR}/mariadb-slow.log"))
    lines += ["", *tls_lines(cluster.tls)]
    header = _header(f"node {node.name} ({node.kind}) of cluster {m.cluster_name}")
    return header + "\n" + _section("mariadb", lines) + "\n" + render_sst_section(cluster.tls)


def render_mycnf(
    node: NodeConfig,
    cluster: ClusterConfig,
    *,
    node_address: str,
    member_addresses: Sequence[str],
    key_arn: str | None,
) -> dict[str, str]:
    """The node's whole MariaDB config: ``{install path: content}``, both files.

    ``key_arn`` is used in aws-plugin mode (aws_key_management_master_key_id).
    """
    return {
        MYCNF_ENCRYPTION_PATH: render_encryption_cnf(cluster, key_arn=key_arn),
        MYCNF_NODE_PATH: render_node_cnf(
            node, cluster, node_address=node_address, member_addresses=member_addresses
        ),
    }


def datadir_encryption(node: NodeConfig, cluster: ClusterConfig) -> str:
    """EC2: the EBS volume, encrypted by AWS with the cluster's KMS key. On premises: the stack config."""
    return datadir_encryption_of(on_premises=node.kind == "onprem", cluster=cluster)


def datadir_encryption_of(*, on_premises: bool, cluster: ClusterConfig) -> str:
    return cluster.mariadb.onprem_datadir_encryption if on_premises else "ebs"


def render_datadir_conf(node: NodeConfig, cluster: ClusterConfig) -> str:
    """``/etc/mariadb-kms/datadir.conf``: ``encryption=`` for the node's installer and datadir key unit."""
    return render_datadir_conf_of(on_premises=node.kind == "onprem", cluster=cluster)


def render_datadir_conf_of(*, on_premises: bool, cluster: ClusterConfig) -> str:
    mode = datadir_encryption_of(on_premises=on_premises, cluster=cluster)
    if mode == "ebs":
        # The node encrypts nothing itself: EBS does, below the filesystem.
        return "# mariadb-kms: the data volume is EBS, encrypted by AWS with the cluster's KMS key.\nencryption=none\n"
    return f"# mariadb-kms: onPremDatadirEncryption from the stack config.\nencryption={mode}\n"


def verify_datadir_args(node: NodeConfig, cluster: ClusterConfig) -> list[str]:
    """What mariadb-kms-verify is told about the datadir; ``none`` is a gap unless ``allowPlainDatadir`` says
    the stack accepts it. With logEncryption ``kernel`` it is told the two log flags are OFF by config (accepted
    only on a datadir it finds kernel-encrypted)."""
    mode = datadir_encryption(node, cluster)
    allowed = ["--allow-plain-datadir"] if mode == "none" and cluster.mariadb.allow_plain_datadir else []
    # Only when asked: the recorded command of every default stack stays as it was.
    logs = ["--log-encryption", "kernel"] if logs_left_to_kernel(cluster) else []
    return ["--datadir-encryption", mode, *allowed, *logs]


def restart_relevant(text: str) -> str:
    """A config file as a restart decision sees it: without the lines a running member needs no restart for."""
    return _RESTART_EXEMPT_LINE.sub("", text)
