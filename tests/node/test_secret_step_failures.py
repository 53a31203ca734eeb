"""Every secret-touching step, made to fail on a real host, prints no secret (stdout or stderr).

pulumi-command copies a failed command's stdout and stderr into the error text
the engine shows and logs, whatever ``logging`` says (pulumi/pulumi-command,
``provider/pkg/provider/remote/commandOutputs.go``, ``CommandOutputs.run``:
``fmt.Errorf("%w: running %q:\n%s", err, cmd, stdouterrbuf.String())``, the
command line and everything it printed). So what each secret-touching step prints when it fails
must hold no secret. The steps are the program's own recorded commands and
stdin (``rehearsal/runner`` records the program for a one-node on-premises
stack on this host: credentials, install, tls, preflight, roll, bootstrap,
with the overlay's KMS endpoint), run on one testbed host against the KMS
emulator, each as the login user's shell runs it, with its stdin cut short or
the key disabled to make it fail. The secrets to find are the ones that
recording made: the on-prem secret access key, the node's TLS private key and
the cluster data key's plaintext (as hex and base64). The scanner has a
control that finds each planted value when it is printed.

Also here: in aws-plugin mode the on-prem key reaches mariadbd as a systemd
credential, so a process mariadbd starts (an SST script, socat) inherits no
secret in its environment; checked with the real drop-in on Debian 12's systemd.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import require_testbed, settings_beside_session

from components.config import ClusterConfig, parse_config
from components.node_files import CREDENTIALS_PATH, load_node_files
from components.plan import node_plan
from components.tls_material import KEY_PATH
from rehearsal import overlay as ov
from rehearsal.kms_server import KmsServer
from rehearsal.plan import decode_put
from rehearsal.runner import Program, ProgramStack, host_argv, onprem_config
from rehearsal.testbed import ExecResult, Testbed

HOST = "sec1"
DROP_IN = "/etc/systemd/system/mariadb.service.d/60-mariadb-kms-aws-plugin.conf"


@dataclass(frozen=True, repr=False)
class Planted:
    """The secrets the recording made; the scanner looks for each in every form a step could print it."""

    secret_access_key: str
    tls_key_pem: str
    data_key: bytes

    def forms(self) -> dict[str, str]:
        key_body = "".join(self.tls_key_pem.strip().splitlines()[1:-1])
        return {
            "secret access key": self.secret_access_key,
            "TLS private key": key_body[:48],
            "data key (hex)": self.data_key.hex(),
            "data key (base64)": base64.b64encode(self.data_key).decode(),
        }

    def __repr__(self) -> str:  # never in test output
        return "Planted(…)"


def leaks(printed: str, planted: Planted) -> list[str]:
    """The planted secrets found in ``printed`` (by name, never the value)."""
    return [name for name, value in planted.forms().items() if value in printed]


@dataclass
class Node:
    bed: Testbed
    kms: KmsServer
    program: Program
    planted: Planted
    shell: str  # the connection user's login shell, which runs each command as sshd would

    @property
    def cluster(self) -> ClusterConfig:
        """The stack config the program was recorded with, as the program parses it."""
        return parse_config(self.program.config, stack=self.program.stack, region=self.program.region)

    def command_name(self, key: str) -> str:
        """The recorded command of one step on this host (``sec1-ssh-tls``, ``cluster-bootstrap``)."""
        names = self.program.names(node=HOST, step=key)
        assert len(names) == 1, f"one {key} command expected on {HOST}: {names}"
        return names[0]

    def stdin(self, key: str) -> str:
        """What the program sends on the step's stdin (the overlay's KMS endpoint applied)."""
        name = self.command_name(key)
        sent = next(s for s in self.program.sent if s.command.name == name)
        assert sent.stdin, f"{name} has no stdin"
        return sent.stdin

    def run(self, command: str, stdin: str | None = None, timeout: float = 900) -> ExecResult:
        """A shell command with its stdin, run as root."""
        return self.bed.exec(HOST, ["/bin/sh", "-c", command], input=stdin, timeout=timeout)

    def run_step(self, key: str, stdin: str | None = None) -> ExecResult:
        """The step's recorded command, as the runner runs it, with ``stdin`` (none, or what the test sends)."""
        argv = host_argv(self.program.command(self.command_name(key)), self.shell)
        return self.bed.exec(HOST, argv, input=stdin, timeout=900)

    def must_fail(self, key: str, stdin: str | None = None) -> ExecResult:
        result = self.run_step(key, stdin)
        assert result.rc != 0, f"{key} did not fail: {result.stdout[-2000:]} {result.stderr[-2000:]}"
        found = leaks(result.stdout + result.stderr, self.planted)
        assert found == [], f"{key} printed {found} when it failed"
        return result

    def must_pass(self, key: str, stdin: str | None = None) -> ExecResult:
        result = self.run_step(key, stdin)
        assert result.rc == 0, f"{key} failed: {result.stdout[-3000:]} {result.stderr[-3000:]}"
        return result


def truncated(payload: str) -> str:
    """The first two thirds of a put payload: what arrives when the SSH connection drops on the way."""
    return payload[: len(payload) * 2 // 3]


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    require_testbed()
    with Testbed([HOST], settings=settings_beside_session("sc", 60)) as bed, \
            KmsServer(bed.bridge_address, state_dir=bed.run_dir) as kms:
        bed.boot()
        program = ProgramStack(kms).record(onprem_config(bed, [HOST]), bed)
        # Declared in the overlay, as the runner's deploy places it: the hosts share one disk.
        bed.put_file(HOST, ov.DPKG_UNSAFE_IO_PATH, ov.DPKG_UNSAFE_IO, 0o644, "root:root")
        data_key = kms.client().decrypt(CiphertextBlob=program.data_key_blob,
                                        EncryptionContext=program.encryption_context)["Plaintext"]
        tls_sent = next(s for s in program.sent if s.command.name == f"{HOST}-ssh-tls")
        assert tls_sent.stdin
        tls_key = decode_put(tls_sent.stdin)[KEY_PATH][0].decode()
        planted = Planted(program.onprem_access_key[1], tls_key, data_key)
        shell = bed.exec(HOST, ["getent", "passwd", "root"]).stdout.strip().split(":")[6]
        yield Node(bed, kms, program, planted, shell)


def test_control_the_scanner_finds_each_planted_secret_when_printed(node: Node) -> None:
    forms = node.planted.forms()
    for name, value in forms.items():
        assert leaks(f"error: something went wrong near {value} here", node.planted) == [name]
    printed = node.run("cat", stdin=node.planted.tls_key_pem + node.planted.secret_access_key)
    assert sorted(leaks(printed.stdout, node.planted)) == ["TLS private key", "secret access key"]


def test_every_secret_touching_step_fails_without_printing_a_secret(node: Node) -> None:
    bed, cluster = node.bed, node.cluster
    on_host = cluster.nodes[0]
    assert {s.key for s in node_plan(on_host, cluster).steps if s.touches_secret} | {"bootstrap"} == {
        "credentials", "install", "tls", "preflight", "roll", "bootstrap",
    }
    node.must_pass("node-files", node.stdin("node-files"))
    node.must_pass("seed", node.stdin("seed"))

    # credentials: the connection drops halfway through stdin (tar meets the end of its input).
    credentials = node.stdin("credentials")
    node.must_fail("credentials", truncated(credentials))
    node.must_pass("credentials", credentials)

    # install: the key is disabled, so the datadir cannot be born encrypted.
    key_id = node.program.key_id
    node.kms.client().disable_key(KeyId=key_id)
    node.must_fail("install")
    node.kms.client().enable_key(KeyId=key_id)
    node.must_pass("install")

    # tls: the same dropped connection, with the private key in the payload.
    tls = node.stdin("tls")
    node.must_fail("tls", truncated(tls))
    node.must_pass("tls", tls)
    assert bed.exec(HOST, ["test", "-s", KEY_PATH]).rc == 0

    node.must_pass("config", node.stdin("config"))

    # preflight, bootstrap and roll: the key is disabled, so nothing can unwrap it.
    node.kms.client().disable_key(KeyId=key_id)
    node.must_fail("preflight")
    node.must_fail("bootstrap")
    node.must_fail("roll")
    node.kms.client().enable_key(KeyId=key_id)
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
