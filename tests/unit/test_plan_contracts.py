"""Contracts between the program and the node tools: each is written on both sides, and held together here.

The node tools run on the node with only Python's standard library and the
files ``node/MANIFEST`` ships, so they cannot import ``components``. Where a
fact lives on both sides, this test reads both and compares, and shows with a
control that the comparison catches a disagreement:

- the encryption flags that must be ON (one list, the verify tool's, which ``components/mycnf.py`` reads;
  what the program renders is checked against it);
- the key-management modes (config, node files, the unwrap tool, the install script);
- the TLS channel names (``components/tls_material.py``, the verify tool);
- the files a restart applies (``mariadb-kms-roll``'s digest, the files the program renders);
- ``wsrep_provider_options`` as the server reports it (the verify tool's and the TLS tool's parsers).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from mocks import full_config
from node_scripts import load_node_script

from components import config as config_module
from components import node_files, tls_material
from components.config import ClusterConfig, parse_config
from components.mycnf import ENCRYPTION_FLAGS_ON, provider_options, render_encryption_cnf
from components.plan.files import config_files, credentials_files

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / "node"
verify = load_node_script("mariadb_kms_verify", NODE / "mariadb_kms_verify.py")
unwrap = load_node_script("mariadb_kms_unwrap", NODE / "mariadb_kms_unwrap.py")
tls_tool = load_node_script("mariadb_kms_tls", NODE / "mariadb_kms_tls.py")
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def cluster(**changes: Any) -> ClusterConfig:
    raw = full_config(**changes)
    raw.pop("sshPrivateKey", None)
    return parse_config(raw, stack="dev", region="eu-west-1")


def disagreement(a: Collection[str], b: Collection[str]) -> set[str]:
    return set(a) ^ set(b)


def test_the_control_finds_a_disagreement() -> None:
    assert disagreement(("a", "b"), ("a", "b")) == set()
    assert disagreement(("a", "b"), ("a",)) == {"b"}


# -- encryption flags --------------------------------------------------------------------


def test_the_verify_tool_checks_every_flag_the_program_turns_on() -> None:
    assert disagreement(verify.ENCRYPTION_FLAGS_ON, ENCRYPTION_FLAGS_ON) == set()
    rendered = dict(
        line.split(" = ", 1) for line in render_encryption_cnf(cluster(), key_arn=KEY_ARN).splitlines() if " = " in line
    )
    assert {flag for flag in ENCRYPTION_FLAGS_ON if rendered.get(flag) == "ON"} == set(ENCRYPTION_FLAGS_ON)
    # Control: a flag the verify tool would not check is found.
    assert disagreement(verify.ENCRYPTION_FLAGS_ON, (*ENCRYPTION_FLAGS_ON, "encrypt_something_new"))


# -- key-management modes ----------------------------------------------------------------


def install_script_modes(text: str) -> tuple[str, ...]:
    match = re.search(r'case "\$MODE" in ([a-z|-]+)\)', text)
    assert match, "mariadb-kms-install no longer checks the mode with a case statement"
    return tuple(match.group(1).split("|"))


def test_every_side_knows_the_same_key_management_modes() -> None:
    modes = config_module.KEY_MANAGEMENT_MODES
    assert disagreement(node_files.KEY_MANAGEMENT_MODES, modes) == set()
    assert disagreement(unwrap.MODES, modes) == set()
    install = (NODE / "mariadb-kms-install").read_text(encoding="utf-8")
    assert disagreement(install_script_modes(install), modes) == set()
    # Control: a mode only the install script accepted would be found.
    assert disagreement(install_script_modes(install.replace("aws-plugin)", "aws-plugin|other)")), modes) == {"other"}


# -- TLS channels ------------------------------------------------------------------------


def test_the_verify_tool_takes_every_channel_the_program_can_turn_off() -> None:
    assert tuple(verify.TLS_CHANNELS) == tuple(tls_material.CHANNELS)
    everything_off = cluster(tlsReplication=False, tlsSst=False, tlsClients=False, requireSecureTransport=False)
    assert disagreement(tls_material.channels_off(everything_off.tls), verify.TLS_CHANNELS) == set()
    # Control.
    assert disagreement(tls_material.channels_off(everything_off.tls), verify.TLS_CHANNELS[:-1])


# -- the files a restart applies ---------------------------------------------------------


def roll_digest_files(text: str) -> set[str]:
    """The fixed files ``mariadb-kms-roll``'s ``config_digest`` hashes, with its variables filled in."""
    found = re.findall(r"^([A-Z_]+)=(\$[A-Z_]+/[^\s]*)$", text, re.M)
    variables = {name: "/" + raw.removeprefix("$R/") if raw.startswith("$R/") else raw for name, raw in found}

    def expand(value: str) -> str:
        for _ in range(len(variables) + 1):
            for name in sorted(variables, key=len, reverse=True):
                value = value.replace(f"${name}", variables[name])
        assert "$" not in value, value
        return value

    body = re.search(r"config_digest\(\) \{\n\s*local files=\(([^)]*)\)", text)
    assert body, "mariadb-kms-roll no longer lists its files in config_digest"
    return {expand(word.strip('"')) for word in body.group(1).split()}


def program_restart_files() -> set[str]:
    """Every file the program renders that a restart applies, in either mode (node/ files aside)."""
    plugin = cluster(keyManagement="aws-plugin", awsPluginSource="/opt/aws_key_management.so",
                     onPremDatadirEncryption="luks")
    files: set[str] = set()
    for cfg in (cluster(), plugin):
        for node in cfg.nodes:
            files |= set(config_files(
                node, cfg, key_arn=KEY_ARN, blob_b64="AQID", node_address="10.0.0.1", member_addresses=["10.0.0.1"],
            ))
        files |= set(credentials_files(cfg, access_key_id="AKIAEXAMPLE", secret_access_key="x"))
    return files - {node_files.CREDENTIALS_PATH}  # read at each unwrap, never a reason to restart


def test_the_roll_tool_restarts_on_every_file_the_program_renders() -> None:
    roll = (NODE / "mariadb-kms-roll").read_text(encoding="utf-8")
    assert disagreement(roll_digest_files(roll), program_restart_files()) == set()
    # The node files count through the installed MANIFEST, as the program's restart digest counts node/.
    assert "node/MANIFEST" in roll
    # Control: a file the roll tool forgot is found.
    assert disagreement(roll_digest_files(roll.replace('"$CONF_DIR/datakey.blob")', ")")), program_restart_files())


# -- wsrep_provider_options --------------------------------------------------------------


def server_reported(pairs: list[tuple[str, str]]) -> str:
    """The variable as Galera reports it: every option, ``key = value; ...``, defaults included, no quotes."""
    defaults = [("base_dir", "/var/lib/mysql/"), ("evs.keepalive_period", "PT1S")]
    return "; ".join(f"{k} = {v}" for k, v in [*defaults, *pairs])


@pytest.mark.parametrize("tls_on", [True, False], ids=["tls", "no-tls"])
def test_both_node_parsers_read_the_options_the_program_renders(tls_on: bool) -> None:
    cfg = cluster() if tls_on else cluster(tlsReplication=False, tlsSst=False, tlsClients=False,
                                           requireSecureTransport=False)
    node = cfg.nodes[0]
    pairs = provider_options(node, cfg, node_address="10.0.0.1")
    text = server_reported(pairs)
    parsed_by_verify = verify.parse_provider_options(text)
    parsed_by_tls = tls_tool.provider_options(text)
    assert parsed_by_verify == parsed_by_tls
    assert {k: parsed_by_verify[k] for k, _ in pairs} == dict(pairs)
    # The one difference between the two: the TLS tool also takes the value as written in the cnf file,
    # in double quotes; the server never reports it that way, so the verify tool need not.
    quoted = f'"{text}"'
    assert tls_tool.provider_options(quoted) == parsed_by_tls
    assert verify.parse_provider_options(quoted) != parsed_by_tls
