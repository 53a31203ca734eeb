"""What encryption in transit costs: two 3-node clusters side by side, TLS on every channel and plaintext.

Six testbed hosts, two stacks deployed by the program's own plan (``rehearsal/runner``, one KMS key
and data key each): ``t1..t3`` under the default config (replication and IST over TLS, SST over TLS,
client TLS required on TCP, the program's own certificates), ``p1..p3`` under the same config with every
TLS channel turned off by its stack config keys, as a user turns them off; both encrypted at rest alike.
Both stay up, so there is no restart between A and B: each round loads one cluster then the other (order
reversed every other round) on its first node through the unix socket, so TLS is paid on replication
(each commit's write-set reaches both other nodes before it returns):

- ``wo-<n>t``: sysbench ``oltp_write_only`` at each ``--threads`` count, for ``--seconds``;
- ``probe-small``: ``--small`` single-row INSERT transactions of a 100 B row (latency-bound);
- ``probe-large``: ``--large`` single-row INSERT transactions of a 64 KiB row (bandwidth- and cipher-bound);
  a probe's time runs from its first statement until the cluster's third node applied the last write-set.

Per run: TPS (and MB/s of row data for the probes) and the ``mariadbd`` CPU-seconds per 1,000
transactions summed over the cluster's three nodes (/proc). Also the cipher each Galera link negotiated
(from the error log). Prints progress and a summary, writes JSON; asserts nothing; needs root.

``--tls-versions 1.2,1.3`` replaces the one TLS variant with one per protocol version, ``tls-v1.2`` and
``tls-v1.3``, each against the same plaintext cluster. The stack config has no key for the version, so the
TLS cluster is switched between them in place: OpenSSL's own configuration (``OPENSSL_CONF`` for
mariadb.service, a systemd drop-in) limits every TLS context in ``mariadbd`` to that version, Galera's
links included (Galera 4 has a cipher-list option, ``socket.ssl_cipher``, but none for the protocol; the
list does not touch TLS 1.3's suites), and the SST's socat, which ``mariadbd`` starts, inherits it;
``tls_version`` in the node's file is set to the same version for client connections. The nodes restart
one at a time, each Synced before the next, twice per switch (through both versions allowed, since a node
pinned to one cannot join nodes pinned to the other), once per round at most: the variants' order is
reversed every other round, so a round starts with the version the last one ended with. Per variant,
what each channel negotiated (``Ssl_version``/``Ssl_cipher`` of a TCP client; ``openssl s_client``
against a Galera port) goes into the JSON.

``--profile-seconds N`` ends the run with a profile of each cluster under sysbench at the largest thread
count (``bench/perf_profile.py``): N seconds of ``perf record`` of the software clock, kept to the three
``mariadbd``, as CPU per transaction by shared object and symbol; then N seconds of ``perf stat`` counting
their system calls per transaction.

    python -m bench.in_transit [--rounds 7] [--seconds 12] [--threads 1,4,16] [--probes small,large] \
        [--tls-versions 1.2,1.3] [--profile-seconds 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.perf_profile import (
    count_command,
    host_pids,
    of_threads,
    parse_counts,
    parse_report,
    per_object,
    record_command,
    report,
    share_of_threads,
    threads_of,
)
from bench.single_node import _TX, BENCH_PACKAGES, CLK_TCK, _cpu_ticks, machine
from bench.stats import compare, per_thousand
from components.node_files import MYCNF_NODE_PATH
from components.tls_material import CA_CERT_PATH, CERT_PATH, KEY_PATH
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, join, status, stop, tmp_on_disk, wait_synced
from rehearsal.runner import TLS_OFF, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Settings, Testbed, TestbedError

REPO = Path(__file__).resolve().parent.parent
CLUSTERS = {"plain": ("p1", "p2", "p3"), "tls": ("t1", "t2", "t3")}
SOCKET = "/run/mysqld/mysqld.sock"
_CIPHER = re.compile(r"cipher: (\S+)")


TLS_VERSION_CHOICES = ("1.2", "1.3")
OPENSSL_CONF_PATH = "/etc/mysql/bench-openssl.cnf"
DROP_IN_PATH = "/etc/systemd/system/mariadb.service.d/bench-tls-version.conf"
_TLS_VERSION_LINE = re.compile(r"^tls_version\s*=.*$", re.M)


def parse_tls_versions(text: str) -> tuple[str, ...]:
    """``--tls-versions``: "1.2,1.3" -> ("1.2", "1.3"); empty for none. Anything else names what is allowed."""
    versions = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in versions if v not in TLS_VERSION_CHOICES]
    if unknown or len(set(versions)) != len(versions):
        raise ValueError(f"--tls-versions {text!r}: each of {', '.join(TLS_VERSION_CHOICES)} at most once")
    return versions


def tls_variants(versions: tuple[str, ...]) -> tuple[str, ...]:
    """The variants measured: plaintext first (the baseline), then TLS as deployed or one per pinned version."""
    return ("plain", *(f"tls-v{v}" for v in versions)) if versions else ("plain", "tls")


def openssl_conf(version: str | None) -> str:
    """An OpenSSL configuration that allows only protocol ``version`` (1.2 or 1.3) in every TLS context.

    ``None``: both, the range the nodes have without this file. A node pinned to one version cannot meet a
    node pinned to the other, so the cluster moves between them through this range (``switch_tls_version``).
    The cipher string is OpenSSL's default for TLS 1.2, as without this file.
    """
    if version is not None and version not in TLS_VERSION_CHOICES:
        raise ValueError(f"TLS version {version!r}: expected one of {TLS_VERSION_CHOICES}")
    low, high = (f"TLSv{version}", f"TLSv{version}") if version else ("TLSv1.2", "TLSv1.3")
    return ("# Written by bench/in_transit.py: every TLS context mariadbd makes (clients, Galera, SST's socat).\n"
            "openssl_conf = openssl_init\n\n[openssl_init]\nssl_conf = ssl_sect\n\n"
            "[ssl_sect]\nsystem_default = system_default_sect\n\n"
            f"[system_default_sect]\nMinProtocol = {low}\nMaxProtocol = {high}\n"
            "CipherString = DEFAULT:@SECLEVEL=2\n")


def pin_client_tls_version(node_cnf: str, version: str) -> str:
    """The node's rendered file with ``tls_version`` set to ``version`` alone (a missing line is an error)."""
    if version not in TLS_VERSION_CHOICES:
        raise ValueError(f"TLS version {version!r}: expected one of {TLS_VERSION_CHOICES}")
    if len(_TLS_VERSION_LINE.findall(node_cnf)) != 1:
        raise ValueError(f"{MYCNF_NODE_PATH}: expected exactly one tls_version line (is client TLS on?)")
    return _TLS_VERSION_LINE.sub(f"tls_version = TLSv{version}", node_cnf)


def parse_s_client(output: str) -> dict[str, str]:
    """Protocol and cipher from ``openssl s_client -brief`` (stderr); empty when no handshake completed."""
    found = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("Protocol version", "Ciphersuite"):
            found["protocol" if key.strip() == "Protocol version" else "cipher"] = value.strip()
    return found


def sh(bed: Testbed, host: str, script: str, timeout: float = 900) -> str:
    result = bed.exec(host, script, timeout=timeout)
    if result.rc != 0:
        raise TestbedError(f"{host}: `{script[:200]}` exited {result.rc}:\n{result.stdout[-2000:]}\n"
                           f"{result.stderr[-2000:]}")
    return result.stdout


def install_cluster(bed: Testbed, kms: KmsServer, kind: str) -> None:
    """A 3-node cluster deployed by the program's own plan, a stack of its own; ``plain`` has TLS off by config."""
    names = CLUSTERS[kind]
    for name in names:
        tmp_on_disk(bed, name)
    changes: dict[str, object] = {"gcacheSize": "64M", "clusterName": f"bench-{kind}"}
    if kind == "plain":
        changes.update(TLS_OFF)
    deploy(bed, ProgramStack(kms), onprem_config(bed, names, **changes))
    sh(bed, names[0], "export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && "
                      "apt-get -q -y install sysbench >/dev/null")
    size = sh(bed, names[0], "mariadb -N -B -e \"SHOW STATUS LIKE 'wsrep_cluster_size'\"").split()[-1]
    if size != "3":
        raise TestbedError(f"cluster {kind}: size {size}, expected 3")


CPU_SCRIPT = "cat /proc/$(systemctl show -p MainPID --value mariadb)/stat"


def run(bed: Testbed, kind: str, threads: int, seconds: int) -> dict[str, object]:
    names = CLUSTERS[kind]
    before = {n: _cpu_ticks(sh(bed, n, CPU_SCRIPT)) for n in names}
    out = sh(bed, names[0], f"sysbench oltp_write_only --db-driver=mysql --mysql-socket={SOCKET} --mysql-user=root "
                            f"--mysql-db=sbtest --tables=4 --table-size=10000 --threads={threads} "
                            f"--time={seconds} --report-interval=0 run", timeout=seconds * 3 + 120)
    after = {n: _cpu_ticks(sh(bed, n, CPU_SCRIPT)) for n in names}
    tx = _TX.search(out)
    if not tx:
        raise TestbedError(f"unexpected sysbench output:\n{out[-2000:]}")
    cpu = sum(after[n] - before[n] for n in names) / CLK_TCK
    return {"transactions": int(tx.group(1)), "tps": float(tx.group(2)), "cpu_seconds": cpu,
            "cpu_per_1k": per_thousand(cpu, int(tx.group(1)))}


def profile(bed: Testbed, kind: str, threads: int, seconds: int) -> dict[str, object]:
    """``perf record`` of the cluster's three ``mariadbd`` while sysbench runs at ``threads``, then the system
    calls they make per transaction (``perf stat``), in two windows of ``seconds`` under the same sysbench run.
    Each window starts once the clients are connected, and its transactions are the write-sets the first node
    committed in it; the first window's CPU per transaction comes from /proc."""
    names = CLUSTERS[kind]
    pids = [pid for n in names for pid in host_pids(bed.hosts[n].leader_pid or 0, "mariadbd")]
    if len(pids) != len(names):
        raise TestbedError(f"cluster {kind}: expected one mariadbd per node, found pids {pids}")
    failure: list[BaseException] = []

    def load() -> None:
        try:
            sh(bed, names[0], f"sysbench oltp_write_only --db-driver=mysql --mysql-socket={SOCKET} "
                              f"--mysql-user=root --mysql-db=sbtest --tables=4 --table-size=10000 "
                              f"--threads={threads} --time={2 * seconds + 14} --report-interval=0 run",
               timeout=seconds * 6 + 120)
        except BaseException as exc:  # raised again in the caller, after the join
            failure.append(exc)

    client = threading.Thread(target=load)
    client.start()
    time.sleep(4)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as scratch:
        data = Path(scratch) / "perf.data"
        ticks = {n: _cpu_ticks(sh(bed, n, CPU_SCRIPT)) for n in names}
        committed = last_committed(bed, names[0])
        tids = threads_of(pids)
        subprocess.run(record_command(seconds, data), check=True, capture_output=True)
        tids |= threads_of(pids)  # before sysbench disconnects: a connection's thread may end with it
        cpu = sum(_cpu_ticks(sh(bed, n, CPU_SCRIPT)) - ticks[n] for n in names) / CLK_TCK
        first_window_end = last_committed(bed, names[0])
        transactions = first_window_end - committed
        # A second window, right after the first: the counting events would tax the CPU the first one measures.
        counted = subprocess.run(count_command(pids, seconds), check=True, capture_output=True, text=True)
        counted_transactions = last_committed(bed, names[0]) - first_window_end
        client.join()
        if failure:
            raise failure[0]
        syscalls = parse_counts(counted.stderr)
        all_samples, by_object = parse_report(report(data, "dso"))
        _, by_symbol = parse_report(report(data, "dso,sym"))
    objects = of_threads(by_object, tids, 0.2)
    symbols = of_threads(by_symbol, tids, 0.3)
    samples = round(all_samples * share_of_threads(by_object, tids) / 100)
    cpu_per_1k = per_thousand(cpu, transactions)
    per_tx = {name: round(count / max(1, counted_transactions), 2) for name, count in syscalls.items()}
    return {"syscalls_per_tx": per_tx, "syscalls_transactions": counted_transactions,
            "threads": threads, "seconds": seconds, "transactions": transactions, "cpu_seconds": cpu,
            "cpu_per_1k": cpu_per_1k, "samples": samples, "objects": objects, "symbols": symbols,
            "objects_cpu_per_1k": per_object(objects, cpu_per_1k)}


@dataclass(frozen=True)
class Probe:
    """Single-row INSERT transactions (autocommit) of ``row_bytes`` each, timed until the last node applied them."""

    key: str
    transactions: int
    row_bytes: int


def probe_script(probe: Probe) -> str:
    """The SQL the probe sends: one INSERT per transaction (autocommit), each row ``row_bytes`` long."""
    statement = f"INSERT INTO bench.{probe.key} (v) VALUES (REPEAT('x', {probe.row_bytes}));\n"  # noqa: S608
    return statement * probe.transactions


def last_committed(bed: Testbed, name: str) -> int:
    return int(status(bed, name, "wsrep_last_committed") or 0)


def run_probe(bed: Testbed, kind: str, probe: Probe) -> dict[str, object]:
    """One probe on the cluster's first node: from the first statement until its last node has applied the last
    write-set (so replication to both other nodes is in the time, not only the certification)."""
    names = CLUSTERS[kind]
    sh(bed, names[0], f"mariadb -e 'DROP TABLE IF EXISTS bench.{probe.key}; CREATE TABLE bench.{probe.key} "
                      "(id INT AUTO_INCREMENT PRIMARY KEY, v LONGBLOB NOT NULL)'")
    before = {n: _cpu_ticks(sh(bed, n, CPU_SCRIPT)) for n in names}
    started = time.monotonic()
    sh(bed, names[0], "mariadb < /root/probe-" + probe.key + ".sql", timeout=1800)
    target = last_committed(bed, names[0])
    deadline = time.monotonic() + 600
    while last_committed(bed, names[-1]) < target:
        if time.monotonic() > deadline:
            raise TestbedError(f"{names[-1]} did not apply seqno {target} within 600 s")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    after = {n: _cpu_ticks(sh(bed, n, CPU_SCRIPT)) for n in names}
    cpu = sum(after[n] - before[n] for n in names) / CLK_TCK
    return {"transactions": probe.transactions, "seconds": seconds, "tps": probe.transactions / seconds,
            "mb_per_s": probe.transactions * probe.row_bytes / seconds / 1e6, "cpu_seconds": cpu,
            "cpu_per_1k": per_thousand(cpu, probe.transactions)}


SST_ROW = 4000
SST_BATCH = 4096  # rows per INSERT ... SELECT: 16 MB write-sets, well under Galera's limits


def load_for_sst(bed: Testbed, kind: str, mb: int) -> int:
    """``mb`` MB of rows in bench.sst on the cluster, in batches; returns the joiner's datadir size before."""
    first = CLUSTERS[kind][0]
    batches = max(1, mb * 1_000_000 // (SST_ROW * SST_BATCH))
    seed = (f"DROP TABLE IF EXISTS bench.sst, bench.seed; CREATE TABLE bench.seed (id INT PRIMARY KEY, "  # noqa: S608
            f"v VARCHAR({SST_ROW}) NOT NULL); INSERT INTO bench.seed SELECT seq, REPEAT(MD5(RAND()), {SST_ROW // 32}) "
            f"FROM seq_1_to_{SST_BATCH}; "
            f"CREATE TABLE bench.sst (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR({SST_ROW}) NOT NULL);")
    sh(bed, first, f"mariadb bench -e \"{seed}\"")
    for i in range(batches):
        sh(bed, first, "mariadb -e 'INSERT INTO bench.sst (v) SELECT v FROM bench.seed'", timeout=1800)
        if (i + 1) % 8 == 0 or i + 1 == batches:
            print(f"  {kind}: loaded {(i + 1) * SST_BATCH * SST_ROW / 1e6:.0f} of {mb} MB", flush=True)
    return datadir_bytes(bed, CLUSTERS[kind][-1])


def datadir_bytes(bed: Testbed, name: str) -> int:
    return int(sh(bed, name, "du -sb /var/lib/mysql | cut -f1").strip())


def run_sst(bed: Testbed, kind: str) -> dict[str, object]:
    """The cluster's last node stopped, its Galera state removed (so it cannot rejoin by IST), started again:
    the time from ``systemctl start`` until it is Synced, which is the whole SST (mariabackup) and the join."""
    names = CLUSTERS[kind]
    joiner = names[-1]
    stop(bed, joiner, timeout=300)
    sh(bed, joiner, "rm -f /var/lib/mysql/grastate.dat /var/lib/mysql/gvwstate.dat")
    started = time.monotonic()
    join(bed, joiner, 3)
    seconds = time.monotonic() - started
    size = datadir_bytes(bed, joiner)
    return {"seconds": seconds, "datadir_bytes": size, "mb_per_s": size / seconds / 1e6,
            "tps": 1 / seconds}  # SSTs per second, so its TLS/plaintext ratio reads as the others' do


def switch_tls_version(bed: Testbed, version: str, current: str, originals: dict[str, str]) -> None:
    """The TLS cluster's nodes, one at a time, restarted allowing only TLS ``version`` (``openssl_conf``) and
    with ``tls_version`` set to it in their own rendered file; each is Synced in a cluster of 3 before the next.
    From the other pinned version (``current``) the nodes first pass through both versions allowed, since a
    node pinned to one cannot join nodes pinned to the other."""
    for allowed in ((None, version) if current and current != version else (version,)):
        for name in CLUSTERS["tls"]:
            bed.put_file(name, OPENSSL_CONF_PATH, openssl_conf(allowed))
            bed.put_file(name, DROP_IN_PATH, f"[Service]\nEnvironment=OPENSSL_CONF={OPENSSL_CONF_PATH}\n")
            bed.put_file(name, MYCNF_NODE_PATH, pin_client_tls_version(originals[name], version))
            check(bed, name, "systemctl daemon-reload && systemctl restart mariadb", timeout=900)
            wait_synced(bed, name, 3, timeout=600)


PROBE_USER = "bench_tls_probe"
PROBE_CNF = "/root/.bench-tls-probe.cnf"


def negotiated(bed: Testbed) -> dict[str, dict[str, str]]:
    """What the TLS cluster's channels negotiate now, seen from its second node towards its first: a TCP client
    connection (the server's ``Ssl_version``/``Ssl_cipher`` for that session) and a Galera link (``openssl
    s_client`` with the node's certificate, as a peer connects)."""
    first, second = CLUSTERS["tls"][:2]
    address = bed.hosts[first].address
    client = sh(bed, second, f"mariadb --defaults-extra-file={PROBE_CNF} -h {address} -N -B -e "
                             "\"SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')\"")
    values = dict(line.split("\t", 1) for line in client.splitlines() if "\t" in line)
    s_client = (f"openssl s_client -brief -connect {address}:4567 -CAfile {CA_CERT_PATH} -cert {CERT_PATH} "
                f"-key {KEY_PATH}")
    galera = {"offering 1.2 and 1.3": parse_s_client(sh(bed, second, f"{s_client} </dev/null 2>&1; true", 60))}
    # Offering one version only shows whether the Galera port still accepts it (an empty entry: refused).
    for version in TLS_VERSION_CHOICES:
        flag = "-tls" + version.replace(".", "_")
        galera[f"offering {version} only"] = parse_s_client(sh(bed, second, f"{s_client} {flag} </dev/null 2>&1; "
                                                                            "true", 60))
    return {"clients": {"protocol": values.get("Ssl_version", ""), "cipher": values.get("Ssl_cipher", "")},
            "galera": galera}


def prepare_probe_user(bed: Testbed) -> None:
    """A TCP login that requires TLS, for ``negotiated``; its password is random and lives in a root-only file."""
    import secrets

    password = secrets.token_hex(16)
    first, second = CLUSTERS["tls"][:2]
    check(bed, first, ["mariadb"], input=f"CREATE OR REPLACE USER {PROBE_USER}@'%' IDENTIFIED BY '{password}' "
                                          "REQUIRE SSL;\n")
    bed.put_file(second, PROBE_CNF, f"[client]\nuser={PROBE_USER}\npassword={password}\nssl-ca={CA_CERT_PATH}\n"
                                    "ssl-verify-server-cert\n", mode=0o600)


def summarize(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per part, each variant against plaintext; with both TLS versions also TLS 1.3 against TLS 1.2."""
    summary: list[dict[str, object]] = []
    for part in dict.fromkeys(str(r["part"]) for r in runs):
        variants = list(dict.fromkeys(str(r["variant"]) for r in runs if r["part"] == part))
        pairs = [("plain", v) for v in variants if v != "plain"]
        if "tls-v1.2" in variants and "tls-v1.3" in variants:
            pairs.append(("tls-v1.2", "tls-v1.3"))
        for base, variant in pairs:
            summary.extend(summarize_pair(runs, part, base, variant))
    return summary


def summarize_pair(runs: list[dict[str, object]], part: str, base: str, variant: str) -> list[dict[str, object]]:
    """One comparison: ``variant`` against ``base``, pair by pair (rounds in order)."""
    summary: list[dict[str, object]] = []

    def series(kind: str, key: str, part: str = part) -> list[float]:
        return [float(str(r[key])) for r in sorted((r for r in runs if r["part"] == part and r["variant"] == kind),
                                                   key=lambda r: int(str(r["round"])))]
    tps = compare(series(base, "tps"), series(variant, "tps"))
    workload = "oltp_write_only" if part.startswith("wo-") else part
    if part == "sst":
        summary.append({"part": part, "workload": "sst", "variant": variant, "baseline": base,
                        "speed_ratio": tps.as_dict(),
                        f"seconds_{base}": statistics.median(series(base, "seconds")),
                        f"seconds_{variant}": statistics.median(series(variant, "seconds"))})
        print(f"sst: {variant}/{base} speed median {tps.median:.3f} (pairs {tps.minimum:.2f}..{tps.maximum:.2f});"
              f" median seconds {base} {summary[-1][f'seconds_{base}']:.1f} "
              f"{variant} {summary[-1][f'seconds_{variant}']:.1f}")
        return summary
    cpu = compare(series(base, "cpu_per_1k"), series(variant, "cpu_per_1k"))
    # "cpu_per_1k_plain" keeps its name for the plain baseline, which the plots and earlier JSON read.
    summary.append({"part": part, "workload": workload, "variant": variant, "baseline": base,
                    "tps_ratio": tps.as_dict(),
                    "cost_median": tps.cost, "cost_upper95": tps.cost_upper, "cpu_ratio": cpu.as_dict(),
                    f"cpu_per_1k_{base}": statistics.median(series(base, "cpu_per_1k")),
                    "cpu_per_1k": statistics.median(series(variant, "cpu_per_1k"))})
    print(f"{part}: {variant}/{base} TPS median {tps.median:.3f} (pairs {tps.minimum:.2f}..{tps.maximum:.2f}, "
          f"95% CI {tps.ci_low:.3f}..{tps.ci_high:.3f}); CPU-s/1k tx {base} "
          f"{summary[-1][f'cpu_per_1k_{base}']:.3f} {variant} {summary[-1]['cpu_per_1k']:.3f} "
          f"(ratio median {cpu.median:.3f})")
    return summary


def alternate(rnd: int) -> tuple[str, str]:
    return ("plain", "tls") if rnd % 2 == 0 else ("tls", "plain")


def measure(bed: Testbed, args: argparse.Namespace, chosen: list[Probe], record: dict[str, object],
            runs: list[dict[str, object]]) -> None:
    for kind in CLUSTERS:
        first = CLUSTERS[kind][0]
        sh(bed, first, "mariadb -e 'CREATE DATABASE IF NOT EXISTS sbtest; CREATE DATABASE IF NOT EXISTS bench'")
        sh(bed, first, f"sysbench oltp_write_only --db-driver=mysql --mysql-socket={SOCKET} --mysql-user=root "
                       "--mysql-db=sbtest --tables=4 --table-size=10000 --threads=4 prepare >/dev/null")
        for probe in chosen:
            bed.put_file(first, f"/root/probe-{probe.key}.sql", probe_script(probe))
    # The program's nodes log to the journal; the handshake lines come early, before the SSTs' many lines.
    log = sh(bed, "t1", "{ cat /var/log/mysql/error.log; journalctl -u mariadb --no-pager -q; } 2>/dev/null "
                        "| grep -i 'cipher' | tail -n 50; true")
    record["galera_ciphers"] = sorted(set(_CIPHER.findall(log)))
    print("Galera TLS ciphers seen on t1:", record["galera_ciphers"], flush=True)

    if args.tls_versions:
        measure_versions(bed, args, chosen, record, runs)
        return

    def rounds(part: str, count: int, one: Callable[[str], dict[str, object]], line: Callable[[dict], str]) -> None:
        for rnd in range(count):
            for kind in alternate(rnd):
                res = one(kind)
                load = open("/proc/loadavg").read().split()[0]
                runs.append({"part": part, "round": rnd, "variant": kind, **res, "load1": load})
                print(f"{part} round {rnd + 1}/{count} {kind:<5} {line(res)}  load {load}", flush=True)

    for threads in (int(t) for t in args.threads.split(",") if t):
        for kind in CLUSTERS:
            run(bed, kind, threads, 5)  # warm-up
        rounds(f"wo-{threads}t", args.rounds, lambda kind, t=threads: run(bed, kind, t, args.seconds),
               lambda r: f"{r['tps']:8.1f} tx/s {r['cpu_per_1k']:.3f} CPU-s/1k tx (3 nodes)")
    for probe in chosen:
        for kind in CLUSTERS:
            run_probe(bed, kind, Probe(probe.key, max(1, probe.transactions // 10), probe.row_bytes))  # warm-up
        rounds(f"probe-{probe.key}", args.rounds, lambda kind, p=probe: run_probe(bed, kind, p),
               lambda r: f"{r['seconds']:7.2f} s {r['tps']:8.1f} tx/s {r['mb_per_s']:7.2f} MB/s "
                         f"{r['cpu_per_1k']:.3f} CPU-s/1k tx (3 nodes)")
    if args.profile_seconds > 0:
        threads = max((int(t) for t in args.threads.split(",") if t), default=16)
        profiles: dict[str, object] = {}
        record["profiles"] = profiles
        for kind in alternate(0):
            print(f"profiling cluster {kind} at {threads} threads for {args.profile_seconds} s", flush=True)
            res = profile(bed, kind, threads, args.profile_seconds)
            profiles[kind] = res
            print(f"  {res['transactions']} tx, {res['cpu_per_1k']:.3f} CPU-s/1k tx, {res['samples']} samples; "
                  "by object (CPU-s/1k tx): " + ", ".join(
                      f"{what} {cost:.3f}" for what, cost in list(dict(res["objects_cpu_per_1k"]).items())[:8]),
                  flush=True)
            print("  system calls per transaction (3 nodes): " + ", ".join(
                f"{name} {n:g}" for name, n in dict(res["syscalls_per_tx"]).items() if n), flush=True)
    if args.sst_mb > 0:
        for kind in CLUSTERS:
            print(f"loading {args.sst_mb} MB into cluster {kind} for the SST part", flush=True)
            load_for_sst(bed, kind, args.sst_mb)
        rounds("sst", args.sst_rounds, lambda kind: run_sst(bed, kind),
               lambda r: f"SST and join {r['seconds']:7.1f} s, datadir {r['datadir_bytes'] / 1e6:.0f} MB "
                         f"({r['mb_per_s']:.1f} MB/s)")


def measure_versions(bed: Testbed, args: argparse.Namespace, chosen: list[Probe], record: dict[str, object],
                     runs: list[dict[str, object]]) -> None:
    """``--tls-versions``: per round every variant (plaintext and each pinned version) runs every part, in an
    order reversed every other round; the TLS cluster switches version only when the next variant needs it."""
    variants = tls_variants(args.tls_versions)
    originals = {n: bed.read_file(n, MYCNF_NODE_PATH).decode() for n in CLUSTERS["tls"]}
    prepare_probe_user(bed)
    seen: dict[str, object] = {"as deployed": negotiated(bed)}
    record["negotiated"] = seen
    print("negotiated as deployed:", seen["as deployed"], flush=True)
    threads = [int(t) for t in args.threads.split(",") if t]
    run(bed, "plain", 4, 5)  # warm-up
    current = ""
    for rnd in range(args.rounds):
        for variant in (variants if rnd % 2 == 0 else variants[::-1]):
            kind = "plain" if variant == "plain" else "tls"
            version = variant.removeprefix("tls-v")
            if kind == "tls" and version != current:
                t0 = time.monotonic()
                switch_tls_version(bed, version, current, originals)
                current = version
                print(f"TLS cluster switched to TLS {version} in {time.monotonic() - t0:.0f} s", flush=True)
                run(bed, "tls", 4, 5)  # warm-up after the restarts
                if variant not in seen:
                    seen[variant] = negotiated(bed)
                    print(f"negotiated under {variant}:", seen[variant], flush=True)
            parts: list[tuple[str, Callable[[], dict[str, object]]]] = [
                *((f"wo-{t}t", lambda t=t, k=kind: run(bed, k, t, args.seconds)) for t in threads),
                *((f"probe-{p.key}", lambda p=p, k=kind: run_probe(bed, k, p)) for p in chosen),
            ]
            for part, one in parts:
                res = one()
                load = open("/proc/loadavg").read().split()[0]
                runs.append({"part": part, "round": rnd, "variant": variant, **res, "load1": load})
                print(f"{part} round {rnd + 1}/{args.rounds} {variant:<8} {float(str(res['tps'])):8.1f} tx/s "
                      f"{float(str(res['cpu_per_1k'])):.3f} CPU-s/1k tx (3 nodes)  load {load}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--threads", default="1,4,16", help="sysbench thread counts; empty for none")
    parser.add_argument("--probes", default="small,large", help="of small (100 B rows), large (64 KiB rows); "
                                                               "empty for none")
    parser.add_argument("--small", type=int, default=1000, help="transactions of the 100 B probe")
    parser.add_argument("--large", type=int, default=150, help="transactions of the 64 KiB probe")
    parser.add_argument("--sst-mb", type=int, default=0, help="MB loaded for the SST part (0: no SST part)")
    parser.add_argument("--sst-rounds", type=int, default=3)
    parser.add_argument("--tls-versions", default="",
                        help="e.g. 1.2,1.3: one TLS variant per protocol version instead of TLS as deployed "
                             "(not with --sst-mb)")
    parser.add_argument("--profile-seconds", type=int, default=0,
                        help="after the rounds, perf record each cluster's mariadbd for this long under sysbench at "
                             "the largest --threads (0: no profile); the reports go into the JSON")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "in_transit.json")
    args = parser.parse_args()
    try:
        args.tls_versions = parse_tls_versions(args.tls_versions)
    except ValueError as err:
        parser.error(str(err))
    if args.profile_seconds and shutil.which("perf") is None:
        parser.error("--profile-seconds needs perf on this machine (Debian: apt-get install linux-perf)")
    if args.tls_versions and args.profile_seconds:
        parser.error("--profile-seconds profiles TLS as deployed; leave out --tls-versions")
    if args.tls_versions and args.sst_mb:
        parser.error("--tls-versions measures the sysbench and probe parts; run the SST part on its own")
    probes = {"small": Probe("small", args.small, 100), "large": Probe("large", args.large, 64 * 1024)}
    chosen = [probes[p] for p in args.probes.split(",") if p]
    record: dict[str, object] = {"machine_start": machine(), "goal_ratio": 0.90,
                                 "command": " ".join(sys.argv), "seconds": args.seconds,
                                 "rounds": args.rounds, "probes": [p.__dict__ for p in chosen],
                                 "variants": list(tls_variants(args.tls_versions))}
    runs: list[dict[str, object]] = []
    hosts = [*CLUSTERS["plain"], *CLUSTERS["tls"]]
    with Testbed(hosts, settings=Settings.from_env(), repo_packages=BENCH_PACKAGES) as bed:
        bed.boot()
        # The KMS stays up for the whole run: a joiner's start (SST part) unwraps the key first.
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            for kind in CLUSTERS:
                print(f"deploying cluster {kind} by the program's plan", flush=True)
                t0 = time.monotonic()
                install_cluster(bed, kms, kind)
                print(f"cluster {kind} up in {time.monotonic() - t0:.0f} s", flush=True)
            try:
                measure(bed, args, chosen, record, runs)
            finally:  # what was measured is kept, also when a later part fails
                record.update({"machine_end": machine(), "runs": runs})
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(record, indent=1) + "\n")
    record["summary"] = summarize(runs)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"raw runs: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
