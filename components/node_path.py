"""One node's SSH path as pulumi-command resources: the same code for EC2 and on-prem nodes.

``remote_steps`` decides what runs; this module only wires: a connection with
a pinned host key, one ``remote.Command`` per step, stdin and triggers
resolved from Outputs, and the options pulumi-command needs to behave:

- ``add_previous_output_in_env=False``: a previous run's output never reaches
  the next run's environment (Debian's sshd drops it anyway, and it may echo
  what a secret-touching step printed);
- secrets only on ``stdin``, never in ``create`` or ``environment`` (no step
  sets an environment at all);
- ``additional_secret_outputs=["stdout", "stderr"]`` on every step that
  touches a secret: pulumi-command keeps output in state and copies it into
  error messages whatever ``logging`` says;
- ``delete_before_replace=True`` on every step with triggers (a trigger change
  always replaces; see ``remote_steps``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pulumi
import pulumi_command as command

from components.remote_steps import NodePlan, Phase, Stdin, Step, Trigger

COMPONENT_TYPE = "mariadb-kms:index:NodeSshPath"
SECRET_OUTPUTS = ["stdout", "stderr"]
# A new EC2 instance takes a minute or two before sshd answers; a dial error every 10 s for 5 minutes.
DIAL_ERROR_LIMIT = 30
PER_DIAL_TIMEOUT_S = 10

# Every input of remote.Command, from the SDK itself, so an input added by a
# later SDK is covered too (ignore_changes has no wildcard).
COMMAND_INPUTS: tuple[str, ...] = tuple(
    p for p in inspect.signature(command.remote.CommandArgs.__init__).parameters if not p.startswith("__")
)


@dataclass(frozen=True)
class JumpHost:
    """A bastion the program reaches nodes through (pulumi-command's ``proxy``); its host key is pinned too."""

    host: str
    user: str
    host_key: str
    port: int = 22


def ssh_connection(
    *,
    host: pulumi.Input[str],
    user: pulumi.Input[str],
    host_key: pulumi.Input[str],
    port: int = 22,
    private_key: pulumi.Input[str] | None,
    jump_host: JumpHost | None = None,
) -> command.remote.ConnectionArgs:
    """SSH to a node as ``user`` with the host key pinned (without it pulumi-command skips the check).

    Without ``private_key`` pulumi-command falls back to the SSH agent.
    """
    proxy = None
    if jump_host is not None:
        proxy = command.remote.ProxyConnectionArgs(
            host=jump_host.host,
            port=jump_host.port,
            user=jump_host.user,
            host_key=jump_host.host_key,
            private_key=private_key,
            dial_error_limit=DIAL_ERROR_LIMIT,
            per_dial_timeout=PER_DIAL_TIMEOUT_S,
        )
    return command.remote.ConnectionArgs(
        host=host,
        port=port,
        user=user,
        host_key=_stripped(host_key),
        private_key=private_key,
        proxy=proxy,
        dial_error_limit=DIAL_ERROR_LIMIT,
        per_dial_timeout=PER_DIAL_TIMEOUT_S,
    )


def _stripped(value: pulumi.Input[str]) -> pulumi.Input[str]:
    # A key line read from a file ends in a newline; the pinned key is the line itself.
    if isinstance(value, str):
        return value.strip()
    return pulumi.Output.from_input(cast(pulumi.Input[str], value)).apply(str.strip)


def remote_command(
    name: str,
    step: Step,
    *,
    connection: command.remote.ConnectionArgs,
    stdin: pulumi.Input[str] | None,
    triggers: Sequence[pulumi.Input[Any]],
    depends_on: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
    ignore_changes: Sequence[str] | None = None,
) -> command.remote.Command:
    """One step as a ``remote.Command``, with the options every step of the path shares."""
    if step.replaced_on_change and not triggers:
        raise ValueError(f"{name}: step {step.key} has triggers but no values were given")
    if step.stdin is Stdin.NONE and stdin is not None:
        raise ValueError(f"{name}: step {step.key} takes no stdin")
    return command.remote.Command(
        name,
        connection=connection,
        create=step.create,
        stdin=stdin,
        triggers=list(triggers) if triggers else None,
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on),
            delete_before_replace=True if triggers else None,
            additional_secret_outputs=list(SECRET_OUTPUTS) if step.touches_secret else None,
            ignore_changes=list(ignore_changes) if ignore_changes else None,
        ),
    )


@dataclass(frozen=True)
class NodePathInputs:
    """The values a node's steps read, as Outputs: payloads on stdin and the values triggers compare."""

    identity: pulumi.Input[str]  # EC2 instance id / on-prem host key
    node_files: str  # put payload of node/
    node_files_digest: str
    config_files: pulumi.Input[str]  # put payload
    config_digest: pulumi.Input[str]  # everything a restart applies (config and node files)
    seed_files: pulumi.Input[str] | None = None  # on-prem
    credentials: pulumi.Input[str] | None = None  # on-prem; a secret Output
    credentials_version: pulumi.Input[str] | None = None  # the access key id
    tls_files: pulumi.Input[str] | None = None  # put payload with the node's private key; a secret Output
    tls_digest: pulumi.Input[str] | None = None  # of the CA and node certificates only


class NodeSshPath(pulumi.ComponentResource):
    """The remote commands of one node, created phase by phase by the cluster.

    The install phase is created with the component (it runs in parallel on
    every node); ``configure`` and ``roll`` are created by the cluster in
    rolling order, each given the resources it must wait for on other nodes,
    then ``finish`` registers the outputs.
    """

    commands: dict[str, command.remote.Command]

    def __init__(
        self,
        name: str,
        *,
        plan: NodePlan,
        connection: command.remote.ConnectionArgs,
        inputs: NodePathInputs,
        machine: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``machine``: what must exist before the first SSH connection (an EC2 instance)."""
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self._name = name
        self.plan = plan
        self.connection = connection
        self.inputs = inputs
        self.commands = {}
        for step in plan.phase(Phase.INSTALL):
            self._create(step, machine if not step.after else ())

    def configure(self, *, after: Sequence[pulumi.Resource]) -> command.remote.Command:
        """Config and pre-flight, after ``after`` (the previous node's roll). Returns the pre-flight."""
        return self._create_phase(Phase.CONFIGURE, after)

    def roll(self, *, after: Sequence[pulumi.Resource] = ()) -> command.remote.Command:
        """The restart (or join), after the pre-flight and ``after`` (the bootstrap, on its node)."""
        return self._create_phase(Phase.ROLL, after)

    def finish(self) -> None:
        self.register_outputs({"steps": list(self.commands)})

    @property
    def install(self) -> command.remote.Command:
        return self.commands["install"]

    def _create_phase(self, phase: Phase, after: Sequence[pulumi.Resource]) -> command.remote.Command:
        last = None
        for step in self.plan.phase(phase):
            last = self._create(step, after)
        if last is None:
            raise ValueError(f"{self._name}: the plan has no {phase.value} step")
        return last

    def _create(self, step: Step, external: Sequence[pulumi.Resource]) -> command.remote.Command:
        cmd = remote_command(
            f"{self._name}-{step.key}",
            step,
            connection=self.connection,
            stdin=self._stdin(step.stdin),
            triggers=[self._trigger(t) for t in step.triggers],
            depends_on=[*(self.commands[k] for k in step.after), *external],
            parent=self,
        )
        self.commands[step.key] = cmd
        return cmd

    def _stdin(self, which: Stdin) -> pulumi.Input[str] | None:
        values: Mapping[Stdin, pulumi.Input[str] | None] = {
            Stdin.NONE: None,
            Stdin.NODE_FILES: self.inputs.node_files,
            Stdin.SEED_FILES: self.inputs.seed_files,
            Stdin.CREDENTIALS: self.inputs.credentials,
            Stdin.CONFIG_FILES: self.inputs.config_files,
            Stdin.TLS_FILES: self.inputs.tls_files,
        }
        value = values[which]
        if which is not Stdin.NONE and value is None:
            raise ValueError(f"{self._name}: no {which.value} payload for this node")
        return value

    def _trigger(self, which: Trigger) -> pulumi.Input[Any]:
        values: Mapping[Trigger, pulumi.Input[Any] | None] = {
            Trigger.IDENTITY: self.inputs.identity,
            Trigger.NODE_FILES: self.inputs.node_files_digest,
            Trigger.CONFIG: self.inputs.config_digest,
            Trigger.CREDENTIALS: self.inputs.credentials_version,
            Trigger.TLS: self.inputs.tls_digest,
        }
        value = values.get(which)
        if value is None:
            raise ValueError(f"{self._name}: no value for trigger {which.value}")
        return value
