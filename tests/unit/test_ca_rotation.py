"""A new CA key in three `pulumi up`s: trust both, issue from the new one, drop the old one; nobody restarts.

The plans are tools/plan_diff's (the engine's rules over two recordings of the program); the bundle and the
issuers are read from what the program really hands each node on the tls step's stdin.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from mocks import full_config, run_program
from remote_plan import decode_put, remote_commands, stdin_text
from test_plan_diff import NODES, plan, steps

from components.config import ConfigError, parse_config
from components.tls_material import CA_CERT_PATH, CERT_PATH

ROOT_CN = "mariadb-kms root CA "
STAGES = {
    "before": {},
    "trust both": {"tlsCaOtherGeneration": 2},
    "issue from the new CA": {"tlsCaGeneration": 2, "tlsCaOtherGeneration": 1},
    "drop the old CA": {"tlsCaGeneration": 2},
}
# What every stage runs: the node's TLS files and their reload (one node at a time, in the configure phase),
# and each verification again. Nothing that restarts.
RELOAD_ONLY = {(n, s): a for n in NODES for s, a in (("tls", "update"), ("tls-reload", "replace"),
                                                     ("verification-run", "replace"))}


def stage(name: str) -> dict[str, Any]:
    return full_config(**STAGES[name])


@pytest.mark.parametrize(("before", "after"), [("before", "trust both"), ("trust both", "issue from the new CA"),
                                               ("issue from the new CA", "drop the old CA")])
def test_each_stage_reloads_one_node_at_a_time_and_restarts_nobody(before: str, after: str) -> None:
    p = plan(stage(before), stage(after))
    assert steps(p) == RELOAD_ONLY
    assert p.restarts == [] and not p.bootstrap_runs and p.blocked == []
    # The reloads follow the rolling order: a node's tls step waits for the previous node's roll.
    order = [s.node for s in p.steps if s.step == "tls-reload"]
    assert order == NODES
    changed = sorted((c.name, c.action) for c, _ in p.resources)
    if after == "trust both":
        assert changed == [("cluster-ca-ca-cert-g2", "create"), ("cluster-ca-ca-key-g2", "create")]
    elif after == "issue from the new CA":
        assert changed == sorted((f"cluster-ca-{n}-cert", "replace") for n in NODES)
    else:
        assert changed == [("cluster-ca-ca-cert", "delete"), ("cluster-ca-ca-key", "delete")]


def _node_tls(name: str) -> dict[str, tuple[list[x509.Certificate], x509.Certificate]]:
    rec = run_program(stage(name), preview=False)
    out = {}
    for res in remote_commands(rec):
        if res.name.endswith("-ssh-tls"):
            files = decode_put(str(stdin_text(res)))
            bundle = x509.load_pem_x509_certificates(files[CA_CERT_PATH][0])
            out[res.name.split("-ssh-")[0]] = (bundle, x509.load_pem_x509_certificate(files[CERT_PATH][0]))
    assert sorted(out) == sorted(NODES)
    return out


def _generation(cn: str) -> str:
    return " g2" if cn.endswith(" g2") else ""


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature has no common base with the others
        return False
    return True


def test_the_bundle_and_the_issuer_at_each_stage() -> None:
    # Each recording has its own mock keys, so each stage is checked on its own: the names in the bundle, in
    # order, and which of them signed the node's certificate.
    expected = {
        "before": ([""], ""),
        "trust both": (["", " g2"], ""),
        "issue from the new CA": ([" g2", ""], " g2"),
        "drop the old CA": ([" g2"], " g2"),
    }
    for name, (names, issuer) in expected.items():
        for node, (bundle, cert) in _node_tls(name).items():
            cns = [c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value for c in bundle]
            assert all(str(cn).startswith(ROOT_CN) for cn in cns), cns
            assert [_generation(str(cn)) for cn in cns] == names, (name, node)
            signers = [_generation(str(cn)) for cn, ca in zip(cns, bundle, strict=True) if _issued_by(cert, ca)]
            assert signers == [issuer], (name, node)


def test_the_other_generation_must_differ_from_the_issuing_one() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(full_config(tlsCaGeneration=2, tlsCaOtherGeneration=2), stack="dev", region="eu-west-1")
    assert any("tlsCaOtherGeneration = 2" in e and "other than tlsCaGeneration" in e for e in info.value.errors)
