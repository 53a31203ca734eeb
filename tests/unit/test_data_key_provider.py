"""The cluster data key's dynamic provider, against moto's real KMS and SSM server.

moto's server runs as a separate process on loopback (module fixture), the
provider talks to it over HTTP exactly as it would to AWS, and the tests check
the result with their own boto3 clients. Retry and denial paths, which moto
cannot produce (it enforces no key policy), use botocore's Stubber instead.
"""

from __future__ import annotations

import ast
import base64
import inspect
import os
import pickle
import pickletools
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import dill
import pulumi.dynamic.dynamic as pulumi_dynamic
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber
from pulumi.runtime.rpc import UNKNOWN

import components.data_key_provider as dkp
from components.data_key_provider import (
    Cause,
    DataKeyError,
    DataKeyProvider,
    RetryPolicy,
    blob_id,
    classify,
    region_of,
)

# The key's region is deliberately not the default region: the provider must
# take it from the ARN (moto's server keeps per-region state, so it would not
# find the key elsewhere).
KEY_REGION = "eu-central-1"
DEFAULT_REGION = "us-east-1"
FAKE_SECRET = "moto-only-fake-secret-9f3b1c"
STUB_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


# --------------------------------------------------------------------------
# moto's server
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("moto_server")
    found = str(beside_python) if beside_python.exists() else shutil.which("moto_server")
    if not found:
        pytest.fail("moto_server not found: install moto[server] (requirements-dev.txt)")
    return found


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server on a free loopback port, with fake credentials in the environment for its lifetime."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as env, open(log_path, "wb") as log:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN"):
            env.delenv(var, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "AKIAMOTOONLYFAKE0000")
        env.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        env.setenv("AWS_DEFAULT_REGION", DEFAULT_REGION)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = subprocess.Popen(
            [_moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_answering(url, server, log_path)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def _wait_until_answering(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"moto_server exited with {server.returncode}: {log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):  # noqa: S310 - loopback URL built here
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"moto_server did not answer on {url} within 30 s")


def _kms(endpoint: str, region: str = KEY_REGION) -> Any:
    return boto3.client("kms", region_name=region, endpoint_url=endpoint)


def _ssm(endpoint: str, region: str = KEY_REGION) -> Any:
    return boto3.client("ssm", region_name=region, endpoint_url=endpoint)


def _new_key(endpoint: str, region: str = KEY_REGION) -> dict[str, Any]:
    return dict(_kms(endpoint, region).create_key(Description="data key test")["KeyMetadata"])


def _props(key_arn: str, endpoint: str | None, **overrides: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "key_arn": key_arn,
        "escrow_in_ssm": False,
        "escrow_parameter_name": None,
        "endpoint_url": endpoint,
        "tags": {"project": "mariadb-kms"},
        "ciphertext_blob": None,
    }
    props.update(overrides)
    return props


class Recorder:
    """Stands in for sleep and warnings, so the retry path never waits and warnings can be read."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.warnings: list[str] = []

    def provider(self, **kwargs: Any) -> DataKeyProvider:
        return DataKeyProvider(sleep=self.sleeps.append, warn=self.warnings.append, **kwargs)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


# --------------------------------------------------------------------------
# create, against moto
# --------------------------------------------------------------------------


def test_create_returns_a_blob_that_kms_decrypts_to_32_bytes(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    result = rec.provider().create(_props(key["Arn"], endpoint))

    blob = base64.b64decode(result.outs["ciphertext_blob"], validate=True)
    assert result.id == blob_id(blob)
    assert result.outs["key_arn"] == key["Arn"]
    # The test, never the provider, decrypts: proof that the blob is a real AES_256 data key under this key.
    decrypted = _kms(endpoint).decrypt(CiphertextBlob=blob)
    assert len(decrypted["Plaintext"]) == 32
    assert decrypted["KeyId"] == key["Arn"]
    assert rec.sleeps == []


def test_the_state_holds_no_plaintext_and_no_credentials(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    outs = rec.provider().create(_props(key["Arn"], endpoint)).outs
    plaintext = _kms(endpoint).decrypt(CiphertextBlob=base64.b64decode(outs["ciphertext_blob"]))["Plaintext"]

    assert set(outs) == {"key_arn", "ciphertext_blob", "escrow_in_ssm", "escrow_parameter_name", "endpoint_url", "tags"}
    flat = repr(outs)
    assert FAKE_SECRET not in flat
    assert "AKIAMOTOONLYFAKE0000" not in flat
    for form in (plaintext.hex(), base64.b64encode(plaintext).decode()):
        assert form not in flat
    assert plaintext not in base64.b64decode(outs["ciphertext_blob"])


def test_two_creates_make_two_different_keys(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    provider = rec.provider()
    first = provider.create(_props(key["Arn"], endpoint))
    second = provider.create(_props(key["Arn"], endpoint))
    assert first.outs["ciphertext_blob"] != second.outs["ciphertext_blob"]
    assert first.id != second.id


def test_region_comes_from_the_key_arn_not_the_environment(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint, KEY_REGION)
    assert os.environ["AWS_DEFAULT_REGION"] == DEFAULT_REGION != KEY_REGION
    # Control: the key is invisible from the default region, so a provider that used it would fail.
    with pytest.raises(ClientError, match="NotFoundException"):
        _kms(endpoint, DEFAULT_REGION).describe_key(KeyId=key["Arn"])

    result = rec.provider().create(_props(key["Arn"], endpoint))
    assert result.outs["key_arn"].split(":")[3] == KEY_REGION
    assert region_of(key["Arn"]) == KEY_REGION


def test_a_key_that_never_appears_fails_with_the_arn_after_bounded_attempts(endpoint: str, rec: Recorder) -> None:
    missing = f"arn:aws:kms:{KEY_REGION}:123456789012:key/{uuid.uuid4()}"
    provider = rec.provider(retry_policy=RetryPolicy(attempts=3, first_delay=0.5, max_delay=1.0))
    with pytest.raises(DataKeyError) as caught:
        provider.create(_props(missing, endpoint))
    assert missing in str(caught.value)
    assert "after 3 attempts" in str(caught.value)
    assert "NotFoundException" in str(caught.value)
    assert rec.sleeps == [0.5, 1.0]


# --------------------------------------------------------------------------
# read, against moto
# --------------------------------------------------------------------------


def test_read_of_an_existing_key_returns_the_state_unchanged(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    state = {**created.outs, "__provider": "opaque"}

    result = rec.provider().read(created.id, dict(state))
    assert result.id == created.id
    assert result.outs == state
    assert rec.warnings == []


def test_read_never_mints_a_key(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    calls: list[str] = []

    def recording_factory(service: str, region: str, url: str | None) -> Any:
        client = dkp.make_client(service, region, url)
        client.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
        return client

    rec.provider(client_factory=recording_factory).read(created.id, dict(created.outs))
    assert calls == ["DescribeKey"]


def test_read_of_a_disabled_key_keeps_the_state_and_warns(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    _kms(endpoint).disable_key(KeyId=key["KeyId"])

    result = rec.provider().read(created.id, dict(created.outs))
    assert result.outs == created.outs
    assert len(rec.warnings) == 1
    assert key["Arn"] in rec.warnings[0] and "Disabled" in rec.warnings[0]


def test_read_of_a_key_pending_deletion_fails_loudly(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    _kms(endpoint).schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)

    with pytest.raises(DataKeyError, match="PendingDeletion") as caught:
        rec.provider().read(created.id, dict(created.outs))
    assert f"cancel-key-deletion --key-id {key['Arn']}" in str(caught.value)


def test_read_of_a_missing_key_fails_instead_of_dropping_the_data_key(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    missing = key["Arn"].rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    state = {**created.outs, "key_arn": missing}

    with pytest.raises(DataKeyError, match="no longer exists") as caught:
        rec.provider().read(created.id, state)
    assert missing in str(caught.value)
    assert rec.sleeps == []  # a refresh does not wait for a key that is gone


def test_read_refuses_a_state_whose_blob_was_altered(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    other = rec.provider().create(_props(key["Arn"], endpoint))
    swapped = {**created.outs, "ciphertext_blob": other.outs["ciphertext_blob"]}

    with pytest.raises(DataKeyError, match="does not match the resource id"):
        rec.provider().read(created.id, swapped)
    with pytest.raises(DataKeyError, match="not valid base64"):
        rec.provider().read(created.id, {**created.outs, "ciphertext_blob": "not base64!"})


def test_read_without_state_refuses_import(rec: Recorder) -> None:
    with pytest.raises(DataKeyError, match="Import is not supported"):
        rec.provider().read("abc", {})


# --------------------------------------------------------------------------
# diff and update
# --------------------------------------------------------------------------


def _olds(key_arn: str = STUB_ARN, **overrides: Any) -> dict[str, Any]:
    return {**_props(key_arn, None), "ciphertext_blob": "AQID", **overrides}


def test_diff_same_key_is_no_change(rec: Recorder) -> None:
    result = rec.provider().diff("id", _olds(), _props(STUB_ARN, None))
    assert result.changes is False
    assert not result.replaces
    assert rec.warnings == []


def test_diff_changed_key_is_an_update_never_a_replacement(rec: Recorder) -> None:
    # A replacement is a create, and a create mints a new data key: the datadirs would become unreadable.
    other = STUB_ARN.replace("1234abcd", "9999abcd")
    result = rec.provider().diff("id", _olds(), _props(other, None))
    assert result.changes is True
    assert not result.replaces
    assert len(rec.warnings) == 1
    assert STUB_ARN in rec.warnings[0] and other in rec.warnings[0] and "ReEncrypt" in rec.warnings[0]
    assert "key-lifecycle.md" in rec.warnings[0]


def test_diff_unknown_key_in_preview_is_an_update(rec: Recorder) -> None:
    result = rec.provider().diff("id", _olds(), _props(UNKNOWN, None))
    assert result.changes is True and not result.replaces
    assert "unknown until apply" in rec.warnings[0]


def test_diff_escrow_switch_is_an_update_not_a_replacement(rec: Recorder) -> None:
    news = _props(STUB_ARN, None, escrow_in_ssm=True, escrow_parameter_name="/mariadb-kms/dev/cluster-data-key")
    result = rec.provider().diff("id", _olds(), news)
    assert result.changes is True
    assert not result.replaces


def test_update_writes_the_existing_blob_to_escrow_and_never_calls_kms(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint))
    name = f"/mariadb-kms/update-{uuid.uuid4().hex[:8]}/cluster-data-key"
    services: list[str] = []

    def ssm_only(service: str, region: str, url: str | None) -> Any:
        services.append(service)
        if service == "kms":
            raise AssertionError("update must not talk to KMS")
        return dkp.make_client(service, region, url)

    news = _props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name)
    updated = rec.provider(client_factory=ssm_only).update(created.id, dict(created.outs), news)

    assert services == ["ssm"]
    assert updated.outs["ciphertext_blob"] == created.outs["ciphertext_blob"]
    assert updated.outs["escrow_parameter_name"] == name
    stored = _ssm(endpoint).get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert stored["Value"] == created.outs["ciphertext_blob"]


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "prop"),
    [
        ({"key_arn": "arn:aws:kms:eu-west-1:123456789012:alias/mariadb"}, "key_arn"),
        ({"key_arn": "1234abcd-12ab-34cd-56ef-1234567890ab"}, "key_arn"),
        ({"key_arn": None}, "key_arn"),
        ({"escrow_in_ssm": "yes"}, "escrow_in_ssm"),
        ({"escrow_in_ssm": True, "escrow_parameter_name": None}, "escrow_parameter_name"),
        ({"escrow_in_ssm": True, "escrow_parameter_name": "no-leading-slash"}, "escrow_parameter_name"),
        ({"escrow_in_ssm": True, "escrow_parameter_name": "/aws/reserved"}, "escrow_parameter_name"),
        ({"endpoint_url": "127.0.0.1:5000"}, "endpoint_url"),
        ({"tags": {"a": 1}}, "tags"),
    ],
)
def test_check_names_the_bad_input(rec: Recorder, overrides: dict[str, Any], prop: str) -> None:
    failures = rec.provider().check({}, {**_props(STUB_ARN, None), **overrides}).failures
    assert [f.property for f in failures] == [prop]


def test_check_accepts_good_and_unknown_inputs(rec: Recorder) -> None:
    assert rec.provider().check({}, _props(STUB_ARN, None)).failures == []
    assert rec.provider().check({}, _props(UNKNOWN, None)).failures == []
    mrk = "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef"
    assert region_of(mrk) == "us-gov-west-1"


# --------------------------------------------------------------------------
# retries, with botocore's Stubber (moto cannot be told to fail)
# --------------------------------------------------------------------------


def _stubbed_kms() -> tuple[Any, Stubber]:
    client = botocore.session.get_session().create_client(
        "kms", region_name="eu-west-1", aws_access_key_id="stub", aws_secret_access_key="stub"
    )
    return client, Stubber(client)


def _factory(client: Any) -> Callable[[str, str, str | None], Any]:
    def factory(service: str, region: str, _url: str | None) -> Any:
        assert (service, region) == ("kms", "eu-west-1")
        return client

    return factory


GENERATE = "generate_data_key_without_plaintext"
EXPECTED = {"KeyId": STUB_ARN, "KeySpec": "AES_256"}


def test_not_found_twice_then_success_takes_three_calls(rec: Recorder) -> None:
    client, stub = _stubbed_kms()
    for _ in range(2):
        stub.add_client_error(GENERATE, "NotFoundException", "not yet", 400, expected_params=EXPECTED)
    stub.add_response(GENERATE, {"CiphertextBlob": b"\x01\x02\x03", "KeyId": STUB_ARN}, EXPECTED)
    with stub:
        result = rec.provider(client_factory=_factory(client)).create(_props(STUB_ARN, None))
    stub.assert_no_pending_responses()
    assert result.outs["ciphertext_blob"] == base64.b64encode(b"\x01\x02\x03").decode()
    assert rec.sleeps == [1.0, 2.0]


def test_always_failing_stops_after_the_fixed_attempts_and_names_the_key(rec: Recorder) -> None:
    policy = RetryPolicy(attempts=4, first_delay=1.0, max_delay=3.0)
    client, stub = _stubbed_kms()
    for _ in range(policy.attempts):
        stub.add_client_error(GENERATE, "KMSInvalidStateException", "Creating", 400, expected_params=EXPECTED)
    with stub, pytest.raises(DataKeyError) as caught:
        rec.provider(client_factory=_factory(client), retry_policy=policy).create(_props(STUB_ARN, None))
    stub.assert_no_pending_responses()  # exactly `attempts` calls were made, no more
    message = str(caught.value)
    assert STUB_ARN in message and "after 4 attempts" in message and "KMSInvalidStateException" in message
    assert rec.sleeps == [1.0, 2.0, 3.0]


def test_access_denied_is_retried_then_explained(rec: Recorder) -> None:
    error = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "DescribeKey")
    assert classify(error) is Cause.ACCESS_DENIED
    policy = RetryPolicy(attempts=2)
    client, stub = _stubbed_kms()
    for _ in range(2):
        stub.add_client_error(GENERATE, "AccessDeniedException", "User is not authorized", 400)
    with stub, pytest.raises(DataKeyError) as caught:
        rec.provider(client_factory=_factory(client), retry_policy=policy).create(_props(STUB_ARN, None))
    assert "kms:GenerateDataKeyWithoutPlaintext" in str(caught.value)
    assert STUB_ARN in str(caught.value)
    assert len(rec.sleeps) == 1


def test_access_denied_on_read_is_not_retried(rec: Recorder) -> None:
    client, stub = _stubbed_kms()
    stub.add_client_error("describe_key", "AccessDeniedException", "no", 400, expected_params={"KeyId": STUB_ARN})
    blob = b"\x01\x02"
    state = {**_olds(), "ciphertext_blob": base64.b64encode(blob).decode()}
    with stub, pytest.raises(DataKeyError, match="not retried") as caught:
        rec.provider(client_factory=_factory(client)).read(blob_id(blob), state)
    assert "DescribeKey" in str(caught.value) and STUB_ARN in str(caught.value)
    assert rec.sleeps == []


def test_a_disabled_key_is_not_retried(rec: Recorder) -> None:
    client, stub = _stubbed_kms()
    stub.add_client_error(GENERATE, "DisabledException", "disabled", 400)
    with stub, pytest.raises(DataKeyError, match="not retried"):
        rec.provider(client_factory=_factory(client)).create(_props(STUB_ARN, None))
    stub.assert_no_pending_responses()
    assert rec.sleeps == []


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ClientError({"Error": {"Code": "ThrottlingException"}}, "op"), Cause.THROTTLED),
        (ClientError({"Error": {"Code": "KMSInternalException"}}, "op"), Cause.TRANSIENT),
        (ClientError({"Error": {"Code": "NotFoundException"}}, "op"), Cause.NOT_FOUND),
        (ClientError({"Error": {"Code": "KMSInvalidStateException"}}, "op"), Cause.INVALID_STATE),
        (ClientError({"Error": {"Code": "InvalidKeyUsageException"}}, "op"), Cause.OTHER),
        (EndpointConnectionError(endpoint_url="https://kms.eu-west-1.amazonaws.com"), Cause.TRANSIENT),
    ],
)
def test_classification(error: Exception, cause: Cause) -> None:
    assert classify(error) is cause


def test_default_policy_is_bounded() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(n) for n in range(1, policy.attempts)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert sum(delays) < 120


# --------------------------------------------------------------------------
# SSM escrow, against moto
# --------------------------------------------------------------------------


def _escrow_name() -> str:
    return f"/mariadb-kms/t-{uuid.uuid4().hex[:8]}/cluster-data-key"


def test_escrow_writes_a_secure_string_in_the_key_region(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    name = _escrow_name()
    result = rec.provider().create(_props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name))

    parameter = _ssm(endpoint).get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    assert parameter["Value"] == result.outs["ciphertext_blob"]
    tags = _ssm(endpoint).list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]
    assert {"Key": "project", "Value": "mariadb-kms"} in tags
    with pytest.raises(ClientError, match="ParameterNotFound"):
        _ssm(endpoint, DEFAULT_REGION).get_parameter(Name=name)


def test_escrow_never_overwrites_a_different_blob(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    name = _escrow_name()
    _ssm(endpoint).put_parameter(Name=name, Value="an-earlier-blob", Type="SecureString")

    with pytest.raises(DataKeyError, match="Refusing to overwrite") as caught:
        rec.provider().create(_props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name))
    assert name in str(caught.value)
    kept = _ssm(endpoint).get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert (kept["Value"], kept["Version"]) == ("an-earlier-blob", 1)


def test_escrow_of_the_same_blob_again_is_accepted(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    name = _escrow_name()
    created = rec.provider().create(_props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name))
    inputs = dkp.parse_inputs(_props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name))

    rec.provider().escrow(inputs, created.outs["ciphertext_blob"])  # a retried write that had landed
    parameter = _ssm(endpoint).get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert parameter["Version"] == 1


# --------------------------------------------------------------------------
# pickling: Pulumi stores the provider in state and loads it in another process
# --------------------------------------------------------------------------


def _globals_referenced(data: bytes) -> set[str]:
    found: set[str] = set()
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(arg))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.add(f"{strings[-2]}.{strings[-1]}")
        elif opcode.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


def test_pulumi_serialises_the_provider_by_reference_and_it_still_works(endpoint: str) -> None:
    serialized = pulumi_dynamic.serialize_provider(DataKeyProvider())
    data = base64.b64decode(serialized)
    # By reference: the pickle names the class at its stable path rather than carrying its code.
    assert "components.data_key_provider.DataKeyProvider" in _globals_referenced(data)
    assert b"generate_data_key_without_plaintext" not in data and len(data) < 2048
    assert FAKE_SECRET.encode() not in data

    restored = dill.loads(data)  # noqa: S301 - bytes made by this test
    assert type(restored) is DataKeyProvider
    restored.retry_policy = RetryPolicy(attempts=1)  # a regression fails at once instead of sleeping through retries
    key = _new_key(endpoint)
    result = restored.create(_props(key["Arn"], endpoint))
    blob = base64.b64decode(result.outs["ciphertext_blob"])
    assert len(_kms(endpoint).decrypt(CiphertextBlob=blob)["Plaintext"]) == 32


def test_plain_pickle_round_trip_keeps_test_settings_and_works(endpoint: str) -> None:
    provider = DataKeyProvider(retry_policy=RetryPolicy(attempts=2))
    restored = pickle.loads(pickle.dumps(provider))  # noqa: S301 - our own bytes
    assert restored.retry_policy == RetryPolicy(attempts=2)
    key = _new_key(endpoint)
    assert restored.read(*_created(restored, key["Arn"], endpoint)).outs["key_arn"] == key["Arn"]


def _created(provider: DataKeyProvider, key_arn: str, endpoint: str) -> tuple[str, dict[str, Any]]:
    result = provider.create(_props(key_arn, endpoint))
    return result.id, dict(result.outs)


def test_a_default_provider_carries_no_settings_in_state() -> None:
    # Every setting is a class default: nothing to go stale in an old pickle, nothing secret to leak.
    assert vars(DataKeyProvider()) == {}


# --------------------------------------------------------------------------
# the plaintext rule, checked on the source (with a control case)
# --------------------------------------------------------------------------

FORBIDDEN_CALLS = {"generate_data_key", "decrypt", "generate_data_key_pair", "re_encrypt"}


def _kms_calls_that_could_see_plaintext(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return names & FORBIDDEN_CALLS


def test_the_provider_never_asks_kms_for_plaintext() -> None:
    control = "kms.decrypt(CiphertextBlob=b)\nclient.generate_data_key(KeyId=k)\n"
    assert _kms_calls_that_could_see_plaintext(control) == {"decrypt", "generate_data_key"}
    assert _kms_calls_that_could_see_plaintext(inspect.getsource(dkp)) == set()


# --------------------------------------------------------------------------
# encryption context: made with one, and an existing stack's blob re-wrapped in place (moto enforces the
# context on Decrypt, so every "same data key" below is KMS's own answer)
# --------------------------------------------------------------------------

CONTEXT = {"mariadb-kms:stack": "dev", "mariadb-kms:cluster": "orders"}


def test_create_with_a_context_makes_a_blob_that_decrypts_only_with_it(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    result = rec.provider().create(_props(key["Arn"], endpoint, encryption_context=CONTEXT))

    blob = base64.b64decode(result.outs["ciphertext_blob"])
    assert result.outs["encryption_context"] == CONTEXT
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        _kms(endpoint).decrypt(CiphertextBlob=blob)
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        _kms(endpoint).decrypt(CiphertextBlob=blob, EncryptionContext={**CONTEXT, "mariadb-kms:cluster": "other"})
    assert len(_kms(endpoint).decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"]) == 32


def test_a_stack_without_a_context_keeps_the_state_it_always_had(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    result = rec.provider().create(_props(key["Arn"], endpoint))
    assert "encryption_context" not in result.outs and "blob_sha256" not in result.outs
    assert rec.provider().diff(result.id, dict(result.outs), _props(key["Arn"], endpoint)).changes is False


def test_gaining_a_context_is_an_update_never_a_replacement(rec: Recorder) -> None:
    result = rec.provider().diff("id", _olds(), _props(STUB_ARN, None, encryption_context=CONTEXT))
    assert result.changes is True and not result.replaces
    # Control: the same context again is no change at all.
    news = _props(STUB_ARN, None, encryption_context=CONTEXT)
    same = rec.provider().diff("id", _olds(encryption_context=CONTEXT), news)
    assert same.changes is False


def test_update_rewraps_the_same_data_key_under_the_context_and_follows_with_the_escrow(
    endpoint: str, rec: Recorder
) -> None:
    key = _new_key(endpoint)
    name = _escrow_name()
    # An existing stack: made before the context existed (no property in its state).
    created = rec.provider().create(_props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name))
    olds = dict(created.outs)
    old_blob = base64.b64decode(olds["ciphertext_blob"])
    data_key = _kms(endpoint).decrypt(CiphertextBlob=old_blob)["Plaintext"]

    news = _props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name, encryption_context=CONTEXT)
    updated = rec.provider().update(created.id, olds, news)

    new_blob = base64.b64decode(updated.outs["ciphertext_blob"])
    assert new_blob != old_blob
    assert _kms(endpoint).decrypt(CiphertextBlob=new_blob, EncryptionContext=CONTEXT)["Plaintext"] == data_key
    with pytest.raises(ClientError, match="InvalidCiphertext"):
        _kms(endpoint).decrypt(CiphertextBlob=new_blob)
    assert updated.outs["encryption_context"] == CONTEXT
    assert updated.outs["blob_sha256"] == blob_id(new_blob) != created.id
    # The id stays the first blob's digest; read checks the current blob against the recorded one.
    assert rec.provider().read(created.id, dict(updated.outs)).outs == updated.outs
    tampered = {**updated.outs, "ciphertext_blob": olds["ciphertext_blob"]}
    with pytest.raises(DataKeyError, match="does not match"):
        rec.provider().read(created.id, tampered)
    # The escrow follows; SSM keeps the blob it replaced in the parameter's history.
    history = _ssm(endpoint).get_parameter_history(Name=name, WithDecryption=True)["Parameters"]
    assert [h["Value"] for h in history] == [olds["ciphertext_blob"], updated.outs["ciphertext_blob"]]
    # A second up with the same inputs changes nothing.
    assert rec.provider().diff(created.id, dict(updated.outs), news).changes is False


def test_the_rewrap_refuses_to_overwrite_an_escrow_holding_another_blob(endpoint: str, rec: Recorder) -> None:
    key = _new_key(endpoint)
    name = _escrow_name()
    created = rec.provider().create(_props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name))
    _ssm(endpoint).put_parameter(Name=name, Value="someone-else's-blob", Type="SecureString", Overwrite=True)

    news = _props(key["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name, encryption_context=CONTEXT)
    with pytest.raises(DataKeyError, match="Refusing to overwrite"):
        rec.provider().update(created.id, dict(created.outs), news)
    assert _ssm(endpoint).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"] == "someone-else's-blob"


def test_leaving_the_context_rewraps_back_without_one(endpoint: str, rec: Recorder) -> None:
    # Switching a stack to aws-plugin mode: the plugin decrypts without a context.
    key = _new_key(endpoint)
    created = rec.provider().create(_props(key["Arn"], endpoint, encryption_context=CONTEXT))
    data_key = _kms(endpoint).decrypt(
        CiphertextBlob=base64.b64decode(created.outs["ciphertext_blob"]), EncryptionContext=CONTEXT
    )["Plaintext"]
    updated = rec.provider().update(created.id, dict(created.outs), _props(key["Arn"], endpoint))
    assert "encryption_context" not in updated.outs
    blob = base64.b64decode(updated.outs["ciphertext_blob"])
    assert _kms(endpoint).decrypt(CiphertextBlob=blob)["Plaintext"] == data_key


def test_a_provider_pickled_before_the_context_existed_rewraps(endpoint: str) -> None:
    # Pulumi loads the provider from state by reference: an old stack's pickle is today's class.
    restored = dill.loads(base64.b64decode(pulumi_dynamic.serialize_provider(DataKeyProvider())))  # noqa: S301
    restored.retry_policy = RetryPolicy(attempts=1)
    key = _new_key(endpoint)
    created = restored.create(_props(key["Arn"], endpoint))
    updated = restored.update(created.id, dict(created.outs), _props(key["Arn"], endpoint, encryption_context=CONTEXT))
    blob = base64.b64decode(updated.outs["ciphertext_blob"])
    assert len(_kms(endpoint).decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)["Plaintext"]) == 32


@pytest.mark.parametrize("bad", [{}, {"mariadb-kms:stack": ""}, {"k": 1}, "dev/orders"])
def test_check_names_a_bad_context(rec: Recorder, bad: Any) -> None:
    result = rec.provider().check({}, _props(STUB_ARN, None, encryption_context=bad))
    assert [f.property for f in result.failures] == ["encryption_context"]


# --------------------------------------------------------------------------
# a new KMS key (kmsKeyArn changed): the same data key re-wrapped from the old key onto the new one
# --------------------------------------------------------------------------


def _on_key_a_with_escrow(endpoint: str, rec: Recorder) -> tuple[dict[str, Any], dict[str, Any], Any, str]:
    key_a = _new_key(endpoint)
    name = _escrow_name()
    created = rec.provider().create(
        _props(key_a["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name, encryption_context=CONTEXT)
    )
    return key_a, dict(created.outs), created.id, name


def test_a_new_key_rewraps_the_same_data_key_onto_it_and_follows_with_the_escrow(
    endpoint: str, rec: Recorder
) -> None:
    key_a, olds, resource_id, name = _on_key_a_with_escrow(endpoint, rec)
    key_b = _new_key(endpoint)
    old_blob = base64.b64decode(olds["ciphertext_blob"])
    data_key = _kms(endpoint).decrypt(CiphertextBlob=old_blob, EncryptionContext=CONTEXT)["Plaintext"]

    news = _props(key_b["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name, encryption_context=CONTEXT)
    assert rec.provider().diff(resource_id, olds, news).replaces == []
    updated = rec.provider().update(resource_id, olds, news)

    new_blob = base64.b64decode(updated.outs["ciphertext_blob"])
    assert updated.outs["key_arn"] == key_b["Arn"] and new_blob != old_blob
    # KMS's own answer: the new blob is under B, and it is the same data key.
    under_b = _kms(endpoint).decrypt(CiphertextBlob=new_blob, EncryptionContext=CONTEXT)
    assert under_b["KeyId"] == key_b["Arn"]
    assert under_b["Plaintext"] == data_key
    # The old blob still opens under A (a rollback, and every backup made before the move, need it).
    under_a = _kms(endpoint).decrypt(CiphertextBlob=old_blob, EncryptionContext=CONTEXT)
    assert (under_a["KeyId"], under_a["Plaintext"]) == (key_a["Arn"], data_key)
    # Control: the data key compared above is not just any 32 bytes: another data key differs.
    other = rec.provider().create(_props(key_b["Arn"], endpoint, encryption_context=CONTEXT)).outs["ciphertext_blob"]
    other_key = _kms(endpoint).decrypt(CiphertextBlob=base64.b64decode(other), EncryptionContext=CONTEXT)
    assert other_key["Plaintext"] != data_key
    # Same resource id, the new blob's digest recorded; the SSM escrow now holds the new blob, the old in history.
    assert updated.outs["blob_sha256"] == blob_id(new_blob) != resource_id
    assert rec.provider().read(resource_id, dict(updated.outs)).outs == updated.outs
    history = _ssm(endpoint).get_parameter_history(Name=name, WithDecryption=True)["Parameters"]
    assert [h["Value"] for h in history] == [olds["ciphertext_blob"], updated.outs["ciphertext_blob"]]
    assert key_b["Arn"] in history[-1]["Description"]
    # The next up with the same inputs changes nothing.
    assert rec.provider().diff(resource_id, dict(updated.outs), news).changes is False


def test_a_new_key_and_a_new_context_in_one_call(endpoint: str, rec: Recorder) -> None:
    # A stack made before the context existed, moved to a new key in the same up: one ReEncrypt does both.
    key_a, key_b = _new_key(endpoint), _new_key(endpoint)
    created = rec.provider().create(_props(key_a["Arn"], endpoint))
    data_key = _kms(endpoint).decrypt(CiphertextBlob=base64.b64decode(created.outs["ciphertext_blob"]))["Plaintext"]
    updated = rec.provider().update(created.id, dict(created.outs), _props(key_b["Arn"], endpoint,
                                                                           encryption_context=CONTEXT))
    blob = base64.b64decode(updated.outs["ciphertext_blob"])
    answer = _kms(endpoint).decrypt(CiphertextBlob=blob, EncryptionContext=CONTEXT)
    assert (answer["KeyId"], answer["Plaintext"]) == (key_b["Arn"], data_key)


def _kms_stub_with_moto_ssm(endpoint: str, kms_client: Any) -> Callable[[str, str, str | None], Any]:
    def factory(service: str, region: str, _url: str | None) -> Any:
        return kms_client if service == "kms" else dkp.make_client(service, region, endpoint)

    return factory


def test_a_refused_move_names_the_grant_runbook_and_changes_nothing(endpoint: str, rec: Recorder) -> None:
    # moto enforces no key policy or grant: the refusal real KMS gives without the grant comes from a Stubber.
    key_a, olds, resource_id, name = _on_key_a_with_escrow(endpoint, rec)
    key_b = _new_key(endpoint)
    before = dict(olds)
    client = botocore.session.get_session().create_client(
        "kms", region_name=KEY_REGION, aws_access_key_id="stub", aws_secret_access_key="stub"
    )
    stub = Stubber(client)
    refused = "User: arn:aws:iam::123456789012:role/deployer is not authorized to perform: kms:ReEncryptFrom"
    for _ in range(3):
        stub.add_client_error("re_encrypt", "AccessDeniedException", refused, expected_params={
            "CiphertextBlob": base64.b64decode(olds["ciphertext_blob"]), "SourceKeyId": key_a["Arn"],
            "DestinationKeyId": key_b["Arn"], "SourceEncryptionContext": CONTEXT,
            "DestinationEncryptionContext": CONTEXT,
        })
    news = _props(key_b["Arn"], endpoint, escrow_in_ssm=True, escrow_parameter_name=name, encryption_context=CONTEXT)
    provider = rec.provider(client_factory=_kms_stub_with_moto_ssm(endpoint, client),
                            retry_policy=RetryPolicy(attempts=3, first_delay=0, max_delay=0))
    with stub, pytest.raises(DataKeyError) as error:
        provider.update(resource_id, olds, news)
    stub.assert_no_pending_responses()
    said = str(error.value)
    for needed in (key_a["Arn"], key_b["Arn"], "ReEncryptFrom", "ReEncryptTo", "grant", "key-lifecycle.md",
                   "Nothing was changed", "after 3 attempts"):
        assert needed in said, (needed, said)
    # Nothing changed: the engine keeps the old state when update raises, and the escrow was not touched.
    assert olds == before
    stored = _ssm(endpoint).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    assert stored == olds["ciphertext_blob"]


def test_control_a_refused_same_key_rewrap_does_not_point_at_the_grant_runbook(rec: Recorder) -> None:
    client, stub = _stubbed_kms()
    stub.add_client_error("re_encrypt", "AccessDeniedException", "no")
    provider = rec.provider(client_factory=_factory(client), retry_policy=RetryPolicy(attempts=1))
    with stub, pytest.raises(DataKeyError) as error:
        provider.update("id", _olds(), _props(STUB_ARN, None, encryption_context=CONTEXT))
    assert "access denied" in str(error.value) and "key-lifecycle.md" not in str(error.value)


def test_a_move_to_another_region_is_refused_before_kms(rec: Recorder) -> None:
    def no_client(*_args: Any) -> Any:
        raise AssertionError("nothing may be called")

    elsewhere = STUB_ARN.replace("eu-west-1", "us-west-2")
    with pytest.raises(DataKeyError, match=r"another region.*Nothing was changed"):
        rec.provider(client_factory=no_client).update("id", _olds(), _props(elsewhere, None))
