"""Where a testbed node's ``mariadbd`` spends its CPU: ``perf record`` of the software clock from this machine.

Hardware counters are not available here, but the kernel's ``cpu-clock`` event samples any process, a
container's included, and perf resolves the container's binaries through ``/proc/<pid>/root``. The recording
is system-wide and the report keeps the given processes: events attached to the processes themselves (``-p``)
hook every context switch of every thread, and on this workload that raised ``mariadbd``'s CPU per
transaction from 0.95 to 1.55 CPU-seconds per 1,000, which is no profile of the thing measured. Shares by
shared object (libcrypto, libssl, libgalera, mariadbd, the kernel) tell where a variant's extra CPU goes;
multiplied by the CPU per transaction measured over the same window, they become CPU per transaction by
object, which compares across variants.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(.*\S)\s*$")
_SAMPLES = re.compile(r"^# Samples: (\d+)([KM]?) ", re.M)  # perf rounds large counts: "8K"
_SCALE = {"": 1, "K": 1000, "M": 1_000_000}


def host_pids(leader_pid: int, comm: str) -> list[int]:
    """This machine's pids of the processes named ``comm`` in the PID namespace of a container's PID 1."""
    namespace = os.readlink(f"/proc/{leader_pid}/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == comm and os.readlink(entry / "ns/pid") == namespace:
                found.append(int(entry.name))
        except OSError:  # gone while we looked
            continue
    return sorted(found)


def threads_of(pids: list[int]) -> set[int]:
    """The thread ids of ``pids`` now: what perf's ``pid`` sort key prints is the thread's id."""
    found: set[int] = set()
    for pid in pids:
        try:
            found.update(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
        except OSError:  # the process is gone
            continue
    return found


def record_command(seconds: float, output: Path, frequency: int = 499) -> list[str]:
    """``perf record`` of the software clock on every CPU for ``seconds``."""
    return ["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", str(frequency), "-o", str(output),
            "--", "sleep", f"{seconds:g}"]


def report_command(data: Path, sort: str) -> list[str]:
    """``perf report`` by thread and ``sort``, every row: the rows of the wanted threads are picked out here.

    (perf's own ``--pid`` filter keeps percentages of all samples and, in this perf, drops the kernel's row when
    sorting by object; picking rows by the thread column has neither problem.)"""
    return ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", f"pid,{sort}",
            "--percent-limit", "0"]


def report(data: Path, sort: str) -> str:
    return subprocess.run(report_command(data, sort), capture_output=True, text=True, check=True).stdout


def _summed_over_threads(rows: list[tuple[float, str]], tids: set[int]) -> dict[str, float]:
    """Rows of ``perf report --sort pid,...`` -> {rest of the key: percent of all samples} for the threads ``tids``."""
    wanted = {str(tid) for tid in tids}
    summed: dict[str, float] = {}
    for percent, what in rows:
        thread, _, rest = what.partition(" ")
        if thread.split(":", 1)[0] in wanted:
            summed[rest] = summed.get(rest, 0.0) + percent
    return summed


def share_of_threads(rows: list[tuple[float, str]], tids: set[int]) -> float:
    """The percent of all samples that the threads ``tids`` hold."""
    return sum(_summed_over_threads(rows, tids).values())


def of_threads(rows: list[tuple[float, str]], tids: set[int], limit: float) -> list[tuple[float, str]]:
    """Rows of ``perf report --sort pid,...`` -> the rows of the threads ``tids``, summed over them by the rest of
    the key, as percentages of those threads' own samples, largest first, those under ``limit`` left out."""
    summed = _summed_over_threads(rows, tids)
    total = sum(summed.values())
    shares = [(round(100 * value / total, 2), rest) for rest, value in summed.items()] if total else []
    return sorted((row for row in shares if row[0] >= limit), key=lambda row: (-row[0], row[1]))


def parse_report(text: str) -> tuple[int, list[tuple[float, str]]]:
    """``perf report --stdio`` text -> (samples, [(percent, what), ...]) in the report's order.

    ``what`` is the sort key's columns as printed, whitespace runs folded to one space
    (``libcrypto.so.3 [.] aesni_gcm_encrypt`` for ``--sort dso,sym``)."""
    samples = _SAMPLES.search(text)
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            rows.append((float(match.group(1)), " ".join(match.group(2).split())))
    return (int(samples.group(1)) * _SCALE[samples.group(2)] if samples else 0), rows


def per_object(rows: list[tuple[float, str]], cpu_per_1k: float) -> dict[str, float]:
    """Shares (percent) -> CPU-seconds per 1,000 transactions by object, for a window whose whole cost is known."""
    return {what: round(percent / 100 * cpu_per_1k, 4) for percent, what in rows}


# The calls a message to or from a peer or a client can cost: asio's sends and receives, plain reads and
# writes, and the waits and wake-ups between the threads that hand a write-set on.
SYSCALLS = ("sendmsg", "recvmsg", "sendto", "recvfrom", "read", "write", "writev", "readv", "futex",
            "epoll_wait", "epoll_pwait", "poll", "ppoll", "io_uring_enter", "pwrite64", "fsync", "fdatasync")


def count_command(pids: list[int], seconds: float, syscalls: tuple[str, ...] = SYSCALLS) -> list[str]:
    """``perf stat`` of every system call ``pids`` make for ``seconds``, in total and for each of ``syscalls``.

    Counts do not depend on the per-process events' own cost, so ``-p`` is right here."""
    events = ",".join(["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{name}" for name in syscalls)])
    return ["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids)), "--", "sleep", f"{seconds:g}"]


def parse_counts(text: str) -> dict[str, int]:
    """``perf stat -x,`` lines -> {"all": n, "sendmsg": n, ...}; a count perf could not take is left out."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].isdigit():
            continue  # "<not counted>", "<not supported>", or not a count line
        event = fields[2]
        name = "all" if event == "raw_syscalls:sys_enter" else event.removeprefix("syscalls:sys_enter_")
        counts[name] = counts.get(name, 0) + int(fields[0])
    return counts
