"""Several MariaDB servers side by side on one testbed host, each under a variant of a node's exact config.

Each variant is its own ``mariadbd`` with its own datadir, initialised under that variant's config (so an
encrypted variant's system tables are born encrypted, as on a node, and a cipher change gets a fresh
datadir). All of them run at once and stay warm; a benchmark loads one at a time, so switching A to B
costs no restart and pairs can alternate quickly.

A variant's config file is, in this order: Debian's own my.cnf (read first, as on a node), the node's
``91-mariadb-kms-node.cnf`` and (unless plain) ``90-mariadb-kms-encryption.cnf`` as the program renders
them (``components/mycnf.py``), then the variant's flag changes, then what lets several servers share a
host (datadir, socket, port, Galera's listen port, gcache file) and the buffer pool size of the run. Each
server is a one-node Galera cluster (``--wsrep-new-cluster``), so wsrep's commit path is measured too.

The key: random 32 bytes in the keyfile the unwrap unit would write (``id;hex``, 0600, mysql), because
unwrapping costs time once per start, never per transaction.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from components.config import ClusterConfig, NodeConfig, parse_config
from components.mycnf import provider_options, render_mycnf
from components.node_files import KEYFILE_PATH, MYCNF_ENCRYPTION_PATH, MYCNF_NODE_PATH, RUNTIME_DIR
from rehearsal.pkgrepo import REPO_PACKAGES
from rehearsal.testbed import Testbed, TestbedError

BENCH_PACKAGES = (*REPO_PACKAGES, "sysbench")
CONF_DIR = "/etc/mariadb-kms-bench"
DATA_ROOT = "/var/lib/mariadb-kms-bench"
RUN_ROOT = "/run/mariadb-kms-bench"
ADMIN_ROLE = "arn:aws:iam::123456789012:role/kms-admin"
# The testbed reaches hosts through nsenter; the config only needs a well-formed pin.
DUMMY_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmAzJ0x7dGVzdGJlZCBkdW1teSBob3N0IGtleSEhISE="
CLK_TCK = os.sysconf("SC_CLK_TCK")
_TX = re.compile(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec")
_ELAPSED = re.compile(r"total time:\s+([\d.]+)s")


@dataclass(frozen=True)
class Variant:
    name: str
    encrypted: bool
    changes: Mapping[str, str] = field(default_factory=dict)  # lines after the program's files


@dataclass(frozen=True)
class RunResult:
    transactions: int
    tps: float
    seconds: float
    cpu_seconds: float  # mariadbd user+system time during the run


def bench_cluster_config(members: Mapping[str, str], **changes: object) -> ClusterConfig:
    """The stack config of an on-prem cluster of ``members`` (name: address); every other key at its default."""
    raw = {
        "keyAdmins": [ADMIN_ROLE],
        "clusterName": "mariadb-kms-bench",
        "onPremNodes": [{"name": name, "address": address, "sshUser": "root", "hostKey": DUMMY_HOST_KEY}
                        for name, address in members.items()],
        **changes,
    }
    return parse_config(raw, stack="bench", region="us-east-1")


class SideBySide:
    """The servers of ``variants`` on testbed host ``host``."""

    def __init__(self, bed: Testbed, host: str, variants: Sequence[Variant], *, cluster: ClusterConfig,
                 buffer_pool: str = "64M") -> None:
        self.bed = bed
        self.host = host
        self.variants = {v.name: v for v in variants}
        self.index = {v.name: i for i, v in enumerate(variants)}
        self.cluster = cluster
        self.node: NodeConfig = cluster.nodes[0]
        self.address = bed.hosts[host].address
        self.buffer_pool = buffer_pool
        self.pids: dict[str, int] = {}

    # ---------------------------------------------------------------- install and start

    def sh(self, script: str, timeout: float = 600) -> str:
        result = self.bed.exec(self.host, script, timeout=timeout)
        if result.rc != 0:
            raise TestbedError(f"{self.host}: `{script[:200]}` exited {result.rc}:\n{result.stdout[-2000:]}\n"
                               f"{result.stderr[-2000:]}")
        return result.stdout

    def install(self) -> None:
        self.sh("export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && "
                "apt-get -q -y install mariadb-server galera-4 mariadb-client sysbench >/dev/null && "
                "systemctl disable --now mariadb >/dev/null 2>&1; systemctl mask --now mariadb.socket "
                "mariadb-extra.socket >/dev/null 2>&1; true", timeout=900)
        # systemd-nspawn puts a tmpfs on /tmp; a node's /tmp (MariaDB's tmpdir) is on disk.
        self.sh("if [ \"$(findmnt -n -o FSTYPE /tmp)\" = tmpfs ]; then umount /tmp; fi")
        self.bed.exec(self.host, ["install", "-d", "-m", "0750", "-o", "mysql", "-g", "mysql", RUNTIME_DIR],
                      check=True)
        self.bed.put_file(self.host, KEYFILE_PATH, f"1;{secrets.token_hex(32)}\n", 0o600, "mysql:mysql")

    def config_text(self, variant: Variant) -> str:
        i = self.index[variant.name]
        files = render_mycnf(self.node, self.cluster, node_address=self.address, member_addresses=[self.address],
                             key_arn=None)
        options = dict(provider_options(self.node, self.cluster, node_address="127.0.0.1"))
        options["gmcast.listen_addr"] = f"tcp://127.0.0.1:{4600 + 10 * i}"
        options["ist.recv_addr"] = f"127.0.0.1:{4601 + 10 * i}"
        options["gcache.dir"] = f"{RUN_ROOT}/{variant.name}"
        parts = [files[MYCNF_NODE_PATH]]
        if variant.encrypted:
            parts.append(files[MYCNF_ENCRYPTION_PATH])
        lines = [f"{k} = {v}" for k, v in variant.changes.items()]
        lines += [
            "# several servers on one host",
            f"datadir = {DATA_ROOT}/{variant.name}",
            f"socket = {self.socket(variant.name)}",
            f"pid_file = {RUN_ROOT}/{variant.name}.pid",
            f"port = {3310 + i}",
            "bind_address = 127.0.0.1",
            "wsrep_cluster_address = gcomm://",
            "wsrep_node_address = 127.0.0.1",
            "wsrep_provider_options = \"" + "; ".join(f"{k}={v}" for k, v in options.items()) + "\"",
            f"log_error = /var/log/mysql/bench-{variant.name}.err",
            f"innodb_buffer_pool_size = {self.buffer_pool}",
        ]
        parts.append(f"[mariadb]\n# variant {variant.name}\n" + "\n".join(lines) + "\n")
        return "\n".join(parts)

    def socket(self, name: str) -> str:
        return f"{RUN_ROOT}/{name}.sock"

    def conf_path(self, name: str) -> str:
        return f"{CONF_DIR}/{name}.cnf"

    def init_and_start(self) -> None:
        self.sh(f"install -d -o mysql -g mysql {RUN_ROOT} {DATA_ROOT}")
        for variant in self.variants.values():
            name = variant.name
            self.bed.put_file(self.host, self.conf_path(name), self.config_text(variant), 0o644)
            extra = f"--defaults-extra-file={self.conf_path(name)}"
            self.sh(f"install -d -o mysql -g mysql {RUN_ROOT}/{name} && "
                    f"mariadb-install-db {extra} --rpm --cross-bootstrap --user=mysql "
                    f"--datadir={DATA_ROOT}/{name} --disable-log-bin --skip-test-db --wsrep-on=OFF >/dev/null",
                    timeout=600)
            self.start(name)

    def start(self, name: str) -> None:
        extra = f"--defaults-extra-file={self.conf_path(name)}"
        self.sh(f"setsid nohup mariadbd {extra} --user=mysql --wsrep-new-cluster </dev/null >/dev/null 2>&1 &")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            out = self.bed.exec(self.host, ["mariadb", f"--socket={self.socket(name)}", "-N", "-e",
                                            "SHOW STATUS LIKE 'wsrep_ready'"], timeout=30)
            if out.rc == 0 and "ON" in out.stdout:
                self.pids[name] = int(self.sh(f"cat {RUN_ROOT}/{name}.pid").strip())
                return
            time.sleep(1)
        log = self.bed.exec(self.host, f"tail -n 30 /var/log/mysql/bench-{name}.err").stdout
        raise TestbedError(f"variant {name} did not start:\n{log}")

    def sql(self, name: str, statements: str) -> str:
        return self.bed.exec(self.host, ["mariadb", f"--socket={self.socket(name)}", "-N", "-B", "-e", statements],
                             check=True, timeout=300).stdout

    # ---------------------------------------------------------------- sysbench

    def sysbench_args(self, name: str, workload: str, db: str, tables: int, rows: int, threads: int) -> str:
        return (f"sysbench {workload} --db-driver=mysql --mysql-socket={self.socket(name)} --mysql-user=root "
                f"--mysql-db={db} --tables={tables} --table-size={rows} --threads={threads} --rand-type=uniform")

    def prepare(self, name: str, db: str, tables: int, rows: int) -> None:
        self.sql(name, f"CREATE DATABASE IF NOT EXISTS {db}")
        self.sh(self.sysbench_args(name, "oltp_read_write", db, tables, rows, min(tables, 4)) + " prepare >/dev/null",
                timeout=3600)

    def run(self, name: str, workload: str, db: str, tables: int, rows: int, threads: int,
            seconds: int) -> RunResult:
        pid = self.pids[name]
        script = (f"cat /proc/{pid}/stat; "
                  + self.sysbench_args(name, workload, db, tables, rows, threads)
                  + f" --time={seconds} --report-interval=0 run; cat /proc/{pid}/stat")
        out = self.sh(script, timeout=seconds * 3 + 120)
        lines = out.splitlines()
        before, after = _cpu_ticks(lines[0]), _cpu_ticks(lines[-1])
        tx = _TX.search(out)
        elapsed = _ELAPSED.search(out)
        if not tx or not elapsed:
            raise TestbedError(f"unexpected sysbench output:\n{out[-2000:]}")
        return RunResult(int(tx.group(1)), float(tx.group(2)), float(elapsed.group(1)),
                         (after - before) / CLK_TCK)


def _cpu_ticks(stat_line: str) -> int:
    # Fields after the parenthesised command name: utime and stime are the 12th and 13th of them.
    fields = stat_line.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine() -> dict[str, object]:
    """nproc, memory, kernel and load, for the record next to each figure."""
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
