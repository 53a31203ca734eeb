"""Run the Pulumi program under ``pulumi.runtime`` mocks and record what it asks for.

One harness for the unit tests (``tests/unit/mocks.py`` gives it test values)
and the rehearsal (``rehearsal/emulator.py`` gives it the emulator's values):
``record(mocks, config, ...)`` runs ``__main__.py`` (or any program function)
and returns a ``Recording``: every registered resource with its inputs, its
resource options and what the mock answered, every invoke, the stack outputs.

Three things a real run shows and plain mocks hide are brought out
(DESIGN.md section 4):

- resource options: mock args carry none, so a stack transformation records
  ``protect``, ``retain_on_delete``, ``depends_on``, ``parent`` and the rest;
- unknowns: in preview mode computed outputs come back unknown, as in a real
  preview, so anything the program builds inside an ``apply`` goes missing
  from the preview recording (or fails) instead of passing unnoticed;
- secretness: the engine, not the SDK, marks ``additionalSecretOutputs``
  secret, so the mock monitor does it here.

Each run happens in a fresh ``contextvars.Context`` (the SDK keeps its
settings, root stack and config in context variables) with its own event loop,
so two runs in one process share nothing.

What a resource's computed outputs are is the mocks' business
(``RecordingMocks.computed``); this module only records.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import os
import runpy
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.output import Unknown
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func

REPO = Path(__file__).resolve().parent.parent
MAIN = REPO / "__main__.py"
PROJECT = "mariadb-kms"

UNKNOWN = pulumi.output.UNKNOWN
"""What an unknown input looks like in a Recording (preview mode)."""


class Types:
    """Type tokens, so nobody spells them by hand."""

    ENCRYPTION_KEY = "mariadb-kms:index:EncryptionKey"
    NODE_IDENTITY = "mariadb-kms:index:NodeIdentity"
    ONPREM_IDENTITY = "mariadb-kms:index:OnPremIdentity"
    CLUSTER_DATA_KEY = "mariadb-kms:index:ClusterDataKey"
    KMS_KEY = "aws:kms/key:Key"
    KMS_ALIAS = "aws:kms/alias:Alias"
    IAM_ROLE = "aws:iam/role:Role"
    IAM_ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
    IAM_INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
    IAM_USER = "aws:iam/user:User"
    IAM_ACCESS_KEY = "aws:iam/accessKey:AccessKey"
    SSM_PARAMETER = "aws:ssm/parameter:Parameter"
    # A dynamic resource's token is pulumi-python:dynamic[/<module>]:<name>.
    DYNAMIC_PREFIX = "pulumi-python:dynamic"
    DATA_KEY = "pulumi-python:dynamic/mariadb-kms:ClusterDataKey"
    # The SSH path.
    MARIADB_CLUSTER = "mariadb-kms:index:MariaDbCluster"
    ONPREM_NODE = "mariadb-kms:index:OnPremNode"
    NODE_SSH_PATH = "mariadb-kms:index:NodeSshPath"
    VERIFICATION = "mariadb-kms:index:Verification"
    REMOTE_COMMAND = "command:remote:Command"
    REMOTE_COPY = "command:remote:CopyToRemote"
    # EC2 nodes.
    EC2_NODE = "mariadb-kms:index:Ec2Node"
    NODE_SECURITY_GROUP = "mariadb-kms:index:NodeSecurityGroup"
    KMS_VPC_ENDPOINT = "mariadb-kms:index:KmsVpcEndpoint"
    EC2_INSTANCE = "aws:ec2/instance:Instance"
    EC2_NETWORK_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
    EBS_VOLUME = "aws:ebs/volume:Volume"
    EC2_VOLUME_ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
    EC2_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
    SG_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    SG_EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
    EC2_VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
    # pulumi-tls.
    TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
    TLS_SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
    TLS_CERT_REQUEST = "tls:index/certRequest:CertRequest"
    TLS_LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"


class Invokes:
    CALLER_IDENTITY = "aws:index/getCallerIdentity:getCallerIdentity"
    PARTITION = "aws:index/getPartition:getPartition"
    SESSION_CONTEXT = "aws:iam/getSessionContext:getSessionContext"


# --------------------------------------------------------------------------
# What a run records
# --------------------------------------------------------------------------


@dataclass
class RecordedOptions:
    """Resource options as the program gave them (seen by the stack transformation)."""

    protect: bool | None
    retain_on_delete: bool | None
    delete_before_replace: bool | None
    additional_secret_outputs: tuple[str, ...]
    ignore_changes: tuple[str, ...]
    replace_on_changes: tuple[str, ...]
    depends_on: tuple[str, ...]  # URNs
    parent: str | None  # URN; None = the stack


@dataclass
class RegisteredResource:
    type: str
    name: str
    urn: str
    id: str  # "" in preview, as a real preview leaves a new resource's id unknown
    custom: bool
    inputs: dict[str, Any]  # wire (camelCase) names; secrets stay rpc-wrapped; unknowns are UNKNOWN
    state: dict[str, Any]  # what the mock returned, after engine-style secret marking
    parent_urn: str  # as registered (the engine's view, incl. the stack)
    dependencies: tuple[str, ...]  # URNs the registration waited on, explicit and through inputs
    secret_outputs: tuple[str, ...]  # additionalSecretOutputs as sent to the engine
    options: RecordedOptions | None = None
    # Input name -> URNs its value came from, as the engine records them (what relates resources, not ARNs).
    property_dependencies: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def input(self, key: str) -> Any:
        """An input's value with any secret wrapper taken off."""
        return rpc.unwrap_rpc_secret(self.inputs.get(key))

    def input_is_secret(self, key: str) -> bool:
        return rpc.is_rpc_secret(self.inputs.get(key))


@dataclass
class Invoke:
    token: str
    args: dict[str, Any]


@dataclass
class StackOutput:
    value: Any
    secret: bool
    known: bool


@dataclass
class Recording:
    preview: bool
    resources: list[RegisteredResource] = field(default_factory=list)
    invokes: list[Invoke] = field(default_factory=list)
    outputs: dict[str, StackOutput] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exception: BaseException | None = None
    # What the event loop reported on its own, e.g. a failed resolver nobody awaited
    # after the program had already failed; kept here instead of printed at exit.
    loop_errors: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> RegisteredResource:
        found = self.of_type(type_)
        if len(found) != 1:
            raise AssertionError(f"expected one {type_}, got {[r.name for r in found]}")
        return found[0]

    def by_urn(self, urn: str) -> RegisteredResource:
        for r in self.resources:
            if r.urn == urn:
                return r
        raise KeyError(urn)

    def children_of(self, parent: RegisteredResource) -> list[RegisteredResource]:
        return [r for r in self.resources if r.parent_urn == parent.urn]

    def identities(self) -> set[tuple[str, str]]:
        return {(r.type, r.name) for r in self.resources}


# --------------------------------------------------------------------------
# The mocks: registration is recorded here, values come from ``computed``
# --------------------------------------------------------------------------


@dataclass
class Computed:
    """A resource's id and computed outputs, as its provider would answer."""

    id: str
    outputs: dict[str, Any]
    known_in_preview: frozenset[str] = frozenset()  # e.g. autonames, assigned by the provider's check


class RecordingMocks(pulumi_mocks.Mocks):
    """Records every registration and invoke; subclasses say what a resource computes and invokes return."""

    def __init__(self, *, preview: bool) -> None:
        self.preview = preview
        self.lock = threading.Lock()
        self.registrations: list[RegisteredResource] = []
        self.invokes: list[Invoke] = []

    def computed(self, typ: str, name: str, inputs: dict[str, Any]) -> Computed:
        """The provider's answer for a custom resource (inputs with unknowns as ``UNKNOWN``)."""
        raise NotImplementedError

    def invoke(self, token: str, args: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"the mocks do not model invoke {token}")

    def call(self, args: pulumi_mocks.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        with self.lock:
            self.invokes.append(Invoke(args.token, dict(args.args)))
        return self.invoke(args.token, dict(args.args))

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        request = _CURRENT_REQUEST.request
        inputs = _normalise_unknowns(args.inputs)
        if not args.custom:
            computed = Computed(id="", outputs={})
        else:
            computed = self.computed(args.typ, args.name, inputs)
        state = {**inputs}
        for key, value in computed.outputs.items():
            state[key] = rpc.UNKNOWN if self.preview and key not in computed.known_in_preview else value
        secret_outputs = tuple(request.additional_secret_outputs) if request is not None else ()
        for key in secret_outputs:
            if key in state:
                state[key] = rpc.wrap_rpc_secret(state[key])
        resource_id = "" if self.preview else computed.id
        record = RegisteredResource(
            type=args.typ,
            name=args.name,
            urn=request.urn if request is not None else "",
            id=resource_id,
            custom=bool(args.custom),
            inputs=inputs,
            state=state,
            parent_urn=request.parent if request is not None else "",
            dependencies=tuple(request.dependencies) if request is not None else (),
            secret_outputs=tuple(dict.fromkeys(secret_outputs)),
            property_dependencies=dict(request.property_dependencies) if request is not None else {},
        )
        with self.lock:
            self.registrations.append(record)
        return resource_id, _to_wire(state)


class _RequestLocal(threading.local):
    request: _Request | None = None


# The monitor calls new_resource on the same (executor) thread as RegisterResource,
# so a thread-local hands the raw request to new_resource without races.
_CURRENT_REQUEST = _RequestLocal()


class _Request:
    def __init__(self, urn: str, proto: Any) -> None:
        self.urn = urn
        self.parent: str = proto.parent
        self.dependencies = list(proto.dependencies)
        self.additional_secret_outputs = list(proto.additionalSecretOutputs)
        self.property_dependencies = {k: tuple(v.urns) for k, v in proto.propertyDependencies.items()}


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, plus the raw request for the recording and loops that get closed.

    The SDK's monitor makes an event loop in every executor thread that calls
    it and never closes them; they would be garbage-collected in some later
    run. Here they are made up front, remembered and closed with the run.
    """

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.thread_loops: list[asyncio.AbstractEventLoop] = []
        self._loops_lock = threading.Lock()

    def _ensure_thread_loop(self) -> None:
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            with self._loops_lock:
                self.thread_loops.append(loop)

    def close_thread_loops(self) -> None:
        with self._loops_lock:
            loops, self.thread_loops = self.thread_loops, []
        for loop in loops:
            loop.close()

    def RegisterResource(self, request: Any) -> Any:
        self._ensure_thread_loop()
        _CURRENT_REQUEST.request = _Request(self.make_urn(request.parent, request.type, request.name), request)
        try:
            return super().RegisterResource(request)
        finally:
            _CURRENT_REQUEST.request = None

    def ReadResource(self, request: Any) -> Any:
        self._ensure_thread_loop()
        return super().ReadResource(request)

    def Invoke(self, request: Any) -> Any:
        self._ensure_thread_loop()
        return super().Invoke(request)


def _normalise_unknowns(value: Any) -> Any:
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {k: _normalise_unknowns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_unknowns(v) for v in value]
    return value


def _to_wire(value: Any) -> Any:
    if isinstance(value, Unknown):
        return rpc.UNKNOWN
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Options, through a stack transformation
# --------------------------------------------------------------------------


@dataclass
class _PendingOptions:
    opts: pulumi.ResourceOptions
    depends_on: list[pulumi.Resource]
    parent: pulumi.Resource | None


class OptionsRecorder:
    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], _PendingOptions] = {}
        self.duplicates: list[tuple[str, str]] = []

    def __call__(self, args: pulumi.ResourceTransformationArgs) -> None:
        opts = args.opts
        deps = opts.depends_on
        if deps is None:
            dep_list: list[pulumi.Resource] = []
        elif isinstance(deps, pulumi.Resource):
            dep_list = [deps]
        elif isinstance(deps, list):
            dep_list = [d for d in deps if isinstance(d, pulumi.Resource)]
            if len(dep_list) != len(deps):
                raise TypeError(f"{args.name}: depends_on holds non-resources; the harness records resources only")
        else:
            raise TypeError(f"{args.name}: depends_on is an Output; the harness records resources only")
        key = (args.type_, args.name)
        if key in self.pending:
            self.duplicates.append(key)
        self.pending[key] = _PendingOptions(opts=opts, depends_on=dep_list, parent=opts.parent)

    async def resolve(self, key: tuple[str, str]) -> RecordedOptions | None:
        p = self.pending.get(key)
        if p is None:
            return None
        deps = tuple([await d.urn.future() or "" for d in p.depends_on])
        parent = await p.parent.urn.future() if p.parent is not None else None
        o = p.opts
        return RecordedOptions(
            protect=o.protect,
            retain_on_delete=o.retain_on_delete,
            delete_before_replace=o.delete_before_replace,
            additional_secret_outputs=tuple(o.additional_secret_outputs or ()),
            ignore_changes=tuple(o.ignore_changes or ()),
            replace_on_changes=tuple(o.replace_on_changes or ()),
            depends_on=deps,
            parent=parent,
        )


# --------------------------------------------------------------------------
# Running the program
# --------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self, recording: Recording) -> None:
        super().__init__(level=logging.WARNING)
        self.recording = recording

    def emit(self, record: logging.LogRecord) -> None:
        target = self.recording.errors if record.levelno >= logging.ERROR else self.recording.warnings
        target.append(record.getMessage())


def config_for_pulumi(
    config: Mapping[str, Any], region: str | None, secret_keys: Sequence[str] = ()
) -> tuple[dict[str, str], list[str]]:
    """The program's config as the CLI hands it over: namespaced keys, values as strings (JSON for the rest)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        flat[f"{PROJECT}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    if region is not None:
        flat["aws:region"] = region
    secrets = [f"{PROJECT}:{k}" for k in secret_keys if k in config]
    return flat, secrets


def record(
    mocks: RecordingMocks,
    config: Mapping[str, str],
    secret_keys: Sequence[str],
    *,
    stack: str,
    program: Callable[[], None] | None = None,
) -> Recording:
    """Run ``__main__.py`` (or ``program``) once under ``mocks`` with ``config`` (flat, as from
    ``config_for_pulumi``) and return what it did. A program exception is kept in
    ``Recording.exception``, never raised here.
    """
    # Config must come from this call only, never from the environment.
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("PULUMI_CONFIG")}
    for k in saved_env:
        del os.environ[k]
    # The program tunes the garbage collector for its one evaluation; the recording process keeps its own.
    saved_gc = gc.get_threshold()
    try:
        return contextvars.Context().run(_run_isolated, mocks, dict(config), list(secret_keys), stack, program)
    finally:
        os.environ.update(saved_env)
        gc.set_threshold(*saved_gc)


def _run_isolated(
    mocks: RecordingMocks,
    config: dict[str, str],
    secret_keys: list[str],
    stack: str,
    program_fn: Callable[[], None] | None,
) -> Recording:
    recording = Recording(preview=mocks.preview)
    recorder = OptionsRecorder()
    logger = logging.Logger(f"pulumi-mock-engine-{uuid.uuid4()}")
    # The SDK logs a few debug lines per resource; below WARNING the handler drops them anyway, so the
    # logger does too, before making a record of each.
    logger.setLevel(logging.WARNING)
    logger.addHandler(_ListHandler(recording))
    logger.propagate = False

    monitor = RecordingMonitor(mocks)
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(
        lambda _loop, context: recording.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
    )
    asyncio.set_event_loop(loop)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        pulumi_settings.ROOT.set(None)
        # The SDK's default task set is shared process-wide; give this run its own.
        pulumi_settings.SETTINGS.outputs = set()
        pulumi.runtime.set_all_config(config, secret_keys)
        pulumi_mocks.set_mocks(
            mocks, project=PROJECT, stack=stack, preview=mocks.preview, logger=logger, monitor=monitor
        )
        pulumi.runtime.register_stack_transformation(recorder)

        def program() -> None:
            if program_fn is not None:
                program_fn()
            else:
                runpy.run_path(str(MAIN), run_name="__main__")

        try:
            loop.run_until_complete(run_pulumi_func(program))
        except BaseException as exc:
            recording.exception = exc

        if recorder.duplicates:
            raise AssertionError(f"resources registered twice under one type and name: {recorder.duplicates}")
        for reg in mocks.registrations:
            reg.options = loop.run_until_complete(recorder.resolve((reg.type, reg.name)))
        recording.resources = sorted(mocks.registrations, key=lambda r: r.urn)
        recording.invokes = list(mocks.invokes)
        if recording.exception is None:
            recording.outputs = loop.run_until_complete(_stack_outputs())
    finally:
        _close(loop)
        monitor.close_thread_loops()
    return recording


async def _stack_outputs() -> dict[str, StackOutput]:
    root = pulumi_settings.get_root_resource()
    exported: dict[str, Any] = getattr(root, "outputs", {})
    result: dict[str, StackOutput] = {}
    for name, value in exported.items():
        out = pulumi.Output.from_input(value)
        resolved = await out.future(with_unknowns=True)
        result[name] = StackOutput(
            value=_normalise_unknowns(resolved), secret=await out.is_secret(), known=await out.is_known()
        )
    return result


def _close(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
