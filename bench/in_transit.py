"""What encryption in transit costs: two 3-node clusters side by side, TLS on every channel and plaintext.

Six testbed hosts: ``p1..p3`` run a cluster with every TLS channel off, ``t1..t3`` one with the program's
default (replication and IST over TLS, SST over TLS, client TLS required on TCP), both under the nodes'
exact config as the program renders it (``components/mycnf.py``, files in ``/etc/mysql/mariadb.conf.d``,
certificates of ClusterCa's shape from ``rehearsal/tls_certs.py``), encrypted at rest alike, started by
systemd (``galera_new_cluster`` on the first node, the others joining by SST). Both stay up, so there is no
restart between A and B: each round loads one cluster then the other (order reversed every other round)
with sysbench ``oltp_write_only`` on its first node through the unix socket, so TLS is paid where the
issue is, on replication (each commit's write-set reaches both other nodes before it returns).

Per run: TPS and the ``mariadbd`` CPU-seconds per 1,000 transactions summed over the cluster's three
nodes (/proc). Also the cipher each Galera link negotiated (from the error log). Prints a table and
writes JSON; asserts nothing; needs root.

    python bench/in_transit.py [--rounds 7] [--seconds 12] [--threads 1,4,16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from single_node import _TX, BENCH_PACKAGES, CLK_TCK, _cpu_ticks, bench_cluster_config, machine  # noqa: E402
from stats import compare, per_thousand  # noqa: E402

from components.mycnf import render_mycnf  # noqa: E402
from components.node_files import GCACHE_DIR, KEYFILE_PATH, RUNTIME_DIR  # noqa: E402
from components.tls_material import tls_files  # noqa: E402
from rehearsal.testbed import Settings, Testbed, TestbedError  # noqa: E402
from rehearsal.tls_certs import LocalCa  # noqa: E402

CLUSTERS = {"plain": ("p1", "p2", "p3"), "tls": ("t1", "t2", "t3")}
TLS_OFF = {"tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False}
SOCKET = "/run/mysqld/mysqld.sock"
_CIPHER = re.compile(r"cipher: (\S+)")


def sh(bed: Testbed, host: str, script: str, timeout: float = 900) -> str:
    result = bed.exec(host, script, timeout=timeout)
    if result.rc != 0:
        raise TestbedError(f"{host}: `{script[:200]}` exited {result.rc}:\n{result.stdout[-2000:]}\n"
                           f"{result.stderr[-2000:]}")
    return result.stdout


def install_cluster(bed: Testbed, kind: str) -> None:
    names = CLUSTERS[kind]
    addresses = [bed.hosts[n].address for n in names]
    changes: dict[str, object] = {"gcacheSize": "64M", "clusterName": f"bench-{kind}"}
    if kind == "plain":
        changes.update(TLS_OFF)
    cluster = bench_cluster_config(dict(zip(names, addresses, strict=True)), **changes)
    key_line = f"1;{secrets.token_hex(32)}\n"  # one data key per cluster, the same on every node (SST)
    ca = LocalCa(f"bench-{kind}")

    def one(i: int) -> None:
        name = names[i]
        node = cluster.nodes[i]
        files = render_mycnf(node, cluster, node_address=addresses[i], member_addresses=addresses, key_arn=None)
        sh(bed, name, "if [ \"$(findmnt -n -o FSTYPE /tmp)\" = tmpfs ]; then umount /tmp; fi; "
                      "id mysql >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
                      "--home-dir /nonexistent --shell /usr/sbin/nologin mysql")
        sh(bed, name, f"install -d -m 0750 -o mysql -g mysql {RUNTIME_DIR} && install -d -o mysql -g mysql "
                      f"{GCACHE_DIR} && install -d /etc/mysql/mariadb.conf.d")
        bed.put_file(name, KEYFILE_PATH, key_line, 0o600, "mysql:mysql")
        enc_path = next(p for p in files if p.endswith("90-mariadb-kms-encryption.cnf"))
        bed.put_file(name, enc_path, files[enc_path], 0o644)
        # The package's postinst initialises the datadir under the encryption config: born encrypted.
        sh(bed, name, "export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null && apt-get -q -y "
                      "-o Dpkg::Options::=--force-confold install mariadb-server galera-4 mariadb-backup "
                      "mariadb-client socat sysbench >/dev/null && systemctl stop mariadb && "
                      "systemctl mask --now mariadb.socket mariadb-extra.socket >/dev/null 2>&1; true")
        issued = ca.issue(name, addresses[i])
        for path, (content, mode, owner) in tls_files(ca.cert_pem, issued.cert_pem, issued.key_pem).items():
            bed.put_file(name, path, content, mode, owner)
        node_path = next(p for p in files if p.endswith("91-mariadb-kms-node.cnf"))
        bed.put_file(name, node_path, files[node_path], 0o644)

    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(one, i) for i in range(3)]:
            future.result()
    sh(bed, names[0], "galera_new_cluster", timeout=600)
    for name in names[1:]:
        sh(bed, name, "systemctl start mariadb", timeout=900)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "in_transit.json")
    args = parser.parse_args()
    record: dict[str, object] = {"machine_start": machine(), "goal_ratio": 0.90,
                                 "command": " ".join(sys.argv), "seconds": args.seconds,
                                 "rounds": args.rounds}
    runs: list[dict[str, object]] = []
    hosts = [*CLUSTERS["plain"], *CLUSTERS["tls"]]
    with Testbed(hosts, settings=Settings.from_env(), repo_packages=BENCH_PACKAGES) as bed:
        bed.boot()
        for kind in CLUSTERS:
            print(f"installing cluster {kind}", flush=True)
            install_cluster(bed, kind)
            first = CLUSTERS[kind][0]
            sh(bed, first, "mariadb -e 'CREATE DATABASE IF NOT EXISTS sbtest'")
            sh(bed, first, f"sysbench oltp_write_only --db-driver=mysql --mysql-socket={SOCKET} --mysql-user=root "
                           "--mysql-db=sbtest --tables=4 --table-size=10000 --threads=4 prepare >/dev/null")
        log = sh(bed, "t1", "cat /var/log/mysql/error.log 2>/dev/null; journalctl -u mariadb --no-pager -q "
                            "2>/dev/null | tail -n 400")
        record["galera_ciphers"] = sorted(set(_CIPHER.findall(log)))
        print("Galera TLS ciphers seen on t1:", record["galera_ciphers"], flush=True)
        for threads in (int(t) for t in args.threads.split(",")):
            part = f"wo-{threads}t"
            for kind in CLUSTERS:
                run(bed, kind, threads, 5)  # warm-up
            for rnd in range(args.rounds):
                order = ("plain", "tls") if rnd % 2 == 0 else ("tls", "plain")
                for kind in order:
                    res = run(bed, kind, threads, args.seconds)
                    load = open("/proc/loadavg").read().split()[0]
                    runs.append({"part": part, "round": rnd, "variant": kind, **res, "load1": load})
                    print(f"{part} round {rnd + 1} {kind:<5} {res['tps']:8.1f} tx/s "
                          f"{res['cpu_per_1k']:.3f} CPU-s/1k tx (3 nodes)  load {load}", flush=True)
    summary = []
    for part in dict.fromkeys(str(r["part"]) for r in runs):
        def series(kind: str, key: str, part: str = part) -> list[float]:
            return [float(str(r[key])) for r in sorted((r for r in runs if r["part"] == part and r["variant"] == kind),
                                                       key=lambda r: int(str(r["round"])))]
        tps = compare(series("plain", "tps"), series("tls", "tps"))
        cpu = compare(series("plain", "cpu_per_1k"), series("tls", "cpu_per_1k"))
        summary.append({"part": part, "workload": "oltp_write_only", "variant": "tls", "tps_ratio": tps.as_dict(),
                        "cost_median": tps.cost, "cost_upper95": tps.cost_upper, "cpu_ratio": cpu.as_dict(),
                        "cpu_per_1k_plain": statistics.median(series("plain", "cpu_per_1k")),
                        "cpu_per_1k": statistics.median(series("tls", "cpu_per_1k"))})
        print(f"{part}: TLS/plaintext TPS median {tps.median:.3f} (pairs {tps.minimum:.2f}..{tps.maximum:.2f}, "
              f"95% CI {tps.ci_low:.3f}..{tps.ci_high:.3f}); CPU-s/1k tx plain "
              f"{summary[-1]['cpu_per_1k_plain']:.3f} tls {summary[-1]['cpu_per_1k']:.3f} "
              f"(ratio median {cpu.median:.3f})")
    record.update({"machine_end": machine(), "runs": runs, "summary": summary})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(f"raw runs: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
