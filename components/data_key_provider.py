"""The cluster data key: a Pulumi dynamic provider written with boto3.

STABLE IMPORT PATH — never move or rename this module, ``DataKeyProvider`` or
``DataKeyResource``. Pulumi stores the provider in state as a dill pickle that
names ``components.data_key_provider.DataKeyProvider`` by reference, and the
dynamic provider process imports it from there on every later preview, up,
refresh and destroy. Moving it strands every existing stack. For the same
reason every setting has a class-level default: a provider pickled by an older
version of this class must still work after the class gains a field.

What it does, and what it will not do:
- ``create`` asks KMS for one AES_256 data key with
  ``GenerateDataKeyWithoutPlaintext`` and keeps only the ciphertext blob. The
  plaintext never exists in this program or in state: this module never calls
  ``GenerateDataKey`` or ``Decrypt`` (a unit test checks the source).
- The region comes from the key ARN. A dynamic provider inherits neither the
  aws provider's region nor its profile or role; credentials come from boto3's
  normal chain in the environment running ``pulumi`` and never from inputs,
  because inputs and outputs are stored in state.
- ``read`` never mints a key. It checks the stored blob against its id and that
  its key still exists, and returns the state unchanged.
- ``diff`` never replaces: a new data key would leave every datadir encrypted
  under one nobody holds any more. Every input change is an update.
- The encryption context (``encryption_context``) binds the blob to its stack
  and cluster, and the key ARN names the KMS key that wraps it. A change of
  either is an update: ``update`` re-wraps the existing blob with ``ReEncrypt``
  (``components.encryption_context``), on the same key for a new context, from
  the old key to the new one for a new key ARN, so the data key itself never
  changes and no plaintext is ever returned. The resource id stays the digest
  of the first blob; ``blob_sha256`` names the current one.
- ``delete`` does nothing: a data key is not a KMS resource, and an escrowed
  blob is retained on purpose.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn, TypeVar, cast

import boto3
import pulumi
import pulumi.dynamic
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from pulumi.runtime.rpc import UNKNOWN

KEY_SPEC = "AES_256"
RESOURCE_MODULE = "mariadb-kms"
RESOURCE_NAME = "ClusterDataKey"

# State property names. They are part of every stack's state: renaming one is a migration.
P_KEY_ARN = "key_arn"
P_BLOB = "ciphertext_blob"
P_ESCROW = "escrow_in_ssm"
P_ESCROW_NAME = "escrow_parameter_name"
P_ENDPOINT = "endpoint_url"
P_TAGS = "tags"
P_CONTEXT = "encryption_context"  # absent in stacks made before it existed: read as no context
P_BLOB_DIGEST = "blob_sha256"  # set once a re-wrap has changed the blob; absent, the id is the blob's digest
# Changing these keeps the data key, so they are updates, never replacements (the key ARN: a re-wrap).
_UPDATABLE = (P_KEY_ARN, P_ESCROW, P_ESCROW_NAME, P_ENDPOINT, P_TAGS, P_CONTEXT)
# Where the grant procedure a move to another key needs is written, for its error message.
REWRAP_RUNBOOK = "docs/runbooks/key-lifecycle.md, \"Moving the data key to another KMS key\""

_KEY_ARN = re.compile(
    r"^arn:(?P<partition>aws(?:-cn|-us-gov|-iso|-iso-[a-z])?)"
    r":kms:(?P<region>[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2})"
    r":(?P<account>\d{12})"
    r":key/(?P<key_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)
_SSM_NAME = re.compile(r"^/[A-Za-z0-9_.\-/]{1,1010}$")
# SSM rejects names whose first level starts with these, whatever the case.
_SSM_RESERVED_PREFIXES = ("aws", "ssm")

T = TypeVar("T")


class DataKeyError(RuntimeError):
    """The cluster data key could not be made, read or escrowed; the message names the key ARN and the cause."""


def region_of(key_arn: str) -> str:
    """The region of a KMS key ARN; the dynamic provider talks to KMS there and nowhere else."""
    match = _KEY_ARN.match(key_arn)
    if match is None:
        raise ValueError(
            f"{key_arn!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<key-id>); "
            "aliases and bare key ids are refused so the state always names one key"
        )
    return match["region"]


def blob_id(blob: bytes) -> str:
    """Resource id: a digest of the blob, so ``read`` can tell a state whose blob was altered."""
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------
# Errors: which ones are worth another attempt
# --------------------------------------------------------------------------


class Cause(Enum):
    NOT_FOUND = "the key is not visible (it may have just been created, or it is in another account or region)"
    INVALID_STATE = "the key is not usable yet or any more (creating, disabled or pending deletion)"
    ACCESS_DENIED = (
        "access denied: the identity running pulumi needs kms:GenerateDataKeyWithoutPlaintext and "
        "kms:DescribeKey on the key, kms:ReEncryptFrom and kms:ReEncryptTo to re-wrap (and, for the escrow, "
        "ssm:PutParameter, ssm:GetParameter and ssm:AddTagsToResource in its IAM policy); "
        "a key policy or IAM change can take minutes to apply"
    )
    THROTTLED = "throttled by the AWS API"
    TRANSIENT = "the AWS endpoint failed or could not be reached"
    DISABLED = "the key is disabled"
    OTHER = "an error that retrying does not cure"


_CODES: dict[str, Cause] = {
    "NotFoundException": Cause.NOT_FOUND,
    "KMSInvalidStateException": Cause.INVALID_STATE,
    "AccessDeniedException": Cause.ACCESS_DENIED,
    "AccessDenied": Cause.ACCESS_DENIED,
    "ThrottlingException": Cause.THROTTLED,
    "Throttling": Cause.THROTTLED,
    "TooManyRequestsException": Cause.THROTTLED,
    "RequestLimitExceeded": Cause.THROTTLED,
    "KMSInternalException": Cause.TRANSIENT,
    "DependencyTimeoutException": Cause.TRANSIENT,
    "InternalServerError": Cause.TRANSIENT,
    "ServiceUnavailable": Cause.TRANSIENT,
    "DisabledException": Cause.DISABLED,
}

# Right after `pulumi up` creates the key or changes its policy, KMS can answer
# NotFound, InvalidState or AccessDenied for a while (eventual consistency).
RETRY_ON_CREATE = frozenset(
    {Cause.NOT_FOUND, Cause.INVALID_STATE, Cause.ACCESS_DENIED, Cause.THROTTLED, Cause.TRANSIENT}
)
# A refresh runs long after creation: a missing key or a denial is the answer, not a delay.
RETRY_ON_READ = frozenset({Cause.THROTTLED, Cause.TRANSIENT})


def classify(error: Exception) -> Cause:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        return _CODES.get(code, Cause.OTHER)
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return Cause.TRANSIENT
    return Cause.OTHER


def _error_text(error: Exception) -> str:
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class RetryPolicy:
    """A small fixed number of attempts with capped exponential backoff (1+2+4+8+16+20+20 s by default)."""

    attempts: int = 8
    first_delay: float = 1.0
    max_delay: float = 20.0

    def delay(self, failed_attempts: int) -> float:
        return float(min(self.max_delay, self.first_delay * 2 ** (failed_attempts - 1)))


DEFAULT_RETRY = RetryPolicy()


def call_with_retries(
    call: Callable[[], T],
    *,
    what: str,
    key_arn: str,
    retry_on: frozenset[Cause],
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> T:
    """Run ``call``; retry the causes in ``retry_on``; raise DataKeyError naming the key ARN and the cause."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except (ClientError, BotoCoreError) as error:
            cause = classify(error)
            if cause not in retry_on or attempt >= policy.attempts:
                tries = f"after {attempt} attempts" if attempt > 1 else "(not retried)"
                raise DataKeyError(
                    f"{what} on {key_arn} failed {tries}: {cause.value} [{_error_text(error)}]"
                ) from error
            sleep(policy.delay(attempt))


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DataKeyInputs:
    key_arn: str
    escrow_in_ssm: bool
    escrow_parameter_name: str | None
    endpoint_url: str | None
    tags: Mapping[str, str]
    encryption_context: Mapping[str, str] | None = None

    @property
    def region(self) -> str:
        return region_of(self.key_arn)


def input_problems(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem with the inputs as (property, reason); values still unknown in a preview are skipped."""
    problems: list[tuple[str, str]] = []
    arn = props.get(P_KEY_ARN)
    if arn != UNKNOWN:
        if not isinstance(arn, str):
            problems.append((P_KEY_ARN, f"expected a KMS key ARN, got {arn!r}"))
        else:
            try:
                region_of(arn)
            except ValueError as exc:
                problems.append((P_KEY_ARN, str(exc)))
    escrow = props.get(P_ESCROW)
    if not isinstance(escrow, bool):
        problems.append((P_ESCROW, f"expected true or false, got {escrow!r}"))
    name = props.get(P_ESCROW_NAME)
    if name is not None and name != UNKNOWN:
        if not isinstance(name, str) or not _SSM_NAME.match(name):
            problems.append(
                (P_ESCROW_NAME, f"{name!r} is not an SSM parameter path such as /mariadb-kms/dev/cluster-data-key")
            )
        elif name.lstrip("/").lower().startswith(_SSM_RESERVED_PREFIXES):
            problems.append((P_ESCROW_NAME, f"{name!r}: SSM reserves names starting with /aws or /ssm"))
    elif escrow is True and name is None:
        problems.append((P_ESCROW_NAME, "an SSM parameter name is required when escrow_in_ssm is on"))
    endpoint = props.get(P_ENDPOINT)
    if endpoint is not None and endpoint != UNKNOWN and (
        not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
    ):
        problems.append((P_ENDPOINT, f"expected an http(s) URL (a local KMS stand-in for tests), got {endpoint!r}"))
    tags = props.get(P_TAGS) or {}
    if tags != UNKNOWN and (
        not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    ):
        problems.append((P_TAGS, f"expected a map of string to string, got {tags!r}"))
    context = props.get(P_CONTEXT)
    if context is not None and context != UNKNOWN and (
        not isinstance(context, Mapping)
        or not context
        or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in context.items())
    ):
        problems.append(
            (P_CONTEXT, f"expected a non-empty map of non-empty strings (or none), got {context!r}")
        )
    return problems


def parse_inputs(props: Mapping[str, Any]) -> DataKeyInputs:
    problems = input_problems(props)
    if problems:
        raise DataKeyError("invalid cluster data key inputs: " + "; ".join(f"{p}: {r}" for p, r in problems))
    return DataKeyInputs(
        key_arn=str(props[P_KEY_ARN]),
        escrow_in_ssm=bool(props[P_ESCROW]),
        escrow_parameter_name=props.get(P_ESCROW_NAME),
        endpoint_url=props.get(P_ENDPOINT),
        tags=dict(props.get(P_TAGS) or {}),
        encryption_context=_context_of(props),
    )


def _context_of(props: Mapping[str, Any]) -> dict[str, str] | None:
    """The context a state or input names; None for none (and for every state older than the property)."""
    context = props.get(P_CONTEXT)
    return dict(context) if isinstance(context, Mapping) and context else None


# --------------------------------------------------------------------------
# AWS clients
# --------------------------------------------------------------------------


def make_client(service: str, region: str, endpoint_url: str | None) -> Any:
    """A boto3 client in ``region`` with the environment's credentials.

    botocore's own retries are off so ``RetryPolicy`` alone bounds the attempts.
    """
    config = BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=30)
    return boto3.session.Session(region_name=region).client(service, endpoint_url=endpoint_url, config=config)


ClientFactory = Callable[[str, str, str | None], Any]


def _stderr_warning(message: str) -> None:
    # A dynamic provider runs in its own process with no engine connection, so
    # stderr is where its diagnostics go (pulumi.log does the same there).
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------


class DataKeyProvider(pulumi.dynamic.ResourceProvider):
    """Creates the cluster data key once and never again (see the module docstring)."""

    # Class-level defaults, overridden per instance only by tests: the pickle in
    # state then carries no settings, and older pickles keep working.
    retry_policy: RetryPolicy = DEFAULT_RETRY
    _sleep_override: Callable[[float], None] | None = None
    _client_factory_override: ClientFactory | None = None
    _warn_override: Callable[[str], None] | None = None

    def __init__(
        self,
        *,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        client_factory: ClientFactory | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        if retry_policy is not None:
            self.retry_policy = retry_policy
        if sleep is not None:
            self._sleep_override = sleep
        if client_factory is not None:
            self._client_factory_override = client_factory
        if warn is not None:
            self._warn_override = warn

    # -- plumbing -----------------------------------------------------------

    def _client(self, service: str, region: str, endpoint_url: str | None) -> Any:
        factory = self._client_factory_override or make_client
        return factory(service, region, endpoint_url)

    def _sleep(self, seconds: float) -> None:
        (self._sleep_override or time.sleep)(seconds)

    def _warn(self, message: str) -> None:
        (self._warn_override or _stderr_warning)(message)

    def _retrying(self, call: Callable[[], T], *, what: str, key_arn: str, retry_on: frozenset[Cause]) -> T:
        return call_with_retries(
            call, what=what, key_arn=key_arn, retry_on=retry_on, policy=self.retry_policy, sleep=self._sleep
        )

    # -- Pulumi operations --------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        failures = [pulumi.dynamic.CheckFailure(prop, reason) for prop, reason in input_problems(news)]
        return pulumi.dynamic.CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        inputs = parse_inputs(props)
        kms = self._client("kms", inputs.region, inputs.endpoint_url)
        request: dict[str, Any] = {"KeyId": inputs.key_arn, "KeySpec": KEY_SPEC}
        if inputs.encryption_context:
            request["EncryptionContext"] = dict(inputs.encryption_context)
        response = self._retrying(
            lambda: kms.generate_data_key_without_plaintext(**request),
            what="GenerateDataKeyWithoutPlaintext",
            key_arn=inputs.key_arn,
            retry_on=RETRY_ON_CREATE,
        )
        blob = cast(bytes, response["CiphertextBlob"])
        encoded = base64.b64encode(blob).decode("ascii")
        if inputs.escrow_in_ssm:
            # A failure here fails create, and the data key just made is simply
            # dropped: nothing is encrypted under it yet and KMS keeps no copy.
            self.escrow(inputs, encoded)
        return pulumi.dynamic.CreateResult(blob_id(blob), _state(inputs, str(response["KeyId"]), encoded))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        """Verify and return the state unchanged; never mint a key.

        - the stored blob must decode and match the id (a digest of it);
        - the key must exist: missing or pending deletion fails the refresh
          loudly rather than reporting the resource gone, because Pulumi would
          then forget the blob and the next ``up`` would mint a second key;
        - a disabled (or unavailable) key still holds the blob: the state is kept
          and a warning given; nodes refuse to start until it is enabled again.
        """
        key_arn = props.get(P_KEY_ARN)
        encoded = props.get(P_BLOB)
        if not isinstance(key_arn, str) or not isinstance(encoded, str):
            raise DataKeyError(
                f"cluster data key {id_}: the state holds no key ARN or blob. Import is not supported: "
                "the blob cannot be recovered from the id, and minting a new one would orphan encrypted data"
            )
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DataKeyError(f"cluster data key under {key_arn}: the stored blob is not valid base64") from exc
        recorded = props.get(P_BLOB_DIGEST)
        expected = recorded if isinstance(recorded, str) and recorded else id_
        if not blob or blob_id(blob) != expected:
            raise DataKeyError(
                f"cluster data key under {key_arn}: the stored blob does not match the resource id {id_}"
                f"{'' if expected == id_ else ' (and its recorded re-wrap digest)'}; "
                "the state was altered. Restore it from a backup or the SSM escrow before anything else"
            )
        endpoint = props.get(P_ENDPOINT)
        kms = self._client("kms", region_of(key_arn), endpoint if isinstance(endpoint, str) else None)
        try:
            metadata = self._retrying(
                lambda: kms.describe_key(KeyId=key_arn)["KeyMetadata"],
                what="DescribeKey",
                key_arn=key_arn,
                retry_on=RETRY_ON_READ,
            )
        except DataKeyError as exc:
            if classify(cast(Exception, exc.__cause__)) is Cause.NOT_FOUND:
                raise DataKeyError(
                    f"the KMS key {key_arn} of the cluster data key no longer exists (or is not visible to these "
                    "credentials in that region). Without it the blob, and the data under it, cannot be decrypted. "
                    "Refusing to drop the data key from state"
                ) from exc.__cause__
            raise
        state = str(metadata.get("KeyState", ""))
        if state in ("PendingDeletion", "PendingReplicaDeletion"):
            raise DataKeyError(
                f"the KMS key {key_arn} of the cluster data key is {state} (deletion date "
                f"{metadata.get('DeletionDate')}): all data under it becomes unrecoverable then. "
                f"Cancel with: aws kms cancel-key-deletion --key-id {key_arn}"
            )
        if state in ("Disabled", "Unavailable"):
            self._warn(
                f"the KMS key {key_arn} of the cluster data key is {state}: nodes cannot decrypt the blob and "
                "refuse to start MariaDB until it is enabled again; the data key is kept"
            )
        return pulumi.dynamic.ReadResult(id_, props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        """An update when anything changed, never a replacement.

        A replacement would be a create, and a create mints a new data key: the
        new blob would hold new key material while every node's data is
        encrypted under the old one. So a changed key ARN is an update too, which
        re-wraps the same data key onto the new key (``update``). An unknown new
        key ARN (a preview while the value is still being computed) may differ:
        it is reported as a change, still an update. ``protect=True`` on the
        resource makes Pulumi refuse a replacement asked for by hand
        (``--replace``), and ``retain_on_delete`` keeps the blob if it is ever
        deleted.
        """
        old_arn, new_arn = olds.get(P_KEY_ARN), news.get(P_KEY_ARN)
        if new_arn == UNKNOWN or new_arn != old_arn:
            self._warn(
                f"the cluster data key moves from the KMS key {old_arn} to "
                f"{'(unknown until apply)' if new_arn == UNKNOWN else new_arn}: the same data key is re-wrapped "
                "with kms:ReEncrypt, which needs the temporary grants of " + REWRAP_RUNBOOK
            )
            return pulumi.dynamic.DiffResult(changes=True, replaces=[])
        changed = [p for p in _UPDATABLE if _comparable(p, olds) != _comparable(p, news)]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=[])

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        """Keep the data key; re-wrap its blob when the key or the encryption context changes; follow with the escrow.

        - A changed context (an existing stack gaining one, or leaving it for
          aws-plugin mode) re-wraps the stored blob with a same-key ``ReEncrypt``:
          new ciphertext, the same data key, no plaintext anywhere.
        - A changed key ARN re-wraps it from the old key onto the new one (with
          the new context, in the same call). The deployer's standing key policy
          allows ReEncrypt on the same key only, so this needs a grant on each
          key for the time of the move; a refusal says where the procedure is
          and changes nothing (an update that raises leaves the state as it was).
        - Turning escrow on (or renaming it) writes the blob there. A re-wrap
          overwrites the escrowed blob only if it holds the blob being replaced;
          SSM keeps the earlier value in the parameter's history.
        - Turning escrow off leaves the parameter in place: it is a retained copy of ciphertext.
        """
        inputs = parse_inputs(news)
        key_arn, old_encoded = str(olds[P_KEY_ARN]), str(olds[P_BLOB])
        old_context = _context_of(olds)
        encoded = old_encoded
        if key_arn != inputs.key_arn and region_of(key_arn) != inputs.region:
            raise DataKeyError(
                f"the cluster data key cannot move from {key_arn} to {inputs.key_arn}: another region "
                "(its SSM escrow and every node's unwrap.conf name one region); choose a key in "
                f"{region_of(key_arn)}. Nothing was changed"
            )
        if key_arn != inputs.key_arn or old_context != inputs.encryption_context:
            encoded = self.rewrap(inputs, key_arn, old_encoded, old_context)
        same_escrow = bool(olds.get(P_ESCROW)) and olds.get(P_ESCROW_NAME) == inputs.escrow_parameter_name
        if inputs.escrow_in_ssm:
            if not same_escrow:
                self.escrow(inputs, encoded)
            elif encoded != old_encoded:
                self.escrow(inputs, encoded, replacing=old_encoded)
        state = _state(inputs, inputs.key_arn, encoded)
        digest = blob_id(base64.b64decode(encoded))
        if digest != id_ or olds.get(P_BLOB_DIGEST):
            state[P_BLOB_DIGEST] = digest
        return pulumi.dynamic.UpdateResult(state)

    def rewrap(
        self, inputs: DataKeyInputs, key_arn: str, encoded_blob: str, old_context: Mapping[str, str] | None
    ) -> str:
        """The stored blob (under ``key_arn``) wrapped again under ``inputs.key_arn`` with the new context (base64)."""
        # Imported here: that module imports this one, and keeping ReEncrypt out of this module's
        # source lets a unit test hold it to "no call that could see or move key material".
        from components.encryption_context import rewrap_blob

        kms = self._client("kms", region_of(key_arn), inputs.endpoint_url)
        moving = inputs.key_arn != key_arn
        try:
            new_blob = rewrap_blob(
                kms, base64.b64decode(encoded_blob), key_arn,
                new_context=inputs.encryption_context or {}, old_context=old_context,
                policy=self.retry_policy, sleep=self._sleep,
                # Run right after the key policy gained the re-wrap statement, or a grant was made (grants
                # are eventually consistent too): a denial can be a delay.
                retry_on=RETRY_ON_CREATE,
                destination_key_arn=inputs.key_arn,
            )
        except DataKeyError as exc:
            cause = exc.__cause__
            if moving and isinstance(cause, Exception) and classify(cause) is Cause.ACCESS_DENIED:
                raise DataKeyError(
                    f"{exc}. Moving the cluster data key from {key_arn} to {inputs.key_arn} needs, for the "
                    "identity running pulumi, a temporary grant of ReEncryptFrom on the old key and of ReEncryptTo "
                    f"on the new one (see {REWRAP_RUNBOOK}); the deployers' key policy allows ReEncrypt on the "
                    "same key only. Nothing was changed: the state still holds the blob under the old key"
                ) from cause
            raise
        return base64.b64encode(new_blob).decode("ascii")

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Nothing exists in KMS to delete, and the SSM escrow is retained on purpose.
        return None

    # -- escrow -------------------------------------------------------------

    def escrow(self, inputs: DataKeyInputs, encoded_blob: str, *, replacing: str | None = None) -> None:
        """Write the blob to an SSM SecureString, never overwriting a different one.

        The same value already there is accepted, so a retried create or update
        whose first write landed does not fail. ``replacing`` (a re-wrap) is the
        one value that may be overwritten: the same data key's previous blob.
        """
        name = inputs.escrow_parameter_name
        if name is None:
            raise DataKeyError(f"escrow of the cluster data key under {inputs.key_arn}: no SSM parameter name")
        ssm = self._client("ssm", inputs.region, inputs.endpoint_url)
        if replacing is not None:
            self._replace_escrow(ssm, inputs, name, encoded_blob, replacing)
            return
        try:
            self._retrying(
                lambda: ssm.put_parameter(
                    Name=name,
                    Value=encoded_blob,
                    Type="SecureString",
                    Overwrite=False,
                    Description=f"Cluster data key (ciphertext, wrapped by {inputs.key_arn})",
                    Tags=[{"Key": k, "Value": v} for k, v in sorted(inputs.tags.items())],
                ),
                what=f"SSM PutParameter {name}",
                key_arn=inputs.key_arn,
                retry_on=RETRY_ON_READ,
            )
            return
        except DataKeyError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and cause.response["Error"]["Code"] == "ParameterAlreadyExists"):
                raise
        existing = self._retrying(
            lambda: ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"],
            what=f"SSM GetParameter {name}",
            key_arn=inputs.key_arn,
            retry_on=RETRY_ON_READ,
        )
        if existing != encoded_blob:
            _refuse_overwrite(name, inputs.key_arn)

    def _replace_escrow(self, ssm: Any, inputs: DataKeyInputs, name: str, encoded_blob: str, replacing: str) -> None:
        try:
            existing: str | None = self._retrying(
                lambda: ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"],
                what=f"SSM GetParameter {name}",
                key_arn=inputs.key_arn,
                retry_on=RETRY_ON_READ,
            )
        except DataKeyError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and cause.response["Error"]["Code"] == "ParameterNotFound"):
                raise
            existing = None
        if existing == encoded_blob:
            return
        if existing is None:
            self.escrow(inputs, encoded_blob)
            return
        if existing != replacing:
            _refuse_overwrite(name, inputs.key_arn)
        self._retrying(
            lambda: ssm.put_parameter(
                Name=name, Value=encoded_blob, Type="SecureString", Overwrite=True,
                Description=f"Cluster data key (ciphertext, wrapped by {inputs.key_arn})",
            ),
            what=f"SSM PutParameter {name} (re-wrapped blob)",
            key_arn=inputs.key_arn,
            retry_on=RETRY_ON_READ,
        )


def _refuse_overwrite(name: str, key_arn: str) -> NoReturn:
    raise DataKeyError(
        f"the SSM parameter {name} already escrows a different cluster data key (this one is wrapped by {key_arn}). "
        "Refusing to overwrite it: data may be encrypted under the escrowed key. Restore the stack state that holds "
        "that blob, or, if no node ever used it, delete the parameter deliberately and run again"
    )


def _comparable(prop: str, props: Mapping[str, Any]) -> Any:
    # An empty context and none are the same blob; a state older than the property has none.
    return _context_of(props) if prop == P_CONTEXT else props.get(prop)


def _state(inputs: DataKeyInputs, reported_key_arn: str, encoded_blob: str) -> dict[str, Any]:
    state: dict[str, Any] = {
        P_KEY_ARN: reported_key_arn,
        P_BLOB: encoded_blob,
        P_ESCROW: inputs.escrow_in_ssm,
        P_ESCROW_NAME: inputs.escrow_parameter_name,
        P_ENDPOINT: inputs.endpoint_url,
        P_TAGS: dict(inputs.tags),
    }
    # Left out when there is none, so a stack without a context keeps the state it always had.
    if inputs.encryption_context:
        state[P_CONTEXT] = dict(inputs.encryption_context)
    return state


# --------------------------------------------------------------------------
# The dynamic resource (kept here, beside its provider: its type token is part
# of every URN in state, so it is as stable as the provider's import path)
# --------------------------------------------------------------------------


class DataKeyResource(pulumi.dynamic.Resource, module=RESOURCE_MODULE, name=RESOURCE_NAME):
    """The data key as a resource; ``ClusterDataKey`` wraps it with the options it must have."""

    key_arn: pulumi.Output[str]
    ciphertext_blob: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        key_arn: pulumi.Input[str],
        escrow_in_ssm: bool,
        escrow_parameter_name: str | None,
        tags: Mapping[str, str],
        endpoint_url: str | None,
        encryption_context: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            P_KEY_ARN: key_arn,
            P_ESCROW: escrow_in_ssm,
            P_ESCROW_NAME: escrow_parameter_name,
            P_ENDPOINT: endpoint_url,
            P_TAGS: dict(tags),
            P_BLOB: None,  # an output: declared so Pulumi exposes it as an attribute
        }
        if encryption_context:
            # Only when there is one: a stack without a context keeps byte-identical inputs.
            props[P_CONTEXT] = dict(encryption_context)
        super().__init__(DataKeyProvider(), name, props, opts)
