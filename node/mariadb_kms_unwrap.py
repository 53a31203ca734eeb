#!/usr/bin/python3
"""mariadb-kms-unwrap: decrypt the cluster data key with AWS KMS before MariaDB starts.

Installed as /usr/local/sbin/mariadb-kms-unwrap and run by
mariadb-kms-unwrap.service (root, oneshot) before every start of
mariadb.service. Needs only python3 and Debian's python3-boto3.

- kms-envelope mode: KMS Decrypt of the blob; the plaintext key is written to
  the tmpfs keyfile (``1;<hex>``, 0600, owner mysql) that file_key_management
  reads. Nothing else ever holds it on the node.
- aws-plugin mode: the same Decrypt proves the node can use the key, then the
  blob itself is written where the aws_key_management plugin looks for it
  (``<datadir>/aws-kms-key.1.1``; also ``.2.1`` so the plugin never asks KMS
  to mint a key for temporary data). It is rewritten at every start because a
  Galera SST joiner wipes datadir files it does not know, and the plugin
  would then generate a new key.

Never generates a key. Never prints key material. Transient causes (endpoint
unreachable, timeouts, throttling, 5xx) are retried with a capped backoff: a
bounded number of times by default (the install path, ``--check``), and for as
long as it takes with ``--wait`` (the unit: a node whose KMS is away starts
MariaDB by itself once KMS answers again, without restarting any unit). A
brand-new access key that KMS does not recognise yet is retried within
NEW_CREDENTIALS_WINDOW. A permanent cause (access denied, disabled or missing
key, corrupt blob, missing or unsafe credentials, bad settings) is never
retried: one line naming the cause class and the key ARN, and an exit status
per class (see EXIT_CODES), so mariadb.service, which requires this unit, does
not start.

Which MariaDB starts call KMS: every start systemd is asked for (boot,
``systemctl start|restart mariadb``, galera_new_cluster, the program's roll).
Not systemd's own restart after mariadbd died or failed to start
(``Restart=on-failure``): mariadb.service's ExecStopPost (``--note-stop``)
notes the abnormal end, ``--remove`` then keeps the keyfile, and the next
start reuses it, so a crashed node comes back while KMS is unreachable. The
key never leaves tmpfs on that path; it is gone once MariaDB is stopped.

Credentials: on EC2 boto3's default chain (the instance profile; IMDS is
root-only on our nodes). On premises a root-only 0600 shared-credentials file
named in unwrap.conf, read by this process alone: it is never passed through
an environment variable of a unit, so ``systemctl show`` cannot reveal it.

A requested stop removes the keyfile inside mariadb.service's own stop (``--note-stop``), and the
ExecStartPre of the datadir key unit and of mariadb.service (``--ensure``) unwraps again if the key is
not there: a start queued right after a stop cancels this unit's pending stop job, and MariaDB would
otherwise start with no fresh unwrap.

``--check`` decrypts and writes nothing (the program's pre-flight before a
restart). ``--remove`` deletes the keyfile (ExecStop: the key is on the node
only while MariaDB runs or is being restarted by systemd after a crash).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import pwd
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROG = "mariadb-kms-unwrap"
DEFAULT_CONF = "/etc/mariadb-kms/unwrap.conf"
MODES = ("kms-envelope", "aws-plugin")
KEY_ID = 1  # file_key_management key id 1: InnoDB, Aria, binlog and temporary files all use it
PLUGIN_KEY_FILES = ("aws-kms-key.1.1", "aws-kms-key.2.1")
DATA_KEY_BYTES = 32  # the blob is an AES_256 data key (GenerateDataKeyWithoutPlaintext, KeySpec=AES_256)
MAX_BLOB_BYTES = 6144  # KMS CiphertextBlob limit

# Cause classes: the one word an operator (and the program's pre-flight) acts on.
UNREACHABLE = "unreachable"
KMS_UNAVAILABLE = "kms-unavailable"
ACCESS_DENIED = "access-denied"
KEY_DISABLED = "key-disabled"
KEY_NOT_FOUND = "key-not-found"
INVALID_CIPHERTEXT = "invalid-ciphertext"
CREDENTIALS_MISSING = "credentials-missing"
CREDENTIALS_UNRECOGNIZED = "credentials-unrecognized"
CREDENTIALS_INSECURE = "credentials-insecure"
CONFIG = "config"
LOCAL = "local-error"
GCACHE_NOT_TMPFS = "gcache-not-tmpfs"
UNKNOWN = "unknown"

# Worth another try for as long as the caller waits: nothing on the node is wrong, KMS is away or busy.
RETRYABLE = frozenset({UNREACHABLE, KMS_UNAVAILABLE})

# IAM is eventually consistent: a brand-new access key can be refused as unknown for some seconds after
# CreateAccessKey (KMS answers UnrecognizedClientException, STS InvalidClientTokenId; "Changes that I make are
# not always immediately visible", https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html
# #troubleshoot_general_eventual-consistency). Such a refusal is retried while the credentials are younger
# than this many seconds (counted from the on-prem credentials file's mtime, or from this run's start where
# there is no file), and believed after that: a deleted key whose file is older is refused at once. The one
# definition, used by every caller: the unit at each start, the install path and the pre-flight (--check).
NEW_CREDENTIALS_WINDOW = 60.0

# --wait (the unit): the longest pause between two tries, so that MariaDB starts within
# WAIT_MAX_DELAY + one try's timeouts (3 s connect + 5 s read, two calls) of KMS answering again.
WAIT_MAX_DELAY = 15.0

EXIT_CODES = {
    UNREACHABLE: 10,
    KMS_UNAVAILABLE: 11,
    ACCESS_DENIED: 12,
    KEY_DISABLED: 13,
    KEY_NOT_FOUND: 14,
    INVALID_CIPHERTEXT: 15,
    CREDENTIALS_MISSING: 16,
    CREDENTIALS_INSECURE: 17,
    CONFIG: 18,
    LOCAL: 19,
    GCACHE_NOT_TMPFS: 20,
    UNKNOWN: 21,
    CREDENTIALS_UNRECOGNIZED: 22,
}

_CODE_CAUSES = {
    "AccessDeniedException": ACCESS_DENIED,
    "AccessDenied": ACCESS_DENIED,
    "UnrecognizedClientException": CREDENTIALS_UNRECOGNIZED,
    "InvalidClientTokenId": CREDENTIALS_UNRECOGNIZED,
    "InvalidSignatureException": ACCESS_DENIED,
    "SignatureDoesNotMatch": ACCESS_DENIED,
    "IncompleteSignature": ACCESS_DENIED,
    "ExpiredTokenException": ACCESS_DENIED,
    "ExpiredToken": ACCESS_DENIED,
    "InvalidGrantTokenException": ACCESS_DENIED,
    "DisabledException": KEY_DISABLED,
    "KMSInvalidStateException": KEY_DISABLED,
    "NotFoundException": KEY_NOT_FOUND,
    "InvalidCiphertextException": INVALID_CIPHERTEXT,
    "IncorrectKeyException": INVALID_CIPHERTEXT,
    "InvalidKeyUsageException": INVALID_CIPHERTEXT,
    "ThrottlingException": KMS_UNAVAILABLE,
    "Throttling": KMS_UNAVAILABLE,
    "RequestLimitExceeded": KMS_UNAVAILABLE,
    "KMSInternalException": KMS_UNAVAILABLE,
    "DependencyTimeoutException": KMS_UNAVAILABLE,
    "KeyUnavailableException": KMS_UNAVAILABLE,
    "ServiceUnavailable": KMS_UNAVAILABLE,
    "ServiceUnavailableException": KMS_UNAVAILABLE,
    "InternalFailure": KMS_UNAVAILABLE,
    "RequestTimeout": KMS_UNAVAILABLE,
    "RequestTimeoutException": KMS_UNAVAILABLE,
}


class UnwrapError(Exception):
    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    mode: str
    key_arn: str
    region: str
    blob: Path
    keyfile: Path
    datadir: Path
    gcache_dir: Path | None
    owner: str
    endpoint_url: str | None
    credentials_file: Path | None
    profile: str | None
    # The blob's encryption context ({} for a blob made without one): KMS refuses Decrypt without it.
    encryption_context: dict[str, str] = field(default_factory=dict)


def load_settings(path: Path) -> Settings:
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except (OSError, configparser.Error) as e:
        raise UnwrapError(CONFIG, f"cannot read {path}: {e}") from None
    if not cp.has_section("unwrap"):
        raise UnwrapError(CONFIG, f"{path} has no [unwrap] section")
    s = cp["unwrap"]
    missing = [k for k in ("mode", "key_arn", "region", "blob") if not s.get(k, "").strip()]
    if missing:
        raise UnwrapError(CONFIG, f"{path}: missing {', '.join(missing)}")
    mode = s["mode"].strip()
    if mode not in MODES:
        raise UnwrapError(CONFIG, f"{path}: mode {mode!r} is not one of {', '.join(MODES)}")
    creds = s.get("credentials_file", "").strip() or None
    gcache = s.get("gcache_dir", "").strip() or None
    context = parse_context(path, s.get("encryption_context", "").strip())
    return Settings(
        mode=mode,
        key_arn=s["key_arn"].strip(),
        region=s["region"].strip(),
        blob=Path(s["blob"].strip()),
        keyfile=Path(s.get("keyfile", "/run/mariadb-kms/keyfile").strip()),
        datadir=Path(s.get("datadir", "/var/lib/mysql").strip()),
        gcache_dir=Path(gcache) if gcache else None,
        owner=s.get("owner", "mysql").strip(),
        endpoint_url=s.get("endpoint_url", "").strip() or None,
        credentials_file=Path(creds) if creds else None,
        profile=(s.get("profile", "").strip() or "default") if creds else None,
        encryption_context=context,
    )


def parse_context(path: Path, text: str) -> dict[str, str]:
    """``encryption_context`` is one JSON object of strings; absent or empty means the blob has none."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UnwrapError(CONFIG, f"{path}: encryption_context is not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise UnwrapError(
            CONFIG, f"{path}: encryption_context must be a JSON object of non-empty strings, got {text!r}"
        )
    return dict(value)


# --------------------------------------------------------------------------
# Error classification and retry (unit-tested with botocore's Stubber)
# --------------------------------------------------------------------------


def classify(exc: BaseException) -> str:
    """The cause class of an exception raised while building a KMS client or calling Decrypt."""
    from botocore import exceptions as bce

    if isinstance(exc, UnwrapError):
        return exc.cause
    if isinstance(
        exc,
        bce.NoCredentialsError | bce.PartialCredentialsError | bce.ProfileNotFound | bce.CredentialRetrievalError,
    ):
        return CREDENTIALS_MISSING
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return UNREACHABLE
    if isinstance(exc, bce.ClientError):
        code, _ = error_code_and_message(exc)
        if code in _CODE_CAUSES:
            return _CODE_CAUSES[code]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or status == 429:
            return KMS_UNAVAILABLE
        if status in (401, 403):
            return ACCESS_DENIED
    return UNKNOWN


_XML_ERROR = re.compile(r"<Code>([^<]+)</Code>(?:\s*<Message>([^<]*)</Message>)?")


def error_code_and_message(exc: Any) -> tuple[str, str]:
    """A ClientError's code and message.

    An endpoint that answers a JSON-protocol call with an XML error body (moto 5.2.5 does, for its IAM
    authentication errors: ``<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code>…``) leaves
    botocore with the HTTP status as the code and the XML as the message; the real code is read from it.
    """
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if code.isdigit() and "<Code>" in message:
        found = _XML_ERROR.search(message)
        if found:
            return found.group(1), found.group(2) or ""
    return code, message


def describe(exc: BaseException) -> str:
    """A short, secret-free description: botocore error codes and messages name no key material."""
    from botocore import exceptions as bce

    if isinstance(exc, bce.ClientError):
        code, message = error_code_and_message(exc)
        return f"{code or 'ClientError'}: {message}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff for transient causes; ``attempts=None`` retries them for as long as it takes."""

    attempts: int | None = 5
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 16.0
    new_credentials_window: float = NEW_CREDENTIALS_WINDOW

    def delay(self, attempt: int) -> float:
        """The pause after failed try number ``attempt`` (1-based)."""
        return float(min(self.first_delay * self.factor ** (attempt - 1), self.max_delay))

    def delays(self) -> Iterator[float]:
        attempt = 1
        while self.attempts is None or attempt < self.attempts:
            yield self.delay(attempt)
            attempt += 1


# The unit's start (--wait): transient causes are retried until KMS answers, whatever the outage's length.
WAIT_POLICY = RetryPolicy(attempts=None, first_delay=1.0, factor=2.0, max_delay=WAIT_MAX_DELAY)


def call_with_retry(
    call: Callable[[], Any],
    *,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = log,
    clock: Callable[[], float] = time.monotonic,
    credentials_deadline: float | None = None,
) -> Any:
    """``call()``, retrying transient causes within ``policy`` and unrecognised credentials until
    ``credentials_deadline`` (a ``clock()`` value; by default the window from now); other errors and
    exhausted retries raise UnwrapError."""
    if credentials_deadline is None:
        credentials_deadline = clock() + policy.new_credentials_window
    delays = policy.delays()
    of = f"/{policy.attempts}" if policy.attempts is not None else ""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            cause = classify(exc)
            if cause == CREDENTIALS_UNRECOGNIZED:
                left = credentials_deadline - clock()
                if left > 0:
                    delay = min(policy.delay(attempt), left)
                    say(f"attempt {attempt}: {cause} ({describe(exc)}); a new access key can take up to "
                        f"{policy.new_credentials_window:g}s to be valid; retrying in {delay:g}s ({left:.0f}s left)")
                    sleep(delay)
                    continue
                raise UnwrapError(
                    cause,
                    f"{describe(exc)} (still refused after the {policy.new_credentials_window:g}s a new access key "
                    "may take to become valid: the key is deleted, inactive or wrong)",
                ) from None
            if cause in RETRYABLE:
                pause = next(delays, None)
                if pause is not None:
                    say(f"attempt {attempt}{of}: {cause} ({describe(exc)}); retrying in {pause:g}s")
                    sleep(pause)
                    continue
                raise UnwrapError(cause, f"{describe(exc)} (after {attempt} attempts)") from None
            raise UnwrapError(cause, describe(exc)) from None


USABLE_KEY_STATES = frozenset({"Enabled"})


def check_key_state(
    client: Any,
    key_arn: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = log,
    clock: Callable[[], float] = time.monotonic,
    credentials_deadline: float | None = None,
) -> None:
    """DescribeKey (nodes may): a disabled or deleted key is named as such, not as a failed Decrypt.

    A node whose policy does not grant DescribeKey goes on: Decrypt decides.
    """
    try:
        meta = call_with_retry(
            lambda: client.describe_key(KeyId=key_arn),
            policy=policy, sleep=sleep, say=say, clock=clock, credentials_deadline=credentials_deadline,
        )
    except UnwrapError as e:
        if e.cause == ACCESS_DENIED:
            return
        raise
    state = str(meta.get("KeyMetadata", {}).get("KeyState", ""))
    if state and state not in USABLE_KEY_STATES:
        raise UnwrapError(KEY_DISABLED, f"the key is {state}")


def decrypt_blob(
    client: Any,
    blob: bytes,
    key_arn: str,
    *,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = log,
    clock: Callable[[], float] = time.monotonic,
    credentials_deadline: float | None = None,
    encryption_context: dict[str, str] | None = None,
) -> bytes:
    """KMS Decrypt of ``blob`` under ``key_arn``, retrying network trouble; raises UnwrapError.

    ``encryption_context`` must be the one the blob was wrapped with: KMS answers
    InvalidCiphertextException otherwise, and the key policy allows nodes Decrypt only with it.
    """
    request: dict[str, Any] = {"CiphertextBlob": blob, "KeyId": key_arn}
    if encryption_context:
        request["EncryptionContext"] = dict(encryption_context)
    response = call_with_retry(
        lambda: client.decrypt(**request),
        policy=policy, sleep=sleep, say=say, clock=clock, credentials_deadline=credentials_deadline,
    )
    plaintext = bytes(response["Plaintext"])
    used = str(response.get("KeyId", ""))
    # KMS itself refuses a blob of another key when KeyId is given; this also holds where the
    # endpoint does not (moto ignores KeyId).
    if ":key/" in key_arn and used and used != key_arn:
        raise UnwrapError(INVALID_CIPHERTEXT, f"the blob belongs to {used}, not to the configured key")
    if len(plaintext) != DATA_KEY_BYTES:
        raise UnwrapError(
            INVALID_CIPHERTEXT, f"the blob decrypts to {len(plaintext)} bytes, not a {DATA_KEY_BYTES}-byte data key"
        )
    return plaintext


# --------------------------------------------------------------------------
# KMS client with the node's own credentials
# --------------------------------------------------------------------------


def check_credentials_file(path: Path) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise UnwrapError(CREDENTIALS_MISSING, f"credentials file {path} does not exist") from None
    except OSError as e:
        raise UnwrapError(CREDENTIALS_MISSING, f"cannot stat credentials file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnwrapError(CREDENTIALS_INSECURE, f"credentials file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise UnwrapError(
            CREDENTIALS_INSECURE,
            f"credentials file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group/world may read it; "
            "refusing (chmod 600)",
        )
    if st.st_uid != os.geteuid():
        raise UnwrapError(CREDENTIALS_INSECURE, f"credentials file {path} is owned by uid {st.st_uid}, not by us")


def make_client(settings: Settings) -> Any:
    import boto3
    import botocore.session
    from botocore.config import Config

    # One attempt per call: call_with_retry owns the retry policy, so its bounds are the only ones.
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=5)
    if settings.credentials_file is not None:
        check_credentials_file(settings.credentials_file)
        # Only this process sees these: an on-prem node has no instance metadata to fall back to,
        # and nothing but the named file may supply its credentials.
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        core = botocore.session.Session()
        core.set_config_variable("credentials_file", str(settings.credentials_file))
        core.set_config_variable("config_file", os.devnull)
        session = boto3.Session(botocore_session=core, profile_name=settings.profile)
    else:
        session = boto3.Session()
    return session.client("kms", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config)


# --------------------------------------------------------------------------
# Writing what MariaDB reads
# --------------------------------------------------------------------------


def owner_ids(owner: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        raise UnwrapError(LOCAL, f"user {owner!r} does not exist (is mariadb-server installed?)") from None
    return pw.pw_uid, pw.pw_gid


def _write_atomic(path: Path, data: bytes, uid: int, gid: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_keyfile(path: Path, plaintext: bytes, uid: int, gid: int) -> None:
    """file_key_management's format: ``<key id>;<hex key>``; the directory is root:<mysql> 0750."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chown(path.parent, os.geteuid(), gid)
    os.chmod(path.parent, 0o750)  # noqa: S103 - group mysql must traverse to read its 0600 keyfile
    _write_atomic(path, f"{KEY_ID};{plaintext.hex()}\n".encode("ascii"), uid, gid)


def remove_keyfile(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with open(path, "r+b", buffering=0) as f:
            f.write(b"\0" * size)
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def write_plugin_blobs(datadir: Path, blob: bytes, uid: int, gid: int, say: Callable[[str], None] = log) -> None:
    if not datadir.is_dir():
        datadir.mkdir(mode=0o750, parents=True)
        os.chown(datadir, uid, gid)
    for name in PLUGIN_KEY_FILES:
        _write_atomic(datadir / name, blob, uid, gid)
    strays = sorted(p.name for p in datadir.glob("aws-kms-key.*") if p.name not in PLUGIN_KEY_FILES)
    if strays:
        # Not deleted: data may be encrypted under them. Never minted by us; reported so a human looks.
        say(f"warning: {datadir} holds key files this node did not write: {', '.join(strays)}")


def filesystem_type(path: Path, mounts_text: str) -> str:
    """The type of the filesystem holding ``path`` (longest mount point prefix in /proc/mounts)."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type


def prepare_gcache_dir(path: Path, uid: int, gid: int, mounts_text: str) -> None:
    """Galera's gcache holds rows in plaintext: refuse to let MariaDB start unless it is on tmpfs."""
    fstype = filesystem_type(path, mounts_text)
    if fstype not in ("tmpfs", "ramfs"):
        raise UnwrapError(GCACHE_NOT_TMPFS, f"gcache dir {path} is on {fstype}, not tmpfs: it would hold rows at rest")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def read_blob(path: Path) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise UnwrapError(LOCAL, f"cannot read the data key blob {path}: {e.strerror}") from None
    if not blob or len(blob) > MAX_BLOB_BYTES:
        raise UnwrapError(INVALID_CIPHERTEXT, f"{path} holds {len(blob)} bytes: not a KMS ciphertext blob")
    return blob


def credentials_deadline(
    settings: Settings,
    window: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
) -> float:
    """The ``clock()`` value until which unrecognised credentials count as new (see NEW_CREDENTIALS_WINDOW)."""
    age = 0.0
    if settings.credentials_file is not None:
        try:
            age = max(0.0, now() - os.stat(settings.credentials_file).st_mtime)
        except OSError:
            age = 0.0  # make_client names a missing file
    return clock() + max(0.0, window - age)


# --------------------------------------------------------------------------
# systemd's restart after a crash: the key the node holds is kept
# --------------------------------------------------------------------------

CRASH_MARK = "restart-after-crash"
_KEYFILE_LINE = re.compile(rf"{KEY_ID};[0-9a-f]{{{2 * DATA_KEY_BYTES}}}\n")


def crash_mark(settings: Settings) -> Path:
    """Lives beside the keyfile, in the unit's RuntimeDirectory: tmpfs, so a reboot forgets it."""
    return settings.keyfile.parent / CRASH_MARK


def note_stop(settings: Settings, service_result: str) -> str:
    """mariadb.service's ExecStopPost: remember whether systemd is about to restart mariadbd after a crash.

    ``service_result`` is systemd's $SERVICE_RESULT: "success" for a requested stop, else how it ended.
    """
    mark = crash_mark(settings)
    if service_result in ("", "success"):
        mark.unlink(missing_ok=True)
        # Removed here, inside mariadb.service's own stop, and not only by the unwrap unit's ExecStop: that
        # stop is a separate job PartOf= queues, which `systemctl stop mariadb` does not wait for and which a
        # `systemctl start mariadb` right after it cancels, leaving the unit active with the old key.
        if settings.mode == "kms-envelope" and remove_keyfile(settings.keyfile):
            return f"MariaDB stopped cleanly: {settings.keyfile} removed; its next start unwraps the key with KMS"
        return "MariaDB stopped cleanly: its next start unwraps the key with KMS"
    if not mark.parent.is_dir():
        return f"mariadbd ended ({service_result}) but this node holds no key: its next start unwraps with KMS"
    _write_atomic(mark, f"{service_result}\n".encode("ascii", "replace"), os.geteuid(), os.getegid())
    return f"mariadbd ended abnormally ({service_result}): the key stays for systemd's restart, which does not call KMS"


def reuse_after_crash(settings: Settings, mounts_path: Path) -> str | None:
    """The start that follows a crash: the key this node already holds, KMS not called; None if there is none."""
    mark = crash_mark(settings)
    try:
        reason = mark.read_text(encoding="ascii", errors="replace").strip() or "crash"
    except FileNotFoundError:
        return None
    mark.unlink(missing_ok=True)
    uid, gid = owner_ids(settings.owner)
    if settings.mode == "kms-envelope":
        try:
            held = settings.keyfile.read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        if not _KEYFILE_LINE.fullmatch(held):
            return None
        # Written again, not just kept: systemd hands a preserved RuntimeDirectory back to the unit's user
        # (root) at start, recursively, and mariadbd (mysql) could no longer read the key.
        write_keyfile(settings.keyfile, bytes.fromhex(held.strip().split(";", 1)[1]), uid, gid)
    else:
        write_plugin_blobs(settings.datadir, read_blob(settings.blob), uid, gid)
    if settings.gcache_dir is not None:
        prepare_gcache_dir(settings.gcache_dir, uid, gid, mounts_path.read_text(encoding="utf-8"))
    return f"restart after mariadbd ended abnormally ({reason}): reusing the key this node holds; KMS not called"


# Causes that --ensure reports with an exit status mariadb.service must not restart on
# (RestartPreventExitStatus= in its drop-in): another try would refuse the same way.
PERMANENT_EXIT_CODES = tuple(sorted(code for cause, code in EXIT_CODES.items() if cause not in RETRYABLE))


def ensure_key(settings: Settings, unwrap_now: Callable[[], str]) -> str:
    """mariadb.service's ExecStartPre: the key must come from this start's unwrap, never from an earlier one.

    A requested stop removes the keyfile (``note_stop``), so a present keyfile was written by the unwrap
    unit for this start, or kept for systemd's restart after a crash. An absent one means the unwrap unit
    did not run: a start queued right after a stop cancels the unit's pending stop job, so systemd sees
    it active and starts MariaDB without it. Then the unwrap runs here, with the same checks.
    """
    if settings.mode != "kms-envelope":
        return "aws-plugin mode: MariaDB's plugin asks KMS itself"
    try:
        held = settings.keyfile.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        held = ""
    except OSError as e:
        raise UnwrapError(LOCAL, f"{e.filename or ''}: {e.strerror}") from None
    if _KEYFILE_LINE.fullmatch(held):
        return f"{settings.keyfile} was unwrapped for this start"
    log("the unwrap unit did not run for this start (a start right after a stop cancels its stop): "
        "unwrapping now")
    return unwrap_now()


def unwrap(
    settings: Settings,
    *,
    check: bool,
    client_factory: Callable[[Settings], Any] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = log,
    clock: Callable[[], float] = time.monotonic,
    mounts_path: Path = Path("/proc/mounts"),
) -> str:
    """Decrypt and (unless ``check``) write; returns the success message, raises UnwrapError."""
    if not check:
        try:
            reused = reuse_after_crash(settings, mounts_path)
        except OSError as e:
            raise UnwrapError(LOCAL, f"{e.filename or ''}: {e.strerror}") from None
        if reused is not None:
            return reused
    blob = read_blob(settings.blob)
    deadline = credentials_deadline(settings, policy.new_credentials_window, clock=clock)
    try:
        client = (client_factory or make_client)(settings)
    except UnwrapError:
        raise
    except Exception as exc:
        raise UnwrapError(classify(exc), describe(exc)) from None
    retry: dict[str, Any] = {"policy": policy, "sleep": sleep, "say": say, "clock": clock,
                             "credentials_deadline": deadline}
    check_key_state(client, settings.key_arn, **retry)
    plaintext = decrypt_blob(client, blob, settings.key_arn, encryption_context=settings.encryption_context, **retry)
    if check:
        return "check passed: the data key blob decrypts with this node's credentials (nothing written)"
    uid, gid = owner_ids(settings.owner)
    try:
        if settings.gcache_dir is not None:
            prepare_gcache_dir(settings.gcache_dir, uid, gid, mounts_path.read_text(encoding="utf-8"))
        if settings.mode == "kms-envelope":
            write_keyfile(settings.keyfile, plaintext, uid, gid)
            return f"data key unwrapped into {settings.keyfile} (key id {KEY_ID}, tmpfs, 0600 {settings.owner})"
        write_plugin_blobs(settings.datadir, blob, uid, gid)
        return f"data key blob placed for aws_key_management in {settings.datadir} ({', '.join(PLUGIN_KEY_FILES)})"
    except OSError as e:
        raise UnwrapError(LOCAL, f"{e.filename or ''}: {e.strerror}") from None


def help_epilog() -> str:
    # Built from EXIT_CODES so the help cannot drift from the codes the unit and the pre-flight act on.
    causes = "\n".join(f"             {code} {cause}" for cause, code in sorted(EXIT_CODES.items(), key=lambda c: c[1]))
    return (
        "exit status: 0 the key was unwrapped (or --check decrypted it, or --remove/--note-stop/--ensure did\n"
        "             their part);\n"
        "             1 an unexpected error (a Python traceback on stderr says where);\n"
        "             2 bad argument;\n"
        "             one per cause, named on stderr (docs/troubleshooting.md says what to do):\n"
        f"{causes}\n"
        "\n"
        "example: sudo mariadb-kms-unwrap --check\n"
        "         sudo systemctl start mariadb-kms-unwrap.service\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Unwrap the MariaDB cluster data key with AWS KMS.\n"
        "Run it as root on a mariadb-kms node; mariadb-kms-unwrap.service runs it before every start of MariaDB.",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--conf", type=Path, default=Path(DEFAULT_CONF), help=f"settings file ({DEFAULT_CONF})")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="decrypt only; write nothing")
    action.add_argument(
        "--wait", action="store_true",
        help="retry an unreachable or busy KMS for as long as it takes (the unit's ExecStart)",
    )
    action.add_argument("--remove", action="store_true", help="delete the keyfile (the unit's ExecStop)")
    action.add_argument(
        "--ensure", action="store_true",
        help="unwrap now unless this start's key is in place (mariadb.service's ExecStartPre)",
    )
    action.add_argument(
        "--note-stop", action="store_true",
        help="record how mariadbd ended, from $SERVICE_RESULT (mariadb.service's ExecStopPost)",
    )
    args = parser.parse_args(argv)
    os.umask(0o077)
    key_arn = "(unknown key)"
    try:
        settings = load_settings(args.conf)
        key_arn = settings.key_arn
        if args.note_stop:
            try:
                log(note_stop(settings, os.environ.get("SERVICE_RESULT", "")))
            except OSError as e:
                log(f"could not record how mariadbd ended ({e.strerror}): its next start unwraps with KMS")
            return 0
        if args.remove:
            if crash_mark(settings).exists():
                log("mariadbd ended abnormally: the key stays for systemd's restart")
            elif settings.mode == "kms-envelope" and remove_keyfile(settings.keyfile):
                log(f"removed {settings.keyfile}")
            return 0
        if args.ensure:
            log(ensure_key(settings, lambda: unwrap(settings, check=False)))
            return 0
        policy = WAIT_POLICY if args.wait else RetryPolicy()
        log(unwrap(settings, check=args.check, policy=policy))
        return 0
    except UnwrapError as e:
        outcome = "pre-flight check failed" if args.check else "MariaDB will not start"
        log(f"FAILED cause={e.cause} key={key_arn}: {e.detail}; {outcome}")
        return EXIT_CODES.get(e.cause, EXIT_CODES[UNKNOWN])


if __name__ == "__main__":
    sys.exit(main())
