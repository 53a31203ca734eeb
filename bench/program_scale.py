"""How the program scales with the node count: run it under the rehearsal's mocks for 3, 9 and 27 nodes.

Prints figures, asserts nothing (it is not a test). Per size: wall time and
peak Python memory (tracemalloc, modules already imported) of one ``up`` and one ``preview`` run, resources
registered, EC2 user-data per node (gzipped, what counts against EC2's 16 KB
limit), and what the SSH path carries per node and in total. User-data holds
no member list, so it stays flat; each node's Galera config lists every
member, so the config payloads, and so the state, grow with n^2.

The config is the rehearsal stack's (``Pulumi.rehearsal.yaml``) with the nodes replaced, and real
ed25519 keys for the login and each on-prem host; the mocks are ``rehearsal.aws_values.AwsMocks``.

    python -m bench.program_scale [--sizes 3,9,27] [--ec2-share 0.67]
"""

from __future__ import annotations

import argparse
import base64
import copy
import gc
import statistics
import sys
import time
import tracemalloc
from typing import Any

from pulumi.runtime import rpc

from components.node_files import MYCNF_NODE_PATH
from rehearsal.aws_values import ACCOUNT_ID, AwsMocks
from rehearsal.emulator import DEPLOYER_ROLE_NAME, deployer_role_arn
from rehearsal.plan import decode_put
from rehearsal.recorder import Recording, Types, config_for_pulumi, record
from rehearsal.stack import SECRET_KEYS, load_file, new_ed25519

STACK = "scale"
BASE, REGION = load_file()


def run_program(config: dict[str, Any], *, preview: bool) -> Recording:
    mocks = AwsMocks(preview=preview, stack=STACK, region=REGION, deployer_role_name=DEPLOYER_ROLE_NAME,
                     deployer_role_arn=deployer_role_arn(ACCOUNT_ID), caller_session="bench")
    flat, secret_keys = config_for_pulumi(config, REGION, SECRET_KEYS)
    rec = record(mocks, flat, secret_keys, stack=STACK)
    if rec.exception is not None or rec.errors:
        raise RuntimeError(f"the program failed under mocks: {rec.exception!r}; errors: {rec.errors}")
    return rec


def config_with(nodes: int, ec2_share: float) -> dict[str, Any]:
    ec2_count = round(nodes * ec2_share)
    config = copy.deepcopy(dict(BASE))
    login = new_ed25519("mariadb-kms-bench")
    config["sshPrivateKey"] = login.private_openssh
    config["sshAuthorizedKey"] = login.public_line
    zones = ("a", "b", "c")
    config["ec2Nodes"] = [
        {
            "name": f"aws-{i:02d}",
            "subnetId": f"subnet-0{zones[i % 3]}1b2c3d4e5f6071{i % 10}",
            "availabilityZone": f"eu-west-1{zones[i % 3]}",
        }
        for i in range(ec2_count)
    ]
    config["onPremNodes"] = [
        {
            "name": f"dc-{i:02d}",
            "address": f"192.0.2.{10 + i}",
            "sshUser": "deploy",
            "hostKey": new_ed25519(f"root@dc-{i:02d}").public_line,
            "egressCidr": f"203.0.113.{10 + i}/32",
        }
        for i in range(nodes - ec2_count)
    ]
    # Every node's egressCidr must lie inside the stack-wide ranges.
    config["onPremEgressCidrs"] = ["203.0.113.0/24"]
    if not config["ec2Nodes"]:
        for key in ("vpcId", "amiId", "sshAuthorizedKey"):
            config.pop(key, None)
    return config


def measured(config: dict[str, Any], *, preview: bool) -> tuple[Recording, float, float]:
    """(recording, wall seconds, peak MiB): timed untraced, then run again under tracemalloc for the peak."""
    gc.collect()
    started = time.perf_counter()
    rec = run_program(config, preview=preview)
    elapsed = time.perf_counter() - started
    gc.collect()
    tracemalloc.start()
    run_program(config, preview=preview)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return rec, elapsed, peak / 2**20


def user_data_sizes(rec: Recording) -> list[int]:
    sizes = []
    for instance in rec.of_type(Types.EC2_INSTANCE):
        value = rpc.unwrap_rpc_secret(instance.inputs.get("userDataBase64"))
        if isinstance(value, str):
            sizes.append(len(base64.b64decode(value)))
    return sizes


def stdin_sizes(rec: Recording, step: str) -> list[int]:
    sizes = []
    for res in rec.of_type(Types.REMOTE_COMMAND):
        if res.name.endswith(f"-ssh-{step}"):
            value = rpc.unwrap_rpc_secret(res.inputs.get("stdin"))
            if isinstance(value, str):
                sizes.append(len(value))
    return sizes


def node_cnf_sizes(rec: Recording) -> list[int]:
    """Uncompressed bytes of each node's Galera config (91-mariadb-kms-node.cnf), which lists every member."""
    sizes = []
    for res in rec.of_type(Types.REMOTE_COMMAND):
        value = rpc.unwrap_rpc_secret(res.inputs.get("stdin"))
        if res.name.endswith("-ssh-config") and isinstance(value, str):
            sizes.append(len(decode_put(value)[MYCNF_NODE_PATH][0]))
    return sizes


def kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,9,27", help="node counts, comma-separated")
    parser.add_argument("--ec2-share", type=float, default=2 / 3, help="fraction of nodes on EC2")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}; rehearsal mocks; EC2 share {args.ec2_share:.2f}")
    run_program(config_with(3, args.ec2_share), preview=False)  # warm-up: imports and caches, not measured
    header = (
        f"{'nodes':>5} {'up s':>6} {'preview s':>9} {'peak MiB':>8} {'resources':>9} "
        f"{'user-data/node':>15} {'config/node':>12} {'galera.cnf all':>15} {'node-files/node':>15} "
        f"{'SSH stdin total':>15}"
    )
    print(header)
    print("-" * len(header))
    for size in (int(s) for s in args.sizes.split(",")):
        config = config_with(size, args.ec2_share)
        rec, up_s, up_peak = measured(config, preview=False)
        _, preview_s, preview_peak = measured(config, preview=True)
        user_data = user_data_sizes(rec)
        configs = stdin_sizes(rec, "config")
        node_files = stdin_sizes(rec, "node-files")
        total = sum(
            len(v) for r in rec.of_type(Types.REMOTE_COMMAND)
            if isinstance(v := rpc.unwrap_rpc_secret(r.inputs.get("stdin")), str)
        )
        ud = f"{kib(max(user_data))} max" if user_data else "n/a"
        print(
            f"{size:>5} {up_s:>6.2f} {preview_s:>9.2f} {max(up_peak, preview_peak):>8.1f} {len(rec.resources):>9} "
            f"{ud:>15} {kib(statistics.mean(configs)):>12} {kib(sum(node_cnf_sizes(rec))):>15} "
            f"{kib(statistics.mean(node_files)):>15} {kib(total):>15}"
        )
    print(
        "\nuser-data: gzipped bytes EC2 counts against its 16 KB limit (no member list: flat in n).\n"
        "config/node: base64 tar.gz of unwrap.conf, blob and both MariaDB files (lists every member).\n"
        "galera.cnf all: the nodes' 91-mariadb-kms-node.cnf uncompressed, summed: n files of n members.\n"
        "SSH stdin total: every remote command's stdin, i.e. what the state keeps of the SSH path."
    )


if __name__ == "__main__":
    main()
