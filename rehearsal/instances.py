"""EC2 instances on the testbed: what the engine launches, and a replacement carried out on a host.

A replaced ``aws:ec2/instance:Instance`` is, on AWS, a new instance: a new root
disk, a new instance id, first booted by cloud-init from the user-data and AMI
the engine sends. The program's instance is ``delete_before_replace`` and so is
its volume attachment, which depends on the instance id and is replaced with it:
the engine detaches the data volume (``stop_instance_before_detaching``: the old
instance is stopped first, so MariaDB shuts down cleanly and leaves its Galera
position in ``grastate.dat``), terminates the old instance, launches the new one
and attaches the same volume to it. The network interface is a resource of its
own and is not replaced, so the node keeps its private address.

On the testbed the host keeps its name, network namespace and address (the
interface), and its data volume stand-in (``rehearsal/volumes.py``, bound at
``/srv/mariadb-kms``); its root disk, the host's overlay upper directory, is
thrown away and made again, and the host boots with a new cloud-init seed: a
new instance id, the engine's user-data and, as the AMI stand-in, the AMI id in
the seed's meta-data (cloud-init keeps it in its instance data; there is one
Debian 12 root filesystem, so an AMI changes nothing else). The volume is
bound at boot, before cloud-init runs, where EBS would attach it a little later
(``mariadb-kms-data-volume`` waits for it either way).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
from collections.abc import Mapping
from typing import Any

from rehearsal import TestbedError, say
from rehearsal.engine_rules import camel, top_level
from rehearsal.recorder import Recording, RegisteredResource
from rehearsal.testbed import Testbed

AMI_META_KEY = "ami-id"  # the AMI stand-in in the seed's meta-data (cloud-init: ds.meta_data)
INSTANCE_DATA = "/run/cloud-init/instance-data.json"


def engine_inputs(old: RegisteredResource | None, new: RegisteredResource) -> dict[str, Any]:
    """The inputs the engine creates a resource with: the program's, except that an ``ignore_changes`` input
    keeps the value the state holds (a create of a resource the state does not hold takes the program's).

    The engine substitutes the old inputs for ignored ones before it diffs and before it creates a
    replacement (https://www.pulumi.com/docs/iac/concepts/resources/options/ignorechanges/: "Pulumi ignores a
    property by using the old value from the state"; pulumi/pulumi#2657: "the engine simply replaces the
    values of input properties in the goal state with old inputs").
    """
    inputs = dict(new.inputs)
    if old is None or new.options is None:
        return inputs
    for path in new.options.ignore_changes:
        key = camel(top_level(path))
        if key in old.inputs:
            inputs[key] = old.inputs[key]
    return inputs


def engine_state(base: Recording, head: Recording) -> Recording:
    """What the stack's state holds after an up: the program's registrations with the engine's inputs.

    A resource the state held keeps the state's value of each ignored input (``engine_inputs``), in its
    inputs and its outputs alike: the next up diffs against those, so a node's own ``amiId`` that differs
    from the AMI it was launched with is a change even if the cluster's ``amiId`` already named it.
    """
    old = {r.urn: r for r in base.resources}
    out: list[RegisteredResource] = []
    for r in head.resources:
        before = old.get(r.urn)
        if before is None or r.options is None or not r.options.ignore_changes:
            out.append(r)
            continue
        state = dict(r.state)
        for key in {camel(top_level(p)) for p in r.options.ignore_changes} & set(before.inputs):
            if key in state:
                state[key] = before.state.get(key, before.inputs[key])
        out.append(dataclasses.replace(r, inputs=engine_inputs(before, r), state=state))
    return dataclasses.replace(head, resources=out)


def meta_data(machine: str, hostname: str, ami: str) -> str:
    """A NoCloud meta-data with a new instance id (a new instance) and the AMI it was launched from."""
    return (f"instance-id: iid-{machine}-{secrets.token_hex(4)}\nlocal-hostname: {hostname}\n"
            f"{AMI_META_KEY}: {ami}\n")


def instance_data(tb: Testbed, node: str) -> dict[str, Any]:
    """cloud-init's instance data on a host (its world-readable part: no user-data in it)."""
    return dict(json.loads(tb.read_file(node, INSTANCE_DATA)))


def launched_ami(tb: Testbed, node: str) -> str:
    """The AMI stand-in a host was launched with (empty for a host ``make demo`` seeded without one)."""
    return str(instance_data(tb, node).get("ds", {}).get("meta_data", {}).get(AMI_META_KEY, ""))


def instance_id(tb: Testbed, node: str) -> str:
    return str(instance_data(tb, node).get("v1", {}).get("instance_id", ""))


def replace_host(tb: Testbed, node: str, *, user_data: str, ami: str, base_files: Mapping[str, str],
                 boot_timeout: float = 300) -> None:
    """Stop ``node``'s host, throw its root disk away, and boot a new instance on the same address and volume.

    ``user_data`` is the cloud-config the host gets (the overlay applied), ``base_files`` what the testbed
    writes into every host before its first boot (``/etc/hosts``, the package source).
    """
    from rehearsal.demo import grant_net_admin

    host = tb.hosts[node]
    if node not in tb.volumes:
        raise TestbedError(f"{node}: no data volume is attached to this host; there is nothing to re-attach")
    # The attachment's delete: the instance stops (a clean shutdown), then the volume is detached.
    tb.stop(node, timeout=120)
    # Termination: the root disk goes (delete_on_termination). The volume is a mount on this machine.
    shutil.rmtree(host.upper)
    host.upper.mkdir(parents=True)
    for path, text in base_files.items():
        tb._write_upper(host, path, text.encode(), 0o644)
    tb.seed(node, user_data=user_data, meta_data=meta_data(host.machine, node, ami))
    grant_net_admin(tb.settings, [node])
    try:
        tb.boot([node], timeout=boot_timeout)
    except TestbedError as err:
        # As for a new host (rehearsal/up.py, boot_new_hosts): a starved boot succeeds on a second power-on.
        say(f"up: the new {node} did not boot ({str(err).splitlines()[0]}); powering it off and on once more")
        tb.stop(node, timeout=120)
        tb.boot([node], timeout=boot_timeout)
