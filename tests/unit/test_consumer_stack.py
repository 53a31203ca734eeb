"""examples/consumer: a second stack reading this one's outputs through StackReference, under mocks.

Its StackReference answers with this program's exports as recorded under mocks in the same test run (values,
and which are secret), never a hand-written fixture. So the tests fail when an output the consumer needs is
renamed, removed or becomes secret (each shown by a control), and they check that the README's outputs table,
the program's exports and the example agree.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from mocks import Recording, StackOutput, full_config, run_program
from mocks import RecordingMocks as ProgramMocks
from pulumi.runtime import rpc

from rehearsal.recorder import record

REPO = Path(__file__).resolve().parents[2]
CONSUMER = REPO / "examples" / "consumer"
sys.path.insert(0, str(CONSUMER))
import app  # noqa: E402  (examples/consumer/app.py, as its own Pulumi program imports it)

STACK_REF_TYPE = "pulumi:pulumi:StackReference"
CLUSTER_STACK = "my-org/mariadb-kms/dev"


class ConsumerMocks(ProgramMocks):
    """The test values for the consumer's own resources; its StackReference answers with ``exports``."""

    def __init__(self, exports: Mapping[str, StackOutput], *, preview: bool) -> None:
        super().__init__(preview=preview, stack="app", region="eu-west-1", caller_session="consumer")
        self.exports = exports

        self.reads: list[str] = []

    def new_resource(self, args: Any) -> tuple[str | None, dict[str, Any]]:
        # A StackReference is read, not registered: the SDK's mock monitor passes no `custom` flag for reads.
        if args.typ != STACK_REF_TYPE:
            return super().new_resource(args)
        self.reads.append(str(args.inputs.get("name") or args.resource_id))
        # An export whose value is None never reaches the engine: the SDK drops it when it serialises the stack's
        # outputs ("We treat properties that serialize to None as if they don't exist", serialize_properties in
        # pulumi/runtime/rpc.py, reached from register_resource_outputs; pulumi 3.272.0). A reader sees no such key.
        present = {k: v for k, v in self.exports.items() if v.value is not None}
        outputs = {k: rpc.wrap_rpc_secret(v.value) if v.secret else v.value for k, v in present.items()}
        secret_names = sorted(k for k, v in present.items() if v.secret)
        # Another stack's outputs come from its state: known in a preview too.
        return args.name, {"name": args.name, "outputs": outputs, "secretOutputNames": secret_names}


def run_consumer(exports: Mapping[str, StackOutput], *, preview: bool = False) -> Recording:
    mocks = ConsumerMocks(exports, preview=preview)
    rec = record(mocks, {}, [], stack="app", program=lambda: app.build(CLUSTER_STACK))
    assert mocks.reads == [CLUSTER_STACK]
    return rec


@pytest.fixture(scope="module")
def exports() -> dict[str, StackOutput]:
    """This program's stack outputs, recorded under mocks in this test run."""
    return run_program(full_config(), preview=False).outputs


def contract_problems(rec: Recording) -> list[str]:
    """Why the consumer could not use what it read; [] when it could."""
    if rec.exception is not None:
        return [f"the consumer failed: {rec.exception}"]
    problems = []
    for r in rec.resources:
        if r.type == STACK_REF_TYPE or not r.custom:
            continue
        problems += [f"{r.name}.{k} is secret" for k, v in r.inputs.items() if rpc.is_rpc_secret(v)]
    for name, out in rec.outputs.items():
        if out.secret:
            problems.append(f"export {name} is secret")
    return problems


def _one(rec: Recording, type_: str) -> Any:
    return next(r for r in rec.resources if r.type == type_)


def test_the_consumer_uses_every_output_it_needs(exports: dict[str, StackOutput]) -> None:
    rec = run_consumer(exports)
    assert contract_problems(rec) == []
    policy = json.loads(_one(rec, "aws:iam/rolePolicy:RolePolicy").input("policy"))
    assert policy["Statement"] == [{"Effect": "Allow", "Action": "kms:DescribeKey",
                                    "Resource": exports["kmsKeyArn"].value}]
    settings = json.loads(_one(rec, "aws:ssm/parameter:Parameter").input("insecureValue"))
    assert settings == {
        "hosts": [n["address"] for n in exports["nodes"].value],
        "port": 3306,
        "ssl_ca": exports["clusterCaCertificate"].value,
        "ssl_verify_server_cert": True,
    }
    assert settings["ssl_ca"].startswith("-----BEGIN CERTIFICATE-----")


def test_the_consumer_previews_against_a_deployed_cluster(exports: dict[str, StackOutput]) -> None:
    rec = run_consumer(exports, preview=True)
    assert rec.exception is None and contract_problems(rec) == []


@pytest.mark.parametrize("output", app.REQUIRED_OUTPUTS)
def test_a_renamed_or_removed_output_fails_the_consumer_by_name(
    exports: dict[str, StackOutput], output: str
) -> None:
    removed = {k: v for k, v in exports.items() if k != output}
    rec = run_consumer(removed)
    problems = contract_problems(rec)
    assert problems and output in problems[0], problems
    renamed = {**removed, output + "V2": exports[output]}
    assert contract_problems(run_consumer(renamed))


@pytest.mark.parametrize("output", app.REQUIRED_OUTPUTS)
def test_an_output_that_becomes_secret_fails_the_contract(exports: dict[str, StackOutput], output: str) -> None:
    secret = {**exports, output: StackOutput(exports[output].value, secret=True, known=True)}
    problems = contract_problems(run_consumer(secret))
    assert problems, f"{output} became secret and nothing noticed"


def _with_report(exports: dict[str, StackOutput], edit: Callable[[dict[str, Any]], None]) -> dict[str, StackOutput]:
    report = json.loads(json.dumps(exports["verification"].value))
    edit(report)
    return {**exports, "verification": StackOutput(report, secret=False, known=True)}


def test_the_verification_summary_gates_the_application(exports: dict[str, StackOutput]) -> None:
    failing = _with_report(exports, lambda r: r["dc-1"].update(ok=False))
    problems = contract_problems(run_consumer(failing))
    assert problems and "verification failed on dc-1" in problems[0]
    missing = _with_report(exports, lambda r: r.pop("aws-b"))
    problems = contract_problems(run_consumer(missing))
    assert problems and "nodes without a verification report: aws-b" in problems[0]


def test_a_cluster_without_client_tls_is_refused(exports: dict[str, StackOutput]) -> None:
    # With every TLS channel off the program exports None, which a reader does not see at all.
    no_tls = {**exports, "clusterCaCertificate": StackOutput(None, secret=False, known=True)}
    problems = contract_problems(run_consumer(no_tls))
    assert problems and "clusterCaCertificate" in problems[0]
    # An empty certificate is refused by the example itself.
    empty = {**exports, "clusterCaCertificate": StackOutput("", secret=False, known=True)}
    problems = contract_problems(run_consumer(empty))
    assert problems and "clusterCaCertificate is null or empty" in problems[0]


# -- the README's outputs table, the program's exports and the example agree --------------------------


def readme_outputs() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Outputs (a public contract)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def test_readme_outputs_table_matches_the_exports_and_the_example(exports: dict[str, StackOutput]) -> None:
    documented = readme_outputs()
    assert len(documented) == len(set(documented))
    assert set(documented) == set(exports)
    assert set(app.REQUIRED_OUTPUTS) <= set(documented)
    # Control: the parser finds the table (an empty parse would make the comparison above vacuous).
    assert len(documented) >= len(app.REQUIRED_OUTPUTS) + 1


def test_no_output_the_example_needs_is_secret_in_the_program(exports: dict[str, StackOutput]) -> None:
    assert [k for k in app.REQUIRED_OUTPUTS if exports[k].secret] == []
