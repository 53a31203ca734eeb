"""Read the stack's Pulumi config into a validated ClusterConfig.

The only module that touches ``pulumi.Config``: it turns the raw strings Pulumi
stores into JSON-ish values and hands them to the pure ``parse_config``, which
reports every error at once. Secret keys are read here as secret Outputs and
never enter ``parse_config`` (its errors quote values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi

from components.config import PROJECT, SCHEMA, ClusterConfig, ConfigError, parse_config


@dataclass(frozen=True)
class StackSecrets:
    ssh_private_key: pulumi.Output[str] | None


def _raw_value(cfg: pulumi.Config, name: str, type_: str | None) -> Any:
    text = cfg.get(name)
    if text is None:
        return None
    if type_ == "string":
        return text
    # Integers, booleans, arrays and objects arrive as their JSON text; a value
    # that is not JSON is passed on as the string, so parse_config names it.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _keys_set_in_namespace() -> set[str]:
    """Every ``mariadb-kms:*`` key the stack sets, so a misspelt key is an error, not ignored."""
    from pulumi.runtime import config as runtime_config

    names = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = PROJECT + ":"
    return {n[len(prefix) :] for n in names if n.startswith(prefix)}


def _secrets_in_plain_text() -> list[str]:
    """Secret keys set without ``--secret``.

    Pulumi.yaml cannot mark them ``secret: true``: the CLI would then require them
    on every stack, since a secret key cannot carry a default. So the program
    states the rule the CLI would have applied.
    """
    from pulumi.runtime import config as runtime_config

    errors = []
    for key in SCHEMA:
        full = f"{PROJECT}:{key.name}"
        if key.secret and runtime_config.get_config(full) is not None and not runtime_config.is_config_secret(full):
            errors.append(
                f"{full} is set in plain text: expected a secret (pulumi config set --secret {full} ...); "
                "the stack file now holds it readable, so replace the key as well"
            )
    return errors


def load_stack_config() -> tuple[ClusterConfig, StackSecrets]:
    cfg = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    known = {k.name for k in SCHEMA}
    for unknown in _keys_set_in_namespace() - known:
        raw[unknown] = None
    for key in SCHEMA:
        if key.secret:
            continue
        value = _raw_value(cfg, key.name, key.type)
        if value is not None:
            raw[key.name] = value
    region = pulumi.Config("aws").get("region")
    errors = _secrets_in_plain_text()
    try:
        parsed = parse_config(raw, stack=pulumi.get_stack(), region=region)
    except ConfigError as err:
        errors += err.errors
    if errors:
        for line in errors:
            pulumi.log.error(line)
        raise ConfigError(errors)
    for warning in parsed.warnings:
        pulumi.log.warn(warning)
    secret = cfg.get_secret("sshPrivateKey")
    return parsed, StackSecrets(ssh_private_key=secret)
