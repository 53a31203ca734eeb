"""moto's server as the KMS endpoint the testbed hosts reach on the bridge address.

A stand-in for AWS KMS, for tests and the rehearsal only (never a default for users). It keeps its keys in
memory: ``stop()`` then ``start()`` forgets them. For an outage that keeps the keys, make the endpoint
unreachable from a host instead (``Testbed.unreachable(host, kms.address)``).

    with KmsServer("10.231.0.1") as kms:
        key_id = kms.client().create_key()["KeyMetadata"]["KeyId"]
        # hosts use endpoint_url=kms.endpoint_url
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rehearsal import BackgroundServer, cache_dir, phase

DEFAULT_PORT = 8232
REGION = "us-east-1"


class KmsServer:
    __test__ = False

    def __init__(
        self, address: str = "127.0.0.1", port: int = DEFAULT_PORT, state_dir: Path | None = None, region: str = REGION
    ) -> None:
        self.address = address
        self.port = port
        self.region = region
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
    def pid(self) -> int | None:
        return self.server.pid

    def client(self, config: Any = None) -> Any:
        """A boto3 KMS client for the emulator, with dummy credentials that never reach AWS."""
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto accepts any credentials
            config=config,
        )

    def start(self, timeout: float = 60) -> KmsServer:
        with phase(f"starting the KMS emulator on {self.endpoint_url}"):
            self.server.start(self._answers, timeout)
        return self

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
