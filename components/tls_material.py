"""What the cluster CA issues and where it lands on a node (pure: no pulumi).

- the subjects and SANs of the root CA and of each node certificate;
- lifetimes in hours, as pulumi-tls takes them;
- the node's TLS files (paths, modes, owners): one certificate per node serves
  all three channels, because Galera and the SST authenticate both ends with
  the same certificate (server and client use);
- the verify tool's expectation flags: a channel that config turns off is
  passed as ``--tls-off CHANNEL``, so verification accepts plaintext there
  and nowhere else.

The renderer (``components/mycnf``), the component (``components/cluster_ca``)
and the node's verify tool agree through the names here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from components.config import TlsConfig

TLS_DIR = "/etc/mysql/tls"
CA_CERT_PATH = f"{TLS_DIR}/ca.pem"
CERT_PATH = f"{TLS_DIR}/node-cert.pem"
KEY_PATH = f"{TLS_DIR}/node-key.pem"
# mariadbd and the SST scripts (run by mariadbd) read the key as the mysql user; nobody else may.
KEY_MODE = 0o600
KEY_OWNER = "mysql:mysql"
CERT_MODE = 0o644
CERT_OWNER = "root:root"

# ECDSA P-256: every TLS stack involved (OpenSSL in mariadbd, Galera and socat; MariaDB Connector/C,
# /J, /Python) takes it, and handshakes are cheaper than with RSA.
KEY_ALGORITHM = "ECDSA"
KEY_CURVE = "P256"
# Galera and socat authenticate both ends, so one certificate is a server and a client.
# key_encipherment only means something for RSA keys; it is kept for clients that insist on it.
NODE_CERT_USES = ("server_auth", "client_auth", "digital_signature", "key_encipherment")
CA_CERT_USES = ("cert_signing", "crl_signing", "digital_signature")
TLS_VERSIONS = "TLSv1.2,TLSv1.3"
# The SST script (wsrep_sst_mariabackup, MariaDB 10.11): both ends verify the peer's chain against
# ssl-ca; the donor also checks the joiner's certificate name, and the joiner the donor's one-time secret.
SST_SSL_MODE = "VERIFY_IDENTITY"

# Channel names the verify tool takes after --tls-off.
CHANNELS = ("replication", "sst", "clients", "secure-transport")

_NAME_LIMIT = 64  # X.520 upper bound for CN, O and OU


@dataclass(frozen=True)
class Subject:
    common_name: str
    organization: str
    organizational_unit: str


@dataclass(frozen=True)
class Sans:
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


def ca_subject(cluster_name: str, stack: str, generation: int = 1) -> Subject:
    """Each CA key generation has its own name, so a chain never has two candidate issuers of one name."""
    suffix = "" if generation == 1 else f" g{generation}"
    return Subject(
        common_name=f"mariadb-kms root CA {cluster_name}"[:_NAME_LIMIT - len(suffix)] + suffix,
        organization="mariadb-kms",
        organizational_unit=f"stack {stack}"[:_NAME_LIMIT],
    )


def ca_resource_suffix(generation: int) -> str:
    """Generation 1 keeps the names (and so the URNs) the CA had before generations existed."""
    return "" if generation == 1 else f"-g{generation}"


def ca_bundle(pems: list[str]) -> str:
    """The trusted CA certificates as one PEM file (the issuing generation first), each ending in a newline."""
    return "".join(p if p.endswith("\n") else p + "\n" for p in pems)


def node_subject(node_name: str, cluster_name: str) -> Subject:
    """CN is the node name: the SST joiner announces its certificate's CN, and the donor checks it."""
    return Subject(common_name=node_name, organization="mariadb-kms", organizational_unit=cluster_name[:_NAME_LIMIT])


def node_sans(node_name: str, address: str) -> Sans:
    """The node's name as a DNS SAN, its address as an IP SAN (or a second DNS SAN when it is a name)."""
    dns = [node_name]
    ips: list[str] = []
    try:
        ips.append(str(ipaddress.ip_address(address)))
    except ValueError:
        name = address.rstrip(".").lower()
        if name and name not in dns:
            dns.append(name)
    return Sans(dns_names=tuple(dns), ip_addresses=tuple(ips))


def hours(days: int) -> int:
    return days * 24


def ca_early_renewal_hours(tls: TlsConfig) -> int:
    """The CA certificate is renewed once it has less than a node certificate's lifetime left.

    Renewal keeps the CA's key and subject (and so its subject key id), so
    certificates signed under the old CA certificate still chain to the new one
    while the nodes take the new one a node at a time.
    """
    return hours(tls.validity_days)


def tls_files(ca_cert_pem: str, cert_pem: str, key_pem: str) -> dict[str, tuple[str, int, str]]:
    """``{path: (content, mode, owner)}`` of a node's TLS material. Holds the private key: secret."""
    return {
        CA_CERT_PATH: (ca_cert_pem, CERT_MODE, CERT_OWNER),
        CERT_PATH: (cert_pem, CERT_MODE, CERT_OWNER),
        KEY_PATH: (key_pem, KEY_MODE, KEY_OWNER),
    }


def channels_off(tls: TlsConfig) -> tuple[str, ...]:
    off = {
        "replication": not tls.replication,
        "sst": not tls.sst,
        "clients": not tls.clients,
        "secure-transport": not tls.require_secure_transport,
    }
    return tuple(name for name in CHANNELS if off[name])


def verify_tls_args(tls: TlsConfig) -> list[str]:
    """The verify tool's arguments for channels config turned off; empty when every channel is on."""
    args: list[str] = []
    for name in channels_off(tls):
        args += ["--tls-off", name]
    return args
