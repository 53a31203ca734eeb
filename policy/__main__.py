"""The policy pack `pulumi preview --policy-pack policy` runs; the policies live in mariadb_kms_policies."""

from mariadb_kms_policies import policies
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="mariadb-kms",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies(),
)
