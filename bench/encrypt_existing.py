"""Encrypting existing data: how fast the background threads encrypt tables that were written in plaintext.

A node whose existing unencrypted tables get encryption turned on. One testbed host is a one-node cluster
deployed by the program's own plan (``rehearsal/runner``); its server is then run as one variant of the
deployed config (bench/single_node.py): the program's encryption file with ``innodb_encrypt_tables = OFF``
and no encryption threads, so the data set (``--tables`` InnoDB tables of 4,000-byte rows, ``--mb`` in
all, file-per-table) is written in plaintext. Then, for each ``--threads`` count and ``--iops`` setting:
``SET GLOBAL innodb_encryption_threads``, ``innodb_encryption_rotation_iops`` and
``innodb_encrypt_tables = ON``, timed until every one of the data set's tablespaces reports its pages
encrypted (``information_schema.INNODB_TABLESPACES_ENCRYPTION``), then ``innodb_encrypt_tables = OFF``,
timed the same way back to plaintext, so the next setting starts from plaintext again. Progress is printed
every few seconds. A run that exceeds ``--max-seconds`` is stopped there and its rate taken from the
pages done so far (marked partial).

The disk's raw sequential write speed (``dd`` of ``--mb`` MB with ``conv=fdatasync`` into the datadir's
file system) is measured in the same run, before and after, so the figure is the ratio of the encryption
rate to it. Prints progress and a summary, writes JSON; asserts nothing; needs root.

    python -m bench.encrypt_existing [--mb 1024] [--tables 8] [--threads 1,4,8] [--iops 100,10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.single_node import BENCH_PACKAGES, DATA_ROOT, SideBySide, Variant, machine
from rehearsal.kms_server import KmsServer
from rehearsal.runner import TLS_OFF, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Settings, Testbed

REPO = Path(__file__).resolve().parent.parent
PAGE = 16384  # InnoDB's default page size, which the node's config keeps
ROW_BYTES = 4000
DB = "existing"
VARIANT = Variant("existing", encrypted=True,
                  changes={"innodb_encrypt_tables": "OFF", "innodb_encryption_threads": "0"})
_DD = re.compile(r"(\d+) bytes .* copied, ([\d.]+) s")


@dataclass(frozen=True)
class Space:
    """One row of information_schema.INNODB_TABLESPACES_ENCRYPTION."""

    name: str
    scheme: int
    min_key_version: int
    page: int | None  # KEY_ROTATION_PAGE_NUMBER: where the rotation is, NULL when none runs
    max_page: int | None
    rotating: bool


def parse_spaces(text: str) -> list[Space]:
    """Rows of ``mariadb -N -B`` output of NAME, ENCRYPTION_SCHEME, MIN_KEY_VERSION, KEY_ROTATION_PAGE_NUMBER,
    KEY_ROTATION_MAX_PAGE_NUMBER, ROTATING_OR_FLUSHING (tab-separated, NULL as the string ``NULL``)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, scheme, min_kv, page, max_page, rotating = line.split("\t")
        out.append(Space(name, int(scheme), int(min_kv), None if page == "NULL" else int(page),
                         None if max_page == "NULL" else int(max_page), rotating == "1"))
    return out


def space_done(space: Space, *, encrypt: bool) -> bool:
    """Every page of the tablespace in the target state, and no rotation or flush of it still running."""
    if space.rotating:
        return False
    return space.min_key_version >= 1 if encrypt else space.min_key_version == 0


def progress(spaces: Sequence[Space], sizes: dict[str, int], *, encrypt: bool) -> tuple[int, bool]:
    """(bytes of the data set in the target state, estimated; whether all of it is there).

    A tablespace in the target state counts whole; one being rotated counts up to its rotation page. A
    tablespace of the data set missing from the view has not been touched yet (encrypting) or is done
    (decrypting: a table never encrypted has no crypt data to show)."""
    by_name = {s.name: s for s in spaces}
    done_bytes = 0
    complete = True
    for name, size in sizes.items():
        space = by_name.get(name)
        if space is None:
            if encrypt:
                complete = False
            else:
                done_bytes += size
            continue
        if space_done(space, encrypt=encrypt):
            done_bytes += size
            continue
        complete = False
        if space.page is not None and space.max_page:
            done_bytes += min(size, space.page * PAGE)
    return done_bytes, complete


def doubling_limits(rows: int) -> list[int]:
    """The LIMIT of each INSERT ... SELECT pass that grows a one-row table to exactly ``rows`` rows."""
    limits = []
    count = 1
    while count < rows:
        n = min(count, rows - count)
        limits.append(n)
        count += n
    return limits


def dd_rate(output: str) -> float:
    """MB/s (10^6 bytes) from GNU dd's last summary line."""
    found = _DD.findall(output)
    if not found:
        raise ValueError(f"no dd summary in: {output[-300:]!r}")
    copied, seconds = found[-1]
    return int(copied) / float(seconds) / 1e6


class Existing:
    def __init__(self, servers: SideBySide) -> None:
        self.servers = servers
        self.name = VARIANT.name

    def sql(self, statements: str) -> str:
        return self.servers.sql(self.name, statements)

    def create(self, total_mb: int, tables: int) -> dict[str, int]:
        rows_per_table = max(1, total_mb * 1_000_000 // ROW_BYTES // tables)
        self.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
        for i in range(tables):
            t0 = time.monotonic()
            table = f"{DB}.t{i}"
            statements = [f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR({ROW_BYTES}) NOT NULL) "
                          "ENGINE=InnoDB ENCRYPTED=DEFAULT",
                          f"INSERT INTO {table} (v) VALUES (REPEAT(MD5(RAND()), {ROW_BYTES // 32}))"]  # noqa: S608
            # Doubling with fresh content; each pass's LIMIT stops exactly at the target count.
            statements += [f"INSERT INTO {table} (v) SELECT REPEAT(MD5(RAND()), {ROW_BYTES // 32}) "  # noqa: S608
                           f"FROM {table} LIMIT {n}" for n in doubling_limits(rows_per_table)]
            self.servers.sh(f"mariadb --socket={self.servers.socket(self.name)} -e " + _quote(";\n".join(statements)),
                            timeout=3600)
            print(f"wrote {table} in {time.monotonic() - t0:.0f} s", flush=True)
        return self.sizes()

    def sizes(self) -> dict[str, int]:
        out = self.sql("SELECT NAME, FILE_SIZE FROM information_schema.INNODB_SYS_TABLESPACES "  # noqa: S608
                       f"WHERE NAME LIKE '{DB}/%'")
        return {name: int(size) for name, size in (line.split("\t") for line in out.splitlines() if line)}

    def spaces(self) -> list[Space]:
        return parse_spaces(self.sql(
            "SELECT NAME, ENCRYPTION_SCHEME, MIN_KEY_VERSION, IFNULL(KEY_ROTATION_PAGE_NUMBER, 'NULL'), "  # noqa: S608
            "IFNULL(KEY_ROTATION_MAX_PAGE_NUMBER, 'NULL'), ROTATING_OR_FLUSHING "
            f"FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE NAME LIKE '{DB}/%'"))

    def rotate(self, *, encrypt: bool, threads: int, iops: int, sizes: dict[str, int],
               max_seconds: float) -> dict[str, object]:
        total = sum(sizes.values())
        self.sql(f"SET GLOBAL innodb_encryption_rotation_iops = {iops}; "
                 f"SET GLOBAL innodb_encryption_threads = {threads}; "
                 f"SET GLOBAL innodb_encrypt_tables = {'ON' if encrypt else 'OFF'}")
        started = time.monotonic()
        last_print = started
        done_bytes, complete = 0, False
        while True:
            done_bytes, complete = progress(self.spaces(), sizes, encrypt=encrypt)
            now = time.monotonic()
            if complete or now - started > max_seconds:
                break
            if now - last_print >= 10:
                print(f"  {'encrypting' if encrypt else 'decrypting'}: {done_bytes / 1e6:7.0f} of "
                      f"{total / 1e6:.0f} MB, {now - started:5.0f} s", flush=True)
                last_print = now
            time.sleep(1)
        seconds = time.monotonic() - started
        bytes_done = total if complete else done_bytes
        return {"direction": "encrypt" if encrypt else "decrypt", "threads": threads, "iops": iops,
                "bytes": bytes_done, "total_bytes": total, "seconds": seconds, "complete": complete,
                "mb_per_s": bytes_done / seconds / 1e6 if seconds > 0 else 0.0,
                "load1": open("/proc/loadavg").read().split()[0]}

    def wait_plain(self, sizes: dict[str, int], timeout: float) -> None:
        """When a decryption was cut short: let it finish uncapped before the next setting starts."""
        self.sql("SET GLOBAL innodb_encryption_rotation_iops = 100000; SET GLOBAL innodb_encryption_threads = 8; "
                 "SET GLOBAL innodb_encrypt_tables = OFF")
        deadline = time.monotonic() + timeout
        while not progress(self.spaces(), sizes, encrypt=False)[1]:
            if time.monotonic() > deadline:
                raise TimeoutError("the data set did not return to plaintext")
            time.sleep(2)

    def disk_write(self, mb: int) -> float:
        out = self.servers.sh(f"dd if=/dev/zero of={DATA_ROOT}/dd.test bs=1M count={mb} conv=fdatasync 2>&1; "
                              f"rm -f {DATA_ROOT}/dd.test", timeout=1800)
        return dd_rate(out)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the data set in MB (10^6 bytes)")
    parser.add_argument("--tables", type=int, default=8)
    parser.add_argument("--threads", default="1,4,8", help="innodb_encryption_threads values")
    parser.add_argument("--iops", default="100,10000", help="innodb_encryption_rotation_iops values")
    parser.add_argument("--max-seconds", type=float, default=300, help="cut a run short after this long")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "benchmarks" / "encrypt_existing.json")
    args = parser.parse_args()
    record: dict[str, object] = {"machine_start": machine(), "command": " ".join(sys.argv), "mb": args.mb,
                                 "tables": args.tables, "row_bytes": ROW_BYTES}
    runs: list[dict[str, object]] = []
    disk: list[float] = []
    with Testbed(["bench"], settings=Settings.from_env(), repo_packages=BENCH_PACKAGES) as bed:
        bed.boot()
        print("deploying a one-node cluster by the program's plan", flush=True)
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            deploy(bed, ProgramStack(kms), onprem_config(bed, ["bench"], gcacheSize="64M", **TLS_OFF))
        servers = SideBySide(bed, "bench", [VARIANT], buffer_pool="128M")
        servers.take_over()
        servers.init_and_start()
        existing = Existing(servers)
        sizes = existing.create(args.mb, args.tables)
        record["data_bytes"] = sum(sizes.values())
        print(f"data set: {len(sizes)} tablespaces, {sum(sizes.values()) / 1e6:.0f} MB on disk", flush=True)
        disk.append(existing.disk_write(args.mb))
        print(f"disk sequential write: {disk[-1]:.1f} MB/s", flush=True)
        for iops in (int(x) for x in args.iops.split(",") if x):
            for threads in (int(x) for x in args.threads.split(",") if x):
                for encrypt in (True, False):
                    run = existing.rotate(encrypt=encrypt, threads=threads, iops=iops, sizes=sizes,
                                          max_seconds=args.max_seconds)
                    runs.append(run)
                    print(f"{run['direction']} threads {threads} iops {iops}: {float(str(run['mb_per_s'])):.1f} MB/s "
                          f"in {float(str(run['seconds'])):.0f} s{'' if run['complete'] else ' (partial)'}  "
                          f"load {run['load1']}", flush=True)
                    if not encrypt and not run["complete"]:
                        existing.wait_plain(sizes, timeout=3600)
        disk.append(existing.disk_write(args.mb))
        print(f"disk sequential write: {disk[-1]:.1f} MB/s", flush=True)
    record.update({"machine_end": machine(), "disk_write_mb_per_s": disk, "runs": runs})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    disk_median = sorted(disk)[len(disk) // 2] if len(disk) % 2 else sum(disk) / len(disk)
    print(f"\ndisk sequential write (dd, fdatasync): {', '.join(f'{d:.1f}' for d in disk)} MB/s")
    print(f"{'direction':<9} {'threads':>7} {'iops':>6} {'MB/s':>8} {'of disk':>8}  seconds")
    for r in runs:
        rate = float(str(r["mb_per_s"]))
        print(f"{r['direction']:<9} {r['threads']:>7} {r['iops']:>6} {rate:>8.1f} {rate / disk_median:>8.3f}  "
              f"{float(str(r['seconds'])):.0f}{'' if r['complete'] else ' (partial)'}")
    print(f"raw runs: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
