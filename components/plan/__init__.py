"""The cluster as a plan: pure data an executor runs (Pulumi's ``components/cluster.py``, the rehearsal).

- ``steps``: what a step is (command, stdin payload kind, triggers) and the put transport;
- ``files``: the files the put steps install, rendered from config;
- ``order``: which node runs which step after which; ``cluster_plan(config)`` gives it all.

Nothing here imports pulumi.
"""

from components.plan.order import (
    BOOTSTRAP_KEY,
    NodePlan,
    Plan,
    PlanEntry,
    Role,
    bootstrap_step,
    cluster_plan,
    decommission_step,
    entry_key,
    node_plan,
    rolling_order,
    upgrade_step,
    verify_step,
)
from components.plan.steps import Phase, Stdin, Step, Trigger

__all__ = [
    "BOOTSTRAP_KEY", "NodePlan", "Phase", "Plan", "PlanEntry", "Role", "Stdin", "Step", "Trigger",
    "bootstrap_step", "cluster_plan", "decommission_step", "entry_key", "node_plan", "rolling_order",
    "upgrade_step", "verify_step",
]
