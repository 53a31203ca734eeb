"""The user-data's YAML is the same text whichever PyYAML emitter renders it.

The program uses libyaml's emitter where PyYAML has it (it is many times faster); the pure-Python one is
the reference. A user-data that changed with the emitter would show as a change on every EC2 node.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from components import cloud_config


class _PureDumper(yaml.SafeDumper):
    pass


_PureDumper.add_representer(str, cloud_config._represent_str)


def _reference(config: dict[str, Any]) -> str:
    body = yaml.dump(config, Dumper=_PureDumper, sort_keys=False, default_flow_style=False, width=4096)
    return cloud_config.HEADER + body


CASES: list[dict[str, Any]] = [
    {"write_files": [{"path": "/etc/x", "content": "a\nb\n"}], "runcmd": [["sh", "-c", "echo hi\nexit 0\n"]]},
    {"runcmd": ["ends with a block\nno final newline"]},
    {"write_files": [{"path": "/etc/y", "content": "trailing spaces   \n\tand a tab\n", "permissions": "0600"}]},
    {"bootcmd": ["", "  leading", "unicode: é ✓", "yes", "0600", "a: b", "- dash"], "packages": ["mariadb-server"]},
    {"write_files": [{"path": "/z", "content": "\n\nblank lines first\n\n"}]},
    {"write_files": [{"path": "/k", "content": "kept blank line\n\n"}], "runcmd": [["a", "--last-is-plain"]]},
    {"write_files": [{"path": "/n", "content": "\n"}]},
]


def test_libyaml_is_in_use_here() -> None:
    # Otherwise the comparison below compares the pure emitter with itself.
    assert yaml.__with_libyaml__
    assert issubclass(cloud_config._Dumper, yaml.CSafeDumper)


@pytest.mark.parametrize("config", CASES)
def test_the_text_is_the_pure_emitters(config: dict[str, Any]) -> None:
    text = cloud_config.cloud_config_text(config)
    assert text == _reference(config)
    assert yaml.safe_load(text) == config


def test_control_the_raw_libyaml_text_differs_where_the_document_end_is_dropped() -> None:
    config = CASES[5]  # a "|+" scalar before a plain one: libyaml writes "..." here, the pure emitter does not
    raw = yaml.dump(config, Dumper=cloud_config._Dumper, sort_keys=False, default_flow_style=False, width=4096)
    assert raw.endswith("\n...\n") and cloud_config.HEADER + raw != _reference(config)
