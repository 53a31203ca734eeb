"""The minimal stack the README shows is a configuration the program accepts, as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "mariadb-kms"


def readme_stack(text: str) -> dict[str, object]:
    block = re.search(r"```yaml\n(config:.*?)```", text, re.S)
    assert block, "README.md has no ```yaml stack block"
    stack = yaml.safe_load(block.group(1))["config"]
    assert isinstance(stack, dict)
    return stack


def parse(stack: dict[str, object]) -> object:
    raw = {k.split(":", 1)[1]: json.loads(json.dumps(v)) for k, v in stack.items() if k.startswith(PROJECT + ":")}
    raw["sshPrivateKey"] = "set with pulumi config set --secret"  # the README sets it by command, not in the file
    return parse_config(raw, stack="prod", region=str(stack["aws:region"]))


def test_the_minimal_stack_is_valid() -> None:
    cfg = parse(readme_stack((ROOT / "README.md").read_text()))
    assert len(cfg.nodes) == 3  # type: ignore[attr-defined]


def test_control_a_broken_value_in_it_is_refused() -> None:
    stack = readme_stack((ROOT / "README.md").read_text())
    stack[f"{PROJECT}:sshAuthorizedKey"] = "ssh-ed25519 AAAA... mariadb-kms-deploy"
    with pytest.raises(ConfigError, match="sshAuthorizedKey"):
        parse(stack)
