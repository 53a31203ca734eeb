"""``mariadb-kms-fscrypt migrate``: the runbook's moves before a node's datadir is made again encrypted.

On a temporary directory standing in for the volume; the kernel parts (whether the filesystem supports
encryption, a directory's policy, unmounting) are replaced by stand-ins. The whole move, by SST on real
hosts, is tests/node/test_datadir_migration.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from node_scripts import load_node_script

REPO = Path(__file__).resolve().parents[2]
fscrypt = load_node_script("mariadb_kms_fscrypt", REPO / "node" / "mariadb_kms_fscrypt.py")
STAMP = "20261202T210000Z"
BIND = "/srv/mariadb-kms/data /var/lib/mysql none bind,x-systemd.requires-mounts-for=/srv/mariadb-kms 0 0"


def bind_line(volume: Path, datadir: Path) -> str:
    return f"{volume}/data {datadir} none bind,x-systemd.requires-mounts-for={volume} 0 0"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    volume = tmp_path / "srv"
    for name in ("data", "log", "secure-file-priv"):
        (volume / name).mkdir(parents=True)
    (volume / "data" / "ibdata1").write_text("rows")
    (volume / "log" / "mariadb.err").write_text("an applier error")
    datadir = tmp_path / "var-lib-mysql"
    datadir.mkdir()
    conf = tmp_path / "datadir.conf"
    conf.write_text("encryption=none\n")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"/dev/root / ext4 defaults 0 1\n{fscrypt.BIND_MARKER}\n{bind_line(volume, datadir)}\n")
    policies: dict[Path, bytes] = {}
    unmounted: list[list[str]] = []
    monkeypatch.setattr(fscrypt, "supports_encryption", lambda mount: (True, "yes"))
    monkeypatch.setattr(fscrypt, "get_policy", lambda d: policies.get(Path(d)))
    monkeypatch.setattr(fscrypt.os.path, "ismount", lambda p: Path(p) == volume)
    monkeypatch.setattr(fscrypt.subprocess, "run", lambda argv, **kw: unmounted.append(argv))
    return {"volume": volume, "datadir": datadir, "conf": conf, "fstab": fstab, "policies": policies,
            "unmounted": unmounted}


def _migrate(n: dict[str, Any], **kw: Any) -> list[str]:
    kw.setdefault("running", False)
    return fscrypt.migrate(n["volume"], n["datadir"], n["conf"], n["fstab"], stamp=STAMP, **kw)


def test_the_old_datadir_and_its_siblings_contents_move_aside_and_the_conf_says_fscrypt(node: dict[str, Any]) -> None:
    said = _migrate(node)
    volume, old = node["volume"], node["volume"] / f"plain-{STAMP}"
    assert (old / "data" / "ibdata1").read_text() == "rows"
    assert (old / "log" / "mariadb.err").exists()
    assert not (volume / "data").exists()  # the installer makes it again, empty, and encrypts it
    assert list((volume / "log").iterdir()) == [] and (volume / "secure-file-priv").is_dir()
    assert node["conf"].read_text().splitlines()[-1] == "encryption=fscrypt"
    # The fstab bind would show the old datadir at /var/lib/mysql again at boot: it goes, the rest stays.
    assert node["fstab"].read_text() == "/dev/root / ext4 defaults 0 1\n"
    assert any(line.startswith("next: sudo mariadb-kms-install") for line in said), said


def test_a_running_mariadbd_is_refused_and_nothing_moves(node: dict[str, Any]) -> None:
    with pytest.raises(fscrypt.FscryptError, match="stop MariaDB first"):
        _migrate(node, running=True)
    assert (node["volume"] / "data" / "ibdata1").exists()
    assert node["conf"].read_text() == "encryption=none\n"


def test_a_volume_without_encryption_support_is_refused(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fscrypt, "supports_encryption", lambda mount: (False, "tune2fs -O encrypt is needed"))
    with pytest.raises(fscrypt.FscryptError, match="tune2fs -O encrypt"):
        _migrate(node)
    assert (node["volume"] / "data" / "ibdata1").exists()


def test_an_already_encrypted_datadir_is_left_alone(node: dict[str, Any]) -> None:
    node["policies"][node["volume"] / "data"] = bytes(16)
    node["conf"].write_text("encryption=fscrypt\n")
    assert _migrate(node) == [f"{node['volume'] / 'data'} is already encrypted and {node['conf']} says fscrypt: "
                              "nothing to move"]
    assert (node["volume"] / "data" / "ibdata1").exists()


def test_a_datadir_from_before_the_volume_layout_is_renamed_where_it_is(node: dict[str, Any]) -> None:
    (node["datadir"] / "ibdata1").write_text("older rows")
    said = _migrate(node)
    aside = node["datadir"].with_name(f"{node['datadir'].name}.plain-{STAMP}")
    assert (aside / "ibdata1").read_text() == "older rows"
    assert node["datadir"].is_dir() and list(node["datadir"].iterdir()) == []
    assert any("root filesystem; wipe them" in line for line in said)


def test_the_fstab_filter_keeps_other_lines_and_a_users_own_bind() -> None:
    volume, datadir = Path("/srv/mariadb-kms"), Path("/var/lib/mysql")
    own = "/dev/sdb1 /var/lib/mysql ext4 defaults 0 2\n"
    text, changed = fscrypt.without_bind_lines(own, volume, datadir)
    assert (text, changed) == (own, False)
    text, changed = fscrypt.without_bind_lines(f"{fscrypt.BIND_MARKER}\n{BIND}\n{own}", volume, datadir)
    assert (text, changed) == (own, True)


def test_the_marker_matches_what_the_installer_writes() -> None:
    install = (REPO / "node" / "mariadb-kms-install").read_text()
    assert f'BIND_MARKER="{fscrypt.BIND_MARKER}"' in install
    assert 'entry="$VOLUME_DATADIR $DATADIR none bind,' in install


def test_a_datadir_mounted_from_elsewhere_is_refused(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    volume, datadir = node["volume"], node["datadir"]
    monkeypatch.setattr(fscrypt.os.path, "ismount", lambda p: Path(p) in (volume, datadir))
    with pytest.raises(fscrypt.FscryptError, match="a mount of something other than"):
        _migrate(node)
    assert node["unmounted"] == [] and (volume / "data" / "ibdata1").exists()


def test_wipe_overwrites_in_place_removes_and_accepts_only_what_migrate_made(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrate(node)
    old = node["volume"] / f"plain-{STAMP}"
    inode = (old / "data" / "ibdata1").stat().st_ino
    zeroed: list[tuple[int, bytes]] = []
    real = fscrypt._zero_file

    def spy(path: Path, chunk: bytes) -> int:
        n = real(path, chunk)
        zeroed.append((path.stat().st_ino, path.read_bytes()))
        return n

    monkeypatch.setattr(fscrypt, "_zero_file", spy)
    monkeypatch.setattr(fscrypt.subprocess, "run", lambda argv, **kw: shutil.rmtree(argv[-1]))
    monkeypatch.setattr(fscrypt.os, "write", lambda fd, data: 0)  # the fill: nothing left to fill here
    said = fscrypt.wipe(node["volume"], old, node["datadir"])
    assert (inode, b"\0" * 4) in zeroed  # the same file (inode), its bytes now zeros
    assert not old.exists()
    assert said[0].startswith("overwrote 2 files")
    with pytest.raises(fscrypt.FscryptError, match="expected a directory migrate made"):
        fscrypt.wipe(node["volume"], node["volume"] / "data", node["datadir"])
