"""mariadb-kms-fscrypt's pure parts: the key derivation, the kernel's key identifier, the ioctl structures.

The ioctls themselves run on real kernels only (tests/node/test_at_rest.py): inside a testbed host, on a
loop-backed ext4 volume made with ``-O encrypt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from node_scripts import load_node_script

from components.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]
fscrypt = load_node_script("mariadb_kms_fscrypt", REPO / "node" / "mariadb_kms_fscrypt.py")


def test_hkdf_matches_rfc_5869_test_case_1() -> None:
    # RFC 5869 appendix A.1 (https://www.rfc-editor.org/rfc/rfc5869#appendix-A.1)
    okm = fscrypt.hkdf(bytes([0x0B] * 22), bytes(range(0xF0, 0xFA)), 42, salt=bytes(range(0x0D)))
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_the_datadir_key_is_its_own_label_of_the_data_key_and_long_enough_for_aes_256_xts() -> None:
    data_key = bytes(range(32))
    key = fscrypt.datadir_key(data_key)
    assert len(key) == 64
    assert key != fscrypt.hkdf(data_key, b"another label", 64)  # a distinct label gives a distinct key
    assert data_key.hex() not in key.hex()
    with pytest.raises(fscrypt.FscryptError):
        fscrypt.datadir_key(bytes(16))


def test_the_key_identifier_is_the_one_the_kernel_computes() -> None:
    # Measured: FS_IOC_ADD_ENCRYPTION_KEY of datadir_key(bytes(range(32))) on an ext4 -O encrypt loop volume
    # (Linux 6.18) returned this identifier; add_key also compares the two on every node.
    assert fscrypt.key_identifier(fscrypt.datadir_key(bytes(range(32)))).hex() == "831e603cc2c17e24eee577a82aefc94d"


def test_ioctl_argument_sizes_match_linux_fscrypt_h() -> None:
    # The size is encoded in each request number (_IOWR('f', nr, type)): bits 16-29.
    for request, struct in ((fscrypt.FS_IOC_ADD_ENCRYPTION_KEY, fscrypt._ADD_KEY),
                            (fscrypt.FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, fscrypt._REMOVE_KEY),
                            (fscrypt.FS_IOC_GET_ENCRYPTION_KEY_STATUS, fscrypt._KEY_STATUS)):
        assert (request >> 16) & 0x3FFF == struct.size
    assert fscrypt._POLICY_V2.size == 24


def test_keyfile_format_and_configured_mode(tmp_path: Path) -> None:
    keyfile = tmp_path / "keyfile"
    keyfile.write_text("1;" + "ab" * 32 + "\n")
    assert fscrypt.read_data_key(keyfile) == bytes([0xAB] * 32)
    keyfile.write_text("not a keyfile")
    with pytest.raises(fscrypt.FscryptError):
        fscrypt.read_data_key(keyfile)
    conf = tmp_path / "datadir.conf"
    assert fscrypt.configured_mode(conf) == "none"
    conf.write_text("encryption=fscrypt\n")
    assert fscrypt.configured_mode(conf) == "fscrypt"
    conf.write_text("encryption=bitlocker\n")
    with pytest.raises(fscrypt.FscryptError, match="encryption=bitlocker: expected one of fscrypt, luks, none"):
        fscrypt.configured_mode(conf)


def test_onprem_datadir_encryption_defaults_to_fscrypt_and_names_a_bad_value(full_config: dict[str, Any]) -> None:
    raw = {k: v for k, v in full_config.items() if k != "sshPrivateKey"}
    assert parse_config(raw, stack="dev", region="eu-west-1").mariadb.onprem_datadir_encryption == "fscrypt"
    assert parse_config({**raw, "onPremDatadirEncryption": "none"}, stack="dev",
                        region="eu-west-1").mariadb.onprem_datadir_encryption == "none"
    with pytest.raises(ConfigError) as raised:
        parse_config({**raw, "onPremDatadirEncryption": "bitlocker"}, stack="dev", region="eu-west-1")
    assert "onPremDatadirEncryption = bitlocker: expected one of fscrypt, luks, none" in str(raised.value)
