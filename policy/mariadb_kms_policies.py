"""The project's invariants as policies, importable without the ``PolicyPack`` entry point (``policy/__main__.py``).

Every check is a plain function over ``Res``, a view of one resource that both
sources can fill:

- the real analyzer (``pulumi preview --policy-pack policy``) through
  ``Res.from_args`` / ``Res.from_policy_resource``. pulumi-policy 1.21 hands a
  policy ``protect``, ``ignore_changes``, ``delete_before_replace``,
  ``additional_secret_outputs`` and the parent, but neither
  ``retain_on_delete`` nor which inputs are secret (it unwraps secrets before
  a policy sees them); those stay ``None`` there, and the checks that need
  them say so instead of guessing;
- the project's tests, from the recorder's captured registrations, which know
  both.

A check that reads an unknown value (a preview) raises pulumi-policy's
``UnknownValueError`` through the proxy; the analyzer turns that into an
advisory "can't run policy ... during preview". Nothing here catches it.

Resources are related through property dependencies (which resource an input
came from), never by comparing ARN strings.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

KMS_KEY = "aws:kms/key:Key"
KMS_KEY_POLICY = "aws:kms/keyPolicy:KeyPolicy"
IAM_ROLE = "aws:iam/role:Role"
IAM_USER = "aws:iam/user:User"
IAM_ACCESS_KEY = "aws:iam/accessKey:AccessKey"
EBS_VOLUME = "aws:ebs/volume:Volume"
EC2_INSTANCE = "aws:ec2/instance:Instance"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
REMOTE_COMMAND = "command:remote:Command"
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
DATA_KEY = "pulumi-python:dynamic/mariadb-kms:ClusterDataKey"
EC2_NODE = "mariadb-kms:index:Ec2Node"
ONPREM_NODE = "mariadb-kms:index:OnPremNode"

CLUSTER_PORTS = (22, 3306, 4444, 4567, 4568)
# pulumi-command pins HostKeyAlgorithms to the pinned key's own type, so an ssh-rsa pin offers only SHA-1
# RSA signatures, which OpenSSH 8.8+ (Debian 12) refuses: only these types can be verified.
VERIFIABLE_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
NODE_ACTIONS = frozenset({"kms:Decrypt", "kms:DescribeKey"})
# What a principal holding any of these administers the key.
ADMIN_ACTIONS = frozenset({
    "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:DisableKey", "kms:EnableKey",
    "kms:CreateGrant", "kms:RevokeGrant", "kms:DisableKeyRotation", "kms:UpdateKeyDescription", "kms:CreateAlias",
    "kms:DeleteAlias", "kms:UpdateAlias", "kms:TagResource", "kms:UntagResource",
})
COMMAND_SCRIPTS = ("create", "update", "delete")
# Resource types whose outputs are secrets the program must never put on a command line.
SECRET_SOURCES = frozenset({TLS_PRIVATE_KEY, IAM_ACCESS_KEY})


@dataclass
class Res:
    """One resource as a check sees it."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]
    protect: bool = False
    retain_on_delete: bool | None = None  # None: the real analyzer does not say
    additional_secret_outputs: tuple[str, ...] = ()
    ignore_changes: tuple[str, ...] = ()
    parent: str | None = None
    property_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    secret_inputs: frozenset[str] | None = None  # None: the real analyzer unwraps secrets

    @classmethod
    def from_args(cls, args: ResourceValidationArgs) -> Res:
        return cls(
            type=args.resource_type, name=args.name, urn=args.urn, props=args.props,
            protect=bool(args.opts.protect),
            additional_secret_outputs=tuple(args.opts.additional_secret_outputs),
            ignore_changes=tuple(args.opts.ignore_changes), parent=args.opts.parent,
        )

    @classmethod
    def from_policy_resource(cls, r: PolicyResource) -> Res:
        return cls(
            type=r.resource_type, name=r.name, urn=r.urn, props=r.props, protect=bool(r.opts.protect),
            additional_secret_outputs=tuple(r.opts.additional_secret_outputs),
            ignore_changes=tuple(r.opts.ignore_changes),
            parent=r.parent.urn if r.parent is not None else r.opts.parent,
            property_dependencies={k: tuple(d.urn for d in v) for k, v in r.property_dependencies.items()},
        )


Violation = tuple[str, str | None]  # (message, urn)


@dataclass(frozen=True)
class ResourceCheck:
    name: str
    description: str
    check: Callable[[Res], list[str]]
    advisory: bool = False


@dataclass(frozen=True)
class StackCheck:
    name: str
    description: str
    check: Callable[[Sequence[Res]], list[Violation]]
    advisory: bool = False


# --------------------------------------------------------------------------
# Reading values
# --------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _statements(policy: Any) -> list[Mapping[str, Any]]:
    doc = json.loads(policy) if isinstance(policy, str) else policy
    return [s for s in _as_list((doc or {}).get("Statement")) if isinstance(s, Mapping)]


def _principals(statement: Mapping[str, Any]) -> list[str]:
    principal = statement.get("Principal")
    if principal == "*":
        return ["*"]
    if isinstance(principal, Mapping):
        return [str(p) for key in ("AWS", "Service", "Federated") for p in _as_list(principal.get(key))]
    return []


def _action_matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def _allows(statement: Mapping[str, Any], action: str) -> bool:
    return statement.get("Effect") == "Allow" and any(
        _action_matches(str(a), action) for a in _as_list(statement.get("Action"))
    )


def _condition_keys(statement: Mapping[str, Any]) -> set[str]:
    cond = statement.get("Condition") or {}
    return {str(k).lower() for block in cond.values() if isinstance(block, Mapping) for k in block}


def _node_ancestor(res: Res, by_urn: Mapping[str, Res]) -> Res | None:
    parent = by_urn.get(res.parent or "")
    while parent is not None:
        if parent.type in (EC2_NODE, ONPREM_NODE):
            return parent
        parent = by_urn.get(parent.parent or "")
    return None


def _script(res: Res, key: str) -> str:
    value = res.props.get(key)
    return str(value) if value is not None else ""


# --------------------------------------------------------------------------
# KMS key
# --------------------------------------------------------------------------


def kms_key_rotation(res: Res) -> list[str]:
    if res.type != KMS_KEY or res.props.get("enableKeyRotation") is True:
        return []
    return [f"{res.name}: key rotation is off. Set enable_key_rotation=True on the KMS key (keyRotationPeriodDays "
            "sets how often)."]


def kms_key_deletion_window(res: Res) -> list[str]:
    if res.type != KMS_KEY:
        return []
    days = res.props.get("deletionWindowInDays")
    if days is None or float(days) >= 7:
        return []
    return [f"{res.name}: deletion window is {int(days)} days; it must be at least 7. Raise keyDeletionWindowDays."]


def kms_key_deletion_window_30(res: Res) -> list[str]:
    if res.type != KMS_KEY:
        return []
    days = res.props.get("deletionWindowInDays")
    if days is None or float(days) >= 30:
        return []
    return [f"{res.name}: deletion window is {int(days)} days; 30 leaves the most time to notice a scheduled "
            "deletion. Consider keyDeletionWindowDays: 30."]


# --------------------------------------------------------------------------
# Key policy
# --------------------------------------------------------------------------


def _key_policy(res: Res) -> Any:
    if res.type in (KMS_KEY, KMS_KEY_POLICY):
        return res.props.get("policy")
    return None


def key_policy_no_wildcard_principal(res: Res) -> list[str]:
    policy = _key_policy(res)
    if not policy:
        return []
    bad = [str(s.get("Sid") or i) for i, s in enumerate(_statements(policy))
           if s.get("Effect") == "Allow" and "*" in _principals(s)]
    if not bad:
        return []
    return [f"{res.name}: key policy statement(s) {', '.join(bad)} allow any principal (\"*\"). Name the roles or "
            "users instead (keyAdmins, deployers)."]


def key_policy_admins_cannot_decrypt(res: Res) -> list[str]:
    policy = _key_policy(res)
    if not policy:
        return []
    statements = _statements(policy)
    admins = {p for s in statements for p in _principals(s) if any(_allows(s, a) for a in ADMIN_ACTIONS)}
    out = []
    for principal in sorted(admins):
        for s in statements:
            if principal in _principals(s) and _allows(s, "kms:Decrypt") and "kms:viaservice" not in _condition_keys(s):
                out.append(f"{res.name}: {principal} administers the key and may also kms:Decrypt outside "
                           f"kms:ViaService (statement {s.get('Sid') or '?'}). Administrators manage, never "
                           "decrypt: drop Decrypt or restrict it with a kms:ViaService condition (EBS).")
    return out


def _node_principals(key: Res, by_urn: Mapping[str, Res]) -> set[str]:
    """The node identities the key policy names: the IAM roles and users its policy input came from."""
    sources = [by_urn[u] for u in key.property_dependencies.get("policy", ()) if u in by_urn]
    return {str(r.props.get("arn")) for r in sources if r.type in (IAM_ROLE, IAM_USER)}


def _node_statements(resources: Sequence[Res]) -> Iterator[tuple[Res, Mapping[str, Any], set[str]]]:
    """(key, statement, the node identities it names) for every key-policy statement that names a node."""
    by_urn = {r.urn: r for r in resources}
    for key in resources:
        policy = _key_policy(key)
        if not policy:
            continue
        nodes = _node_principals(key, by_urn)
        for s in _statements(policy):
            named = set(_principals(s)) & nodes
            if named:
                yield key, s, named


def key_policy_node_least_privilege(resources: Sequence[Res]) -> list[Violation]:
    out: list[Violation] = []
    for key, s, named in _node_statements(resources):
        extra = [str(a) for a in _as_list(s.get("Action")) if str(a) not in NODE_ACTIONS]
        if s.get("Effect") == "Allow" and extra:
            for principal in named:
                out.append((f"{key.name}: node identity {principal} is allowed {', '.join(extra)}; nodes may "
                            "only kms:Decrypt and kms:DescribeKey. Remove the extra actions.", key.urn))
    return out


def key_policy_node_decrypt_context(resources: Sequence[Res]) -> list[Violation]:
    out: list[Violation] = []
    for key, s, _named in _node_statements(resources):
        if _allows(s, "kms:Decrypt") and not any(k.startswith("kms:encryptioncontext") for k in _condition_keys(s)):
            out.append((f"{key.name}: node Decrypt (statement {s.get('Sid') or '?'}) has no "
                        "kms:EncryptionContext condition: with dataKeyEncryptionContext on (kms-envelope mode) "
                        "the blob carries one and node Decrypt requires it, so a node can unwrap only its "
                        "cluster's blob; aws-plugin mode cannot (its plugin decrypts without a context).", key.urn))
    return out


# --------------------------------------------------------------------------
# Protection
# --------------------------------------------------------------------------

PROTECTED_TYPES = (KMS_KEY, DATA_KEY, EBS_VOLUME)


def protected_and_retained(res: Res) -> list[str]:
    if res.type not in PROTECTED_TYPES:
        return []
    missing = [] if res.protect else ["protect=True"]
    if res.retain_on_delete is False:
        missing.append("retain_on_delete=True")
    if not missing:
        return []
    return [f"{res.name}: losing it loses the data; give it {' and '.join(missing)} in its ResourceOptions."]


# --------------------------------------------------------------------------
# EC2
# --------------------------------------------------------------------------


def ec2_imdsv2_hop_limit(res: Res) -> list[str]:
    if res.type != EC2_INSTANCE:
        return []
    md = res.props.get("metadataOptions") or {}
    tokens, hops = md.get("httpTokens"), md.get("httpPutResponseHopLimit")
    if tokens == "required" and hops is not None and float(hops) == 1:
        return []
    return [f"{res.name}: metadata_options must be http_tokens=\"required\" (IMDSv2) with "
            f"http_put_response_hop_limit=1 (got {tokens}, {hops}); a container or a forwarded request could "
            "otherwise reach the role's credentials."]


def _cluster_keys(resources: Sequence[Res]) -> set[str]:
    """The KMS keys the volumes must be under: what the data key's key_arn input came from.

    Once the data key has moved to a key the stack does not own (``kmsKeyArn``, a plain ARN with no
    dependency), the stack's own key: a volume's key cannot change in place, so the volumes keep it.
    """
    data_keys = [r for r in resources if r.type == DATA_KEY]
    sources = {u for r in data_keys for u in r.property_dependencies.get("key_arn", ())}
    if data_keys and not sources:
        return {r.urn for r in resources if r.type == KMS_KEY}
    return sources


def volumes_under_cluster_key(resources: Sequence[Res]) -> list[Violation]:
    keys = _cluster_keys(resources)
    key_types = {r.urn for r in resources if r.type == KMS_KEY}
    out: list[Violation] = []
    for r in resources:
        if r.type == EBS_VOLUME:
            blocks = [("data volume", r.props, r.property_dependencies.get("kmsKeyId", ()))]
        elif r.type == EC2_INSTANCE:
            blocks = [("root volume", r.props.get("rootBlockDevice") or {},
                       r.property_dependencies.get("rootBlockDevice", ()))]
        else:
            continue
        for what, props, deps in blocks:
            from_keys = set(deps) & key_types
            if props.get("encrypted") is not True or not from_keys or not from_keys <= keys:
                out.append((f"{r.name}: the {what} must be encrypted=True with kms_key_id=<the cluster key>.arn "
                            "(the key that wraps the cluster data key, or the stack's own key once kmsKeyArn "
                            "names another), not another key or the AWS-managed one.",
                            r.urn))
    return out


def _port_open(from_port: Any, to_port: Any, protocol: Any) -> list[int]:
    if str(protocol) in ("-1", "all"):
        return list(CLUSTER_PORTS)
    lo = int(float(from_port if from_port is not None else 0))
    hi = int(float(to_port if to_port is not None else 65535))
    return [p for p in CLUSTER_PORTS if lo <= p <= hi]


def _world(cidr: Any) -> bool:
    if not cidr:
        return False
    try:
        return ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


def no_world_open_cluster_ports(res: Res) -> list[str]:
    p = res.props
    rules: list[Mapping[str, Any]] = []
    if res.type == INGRESS_RULE:
        rules = [{"from": p.get("fromPort"), "to": p.get("toPort"), "proto": p.get("ipProtocol"),
                  "cidrs": [p.get("cidrIpv4"), p.get("cidrIpv6")]}]
    elif res.type == SECURITY_GROUP_RULE and p.get("type") == "ingress":
        rules = [{"from": p.get("fromPort"), "to": p.get("toPort"), "proto": p.get("protocol"),
                  "cidrs": [*_as_list(p.get("cidrBlocks")), *_as_list(p.get("ipv6CidrBlocks"))]}]
    elif res.type == SECURITY_GROUP:
        rules = [{"from": i.get("fromPort"), "to": i.get("toPort"), "proto": i.get("protocol"),
                  "cidrs": [*_as_list(i.get("cidrBlocks")), *_as_list(i.get("ipv6CidrBlocks"))]}
                 for i in _as_list(p.get("ingress"))]
    out = []
    for rule in rules:
        ports = _port_open(rule["from"], rule["to"], rule["proto"])
        world = [c for c in rule["cidrs"] if _world(c)]
        if ports and world:
            out.append(f"{res.name}: opens port(s) {', '.join(map(str, ports))} to {', '.join(world)}. Use adminCidrs, "
                       "clientCidrs or onPremCidrs to name who may connect.")
    return out


# --------------------------------------------------------------------------
# Remote commands
# --------------------------------------------------------------------------


def _host_key_problems(where: str, conn: Mapping[str, Any]) -> list[str]:
    key = conn.get("hostKey")
    if not key:
        return [f"{where}: no host_key: pulumi-command then skips host-key checking. Pin the host's public key."]
    kind = str(key).split()[0] if str(key).split() else ""
    if kind not in VERIFIABLE_HOST_KEY_TYPES:
        return [f"{where}: host key type {kind or '(empty)'} cannot be verified against Debian 12's sshd "
                f"(pulumi-command offers only the pinned type); pin one of {', '.join(VERIFIABLE_HOST_KEY_TYPES)}."]
    return []


def remote_command_host_key(res: Res) -> list[str]:
    if res.type != REMOTE_COMMAND:
        return []
    conn = res.props.get("connection") or {}
    out = _host_key_problems(f"{res.name}: connection", conn)
    proxy = conn.get("proxy")
    if proxy:
        out += _host_key_problems(f"{res.name}: connection.proxy (jump host)", proxy)
    return out


def remote_command_no_secret_on_command_line(resources: Sequence[Res]) -> list[Violation]:
    by_urn = {r.urn: r for r in resources}
    out: list[Violation] = []
    for r in resources:
        if r.type != REMOTE_COMMAND:
            continue
        for key in (*COMMAND_SCRIPTS, "environment"):
            sources = [by_urn[u] for u in r.property_dependencies.get(key, ()) if u in by_urn]
            secret_from = [s.name for s in sources if s.type in SECRET_SOURCES or s.additional_secret_outputs]
            secret_marked = r.secret_inputs is not None and key in r.secret_inputs
            if secret_from or secret_marked:
                why = f"comes from {', '.join(secret_from)}" if secret_from else "is secret"
                out.append((f"{r.name}: `{key}` {why}. A command line and its environment are visible to every "
                            "local user (ps) and kept in state: pass secrets on stdin.", r.urn))
    return out


def remote_command_secret_stdin_hides_output(resources: Sequence[Res]) -> list[Violation]:
    by_urn = {r.urn: r for r in resources}
    out: list[Violation] = []
    for r in resources:
        if r.type != REMOTE_COMMAND:
            continue
        sources = [by_urn[u] for u in r.property_dependencies.get("stdin", ()) if u in by_urn]
        secret_stdin = any(s.type in SECRET_SOURCES or s.additional_secret_outputs for s in sources) or (
            r.secret_inputs is not None and "stdin" in r.secret_inputs)
        missing = [k for k in ("stdout", "stderr") if k not in r.additional_secret_outputs]
        if secret_stdin and missing:
            out.append((f"{r.name}: stdin is secret but {' and '.join(missing)} are not: pulumi-command keeps them in "
                        "state and error messages. Add additional_secret_outputs=[\"stdout\", \"stderr\"].", r.urn))
    return out


# --------------------------------------------------------------------------
# The cluster as a whole
# --------------------------------------------------------------------------


def every_node_verified(resources: Sequence[Res]) -> list[Violation]:
    by_urn = {r.urn: r for r in resources}
    verified = {
        node.urn for r in resources
        if r.type == REMOTE_COMMAND and "mariadb-kms-verify" in _script(r, "create")
        and (node := _node_ancestor(r, by_urn)) is not None
    }
    return [(f"{n.name}: no verification runs on this node; every node needs one (its failure fails `pulumi up`).",
             n.urn) for n in resources if n.type in (EC2_NODE, ONPREM_NODE) and n.urn not in verified]


BOOTSTRAP_MUST_IGNORE = ("connection", "create", "triggers")


def exactly_one_bootstrap(resources: Sequence[Res]) -> list[Violation]:
    boots = [r for r in resources if r.type == REMOTE_COMMAND and "mariadb-kms-bootstrap" in _script(r, "create")]
    if len(boots) != 1:
        return [(f"{len(boots)} bootstrap commands ({', '.join(b.name for b in boots) or 'none'}); exactly one node "
                 "runs galera_new_cluster, once. A second bootstrap is a split brain.", None)]
    missing = [k for k in BOOTSTRAP_MUST_IGNORE if k not in boots[0].ignore_changes]
    if missing:
        return [(f"{boots[0].name}: ignore_changes lacks {', '.join(missing)}: a change there would run "
                 "galera_new_cluster again. Ignore changes to every input of the bootstrap.", boots[0].urn)]
    return []


# --------------------------------------------------------------------------
# The pack's contents
# --------------------------------------------------------------------------

RESOURCE_CHECKS: tuple[ResourceCheck, ...] = (
    ResourceCheck("kms-key-rotation", "The KMS key rotates.", kms_key_rotation),
    ResourceCheck("kms-key-deletion-window", "The KMS key's deletion window is at least 7 days.",
                  kms_key_deletion_window),
    ResourceCheck("kms-key-deletion-window-30", "The KMS key's deletion window is 30 days.",
                  kms_key_deletion_window_30, advisory=True),
    ResourceCheck("key-policy-no-wildcard-principal", "No key policy statement allows any principal.",
                  key_policy_no_wildcard_principal),
    ResourceCheck("key-policy-admins-cannot-decrypt",
                  "No principal both administers the key and decrypts outside kms:ViaService.",
                  key_policy_admins_cannot_decrypt),
    ResourceCheck("protect-key-and-data",
                  "The KMS key, the cluster data key and the data volumes are protected (and retained on delete).",
                  protected_and_retained),
    ResourceCheck("ec2-imdsv2-hop-limit-1", "EC2 instances require IMDSv2 with a hop limit of 1.",
                  ec2_imdsv2_hop_limit),
    ResourceCheck("no-world-open-cluster-ports", "No rule opens 22, 3306, 4444, 4567 or 4568 to the world.",
                  no_world_open_cluster_ports),
    ResourceCheck("remote-command-host-key", "Remote commands pin a host key the provider can verify.",
                  remote_command_host_key),
)

STACK_CHECKS: tuple[StackCheck, ...] = (
    StackCheck("key-policy-node-least-privilege", "Node identities may only Decrypt and DescribeKey.",
               key_policy_node_least_privilege),
    StackCheck("key-policy-node-decrypt-context", "Node Decrypt is conditioned on the encryption context.",
               key_policy_node_decrypt_context, advisory=True),
    StackCheck("volumes-under-cluster-key", "Data and root volumes are encrypted under the cluster key.",
               volumes_under_cluster_key),
    StackCheck("remote-command-no-secret-on-command-line",
               "No secret in a remote command's create/update/delete or environment.",
               remote_command_no_secret_on_command_line),
    StackCheck("remote-command-secret-stdin-hides-output",
               "A remote command with secret stdin marks stdout and stderr secret.",
               remote_command_secret_stdin_hides_output),
    StackCheck("every-node-verified", "Every node has a verification.", every_node_verified),
    StackCheck("exactly-one-bootstrap", "Exactly one create-only bootstrap.", exactly_one_bootstrap),
)


def _level(advisory: bool) -> EnforcementLevel:
    return EnforcementLevel.ADVISORY if advisory else EnforcementLevel.MANDATORY


def resource_policy(spec: ResourceCheck) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        for message in spec.check(Res.from_args(args)):
            report(message, args.urn)

    return ResourceValidationPolicy(spec.name, spec.description, validate, _level(spec.advisory))


def stack_policy(spec: StackCheck) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        for message, urn in spec.check([Res.from_policy_resource(r) for r in args.resources]):
            report(message, urn)

    return StackValidationPolicy(spec.name, spec.description, validate, _level(spec.advisory))


def policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    return [*(resource_policy(c) for c in RESOURCE_CHECKS), *(stack_policy(c) for c in STACK_CHECKS)]


def check_all(resources: Iterable[Res], stack_view: Sequence[Res] | None = None) -> dict[str, list[Violation]]:
    """Every check over ``resources`` (inputs) and ``stack_view`` (outputs; default the same), by policy name."""
    resources = list(resources)
    stack = list(stack_view) if stack_view is not None else resources
    found: dict[str, list[Violation]] = {}
    for c in RESOURCE_CHECKS:
        found[c.name] = [(m, r.urn) for r in resources for m in c.check(r)]
    for s in STACK_CHECKS:
        found[s.name] = s.check(stack)
    return found
