"""Pulumi.yaml, docs/configuration.md and every stack file in the repository agree with the config schema.

Mocks never read Pulumi.yaml, so nothing else would notice a key declared in
one place and not the other, or two different defaults.
"""

from __future__ import annotations

import json
import re
import string
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import PROJECT, SCHEMA, SCHEMA_BY_NAME, Bounds, ConfigKey, parse_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import gen_config_docs  # noqa: E402

EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.yaml"))


def project_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]


def stack_values(path: Path) -> tuple[dict[str, Any], str]:
    stack = yaml.safe_load(path.read_text())["config"]
    raw = {k.split(":", 1)[1]: v for k, v in stack.items() if k.startswith(PROJECT + ":")}
    # Pulumi hands non-string values to the program as JSON text; the loader parses them back.
    return {k: json.loads(json.dumps(v)) for k, v in raw.items()}, stack["aws:region"]


def test_generated_files_are_current() -> None:
    assert (ROOT / "Pulumi.yaml").read_text() == gen_config_docs.pulumi_yaml(), "run python tools/gen_config_docs.py"
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert reference == gen_config_docs.configuration_md(), "run python tools/gen_config_docs.py"


def test_declared_keys_are_the_schema_keys_meant_for_pulumi_yaml() -> None:
    assert set(project_config()) == {k.name for k in SCHEMA if k.declared}
    assert [k.name for k in SCHEMA if not k.declared] == ["sshPrivateKey"]


def test_types_match_the_schema() -> None:
    for name, spec in project_config().items():
        key = SCHEMA_BY_NAME[name]
        if key.type is None:
            assert "type" not in spec, f"{name}: object keys stay untyped in Pulumi.yaml"
        else:
            assert spec["type"] == key.type, name
            if key.type == "array":
                assert spec["items"] == {"type": "string"}, name


def test_every_key_is_documented_with_the_same_text() -> None:
    for name, spec in project_config().items():
        assert spec.get("description") == SCHEMA_BY_NAME[name].description, name
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for key in SCHEMA:
        assert f"| `{key.name}` |" in reference, key.name


def test_defaults_are_identical() -> None:
    for name, spec in project_config().items():
        key = SCHEMA_BY_NAME[name]
        if key.required or key.secret:
            assert "default" not in spec, f"{name} must have no default in Pulumi.yaml"
        else:
            assert spec["default"] == key.default, name
            assert type(spec["default"]) is type(key.default), name
        assert bool(spec.get("secret", False)) == key.secret, name


def restated(key: ConfigKey) -> list[str]:
    """What a key's description states by hand that the schema already declares (a second copy)."""
    slots = {name for _, name, _, _ in string.Formatter().parse(key.text) if name}
    found = []
    for slot, declared in (
        ("range", key.bounds is not None),
        ("choices", bool(key.choices)),
        ("fields", bool(key.fields)),
    ):
        if declared and slot not in slots:
            found.append(f"{slot} written out instead of {{{slot}}}")
    if key.bounds is not None:
        found += re.findall(rf"\b(?:{key.bounds.low}|{key.bounds.high})\b", key.text)
    found += [c for c in key.choices if re.search(rf"(?<![`\w-]){re.escape(c)}(?![`\w-])", key.text)]
    return found


def test_descriptions_state_ranges_choices_and_fields_only_through_the_schema() -> None:
    assert {k.name: restated(k) for k in SCHEMA if restated(k)} == {}


def test_control_a_range_or_choice_typed_by_hand_is_found() -> None:
    assert restated(ConfigKey("days", "integer", "Rotation in days (90..2560).", default=365, bounds=Bounds(90, 2560)))
    assert restated(ConfigKey("mode", "string", "One of: ON, OFF.", default="ON", choices=("ON", "OFF")))
    assert not restated(
        ConfigKey("days", "integer", "Rotation in days ({range}).", default=365, bounds=Bounds(90, 2560))
    )


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for key in SCHEMA:
        assert re.search(rf"`{re.escape(key.name)}`", readme), f"README.md does not document {key.name}"


def test_example_stack_is_valid() -> None:
    raw, region = stack_values(ROOT / "Pulumi.dev.yaml")
    cfg = parse_config(raw, stack="dev", region=region)
    assert len(cfg.nodes) == 3
    assert cfg.warnings == ()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_docs_example_stacks_are_valid(path: Path) -> None:
    raw, region = stack_values(path)
    cfg = parse_config(raw, stack=path.stem, region=region)
    assert cfg.nodes
    assert cfg.warnings == ()


def test_the_examples_cover_each_deployment_shape() -> None:
    shapes: dict[str, Any] = {}
    for path in EXAMPLES:
        raw, region = stack_values(path)
        cfg = parse_config(raw, stack=path.stem, region=region)
        shapes[path.stem] = cfg
    assert not shapes["ec2-only"].onprem_nodes and shapes["ec2-only"].ec2_nodes
    assert not shapes["onprem-only"].ec2_nodes and shapes["onprem-only"].onprem_nodes
    assert shapes["jump-host"].jump_host is not None
    assert shapes["vpc-endpoint"].network.create_kms_vpc_endpoint
    listed = (ROOT / "docs" / "configuration.md").read_text()
    for path in EXAMPLES:
        assert f"(examples/{path.name})" in listed, path.name
