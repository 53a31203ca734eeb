"""Several MariaDB servers side by side on one testbed host, each under a variant of a deployed node's config.

The host is first a one-node cluster deployed by the program's own plan (``rehearsal/runner``: the
same puts, install, bootstrap, config, pre-flight and roll as any node), so the config files are the
ones the program rendered and placed, read back from the host. Its own server is then stopped and
those files moved out of ``/etc/mysql/mariadb.conf.d`` (Debian's my.cnf would otherwise give every
server the encryption file), and each variant runs its own ``mariadbd`` with its own datadir,
initialised under that variant's config (an encrypted variant's system tables are born encrypted, as
on a node, and a cipher change gets a fresh datadir). All of them run at once and stay warm; a
benchmark loads one at a time, so switching A to B costs no restart and pairs can alternate quickly.

A variant's config (``variant_config``) is, in this order: Debian's own my.cnf (read first, as on a
node), the node's ``91-mariadb-kms-node.cnf`` and (unless plain) ``90-mariadb-kms-encryption.cnf``
exactly as deployed, then the variant's flag changes, then what lets several servers share a host
(datadir, socket, port, Galera's listen port and gcache directory, each edited into the node's own
``wsrep_provider_options``) and the buffer pool size of the run. Each server is a one-node Galera
cluster (``--wsrep-new-cluster``), so wsrep's commit path is measured too.

The key: random 32 bytes in the keyfile the unwrap unit writes (``id;hex``, 0600, mysql), put there after
the node's own server stopped, because unwrapping costs time once per start, never per transaction.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from components.node_files import KEYFILE_PATH, MYCNF_DIR, MYCNF_ENCRYPTION_PATH, MYCNF_NODE_PATH, RUNTIME_DIR
from rehearsal.mariadb_on_host import stop, tmp_on_disk
from rehearsal.pkgrepo import REPO_PACKAGES
from rehearsal.testbed import Testbed, TestbedError

BENCH_PACKAGES = (*REPO_PACKAGES, "sysbench")
CONF_DIR = "/etc/mariadb-kms-bench"
RENDERED_DIR = f"{CONF_DIR}/rendered"  # the program's files, moved out of Debian's include directory
DATA_ROOT = "/var/lib/mariadb-kms-bench"
RUN_ROOT = "/run/mariadb-kms-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_TX = re.compile(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec")
_ELAPSED = re.compile(r"total time:\s+([\d.]+)s")
_PROVIDER_LINE = re.compile(r'^\s*wsrep_provider_options\s*=\s*"?([^"\n]*)"?\s*$', re.M)


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


def provider_options(node_cnf: str) -> dict[str, str]:
    """The ``wsrep_provider_options`` the node's rendered file sets (the last one, as the server reads it)."""
    found = _PROVIDER_LINE.findall(node_cnf)
    if not found:
        raise ValueError("the node's config sets no wsrep_provider_options")
    out: dict[str, str] = {}
    for item in found[-1].split(";"):
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def variant_config(node_cnf: str, encryption_cnf: str, variant: Variant, *, index: int,
                   buffer_pool: str) -> str:
    """The config file of ``variant``: the node's rendered files, the variant's changes, what sharing a host needs.

    ``index`` sets the variant's ports. Galera's options are the node's own with only the listen address,
    IST receiver and gcache directory moved, so gcache size and recovery stay as rendered.
    """
    name = variant.name
    options = provider_options(node_cnf)
    options["gmcast.listen_addr"] = f"tcp://127.0.0.1:{4600 + 10 * index}"
    options["ist.recv_addr"] = f"127.0.0.1:{4601 + 10 * index}"
    options["gcache.dir"] = f"{RUN_ROOT}/{name}"
    parts = [node_cnf]
    if variant.encrypted:
        parts.append(encryption_cnf)
    lines = [f"{k} = {v}" for k, v in variant.changes.items()]
    lines += [
        "# several servers on one host",
        f"datadir = {DATA_ROOT}/{name}",
        f"socket = {socket_path(name)}",
        f"pid_file = {RUN_ROOT}/{name}.pid",
        f"port = {3310 + index}",
        "bind_address = 127.0.0.1",
        "wsrep_cluster_address = gcomm://",
        "wsrep_node_address = 127.0.0.1",
        "wsrep_provider_options = \"" + "; ".join(f"{k}={v}" for k, v in options.items()) + "\"",
        f"log_error = /var/log/mysql/bench-{name}.err",
        f"innodb_buffer_pool_size = {buffer_pool}",
    ]
    parts.append(f"[mariadb]\n# variant {name}\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def socket_path(name: str) -> str:
    return f"{RUN_ROOT}/{name}.sock"


class SideBySide:
    """The servers of ``variants`` on testbed host ``host``, a node the program's plan deployed."""

    def __init__(self, bed: Testbed, host: str, variants: Sequence[Variant], *, buffer_pool: str = "64M") -> None:
        self.bed = bed
        self.host = host
        self.variants = {v.name: v for v in variants}
        self.index = {v.name: i for i, v in enumerate(variants)}
        self.buffer_pool = buffer_pool
        self.pids: dict[str, int] = {}
        self.node_cnf = ""
        self.encryption_cnf = ""

    # ---------------------------------------------------------------- install and start

    def sh(self, script: str, timeout: float = 600) -> str:
        result = self.bed.exec(self.host, script, timeout=timeout)
        if result.rc != 0:
            raise TestbedError(f"{self.host}: `{script[:200]}` exited {result.rc}:\n{result.stdout[-2000:]}\n"
                               f"{result.stderr[-2000:]}")
        return result.stdout

    def take_over(self) -> None:
        """The deployed node's server stopped, its rendered files read and set aside; sysbench and a key added."""
        self.node_cnf = self.bed.read_file(self.host, MYCNF_NODE_PATH).decode()
        self.encryption_cnf = self.bed.read_file(self.host, MYCNF_ENCRYPTION_PATH).decode()
        stop(self.bed, self.host, timeout=300)
        self.sh("systemctl mask mariadb >/dev/null 2>&1; systemctl mask --now mariadb.socket "
                "mariadb-extra.socket >/dev/null 2>&1; true")
        self.sh(f"install -d {RENDERED_DIR} && mv {MYCNF_DIR}/*mariadb-kms*.cnf {RENDERED_DIR}/")
        self.sh("export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && "
                "apt-get -q -y install sysbench >/dev/null", timeout=900)
        tmp_on_disk(self.bed, self.host)
        self.bed.exec(self.host, ["install", "-d", "-m", "0750", "-o", "mysql", "-g", "mysql", RUNTIME_DIR],
                      check=True)
        self.bed.put_file(self.host, KEYFILE_PATH, f"1;{secrets.token_hex(32)}\n", 0o600, "mysql:mysql")

    def config_text(self, variant: Variant) -> str:
        return variant_config(self.node_cnf, self.encryption_cnf, variant, index=self.index[variant.name],
                              buffer_pool=self.buffer_pool)

    def socket(self, name: str) -> str:
        return socket_path(name)

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
