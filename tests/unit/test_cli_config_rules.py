"""The Pulumi CLI's own config rules, applied to Pulumi.yaml and every stack file in the repository.

The CLI checks Pulumi.yaml and merges it with the stack's config before the
program starts; mocks never do, so a project the CLI refuses would pass every
other test. The rules below are ported from pulumi/pulumi at tag v3.259.0
(commit 0ac56e876614aedf12771d73ef7e80959b8a6fd4):

- sdk/go/common/workspace/project.go: ``ValidateProject`` (the project.json
  schema: a config entry is a primitive or array shorthand, or a declaration
  with only type/items/description/secret/default/value), ``RewriteShorthandConfigValues``,
  ``Project.Validate`` and ``ValidateConfigValue``;
- pkg/workspace/config.go: ``mergeConfig`` (behind
  ``ValidateStackConfigAndApplyProjectConfig``) and ``validateStackConfigValue``.
  A project-namespace key with neither default nor value that the stack does
  not set is "missing"; defaults are applied as plain values *before* the
  secret check, so a ``secret: true`` key with a default fails "must be
  encrypted" on every stack that does not set it.
- sdk/go/common/resource/config/object.go: a stack value is unmarshalled as YAML
  (yaml.v3, YAML 1.2 core schema) and a scalar is kept as its JSON text, so
  ``5`` is checked as the string "5" and ``yes`` as the string "yes".

The ``object`` config type exists only since v3.188.0 (pulumi/pulumi#20132,
commit 44ab3d0e02d25385b1423d059de7b290aa284819); every older CLI rejects it,
so this project keeps to the types every CLI accepts.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STACK_FILES = sorted(ROOT.glob("Pulumi.*.yaml")) + sorted((ROOT / "docs" / "examples").glob("*.yaml"))
PORTABLE_TYPES = ("string", "integer", "boolean", "array")
DECLARATION_FIELDS = {"type", "items", "description", "secret", "default", "value"}


class _CoreSchemaLoader(yaml.SafeLoader):
    """YAML 1.2 core schema booleans, as yaml.v3 reads them: ``yes``/``on`` stay strings."""


_CoreSchemaLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CoreSchemaLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_CoreSchemaLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class StackValue:
    """A config value as the CLI holds it: a string, the JSON text of an object, or a ciphertext."""

    text: str
    secure: bool = False
    object: bool = False

    @classmethod
    def from_yaml(cls, value: Any) -> StackValue:
        if isinstance(value, dict) and set(value) == {"secure"}:
            return cls(str(value["secure"]), secure=True)
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, bool | int | float):
            return cls(json.dumps(value))
        return cls(json.dumps(value), object=True)

    @classmethod
    def from_default(cls, value: Any) -> StackValue:
        # createConfigValue: a primitive becomes fmt.Sprintf("%v", v), anything else its JSON text.
        if isinstance(value, bool):
            return cls("true" if value else "false")
        if isinstance(value, str | int | float):
            return cls(str(value))
        return cls(json.dumps(value), object=True)


def _namespaced_by_project(project: str, key: str) -> bool:
    return ":" not in key or key.startswith(project + ":")


def _full_key(project: str, key: str) -> str:
    return key if ":" in key else f"{project}:{key}"


def validate_config_value(type_name: str, items: dict[str, Any] | None, value: Any) -> bool:
    """ValidateConfigValue."""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return True
        if isinstance(value, float):
            return value == int(value)
        return isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value) is not None
    if type_name == "boolean":
        return value in ("true", "false") or isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, dict)
    if not isinstance(value, list) or items is None:
        return False
    return all(validate_config_value(items["type"], items.get("items"), item) for item in value)


def project_errors(project: dict[str, Any]) -> list[str]:
    """ValidateProject's schema for config entries, then Project.Validate."""
    errors: list[str] = []
    name = project.get("name")
    if not isinstance(name, str) or not name:
        return ["project is missing a non-empty string 'name' attribute"]
    for key, entry in (project.get("config") or {}).items():
        if isinstance(entry, str | int | bool | list):
            continue  # shorthand: a default (project namespace) or a value
        if not isinstance(entry, dict):
            errors.append(f"config '{key}': expected a primitive, an array or a declaration")
            continue
        for extra in sorted(set(entry) - DECLARATION_FIELDS):
            errors.append(f"config '{key}': additional property '{extra}' not allowed")
        type_name = entry.get("type")
        if type_name is not None and type_name not in PORTABLE_TYPES:
            errors.append(f"config '{key}': type '{type_name}' is not one of {', '.join(PORTABLE_TYPES)}")
        if "default" in entry and "value" in entry:
            errors.append(f"project config '{key}' cannot have both a 'default' and 'value' attribute")
        if _namespaced_by_project(name, key):
            if type_name == "array" and "items" not in entry:
                errors.append(
                    f"The configuration key '{key}' declares an array but does not specify the underlying type "
                    "via the 'items' attribute"
                )
            elif type_name is not None and entry.get("default") is not None:
                if not validate_config_value(type_name, entry.get("items"), entry["default"]):
                    errors.append(
                        f"The default value specified for configuration key '{key}' is not of the expected type"
                    )
        else:
            if type_name is not None:
                errors.append(
                    f"Configuration key '{key}' is not namespaced by the project and should not define a type"
                )
            if entry.get("default") is not None:
                errors.append(
                    f"Configuration key '{key}' is not namespaced by the project and should not define a default value"
                )
            if entry.get("value") is None:
                errors.append(f"Configuration key '{key}' is namespaced and must provide an attribute 'value'")
    return errors


def _declarations(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """RewriteShorthandConfigValues: a shorthand entry is a default (project namespace) or a value."""
    out = {}
    for key, entry in (project.get("config") or {}).items():
        if isinstance(entry, dict):
            out[key] = entry
        elif _namespaced_by_project(project["name"], key):
            out[key] = {"default": entry}
        else:
            out[key] = {"value": entry}
    return out


def _format_missing_keys(keys: list[str]) -> str:
    """formatMissingKeys: 'a', 'b' and 'c'."""
    if len(keys) == 1:
        return f"'{keys[0]}'"
    quoted = [f"'{k}'" for k in sorted(keys)]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def merge_errors(project: dict[str, Any], stack: str, stack_config: dict[str, StackValue]) -> list[str]:
    """mergeConfig then validateStackConfigValues; the first error ends the run, as in the CLI."""
    name = project["name"]
    merged = dict(stack_config)
    declarations = _declarations(project)
    missing = []
    for key in sorted(declarations):
        decl = declarations[key]
        full = _full_key(name, key)
        has_default, has_value = decl.get("default") is not None, decl.get("value") is not None
        if full not in merged and not has_value and not has_default and full.split(":", 1)[0] == name:
            missing.append(key)
        elif full not in merged and (has_value or has_default):
            merged[full] = StackValue.from_default(decl["default"] if has_default else decl["value"])
    if missing:
        listed = _format_missing_keys(missing)
        return [f"Stack '{stack}' is missing configuration value{'s' if len(missing) > 1 else ''} {listed}"]
    for key in sorted(declarations):
        decl = declarations[key]
        if decl.get("type") is None:
            continue
        value = merged.get(_full_key(name, key), StackValue(""))
        if decl.get("secret") and not value.secure:
            return [f"Stack '{stack}' with configuration key '{key}' must be encrypted as it's secret"]
        content: Any = json.loads(value.text) if value.object else value.text
        if not value.secure and not validate_config_value(decl["type"], decl.get("items"), content):
            return [f"Stack '{stack}' with configuration key '{key}' must be of type '{decl['type']}'"]
    return []


def load_project(text: str | None = None) -> dict[str, Any]:
    project = load_yaml(text if text is not None else (ROOT / "Pulumi.yaml").read_text())
    assert isinstance(project, dict)
    return project


def load_stack(text: str) -> dict[str, StackValue]:
    config = (load_yaml(text) or {}).get("config") or {}
    return {key: StackValue.from_yaml(value) for key, value in config.items()}


def stack_name(path: Path) -> str:
    return path.stem.removeprefix("Pulumi.")


# -- the repository's files ----------------------------------------------------------------------


def test_pulumi_yaml_passes_project_validation() -> None:
    assert project_errors(load_project()) == []


@pytest.mark.parametrize("path", STACK_FILES, ids=[str(p.relative_to(ROOT)) for p in STACK_FILES])
def test_every_stack_file_passes_the_cli_merge(path: Path) -> None:
    assert merge_errors(load_project(), stack_name(path), load_stack(path.read_text())) == []


def test_the_stack_files_include_the_shapes_that_set_fewest_keys() -> None:
    names = {str(p.relative_to(ROOT)) for p in STACK_FILES}
    assert {"Pulumi.dev.yaml", "Pulumi.rehearsal.yaml"} <= names
    assert {"docs/examples/ec2-only.yaml", "docs/examples/onprem-only.yaml"} <= names


# -- controls: each rule finds what it looks for -------------------------------------------------

DEV = (ROOT / "Pulumi.dev.yaml").read_text()
ONPREM_ONLY = (ROOT / "docs" / "examples" / "onprem-only.yaml").read_text()


def previous_pulumi_yaml() -> dict[str, Any]:
    """Pulumi.yaml as it was: object keys without a default, sshPrivateKey declared secret without one."""
    project = copy.deepcopy(load_project())
    for key in ("ec2Nodes", "onPremNodes", "sshJumpHost", "tags"):
        del project["config"][key]["default"]
    project["config"]["sshPrivateKey"] = {"type": "string", "description": "login key", "secret": True}
    return project


def test_control_the_previous_pulumi_yaml_is_refused_for_missing_values() -> None:
    old = previous_pulumi_yaml()
    assert project_errors(old) == []  # it was a valid project; the stacks were what failed
    assert merge_errors(old, "dev", load_stack(DEV)) == [
        "Stack 'dev' is missing configuration values 'sshJumpHost', 'sshPrivateKey' and 'tags'"
    ]
    [onprem] = merge_errors(old, "onprem-only", load_stack(ONPREM_ONLY))
    assert "'ec2Nodes'" in onprem and "'onPremNodes'" not in onprem


def test_control_a_secret_key_with_a_default_must_be_encrypted_unless_set() -> None:
    project = load_project()
    project["config"]["sshPrivateKey"] = {"type": "string", "secret": True, "default": ""}
    assert merge_errors(project, "dev", load_stack(DEV)) == [
        "Stack 'dev' with configuration key 'sshPrivateKey' must be encrypted as it's secret"
    ]
    plain = load_stack(DEV) | {"mariadb-kms:sshPrivateKey": StackValue("-----BEGIN OPENSSH PRIVATE KEY-----")}
    assert merge_errors(project, "dev", plain) != []
    encrypted = load_stack(DEV) | {"mariadb-kms:sshPrivateKey": StackValue("v1:abc", secure=True)}
    assert merge_errors(project, "dev", encrypted) == []


def test_control_a_required_key_left_out_is_missing() -> None:
    stack = {k: v for k, v in load_stack(DEV).items() if k != "mariadb-kms:keyAdmins"}
    assert merge_errors(load_project(), "dev", stack) == ["Stack 'dev' is missing configuration value 'keyAdmins'"]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"type": "object", "default": {}}, "not one of string, integer, boolean, array"),
        ({"type": "array", "default": []}, "'items' attribute"),
        ({"type": "integer", "default": "soon"}, "not of the expected type"),
        ({"type": "string", "default": "", "value": "x"}, "both a 'default' and 'value'"),
        ({"type": "string", "required": True}, "'required' not allowed"),
    ],
)
def test_control_project_validation_refuses_bad_declarations(entry: dict[str, Any], fragment: str) -> None:
    project = load_project()
    project["config"]["extraKey"] = entry
    errors = project_errors(project)
    assert any(fragment in e for e in errors), errors


def test_control_a_foreign_namespace_key_needs_a_value_and_no_type() -> None:
    project = load_project()
    project["config"]["aws:region"] = {"type": "string", "default": "eu-west-1"}
    errors = project_errors(project)
    assert any("should not define a type" in e for e in errors)
    assert any("should not define a default value" in e for e in errors)
    project["config"]["aws:region"] = {"value": "eu-west-1"}
    assert project_errors(project) == []


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("mariadb-kms:keyRotationPeriodDays: 180", True),
        ('mariadb-kms:keyRotationPeriodDays: "180"', True),
        ("mariadb-kms:keyRotationPeriodDays: 1.5", False),
        ("mariadb-kms:keyRotationPeriodDays: yearly", False),
        ("mariadb-kms:tlsSst: false", True),
        ("mariadb-kms:tlsSst: yes", False),  # a string under YAML 1.2, and not "true"/"false"
        ("mariadb-kms:adminCidrs: [10.0.0.0/8]", True),
        ("mariadb-kms:adminCidrs: [8]", False),
        ("mariadb-kms:adminCidrs: 10.0.0.0/8", False),
    ],
)
def test_control_stack_values_are_checked_against_declared_types(line: str, ok: bool) -> None:
    key, _, value = line.partition(": ")
    stack = load_stack(DEV) | {key: StackValue.from_yaml(load_yaml(f"v: {value}")["v"])}
    assert (merge_errors(load_project(), "dev", stack) == []) is ok


# -- the secret rule Pulumi.yaml no longer states, the program does ---------------------------------


def test_the_program_refuses_a_secret_key_set_in_plain_text() -> None:
    from mocks import FULL_CONFIG, PLANTED_SECRETS, REGION, STACK, RecordingMocks, config_for_pulumi

    from rehearsal.recorder import record

    flat, secret_keys = config_for_pulumi(FULL_CONFIG, REGION)
    assert secret_keys == ["mariadb-kms:sshPrivateKey"]

    def run(secrets: list[str]) -> Any:
        mocks = RecordingMocks(preview=True, stack=STACK, region=REGION, caller_session="ci-run-1")
        return record(mocks, flat, secrets, stack=STACK)

    assert run(secret_keys).exception is None  # control: set with --secret, accepted
    plain = run([])
    assert plain.exception is not None and plain.resources == []
    assert [e for e in plain.errors if "mariadb-kms:sshPrivateKey is set in plain text" in e], plain.errors
    assert not any(s in e for e in plain.errors for s in PLANTED_SECRETS)


def test_without_sshprivatekey_every_connection_falls_back_to_the_ssh_agent() -> None:
    """pulumi-command v1.2.1 (provider/pkg/provider/remote/connection.go, SSHConfig) adds the agent at
    SSH_AUTH_SOCK to the auth methods whether or not a private key is given; without one it is the only method."""
    from mocks import FULL_CONFIG, run_program

    from rehearsal.aws_values import plain as unwrap_rpc

    config = {k: v for k, v in FULL_CONFIG.items() if k != "sshPrivateKey"}
    rec = run_program(config, preview=False)
    commands = rec.of_type("command:remote:Command")
    assert commands
    for command in commands:
        connection = unwrap_rpc(command.inputs["connection"])
        assert "privateKey" not in connection, command.name
        assert connection["hostKey"], command.name  # still pinned
    # Control: with the key set, the same connections carry it.
    keyed = run_program(FULL_CONFIG, preview=False).of_type("command:remote:Command")
    assert all("privateKey" in unwrap_rpc(c.inputs["connection"]) for c in keyed)
