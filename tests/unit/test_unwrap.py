"""mariadb-kms-unwrap: error classes, bounded retry, and real round trips against moto's KMS server.

Policy denials cannot happen in moto (it enforces no key policy), so they are
driven through botocore's Stubber; disabled keys, corrupt blobs and an
unreachable endpoint are real.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from node_scripts import load_node_script

REPO = Path(__file__).resolve().parents[2]
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
REGION = "eu-west-1"
FAKE_SECRET = "moto-only-unwrap-secret-5d1e"


unwrap = load_node_script("mariadb_kms_unwrap", REPO / "node" / "mariadb_kms_unwrap.py")


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _stubbed_client() -> Any:
    return boto3.client(
        "kms", region_name=REGION, aws_access_key_id="AKIASTUB", aws_secret_access_key="stub-only"
    )


def _plaintext() -> bytes:
    return bytes(range(32))


# --------------------------------------------------------------------------
# Classification and retry (Stubber)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "cause"),
    [
        ("AccessDeniedException", 400, "access-denied"),
        ("DisabledException", 400, "key-disabled"),
        ("KMSInvalidStateException", 400, "key-disabled"),
        ("InvalidCiphertextException", 400, "invalid-ciphertext"),
        ("IncorrectKeyException", 400, "invalid-ciphertext"),
        ("NotFoundException", 400, "key-not-found"),
    ],
)
def test_permanent_errors_are_classified_and_not_retried(code: str, status: int, cause: str) -> None:
    client = _stubbed_client()
    sleeps = Sleeps()
    with Stubber(client) as stub:
        stub.add_client_error(
            "decrypt", service_error_code=code, service_message="denied by test", http_status_code=status
        )
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=sleeps, say=lambda _m: None)
        stub.assert_no_pending_responses()
    assert err.value.cause == cause
    assert code in err.value.detail
    assert sleeps.calls == []


def test_throttling_is_retried_with_backoff_then_succeeds() -> None:
    client = _stubbed_client()
    sleeps = Sleeps()
    said: list[str] = []
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code="ThrottlingException", http_status_code=400)
        stub.add_client_error("decrypt", service_error_code="KMSInternalException", http_status_code=500)
        stub.add_response("decrypt", {"KeyId": KEY_ARN, "Plaintext": _plaintext()}, {"CiphertextBlob": b"blob",
                                                                                     "KeyId": KEY_ARN})
        assert unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=sleeps, say=said.append) == _plaintext()
    assert sleeps.calls == [1.0, 2.0]
    assert len(said) == 2 and "kms-unavailable" in said[0]


def test_5xx_with_an_unknown_code_is_retried_a_bounded_number_of_times() -> None:
    client = _stubbed_client()
    sleeps = Sleeps()
    policy = unwrap.RetryPolicy(attempts=4, first_delay=0.5, factor=3.0, max_delay=2.0)
    with Stubber(client) as stub:
        for _ in range(4):
            stub.add_client_error("decrypt", service_error_code="SomethingNew", http_status_code=503)
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, policy=policy, sleep=sleeps, say=lambda _m: None)
        stub.assert_no_pending_responses()
    assert err.value.cause == "kms-unavailable"
    assert "after 4 attempts" in err.value.detail
    assert sleeps.calls == [0.5, 1.5, 2.0]  # backoff, capped


def test_a_blob_of_another_key_is_refused_even_if_the_endpoint_ignores_key_id() -> None:
    client = _stubbed_client()
    other = KEY_ARN.replace("1234abcd", "99999999")
    with Stubber(client) as stub:
        stub.add_response("decrypt", {"KeyId": other, "Plaintext": _plaintext()})
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=Sleeps(), say=lambda _m: None)
    assert err.value.cause == "invalid-ciphertext"


def test_a_plaintext_that_is_not_a_256_bit_key_is_refused() -> None:
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_response("decrypt", {"KeyId": KEY_ARN, "Plaintext": b"sixteen bytes..."})
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=Sleeps(), say=lambda _m: None)
    assert err.value.cause == "invalid-ciphertext"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: connections are refused


def test_unreachable_endpoint_is_retried_then_reported_unreachable(tmp_path: Path) -> None:
    settings = _settings(tmp_path, endpoint=f"http://127.0.0.1:{_closed_port()}", blob=b"x" * 64)
    sleeps = Sleeps()
    with pytest.raises(unwrap.UnwrapError) as err:
        unwrap.unwrap(settings, check=True, sleep=sleeps, policy=unwrap.RetryPolicy(attempts=3))
    assert err.value.cause == "unreachable"
    assert sleeps.calls == [1.0, 2.0]
    assert "EndpointConnectionError" in err.value.detail or "Could not connect" in err.value.detail


class FakeTime:
    """A monotonic clock that only sleeping moves: retry windows tested without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _unrecognized_then_ok(stub: Stubber, refusals: int, code: str = "UnrecognizedClientException") -> None:
    for _ in range(refusals):
        stub.add_client_error("decrypt", service_error_code=code, http_status_code=400,
                              service_message="The security token included in the request is invalid.")
    stub.add_response("decrypt", {"KeyId": KEY_ARN, "Plaintext": _plaintext()})


@pytest.mark.parametrize("code", ["UnrecognizedClientException", "InvalidClientTokenId"])
def test_a_new_access_key_is_retried_within_the_window_then_works(code: str) -> None:
    client = _stubbed_client()
    fake = FakeTime()
    said: list[str] = []
    with Stubber(client) as stub:
        _unrecognized_then_ok(stub, 3, code)
        got = unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=fake.sleep, say=said.append, clock=fake.clock,
                                  credentials_deadline=fake.now + unwrap.NEW_CREDENTIALS_WINDOW)
        stub.assert_no_pending_responses()
    assert got == _plaintext()
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert len(said) == 3 and all("credentials-unrecognized" in m and code in m for m in said)


def test_control_without_the_window_the_same_refusals_fail() -> None:
    client = _stubbed_client()
    fake = FakeTime()
    with Stubber(client) as stub:
        _unrecognized_then_ok(stub, 3)
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=fake.sleep, say=lambda _m: None, clock=fake.clock,
                                credentials_deadline=fake.now)
    assert err.value.cause == "credentials-unrecognized"
    assert fake.sleeps == []


def test_credentials_still_refused_after_the_window_are_believed() -> None:
    client = _stubbed_client()
    fake = FakeTime()
    with Stubber(client) as stub:
        _unrecognized_then_ok(stub, 50)
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=fake.sleep, say=lambda _m: None, clock=fake.clock)
    assert err.value.cause == "credentials-unrecognized"
    assert sum(fake.sleeps) == pytest.approx(unwrap.NEW_CREDENTIALS_WINDOW)
    assert max(fake.sleeps) <= unwrap.RetryPolicy().max_delay
    assert "deleted, inactive or wrong" in err.value.detail


def _stub_factory(client: Any) -> Any:
    return lambda _settings: client


def test_the_window_counts_from_the_credentials_file_so_an_old_deleted_key_is_refused_at_once(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, endpoint="http://127.0.0.1:9", blob=b"x" * 64)
    assert settings.credentials_file is not None
    # Written ten minutes ago: not a new key, so "unrecognised" means deleted.
    old = time.time() - 600
    os.utime(settings.credentials_file, (old, old))
    fake = FakeTime()
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_response("describe_key", {"KeyMetadata": {"KeyId": KEY_ARN, "KeyState": "Enabled"}})
        _unrecognized_then_ok(stub, 1)
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.unwrap(settings, check=True, client_factory=_stub_factory(client), sleep=fake.sleep,
                          say=lambda _m: None, clock=fake.clock)
    assert err.value.cause == "credentials-unrecognized" and fake.sleeps == []
    # Control: the same refusal with a file written just now is waited out.
    os.utime(settings.credentials_file, None)
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_response("describe_key", {"KeyMetadata": {"KeyId": KEY_ARN, "KeyState": "Enabled"}})
        _unrecognized_then_ok(stub, 1)
        message = unwrap.unwrap(settings, check=True, client_factory=_stub_factory(client), sleep=fake.sleep,
                                say=lambda _m: None, clock=fake.clock)
    assert "check passed" in message and fake.sleeps == [1.0]


def test_install_path_and_pre_flight_share_the_one_window() -> None:
    # Both run without --wait: the default policy, whose window is the one constant.
    assert unwrap.RetryPolicy().new_credentials_window == unwrap.NEW_CREDENTIALS_WINDOW
    assert unwrap.WAIT_POLICY.new_credentials_window == unwrap.NEW_CREDENTIALS_WINDOW
    # The pre-flight's wrapper retries only KMS trouble; a second window for credentials there would double it.
    roll = (REPO / "node" / "mariadb-kms-roll").read_text()
    retryable = re.search(r'^RETRYABLE="([^"]*)"', roll, re.M)
    assert retryable is not None
    codes = {int(c) for c in retryable.group(1).split()}
    assert codes == {unwrap.EXIT_CODES["unreachable"], unwrap.EXIT_CODES["kms-unavailable"]}


# --------------------------------------------------------------------------
# Self-healing start (--wait)
# --------------------------------------------------------------------------


def test_wait_policy_retries_an_outage_of_any_length_with_a_capped_pause() -> None:
    client = _stubbed_client()
    fake = FakeTime()
    with Stubber(client) as stub:
        for i in range(40):  # ten minutes and more of an unreachable endpoint, then throttling
            code = "ServiceUnavailableException" if i % 2 else "ThrottlingException"
            stub.add_client_error("decrypt", service_error_code=code, http_status_code=503)
        stub.add_response("decrypt", {"KeyId": KEY_ARN, "Plaintext": _plaintext()})
        got = unwrap.decrypt_blob(client, b"blob", KEY_ARN, policy=unwrap.WAIT_POLICY, sleep=fake.sleep,
                                  say=lambda _m: None, clock=fake.clock)
        stub.assert_no_pending_responses()
    assert got == _plaintext()
    assert sum(fake.sleeps) > 500
    assert max(fake.sleeps) == unwrap.WAIT_MAX_DELAY
    # Within a minute of KMS answering: the last pause plus one try's timeouts (3 s + 5 s, two calls).
    assert unwrap.WAIT_MAX_DELAY + 2 * (3 + 5) < 60


def test_control_the_bounded_policy_gives_up_on_the_same_outage() -> None:
    client = _stubbed_client()
    fake = FakeTime()
    with Stubber(client) as stub:
        for _ in range(40):
            stub.add_client_error("decrypt", service_error_code="ThrottlingException", http_status_code=400)
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, sleep=fake.sleep, say=lambda _m: None, clock=fake.clock)
    assert err.value.cause == "kms-unavailable" and len(fake.sleeps) == 4


@pytest.mark.parametrize(
    ("code", "cause"),
    [("AccessDeniedException", "access-denied"), ("DisabledException", "key-disabled"),
     ("InvalidCiphertextException", "invalid-ciphertext"), ("NotFoundException", "key-not-found")],
)
def test_wait_policy_refuses_a_permanent_cause_at_once(code: str, cause: str) -> None:
    client = _stubbed_client()
    fake = FakeTime()
    with Stubber(client) as stub:
        stub.add_client_error("decrypt", service_error_code=code, http_status_code=400)
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.decrypt_blob(client, b"blob", KEY_ARN, policy=unwrap.WAIT_POLICY, sleep=fake.sleep,
                                say=lambda _m: None, clock=fake.clock)
    assert err.value.cause == cause and fake.sleeps == []


def test_main_wait_prints_one_failed_line_for_a_permanent_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, endpoint="http://127.0.0.1:9", blob=b"x" * 64)
    client = _stubbed_client()
    monkeypatch.setattr(unwrap, "make_client", lambda _s: client)
    with Stubber(client) as stub:
        stub.add_response("describe_key", {"KeyMetadata": {"KeyId": KEY_ARN, "KeyState": "Disabled"}})
        rc = _run(tmp_path / "unwrap.conf", "--wait")
    assert rc == unwrap.EXIT_CODES["key-disabled"]
    failed = [line for line in capsys.readouterr().err.splitlines() if "FAILED" in line]
    assert failed == [f"mariadb-kms-unwrap: FAILED cause=key-disabled key={settings.key_arn}: the key is Disabled; "
                      "MariaDB will not start"]


# --------------------------------------------------------------------------
# systemd's restart after a crash reuses the key held; a requested stop removes it
# --------------------------------------------------------------------------


def _unwrapped_node(tmp_path: Path) -> tuple[Any, Path]:
    """A node whose key was unwrapped (through a stubbed KMS): its settings and keyfile."""
    settings = _settings(tmp_path, endpoint="http://127.0.0.1:9", blob=b"x" * 64)
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_response("describe_key", {"KeyMetadata": {"KeyId": KEY_ARN, "KeyState": "Enabled"}})
        stub.add_response("decrypt", {"KeyId": KEY_ARN, "Plaintext": _plaintext()})
        unwrap.unwrap(settings, check=False, client_factory=_stub_factory(client), sleep=Sleeps(), say=lambda _m: None)
    assert settings.keyfile.exists()
    return settings, settings.keyfile


class KmsCalled(BaseException):
    """A BaseException: the unwrap must not catch it and classify it as a KMS error."""



def _no_kms(_settings: Any) -> Any:
    raise KmsCalled


@pytest.mark.parametrize("result", ["signal", "exit-code", "core-dump", "oom-kill"])
def test_a_crash_restart_keeps_and_reuses_the_key_without_kms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, result: str
) -> None:
    settings, keyfile = _unwrapped_node(tmp_path)
    held = keyfile.read_text()
    conf = str(tmp_path / "unwrap.conf")
    monkeypatch.setenv("SERVICE_RESULT", result)
    assert _run(Path(conf), "--note-stop") == 0  # mariadb.service's ExecStopPost
    assert _run(Path(conf), "--remove") == 0  # the unwrap unit's ExecStop, carried by PartOf's restart
    assert keyfile.read_text() == held
    message = unwrap.unwrap(settings, check=False, client_factory=_no_kms)
    assert "KMS not called" in message and result in message
    assert keyfile.read_text() == held
    assert not unwrap.crash_mark(settings).exists()  # used once: the next start asks KMS again
    with pytest.raises(KmsCalled):
        unwrap.unwrap(settings, check=False, client_factory=_no_kms)


def test_control_a_requested_stop_removes_the_key_and_the_next_start_asks_kms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, keyfile = _unwrapped_node(tmp_path)
    conf = tmp_path / "unwrap.conf"
    monkeypatch.setenv("SERVICE_RESULT", "signal")
    assert _run(conf, "--note-stop") == 0
    monkeypatch.setenv("SERVICE_RESULT", "success")  # a later, requested stop clears the note
    assert _run(conf, "--note-stop") == 0
    assert _run(conf, "--remove") == 0
    assert not keyfile.exists()
    with pytest.raises(KmsCalled):
        unwrap.unwrap(settings, check=False, client_factory=_no_kms)


def test_a_requested_stop_removes_the_key_inside_mariadbs_own_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unwrap unit's ExecStop may never run: a start right after the stop cancels that queued job.
    _settings, keyfile = _unwrapped_node(tmp_path)
    monkeypatch.setenv("SERVICE_RESULT", "success")
    assert _run(tmp_path / "unwrap.conf", "--note-stop") == 0
    assert not keyfile.exists()


def test_ensure_keeps_this_starts_key_and_unwraps_when_the_unit_did_not_run(tmp_path: Path) -> None:
    settings, keyfile = _unwrapped_node(tmp_path)
    calls: list[str] = []

    def unwrap_now() -> str:
        calls.append("kms")
        return "unwrapped"

    assert "unwrapped for this start" in unwrap.ensure_key(settings, unwrap_now)
    assert calls == []
    unwrap.note_stop(settings, "success")  # a requested stop; the unit's own stop job was cancelled
    assert unwrap.ensure_key(settings, unwrap_now) == "unwrapped"
    keyfile.write_text("1;not-a-key\n")
    assert unwrap.ensure_key(settings, unwrap_now) == "unwrapped"
    assert calls == ["kms", "kms"]
    plugin = dataclasses.replace(settings, mode="aws-plugin")
    assert "plugin asks KMS itself" in unwrap.ensure_key(plugin, unwrap_now)
    assert calls == ["kms", "kms"]


def test_ensure_refuses_a_disabled_key_with_a_status_mariadb_does_not_restart_on(tmp_path: Path) -> None:
    settings, keyfile = _unwrapped_node(tmp_path)
    unwrap.note_stop(settings, "success")
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_client_error("describe_key", service_error_code="DisabledException", http_status_code=400)
        with pytest.raises(unwrap.UnwrapError) as refused:
            unwrap.ensure_key(settings, lambda: unwrap.unwrap(
                settings, check=False, client_factory=_stub_factory(client), sleep=Sleeps(), say=lambda _m: None))
    assert refused.value.cause == "key-disabled" and not keyfile.exists()
    assert unwrap.EXIT_CODES["key-disabled"] in unwrap.PERMANENT_EXIT_CODES
    assert unwrap.EXIT_CODES["unreachable"] not in unwrap.PERMANENT_EXIT_CODES


def test_mariadb_unwraps_again_at_a_start_the_unwrap_unit_missed_and_never_restarts_a_refusal() -> None:
    dropin = (REPO / "node" / "mariadb.service.d" / "50-mariadb-kms.conf").read_text().splitlines()
    assert "ExecStartPre=+/usr/local/sbin/mariadb-kms-unwrap --ensure" in dropin
    prevent = [line.split("=", 1)[1].split() for line in dropin if line.startswith("RestartPreventExitStatus=")]
    assert prevent == [[str(code) for code in unwrap.PERMANENT_EXIT_CODES]]
    # The datadir key is derived from the keyfile before MariaDB starts: the same check runs there first.
    key_unit = (REPO / "node" / "mariadb-kms-datadir-key.service").read_text().splitlines()
    assert "ExecStartPre=+/usr/local/sbin/mariadb-kms-unwrap --ensure" in key_unit


def test_a_reused_key_is_handed_back_to_its_owner(tmp_path: Path) -> None:
    # systemd gives a preserved RuntimeDirectory back to the unit's user (root) at start, recursively.
    settings, keyfile = _unwrapped_node(tmp_path)
    unwrap.note_stop(settings, "signal")
    keyfile.chmod(0o644)
    keyfile.parent.chmod(0o700)
    assert "KMS not called" in unwrap.unwrap(settings, check=False, client_factory=_no_kms)
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyfile.parent.stat().st_mode) == 0o750


def test_a_crash_note_with_a_damaged_keyfile_falls_back_to_kms(tmp_path: Path) -> None:
    settings, keyfile = _unwrapped_node(tmp_path)
    unwrap.note_stop(settings, "signal")
    keyfile.write_text("1;not-a-key\n")
    with pytest.raises(KmsCalled):
        unwrap.unwrap(settings, check=False, client_factory=_no_kms)


def test_check_never_reuses_a_held_key(tmp_path: Path) -> None:
    settings, _ = _unwrapped_node(tmp_path)
    unwrap.note_stop(settings, "signal")
    with pytest.raises(KmsCalled):
        unwrap.unwrap(settings, check=True, client_factory=_no_kms)


def test_units_wait_for_kms_without_a_start_timeout_and_note_how_mariadbd_ended() -> None:
    unit = (REPO / "node" / "mariadb-kms-unwrap.service").read_text()
    active = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.lstrip().startswith("#")
    )
    assert active["ExecStart"] == "/usr/local/sbin/mariadb-kms-unwrap --wait"
    assert active["TimeoutStartSec"] == "infinity"  # a start timeout would end the wait and fail MariaDB's start
    assert active["RuntimeDirectoryPreserve"] == "restart"  # the held key survives PartOf's restart
    assert "Restart" not in active  # healing is inside the one start, never by restarting units
    dropin = (REPO / "node" / "mariadb.service.d" / "50-mariadb-kms.conf").read_text()
    assert "ExecStopPost=-+/usr/local/sbin/mariadb-kms-unwrap --note-stop" in dropin.splitlines()


def test_classify_credentials_and_unknown() -> None:
    from botocore import exceptions as bce

    assert unwrap.classify(bce.NoCredentialsError()) == "credentials-missing"
    assert unwrap.classify(bce.ProfileNotFound(profile="x")) == "credentials-missing"
    assert unwrap.classify(bce.ReadTimeoutError(endpoint_url="https://kms")) == "unreachable"
    assert unwrap.classify(ValueError("odd")) == "unknown"


# --------------------------------------------------------------------------
# moto's server
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = Path(sys.executable).with_name("moto_server")
    found = str(binary) if binary.exists() else shutil.which("moto_server")
    if not found:
        pytest.fail("moto_server not found: install moto[server] (requirements-dev.txt)")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([found, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if server.poll() is not None:
                    pytest.fail(f"moto_server exited: {log_path.read_text(errors='replace')}")
                try:
                    with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):  # noqa: S310 - loopback
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail("moto_server did not answer within 30 s")
                    time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The node's chain must not find the developer's credentials; what make_client sets is undone.
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _kms(url: str) -> Any:
    return boto3.client(
        "kms", region_name=REGION, endpoint_url=url, aws_access_key_id="AKIAMOTO", aws_secret_access_key=FAKE_SECRET
    )


def _key_and_blob(url: str) -> tuple[str, bytes, bytes]:
    """A fresh moto key, a blob wrapped under it, and (for assertions only) the blob's plaintext."""
    kms = _kms(url)
    arn = str(kms.create_key(Description="unwrap test")["KeyMetadata"]["Arn"])
    blob = bytes(kms.generate_data_key_without_plaintext(KeyId=arn, KeySpec="AES_256")["CiphertextBlob"])
    plaintext = bytes(kms.decrypt(CiphertextBlob=blob, KeyId=arn)["Plaintext"])
    return arn, blob, plaintext


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _write_credentials(path: Path, mode: int = 0o600) -> Path:
    path.write_text(f"[mariadb-kms]\naws_access_key_id = AKIAMOTONODE\naws_secret_access_key = {FAKE_SECRET}\n")
    path.chmod(mode)
    return path


def _conf(
    tmp_path: Path,
    *,
    key_arn: str,
    blob: bytes,
    endpoint: str,
    mode: str = "kms-envelope",
    credentials: Path | None = None,
    gcache_dir: Path | None = None,
) -> Path:
    (tmp_path / "datakey.blob").write_bytes(blob)
    lines = [
        "[unwrap]",
        f"mode = {mode}",
        f"key_arn = {key_arn}",
        f"region = {REGION}",
        f"blob = {tmp_path / 'datakey.blob'}",
        f"keyfile = {tmp_path / 'run' / 'keyfile'}",
        f"datadir = {tmp_path / 'datadir'}",
        f"owner = {_me()}",
        f"endpoint_url = {endpoint}",
    ]
    if credentials is not None:
        lines += [f"credentials_file = {credentials}", "profile = mariadb-kms"]
    if gcache_dir is not None:
        lines.append(f"gcache_dir = {gcache_dir}")
    conf = tmp_path / "unwrap.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _settings(tmp_path: Path, *, endpoint: str, blob: bytes) -> Any:
    creds = _write_credentials(tmp_path / "aws-credentials")
    return unwrap.load_settings(_conf(tmp_path, key_arn=KEY_ARN, blob=blob, endpoint=endpoint, credentials=creds))


def _run(conf: Path, *extra: str) -> int:
    return int(unwrap.main(["--conf", str(conf), *extra]))


def test_round_trip_writes_the_keyfile_0600_and_prints_no_secret(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arn, blob, plaintext = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds)
    assert _run(conf) == 0
    keyfile = tmp_path / "run" / "keyfile"
    content = keyfile.read_text()
    assert re.fullmatch(r"1;[0-9a-f]{64}\n", content)
    assert content.strip() == f"1;{plaintext.hex()}"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert keyfile.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(keyfile.parent.stat().st_mode) == 0o750
    assert [p.name for p in keyfile.parent.iterdir()] == ["keyfile"]  # no temporary file left behind
    out = capsys.readouterr()
    for secret in (plaintext.hex(), plaintext.hex().upper(), FAKE_SECRET):
        assert secret not in out.out + out.err
    assert "unwrapped" in out.err


def test_instance_profile_style_default_chain_works_without_a_credentials_file(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn, blob, plaintext = _key_and_blob(moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMOTOEC2")  # stands in for the instance profile
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url)
    assert _run(conf) == 0
    assert (tmp_path / "run" / "keyfile").read_text().strip() == f"1;{plaintext.hex()}"


def test_check_writes_nothing(moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds)
    assert _run(conf, "--check") == 0
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "datadir").exists()
    assert "check passed" in capsys.readouterr().err


def test_remove_deletes_the_keyfile(moto_url: str, tmp_path: Path) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds)
    assert _run(conf) == 0
    assert _run(conf, "--remove") == 0
    assert not (tmp_path / "run" / "keyfile").exists()
    assert _run(conf, "--remove") == 0  # idempotent


def test_corrupt_blob_is_invalid_ciphertext_and_nothing_is_written(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    corrupt = bytes([blob[0] ^ 0xFF]) + blob[1:-8] + bytes(8)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=corrupt, endpoint=moto_url, credentials=creds)
    assert _run(conf) == unwrap.EXIT_CODES["invalid-ciphertext"]
    assert not (tmp_path / "run" / "keyfile").exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if "FAILED" in line]
    assert len(lines) == 1
    assert "cause=invalid-ciphertext" in lines[0] and arn in lines[0]


def test_disabled_key_is_refused(moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    _kms(moto_url).disable_key(KeyId=arn.rsplit("/", 1)[1])  # moto's server takes the key id, not the ARN
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds)
    assert _run(conf) == unwrap.EXIT_CODES["key-disabled"]
    assert not (tmp_path / "run" / "keyfile").exists()
    err = capsys.readouterr().err
    assert f"FAILED cause=key-disabled key={arn}" in err


def test_blob_of_another_moto_key_is_refused(moto_url: str, tmp_path: Path) -> None:
    arn, _, _ = _key_and_blob(moto_url)
    _, other_blob, _ = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=other_blob, endpoint=moto_url, credentials=creds)
    # AWS answers IncorrectKeyException, moto AccessDeniedException; both refuse, and nothing is written.
    assert _run(conf) in (unwrap.EXIT_CODES["invalid-ciphertext"], unwrap.EXIT_CODES["access-denied"])
    assert not (tmp_path / "run" / "keyfile").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_group_or_world_readable_credentials_are_refused(moto_url: str, tmp_path: Path, mode: int) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials", mode)
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds)
    assert _run(conf) == unwrap.EXIT_CODES["credentials-insecure"]
    assert not (tmp_path / "run").exists()


def test_missing_credentials_file_or_profile(moto_url: str, tmp_path: Path) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=tmp_path / "nope")
    assert _run(conf) == unwrap.EXIT_CODES["credentials-missing"]
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[someone-else]\naws_access_key_id = AKIAX\naws_secret_access_key = {FAKE_SECRET}\n")
    creds.chmod(0o600)
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds)
    assert _run(conf) == unwrap.EXIT_CODES["credentials-missing"]


def test_aws_plugin_mode_places_the_raw_blob_in_the_datadir(moto_url: str, tmp_path: Path) -> None:
    arn, blob, plaintext = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds, mode="aws-plugin")
    assert _run(conf) == 0
    datadir = tmp_path / "datadir"
    for name in ("aws-kms-key.1.1", "aws-kms-key.2.1"):
        assert (datadir / name).read_bytes() == blob
        assert stat.S_IMODE((datadir / name).stat().st_mode) == 0o600
    assert not (tmp_path / "run" / "keyfile").exists()  # the plaintext is never written in this mode
    assert plaintext not in b"".join(p.read_bytes() for p in datadir.iterdir())


def test_gcache_dir_must_be_tmpfs(moto_url: str, tmp_path: Path) -> None:
    arn, blob, _ = _key_and_blob(moto_url)
    creds = _write_credentials(tmp_path / "aws-credentials")
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=moto_url, credentials=creds, gcache_dir=tmp_path / "gc")
    mounts = Path("/proc/mounts").read_text()
    if unwrap.filesystem_type(tmp_path, mounts) in ("tmpfs", "ramfs"):
        pytest.skip("the test's temporary directory is itself on tmpfs")
    assert _run(conf) == unwrap.EXIT_CODES["gcache-not-tmpfs"]
    assert not (tmp_path / "run" / "keyfile").exists()


def test_gcache_dir_on_tmpfs_is_handed_to_the_owner(tmp_path: Path) -> None:
    mounts = "tmpfs /run tmpfs rw 0 0\n/dev/vda / ext4 rw 0 0\n"
    target = tmp_path / "gcache"
    with pytest.raises(unwrap.UnwrapError) as err:
        unwrap.prepare_gcache_dir(target, os.geteuid(), os.getegid(), mounts)
    assert err.value.cause == "gcache-not-tmpfs"
    fake_tmpfs = f"tmpfs {tmp_path} tmpfs rw 0 0\n/dev/vda / ext4 rw 0 0\n"
    unwrap.prepare_gcache_dir(target, os.geteuid(), os.getegid(), fake_tmpfs)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_filesystem_type_takes_the_longest_mount_point() -> None:
    mounts = (
        "/dev/vda / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\ntmpfs /run/galera tmpfs rw 0 0\n/dev/x /runner xfs rw 0 0\n"
    )
    assert unwrap.filesystem_type(Path("/run/galera/galera.cache"), mounts) == "tmpfs"
    assert unwrap.filesystem_type(Path("/runner/x"), mounts) == "xfs"
    assert unwrap.filesystem_type(Path("/var/lib/mysql"), mounts) == "ext4"


def test_bad_settings_are_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "unwrap.conf"
    conf.write_text("[unwrap]\nmode = plaintext\nkey_arn = x\nregion = eu-west-1\nblob = /nonexistent\n")
    assert _run(conf) == unwrap.EXIT_CODES["config"]
    assert "cause=config" in capsys.readouterr().err
    assert _run(tmp_path / "absent.conf") == unwrap.EXIT_CODES["config"]


def test_unit_file_passes_no_secret_through_the_environment() -> None:
    unit = (REPO / "node" / "mariadb-kms-unwrap.service").read_text()
    active = [line for line in unit.splitlines() if not line.lstrip().startswith("#")]
    assert not any(line.startswith(("Environment=", "EnvironmentFile=")) for line in active)


@pytest.mark.parametrize("state", ["Disabled", "PendingDeletion", "Unavailable"])
def test_describe_key_names_a_key_that_is_not_enabled(state: str) -> None:
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_response("describe_key", {"KeyMetadata": {"KeyId": KEY_ARN, "KeyState": state}}, {"KeyId": KEY_ARN})
        with pytest.raises(unwrap.UnwrapError) as err:
            unwrap.check_key_state(client, KEY_ARN, sleep=Sleeps(), say=lambda _m: None)
    assert err.value.cause == "key-disabled"
    assert state in err.value.detail


def test_describe_key_denied_leaves_the_decision_to_decrypt() -> None:
    client = _stubbed_client()
    with Stubber(client) as stub:
        stub.add_client_error("describe_key", service_error_code="AccessDeniedException", http_status_code=400)
        unwrap.check_key_state(client, KEY_ARN, sleep=Sleeps(), say=lambda _m: None)
        stub.add_response("describe_key", {"KeyMetadata": {"KeyId": KEY_ARN, "KeyState": "Enabled"}})
        unwrap.check_key_state(client, KEY_ARN, sleep=Sleeps(), say=lambda _m: None)
        stub.assert_no_pending_responses()


# --------------------------------------------------------------------------
# moto with IAM authentication on: a deleted access key is refused
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iam_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from rehearsal.kms_server import KmsServer

    server = KmsServer("127.0.0.1", _free_port(), state_dir=tmp_path_factory.mktemp("iam-kms"), iam_auth=True)
    with server:
        yield server


def test_iam_auth_refuses_a_deleted_access_key_and_the_unwrap_names_it(
    iam_kms: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arn = str(iam_kms.client().create_key(Description="iam auth")["KeyMetadata"]["Arn"])  # the admin's key works
    blob = bytes(iam_kms.client().generate_data_key_without_plaintext(KeyId=arn, KeySpec="AES_256")["CiphertextBlob"])
    key_id, secret = iam_kms.node_access_key("onprem-node-1")
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[mariadb-kms]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    creds.chmod(0o600)
    old = time.time() - 600  # written long ago: not a new key
    os.utime(creds, (old, old))
    conf = _conf(tmp_path, key_arn=arn, blob=blob, endpoint=iam_kms.endpoint_url, credentials=creds)
    conf.write_text(conf.read_text().replace(f"region = {REGION}", f"region = {iam_kms.region}"))
    assert _run(conf, "--check") == 0  # the node's own key may Decrypt
    iam_kms.delete_access_key("onprem-node-1", key_id)
    assert _run(conf, "--check") == unwrap.EXIT_CODES["credentials-unrecognized"]
    failed = [line for line in capsys.readouterr().err.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "cause=credentials-unrecognized" in failed[0] and "InvalidClientTokenId" in failed[0]
    assert secret not in failed[0]


def test_iam_auth_refuses_a_key_it_never_issued_and_a_user_without_decrypt(iam_kms: Any) -> None:
    from botocore.exceptions import ClientError

    arn = str(iam_kms.client().create_key(Description="iam auth 2")["KeyMetadata"]["Arn"])
    stranger = boto3.client("kms", region_name=iam_kms.region, endpoint_url=iam_kms.endpoint_url,
                            aws_access_key_id="AKIANEVERISSUED00000", aws_secret_access_key=FAKE_SECRET)
    with pytest.raises(ClientError) as err:
        stranger.describe_key(KeyId=arn)
    # moto answers with an XML error body, which botocore cannot parse for KMS's JSON protocol.
    assert err.value.response["Error"]["Code"] == "403"
    assert unwrap.error_code_and_message(err.value)[0] == "InvalidClientTokenId"
    assert unwrap.classify(err.value) == "credentials-unrecognized"
    key_id, secret = iam_kms.node_access_key("onprem-node-2")
    node = boto3.client("kms", region_name=iam_kms.region, endpoint_url=iam_kms.endpoint_url,
                        aws_access_key_id=key_id, aws_secret_access_key=secret)
    assert node.describe_key(KeyId=arn)["KeyMetadata"]["Arn"] == arn
    with pytest.raises(ClientError) as denied:
        node.create_key(Description="a node may not mint keys")
    assert unwrap.error_code_and_message(denied.value)[0] == "AccessDenied"
    assert unwrap.classify(denied.value) == "access-denied"


def test_control_without_iam_auth_any_credentials_are_accepted(moto_url: str) -> None:
    stranger = boto3.client("kms", region_name=REGION, endpoint_url=moto_url,
                            aws_access_key_id="AKIANEVERISSUED00000", aws_secret_access_key=FAKE_SECRET)
    assert "KeyMetadata" in stranger.create_key(Description="anyone")
