"""The day-2 availability figures (rehearsal/availability.py) on samples made by hand.

A rolling change takes one member out at a time; the donor that serves it on its way back is
Donor/Desynced but usable. The service-level count must see one member, the strict count two, and the
check must pass that and flag a second member out or rejoining, or a donor serving nobody (controls).
"""

from __future__ import annotations

from rehearsal.availability import DONOR, Probe, Sample, availability, episodes, label

MEMBERS = ["a", "b", "c"]


def sample(at: float, **states: str | None) -> Sample:
    probes: dict[str, Probe | None] = {}
    for node, state in states.items():
        if state is None:
            probes[node] = None
        elif state == "non-Primary":
            probes[node] = Probe("Initialized", primary=False, ready=False)
        else:
            probes[node] = Probe(state, primary=True, ready=state in ("Synced", DONOR))
    return Sample(at, probes)


def roll_of_a() -> list[Sample]:
    """a restarts and rejoins by IST from b."""
    return [
        sample(0, a="Synced", b="Synced", c="Synced"),
        sample(1, a=None, b="Synced", c="Synced"),
        sample(2, a="Joiner", b=DONOR, c="Synced"),
        sample(3, a="Joined", b=DONOR, c="Synced"),
        sample(4, a="Synced", b="Synced", c="Synced"),
    ]


def test_a_roll_with_its_donor_is_one_out_and_two_not_synced() -> None:
    seen = availability(roll_of_a(), MEMBERS)
    assert seen.max_out == 1 and seen.worst_out == "1.0 s: a no answer"
    assert seen.max_not_synced == 2 and seen.worst_not_synced == "2.0 s: a Joiner (not ready), b Donor/Desynced"
    assert seen.extra == []
    assert [str(e) for e in seen.donor_episodes] == ["b Donor/Desynced at 2.0 s for 2.0 s"]


def test_a_second_member_down_or_rejoining_is_flagged() -> None:
    # Control: b goes down while a is still rejoining.
    samples = roll_of_a()
    samples[3] = sample(3, a="Joined", b=None, c="Synced")
    seen = availability(samples, MEMBERS)
    assert seen.max_out == 2 and seen.worst_out == "3.0 s: a Joined (not ready), b no answer"
    assert seen.extra == ["3.0 s: a Joined (not ready), b no answer"]
    # Control: a usable but rejoining member (Joined, ready) beside one out is still a second member moving.
    samples[3] = Sample(3, {"a": Probe("Joined", True, True), "b": None, "c": Probe("Synced", True, True)})
    seen = availability(samples, MEMBERS)
    assert seen.max_out == 1 and seen.extra == ["3.0 s: a Joined, b no answer"]


def test_a_donor_serving_nobody_is_flagged_and_a_joiner_counts_as_served() -> None:
    idle = [sample(0, a="Synced", b=DONOR, c="Synced")]
    assert availability(idle, MEMBERS).extra == ["0.0 s: b Donor/Desynced serving nobody"]
    # A joining node that is not yet a member (adding d) is someone served.
    joining = [sample(0, a="Synced", b=DONOR, c="Synced", d="Joiner")]
    assert availability(joining, MEMBERS).extra == []


def test_non_primary_is_out_and_labels_say_why() -> None:
    s = sample(0, a="non-Primary", b="Synced", c="Synced")
    assert availability([s], MEMBERS).max_out == 1
    assert label(s.probes["a"]) == "Initialized (non-Primary, not ready)" and label(None) == "no answer"
    assert [str(e) for e in episodes([s, sample(2, a="Synced", b="Synced", c="Synced")], MEMBERS)] == [
        "a Initialized (non-Primary, not ready) at 0.0 s for 2.0 s"]
