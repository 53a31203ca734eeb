"""logEncryption in the recorded program: the default plan is unchanged, and a change rolls every node.

Changing the key rewrites 90-mariadb-kms-encryption.cnf, which is in the restart digest
(``components/plan/files.restart_digest``): the preflight and the roll run again on every node, one at a
time as every roll does, and each node's verification is told how its logs are encrypted.
"""

from __future__ import annotations

from typing import Any

import pytest
from mocks import Recording, full_config, run_program
from test_day2_members import creates
from test_plan_triggers import NO_TLS, retriggered, triggers

NODES = ("aws-a", "aws-b", "dc-1")


def base() -> dict[str, Any]:
    return full_config(**NO_TLS)


@pytest.fixture(scope="module")
def recordings() -> tuple[Recording, Recording, Recording]:
    return (run_program(base(), preview=False), run_program({**base(), "logEncryption": "mariadb"}, preview=False),
            run_program({**base(), "logEncryption": "kernel"}, preview=False))


def test_stating_the_default_changes_nothing(recordings: tuple[Recording, Recording, Recording]) -> None:
    default, stated, _ = recordings
    assert retriggered(triggers(default), triggers(stated)) == set()
    assert creates(default) == creates(stated)


def test_kernel_reruns_every_roll_and_verification_and_tells_verify(
    recordings: tuple[Recording, Recording, Recording],
) -> None:
    default, _, kernel = recordings
    changed = retriggered(triggers(default), triggers(kernel))
    assert {f"{n}/{s}" for n in NODES for s in ("preflight", "roll", "verify")} <= changed
    for n in NODES:
        assert "--log-encryption kernel" in creates(kernel)[f"{n}/verify"]
        assert "--log-encryption" not in creates(default)[f"{n}/verify"]  # control
