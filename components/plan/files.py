"""The files the SSH path puts on a node, rendered from config (pure: no pulumi)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence

from components.config import ClusterConfig, NodeConfig
from components.encryption_context import cluster_context
from components.mycnf import (
    DATADIR_CONF_PATH,
    render_datadir_conf_of,
    render_encryption_cnf,
    render_mycnf,
    restart_relevant,
)
from components.node_files import (
    BLOB_PATH,
    CREDENTIALS_PATH,
    MYCNF_ENCRYPTION_PATH,
    MYCNF_NODE_PATH,
    UNWRAP_CONF_PATH,
    render_credentials_file,
    render_unwrap_conf,
)
from components.plan.steps import (
    BLOB_MODE,
    MYCNF_MODE,
    ROOT,
    SECRET_MODE,
    UNWRAP_CONF_MODE,
    FileSpec,
    files_digest,
)


def seed_files(
    cluster: ClusterConfig, *, key_arn: str, blob_b64: str, on_premises: bool
) -> dict[str, FileSpec]:
    """What the install path needs before it runs and that holds nothing about membership.

    The same set EC2 user-data places at first boot (unwrap.conf, the blob, the
    encryption config), so both kinds of node start the install from one state;
    plus datadir.conf, which the installer reads before it makes the datadir (on
    premises: ``onPremDatadirEncryption``; EC2: ``none`` below the node, as EBS
    encrypts the volume).
    """
    return {
        **_rolled_seed_files(cluster, key_arn=key_arn, blob_b64=blob_b64, on_premises=on_premises),
        # Seeded only, never rolled: the datadir key unit reads it at every start, so rewriting it under a
        # datadir encrypted the other way would stop the node. A new mode reaches a node by the SST runbook
        # (docs/at-rest.md); until then verify, told the new mode, reports the datadir as a gap.
        DATADIR_CONF_PATH: (render_datadir_conf_of(on_premises=on_premises, cluster=cluster), MYCNF_MODE, ROOT),
    }


def _rolled_seed_files(
    cluster: ClusterConfig, *, key_arn: str, blob_b64: str, on_premises: bool
) -> dict[str, FileSpec]:
    return {
        UNWRAP_CONF_PATH: (
            render_unwrap_conf(
                mode=cluster.mariadb.key_management,
                key_arn=key_arn,
                region=cluster.region,
                on_premises=on_premises,
                encryption_context=cluster_context(
                    cluster.stack, cluster.mariadb.cluster_name, cluster.mariadb.key_management,
                    enabled=cluster.key.encryption_context,
                ),
            ),
            UNWRAP_CONF_MODE,
            ROOT,
        ),
        BLOB_PATH: (base64.b64decode(blob_b64, validate=True), BLOB_MODE, ROOT),
        MYCNF_ENCRYPTION_PATH: (
            render_encryption_cnf(cluster, key_arn=key_arn),
            MYCNF_MODE,
            ROOT,
        ),
    }


def config_files(
    node: NodeConfig,
    cluster: ClusterConfig,
    *,
    key_arn: str,
    blob_b64: str,
    node_address: str,
    member_addresses: Sequence[str],
) -> dict[str, FileSpec]:
    """Everything a restart applies that the program renders: the seed files (datadir.conf aside) plus the
    node's Galera config."""
    files = _rolled_seed_files(cluster, key_arn=key_arn, blob_b64=blob_b64, on_premises=node.kind == "onprem")
    mycnf = render_mycnf(
        node, cluster, node_address=node_address, member_addresses=member_addresses, key_arn=key_arn,
    )
    files.update({path: (text, MYCNF_MODE, ROOT) for path, text in mycnf.items()})
    return files


def restart_digest(
    files: Mapping[str, FileSpec], node_files_digest: str, *, version: str = "", machine: str = ""
) -> str:
    """What the restart triggers (preflight, roll) compare: the config files and node files a restart applies.

    The member list is left out (``restart_relevant``): adding or removing a
    member rewrites every node's config file (the config step updates it) but
    re-runs no roll, so nobody restarts for it. A pinned ``mariadbVersion`` is
    in: a new version rolls every node after its upgrade step (unset, the digest
    is what it always was). So are the ``machine`` settings a stop and start
    apply (an EC2 node's instance type): the roll runs again after the change
    and waits until the node is Synced.
    """
    seen: dict[str, FileSpec] = {}
    for path, (content, mode, owner) in files.items():
        if path == MYCNF_NODE_PATH and isinstance(content, str):
            content = restart_relevant(content)
        seen[path] = (content, mode, owner)
    parts = [files_digest(seen), node_files_digest, *((f"version={version}",) if version else ())]
    if machine:
        parts.append(machine)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def credentials_files(cluster: ClusterConfig, *, access_key_id: str, secret_access_key: str) -> dict[str, FileSpec]:
    """The on-prem node's secrets, root 0600. Only ever rendered inside a secret Output."""
    # One file for both modes: in aws-plugin mode systemd hands it to mariadbd as a credential.
    return {CREDENTIALS_PATH: (render_credentials_file(access_key_id, secret_access_key), SECRET_MODE, ROOT)}


def galera_cluster_address(member_addresses: Iterable[str], port: int) -> str:
    """``gcomm://a:4567,b:4567``: the wsrep_cluster_address every node's config carries."""
    return "gcomm://" + ",".join(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in member_addresses)

