"""Wall time of `make demo` to a verified cluster: cold (an empty cache) and warm (everything cached).

Prints figures, asserts nothing (it is not a test).

- warm: the rootfs and the package repository are cached; nothing of an
  earlier demo runs (`make demo-down` first, not timed); `make demo` is timed
  ``--runs`` times.
- cold: a fresh, empty ``CACHE`` directory, except the Python environment
  (linked in: building it is `make venv`'s business, not the demo's), so the
  bare rootfs is debootstrapped and the package repository downloaded from
  the Debian mirrors within the timed run. The directory is removed
  afterwards.

Each run's own phase timings come from its JSON report.

    python bench/demo_timing.py [--runs 2] [--warm-only] [--cold-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"warm": 90.0, "cold": 360.0}


def make(*args: str, cache: Path, log: Path) -> tuple[int, float]:
    start = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n$ make {' '.join(args)} CACHE={cache}\n".encode())
        out.flush()
        proc = subprocess.run(["make", "--no-print-directory", *args, f"CACHE={cache}"], cwd=REPO, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    return proc.returncode, time.monotonic() - start


def report_phases(cache: Path) -> dict[str, Any]:
    path = cache / "demo" / "report.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    return {"ok": report.get("ok"), "report_seconds": report.get("seconds"), "phases": report.get("phases"),
            "failure": report.get("failure")}


def measure(kind: str, cache: Path, log: Path) -> dict[str, Any]:
    rc, _ = make("demo-down", cache=cache, log=log)
    if rc != 0:
        raise SystemExit(f"make demo-down failed before the {kind} run; see {log}")
    rc, seconds = make("demo", cache=cache, log=log)
    result = {"kind": kind, "seconds": round(seconds, 1), "rc": rc, **report_phases(cache)}
    failure = result.get("failure")
    where = f"  FAILED at {failure.get('node')} {failure.get('step')}" if isinstance(failure, dict) else ""
    print(f"{kind:5} make demo: {seconds:6.1f}s  exit {rc}{where}  phases {result.get('phases')}", flush=True)
    return result


def fresh_cache(venv: Path) -> Path:
    """An empty cache directory holding only a link to the existing Python environment."""
    cache = Path(tempfile.mkdtemp(prefix="mariadb-kms-cold-", dir=Path.home() / ".cache"))
    (cache / venv.name).symlink_to(venv)
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="warm runs (default 2)")
    parser.add_argument("--warm-only", action="store_true")
    parser.add_argument("--cold-only", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("make demo needs root")
    venv = Path(sys.prefix)
    if not venv.name.startswith("venv-"):
        raise SystemExit(f"run this with the project's Python environment (make bench-demo), not {sys.prefix}")
    cache = Path(os.environ.get("MARIADB_KMS_CACHE") or Path.home() / ".cache" / "mariadb-kms")
    log = Path(tempfile.gettempdir()) / f"demo-timing-{os.getpid()}.log"
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; log {log}", flush=True)
    results: list[dict[str, Any]] = []
    if not args.cold_only:
        # Fill the cache first if it is empty, so every timed run is warm.
        rc, seconds = make("demo", cache=cache, log=log)
        print(f"warm-up make demo: {seconds:.1f}s exit {rc}", flush=True)
        results += [measure("warm", cache, log) for _ in range(args.runs)]
        make("demo-down", cache=cache, log=log)
    if not args.warm_only:
        cold = fresh_cache(venv)
        try:
            results.append(measure("cold", cold, log))
        finally:
            make("demo-down", cache=cold, log=log)
            shutil.rmtree(cold, ignore_errors=True)
    print()
    for kind, target in TARGETS.items():
        times = [r["seconds"] for r in results if r["kind"] == kind and r["rc"] == 0]
        if times:
            verdict = "within" if max(times) < target else "OVER"
            print(f"{kind}: {', '.join(f'{t:.1f}s' for t in times)} (median {statistics.median(times):.1f}s); "
                  f"target < {target:.0f}s: {verdict}")
    failed = [r for r in results if r["rc"] != 0]
    print(json.dumps({"results": results, "load_after": round(os.getloadavg()[0], 2)}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
