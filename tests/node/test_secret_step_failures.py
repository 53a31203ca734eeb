"""Every secret-touching step, made to fail on a real host, prints no secret (stdout or stderr).

pulumi-command copies a failed command's stdout and stderr into the error text
the engine shows and logs, whatever ``logging`` says (pulumi/pulumi-command,
``provider/pkg/provider/remote/commandOutputs.go``, ``CommandOutputs.run``:
``fmt.Errorf("%w: running %q:\n%s", err, cmd, stdouterrbuf.String())``, the
command line and everything it printed). So what each secret-touching step prints when it fails
must hold no secret. The steps are the program's own strings and stdin
(``components/remote_steps.py``: credentials, install, tls, preflight, roll,
bootstrap), run on one testbed host against the KMS emulator, with known
secrets planted: the on-prem secret access key, the node's TLS private key and
the cluster data key's plaintext (as hex and base64). The scanner has a
control that finds each planted value when it is printed.

Also here: in aws-plugin mode the on-prem key reaches mariadbd as a systemd
credential, so a process mariadbd starts (an SST script, socat) inherits no
secret in its environment; checked with the real drop-in on Debian 12's systemd.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cluster_setup import ADMIN_ROLE, DUMMY_HOST_KEY, FakeCredentials, make_cluster_key
from conftest import require_testbed

from components.cluster import node_files_payload
from components.config import ClusterConfig, parse_config
from components.node_files import CREDENTIALS_PATH, UNWRAP_CONF_PATH, load_node_files, render_unwrap_conf
from components.plan import Step, bootstrap_step, node_plan
from components.plan.files import config_files, credentials_files, seed_files
from components.plan.steps import FileSpec, put_payload
from components.tls_material import KEY_PATH, tls_files
from rehearsal.kms_server import KmsServer
from rehearsal.testbed import ExecResult, Settings, Testbed
from rehearsal.tls_certs import LocalCa

HOST = "sec1"
DROP_IN = "/etc/systemd/system/mariadb.service.d/60-mariadb-kms-aws-plugin.conf"


@dataclass(frozen=True, repr=False)
class Planted:
    """The secrets this test plants; the scanner looks for each in every form a step could print it."""

    credentials: FakeCredentials
    tls_key_pem: str
    data_key: bytes

    def forms(self) -> dict[str, str]:
        key_body = "".join(self.tls_key_pem.strip().splitlines()[1:-1])
        return {
            "secret access key": self.credentials.secret_access_key,
            "TLS private key": key_body[:48],
            "data key (hex)": self.data_key.hex(),
            "data key (base64)": base64.b64encode(self.data_key).decode(),
        }


def leaks(printed: str, planted: Planted) -> list[str]:
    """The planted secrets found in ``printed`` (by name, never the value)."""
    return [name for name, value in planted.forms().items() if value in printed]


@dataclass
class Node:
    bed: Testbed
    kms: KmsServer
    cluster: ClusterConfig
    key_arn: str
    key_id: str
    blob_b64: str
    planted: Planted
    tls_payload: str

    def step(self, key: str) -> Step:
        if key == "bootstrap":
            return bootstrap_step()
        return node_plan(self.cluster.nodes[0], self.cluster).step(key)

    def run(self, command: str, stdin: str | None = None, timeout: float = 900) -> ExecResult:
        """A step's create string with its stdin, as the login user's shell runs it (sudo -n inside)."""
        return self.bed.exec(HOST, ["/bin/sh", "-c", command], input=stdin, timeout=timeout)

    def must_fail(self, key: str, stdin: str | None = None) -> ExecResult:
        result = self.run(self.step(key).create, stdin)
        assert result.rc != 0, f"{key} did not fail: {result.stdout[-2000:]} {result.stderr[-2000:]}"
        found = leaks(result.stdout + result.stderr, self.planted)
        assert found == [], f"{key} printed {found} when it failed"
        return result

    def must_pass(self, key: str, stdin: str | None = None) -> ExecResult:
        result = self.run(self.step(key).create, stdin)
        assert result.rc == 0, f"{key} failed: {result.stdout[-3000:]} {result.stderr[-3000:]}"
        return result

    def with_endpoint(self, files: dict[str, FileSpec]) -> dict[str, FileSpec]:
        """The program's files with unwrap.conf pointed at the KMS stand-in, as the rehearsal's overlay does."""
        conf = render_unwrap_conf(
            mode=self.cluster.mariadb.key_management, key_arn=self.key_arn, region=self.cluster.region,
            on_premises=True, endpoint_url=self.kms.endpoint_url,
        )
        _old, mode, owner = files[UNWRAP_CONF_PATH]
        return {**files, UNWRAP_CONF_PATH: (conf, mode, owner)}


def truncated(payload: str) -> str:
    """The first two thirds of a put payload: what arrives when the SSH connection drops on the way."""
    return payload[: len(payload) * 2 // 3]


def _settings() -> Settings:
    """A testbed of its own (prefix and subnet derived from the session's, third octet + 60)."""
    base = Settings.from_env()
    octets = str(base.subnet.network_address).split(".")
    octets[2] = str((int(octets[2]) + 60) % 256)
    return Settings(prefix=(base.prefix + "sc")[:6], subnet=ipaddress.IPv4Network(".".join(octets) + "/24"))


def _cluster(bed: Testbed) -> ClusterConfig:
    raw = {
        "keyAdmins": [ADMIN_ROLE, ADMIN_ROLE.replace("kms-admin", "kms-admin-2")],
        "clusterName": "mariadb-kms-secrets",
        "onPremNodes": [{"name": HOST, "address": bed.hosts[HOST].address, "sshUser": "root",
                         "hostKey": DUMMY_HOST_KEY}],
    }
    return parse_config(raw, stack="secrets", region="us-east-1")


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    require_testbed()
    with Testbed([HOST], settings=_settings()) as bed, KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
        bed.boot()
        key = make_cluster_key(kms, "secret step failures")
        data_key = kms.client().decrypt(CiphertextBlob=key.blob)["Plaintext"]
        cluster = _cluster(bed)
        ca = LocalCa(cluster.mariadb.cluster_name)
        issued = ca.issue(HOST, bed.hosts[HOST].address)
        planted = Planted(FakeCredentials.generate(), issued.key_pem, data_key)
        tls_payload = put_payload(tls_files(ca.cert_pem, issued.cert_pem, issued.key_pem))
        yield Node(bed, kms, cluster, key.key_arn, key.key_id, base64.b64encode(key.blob).decode(), planted,
                   tls_payload)


def test_control_the_scanner_finds_each_planted_secret_when_printed(node: Node) -> None:
    forms = node.planted.forms()
    for name, value in forms.items():
        assert leaks(f"error: something went wrong near {value} here", node.planted) == [name]
    printed = node.run("cat", stdin=node.planted.tls_key_pem + node.planted.credentials.secret_access_key)
    assert sorted(leaks(printed.stdout, node.planted)) == ["TLS private key", "secret access key"]


def test_every_secret_touching_step_fails_without_printing_a_secret(node: Node) -> None:
    bed, cluster, planted = node.bed, node.cluster, node.planted
    on_host = cluster.nodes[0]
    assert {s.key for s in node_plan(on_host, cluster).steps if s.touches_secret} | {"bootstrap"} == {
        "credentials", "install", "tls", "preflight", "roll", "bootstrap",
    }
    node_files, _ = node_files_payload(cluster.mariadb.key_management)
    node.must_pass("node-files", node_files)
    seed = put_payload(node.with_endpoint(
        seed_files(cluster, key_arn=node.key_arn, blob_b64=node.blob_b64, on_premises=True)
    ))
    node.must_pass("seed", seed)

    # credentials: the connection drops halfway through stdin (tar meets the end of its input).
    credentials = put_payload(credentials_files(
        cluster, access_key_id=planted.credentials.access_key_id,
        secret_access_key=planted.credentials.secret_access_key,
    ))
    node.must_fail("credentials", truncated(credentials))
    node.must_pass("credentials", credentials)

    # install: the key is disabled, so the datadir cannot be born encrypted.
    node.kms.client().disable_key(KeyId=node.key_id)
    node.must_fail("install")
    node.kms.client().enable_key(KeyId=node.key_id)
    node.must_pass("install")

    # tls: the same dropped connection, with the private key in the payload.
    node.must_fail("tls", truncated(node.tls_payload))
    node.must_pass("tls", node.tls_payload)
    assert bed.exec(HOST, ["test", "-s", KEY_PATH]).rc == 0

    config = put_payload(node.with_endpoint(config_files(
        on_host, cluster, key_arn=node.key_arn, blob_b64=node.blob_b64, node_address=bed.hosts[HOST].address,
        member_addresses=[bed.hosts[HOST].address],
    )))
    node.must_pass("config", config)

    # preflight, bootstrap and roll: the key is disabled, so nothing can unwrap it.
    node.kms.client().disable_key(KeyId=node.key_id)
    node.must_fail("preflight")
    node.must_fail("bootstrap")
    node.must_fail("roll")
    node.kms.client().enable_key(KeyId=node.key_id)
    # The same steps succeed once the key is back: the failures above were the key, not the test.
    node.must_pass("preflight")


def test_aws_plugin_credentials_stay_out_of_every_environment(node: Node) -> None:
    """The real drop-in on a stand-in for mariadb.service: the service and its children see only a path."""
    bed, planted = node.bed, node.planted
    drop_in = load_node_files("aws-plugin")[DROP_IN][0]
    unit = "mkms-plugin-env"
    bed.put_file(HOST, f"/etc/systemd/system/{unit}.service.d/60.conf", drop_in)
    probe = (
        "#!/bin/sh\n"
        "env > /run/mkms-probe/env-service\n"
        "sh -c env > /run/mkms-probe/env-child\n"  # what an SST script or socat would inherit
        'cat "$AWS_SHARED_CREDENTIALS_FILE" > /run/mkms-probe/creds-seen\n'
    )
    bed.put_file(HOST, "/usr/local/bin/mkms-probe", probe, 0o755)
    bed.put_file(HOST, f"/etc/systemd/system/{unit}.service",
                 "[Service]\nType=oneshot\nUser=nobody\nExecStart=/usr/local/bin/mkms-probe\n")
    bed.exec(HOST, "install -d -m 1777 /run/mkms-probe && systemctl daemon-reload", check=True)

    def start() -> tuple[ExecResult, str, str, str]:
        bed.exec(HOST, "rm -f /run/mkms-probe/*")
        started = bed.exec(HOST, ["systemctl", "start", f"{unit}.service"], timeout=60)
        names = ("env-service", "env-child", "creds-seen")
        read = [bed.exec(HOST, ["cat", f"/run/mkms-probe/{f}"]).stdout for f in names]
        return started, read[0], read[1], read[2]

    # On premises: the node's credentials file is there (the credentials step put it, root 0600).
    started, service_env, child_env, seen = start()
    assert started.rc == 0, started.stderr
    assert leaks(service_env + child_env, planted) == []
    assert "AWS_SHARED_CREDENTIALS_FILE=/run/credentials/" in child_env and "AWS_PROFILE=mariadb-kms" in child_env
    assert leaks(seen, planted) == ["secret access key"]  # the service's own user can read it by path
    # EC2: no credentials file; the unit still starts, with no profile in the fallback (instance profile).
    bed.exec(HOST, ["mv", CREDENTIALS_PATH, f"{CREDENTIALS_PATH}.aside"], check=True)
    try:
        started, _service_env, child_env, seen = start()
        assert started.rc == 0, started.stderr
        assert "[" not in seen and "AWS_SHARED_CREDENTIALS_FILE=" in child_env
    finally:
        bed.exec(HOST, ["mv", f"{CREDENTIALS_PATH}.aside", CREDENTIALS_PATH], check=True)
