"""Typed, validated stack configuration.

- ``schema``: every key once, with its type, default, range, choices, fields and description
  (Pulumi.yaml and docs/configuration.md are generated from it);
- ``checks``: the value checks keys and fields share (SSH host, port, user and host key among them);
- ``model``: the typed result the program is built from;
- ``parse``: ``parse_config``, pure, reporting every error at once.
"""

from components.config.checks import HOST_KEY_TYPES, REFUSED_HOST_KEY_TYPES, yaml_text
from components.config.model import (
    ClusterConfig,
    ConfigError,
    Ec2NodeConfig,
    JumpHost,
    JumpHostConfig,
    KeyConfig,
    MariaDbSettings,
    NetworkConfig,
    NodeConfig,
    OnPremNodeConfig,
    TlsConfig,
)
from components.config.parse import parse_config
from components.config.schema import (
    ENCRYPT_TABLES_VALUES,
    KEY_MANAGEMENT_MODES,
    PROJECT,
    SCHEMA,
    SCHEMA_BY_NAME,
    Bounds,
    ConfigKey,
    Field,
)

__all__ = [
    "ENCRYPT_TABLES_VALUES",
    "HOST_KEY_TYPES",
    "KEY_MANAGEMENT_MODES",
    "PROJECT",
    "REFUSED_HOST_KEY_TYPES",
    "SCHEMA",
    "SCHEMA_BY_NAME",
    "Bounds",
    "ClusterConfig",
    "ConfigError",
    "ConfigKey",
    "Ec2NodeConfig",
    "Field",
    "JumpHost",
    "JumpHostConfig",
    "KeyConfig",
    "MariaDbSettings",
    "NetworkConfig",
    "NodeConfig",
    "OnPremNodeConfig",
    "TlsConfig",
    "parse_config",
    "yaml_text",
]
