"""Reading the SSH path out of a Recording: the remote commands, their order, their payloads.

Generic on purpose: nothing here knows a step by name. A remote command is
replayed with what the program gave it (``create``, ``stdin``,
``connection``), after every command it waits for, as the Pulumi engine
orders them: explicit ``depends_on`` and dependencies through inputs, followed
through any resource in between (a component, an instance).

The unit tests read the explicit order only (``closure(rec)``), because that
is what the program states; the replay also honours input dependencies
(``closure(rec, through_inputs=True)``), as the engine does.
"""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pulumi.runtime import rpc

from rehearsal.recorder import Recording, RegisteredResource, Types

PutFiles = dict[str, tuple[bytes, int, str]]
"""A put step's payload: {absolute dest: (content, mode, "user:group")}."""


def remote_commands(rec: Recording) -> list[RegisteredResource]:
    return rec.of_type(Types.REMOTE_COMMAND)


def explicit_deps(res: RegisteredResource) -> tuple[str, ...]:
    if res.options is None:
        raise ValueError(f"{res.name}: options were not recorded")
    return res.options.depends_on


def closure(rec: Recording, *, through_inputs: bool = False) -> dict[str, set[str]]:
    """URN -> every URN it waits for, directly or through others.

    Explicit ``depends_on`` only, unless ``through_inputs``: then also what the
    engine saw in the registration (dependencies through inputs).
    """
    direct: dict[str, set[str]] = {}
    for r in rec.resources:
        if r.options is None:
            continue
        deps = set(explicit_deps(r))
        if through_inputs:
            deps |= set(r.dependencies)
        direct[r.urn] = deps
    done: dict[str, set[str]] = {}

    def visit(urn: str, stack: tuple[str, ...]) -> set[str]:
        if urn in done:
            return done[urn]
        if urn in stack:
            raise ValueError(f"dependency cycle through {urn}")
        result: set[str] = set()
        for dep in direct.get(urn, ()):
            result.add(dep)
            result |= visit(dep, (*stack, urn))
        done[urn] = result
        return result

    for urn in direct:
        visit(urn, ())
    return done


def command_deps(rec: Recording, *, through_inputs: bool = True) -> dict[str, set[str]]:
    """Remote command URN -> the remote commands it waits for (transitively)."""
    commands = {r.urn for r in remote_commands(rec)}
    deps = closure(rec, through_inputs=through_inputs)
    return {urn: deps.get(urn, set()) & commands for urn in commands}


def replay_order(rec: Recording, *, through_inputs: bool = False) -> list[RegisteredResource]:
    """The remote commands in an order that keeps every recorded dependency (stable: by name among equals)."""
    commands = {r.urn: r for r in remote_commands(rec)}
    deps = command_deps(rec, through_inputs=through_inputs)
    order: list[RegisteredResource] = []
    placed: set[str] = set()
    while len(order) < len(commands):
        ready = sorted(
            (r for urn, r in commands.items() if urn not in placed and deps[urn] <= placed),
            key=lambda r: r.name,
        )
        if not ready:
            raise ValueError("no command is ready: a cycle")
        order.append(ready[0])
        placed.add(ready[0].urn)
    return order


def connection(res: RegisteredResource) -> dict[str, Any]:
    value = rpc.unwrap_rpc_secret(res.inputs.get("connection"))
    if not isinstance(value, dict):
        raise ValueError(f"{res.name}: connection is {value!r}")
    return {k: rpc.unwrap_rpc_secret(v) for k, v in value.items()}


def stdin_text(res: RegisteredResource) -> str | None:
    value = rpc.unwrap_rpc_secret(res.inputs.get("stdin"))
    return value if isinstance(value, str) else None


def decode_put(stdin: str) -> PutFiles:
    """A put step's stdin as {dest: (content, mode, "user:group")}."""
    out: PutFiles = {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(stdin)), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                raise ValueError(f"{member.name}: a put payload holds regular files only")
            data = tar.extractfile(member)
            if data is None:
                raise ValueError(f"{member.name}: no content")
            out["/" + member.name] = (data.read(), member.mode, f"{member.uname}:{member.gname}")
    return out


def is_put_payload(stdin: str) -> bool:
    """Whether a stdin is a put step's tarball (base64 of a gzip stream), without trusting it further."""
    try:
        head = base64.b64decode(stdin[:8], validate=True)
    except ValueError:
        return False
    return head[:2] == b"\x1f\x8b"


def strings_in(value: Any) -> Iterable[str]:
    """Every string in a value, secret wrappers taken off."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings_in(v)


@dataclass(frozen=True)
class RecordedCommand:
    """One remote command as the replay needs it (plain values, secrets unwrapped)."""

    name: str
    urn: str
    create: str
    stdin: str | None
    stdin_secret: bool
    host: str
    port: int
    user: str
    host_key: str | None
    private_key: str | None
    dial_error_limit: int
    per_dial_timeout: float
    environment: dict[str, str]
    after: tuple[str, ...]  # names of the remote commands it waits for
    secret_output: bool  # stdout/stderr are secret outputs: never shown beyond what the program guarantees


def recorded_commands(rec: Recording) -> list[RecordedCommand]:
    """Every remote command in replay order, each with the names of the commands it waits for."""
    deps = command_deps(rec, through_inputs=True)
    names = {r.urn: r.name for r in remote_commands(rec)}
    out: list[RecordedCommand] = []
    for res in replay_order(rec, through_inputs=True):
        conn = connection(res)
        if conn.get("proxy"):
            raise ValueError(f"{res.name}: a jump host (proxy) is not replayed; the rehearsal reaches hosts directly")
        create = res.input("create")
        if not isinstance(create, str) or not create:
            raise ValueError(f"{res.name}: no create command recorded")
        env = res.input("environment") or {}
        secret_outputs = set(res.secret_outputs) | set(res.options.additional_secret_outputs if res.options else ())
        out.append(RecordedCommand(
            name=res.name,
            urn=res.urn,
            create=create,
            stdin=stdin_text(res),
            stdin_secret=res.input_is_secret("stdin"),
            host=str(conn["host"]),
            port=int(conn.get("port") or 22),
            user=str(conn.get("user") or "root"),
            host_key=str(conn["hostKey"]).strip() if conn.get("hostKey") else None,
            private_key=str(conn["privateKey"]) if conn.get("privateKey") else None,
            dial_error_limit=int(conn.get("dialErrorLimit") or 10),
            per_dial_timeout=float(conn.get("perDialTimeout") or 15),
            environment={str(k): str(v) for k, v in dict(env).items()},
            after=tuple(sorted(names[d] for d in deps[res.urn])),
            secret_output=bool({"stdout", "stderr"} & secret_outputs),
        ))
    return out
