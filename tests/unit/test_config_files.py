"""Pulumi.yaml and the example stack agree with components/config.py.

Mocks never read Pulumi.yaml, so nothing else would notice a key declared in
one place and not the other, or two different defaults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from components.config import PROJECT, SCHEMA, SCHEMA_BY_NAME, parse_config

ROOT = Path(__file__).resolve().parents[2]
PULUMI_TYPES = {"string", "integer", "boolean", "array"}


def project_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]


def test_every_schema_key_is_declared_and_nothing_else() -> None:
    declared = project_config()
    assert set(declared) == set(SCHEMA_BY_NAME)


def test_types_are_ones_pulumi_accepts_and_match() -> None:
    for name, spec in project_config().items():
        key = SCHEMA_BY_NAME[name]
        if key.type is None:
            assert "type" not in spec, f"{name}: object keys must stay untyped in Pulumi.yaml"
        else:
            assert spec.get("type") in PULUMI_TYPES, name
            assert spec["type"] == key.type, name
            if key.type == "array":
                assert spec["items"] == {"type": "string"}, name


def test_every_key_is_documented_with_the_same_text() -> None:
    for name, spec in project_config().items():
        assert spec.get("description") == SCHEMA_BY_NAME[name].description, name


def test_defaults_are_identical() -> None:
    for name, spec in project_config().items():
        key = SCHEMA_BY_NAME[name]
        if key.required or key.secret or key.type is None:
            assert "default" not in spec, f"{name} must have no default in Pulumi.yaml"
        else:
            assert "default" in spec, name
            assert spec["default"] == key.default, name
            assert type(spec["default"]) is type(key.default), name
        assert bool(spec.get("secret", False)) == key.secret, name


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for key in SCHEMA:
        assert re.search(rf"`{re.escape(key.name)}`", readme), f"README.md does not document {key.name}"


def test_example_stack_is_valid() -> None:
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v for k, v in stack.items() if k.startswith(PROJECT + ":")}
    # Pulumi hands non-string values to the program as JSON text; the loader parses them back.
    raw = {k: json.loads(json.dumps(v)) for k, v in raw.items()}
    cfg = parse_config(raw, stack="dev", region=stack["aws:region"])
    assert len(cfg.nodes) == 3
    assert cfg.warnings == ()
