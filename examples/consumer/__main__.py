"""An application stack on top of a mariadb-kms cluster: see app.py."""

import pulumi
from app import build

build(pulumi.Config().require("clusterStack"))
