"""Escrow of the cluster data key's blob: on by default in SSM, and a copy on every node's data volume.

The SSM write itself (SecureString, never overwriting a different blob) is
tested against moto in ``test_data_key_provider.py``; here: that a stack gets
it without asking, and that the node-side copy lands beside the datadir, not
in it, by a step that runs whenever the blob changes.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from mocks import Types, full_config, run_program

from components.cluster_data_key import default_escrow_parameter_name
from components.config import parse_config
from components.node_files import BLOB_PATH, DATADIR, UNWRAP_CONF_PATH
from components.plan.order import (
    DATA_VOLUME,
    ESCROW_BLOB,
    ESCROW_DIR,
    ESCROW_UNWRAP_CONF,
    cluster_plan,
    escrow_command,
    node_plan,
)
from components.plan.steps import Phase, Stdin, Trigger


def test_escrow_in_ssm_is_on_when_config_does_not_mention_it() -> None:
    cfg = parse_config(full_config(escrowDataKeyInSsm=...), stack="dev", region="eu-west-1")
    assert cfg.key.escrow_in_ssm is True
    off = parse_config(full_config(escrowDataKeyInSsm=False), stack="dev", region="eu-west-1")
    assert off.key.escrow_in_ssm is False  # control: the switch still works


def test_the_program_escrows_the_blob_in_a_per_stack_parameter_by_default() -> None:
    config = full_config(escrowDataKeyInSsm=...)
    rec = run_program(config, preview=False)
    data_key = rec.one(Types.DATA_KEY)
    assert data_key.input("escrow_in_ssm") is True
    assert data_key.input("escrow_parameter_name") == default_escrow_parameter_name("dev")
    # Control: turned off in config, no parameter is named.
    rec_off = run_program(full_config(escrowDataKeyInSsm=False), preview=False)
    assert rec_off.one(Types.DATA_KEY).input("escrow_in_ssm") is False
    assert rec_off.one(Types.DATA_KEY).input("escrow_parameter_name") is None


def test_the_escrow_copy_lives_on_the_data_volume_beside_the_datadir_never_inside_it() -> None:
    # SST's joiner deletes files it does not know inside the datadir; the datadir is the
    # volume's data/ subdirectory, bound at DATADIR.
    for path in (ESCROW_DIR, ESCROW_BLOB, ESCROW_UNWRAP_CONF):
        assert path.startswith(DATA_VOLUME + "/")
        assert not path.startswith(DATADIR + "/") and not path.startswith(f"{DATA_VOLUME}/data/")
    assert Path(ESCROW_BLOB).name == Path(BLOB_PATH).name
    assert Path(ESCROW_UNWRAP_CONF).name == Path(UNWRAP_CONF_PATH).name


@pytest.mark.parametrize("kind", ["ec2", "onprem"])
def test_every_node_runs_the_escrow_step_after_its_config_and_again_when_the_blob_changes(kind: str) -> None:
    cfg = parse_config(full_config(), stack="dev", region="eu-west-1")
    node = next(n for n in cfg.nodes if n.kind == kind)
    step = node_plan(node, cfg).step("escrow")
    assert step.after == ("config",)
    assert step.phase is Phase.CONFIGURE
    assert step.stdin is Stdin.NONE
    # The key digest covers what the copy holds (blob, key ARN, region, mode): a re-wrapped blob is escrowed
    # again, a tunable change is not (tests/unit/test_plan_triggers.py holds both sides).
    assert Trigger.KEY in step.triggers and Trigger.IDENTITY in step.triggers
    assert Trigger.CONFIG not in step.triggers
    assert step.create == escrow_command() and step.create.startswith("sudo -n ")
    plan = cluster_plan(cfg)
    assert f"{node.name}/config" in plan.waits_for(f"{node.name}/escrow")


def test_the_program_creates_one_escrow_command_per_node_after_its_config() -> None:
    rec = run_program(full_config(), preview=False)
    commands = {r.name: r for r in rec.of_type(Types.REMOTE_COMMAND)}
    cfg = parse_config(full_config(), stack="dev", region="eu-west-1")
    for node in cfg.nodes:
        [escrow] = [c for name, c in commands.items() if name.endswith(f"{node.name}-ssh-escrow")]
        assert escrow.input("create") == escrow_command()
        assert escrow.input("triggers"), "a changed blob must run it again"


def _local_script(root: Path) -> str:
    """The escrow step's script with every absolute path moved under ``root`` (no sudo, no /srv)."""
    argv = shlex.split(escrow_command())
    assert argv[:4] == ["sudo", "-n", "/bin/bash", "-c"]
    # One pass, longest first: ESCROW_DIR contains DATA_VOLUME.
    paths = sorted((ESCROW_DIR, DATA_VOLUME, BLOB_PATH, UNWRAP_CONF_PATH), key=len, reverse=True)
    return re.sub("|".join(map(re.escape, paths)), lambda m: f"{root}{m.group(0)}", argv[4])


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", "-c", script, "mariadb-kms-escrow"], capture_output=True, text=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the script sets root ownership, as it does on a node")
def test_the_escrow_script_copies_root_only_and_is_idempotent(tmp_path: Path) -> None:
    blob, conf = tmp_path / BLOB_PATH.lstrip("/"), tmp_path / UNWRAP_CONF_PATH.lstrip("/")
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\x01\x02ciphertext-one")
    conf.write_text("[unwrap]\nkey_arn = arn:aws:kms:eu-west-1:123456789012:key/k\n")
    script = _local_script(tmp_path)

    first = _run(script)
    assert first.returncode == 0, first.stderr
    copy_dir = tmp_path / ESCROW_DIR.lstrip("/")
    copied_blob, copied_conf = copy_dir / Path(BLOB_PATH).name, copy_dir / Path(UNWRAP_CONF_PATH).name
    assert copied_blob.read_bytes() == blob.read_bytes() and copied_conf.read_text() == conf.read_text()
    assert stat.S_IMODE(copy_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (copied_blob, copied_conf)} == {0o600}
    assert first.stdout.count("escrowed ") == 2
    # Not a mount point here, as on a node whose volume is missing: it says so.
    assert "not a mount point" in first.stderr

    again = _run(script)
    assert again.returncode == 0 and again.stdout.count("unchanged ") == 2

    blob.write_bytes(b"\x01\x02ciphertext-two")  # a re-wrapped blob
    third = _run(script)
    assert copied_blob.read_bytes() == b"\x01\x02ciphertext-two"
    assert f"escrowed {tmp_path}{ESCROW_BLOB}" in third.stdout and "unchanged" in third.stdout
    assert not list(copy_dir.glob("*.mariadb-kms-new")), "no half-written file is left behind"


def test_control_a_missing_blob_fails_the_step(tmp_path: Path) -> None:
    result = _run(_local_script(tmp_path))
    assert result.returncode != 0
