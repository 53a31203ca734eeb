"""A Galera cluster on testbed hosts, installed as the program installs an on-prem node, for the
encryption-in-transit tests (tests/node/test_tls_in_transit.py) and the benchmark (bench/tls_replication.py).

What the program's SSH path does, done here through ``Testbed.exec``/``put_file``:
- the node files from ``node/MANIFEST`` copied, then ``mariadb-kms-install --from DIR``;
- the seed: unwrap.conf (on premises: a credentials file, root 0600), the cluster data key blob from the
  KMS emulator, the encryption config;
- the node config (``render_node_cnf``, TLS settings included) and the TLS material with the modes and
  owners of ``components.tls_material.tls_files``;
- ``mariadb-kms-bootstrap`` on the first node, ``mariadb-kms-roll`` to (re)start and join the others.

Certificates come from ``rehearsal.tls_certs.LocalCa``, the shape ClusterCa asks pulumi-tls for.
"""

from __future__ import annotations

import concurrent.futures
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.config import ClusterConfig, parse_config
from components.mycnf import render_encryption_cnf, render_node_cnf
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
from components.tls_material import tls_files
from rehearsal import TestbedError
from rehearsal.kms_server import KmsServer
from rehearsal.testbed import ExecResult, Testbed
from rehearsal.tls_certs import Issued, LocalCa

NODE_SRC = "/root/mariadb-kms-node"
ADMIN_ARN = "arn:aws:iam::123456789012:role/kms-admin"
# Any well-formed host key: the testbed does not use the program's SSH connection.
FAKE_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0pq3L7Gd8nJk3s1m0y6rHc2QmX1pJ7vQzB8uX4k2Ty"
ROLL_TIMEOUT = 300
TLS_OFF: Mapping[str, Any] = {
    "tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False,
}


@dataclass
class TlsCluster:
    testbed: Testbed
    kms: KmsServer
    names: Sequence[str]
    key_arn: str = ""
    blob: bytes = b""
    ca: LocalCa = field(default_factory=lambda: LocalCa("mariadb-kms"))
    issued: dict[str, Issued] = field(default_factory=dict)

    def __post_init__(self) -> None:
        client = self.kms.client()
        self.key_arn = client.create_key(Description="tls-in-transit tests")["KeyMetadata"]["Arn"]
        self.blob = client.generate_data_key_without_plaintext(KeyId=self.key_arn, KeySpec="AES_256")[
            "CiphertextBlob"
        ]

    # ------------------------------------------------------------------ config

    def address(self, name: str) -> str:
        return self.testbed.hosts[name].address

    def config(self, **changes: Any) -> ClusterConfig:
        raw: dict[str, Any] = {
            "keyAdmins": [ADMIN_ARN],
            "onPremNodes": [
                {"name": n, "address": self.address(n), "sshUser": "root", "hostKey": FAKE_HOST_KEY}
                for n in self.names
            ],
            **changes,
        }
        return parse_config(raw, stack="testbed", region=self.kms.region)

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Every node installed in parallel, as the program's install steps run."""
        cluster = self.config()
        with concurrent.futures.ThreadPoolExecutor(len(self.names)) as pool:
            for future in [pool.submit(self._install_one, n, cluster) for n in self.names]:
                future.result()

    def _install_one(self, name: str, cluster: ClusterConfig) -> None:
        tb = self.testbed
        for f in node_files(cluster.mariadb.key_management):
            tb.put_file(name, f"{NODE_SRC}/{f.source}", f.content, f.mode, "root:root")
        conf = render_unwrap_conf(mode=cluster.mariadb.key_management, key_arn=self.key_arn, region=cluster.region,
                                  on_premises=True, endpoint_url=self.kms.endpoint_url)
        tb.put_file(name, UNWRAP_CONF_PATH, conf, 0o644)
        tb.put_file(name, BLOB_PATH, self.blob, 0o600)
        # moto takes any credentials; the file has the program's format, mode and owner.
        tb.put_file(name, CREDENTIALS_PATH, render_credentials_file("testing", "testing"), 0o600)
        tb.put_file(name, MYCNF_ENCRYPTION_PATH, render_encryption_cnf(cluster, key_arn=self.key_arn), 0o644)
        self.check(name, [f"{NODE_SRC}/mariadb-kms-install", "--from", NODE_SRC], timeout=900)

    def configure(self, cluster: ClusterConfig, names: Sequence[str] | None = None) -> None:
        """The node config (members, Galera, TLS) on each node; applied at the next (re)start."""
        members = [self.address(n) for n in self.names]
        for node in cluster.nodes:
            if names is None or node.name in names:
                text = render_node_cnf(node, cluster, node_address=self.address(node.name), member_addresses=members)
                self.testbed.put_file(node.name, MYCNF_NODE_PATH, text, 0o644)

    def put_tls(self, name: str, issued: Issued, ca_cert_pem: str | None = None) -> None:
        """The TLS material as the program installs it (paths, modes and owners from tls_material)."""
        for path, (content, mode, owner) in tls_files(ca_cert_pem or self.ca.cert_pem, issued.cert_pem,
                                                      issued.key_pem).items():
            self.testbed.put_file(name, path, content, mode, owner)

    def issue_all(self) -> None:
        for n in self.names:
            self.issued[n] = self.ca.issue(n, self.address(n))
            self.put_tls(n, self.issued[n])

    # ------------------------------------------------------------------ lifecycle

    def bootstrap(self, name: str) -> None:
        self._start(name, ["/usr/local/sbin/mariadb-kms-bootstrap", "--timeout", str(ROLL_TIMEOUT)])

    def roll(self, name: str) -> ExecResult:
        """Start (join) or restart with the current config, wait until Synced: the program's roll step."""
        return self._start(name, ["/usr/local/sbin/mariadb-kms-roll", "--timeout", str(ROLL_TIMEOUT)])

    def _start(self, name: str, cmd: Sequence[str]) -> ExecResult:
        try:
            return self.check(name, cmd, timeout=ROLL_TIMEOUT + 60)
        except TestbedError as err:
            # The hosts go with the testbed: keep what their journals say with the error.
            journal = self.testbed.exec(name, "journalctl -u mariadb-kms-unwrap -u run-galera.mount -u mariadb "
                                              "--no-pager -o short-monotonic -n 60").stdout
            raise TestbedError(f"{err}\n--- {name}'s journal ---\n{journal}") from None

    def stop(self, name: str) -> None:
        self.check(name, ["systemctl", "stop", "mariadb"], timeout=180)

    def stop_all(self) -> None:
        """Last one stopped first in, so the first node is the one safe to bootstrap again."""
        for name in reversed(self.names):
            self.stop(name)

    # ------------------------------------------------------------------ queries

    def check(self, name: str, cmd: Sequence[str] | str, *, input: str | bytes | None = None,
              timeout: float = 120) -> ExecResult:
        result = self.testbed.exec(name, cmd, input=input, timeout=timeout)
        if result.rc != 0:
            shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
            raise TestbedError(f"{name}: `{shown}` exited {result.rc}:\n{result.stdout[-3000:]}\n"
                               f"{result.stderr[-3000:]}")
        return result

    def sql(self, name: str, statements: str) -> str:
        """Statements over the node's unix socket (root), output in batch form."""
        return self.check(name, ["mariadb", "--batch", "--skip-column-names"], input=statements).stdout

    def status(self, name: str, variable: str) -> str:
        out = self.sql(name, f"SHOW GLOBAL STATUS LIKE '{variable}'")
        return out.split("\t", 1)[1].strip() if "\t" in out else ""

    def client(self, host: str, target: str, statements: str, *, tls: bool = True,
               user: str = "app", password: str = "") -> ExecResult:
        """A TCP client on ``host`` talking to ``target``: over TLS verifying the server against the cluster CA,
        or (tls=False) insisting on no TLS. The password goes in a 0600 option file, never in argv."""
        option_file = f"/root/.{user}-client.cnf"
        self.testbed.put_file(host, option_file, f"[client]\npassword={password}\n", 0o600)
        argv = ["mariadb", f"--defaults-extra-file={option_file}", "--batch", "--skip-column-names",
                "-h", self.address(target), "-P", "3306", "-u", user, "--connect-timeout=10"]
        if tls:
            argv += ["--ssl", "--ssl-ca=/etc/mysql/tls/ca.pem", "--ssl-verify-server-cert"]
        else:
            argv += ["--skip-ssl"]
        return self.testbed.exec(host, argv, input=statements, timeout=300)
