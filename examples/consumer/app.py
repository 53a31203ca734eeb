"""What an application stack takes from a mariadb-kms cluster, through its outputs only.

- ``kmsKeyArn``: an application role may ``kms:DescribeKey`` the cluster key
  (to show which key protects its data; it can never decrypt);
- ``nodes`` and ``clusterCaCertificate``: the client settings (every node's
  address, port 3306, the CA bundle with server verification on) go into an
  SSM parameter the application reads at start;
- ``verification``: a gate. The application is configured only against a
  cluster whose every node passed its verification.

Every output is read with ``require_output``: a renamed or removed output fails
this stack's preview, naming the output, instead of configuring a client with
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_aws as aws

REQUIRED_OUTPUTS = ("kmsKeyArn", "nodes", "clusterCaCertificate", "verification")
MARIADB_PORT = 3306


def describe_key_policy(key_arn: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kms:DescribeKey", "Resource": key_arn}],
    })


def verification_gate(report: Mapping[str, Any]) -> list[str]:
    """The verified nodes' names; raises when any node failed or none reported."""
    if not report:
        raise ValueError("the cluster reports no verification: refusing to configure clients against it")
    failed = sorted(name for name, r in report.items() if not (isinstance(r, Mapping) and r.get("ok") is True))
    if failed:
        raise ValueError(f"verification failed on {', '.join(failed)}: refusing to configure clients against it")
    return sorted(report)


def client_settings(nodes: list[Mapping[str, Any]], ca_pem: str | None, verified: list[str]) -> str:
    if not ca_pem:
        raise ValueError("clusterCaCertificate is null or empty (the cluster serves clients without TLS): "
                         "clients here require verified TLS")
    unverified = sorted({str(n["name"]) for n in nodes} - set(verified))
    if unverified:
        raise ValueError(f"nodes without a verification report: {', '.join(unverified)}")
    return json.dumps({
        "hosts": [str(n["address"]) for n in nodes],
        "port": MARIADB_PORT,
        "ssl_ca": ca_pem,
        "ssl_verify_server_cert": True,
    }, indent=2)


def build(cluster_stack: str) -> None:
    cluster = pulumi.StackReference(cluster_stack)
    out = {name: cluster.require_output(name) for name in REQUIRED_OUTPUTS}

    role = aws.iam.Role(
        "app",
        assume_role_policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                           "Action": "sts:AssumeRole"}],
        }),
    )
    aws.iam.RolePolicy("app-describe-key", role=role.id, policy=out["kmsKeyArn"].apply(describe_key_policy))
    verified = out["verification"].apply(verification_gate)
    settings = aws.ssm.Parameter(
        "app-database",
        type="String",
        description=f"MariaDB client settings for the cluster in {cluster_stack}",
        # Not secret (addresses and a public CA certificate), so insecure_value: the provider's `value` is always
        # stored as a secret, which would hide every change of it from a preview's diff.
        insecure_value=pulumi.Output.all(out["nodes"], out["clusterCaCertificate"], verified).apply(
            lambda v: client_settings(v[0], v[1], v[2])
        ),
    )
    pulumi.export("appRoleArn", role.arn)
    pulumi.export("databaseSettingsParameter", settings.name)
