"""The cluster data key moves onto another KMS key (``kmsKeyArn``) in one `pulumi up`, under load, on real hosts.

The program is recorded for a 3-node on-prem stack and deployed on the testbed's hosts: its data key is wrapped by
the stack's own key (A). A second key (B) is made in the KMS emulator with the key policy the program renders for
its own key, as the runbook makes it. The runbook's temporary grants are created (ReEncryptFrom on A, ReEncryptTo on
B, for the deployer, bound to the cluster's encryption context), the stack is recorded again with ``kmsKeyArn`` set
to B (``rehearsal/runner``: the data key goes through the provider's ``diff`` and ``update`` as the engine calls
them, a ReEncrypt from A to B), and the commands the engine would run for that change (``rehearsal/engine_rules``)
are carried out on the hosts under the bank-transfer load. Then the grants are retired.

What it shows: the blob every node holds, the escrow copy on its data volume and the SSM escrow are the new one;
KMS says it is under B and opens it to the data key the datadirs were written under; the old blob still opens
under A (for a rollback, and for backups made before the move); every node's unwrap.conf names B and unwraps;
no acknowledged write was lost; at most one mariadbd was down at any sample (PIDs, all hosts asked at once).
Then A is disabled and one node restarted: it starts, because it unwraps under B (control: the old blob with
an unwrap.conf naming A is refused as key-disabled).

moto enforces no key policy and no grant: the refusal without the grants is a unit test
(tests/unit/test_data_key_provider.py), and the policies are checked as data.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_key_rewrap_on_hosts import SyncedMonitor

from components.cluster_data_key import default_escrow_parameter_name
from components.data_key_provider import P_KEY_ARN
from components.node_files import BLOB_PATH, UNWRAP_CONF_PATH
from components.plan.order import ESCROW_BLOB, ESCROW_UNWRAP_CONF
from rehearsal.aws_values import ACCOUNT_ID
from rehearsal.emulator import deployer_role_arn
from rehearsal.engine_rules import plan_changes, remote_runs
from rehearsal.kms_server import KmsServer
from rehearsal.mariadb_on_host import check, journal_cursor, journal_since, main_pid, sql, wait_synced
from rehearsal.recorder import Types
from rehearsal.runner import Deployment, ProgramStack, deploy, onprem_config
from rehearsal.testbed import Testbed
from rehearsal.workload import BankWorkload, setup_sql

pytestmark = pytest.mark.node

HOSTS = ("node1", "node2", "node3")
UNWRAP = "/usr/local/sbin/mariadb-kms-unwrap"
CONFIG: dict[str, Any] = {"gcacheSize": "64M", "requireSecureTransport": False}


class PidMonitor:
    """Samples every host's mariadbd MainPID at once until stopped: how many were down together, and restarts."""

    def __init__(self, testbed: Testbed, hosts: tuple[str, ...]) -> None:
        self.testbed, self.hosts = testbed, hosts
        self.samples: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pid-monitor")

    def _run(self) -> None:
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            while not self._stop.is_set():
                pids = list(pool.map(lambda h: main_pid(self.testbed, h), self.hosts))
                self.samples.append(dict(zip(self.hosts, pids, strict=True)))
                self._stop.wait(0.5)

    def start(self) -> PidMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    @property
    def most_down_at_once(self) -> int:
        return max((sum(1 for p in s.values() if p in ("", "0")) for s in self.samples), default=0)

    def pids(self, host: str) -> list[str]:
        """The distinct running PIDs of ``host``'s mariadbd, in order (one more per restart)."""
        seen: list[str] = []
        for s in self.samples:
            if s[host] not in ("", "0") and (not seen or seen[-1] != s[host]):
                seen.append(s[host])
        return seen


def _unwrap_check(testbed: Testbed, host: str, conf: str = UNWRAP_CONF_PATH) -> tuple[int, str]:
    result = testbed.exec(host, [UNWRAP, "--check", "--conf", conf], timeout=120)
    return result.rc, result.stderr + result.stdout


def _conf_value(text: str, key: str) -> str:
    return next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{key} ="))


def test_the_data_key_moves_to_another_kms_key_in_one_up_under_load(
    testbed: Testbed, kms: KmsServer, tmp_path: Path
) -> None:
    stack = ProgramStack(kms)
    config = onprem_config(testbed, HOSTS, **CONFIG)
    before = deploy(testbed, stack, config, quiet=True)
    old = before.program
    key_a, context = old.key_arn, old.encryption_context
    assert context, "the default stack wraps its blob with the encryption context"
    old_blob = old.data_key_blob
    client = kms.client()
    data_key = client.decrypt(CiphertextBlob=old_blob, EncryptionContext=context)["Plaintext"]

    # The runbook, step 1: key B, with the key policy the program renders for its own key (nodes may Decrypt
    # with the context, deployers wrap and re-wrap on the same key only).
    policy = str(old.recording.one(Types.KMS_KEY).input("policy"))
    key_b = client.create_key(Description="mariadb-kms nodetest: the new key", Policy=policy)["KeyMetadata"]["Arn"]
    assert key_b != key_a
    # Step 2: the temporary grants, bound to the cluster's context, for the identity running pulumi.
    deployer = deployer_role_arn(ACCOUNT_ID)
    grant_ids = {
        key: client.create_grant(
            KeyId=key, GranteePrincipal=deployer, RetiringPrincipal=deployer, Operations=[operation],
            Constraints={"EncryptionContextEquals": context}, Name="mariadb-kms-rewrap",
        )["GrantId"]
        for key, operation in ((key_a, "ReEncryptFrom"), (key_b, "ReEncryptTo"))
    }

    password = secrets.token_urlsafe(18)
    sql(testbed, "node1", setup_sql(20, 1000, "bank", password))
    pids_before = {h: main_pid(testbed, h) for h in HOSTS}

    # Step 3: the next `pulumi up`, with kmsKeyArn set to B.
    new = stack.record({**config, "kmsKeyArn": key_b}, testbed)
    changes = {c.urn: c for c in plan_changes(old.recording, new.recording)}
    [data_key_change] = [c for c in changes.values() if c.type.endswith("mariadb-kms:ClusterDataKey")]
    assert (data_key_change.action, data_key_change.changed) == ("update", (P_KEY_ARN,))
    assert not [c for c in changes.values() if c.blocked], "the engine would refuse this up"
    # Steps whose triggers name the blob (the escrow copy) are replaced, which runs their create again; no
    # other resource is replaced, and nothing is deleted.
    assert not [c.name for c in changes.values()
                if c.action == "delete" or (c.action == "replace" and c.type != Types.REMOTE_COMMAND)]
    runs: dict[str, list[str]] = {}
    for c in new.commands:
        steps = remote_runs(changes[c.urn], new.recording.by_urn(c.urn))
        if steps:
            assert steps == ["create"], (c.name, steps)
            runs[c.name] = steps
    assert "cluster-bootstrap" not in runs
    verifications = [f"{h}-verification-run" for h in HOSTS]
    assert set(verifications) <= set(runs)

    up = Deployment(testbed, new, quiet=True,
                    outcomes={n: o for n, o in before.outcomes.items() if n not in runs and o.ok})
    load = BankWorkload([testbed.hosts[h].address for h in HOSTS], user="bank", password=password,
                        duration=3600, max_transfers=10**7)
    cursors = {h: journal_cursor(testbed, h) for h in HOSTS}
    synced = SyncedMonitor(testbed, HOSTS).start()
    pids = PidMonitor(testbed, HOSTS).start()
    load.start()
    time.sleep(5)
    started = time.monotonic()
    try:
        up.run(stop_before=verifications, timeout=1200)
    except Exception:
        out = tmp_path / "cross-key-failed-journals.log"
        with open(out, "w", encoding="utf-8") as f:
            for host in HOSTS:
                f.write(f"===== {host}\n{journal_since(testbed, host, cursors[host])}\n")
        print(f"journals kept in {out}")
        raise
    finally:
        elapsed = time.monotonic() - started
        time.sleep(5)
        load.stop()
        load.wait(120)
        pids.stop()
        synced.stop()
    report = load.report(load.audit())
    up.run(timeout=1200)  # the program's verification on every node, the rest of the same up
    restarts = {h: len([p for p in pids.pids(h) if p != pids_before[h]]) for h in HOSTS}
    print(f"cross-key re-wrap up under load: {elapsed:.1f} s, {len(runs)} commands ran ({', '.join(sorted(runs))}); "
          f"acknowledged {report.acknowledged}, lost {report.acknowledged_lost}, invariant violations "
          f"{report.invariant_violations}, client errors {report.client_errors} {report.errors_by_kind}, longest "
          f"gap {report.longest_gap_s} s; mariadbd restarts per node {restarts}, most mariadbd down at once "
          f"{pids.most_down_at_once} ({len(pids.samples)} PID samples); most nodes not Synced at once "
          f"{synced.most_not_synced}, out of the cluster {synced.most_out_of_cluster} (worst {synced.worst})")
    assert report.acknowledged > 0
    assert report.acknowledged_lost == 0 and report.invariant_violations == 0
    assert pids.most_down_at_once <= 1, pids.samples
    assert all(n <= 1 for n in restarts.values()), restarts
    assert synced.most_out_of_cluster <= 1, synced.worst

    # Step 4: the grants are retired (the deployer is their retiring principal).
    for key, grant_id in grant_ids.items():
        client.retire_grant(KeyId=key, GrantId=grant_id)
        assert [g["GrantId"] for g in client.list_grants(KeyId=key)["Grants"]] == []

    # The same data key, now under B; the old blob still opens under A.
    new_blob = new.data_key_blob
    assert new_blob != old_blob and new.key_arn == key_a  # the stack's own key stays
    under_b = client.decrypt(CiphertextBlob=new_blob, EncryptionContext=context)
    assert (under_b["KeyId"], under_b["Plaintext"]) == (key_b, data_key)
    under_a = client.decrypt(CiphertextBlob=old_blob, EncryptionContext=context)
    assert (under_a["KeyId"], under_a["Plaintext"]) == (key_a, data_key)
    # The SSM escrow holds the new blob; the old one stays in the parameter's history.
    ssm = kms.client(service="ssm")
    name = default_escrow_parameter_name(stack.stack)
    history = [h["Value"] for h in ssm.get_parameter_history(Name=name, WithDecryption=True)["Parameters"]]
    assert history[-1] == base64.b64encode(new_blob).decode() and base64.b64encode(old_blob).decode() in history
    for host in HOSTS:
        for path, conf in ((BLOB_PATH, UNWRAP_CONF_PATH), (ESCROW_BLOB, ESCROW_UNWRAP_CONF)):
            on_host = check(testbed, host, ["base64", "-w0", path]).stdout.strip()
            assert base64.b64decode(on_host) == new_blob, (host, path)
            conf_text = testbed.read_file(host, conf).decode()
            assert _conf_value(conf_text, "key_arn") == key_b, (host, conf)
            assert json.loads(_conf_value(conf_text, "encryption_context")) == context, (host, conf)
        rc, said = _unwrap_check(testbed, host)
        assert rc == 0, f"{host}: {said}"
    assert all(up.outcomes[n].ok for n in verifications)

    # Key A retired (here: disabled). A node restarted now unwraps under B and starts.
    # moto's DisableKey and EnableKey want the bare key id, not the ARN.
    client.disable_key(KeyId=old.key_id)
    try:
        check(testbed, "node2", ["sh", "-c", f"sed -e 's#^blob = .*#blob = /root/old.blob#' "
                                            f"-e 's#^key_arn = .*#key_arn = {key_a}#' {UNWRAP_CONF_PATH} "
                                            "> /root/old-unwrap.conf"])
        testbed.put_file("node2", "/root/old.blob", old_blob, 0o600)
        rc, said = _unwrap_check(testbed, "node2", "/root/old-unwrap.conf")
        # Control: the same node with the old blob and a conf naming A is refused now.
        assert rc == 13 and "key-disabled" in said, f"{rc} {said}"
        check(testbed, "node2", ["rm", "-f", "/root/old.blob", "/root/old-unwrap.conf"])
        pid = main_pid(testbed, "node2")
        check(testbed, "node2", ["systemctl", "restart", "mariadb"], timeout=600)
        wait_synced(testbed, "node2", len(HOSTS), timeout=600)
        assert main_pid(testbed, "node2") not in (pid, "0", "")
    finally:
        client.enable_key(KeyId=old.key_id)
