"""Reading the SSH path out of a mocks Recording: the remote commands, their order, their payloads.

Used by the unit tests of the cluster, and meant for the rehearsal's replay
(issue 5) too: ``replay_order`` is the order a replayer runs the recorded
commands in, ``decode_put`` what a put step's stdin installs.
"""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Iterable
from typing import Any

from mocks import Recording, RegisteredResource, Types
from pulumi.runtime import rpc


def remote_commands(rec: Recording) -> list[RegisteredResource]:
    return rec.of_type(Types.REMOTE_COMMAND)


def command(rec: Recording, name: str) -> RegisteredResource:
    found = [r for r in remote_commands(rec) if r.name == name]
    assert len(found) == 1, f"expected one remote command {name!r}, got {[r.name for r in remote_commands(rec)]}"
    return found[0]


def explicit_deps(res: RegisteredResource) -> tuple[str, ...]:
    assert res.options is not None, f"{res.name}: options were not recorded"
    return res.options.depends_on


def closure(rec: Recording) -> dict[str, set[str]]:
    """URN -> every URN it waits for, directly or through others (explicit depends_on only)."""
    direct = {r.urn: set(explicit_deps(r)) for r in rec.resources if r.options is not None}
    done: dict[str, set[str]] = {}

    def visit(urn: str, stack: tuple[str, ...]) -> set[str]:
        if urn in done:
            return done[urn]
        assert urn not in stack, f"dependency cycle through {urn}"
        result: set[str] = set()
        for dep in direct.get(urn, ()):
            result.add(dep)
            result |= visit(dep, (*stack, urn))
        done[urn] = result
        return result

    for urn in direct:
        visit(urn, ())
    return done


def runs_after(rec: Recording, later: str, earlier: str, deps: dict[str, set[str]] | None = None) -> bool:
    """Whether remote command ``later`` waits (transitively) for ``earlier`` (names)."""
    deps = closure(rec) if deps is None else deps
    return command(rec, earlier).urn in deps[command(rec, later).urn]


def replay_order(rec: Recording) -> list[RegisteredResource]:
    """The remote commands in an order that keeps every recorded depends_on (stable: by name among equals)."""
    commands = {r.urn: r for r in remote_commands(rec)}
    deps = closure(rec)
    order: list[RegisteredResource] = []
    placed: set[str] = set()
    while len(order) < len(commands):
        ready = sorted(
            (r for urn, r in commands.items() if urn not in placed and deps[urn] & commands.keys() <= placed),
            key=lambda r: r.name,
        )
        assert ready, "no command is ready: a cycle"
        order.append(ready[0])
        placed.add(ready[0].urn)
    return order


def connection(res: RegisteredResource) -> dict[str, Any]:
    value = rpc.unwrap_rpc_secret(res.inputs.get("connection"))
    assert isinstance(value, dict), f"{res.name}: connection is {value!r}"
    return value


def stdin_text(res: RegisteredResource) -> str | None:
    value = rpc.unwrap_rpc_secret(res.inputs.get("stdin"))
    return value if isinstance(value, str) else None


def decode_put(stdin: str) -> dict[str, tuple[bytes, int, str]]:
    """A put step's stdin as {dest: (content, mode, "user:group")}."""
    out: dict[str, tuple[bytes, int, str]] = {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(stdin)), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert member.isfile(), member.name
            data = tar.extractfile(member)
            assert data is not None
            out["/" + member.name] = (data.read(), member.mode, f"{member.uname}:{member.gname}")
    return out


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
