"""Real pulumi-tls outputs for the mocks: keys and certificates that work on real hosts.

The rehearsal pins the SSH host keys the program generates and installs the
certificates its CA issues, so a mock may not answer pulumi-tls with
placeholders: every key here is freshly generated and every certificate is
signed, with the library ``cryptography``, shaped as pulumi-tls (the Terraform
TLS provider) shapes them:

- ``PrivateKey``: ``privateKeyPem`` is PKCS#1 for RSA, SEC1 for ECDSA, PKCS#8
  for ED25519; ``privateKeyPemPkcs8``, OpenSSH private and public forms (the
  public line ends in a newline) and both fingerprints;
- ``SelfSignedCert`` / ``CertRequest`` / ``LocallySignedCert``: subject, SANs
  (DNS names and IP addresses), ``allowedUses`` as key usage and extended key
  usage, basic constraints (critical) with ``maxPathLength`` on a CA; a CA
  certificate gets a subject key id (as Go's x509 does) and a certificate it
  signs the matching authority key id.

Inputs arrive with their wire (camelCase) names.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_CURVES: dict[str, ec.EllipticCurve] = {
    "P224": ec.SECP224R1(),
    "P256": ec.SECP256R1(),
    "P384": ec.SECP384R1(),
    "P521": ec.SECP521R1(),
}
# pulumi-tls's allowedUses name -> cryptography's KeyUsage argument.
_KEY_USAGES = {
    "digital_signature": "digital_signature",
    "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment",
    "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement",
    "cert_signing": "key_cert_sign",
    "crl_signing": "crl_sign",
    "encipher_only": "encipher_only",
    "decipher_only": "decipher_only",
}
_EXTENDED_USAGES = {
    "any_extended": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
_SUBJECT_FIELDS = (
    ("commonName", NameOID.COMMON_NAME),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ("country", NameOID.COUNTRY_NAME),
    ("province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("postalCode", NameOID.POSTAL_CODE),
    ("serialNumber", NameOID.SERIAL_NUMBER),
)


def private_key(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A new key as ``tls.PrivateKey`` reports it."""
    algorithm = str(inputs.get("algorithm") or "")
    key: PrivateKey
    if algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits") or 2048))
        traditional = ser.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ECDSA":
        curve = str(inputs.get("ecdsaCurve") or "P224")
        if curve not in _CURVES:
            raise ValueError(f"tls.PrivateKey: unknown ECDSA curve {curve!r}")
        key = ec.generate_private_key(_CURVES[curve])
        traditional = ser.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
        traditional = ser.PrivateFormat.PKCS8  # ED25519 has no traditional form
    else:
        raise ValueError(f"tls.PrivateKey: unknown algorithm {algorithm!r}")
    public = key.public_key()
    openssh_public = public.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    wire = base64.b64decode(openssh_public.split()[1])
    md5 = hashlib.md5(wire, usedforsecurity=False).hexdigest()
    sha256 = base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")
    none = ser.NoEncryption()
    return {
        "privateKeyPem": key.private_bytes(ser.Encoding.PEM, traditional, none).decode(),
        "privateKeyPemPkcs8": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, none).decode(),
        "privateKeyOpenssh": key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, none).decode(),
        "publicKeyPem": public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": openssh_public + "\n",
        "publicKeyFingerprintMd5": ":".join(md5[i:i + 2] for i in range(0, len(md5), 2)),
        "publicKeyFingerprintSha256": "SHA256:" + sha256,
    }


def _load_key(pem: Any) -> PrivateKey:
    key = ser.load_pem_private_key(str(pem).encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def _algorithm(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    return "ED25519"


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _subject(value: Any) -> x509.Name:
    fields = value if isinstance(value, Mapping) else {}
    parts = [x509.NameAttribute(oid, str(fields[k])) for k, oid in _SUBJECT_FIELDS if fields.get(k)]
    return x509.Name(parts)


def _sans(inputs: Mapping[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(str(d)) for d in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(str(a))) for a in inputs.get("ipAddresses") or []]
    names += [x509.UniformResourceIdentifier(str(u)) for u in inputs.get("uris") or []]
    return names


def _usages(uses: Sequence[str]) -> tuple[x509.KeyUsage | None, x509.ExtendedKeyUsage | None]:
    unknown = set(uses) - set(_KEY_USAGES) - set(_EXTENDED_USAGES)
    if unknown:
        raise ValueError(f"allowedUses: unsupported {sorted(unknown)}")
    flags = {argument: name in uses for name, argument in _KEY_USAGES.items()}
    key_usage = x509.KeyUsage(**flags) if any(flags.values()) else None
    extended = [_EXTENDED_USAGES[u] for u in uses if u in _EXTENDED_USAGES]
    return key_usage, (x509.ExtendedKeyUsage(extended) if extended else None)


def _certificate(
    inputs: Mapping[str, Any],
    *,
    subject: x509.Name,
    public_key: Any,
    sans: list[x509.GeneralName],
    issuer: x509.Name,
    signer: PrivateKey,
    issuer_ski: x509.SubjectKeyIdentifier | None,
) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    hours = int(inputs.get("validityPeriodHours") or 0)
    if hours <= 0:
        raise ValueError("validityPeriodHours must be positive")
    end = now + datetime.timedelta(hours=hours)
    is_ca = bool(inputs.get("isCaCertificate"))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(end)
    )
    path_length = inputs.get("maxPathLength")
    builder = builder.add_extension(
        x509.BasicConstraints(ca=is_ca, path_length=int(path_length) if is_ca and path_length is not None else None),
        critical=True,
    )
    key_usage, extended = _usages([str(u) for u in inputs.get("allowedUses") or []])
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if extended is not None:
        builder = builder.add_extension(extended, critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if is_ca or inputs.get("setSubjectKeyId"):
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    cert = builder.sign(signer, _hash_for(signer))
    early = int(inputs.get("earlyRenewalHours") or 0)
    return {
        "certPem": cert.public_bytes(ser.Encoding.PEM).decode(),
        "validityStartTime": now.isoformat().replace("+00:00", "Z"),
        "validityEndTime": end.isoformat().replace("+00:00", "Z"),
        "readyForRenewal": early > 0 and end - datetime.timedelta(hours=early) <= now,
    }


def self_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs.get("privateKeyPem"))
    subject = _subject(inputs.get("subject"))
    public = key.public_key()
    own_ski = x509.SubjectKeyIdentifier.from_public_key(public) if inputs.get("isCaCertificate") else None
    out = _certificate(
        inputs, subject=subject, public_key=public, sans=_sans(inputs), issuer=subject, signer=key, issuer_ski=own_ski
    )
    return {**out, "keyAlgorithm": _algorithm(key)}


def cert_request(inputs: Mapping[str, Any]) -> dict[str, Any]:
    key = _load_key(inputs.get("privateKeyPem"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(inputs.get("subject")))
    sans = _sans(inputs)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, _hash_for(key))
    return {"certRequestPem": csr.public_bytes(ser.Encoding.PEM).decode(), "keyAlgorithm": _algorithm(key)}


def locally_signed_cert(inputs: Mapping[str, Any]) -> dict[str, Any]:
    csr = x509.load_pem_x509_csr(str(inputs.get("certRequestPem")).encode())
    ca_key = _load_key(inputs.get("caPrivateKeyPem"))
    ca_cert = x509.load_pem_x509_certificate(str(inputs.get("caCertPem")).encode())
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    try:
        issuer_ski: x509.SubjectKeyIdentifier | None = ca_cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
    except x509.ExtensionNotFound:
        issuer_ski = None
    out = _certificate(
        inputs, subject=csr.subject, public_key=csr.public_key(), sans=sans, issuer=ca_cert.subject,
        signer=ca_key, issuer_ski=issuer_ski,
    )
    return {**out, "caKeyAlgorithm": _algorithm(ca_key)}
