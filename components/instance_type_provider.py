"""An EC2 instance's type, changed at the moment the cluster plan chooses: a Pulumi dynamic provider (boto3).

STABLE IMPORT PATH — never move or rename this module, ``InstanceTypeProvider``
or ``InstanceTypeResource``: Pulumi keeps the provider in state as a pickle
that names them by reference (as for ``components/data_key_provider.py``).

Why it exists: pulumi-aws changes ``instanceType`` in place by stopping and
starting the instance ("Updates to this field will trigger a stop/start of
the EC2 instance", pulumi_aws 7.51.1 ``ec2/instance.py``, ``instance_type``;
the same holds for ``user_data``/``user_data_base64``, which the instance
ignores anyway). The engine runs such updates for every node at once, with
no order against the rolls, so several Galera members could be down together
and the cluster lose its primary component. So the instance ignores
``instanceType`` after creation, and this resource, one per EC2 node, sits in
the node's configure phase of the plan: it runs only after the previous node's
roll has that node Synced again, and the node's own roll (re-triggered by the
new type) waits until this node is Synced before the next node's turn.

- ``create`` and ``update`` make the instance have the type: nothing when it
  has it already (a first deploy launches it with that type), else stop, wait
  until stopped, modify, start, wait until running. A replaced instance
  (a new id) is checked the same way: the engine launches a replacement with
  the ignored old type.
- ``diff`` reports a change of instance id or type as an update, never a
  replacement. ``delete`` does nothing: the instance belongs to its
  ``aws.ec2.Instance``.
- Region and credentials: the region is an input; credentials come from
  boto3's normal chain, never from inputs (inputs are kept in state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pulumi
import pulumi.dynamic
from botocore.config import Config as BotoConfig

RESOURCE_MODULE = "mariadb-kms"
RESOURCE_NAME = "InstanceType"

# State property names: part of every stack's state.
P_INSTANCE_ID = "instance_id"
P_INSTANCE_TYPE = "instance_type"
P_REGION = "region"
P_ENDPOINT = "endpoint_url"  # a local EC2 stand-in, for tests only
P_CHANGED = "changed"  # whether the last create/update stopped and started the instance

WAIT_DELAY_S = 5
WAIT_ATTEMPTS = 120  # ten minutes for each of stop and start


def make_client(region: str, endpoint_url: str | None) -> Any:
    config = BotoConfig(retries={"total_max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session(region_name=region).client("ec2", endpoint_url=endpoint_url, config=config)


def ensure_instance_type(client: Any, instance_id: str, instance_type: str, *, delay: float = WAIT_DELAY_S) -> bool:
    """Give ``instance_id`` the type ``instance_type``; True when it had to be stopped and started for it."""
    found = client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    if found["InstanceType"] == instance_type:
        return False
    waiting = {"Delay": delay, "MaxAttempts": WAIT_ATTEMPTS}
    # A graceful stop: systemd stops MariaDB, which leaves the cluster cleanly; it rejoins by IST at boot.
    client.stop_instances(InstanceIds=[instance_id])
    client.get_waiter("instance_stopped").wait(InstanceIds=[instance_id], WaiterConfig=waiting)
    client.modify_instance_attribute(InstanceId=instance_id, InstanceType={"Value": instance_type})
    client.start_instances(InstanceIds=[instance_id])
    client.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=waiting)
    return True


class InstanceTypeProvider(pulumi.dynamic.ResourceProvider):
    """Stops, retypes and starts one instance when its type differs (see the module docstring)."""

    # Class-level default, replaced only by tests: the pickle in state carries no settings.
    client_factory: Callable[[str, str | None], Any] = staticmethod(make_client)
    wait_delay: float = WAIT_DELAY_S

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        client = self.client_factory(str(props[P_REGION]), props.get(P_ENDPOINT))
        changed = ensure_instance_type(
            client, str(props[P_INSTANCE_ID]), str(props[P_INSTANCE_TYPE]), delay=self.wait_delay
        )
        return {**props, P_CHANGED: changed}

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(id_=str(props[P_INSTANCE_ID]), outs=self._apply(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        keys = (P_INSTANCE_ID, P_INSTANCE_TYPE, P_REGION, P_ENDPOINT)
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(outs=self._apply(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class InstanceTypeResource(pulumi.dynamic.Resource, module=RESOURCE_MODULE, name=RESOURCE_NAME):
    """The instance type of one EC2 node, applied when the plan reaches this resource."""

    def __init__(
        self,
        name: str,
        *,
        instance_id: pulumi.Input[str],
        instance_type: str,
        region: str,
        endpoint_url: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            InstanceTypeProvider(),
            name,
            {
                P_INSTANCE_ID: instance_id,
                P_INSTANCE_TYPE: instance_type,
                P_REGION: region,
                P_ENDPOINT: endpoint_url,
                P_CHANGED: None,
            },
            opts,
        )
