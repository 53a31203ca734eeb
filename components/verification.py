"""Verification of one node: the verify tool's JSON report, and a failed deploy on any gap."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_command as command

from components.node_path import StepInputs, remote_command
from components.plan.steps import Step

COMPONENT_TYPE = "mariadb-kms:index:Verification"


def parse_report(stdout: str | None) -> dict[str, Any] | None:
    """The verify tool's report; None before it ran. A report that is not JSON is kept as an error entry."""
    if stdout is None or not stdout.strip():
        return None
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError as e:
        return {"ok": False, "error": f"the verify tool's output is not JSON: {e.msg}", "raw": stdout[:2000]}
    if not isinstance(report, dict):
        return {"ok": False, "error": "the verify tool's output is not a JSON object", "raw": stdout[:2000]}
    return report


class Verification(pulumi.ComponentResource):
    """Runs ``mariadb-kms-verify`` on a node; a non-zero exit (any gap) fails ``pulumi up``.

    ``report`` is the parsed JSON (unknown in preview, where nothing ran). The
    command is replaced, and so re-run, whenever one of the step's triggers
    changes (``verify_step`` in ``components/plan/order.py`` names them).
    """

    report: pulumi.Output[dict[str, Any] | None]

    def __init__(
        self,
        name: str,
        *,
        step: Step,
        connection: command.remote.ConnectionArgs,
        inputs: StepInputs,
        after: Sequence[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self.command = remote_command(
            f"{name}-run",
            step,
            connection=connection,
            inputs=inputs,
            depends_on=after,
            parent=self,
        )
        self.report = self.command.stdout.apply(parse_report)
        self.register_outputs({"report": self.report})
