"""moto's server as the KMS endpoint the testbed hosts reach on the bridge address.

A stand-in for AWS KMS, for tests and the rehearsal only (never a default for users). It keeps its keys in
memory: ``stop()`` then ``start()`` forgets them. For an outage that keeps the keys, make the endpoint
unreachable from a host instead (``Testbed.unreachable(host, kms.address)``).

    with KmsServer("10.231.0.1") as kms:
        key_id = kms.client().create_key()["KeyMetadata"]["KeyId"]
        # hosts use endpoint_url=kms.endpoint_url

By default moto accepts any credentials. ``iam_auth=True`` switches on moto's IAM authentication once the
server answers, so a request must be signed by an access key of an IAM user that exists in the emulator
(else ``InvalidClientTokenId``), and the user's identity policies must allow the action (else
``AccessDeniedException``; key policies are still not enforced). How it works in moto 5.2.5:
``moto/core/authorization.py`` checks every request once ``request_count`` reaches
``settings.INITIAL_NO_AUTH_ACTION_COUNT`` (from the environment variable of that name, infinite by
default), and a POST of a number to ``/moto-api/reset-auth`` (``moto/moto_api/_internal/responses.py``)
sets that count and zeroes the counter. The server is started without it, an administrator user is made
while everything is still accepted, and then ``reset-auth`` with 0 turns checking on; ``client()`` signs
with the administrator's key from then on.

    with KmsServer("10.231.0.1", iam_auth=True) as kms:
        key_id, secret = kms.node_access_key("onprem-node")   # a user that may Decrypt and DescribeKey
        kms.delete_access_key("onprem-node", key_id)            # revoked: the node is refused from now on
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from rehearsal import BackgroundServer, cache_dir, phase

DEFAULT_PORT = 8232
REGION = "us-east-1"
ADMIN_USER = "emulator-admin"
# What a node's identity may do with the key (the program's key policy grants nodes these two only).
NODE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}],
}
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


class KmsServer:
    __test__ = False

    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        state_dir: Path | None = None,
        region: str = REGION,
        *,
        iam_auth: bool = False,
    ) -> None:
        self.address = address
        self.port = port
        self.region = region
        self.iam_auth = iam_auth
        self._admin: tuple[str, str] | None = None  # the administrator's access key once IAM auth is on
        state = state_dir or cache_dir() / "run" / "kms"
        self.server = BackgroundServer(
            "moto KMS server",
            [sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)],
            address,
            port,
            pidfile=state / f"kms-{port}.pid",
            log=state / f"kms-{port}.log",
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def admin_credentials(self) -> tuple[str, str] | None:
        """The emulator administrator's access key (id, secret) once IAM authentication is on, else None."""
        return self._admin

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def client(self, config: Any = None, service: str = "kms") -> Any:
        """A boto3 client for the emulator: dummy credentials that never reach AWS, or the emulator's own
        administrator key when IAM authentication is on."""
        import boto3

        key_id, secret = self._admin or ("testing", "testing")
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=config,
        )

    def start(self, timeout: float = 60) -> KmsServer:
        with phase(f"starting the KMS emulator on {self.endpoint_url}"):
            self._admin = None
            self.server.start(self._answers, timeout)
            if self.iam_auth:
                self._enable_iam_auth()
        return self

    def switch_on_iam_auth(self) -> None:
        """IAM authentication from now on, for a server started without it (the keys it holds stay): what
        was made under any credentials (the program's key and data key) keeps working for signed requests."""
        if self._admin is None:
            self.iam_auth = True
            self._enable_iam_auth()

    def _enable_iam_auth(self) -> None:
        iam = self.client(service="iam")
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="all", PolicyDocument=json.dumps(ADMIN_POLICY))
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        self._admin = (str(key["AccessKeyId"]), str(key["SecretAccessKey"]))
        url = f"{self.endpoint_url}/moto-api/reset-auth"  # http on the emulator's own address
        # text/plain: with urllib's default form type, Flask would take the body as a form and hand moto nothing.
        request = urllib.request.Request(url, data=b"0", method="POST", headers={"Content-Type": "text/plain"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            answer.read()

    def node_access_key(self, user: str) -> tuple[str, str]:
        """A new IAM user allowed kms:Decrypt and kms:DescribeKey, and its access key (id, secret)."""
        iam = self.client(service="iam")
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="node", PolicyDocument=json.dumps(NODE_POLICY))
        return self.new_access_key(user)

    def new_access_key(self, user: str) -> tuple[str, str]:
        """Another access key (id, secret) for an existing user, e.g. after one was revoked."""
        key = self.client(service="iam").create_access_key(UserName=user)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def delete_access_key(self, user: str, access_key_id: str) -> None:
        """Revoke a node's credentials: with IAM auth on, its requests are refused from now on."""
        self.client(service="iam").delete_access_key(UserName=user, AccessKeyId=access_key_id)

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> KmsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        import botocore.config
        import botocore.exceptions

        probe = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
        try:
            self.client(probe).list_keys(Limit=1)
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError):
            return False
        return True
