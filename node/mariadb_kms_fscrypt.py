#!/usr/bin/python3
"""mariadb-kms-fscrypt: the on-prem datadir encrypted by the kernel (ext4 fscrypt, policy v2), keyed through KMS.

Installed as /usr/local/sbin/mariadb-kms-fscrypt; run as root. Only kernel
calls: the four fscrypt v2 ioctls (linux/fscrypt.h) through ``fcntl.ioctl``.
Debian's ``fscrypt`` tool is not used because it refuses to work when the
filesystem's root is not visible in /proc/self/mountinfo (a bind-mounted
volume, a container); the ioctls do not care. The cryptography (AES-256-XTS
for contents, AES-256-CTS for names, per-file keys) is the kernel's.

The key: derived from the cluster data key (the plaintext that
mariadb-kms-unwrap puts on tmpfs, ``1;<hex>``) with HKDF-SHA256 (RFC 5869)
under a label of its own, ``DATADIR_KEY_INFO``. So it comes from KMS like
the data key, needs no second blob, and differs from the key MariaDB uses:
knowing one of the two derived values tells nothing about the other.

The node's layout (the same on EC2 and on premises): the data volume at
``VOLUME_ROOT``, the datadir in its subdirectory ``data`` (bound at
/var/lib/mysql), which carries the policy: ext4 refuses one on a
filesystem's root directory. ``DATADIR_CONF`` says which encryption the
stack config chose (``encryption=fscrypt|luks|none``; absent means none).

Commands for the node (mariadb-kms-datadir-key.service and mariadb-kms-install):
  prepare                the volume supports encryption; the empty datadir gets its policy (install)
  start                  add the key, and refuse unless the datadir is encrypted under it (before MariaDB)
  stop                   remove the key (after MariaDB); exit 3 while files are still open
  key-status             present / absent, for the key the datadir's policy names (no key needed)
  migrate                MariaDB stopped: move an unencrypted datadir (and log/, secure-file-priv/) out of the
                         way and set encryption=fscrypt, so that mariadb-kms-install makes a new encrypted one
                         and the node joins by SST (docs/at-rest.md)
  wipe DIR               after the move: overwrite with zeros every file of DIR (a plain-* directory migrate
                         made) in place, remove it, then fill the volume's free space with zeros and remove that

Commands on any path (each prints one line, never key material):
  preflight MOUNT        the filesystem under MOUNT supports encryption (ext4 ``-O encrypt``)
  add MOUNT              derive the key from --keyfile and add it to MOUNT's filesystem
  remove MOUNT           remove it (every user's claim); exit 3 when files are still open
  status MOUNT           present / absent / incompletely-removed
  protect DIR            set the policy on DIR (must be empty; the key must be added)
  policy DIR             the key identifier of DIR's policy, or "none"
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import hmac
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROG = "mariadb-kms-fscrypt"
DEFAULT_KEYFILE = "/run/mariadb-kms/keyfile"
VOLUME_ROOT = "/srv/mariadb-kms"
DATADIR = "/var/lib/mysql"
DATADIR_CONF = "/etc/mariadb-kms/datadir.conf"
FSTAB = "/etc/fstab"
# What mariadb-kms-install writes above the datadir's bind line when the datadir is not fscrypt-encrypted.
BIND_MARKER = "# mariadb-kms-install: the datadir is a subdirectory of the data volume"
DATADIR_ENCRYPTION_MODES = ("fscrypt", "luks", "none")
DATADIR_KEY_INFO = b"mariadb-kms fscrypt datadir key v1"
MASTER_KEY_BYTES = 64  # AES-256-XTS takes a 512-bit key; a v2 master key must be at least that long

# linux/fscrypt.h
FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613  # _IOR('f', 19, struct fscrypt_policy_v1)
FS_IOC_GET_ENCRYPTION_POLICY_EX = 0xC0096616  # _IOWR('f', 22, __u8[9])
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617  # _IOWR('f', 23, struct fscrypt_add_key_arg)
FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS = 0xC0406619  # _IOWR('f', 25, struct fscrypt_remove_key_arg)
FS_IOC_GET_ENCRYPTION_KEY_STATUS = 0xC080661A  # _IOWR('f', 26, struct fscrypt_get_key_status_arg)
FSCRYPT_POLICY_V2 = 2
FSCRYPT_MODE_AES_256_XTS = 1
FSCRYPT_MODE_AES_256_CTS = 4
FSCRYPT_POLICY_FLAGS_PAD_32 = 0x03
FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER = 2
FSCRYPT_KEY_IDENTIFIER_SIZE = 16
FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY = 0x1
KEY_STATUS = {1: "absent", 2: "present", 3: "incompletely-removed"}

_KEY_SPEC = struct.Struct("<II32s")  # type, reserved, union {descriptor[8]; identifier[16]; reserved[32]}
_ADD_KEY = struct.Struct("<40sII32s")  # key_spec, raw_size, key_id, reserved[8]; then raw[]
_REMOVE_KEY = struct.Struct("<40sI20s")  # key_spec, removal_status_flags, reserved[5]
_KEY_STATUS = struct.Struct("<40s24sIII52s")  # key_spec, reserved[6]; out: status, status_flags, user_count, rsvd
_POLICY_V2 = struct.Struct("<BBBB4s16s")  # version, contents mode, filenames mode, flags, reserved, identifier


class FscryptError(RuntimeError):
    pass


def hkdf(ikm: bytes, info: bytes, length: int, *, salt: bytes = b"", hash_name: str = "sha256") -> bytes:
    """RFC 5869 HKDF (extract, then expand) with the standard library's HMAC."""
    size = hashlib.new(hash_name).digest_size
    if length > 255 * size:
        raise ValueError(f"HKDF-{hash_name} output is at most {255 * size} bytes")
    prk = hmac.new(salt or bytes(size), ikm, hash_name).digest()
    out, block = b"", b""
    for counter in range(1, -(-length // size) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hash_name).digest()
        out += block
    return out[:length]


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    return hkdf(ikm, info, length)


def key_identifier(master_key: bytes) -> bytes:
    """The identifier the kernel computes for a v2 master key (fs/crypto/keyring.c and hkdf.c):
    HKDF-SHA512, zero salt, info "fscrypt\\0" + HKDF_CONTEXT_KEY_IDENTIFIER (1), 16 bytes.
    Computed here so that status and remove never have to add the key to learn it."""
    return hkdf(master_key, b"fscrypt\x00\x01", FSCRYPT_KEY_IDENTIFIER_SIZE, hash_name="sha512")


def datadir_key(data_key: bytes) -> bytes:
    if len(data_key) != 32:
        raise FscryptError(f"the cluster data key is {len(data_key)} bytes, expected 32")
    return hkdf_sha256(data_key, DATADIR_KEY_INFO, MASTER_KEY_BYTES)


def read_data_key(keyfile: Path) -> bytes:
    """The plaintext data key from file_key_management's keyfile (``1;<64 hex digits>``)."""
    text = keyfile.read_text(encoding="ascii").strip()
    _, sep, hexkey = text.partition(";")
    if not sep:
        raise FscryptError(f"{keyfile} is not in file_key_management's 'id;hex' format")
    try:
        return bytes.fromhex(hexkey)
    except ValueError:
        raise FscryptError(f"{keyfile} does not hold a hex key") from None


# --------------------------------------------------------------------------
# The ioctls
# --------------------------------------------------------------------------


def _ioctl(path: Path, request: int, arg: bytearray, *, directory: bool = True) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        fcntl.ioctl(fd, request, arg, True)
    finally:
        os.close(fd)


def _identifier_spec(identifier: bytes) -> bytes:
    return _KEY_SPEC.pack(FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER, 0, identifier.ljust(32, b"\0"))


def add_key(mount: Path, key: bytes) -> bytes:
    """Add a v2 master key to the filesystem under ``mount``; returns the identifier the kernel computed."""
    buf = bytearray(_ADD_KEY.pack(_identifier_spec(b""), len(key), 0, b"") + key)
    try:
        _ioctl(mount, FS_IOC_ADD_ENCRYPTION_KEY, buf)
        identifier = bytes(buf[8 : 8 + FSCRYPT_KEY_IDENTIFIER_SIZE])
    finally:
        buf[_ADD_KEY.size :] = bytes(len(key))  # the key leaves our memory as soon as the kernel has it
    if identifier != key_identifier(key):
        raise FscryptError("the kernel's key identifier differs from the one computed here")
    return identifier


@dataclass(frozen=True)
class RemoveResult:
    busy: bool  # files under the key are still open: the key stays until they close
    other_users: bool


def remove_key(mount: Path, identifier: bytes) -> RemoveResult:
    buf = bytearray(_REMOVE_KEY.pack(_identifier_spec(identifier), 0, b""))
    _ioctl(mount, FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, buf)
    flags = struct.unpack_from("<I", buf, 40)[0]
    return RemoveResult(busy=bool(flags & FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY), other_users=bool(flags & 0x2))


def key_status(mount: Path, identifier: bytes) -> str:
    buf = bytearray(_KEY_STATUS.pack(_identifier_spec(identifier), b"", 0, 0, 0, b""))
    _ioctl(mount, FS_IOC_GET_ENCRYPTION_KEY_STATUS, buf)
    status = struct.unpack_from("<I", buf, 64)[0]
    return KEY_STATUS.get(status, f"unknown ({status})")


def set_policy(directory: Path, identifier: bytes) -> None:
    buf = bytearray(_POLICY_V2.pack(
        FSCRYPT_POLICY_V2, FSCRYPT_MODE_AES_256_XTS, FSCRYPT_MODE_AES_256_CTS, FSCRYPT_POLICY_FLAGS_PAD_32,
        b"", identifier,
    ))
    _ioctl(directory, FS_IOC_SET_ENCRYPTION_POLICY, buf)


def get_policy(directory: Path) -> bytes | None:
    """The master key identifier of ``directory``'s v2 policy; None when it has none."""
    buf = bytearray(struct.pack("<Q", 24) + bytes(24))  # policy_size, then the policy union
    try:
        _ioctl(directory, FS_IOC_GET_ENCRYPTION_POLICY_EX, buf)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise
    version = buf[8]
    if version != FSCRYPT_POLICY_V2:
        raise FscryptError(f"{directory} has a policy of version {version}, not 2")
    return bytes(buf[16:32])


def supports_encryption(mount: Path) -> tuple[bool, str]:
    """Whether the filesystem under ``mount`` can hold encrypted directories, and why not."""
    try:
        get_policy(mount)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
            return False, (f"the filesystem at {mount} does not support encryption ({e.strerror}): an ext4 volume "
                           "made with `mkfs.ext4 -O encrypt`, or turned on with `tune2fs -O encrypt DEVICE`, is needed")
        return False, f"{mount}: {e.strerror}"
    return True, f"the filesystem at {mount} supports encryption"


# --------------------------------------------------------------------------
# The node's datadir
# --------------------------------------------------------------------------


def configured_mode(conf: Path) -> str:
    if not conf.exists():
        return "none"
    for line in conf.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "encryption":
            mode = value.strip()
            if mode not in DATADIR_ENCRYPTION_MODES:
                raise FscryptError(f"{conf}: encryption={mode}: expected one of {', '.join(DATADIR_ENCRYPTION_MODES)}")
            return mode
    return "none"


def prepare(volume: Path, key: bytes) -> str:
    """Install time: the datadir directory on the volume exists and is encrypted under ``key``."""
    ok, why = supports_encryption(volume)
    if not ok:
        raise FscryptError(why)
    datadir = volume / "data"
    datadir.mkdir(mode=0o750, exist_ok=True)
    identifier = add_key(volume, key)
    existing = get_policy(datadir)
    if existing == identifier:
        return "; ".join([f"{datadir} is encrypted under {identifier.hex()}", *protect_siblings(volume, identifier)])
    if existing is not None:
        raise FscryptError(f"{datadir} is encrypted under another key ({existing.hex()}), not this cluster's")
    if any(datadir.iterdir()):
        raise FscryptError(f"{datadir} holds files but is not encrypted: a policy can only be set on an empty "
                           "directory; move the node by SST into a new empty one (docs/at-rest.md)")
    set_policy(datadir, identifier)
    done = f"{datadir} encrypted under {identifier.hex()} (fscrypt v2, AES-256-XTS)"
    return "; ".join([done, *protect_siblings(volume, identifier)])


# Beside the datadir, on the same volume: the error log (applier errors quote row values) and
# secure_file_priv (SELECT ... INTO OUTFILE writes rows there). Under the same key as the datadir; while it
# is absent (MariaDB stopped) they read as ciphertext too.
SIBLINGS = ("log", "secure-file-priv")


def protect_siblings(volume: Path, identifier: bytes) -> list[str]:
    said = []
    for name in SIBLINGS:
        directory = volume / name
        if not directory.is_dir():
            continue
        existing = get_policy(directory)
        if existing == identifier:
            continue
        if existing is not None:
            raise FscryptError(f"{directory} is encrypted under another key ({existing.hex()}), not this cluster's")
        if any(directory.iterdir()):
            # Not fatal: the datadir is what must be encrypted from its first byte; this one is moved by hand.
            said.append(f"warning: {directory} holds files but is not encrypted (a policy needs an empty "
                        "directory): move its files out, re-run the install, move them back")
            continue
        set_policy(directory, identifier)
        said.append(f"{directory} encrypted under {identifier.hex()}")
    return said


# The datadir is bound at DATADIR only while its key is present. A mount pins the directory it shows: bound
# for good, the encrypted data/ directory could never be evicted, and removing the key would stop at
# "incompletely removed" with data/'s own names still readable (measured on a testbed host).


def _is_mount_point(path: Path) -> bool:
    return os.path.ismount(path)


def bind_datadir(volume: Path, datadir: Path) -> str:
    if _is_mount_point(datadir):
        return f"{datadir} already mounted"
    datadir.mkdir(mode=0o750, exist_ok=True)
    subprocess.run(["mount", "--bind", str(volume / "data"), str(datadir)], check=True, capture_output=True,
                   timeout=60)
    return f"{volume / 'data'} bound at {datadir}"


def unbind_datadir(datadir: Path) -> None:
    if _is_mount_point(datadir):
        subprocess.run(["umount", str(datadir)], check=True, capture_output=True, timeout=60)


def start(volume: Path, key: bytes, datadir: Path = Path(DATADIR)) -> str:
    """Before MariaDB starts: the key is present and the datadir is encrypted under it, or MariaDB does not start."""
    encrypted = volume / "data"
    identifier = add_key(volume, key)
    existing = get_policy(encrypted)
    if existing != identifier:
        found = existing.hex() if existing else "no policy"
        raise FscryptError(f"{encrypted} is not encrypted under the cluster's datadir key ({found}): refusing to "
                           "let MariaDB start on it")
    bound = bind_datadir(volume, datadir)
    return f"datadir key {identifier.hex()} present; {encrypted} is encrypted under it; {bound}"


def stop(volume: Path, datadir: Path = Path(DATADIR)) -> tuple[bool, str]:
    """After MariaDB stops: the datadir is unbound and the key goes. The identifier comes from the policy."""
    identifier = get_policy(volume / "data")
    if identifier is None:
        return True, f"{volume / 'data'} has no policy: no key to remove"
    try:
        unbind_datadir(datadir)
    except subprocess.CalledProcessError as e:
        raise FscryptError(f"cannot unmount {datadir}: {e.stderr.decode(errors='replace').strip()}") from None
    result = remove_key(volume, identifier)
    state = key_status(volume, identifier)
    busy = " (files under it are still open: it goes when they close)" if result.busy else ""
    return state == "absent", f"datadir key {identifier.hex()}: {state}{busy}"


# --------------------------------------------------------------------------
# Moving an unencrypted datadir out of the way (the SST runbook, docs/at-rest.md)
# --------------------------------------------------------------------------


def mariadbd_running(proc: Path = Path("/proc")) -> bool:
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text(encoding="utf-8", errors="replace").strip() == "mariadbd":
                    return True
            except OSError:
                continue
    return False


def without_bind_lines(fstab: str, volume: Path, datadir: Path) -> tuple[str, bool]:
    """``fstab`` without the installer's bind of ``volume``/data at ``datadir`` (and its marker line)."""
    entry = f"{volume / 'data'} {datadir} none bind"
    kept = [line for line in fstab.splitlines(keepends=True)
            if line.rstrip("\n") != BIND_MARKER and not line.startswith(entry)]
    return "".join(kept), len(kept) != len(fstab.splitlines())


def _write_replacing(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.mariadb-kms-fscrypt")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        os.fchmod(f.fileno(), mode)
        os.fsync(f.fileno())
    os.replace(tmp, path)


def migrate(volume: Path, datadir: Path, conf: Path, fstab: Path, *, stamp: str | None = None,
            running: bool | None = None) -> list[str]:
    """Steps 2 and 3 of the runbook but the install: MariaDB must be stopped. The old datadir and the old
    contents of log/ and secure-file-priv/ go to ``<volume>/plain-<stamp>/`` (a rename: the same volume, so
    its blocks stay where they are until wiped, which the runbook's last step does); the datadir's bind
    mount and its /etc/fstab line go; datadir.conf says fscrypt. mariadb-kms-install then encrypts the
    empty directories and initialises a new datadir, which the node's next start fills by SST."""
    if running if running is not None else mariadbd_running():
        raise FscryptError("mariadbd is running: stop MariaDB first (sudo systemctl stop mariadb); the node "
                           "then rejoins by SST")
    if not os.path.ismount(volume):
        raise FscryptError(f"no volume is mounted at {volume}: mount an ext4 volume made with mkfs.ext4 -O encrypt "
                           "there (docs/at-rest.md)")
    ok, why = supports_encryption(volume)
    if not ok:
        raise FscryptError(why)
    data = volume / "data"
    if data.is_dir() and get_policy(data) is not None:
        if configured_mode(conf) == "fscrypt":
            return [f"{data} is already encrypted and {conf} says fscrypt: nothing to move"]
        raise FscryptError(f"{data} is encrypted but {conf} does not say fscrypt: set encryption=fscrypt there "
                           "by hand")
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    old = volume / f"plain-{stamp}"
    if old.exists():
        raise FscryptError(f"{old} exists already")
    said: list[str] = []
    if os.path.ismount(datadir):
        if not data.is_dir() or os.stat(datadir) != os.stat(data):
            raise FscryptError(f"{datadir} is a mount of something other than {data} (a datadir on a device of "
                               f"its own, from before the volume layout?): unmount it, drop its {fstab} line, and "
                               "run this again")
        subprocess.run(["umount", str(datadir)], check=True, capture_output=True, timeout=120)
        said.append(f"unmounted {datadir} (the bind of {data})")
    elif datadir.is_dir() and any(datadir.iterdir()):
        # A datadir from before the volume layout, on the root filesystem: renamed there (another filesystem).
        aside = datadir.with_name(f"{datadir.name}.plain-{stamp}")
        datadir.rename(aside)
        datadir.mkdir(mode=0o750)
        said.append(f"moved the datadir from before the volume layout to {aside}: its blocks are on the root "
                    "filesystem; wipe them")
    if fstab.exists():
        text, changed = without_bind_lines(fstab.read_text(encoding="utf-8"), volume, datadir)
        if changed:
            _write_replacing(fstab, text, 0o644)
            said.append(f"removed the datadir's bind line from {fstab}")
    old.mkdir(mode=0o700)
    if data.exists():
        data.rename(old / "data")
        said.append(f"moved {data} to {old / 'data'}")
    for name in SIBLINGS:
        directory = volume / name
        if not directory.is_dir() or get_policy(directory) is not None:
            continue
        entries = sorted(directory.iterdir())
        if entries:
            (old / name).mkdir(mode=0o700)
            for entry in entries:
                entry.rename(old / name / entry.name)
            said.append(f"moved the contents of {directory} to {old / name}")
    conf.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write_replacing(conf, "# mariadb-kms: onPremDatadirEncryption from the stack config.\nencryption=fscrypt\n",
                     0o644)
    said.append(f"{conf}: encryption=fscrypt")
    said.append(f"next: sudo mariadb-kms-install, then sudo systemctl start mariadb (the node joins by SST); "
                f"then sudo {PROG} wipe {old} (docs/at-rest.md)")
    return said


def _zero_file(path: Path, chunk: bytes) -> int:
    """Overwrite a file's bytes in place (ext4 writes over the same blocks) and flush them to the device."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        left = size
        while left > 0:
            left -= f.write(chunk[: min(left, len(chunk))])
        f.flush()
        os.fsync(f.fileno())
    return size


def wipe(volume: Path, target: Path, datadir: Path = Path(DATADIR)) -> list[str]:
    """The runbook's last step on the same volume: what migrate moved aside is overwritten, then removed, then
    the free space (where files deleted while the datadir was plain lie) is overwritten too, as far as a file
    can reach: ext4 keeps some clusters in reserve that no write of a file takes, and an SSD may keep old
    blocks elsewhere. A new volume is the clean way."""
    target = Path(os.path.abspath(target))
    allowed = (target.parent == volume and target.name.startswith("plain-")) or (
        target.parent == datadir.parent and target.name.startswith(f"{datadir.name}.plain-"))
    if not allowed or not target.is_dir() or target.is_symlink():
        raise FscryptError(f"{target}: expected a directory migrate made ({volume}/plain-<time> or "
                           f"{datadir}.plain-<time>)")
    chunk = bytes(1 << 20)
    files = overwritten = 0
    for dirpath, _dirs, names in os.walk(target):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                overwritten += _zero_file(path, chunk)
                files += 1
    subprocess.run(["rm", "-rf", "--one-file-system", str(target)], check=True, capture_output=True, timeout=3600)
    said = [f"overwrote {files} files ({overwritten} bytes) of {target} with zeros and removed it"]
    filler = target.parent / f".mariadb-kms-wipe-{os.getpid()}"
    filled = 0
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            while True:
                try:
                    written = os.write(fd, chunk)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        break
                    raise
                if written == 0:
                    break
                filled += written
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        filler.unlink(missing_ok=True)
    said.append(f"filled {filled} bytes of free space on {target.parent}'s filesystem with zeros and removed them")
    return said


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _key(args: argparse.Namespace) -> bytes:
    return datadir_key(read_data_key(Path(args.keyfile)))


def run_node(args: argparse.Namespace) -> int:
    mode = configured_mode(Path(args.conf))
    volume = Path(args.volume)
    if mode != "fscrypt":
        print(f"{PROG}: datadir encryption is {mode}: nothing to do here")
        return 0
    if args.command == "key-status":
        identifier = get_policy(volume / "data")
        print(key_status(volume, identifier) if identifier else "no-policy")
        return 0
    if args.command == "stop":
        ok, message = stop(volume)
        print(f"{PROG}: {message}")
        return 0 if ok else 3
    key = bytearray(_key(args))
    try:
        action = prepare if args.command == "prepare" else start
        print(f"{PROG}: {action(volume, bytes(key))}")
    finally:
        key[:] = bytes(len(key))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "migrate":
        for line in migrate(Path(args.volume), Path(DATADIR), Path(args.conf), Path(FSTAB)):
            print(f"{PROG}: {line}")
        return 0
    if args.command == "wipe":
        if not args.path:
            raise FscryptError("wipe needs the directory migrate moved the old datadir to")
        for line in wipe(Path(args.volume), Path(args.path)):
            print(f"{PROG}: {line}")
        return 0
    if args.command in NODE_COMMANDS:
        return run_node(args)
    if not args.path:
        raise FscryptError(f"{args.command} needs a path")
    target = Path(args.path)
    if args.command == "preflight":
        ok, why = supports_encryption(target)
        print(f"{PROG}: {why}")
        return 0 if ok else 1
    if args.command == "policy":
        identifier = get_policy(target)
        print(identifier.hex() if identifier else "none")
        return 0
    key = bytearray(_key(args))
    try:
        if args.command == "add":
            identifier = add_key(target, bytes(key))
            print(f"{PROG}: datadir key {identifier.hex()} present on {target}")
            return 0
        identifier = key_identifier(bytes(key))
    finally:
        key[:] = bytes(len(key))
    if args.command == "status":
        print(key_status(target, identifier))
        return 0
    if args.command == "protect":
        if any(target.iterdir()):
            raise FscryptError(f"{target} is not empty: a policy can only be set on an empty directory")
        existing = get_policy(target)
        if existing is None:
            set_policy(target, identifier)
        elif existing != identifier:
            raise FscryptError(f"{target} is already encrypted under another key ({existing.hex()})")
        print(f"{PROG}: {target} encrypted under {identifier.hex()}")
        return 0
    if args.command == "remove":
        result = remove_key(target, identifier)
        state = key_status(target, identifier)
        print(f"{PROG}: datadir key {identifier.hex()}: {state}" + (" (files still open)" if result.busy else ""))
        return 3 if state != "absent" else 0
    raise FscryptError(f"unknown command {args.command}")


NODE_COMMANDS = ("prepare", "start", "stop", "key-status")


HELP_EPILOG = """\
exit status: 0 done (or datadir encryption is not fscrypt: nothing to do);
             1 preflight: the filesystem does not support encryption; an unexpected error (traceback);
             2 an error (no key, a kernel call refused, a datadir under another key), bad argument;
             3 stop/remove: files under the datadir are still open, the key goes when they close

example: sudo mariadb-kms-fscrypt key-status
         sudo mariadb-kms-fscrypt migrate
         sudo mariadb-kms-fscrypt preflight /srv/mariadb-kms
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The datadir's fscrypt key, derived from the data key.\n"
        "Run it as root on a mariadb-kms node; mariadb-kms-datadir-key.service runs start and stop around MariaDB.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=(*NODE_COMMANDS, "migrate", "wipe", "preflight", "add", "remove", "status",
                                            "protect", "policy"))
    parser.add_argument("path", nargs="?", default="",
                        help="the data volume's mount point (add/remove/status/preflight) or a directory")
    parser.add_argument("--keyfile", default=DEFAULT_KEYFILE, help="file_key_management's keyfile (id;hex)")
    parser.add_argument("--volume", default=VOLUME_ROOT, help="the data volume's mount point")
    parser.add_argument("--conf", default=DATADIR_CONF, help="the datadir encryption setting")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FscryptError, OSError, subprocess.SubprocessError) as e:
        print(f"{PROG}: ERROR: {args.command} {args.path}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
