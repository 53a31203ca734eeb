"""Figures for a node start: the testbed's cold build, a warm 3-node start, and what the KMS unwrap adds to a start.

Prints figures, asserts nothing (it is not a test). Needs root, like the node tests.

- cold build (``--cold``): the bare rootfs (debootstrap + apt) and the local package repository, built
  from nothing into an empty temporary cache (downloads from the Debian mirrors; the real cache is not
  touched), then removed.
- warm start: with the cached rootfs and repository, the testbed up (network, repository server, 3 hosts
  booted), the KMS emulator up, then the program's own plan for an all-on-premises stack of those hosts,
  recorded under the rehearsal's mocks and run on them as the node tests run it (``rehearsal/runner``):
  each step's share (from the first start to the last finish of that step on any node), until the
  program's verification has passed on all 3.
- the unwrap's share of a MariaDB start, side by side on one node in one run, ``--reps`` times:
  ``systemctl start mariadb`` from stopped (unwrap unit, then MariaDB and its rejoin), the unwrap unit
  started alone, MariaDB started while the unwrap unit is already active (MariaDB and rejoin only), and
  ``mariadb-kms-unwrap --check`` (the program's pre-flight: the same KMS calls, nothing written). Each is
  timed inside the host (``date +%s%N`` around the command), so nsenter's own cost is not counted.

    sudo python -m bench.node_start [--cold] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.node_files import UNWRAP_UNIT
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import stop, unit_state, wait_synced
from rehearsal.pkgrepo import ensure_repo
from rehearsal.replay import Outcome
from rehearsal.rootfs import ensure_bare_rootfs, remove_tree
from rehearsal.runner import ProgramStack, deploy, onprem_config
from rehearsal.testbed import Testbed

HOSTS = ("node1", "node2", "node3")
SUBJECT = "node3"  # the node restarted for the unwrap figures (a joiner, never the bootstrap node)


@contextmanager
def timed(figures: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    figures[name] = time.monotonic() - start


def cold_build() -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mariadb-kms-cold-") as tmp:
        cache = Path(tmp)
        try:
            with timed(figures, "bare rootfs (debootstrap, apt)"):
                rootfs = ensure_bare_rootfs(cache)
            with timed(figures, "package repository (apt download, index)"):
                ensure_repo(rootfs, cache=cache)
        finally:
            remove_tree(cache / "rootfs")  # a tree with root-owned device nodes; rm -rf --one-file-system
    return figures


def host_seconds(testbed: Testbed, host: str, command: str) -> float:
    """Wall time of ``command`` measured inside the host; raises if it fails."""
    script = f"a=$(date +%s%N); {command} >/dev/null 2>&1 || exit 90; b=$(date +%s%N); echo $(( b - a ))"
    result = testbed.exec(host, ["sh", "-c", script], timeout=600)
    if result.rc != 0:
        raise RuntimeError(f"{host}: `{command}` failed (rc {result.rc}): {result.stderr[-1000:]}")
    return int(result.stdout.strip()) / 1e9


def unwrap_figures(testbed: Testbed, reps: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {
        "systemctl start mariadb (unwrap + MariaDB + rejoin)": [],
        "  unwrap unit alone (systemctl start mariadb-kms-unwrap)": [],
        "  MariaDB + rejoin, unwrap unit already active": [],
        "mariadb-kms-unwrap --check (pre-flight, nothing written)": [],
    }
    full, unit, rest, check = runs.values()
    for _ in range(reps):
        stop(testbed, SUBJECT)
        full.append(host_seconds(testbed, SUBJECT, "systemctl start mariadb"))
        wait_synced(testbed, SUBJECT, 3)
        stop(testbed, SUBJECT)
        unit.append(host_seconds(testbed, SUBJECT, f"systemctl start {UNWRAP_UNIT}"))
        if unit_state(testbed, SUBJECT, "mariadb.service") != "inactive":
            raise RuntimeError(f"starting {UNWRAP_UNIT} alone started MariaDB too: the figures would mix")
        rest.append(host_seconds(testbed, SUBJECT, "systemctl start mariadb"))
        wait_synced(testbed, SUBJECT, 3)
        check.append(host_seconds(testbed, SUBJECT, "mariadb-kms-unwrap --check"))
    return runs


def step_spans(outcomes: list[Outcome]) -> dict[str, float]:
    """Per step (the command name without its node: ``install``, ``roll``...), first start to last finish."""
    spans: dict[str, tuple[float, float]] = {}
    for o in outcomes:
        step = o.name.split("-ssh-", 1)[-1] if "-ssh-" in o.name else o.name.split("-", 1)[-1]
        begin, end = spans.get(step, (o.started, o.started + o.seconds))
        spans[step] = (min(begin, o.started), max(end, o.started + o.seconds))
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    return {step: end - begin for step, (begin, end) in ordered}


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def stats(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):6.2f}s   min {min(values):6.2f}s   max {max(values):6.2f}s"
        f"   (n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="also build rootfs and repository from nothing")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the unwrap figures (default 5)")
    args = parser.parse_args()

    if args.cold:
        cold = cold_build()
        print_table("Testbed cold build (empty cache)", [(k, f"{v:7.1f}s") for k, v in cold.items()]
                    + [("total", f"{sum(cold.values()):7.1f}s")])  # fmt: skip

    warm: dict[str, float] = {}
    started = time.monotonic()
    with Testbed(HOSTS) as bed:
        warm["testbed setup (network, repository server)"] = time.monotonic() - started
        with timed(warm, "3 hosts booted (systemd running, sshd up)"):
            bed.boot()
        with KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
            plan_started = time.monotonic()
            deployed = deploy(bed, ProgramStack(kms), onprem_config(bed, HOSTS), quiet=True)
            plan_total = time.monotonic() - plan_started
            for step, seconds in step_spans(list(deployed.outcomes.values())).items():
                warm[f"  {step}"] = seconds
            warm["the program's plan, recorded and run (the steps above, some at once)"] = plan_total
            warm_total = time.monotonic() - started
            print_table(
                "Warm start: cached rootfs and repository to a Synced 3-node encrypted cluster",
                [(k, f"{v:7.1f}s") for k, v in warm.items()] + [("total", f"{warm_total:7.1f}s")],
            )
            runs = unwrap_figures(bed, args.reps)
            print_table(
                f"What the KMS unwrap adds to a MariaDB start ({SUBJECT}, emulated KMS on the bridge)",
                [(k, stats(v)) for k, v in runs.items()],
            )
            full, unit = (statistics.median(v) for v in list(runs.values())[:2])
            print(f"\n  the unwrap unit is {unit / full:.0%} of a full start (medians: {unit:.2f}s of {full:.2f}s)")
            for host in HOSTS:  # stopped before the hosts power off, so none waits on a departed cluster
                bed.exec(host, ["systemctl", "stop", "mariadb"], timeout=300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
