"""mariadb-kms: a MariaDB Galera cluster encrypted at rest under one AWS KMS key.

Load and validate config, build the AWS side (identities, key, cluster data
key) and the cluster (nodes, the SSH path, bootstrap, verification), export
the outputs. The output names are a public contract read through
StackReference: every one is always present, null when it does not apply.
"""

from __future__ import annotations

import gc

import pulumi

from components.cluster import MariaDbCluster
from components.cluster_data_key import ClusterDataKey
from components.config import ConfigError
from components.deployer import deployer_arns, deploying_identity
from components.encryption_context import cluster_context
from components.encryption_key import EncryptionKey
from components.key_policy import onprem_source_cidrs, render_policy, wrapping_key_identity_policy
from components.node_identity import NodeIdentity
from components.onprem_identity import OnPremIdentity
from components.stack_config import load_stack_config

FULL_COLLECTION_THRESHOLD = 100  # CPython's default is 10

# The collector's oldest generation: evaluating the program keeps nearly all it allocates (resources,
# their outputs and futures) until the end, so by default every tenth middle-generation collection
# rescans everything, the ~170,000 objects the SDK and provider modules left at import included: at
# 15 nodes 2-3 full collections, a quarter of the evaluation's CPU time (docs/BENCHMARKS.md). Rarer
# full collections change nothing the program does; the young generations still collect as before.
gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_THRESHOLD)

try:
    cfg, secrets = load_stack_config()
except ConfigError as err:
    # Each error has been logged on its own line; no traceback on top of them.
    raise pulumi.RunError(f"{len(err.errors)} configuration error(s), listed above") from None

identity = deploying_identity()
# Binds the blob to this stack and cluster (None in aws-plugin mode, whose plugin decrypts without one).
context = cluster_context(
    cfg.stack, cfg.mariadb.cluster_name, cfg.mariadb.key_management, enabled=cfg.key.encryption_context
)

# A key set by kmsKeyArn is not the stack's: its key policy is its owner's, and the node identities get their
# side in IAM (docs/runbooks/key-lifecycle.md).
wrapping_key_policy = (
    render_policy(wrapping_key_identity_policy(cfg.key.wrapping_key_arn, context))
    if cfg.key.wrapping_key_arn else None
)
node_identity = (
    NodeIdentity("node-identity", partition=identity.partition, attach_ssm_policy=cfg.attach_ssm_policy, tags=cfg.tags,
                 wrapping_key_policy=wrapping_key_policy)
    if cfg.ec2_nodes
    else None
)
# One IAM user and access key per on-prem node; a leaving node (decommission: true) has none.
onprem_identity = (
    OnPremIdentity("onprem-identity", nodes=cfg.onprem_nodes, tags=cfg.tags, wrapping_key_policy=wrapping_key_policy)
    if cfg.onprem_nodes else None
)

egress_cidrs, egress_warnings = onprem_source_cidrs(
    cfg.key.onprem_egress_cidrs, {n.name: n.egress_cidr for n in cfg.onprem_nodes}
)
for warning in egress_warnings:
    pulumi.log.warn(warning)

# The KMS VPC endpoint the cluster creates (if any) is named in the key policy, but
# the cluster is built after the key: the key takes a deferred output for its id.
created_vpce_id, resolve_created_vpce_id = pulumi.deferred_output()  # type: ignore[var-annotated]

key = EncryptionKey(
    "encryption-key",
    config=cfg.key,
    description=f"mariadb-kms {pulumi.get_stack()}: wraps the MariaDB Galera cluster data key",
    account_id=identity.account_id,
    partition=identity.partition,
    region=cfg.region,
    deployers=deployer_arns(
        identity, cfg.key.deployers, cfg.key.admins, cfg.key.allow_account_root_iam_delegation
    ),
    node_role_arn=node_identity.role_arn if node_identity else None,
    onprem_user_arns=list(onprem_identity.user_arns.values()) if onprem_identity else [],
    onprem_egress_cidrs=egress_cidrs,
    tags=cfg.tags,
    created_vpc_endpoint_id=created_vpce_id,
    encryption_context=context,
)

# The key that wraps the data key: the stack's own, or kmsKeyArn. Changing it re-wraps the same data key onto
# the new key (an update of ClusterDataKey); the stack's own key stays, for the EBS volumes and older backups.
wrapping_key_arn: pulumi.Input[str] = cfg.key.wrapping_key_arn or key.arn

# Explicitly after the whole key component: the deployer may call
# GenerateDataKeyWithoutPlaintext only once the key policy is in place.
data_key = ClusterDataKey(
    "cluster-data-key",
    key_arn=wrapping_key_arn,
    escrow_in_ssm=cfg.key.escrow_in_ssm,
    tags=cfg.tags,
    encryption_context=context,
    opts=pulumi.ResourceOptions(depends_on=[key]),
)

cluster = MariaDbCluster(
    "cluster",
    cluster=cfg,
    key_arn=wrapping_key_arn,
    volume_key_arn=key.arn,
    data_key_blob=data_key.ciphertext_blob,
    ssh_private_key=secrets.ssh_private_key,
    instance_profile_name=node_identity.instance_profile_name if node_identity else None,
    onprem_credentials=(
        {n: (onprem_identity.access_key_ids[n], onprem_identity.secret_access_keys[n])
         for n in onprem_identity.access_key_ids}
        if onprem_identity else {}
    ),
    jump_host=cfg.jump_host,
)

resolve_created_vpce_id(
    cluster.kms_vpc_endpoint_id if cluster.kms_vpc_endpoint_id is not None else pulumi.Output.from_input("")
)

pulumi.export("kmsKeyArn", wrapping_key_arn)
pulumi.export("kmsKeyId", key.key_id)
pulumi.export("kmsAliasName", key.alias_name)
pulumi.export("nodeRoleArn", node_identity.role_arn if node_identity else None)
pulumi.export("instanceProfileName", node_identity.instance_profile_name if node_identity else None)
# {node name: value}, one per on-prem node that has an identity (a leaving node has none).
pulumi.export("onPremUserName", onprem_identity.user_names if onprem_identity else None)
pulumi.export("onPremAccessKeyId", onprem_identity.access_key_ids if onprem_identity else None)
pulumi.export("clusterDataKeyCiphertext", data_key.ciphertext_blob)
pulumi.export("nodes", cluster.nodes)
pulumi.export("galeraClusterAddress", cluster.galera_cluster_address)
pulumi.export("verification", cluster.verification)
pulumi.export("clusterCaCertificate", cluster.ca_cert_pem)
