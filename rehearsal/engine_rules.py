"""What the Pulumi engine would do with each resource, given the state's recording and the program's new one.

Pure functions over two ``Recording``s (``rehearsal/recorder``): the base one
stands for the stack's state (every resource's last inputs, outputs and
options), the head one for what the program registers now. For every URN:
``same``, ``create``, ``update``, ``replace`` or ``delete``, and why.

Each rule is the engine's or a provider's, cited where it is applied. Both
recordings must be made in up mode with values that stay the same when inputs
do (``tools/plan_diff`` makes them so): a preview recording has unknowns
everywhere and would make everything look changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pulumi.runtime import rpc

from rehearsal.recorder import Recording, RegisteredResource

Action = Literal["same", "create", "update", "replace", "delete"]

# Properties whose change makes the provider replace the resource, per type the program registers: the
# inputs whose Registry page says "Changes to this property will trigger replacement." (``SOURCES`` names
# each page). The Registry renders that line from the provider schema, which the bridge derives from the
# upstream Terraform resource's ``ForceNew`` (SDKv2) or ``RequiresReplace`` plan modifier (plugin
# framework); where an entry was read in that upstream source, the reading is recorded in
# tests/unit/data/replace_forcing.json and tests/unit/test_replace_table.py holds the table to it and to
# the installed SDKs' own docstrings. A type absent here is never guessed at: its changes are reported as
# updates with the rule marked unknown.
REGISTRY = "https://www.pulumi.com/registry/packages"
# The provider versions the table was checked against: the ones requirements.txt installs.
PROVIDER_VERSIONS = {"aws": "7.51.1", "tls": "5.6.2", "command": "1.2.1"}

REPLACE_ON: Mapping[str, frozenset[str]] = {
    # keySpec is no input of pulumi-aws 7's Key (customerMasterKeySpec is).
    "aws:kms/key:Key": frozenset({"customerMasterKeySpec", "keyUsage", "multiRegion", "customKeyStoreId",
                                  "xksKeyId"}),
    "aws:kms/alias:Alias": frozenset({"name", "namePrefix"}),
    "aws:iam/role:Role": frozenset({"name", "namePrefix", "path"}),
    "aws:iam/instanceProfile:InstanceProfile": frozenset({"name", "namePrefix", "path"}),
    "aws:iam/user:User": frozenset(),
    "aws:iam/accessKey:AccessKey": frozenset({"user", "pgpKey"}),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": frozenset({"role", "policyArn"}),
    "aws:iam/rolePolicy:RolePolicy": frozenset({"name", "namePrefix", "role"}),
    "aws:iam/userPolicy:UserPolicy": frozenset({"name", "namePrefix", "user"}),
    "aws:ssm/parameter:Parameter": frozenset({"name"}),
    "aws:ebs/volume:Volume": frozenset({"availabilityZone", "encrypted", "kmsKeyId", "snapshotId", "outpostArn",
                                        "multiAttachEnabled"}),
    # instanceType is an in-place stop/start, not a replacement; userData replaces only with
    # userDataReplaceOnChange, which the program leaves false (and it ignores user-data changes anyway).
    # rootBlockDevice replaces only for some of its fields: REPLACE_ON_NESTED.
    "aws:ec2/instance:Instance": frozenset({"ami", "availabilityZone", "subnetId", "privateIp", "keyName",
                                           "primaryNetworkInterface", "networkInterfaces", "placementGroup",
                                           "tenancy", "hostId"}),
    # privateIp is updated in place; a new primary address in privateIps/privateIpList replaces (a
    # condition on values, and the program sets neither).
    "aws:ec2/networkInterface:NetworkInterface": frozenset({"subnetId", "interfaceType"}),
    "aws:ec2/volumeAttachment:VolumeAttachment": frozenset({"deviceName", "instanceId", "volumeId"}),
    "aws:ec2/securityGroup:SecurityGroup": frozenset({"name", "namePrefix", "description", "vpcId"}),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": frozenset({"securityGroupId"}),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": frozenset({"securityGroupId"}),
    "aws:ec2/vpcEndpoint:VpcEndpoint": frozenset({"serviceName", "vpcId", "vpcEndpointType"}),
    # Every input of a key or a request forces a new one; a certificate's earlyRenewalHours is updated in
    # place (no RequiresReplace on it upstream).
    "tls:index/privateKey:PrivateKey": frozenset({"*"}),
    "tls:index/certRequest:CertRequest": frozenset({"*"}),
    "tls:index/selfSignedCert:SelfSignedCert": frozenset({
        "allowedUses", "dnsNames", "ipAddresses", "uris", "isCaCertificate", "maxPathLength", "privateKeyPem",
        "setAuthorityKeyId", "setSubjectKeyId", "subject", "validityPeriodHours"}),
    "tls:index/locallySignedCert:LocallySignedCert": frozenset({
        "allowedUses", "caCertPem", "caPrivateKeyPem", "certRequestPem", "isCaCertificate", "maxPathLength",
        "setSubjectKeyId", "validityPeriodHours"}),
    # pulumi-command's provider replaces nothing by itself: its SDK adds replace_on_changes=["triggers[*]"]
    # to every remote.Command (sdk/python/pulumi_command/remote/command.py, _internal_init, v1.2.1), which
    # the recorder sees as a resource option and ``replace_keys`` honours like any other.
    "command:remote:Command": frozenset(),
    # The project's own dynamic provider (components/data_key_provider.py, DataKeyProvider.diff): nothing
    # replaces it, a new key ARN included (an update that re-wraps the same data key onto that key).
    "pulumi-python:dynamic/mariadb-kms:ClusterDataKey": frozenset(),
    # components/instance_type_provider.py, InstanceTypeProvider.diff: a new instance id or type is an update.
    "pulumi-python:dynamic/mariadb-kms:InstanceType": frozenset(),
}

# Inputs that replace only when some of their fields change: input -> those fields.
REPLACE_ON_NESTED: Mapping[str, Mapping[str, frozenset[str]]] = {
    # The root volume's encryption cannot change on a running instance; its size and type can.
    "aws:ec2/instance:Instance": {"rootBlockDevice": frozenset({"encrypted", "kmsKeyId"})},
}


def _registry_page(type_: str) -> str:
    package, module, name = type_.split(":")
    path = module.split("/")[0] if package == "aws" else ""
    return f"{REGISTRY}/{package}/api-docs/{path + '/' if path else ''}{name.lower()}/"


# Where each entry comes from: the type's Registry page (at the installed provider version), or the code
# that decides it.
SOURCES: Mapping[str, str] = {
    **{t: f"{_registry_page(t)} (pulumi-{t.split(':')[0]} v{PROVIDER_VERSIONS[t.split(':')[0]]})"
       for t in REPLACE_ON if t.split(":")[0] in ("aws", "tls")},
    "command:remote:Command": f"{REGISTRY}/command/api-docs/remote/command/ (pulumi-command v1.2.1: "
                              "replace_on_changes=['triggers[*]'] in the SDK's _internal_init)",
    "pulumi-python:dynamic/mariadb-kms:ClusterDataKey": "components/data_key_provider.py, DataKeyProvider.diff",
    "pulumi-python:dynamic/mariadb-kms:InstanceType": "components/instance_type_provider.py, InstanceTypeProvider.diff",
}


def nested_replace_keys(type_: str, old: Mapping[str, Any], new: Mapping[str, Any],
                        changed: Iterable[str]) -> list[str]:
    """The changed inputs that replace because one of their replace-forcing fields changed."""
    rules = REPLACE_ON_NESTED.get(type_, {})
    found = []
    for key in changed:
        fields = rules.get(key)
        if not fields:
            continue
        o, n = plain(old.get(key)) or {}, plain(new.get(key)) or {}
        if not isinstance(o, dict) or not isinstance(n, dict) or any(
                _canonical(o.get(f)) != _canonical(n.get(f)) for f in fields):
            found.append(key)
    return found


# Inputs the SDK or the engine adds that no provider diffs.
_NOT_DIFFED = frozenset({"__provider"})


@dataclass(frozen=True)
class Change:
    """What the engine does with one resource, and why."""

    urn: str
    type: str
    name: str
    action: Action
    changed: tuple[str, ...] = ()  # inputs whose value differs (after ignore_changes)
    replace_keys: tuple[str, ...] = ()  # the changed inputs that force the replacement
    unknown_via: tuple[str, ...] = ()  # inputs that change because a resource they come from is replaced
    protected: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    ignored_kept: tuple[str, ...] = ()  # ignore_changes inputs whose OLD value a replacement keeps
    rule_unknown: bool = False  # the type's replacement rules are not in REPLACE_ON
    notes: tuple[str, ...] = field(default=())

    @property
    def blocked(self) -> bool:
        """A protected resource in a delete or a replacement: the engine fails the whole preview/update."""
        return self.protected and self.action in ("delete", "replace")


def top_level(path: str) -> str:
    """An ignore_changes / replace_on_changes path's top-level input ("triggers[*]" -> "triggers")."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def camel(name: str) -> str:
    """The wire (camelCase) name of a Python input name, as the SDK translates resource option paths."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def plain(value: Any) -> Any:
    """A value with every secret wrapper taken off (a value's secretness alone is no diff)."""
    value = rpc.unwrap_rpc_secret(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True, default=str)


def changed_inputs(old: Mapping[str, Any], new: Mapping[str, Any], ignore_changes: Iterable[str] = ()) -> list[str]:
    """The top-level inputs that differ, minus ignored ones.

    ignore_changes makes the engine diff an input as if it still had its old value
    (https://www.pulumi.com/docs/iac/concepts/resources/options/ignorechanges/), so such an input never
    makes an update or a replacement by itself.
    """
    ignored = {camel(top_level(p)) for p in ignore_changes}
    keys = (set(old) | set(new)) - _NOT_DIFFED - ignored
    return sorted(k for k in keys if _canonical(old.get(k)) != _canonical(new.get(k)))


def replace_keys(type_: str, changed: Iterable[str], replace_on_changes: Iterable[str] = ()) -> tuple[list[str], bool]:
    """Which changed inputs force a replacement, and whether the type's rules are unknown.

    replace_on_changes turns a change of the named inputs into a replacement, whatever the provider says
    (https://www.pulumi.com/docs/iac/concepts/resources/options/replaceonchanges/); "*" names every input.
    """
    forced = {camel(top_level(p)) for p in replace_on_changes}
    provider = REPLACE_ON.get(type_)
    rule_unknown = provider is None
    forced |= set(provider or ())
    changed = list(changed)
    if "*" in forced:
        return changed, rule_unknown
    return [k for k in changed if k in forced], rule_unknown


def _options(res: RegisteredResource) -> tuple[bool, bool, bool, tuple[str, ...], tuple[str, ...]]:
    o = res.options
    if o is None:
        return False, False, False, (), ()
    return (bool(o.protect), bool(o.retain_on_delete), bool(o.delete_before_replace), o.ignore_changes,
            o.replace_on_changes)


def resolve_protect(rec: Recording) -> dict[str, bool]:
    """URN -> protected, with the engine's inheritance: unset means the parent's value, false at the top.

    https://www.pulumi.com/docs/iac/concepts/resources/options/protect/ ("The default is to inherit this
    value from the parent resource").
    """
    by_urn = {r.urn: r for r in rec.resources}
    memo: dict[str, bool] = {}

    def visit(urn: str) -> bool:
        if urn in memo:
            return memo[urn]
        res = by_urn.get(urn)
        if res is None:
            return False
        own = res.options.protect if res.options is not None else None
        memo[urn] = bool(own) if own is not None else visit(res.parent_urn)
        return memo[urn]

    for r in rec.resources:
        visit(r.urn)
    return memo


def plan_changes(base: Recording, head: Recording, replace: Iterable[str] = ()) -> list[Change]:
    """Every resource of either recording with the engine's step for it (sorted by URN).

    ``replace``: URNs named by ``pulumi up --replace``; each is replaced whatever its diff says, and the
    replacement travels along property dependencies as any other does.

    Engine step generation (pulumi/pulumi pkg/resource/deploy/step_generator.go, generateSteps and
    diff): a URN only in the program is a create, one only in the state a delete (after every other
    step), one in both is diffed by its provider; a diff that touches a replace-forcing input is a
    replacement (create-before-delete unless delete_before_replace), any other diff an update; no diff,
    nothing. A protected resource that would be deleted or replaced fails the deployment: preview included
    (https://www.pulumi.com/docs/iac/concepts/resources/options/protect/).

    An input computed from a replaced resource's output is unknown until that replacement has run, so the
    provider sees it as changed: the replacement travels along property dependencies.
    """
    old = {r.urn: r for r in base.resources}
    new = {r.urn: r for r in head.resources}
    protect_new, protect_old = resolve_protect(head), resolve_protect(base)
    changes: dict[str, Change] = {}
    targeted = set(replace)

    for urn in sorted(set(old) - set(new)):
        r = old[urn]
        _p, retain, _dbr, _ig, _roc = _options(r)
        changes[urn] = Change(urn, r.type, r.name, "delete" if r.custom else "same", protected=protect_old[urn],
                              retain_on_delete=retain)
    for urn in sorted(set(new) - set(old)):
        r = new[urn]
        changes[urn] = Change(urn, r.type, r.name, "create" if r.custom else "same", protected=protect_new[urn])

    both = sorted(set(old) & set(new))
    replaced: set[str] = set()
    # Replacements propagate; iterate until nothing new is replaced (the graph is acyclic and finite).
    while True:
        before = set(replaced)
        for urn in both:
            o, n = old[urn], new[urn]
            _p, retain, dbr, ignore, roc = _options(n)
            if not n.custom:
                changes[urn] = Change(urn, n.type, n.name, "same", protected=protect_new[urn])
                continue
            diff = changed_inputs(o.inputs, n.inputs, ignore)
            ignored = {camel(top_level(p)) for p in ignore}
            # Only a replacement's outputs stand for unknowns here: the recording answers a replaced resource as
            # the state did (the same instance id, say), while the real one gets new outputs. A created
            # resource's outputs are recorded as the up would see them (a new node's address), and the engine
            # diffs the inputs of what depends on it by value once it exists (a `pulumi preview`, before it
            # exists, shows those dependents as changing).
            via = sorted(k for k, deps in n.property_dependencies.items() if k not in ignored and set(deps) & replaced)
            diff = sorted(set(diff) | set(via))
            forced, rule_unknown = replace_keys(n.type, diff, roc)
            forced = sorted(set(forced) | set(nested_replace_keys(n.type, o.inputs, n.inputs, diff)))
            action: Action = "same" if not diff else ("replace" if forced else "update")
            if urn in targeted:
                action = "replace"
            if action == "replace":
                replaced.add(urn)
            notes: list[str] = ["targeted by --replace"] if urn in targeted else []
            kept: tuple[str, ...] = ()
            if action == "replace" and ignore:
                # On a replacement the engine keeps the ignored inputs' old values
                # (https://www.pulumi.com/docs/iac/concepts/resources/options/ignorechanges/).
                kept = tuple(sorted(k for k in ignored if _canonical(o.inputs.get(k)) != _canonical(n.inputs.get(k))))
                if kept:
                    notes.append("the replacement keeps the old value of " + ", ".join(kept))
            changes[urn] = Change(
                urn, n.type, n.name, action, changed=tuple(diff), replace_keys=tuple(forced),
                unknown_via=tuple(via), protected=protect_new[urn], retain_on_delete=retain,
                delete_before_replace=dbr, ignored_kept=kept, rule_unknown=rule_unknown and bool(diff),
                notes=tuple(notes),
            )
        if replaced == before:
            break
    return [changes[u] for u in sorted(changes)]


def blocking(changes: Iterable[Change]) -> list[Change]:
    """The changes that make the engine refuse the whole deployment (protected resources deleted or replaced)."""
    return [c for c in changes if c.blocked]


def remote_runs(change: Change, res: RegisteredResource | None) -> list[str]:
    """Which of a remote command's scripts run for ``change``, in order ("delete", "create", "update").

    pulumi-command (sdk/python/pulumi_command/remote/command.py, v1.2.1, the ``update`` input): "If empty,
    the create command will be executed instead", and it runs only when inputs changed. A replacement is a
    delete and a create, the delete first with delete_before_replace. A delete runs ``delete`` if set.
    """
    if res is None:
        return []
    has = {k for k in ("create", "update", "delete") if plain(res.inputs.get(k))}
    if change.action == "create":
        return ["create"] if "create" in has else []
    if change.action == "update":
        return ["update"] if "update" in has else (["create"] if "create" in has else [])
    if change.action == "replace":
        steps = ["create"] if "create" in has else []
        if "delete" in has:
            steps = ["delete", *steps] if change.delete_before_replace else [*steps, "delete"]
        return steps
    if change.action == "delete":
        return ["delete"] if "delete" in has else []
    return []
