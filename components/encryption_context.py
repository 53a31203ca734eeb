"""The encryption context that binds the cluster data key to its stack and cluster, and the same-key re-wrap.

Kept out of ``components.data_key_provider`` on purpose: the provider never
calls an operation that could expose or move key material (a unit test reads
its source), and ``ReEncrypt`` is one. Here it is used from and to the same
key (``rewrap_request``), which the deployers' standing key-policy statement
pins with ``kms:ReEncryptOnSameKey``, and from the old key to a new one when
``kmsKeyArn`` changes, which only a temporary grant on each key allows
(docs/runbooks/key-lifecycle.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from components.data_key_provider import Cause, RetryPolicy

# The data key provider (boto3, pulumi) is imported only where a call is made: the
# renderers of unwrap.conf and the key policy use this module's pure half.
KEY_SPEC = "AES_256"

# Keys of the context. KMS compares them exactly, and the key policy names them in
# ``kms:EncryptionContext:<key>`` conditions, so they are part of every stack's blob.
CONTEXT_STACK = "mariadb-kms:stack"
CONTEXT_CLUSTER = "mariadb-kms:cluster"


def encryption_context(stack: str, cluster_name: str) -> dict[str, str]:
    """The context a cluster's data key is wrapped with: a blob of another cluster does not decrypt with it.

    KMS binds the context to the ciphertext as additional authenticated data:
    Decrypt without it, or with another value, fails with InvalidCiphertextException.
    """
    if not stack or not cluster_name:
        raise ValueError("an encryption context needs both the stack and the cluster name")
    return {CONTEXT_STACK: stack, CONTEXT_CLUSTER: cluster_name}


def cluster_context(
    stack: str, cluster_name: str, key_management: str, *, enabled: bool = True
) -> dict[str, str] | None:
    """The context a cluster's blob carries, or None in aws-plugin mode (or with ``dataKeyEncryptionContext`` off).

    MariaDB's aws_key_management plugin calls Decrypt with no encryption context,
    so a blob with one would not open there: that mode keeps a context-free blob
    and an unconditioned node Decrypt (the weaker mode, docs/security.md).
    """
    return encryption_context(stack, cluster_name) if enabled and key_management == "kms-envelope" else None


def generate_request(key_arn: str, context: Mapping[str, str] | None) -> dict[str, Any]:
    """GenerateDataKeyWithoutPlaintext's arguments; the context only when there is one (old stacks have none)."""
    request: dict[str, Any] = {"KeyId": key_arn, "KeySpec": KEY_SPEC}
    if context:
        request["EncryptionContext"] = dict(context)
    return request


def rewrap_request(
    blob: bytes,
    key_arn: str,
    *,
    new_context: Mapping[str, str],
    old_context: Mapping[str, str] | None,
    destination_key_arn: str | None = None,
) -> dict[str, Any]:
    """ReEncrypt's arguments: the same data key, wrapped with ``new_context`` under the destination key.

    By default the destination is the source key, so the key policy can allow it
    with ``kms:ReEncryptOnSameKey`` and the deployer never becomes a decrypt
    oracle (it cannot re-encrypt onto a key it controls). A destination of its
    own is the move to another key; the source key is named so KMS refuses a
    blob that is not under the key the state says (``IncorrectKeyException``).
    """
    request: dict[str, Any] = {
        "CiphertextBlob": blob,
        "SourceKeyId": key_arn,
        "DestinationKeyId": destination_key_arn or key_arn,
        "DestinationEncryptionContext": dict(new_context),
    }
    if old_context:
        request["SourceEncryptionContext"] = dict(old_context)
    return request


def rewrap_blob(
    kms: Any,
    blob: bytes,
    key_arn: str,
    *,
    new_context: Mapping[str, str],
    old_context: Mapping[str, str] | None,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    retry_on: frozenset[Cause] | None = None,
    destination_key_arn: str | None = None,
) -> bytes:
    """The same data key, wrapped again with ``new_context`` under the destination key (by default the same one).

    Refuses a result under any key but the destination.
    """
    from components.data_key_provider import DEFAULT_RETRY, RETRY_ON_READ, DataKeyError, call_with_retries

    destination = destination_key_arn or key_arn
    request = rewrap_request(
        blob, key_arn, new_context=new_context, old_context=old_context, destination_key_arn=destination
    )
    response = call_with_retries(
        lambda: kms.re_encrypt(**request),
        what=(
            "ReEncrypt (same key, new encryption context)" if destination == key_arn
            else f"ReEncrypt onto the new key {destination}"
        ),
        key_arn=key_arn,
        retry_on=RETRY_ON_READ if retry_on is None else retry_on,
        policy=DEFAULT_RETRY if policy is None else policy,
        sleep=sleep,
    )
    used = str(response.get("KeyId", ""))
    if used != destination:
        raise DataKeyError(f"ReEncrypt onto {destination} answered with a blob under {used or 'no key'}: not used")
    new_blob = cast(bytes, response["CiphertextBlob"])
    if not new_blob or new_blob == blob:
        raise DataKeyError(f"ReEncrypt onto {destination} returned no new blob")
    return new_blob
