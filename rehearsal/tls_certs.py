"""Certificates of the shape ClusterCa issues, made here with ``cryptography`` (pulumi-tls cannot run here).

Same subjects, SANs, key algorithm, key usages and key ids as
``components/cluster_ca`` asks pulumi-tls for (the names all come from
``components/tls_material``): an ECDSA P-256 root with cert signing only and
a path length of 0, node certificates signed by that root directly, valid
for server and client authentication. Keys are PEM "EC PRIVATE KEY", as
pulumi-tls's ``private_key_pem`` is. For the real-host tests and the
benchmark; never a way to make production certificates.

    ca = LocalCa("mariadb-kms")
    node = ca.issue("node1", "10.231.0.11")
    renewed = ca.issue("node1", "10.231.0.11", key_pem=node.key_pem)   # pulumi-tls renews with the same key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components.tls_material import Subject, ca_subject, node_sans, node_subject


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str
    serial: int


def _name(subject: Subject) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, subject.common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject.organization),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, subject.organizational_unit),
    ])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def _usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=not signing, data_encipherment=False,
        key_agreement=False, key_cert_sign=signing, crl_sign=signing, encipher_only=False, decipher_only=False,
    )


class LocalCa:
    """A root CA in memory. ``days`` is its validity; ``renew()`` re-issues its certificate with the same key."""

    def __init__(self, cluster_name: str, stack: str = "testbed", days: int = 3650) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = _name(ca_subject(cluster_name, stack))
        self.cluster_name = cluster_name
        self.days = days
        self.cert = self._self_signed()

    def _self_signed(self) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(self.subject)
            .issuer_name(self.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(signing=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def renew(self) -> None:
        """A new CA certificate, same key and subject (what early renewal of the SelfSignedCert does)."""
        self.cert = self._self_signed()

    def issue(self, node_name: str, address: str, *, days: int = 365, key_pem: str | None = None,
              not_before: dt.datetime | None = None) -> Issued:
        """A node certificate signed by this root directly; a new key unless ``key_pem`` is given."""
        if key_pem is None:
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            loaded = serialization.load_pem_private_key(key_pem.encode(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            key = loaded
        sans = node_sans(node_name, address)
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in sans.dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sans.ip_addresses]
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(node_subject(node_name, self.cluster_name)))
            .issuer_name(self.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(signing=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), serial)
