"""A failed first boot is recovered by the program's first-boot SSH step, without replacing the instance.

One EC2-like host boots from the program's own rendered cloud-config, with failures injected
inside cloud-init's own run: its apt source does not answer (cloud-config ``packages:``; apt only
warns about that, and nftables is already in this image, so that module passes), and the data
volume is not attached in time (runcmd: the first-boot script fails). ``cloud-init status`` then
reports an error for good. The old first-boot step (``cloud-init status --wait``) fails on that host forever; the
first-boot step re-does what did not complete once the causes are gone, and success is the
program's own marker, not cloud-init's status.

Its own testbed (prefix and subnet derived from the session's, third octet + 50), so it can run
next to the session testbed.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest
from conftest import require_testbed, settings_beside_session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from components.cloud_config import DATA_VOLUME_CONF_PATH, LOGIN_USER, cloud_config_text, first_boot_files
from components.cloud_config import render_cloud_config as render
from components.node_files import node_files, render_unwrap_conf
from components.plan.steps import FIRST_BOOT, FIRST_BOOT_STEP
from rehearsal.demo import grant_net_admin, remove_nspawn_settings
from rehearsal.pkgrepo import APT_SOURCE_PATH
from rehearsal.testbed import Host, Testbed

NAME = "fb1"
OLD_STEP = "sudo -n cloud-init status --wait"
MARKER = "/var/lib/mariadb-kms/first-boot.done"
LATE_VOLUME = f"{DATA_VOLUME_CONF_PATH}.d/late-volume.conf"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class FirstBootTestbed(Testbed):
    """A testbed that leaves a failed cloud-init alone: starting cloud-final again would hide its error.

    (cloud-init does not re-run a module that failed once; a second final stage records no error.)
    """

    __test__ = False

    def _retry_failed_units(self, host: Host) -> str:
        failed = self.exec(host.name, ["systemctl", "--failed", "--no-legend", "--plain"]).stdout.split("\n")
        for unit in [line.split()[0] for line in failed if line.strip()]:
            if not unit.startswith("cloud-"):
                self.exec(host.name, ["systemctl", "restart", unit], timeout=120)
        return self.exec(host.name, ["systemctl", "is-system-running"]).stdout.strip()


def _ed25519() -> tuple[str, str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public, key


def _user_data(bed: Testbed, host_private: str, host_public: str, login_public: str) -> str:
    config: dict[str, Any] = render(
        node_name=NAME,
        files=first_boot_files(node_files("kms-envelope")),
        data_key_blob=base64.b64encode(secrets.token_bytes(64)).decode(),
        unwrap_conf=render_unwrap_conf(mode="kms-envelope", key_arn=KEY_ARN, region="us-east-1", on_premises=False),
        host_private_key=host_private,
        host_public_key=host_public,
        authorized_key=login_public,
        data_volume_id="vol-0123456789abcdef0",
    )
    # The injected failures, written by cloud-init itself (write_files runs before packages and runcmd):
    # a mirror that refuses connections, and a data volume that is not there within 3 s.
    unreachable = f"deb [trusted=yes] http://{bed.bridge_address}:1/ ./\n"
    late = "device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0\nwait_seconds=3\n"
    config["write_files"] += [
        {"path": APT_SOURCE_PATH, "content": unreachable, "permissions": "0644", "owner": "root:root"},
        {"path": LATE_VOLUME, "content": late, "permissions": "0644", "owner": "root:root"},
    ]
    return cloud_config_text(config)


class Login:
    def __init__(self, address: str, host_key: Ed25519PrivateKey, client: paramiko.Ed25519Key) -> None:
        self.address, self.client = address, client
        public = host_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        self.pinned = public.decode().split()[1]

    def run(self, command: str, timeout: float = 300) -> tuple[int, str, str]:
        """One SSH session as the login user, host key pinned, no pty: as pulumi-command runs a step."""
        with paramiko.Transport((self.address, 22)) as transport:
            transport.start_client(timeout=30)
            assert transport.get_remote_server_key().get_base64() == self.pinned
            transport.auth_publickey(LOGIN_USER, self.client)
            channel = transport.open_session(timeout=30)
            channel.settimeout(timeout)
            channel.exec_command(command)
            out = channel.makefile("rb").read().decode(errors="replace")
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            return channel.recv_exit_status(), out, err


@pytest.fixture(scope="module")
def failed_first_boot() -> Iterator[tuple[Testbed, Login]]:
    require_testbed()
    host_private, host_public, host_key = _ed25519()
    client_private, client_public, _ = _ed25519()
    client = paramiko.Ed25519Key.from_private_key(io.StringIO(client_private))
    settings = settings_beside_session("fb", 50)
    # Root on an EC2 instance may load nftables rules (the IMDS guard); nspawn drops that by default.
    grant_net_admin(settings, [NAME])
    try:
        with FirstBootTestbed([NAME], settings=settings) as bed:
            bed.seed(NAME, user_data=_user_data(bed, host_private, host_public, client_public))
            bed.boot()
            yield bed, Login(bed.hosts[NAME].address, host_key, client)
    finally:
        remove_nspawn_settings(settings)


def test_a_failed_first_boot_is_recovered_by_the_first_boot_step(failed_first_boot: tuple[Testbed, Login]) -> None:
    bed, login = failed_first_boot
    status = bed.exec(NAME, ["cloud-init", "status", "--long"])
    assert status.rc != 0 and "status: error" in status.stdout, status.stdout
    assert "runcmd" in status.stdout, status.stdout  # the failure happened inside cloud-init's own run
    assert bed.exec(NAME, ["test", "-e", MARKER]).rc != 0

    # Control: the old step fails on this host, and so does the new one while the causes remain.
    assert login.run(OLD_STEP)[0] != 0
    rc, out, err = login.run(FIRST_BOOT_STEP)
    assert rc != 0 and bed.exec(NAME, ["test", "-e", MARKER]).rc != 0, out + err

    # The mirror answers again and the volume is there (no separate volume on this host).
    bed.put_file(NAME, APT_SOURCE_PATH, bed.apt_source)
    bed.put_file(NAME, LATE_VOLUME, "device=none\n")

    rc, out, err = login.run(FIRST_BOOT_STEP)
    assert rc == 0, out + err
    assert "first boot complete" in out
    assert bed.exec(NAME, ["test", "-s", MARKER]).rc == 0
    guard = bed.exec(NAME, ["systemctl", "is-active", "mariadb-kms-imds-guard.service"]).stdout.strip()
    assert guard == "active"
    # cloud-init still says error, so the old step would still fail: the marker is the judge.
    assert bed.exec(NAME, ["cloud-init", "status"]).rc != 0
    assert login.run(OLD_STEP)[0] != 0

    rc, out, err = login.run(FIRST_BOOT_STEP)  # the next `pulumi up`: nothing left to do
    assert rc == 0 and "completed earlier" in out, out + err
    assert login.run(f"sudo -n {FIRST_BOOT} --check")[0] == 0  # what the verify step checks first
