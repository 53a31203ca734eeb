"""The replace-forcing table (``REPLACE_ON`` in rehearsal/engine_rules.py) against the providers' own words.

Three sources, each with a control that proves the check finds what it looks for:

- the installed SDKs (pulumi_aws, pulumi_tls): every property the table names is an input of that type,
  and the SDK's parameter docstrings, where they speak of replacement ("forces a new resource", "destroy
  and recreate") or of an in-place stop/start, agree with the table;
- the upstream provider source read by hand (tests/unit/data/replace_forcing.json, each type with the
  file and commit read): inputs read as replace-forcing are in the table, inputs read as updated in place
  are not;
- the program itself: every input it sets on a type that was read is classified there, so a new input
  cannot slip in unexamined.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from mocks import RecordedOptions, Recording, RegisteredResource

from rehearsal.engine_rules import (
    PROVIDER_VERSIONS,
    REPLACE_ON,
    REPLACE_ON_NESTED,
    SOURCES,
    camel,
    nested_replace_keys,
    plan_changes,
)

DATA = json.loads((Path(__file__).parent / "data" / "replace_forcing.json").read_text())
READ: dict[str, dict[str, Any]] = {t: v for t, v in DATA.items() if not t.startswith("_")}
SDK_TYPES = [t for t in REPLACE_ON if t.split(":")[0] in ("aws", "tls")]
Table = Mapping[str, frozenset[str]]


def sdk_class(type_: str) -> type:
    package, module, name = type_.split(":")
    mod = importlib.import_module(f"pulumi_aws.{module.split('/')[0]}" if package == "aws" else "pulumi_tls")
    cls: type = getattr(mod, name)
    return cls


def sdk_inputs(type_: str) -> set[str]:
    params = inspect.signature(sdk_class(type_)._internal_init).parameters  # type: ignore[attr-defined]
    return {camel(p) for p in params if p not in ("self", "resource_name", "opts", "__props__")}


@cache
def sdk_param_docs(type_: str) -> dict[str, str]:
    """Input (camelCase) -> its ``:param`` text in the SDK's resource docstring."""
    source = Path(inspect.getsourcefile(sdk_class(type_)) or "").read_text()
    name = type_.split(":")[2]
    body = source[source.index(f"class {name}(pulumi.CustomResource)"):]
    docs: dict[str, str] = {}
    for m in re.finditer(r":param [^\n]*?\] (\w+): (.*)", body):
        docs.setdefault(camel(m.group(1)), m.group(2))
    return docs


FORCES = re.compile(r"forces a new resource|destroy and recreate|will trigger replacement", re.I)
IN_PLACE = re.compile(r"stop/start", re.I)
CONDITION = re.compile(r"\bif\b|\bwhen\b|\bunless\b", re.I)


def docstring_problems(table: Table, docs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Where a docstring says a property replaces unconditionally and the table disagrees, or says it is
    applied by a stop/start (in place) and the table lists it."""
    problems = []
    for type_, params in docs.items():
        listed = table.get(type_, frozenset())
        for prop, text in params.items():
            sentences = re.split(r"(?<=\.)\s+", text)
            forced = [s for s in sentences if FORCES.search(s) and not CONDITION.search(s)]
            if forced and "*" not in listed and prop not in listed:
                problems.append(f"{type_} {prop}: the SDK says {forced[0]!r}, the table has no replacement")
            if not forced and any(IN_PLACE.search(s) for s in sentences) and prop in listed:
                problems.append(f"{type_} {prop}: the SDK says it is a stop/start, the table replaces")
    return problems


def source_problems(table: Table, nested: Mapping[str, Mapping[str, frozenset[str]]],
                    read: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Where the hand-read upstream source and the table disagree."""
    problems = []
    for type_, facts in read.items():
        listed = table.get(type_)
        if listed is None:
            problems.append(f"{type_}: read upstream but not in the table")
            continue
        replace, update = set(facts.get("replace", [])), set(facts.get("update", []))  # type: ignore[call-overload]
        if "*" in listed:
            problems += [f"{type_} {p}: updated in place upstream, the table replaces every input" for p in update]
            continue
        problems += [f"{type_} {p}: replaces upstream, missing from the table" for p in sorted(replace - listed)]
        problems += [f"{type_} {p}: updated in place upstream, the table replaces" for p in sorted(update & listed)]
        for key, fields in dict(facts.get("nested", {})).items():  # type: ignore[call-overload]
            if set(nested.get(type_, {}).get(key, frozenset())) != set(fields):
                problems.append(f"{type_} {key}: replaces on {sorted(fields)} upstream, the table says "
                                f"{sorted(nested.get(type_, {}).get(key, frozenset()))}")
    return problems


def name_problems(table: Table) -> list[str]:
    """Properties the table names that the installed SDK's type has no input for."""
    return [f"{t} {p}: no such input in the installed SDK" for t in table if t in SDK_TYPES
            for p in sorted(table[t] - {"*"} - sdk_inputs(t))]


# --------------------------------------------------------------------------


def test_every_entry_cites_its_source_at_the_installed_version() -> None:
    assert set(SOURCES) == set(REPLACE_ON)
    for type_ in SDK_TYPES:
        package = type_.split(":")[0]
        assert SOURCES[type_].startswith(f"https://www.pulumi.com/registry/packages/{package}/api-docs/"), type_
        assert f"v{PROVIDER_VERSIONS[package]}" in SOURCES[type_], type_
    for package, version in PROVIDER_VERSIONS.items():
        plugin = json.loads((Path(importlib.import_module(f"pulumi_{package}").__file__ or "").parent
                             / "pulumi-plugin.json").read_text())
        assert plugin["version"] == version, f"pulumi_{package} is {plugin['version']}: check the table again"


def test_every_property_named_is_an_input_of_the_installed_sdk() -> None:
    assert name_problems(REPLACE_ON) == []
    # Control: a property the SDK does not have (pulumi-aws 6's name for the key spec) is found.
    wrong = {**REPLACE_ON, "aws:kms/key:Key": REPLACE_ON["aws:kms/key:Key"] | {"keySpec"}}
    assert name_problems(wrong) == ["aws:kms/key:Key keySpec: no such input in the installed SDK"]


def test_the_installed_sdks_docstrings_agree_with_the_table() -> None:
    docs = {t: sdk_param_docs(t) for t in SDK_TYPES}
    assert docs["aws:ec2/instance:Instance"], "no :param docstrings found: the scan reads nothing"
    assert docstring_problems(REPLACE_ON, docs) == []
    # The docstrings do speak: instanceType is a stop/start, and userData replaces only on a condition.
    assert IN_PLACE.search(docs["aws:ec2/instance:Instance"]["instanceType"])
    assert FORCES.search(docs["aws:ec2/instance:Instance"]["userData"])
    # Control: the table replacing on instanceType, or a docstring saying a property forces a new
    # resource outright while the table has no replacement for it, is found.
    wrong = {**REPLACE_ON, "aws:ec2/instance:Instance": REPLACE_ON["aws:ec2/instance:Instance"] | {"instanceType"}}
    assert docstring_problems(wrong, docs) == [
        "aws:ec2/instance:Instance instanceType: the SDK says it is a stop/start, the table replaces"]
    planted = {"aws:ec2/vpcEndpoint:VpcEndpoint": {"policy": "A policy. Changing this forces a new resource."}}
    assert len(docstring_problems(REPLACE_ON, planted)) == 1


def test_the_table_matches_the_upstream_source_read() -> None:
    assert source_problems(REPLACE_ON, REPLACE_ON_NESTED, READ) == []
    # Controls: an entry the source contradicts either way is found.
    volume = "aws:ebs/volume:Volume"
    missing = {**REPLACE_ON, volume: REPLACE_ON[volume] - {"multiAttachEnabled"}}
    assert source_problems(missing, REPLACE_ON_NESTED, READ) == [
        f"{volume} multiAttachEnabled: replaces upstream, missing from the table"]
    cert = "tls:index/locallySignedCert:LocallySignedCert"
    everything = {**REPLACE_ON, cert: frozenset({"*"})}
    assert source_problems(everything, REPLACE_ON_NESTED, READ) == [
        f"{cert} earlyRenewalHours: updated in place upstream, the table replaces every input"]
    assert source_problems(REPLACE_ON, {}, READ) != []


def test_every_input_the_program_sets_on_a_type_read_is_classified() -> None:
    from test_plan_digest import record_rehearsal_plan

    set_by_program: dict[str, set[str]] = {}
    for res in record_rehearsal_plan().resources:
        if res.custom and res.type in READ:
            set_by_program.setdefault(res.type, set()).update(res.inputs)
    assert set_by_program, "the program registers none of the types read"
    unread = DATA["_not_read"]
    problems = []
    for type_, inputs in set_by_program.items():
        facts = READ[type_]
        known = set(facts["replace"]) | set(facts["update"]) | set(facts.get("nested", {})) | set(unread.get(type_, []))
        problems += [f"{type_} {k}" for k in sorted(inputs - known)]
    assert problems == []


def test_root_volume_encryption_replaces_the_instance_and_its_size_updates_it() -> None:
    instance = "aws:ec2/instance:Instance"
    old = {"ami": "ami-1", "rootBlockDevice": {"encrypted": True, "kmsKeyId": "k1", "volumeSize": 20}}
    bigger = {**old, "rootBlockDevice": {**old["rootBlockDevice"], "volumeSize": 40}}
    rekeyed = {**old, "rootBlockDevice": {**old["rootBlockDevice"], "kmsKeyId": "k2"}}
    assert nested_replace_keys(instance, old, bigger, ["rootBlockDevice"]) == []
    assert nested_replace_keys(instance, old, rekeyed, ["rootBlockDevice"]) == ["rootBlockDevice"]

    def recording(inputs: dict[str, object]) -> Recording:
        options = RecordedOptions(protect=None, retain_on_delete=None, delete_before_replace=None,
                                  additional_secret_outputs=(), ignore_changes=(), replace_on_changes=(),
                                  depends_on=(), parent=None)
        node = RegisteredResource(type=instance, name="node", urn="urn:node", id="i-1", custom=True, inputs=inputs,
                                  state=dict(inputs), parent_urn="urn:stack", dependencies=(), secret_outputs=(),
                                  options=options, property_dependencies={})
        return Recording(preview=False, resources=[node])

    assert plan_changes(recording(old), recording(bigger))[0].action == "update"
    replaced = plan_changes(recording(old), recording(rekeyed))[0]
    assert replaced.action == "replace" and replaced.replace_keys == ("rootBlockDevice",)
