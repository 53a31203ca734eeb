"""Plan entries as pulumi-command resources: the same code for EC2 and on-prem nodes.

``components/plan`` decides what runs and in which order; this module only
wires: what a node must offer (``Machine``), a connection with a pinned host
key, one ``remote.Command`` per step, stdin and triggers resolved from Outputs
(``StepInputs``), and the options pulumi-command needs to behave:

- ``add_previous_output_in_env=False``: a previous run's output never reaches
  the next run's environment (Debian's sshd drops it anyway, and it may echo
  what a secret-touching step printed);
- secrets only on ``stdin``, never in ``create`` or ``environment`` (no step
  sets an environment at all);
- on every step that touches a secret (reads one on stdin, or unwraps the
  key): ``logging`` ``none``, so nothing it prints is streamed to the engine's
  log, and ``additional_secret_outputs=["stdout", "stderr"]``, because
  pulumi-command keeps output in state and copies it into error messages
  whatever ``logging`` says;
- ``delete_before_replace=True`` on every step with triggers (a trigger change
  always replaces; see ``components/plan/steps.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pulumi
import pulumi_command as command

from components.config import JumpHost
from components.plan.steps import Stdin, Step, Trigger

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


class Machine(Protocol):
    """What the SSH path needs of a node, EC2 or on-prem alike."""

    @property
    def resource(self) -> pulumi.Resource:
        """The component the node's commands are children of."""
        ...

    @property
    def address(self) -> pulumi.Input[str]: ...

    @property
    def ssh_user(self) -> pulumi.Input[str]: ...

    @property
    def ssh_port(self) -> int: ...

    @property
    def host_public_key(self) -> pulumi.Input[str]:
        """The SSH host key every connection pins."""
        ...

    @property
    def identity(self) -> pulumi.Input[str]:
        """Stands for the machine: a new one (a replaced instance, a reinstalled host) runs every step again."""
        ...

    @property
    def prerequisites(self) -> Sequence[pulumi.Resource]:
        """What must exist before the first SSH connection (an EC2 instance and its way to KMS)."""
        ...


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


@dataclass(frozen=True)
class StepInputs:
    """The values a node's steps read, as Outputs: payloads on stdin and the values triggers compare."""

    identity: pulumi.Input[str]  # EC2 instance id / on-prem host key
    node_files: str  # put payload of node/
    node_files_digest: str
    config_files: pulumi.Input[str] | None  # put payload; None on a node being decommissioned
    config_digest: pulumi.Input[str] | None  # everything a restart applies (config and node files)
    members: pulumi.Input[list[str]]  # every member's address
    seed_files: pulumi.Input[str] | None = None
    credentials: pulumi.Input[str] | None = None  # on-prem; a secret Output
    credentials_version: pulumi.Input[str] | None = None  # the access key id
    tls_files: pulumi.Input[str] | None = None  # put payload with the node's private key; a secret Output
    tls_digest: pulumi.Input[str] | None = None  # of the CA and node certificates only
    run_stamp: str | None = None  # differs on every run (verifyOnEveryUp)
    version: str | None = None  # mariadbVersion, when set
    key_digest: pulumi.Input[str] | None = None  # of the key ARN and the blob (ciphertext)
    login_keys: str | None = None  # the login user's public keys (sshAuthorizedKey, sshNextAuthorizedKey)
    member_firewall: pulumi.Input[str] | None = None  # nft ruleset: members and nodes still leaving
    member_firewall_closed: pulumi.Input[str] | None = None  # nft ruleset: members only

    def stdin(self, which: Stdin) -> pulumi.Input[str] | None:
        values: Mapping[Stdin, pulumi.Input[str] | None] = {
            Stdin.NONE: None,
            Stdin.NODE_FILES: self.node_files,
            Stdin.SEED_FILES: self.seed_files,
            Stdin.CREDENTIALS: self.credentials,
            Stdin.CONFIG_FILES: self.config_files,
            Stdin.TLS_FILES: self.tls_files,
            Stdin.LOGIN_KEYS: self.login_keys,
            Stdin.MEMBER_FIREWALL: self.member_firewall,
            Stdin.MEMBER_FIREWALL_CLOSED: self.member_firewall_closed,
        }
        return values[which]

    def trigger(self, which: Trigger) -> pulumi.Input[Any] | None:
        values: Mapping[Trigger, pulumi.Input[Any] | None] = {
            Trigger.IDENTITY: self.identity,
            Trigger.NODE_FILES: self.node_files_digest,
            Trigger.CONFIG: self.config_digest,
            Trigger.CREDENTIALS: self.credentials_version,
            Trigger.MEMBERS: self.members,
            Trigger.TLS: self.tls_digest,
            Trigger.EVERY_UP: self.run_stamp,
            Trigger.VERSION: self.version,
            Trigger.KEY: self.key_digest,
        }
        return values[which]


def remote_command(
    name: str,
    step: Step,
    *,
    connection: command.remote.ConnectionArgs,
    inputs: StepInputs,
    depends_on: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
    create_only: bool = False,
) -> command.remote.Command:
    """One step as a ``remote.Command``, with the options every step shares.

    ``create_only``: every input change is ignored, so the command is never
    updated or replaced and runs exactly once (the bootstrap).
    """
    stdin = inputs.stdin(step.stdin)
    if step.stdin is not Stdin.NONE and stdin is None:
        raise ValueError(f"{name}: no {step.stdin.value} payload for this node")
    triggers: list[pulumi.Input[Any]] = []
    for which in step.triggers:
        value = inputs.trigger(which)
        if value is None:
            raise ValueError(f"{name}: no value for trigger {which.value}")
        triggers.append(value)
    return command.remote.Command(
        name,
        connection=connection,
        create=step.create,
        stdin=stdin,
        triggers=triggers or None,
        add_previous_output_in_env=False,
        logging=command.remote.Logging.NONE if step.touches_secret else None,
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on),
            delete_before_replace=True if triggers else None,
            additional_secret_outputs=list(SECRET_OUTPUTS) if step.touches_secret else None,
            ignore_changes=list(COMMAND_INPUTS) if create_only else None,
        ),
    )


class NodeSshPath(pulumi.ComponentResource):
    """The remote commands of one node's path: the cluster adds them in plan order, then ``finish``."""

    commands: dict[str, command.remote.Command]

    def __init__(
        self,
        name: str,
        *,
        connection: command.remote.ConnectionArgs,
        inputs: StepInputs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self._name = name
        self.connection = connection
        self.inputs = inputs
        self.commands = {}

    def add(self, step: Step, *, depends_on: Sequence[pulumi.Resource]) -> command.remote.Command:
        cmd = remote_command(
            f"{self._name}-{step.key}", step, connection=self.connection, inputs=self.inputs,
            depends_on=depends_on, parent=self,
        )
        self.commands[step.key] = cmd
        return cmd

    def finish(self) -> None:
        self.register_outputs({"steps": list(self.commands)})
