"""How many cluster members were out at once during a change, read from timed samples: pure functions.

Two counts, because they answer different questions:

- **out**: members a client could not use: no answer, not in the primary component, or ``wsrep_ready``
  off. This is the service-level rule of a rolling change: at most one.
- **not Synced**: the strict count, every member whose ``wsrep_local_state_comment`` is not ``Synced``.
  It adds a state transfer's donor, which Galera marks ``Donor/Desynced`` while it serves the transfer:
  for an IST too, because Galera 4 handles an IST-only request through the SST donor path, with the SST
  script run in bypass mode, and the donor stays desynced until that script returns. A donor is in the
  primary component and ready, so it stays out of the first count.

``extra_not_synced`` names every moment where the strict count is above one for any reason other than a
donor serving the one member that is out or rejoining: a second node down, or rejoining, shows there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SYNCED = "Synced"
DONOR = "Donor/Desynced"


@dataclass(frozen=True)
class Probe:
    """One member as a client saw it at one moment."""

    state: str  # wsrep_local_state_comment
    primary: bool  # wsrep_cluster_status is Primary
    ready: bool  # wsrep_ready is ON
    started: float = 0.0  # when its mariadbd started (epoch seconds)


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the scenario began
    probes: Mapping[str, Probe | None]  # None: no answer


def label(probe: Probe | None) -> str:
    """A member's state for the figures: the Galera state, with what makes it unusable, or "no answer"."""
    if probe is None:
        return "no answer"
    flaws = [w for w, bad in (("non-Primary", not probe.primary), ("not ready", not probe.ready)) if bad]
    return probe.state + (f" ({', '.join(flaws)})" if flaws else "")


def is_out(probe: Probe | None) -> bool:
    return probe is None or not probe.primary or not probe.ready


def out(sample: Sample, members: Sequence[str]) -> list[str]:
    return [m for m in members if is_out(sample.probes.get(m))]


def not_synced(sample: Sample, members: Sequence[str]) -> list[str]:
    return [m for m in members if (p := sample.probes.get(m)) is None or p.state != SYNCED]


def is_serving_donor(sample: Sample, member: str) -> bool:
    """``member`` is a donor, usable, while another sampled node (a member or a joiner) is out or joining."""
    p = sample.probes.get(member)
    if p is None or p.state != DONOR or is_out(p):
        return False
    return any(m != member and (q is None or is_out(q) or q.state not in (SYNCED, DONOR))
               for m, q in sample.probes.items())


def changing(sample: Sample, members: Sequence[str]) -> list[str]:
    """Members out, or back but not yet Synced (Joiner, Joined): the node a rolling change is working on."""
    return [m for m in members
            if is_out(p := sample.probes.get(m)) or (p is not None and p.state not in (SYNCED, DONOR))]


def extra_not_synced(samples: Sequence[Sample], members: Sequence[str]) -> list[str]:
    """Each moment the strict count rose for another reason than the one member changing and its donor.

    Flagged: a second member changing at the same moment, and a donor while no other node (a member or a
    joiner) is out or joining, i.e. a desync that serves nobody.
    """
    found = []
    for s in samples:
        moving = changing(s, members)
        if len(moving) > 1:
            found.append(f"{s.at:.1f} s: " + ", ".join(f"{m} {label(s.probes.get(m))}" for m in moving))
        for m in not_synced(s, members):
            if m not in moving and not is_serving_donor(s, m):
                found.append(f"{s.at:.1f} s: {m} {label(s.probes.get(m))} serving nobody")
    return found


@dataclass(frozen=True)
class Episode:
    """A member in one non-Synced state over consecutive samples."""

    member: str
    state: str  # ``label``
    start_s: float
    seconds: float  # from the first sample in this state to the first one after it (the last sample if none)

    def __str__(self) -> str:
        return f"{self.member} {self.state} at {self.start_s:.1f} s for {self.seconds:.1f} s"


def episodes(samples: Sequence[Sample], members: Sequence[str]) -> list[Episode]:
    """Every stretch of a member in a state other than Synced (usable), in the order they began."""
    found: list[Episode] = []
    for m in members:
        start: float | None = None
        current = ""
        for s in samples:
            p = s.probes.get(m)
            now = "" if p is not None and p.state == SYNCED and not is_out(p) else label(p)
            if now != current:
                if current:
                    assert start is not None
                    found.append(Episode(m, current, start, s.at - start))
                current, start = now, s.at
        if current and start is not None and samples:
            found.append(Episode(m, current, start, samples[-1].at - start))
    return sorted(found, key=lambda e: (e.start_s, e.member))


@dataclass(frozen=True)
class Availability:
    max_out: int  # the service-level figure (must be <= 1)
    worst_out: str  # who, at the first moment it was reached
    max_not_synced: int  # the strict figure
    worst_not_synced: str  # who and in which state, at the first moment it was reached
    extra: list[str]  # moments the strict count rose for another reason than a serving donor
    episodes: list[Episode]

    @property
    def donor_episodes(self) -> list[Episode]:
        return [e for e in self.episodes if e.state == DONOR]


def availability(samples: Sequence[Sample], members: Sequence[str]) -> Availability:
    max_out, worst_out, max_ns, worst_ns = 0, "", 0, ""
    for s in samples:
        o, n = out(s, members), not_synced(s, members)
        if len(o) > max_out:
            max_out = len(o)
            worst_out = f"{s.at:.1f} s: " + ", ".join(f"{m} {label(s.probes.get(m))}" for m in o)
        if len(n) > max_ns:
            max_ns = len(n)
            worst_ns = f"{s.at:.1f} s: " + ", ".join(f"{m} {label(s.probes.get(m))}" for m in n)
    return Availability(max_out, worst_out, max_ns, worst_ns, extra_not_synced(samples, members),
                        episodes(samples, members))
