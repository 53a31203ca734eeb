"""ClusterCa: the cluster's own root CA and one certificate per node (pulumi-tls), for encryption in transit.

Wiring only; names, SANs and lifetimes come from ``components/tls_material``.

- The root signs every node certificate itself, no intermediate: Galera
  rejects leaf certificates issued by an intermediate CA (MDEV-35812).
- A node certificate is a server and a client certificate at once (Galera and
  the SST authenticate both ends), with the node's name and address as SANs.
- ``early_renewal_hours`` makes ``pulumi up`` issue a new certificate once the
  old one is inside its renewal window; the node path installs it and reloads
  one node at a time. The CA certificate renews the same way, keeping its key
  and subject, so certificates under the old and the new CA certificate
  verify against either while the nodes roll over.
- A new CA key is a new generation (``tlsCaGeneration``), rolled in three
  stages: every node trusts both generations' certificates (one bundle file),
  then gets a certificate from the new one, then trusts only the new one.
  Each stage is a change of the node's TLS files, which the node path
  installs and reloads one node at a time, without a restart.
- Private keys live in secret state only. ``key_pem`` outputs are secret; the
  node path hands them to nodes on stdin.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.config import TlsConfig
from components.tls_material import (
    CA_CERT_USES,
    KEY_ALGORITHM,
    KEY_CURVE,
    NODE_CERT_USES,
    Sans,
    ca_bundle,
    ca_early_renewal_hours,
    ca_resource_suffix,
    ca_subject,
    hours,
    node_sans,
    node_subject,
)

COMPONENT_TYPE = "mariadb-kms:index:ClusterCa"


@dataclass(frozen=True)
class NodeCertificate:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]
    """Secret."""


class ClusterCa(pulumi.ComponentResource):
    ca_cert_pem: pulumi.Output[str]
    """The root CA certificate: the trust anchor of every node and of clients (``clusterCaCertificate``)."""
    certificates: dict[str, NodeCertificate]
    """Per node name."""

    def __init__(
        self,
        name: str,
        *,
        cluster_name: str,
        stack: str,
        nodes: Mapping[str, pulumi.Input[str]],
        settings: TlsConfig,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """``nodes``: node name -> its address (an IP address or a DNS name; an EC2 node's is an Output)."""
        super().__init__(COMPONENT_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # One key and certificate per trusted generation; the first (tlsCaGeneration) issues.
        cas: list[tuple[tls.PrivateKey, tls.SelfSignedCert]] = []
        for generation in settings.ca_generations:
            suffix = ca_resource_suffix(generation)
            gen_key = tls.PrivateKey(
                f"{name}-ca-key{suffix}", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child
            )
            subject = ca_subject(cluster_name, stack, generation)
            gen_cert = tls.SelfSignedCert(
                f"{name}-ca-cert{suffix}",
                private_key_pem=gen_key.private_key_pem,
                is_ca_certificate=True,
                # Leaves only: nothing may chain through an intermediate below this root.
                max_path_length=0,
                allowed_uses=list(CA_CERT_USES),
                subject=tls.SelfSignedCertSubjectArgs(
                    common_name=subject.common_name,
                    organization=subject.organization,
                    organizational_unit=subject.organizational_unit,
                ),
                validity_period_hours=hours(settings.ca_validity_days),
                early_renewal_hours=ca_early_renewal_hours(settings),
                # The key id follows the key, so a renewed CA certificate still matches old leaves' authority key id.
                set_subject_key_id=True,
                set_authority_key_id=True,
                opts=child,
            )
            cas.append((gen_key, gen_cert))
        ca_key, ca_cert = cas[0]

        self.certificates = {}
        for node_name, address in nodes.items():
            key = tls.PrivateKey(f"{name}-{node_name}-key", algorithm=KEY_ALGORITHM, ecdsa_curve=KEY_CURVE, opts=child)
            sans = pulumi.Output.from_input(address).apply(functools.partial(node_sans, node_name))
            subject = node_subject(node_name, cluster_name)
            request = tls.CertRequest(
                f"{name}-{node_name}-csr",
                private_key_pem=key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(
                    common_name=subject.common_name,
                    organization=subject.organization,
                    organizational_unit=subject.organizational_unit,
                ),
                dns_names=sans.apply(_dns_names),
                ip_addresses=sans.apply(_ip_addresses),
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{name}-{node_name}-cert",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca_cert.cert_pem,
                allowed_uses=list(NODE_CERT_USES),
                validity_period_hours=hours(settings.validity_days),
                early_renewal_hours=hours(settings.early_renewal_days),
                set_subject_key_id=True,
                opts=child,
            )
            self.certificates[node_name] = NodeCertificate(
                cert_pem=cert.cert_pem, key_pem=pulumi.Output.secret(key.private_key_pem)
            )

        # What nodes and clients trust: every generation's certificate, the issuing one first.
        # One generation: the certificate itself, byte for byte as before generations existed (no reload).
        self.ca_cert_pem = ca_cert.cert_pem if len(cas) == 1 else pulumi.Output.all(
            *(c.cert_pem for _, c in cas)
        ).apply(lambda pems: ca_bundle(list(pems)))
        self.register_outputs({
            "caCertPem": self.ca_cert_pem,
            "nodeCertPems": {n: c.cert_pem for n, c in self.certificates.items()},
        })


def _dns_names(sans: Sans) -> list[str]:
    return list(sans.dns_names)


def _ip_addresses(sans: Sans) -> list[str]:
    return list(sans.ip_addresses)
