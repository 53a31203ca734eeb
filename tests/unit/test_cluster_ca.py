"""ClusterCa as Pulumi registers it, under pulumi.runtime.set_mocks, in up and preview mode.

The mock is local and small (like test_cluster_data_key_component's): it
answers each pulumi-tls resource with a distinct planted value, so a test can
follow which key signed which certificate and find any private key that
leaks into a non-secret value. In preview, computed outputs come back
unknown, as in a real preview; an EC2 node's address is unknown there too.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi.output import Unknown
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_pulumi_func

from components.cluster_ca import COMPONENT_TYPE, ClusterCa
from components.config import TlsConfig

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
ADDRESS_SOURCE = "test:index:NetworkInterface"  # stands in for an EC2 node's ENI: its address is computed

NODES = {"aws-a": "10.20.1.10", "dc-1": "db1.dc.example.com", "dc-v6": "2001:db8::21"}


def planted_key(name: str) -> str:
    return f"-----BEGIN PRIVATE KEY-----\nplanted-private-key-{name}\n-----END PRIVATE KEY-----\n"


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    parent: str


@dataclass
class Recording:
    preview: bool
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, tuple[Any, bool]] = field(default_factory=dict)  # name -> (value, secret)
    urns: dict[str, str] = field(default_factory=dict)  # urn -> resource name

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Registered:
        (found,) = [r for r in self.resources if r.name == name]
        return found


def _computed(typ: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    if typ == PRIVATE_KEY:
        return {"privateKeyPem": planted_key(name), "publicKeyPem": f"public-key-{name}"}
    if typ == SELF_SIGNED:
        return {"certPem": f"self-signed-cert-{name}", "readyForRenewal": False}
    if typ == CERT_REQUEST:
        return {"certRequestPem": f"csr-{name}"}
    if typ == LOCALLY_SIGNED:
        return {"certPem": f"locally-signed-cert-{name}", "readyForRenewal": False}
    if typ == ADDRESS_SOURCE:
        return {"privateIp": "10.20.2.10"}
    return {}


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.secret_outputs: dict[str, list[str]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        for key, value in _computed(args.typ, args.name, args.inputs).items():
            state[key] = rpc.UNKNOWN if self.recording.preview else value
        self.recording.resources.append(Registered(args.typ, args.name, dict(args.inputs), state, ""))
        return ("" if self.recording.preview else f"{args.name}-id"), state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class _Monitor(pulumi.runtime.mocks.MockMonitor):
    """Records each registration's parent and marks additionalSecretOutputs secret, as the engine does."""

    def __init__(self, mocks: _Mocks) -> None:
        super().__init__(mocks)
        self.mocks = mocks

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        record = self.mocks.recording
        if request.custom:
            (reg,) = [r for r in record.resources if (r.type, r.name) == (request.type, request.name)]
            reg.parent = record.urns.get(request.parent, request.parent)
            for key in request.additionalSecretOutputs:
                if key in reg.state:
                    reg.state[key] = rpc.wrap_rpc_secret(reg.state[key])
        record.urns[response.urn] = request.name
        return response


def run(make: Callable[[], Mapping[str, pulumi.Output[Any]]], *, preview: bool = False) -> Recording:
    """Run one program in a context of its own; ``make`` returns the outputs to resolve."""
    recording = Recording(preview=preview)

    def in_fresh_context() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            mocks = _Mocks(recording)
            pulumi.runtime.set_mocks(mocks, project="mariadb-kms", stack="dev", preview=preview,
                                     monitor=_Monitor(mocks))

            async def program() -> None:
                for name, out in make().items():
                    value = await out.future(with_unknowns=True)
                    recording.outputs[name] = (value, await out.is_secret())

            loop.run_until_complete(run_pulumi_func(program))
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    contextvars.Context().run(in_fresh_context)
    return recording


def make_ca(
    settings: TlsConfig | None = None, nodes: Mapping[str, pulumi.Input[str]] | None = None
) -> Callable[[], dict[str, pulumi.Output[Any]]]:
    def make() -> dict[str, pulumi.Output[Any]]:
        ca = ClusterCa("cluster-ca", cluster_name="prod-db", stack="dev", nodes=dict(nodes or NODES),
                       settings=settings or TlsConfig())
        outputs: dict[str, pulumi.Output[Any]] = {"ca": ca.ca_cert_pem}
        for node, cert in ca.certificates.items():
            outputs[f"{node}.cert"] = cert.cert_pem
            outputs[f"{node}.key"] = cert.key_pem
        return outputs

    return make


def unwrap(value: Any) -> Any:
    return rpc.unwrap_rpc_secret(value)


@pytest.fixture(scope="module")
def up() -> Recording:
    return run(make_ca())


def test_one_root_ca_with_ecdsa_key_and_cert_signing_only(up: Recording) -> None:
    (root,) = up.of_type(SELF_SIGNED)
    assert root.inputs["isCaCertificate"] is True
    assert root.inputs["maxPathLength"] == 0, "no intermediate may chain below the root"
    assert set(root.inputs["allowedUses"]) == {"cert_signing", "crl_signing", "digital_signature"}
    assert not {"server_auth", "client_auth"} & set(root.inputs["allowedUses"]), "the root is no node"
    assert root.inputs["setSubjectKeyId"] is True
    ca_key = up.named("cluster-ca-ca-key")
    assert (ca_key.inputs["algorithm"], ca_key.inputs["ecdsaCurve"]) == ("ECDSA", "P256")
    assert unwrap(root.inputs["privateKeyPem"]) == planted_key("cluster-ca-ca-key")
    assert root.inputs["subject"]["commonName"] == "mariadb-kms root CA prod-db"


def test_the_root_signs_every_node_certificate_directly(up: Recording) -> None:
    (root,) = up.of_type(SELF_SIGNED)
    leaves = up.of_type(LOCALLY_SIGNED)
    assert sorted(leaf.name for leaf in leaves) == sorted(f"cluster-ca-{n}-cert" for n in NODES)
    for leaf in leaves:
        assert leaf.inputs["caCertPem"] == "self-signed-cert-cluster-ca-ca-cert" == root.state["certPem"]
        assert unwrap(leaf.inputs["caPrivateKeyPem"]) == planted_key("cluster-ca-ca-key")
        assert not leaf.inputs.get("isCaCertificate"), f"{leaf.name}: an intermediate CA (MDEV-35812)"
        node = leaf.name.removeprefix("cluster-ca-").removesuffix("-cert")
        assert leaf.inputs["certRequestPem"] == f"csr-cluster-ca-{node}-csr"
    # Each request is made with the node's own key, never the CA's or another node's.
    for request in up.of_type(CERT_REQUEST):
        node = request.name.removeprefix("cluster-ca-").removesuffix("-csr")
        assert unwrap(request.inputs["privateKeyPem"]) == planted_key(f"cluster-ca-{node}-key")


def test_node_certificates_serve_and_authenticate_both_ends(up: Recording) -> None:
    for leaf in up.of_type(LOCALLY_SIGNED):
        assert set(leaf.inputs["allowedUses"]) == {"server_auth", "client_auth", "digital_signature",
                                                   "key_encipherment"}
        assert "cert_signing" not in leaf.inputs["allowedUses"]


def test_sans_carry_name_and_address_with_ip_addresses_as_ip_sans(up: Recording) -> None:
    requests = {r.name.removeprefix("cluster-ca-").removesuffix("-csr"): r.inputs for r in up.of_type(CERT_REQUEST)}
    assert requests["aws-a"]["dnsNames"] == ["aws-a"]
    assert requests["aws-a"]["ipAddresses"] == ["10.20.1.10"]
    assert requests["dc-1"]["dnsNames"] == ["dc-1", "db1.dc.example.com"]
    assert requests["dc-1"].get("ipAddresses") in (None, [])
    assert requests["dc-v6"]["ipAddresses"] == ["2001:db8::21"]
    for node, inputs in requests.items():
        assert inputs["subject"]["commonName"] == node, "the SST donor checks the joiner's CN"
        assert inputs["subject"]["organizationalUnit"] == "prod-db"


def test_private_keys_are_secret_and_appear_in_no_plain_value(up: Recording) -> None:
    for node in NODES:
        value, secret = up.outputs[f"{node}.key"]
        assert value == planted_key(f"cluster-ca-{node}-key") and secret is True
        cert, cert_secret = up.outputs[f"{node}.cert"]
        assert cert == f"locally-signed-cert-cluster-ca-{node}-cert" and cert_secret is False
    assert up.outputs["ca"] == ("self-signed-cert-cluster-ca-ca-cert", False)
    keys = [planted_key(r.name) for r in up.of_type(PRIVATE_KEY)]
    assert len(keys) == len(NODES) + 1
    leaks = [
        f"{r.name}.{where}.{path}"
        for r in up.resources
        for where, values in (("inputs", r.inputs), ("state", r.state))
        for path, text in _plain_strings(values)
        if any(k in text for k in keys)
    ]
    leaks += [name for name, (value, secret) in up.outputs.items() if not secret and any(k in str(value) for k in keys)]
    assert leaks == []


def test_control_the_leak_scan_finds_a_plain_key() -> None:
    plain = {"privateKeyPem": planted_key("x"), "nested": [rpc.wrap_rpc_secret(planted_key("y"))]}
    found = [path for path, text in _plain_strings(plain) if "planted-private-key" in text]
    assert found == ["privateKeyPem"]


def test_lifetimes_and_early_renewal_come_from_config() -> None:
    rec = run(make_ca(TlsConfig(validity_days=90, early_renewal_days=20, ca_validity_days=1825)))
    (root,) = rec.of_type(SELF_SIGNED)
    assert root.inputs["validityPeriodHours"] == 1825 * 24
    # The CA renews while a full node lifetime still fits: no node certificate outlives it.
    assert root.inputs["earlyRenewalHours"] == 90 * 24
    for leaf in rec.of_type(LOCALLY_SIGNED):
        assert leaf.inputs["validityPeriodHours"] == 90 * 24
        assert leaf.inputs["earlyRenewalHours"] == 20 * 24
        assert leaf.inputs["earlyRenewalHours"] < leaf.inputs["validityPeriodHours"]


def test_defaults_give_a_year_with_a_month_of_early_renewal(up: Recording) -> None:
    for leaf in up.of_type(LOCALLY_SIGNED):
        assert (leaf.inputs["validityPeriodHours"], leaf.inputs["earlyRenewalHours"]) == (365 * 24, 30 * 24)


def test_everything_is_a_child_of_the_component(up: Recording) -> None:
    (component,) = up.of_type(COMPONENT_TYPE)
    assert component.name == "cluster-ca"
    assert {r.parent for r in up.resources if r is not component} == {"cluster-ca"}


def test_preview_with_an_unknown_address_registers_everything() -> None:
    def make() -> dict[str, pulumi.Output[Any]]:
        eni = pulumi.CustomResource(ADDRESS_SOURCE, "aws-a-eni", {"privateIp": None})
        return make_ca(nodes={"aws-a": eni.privateIp, "dc-1": "192.0.2.21"})()  # type: ignore[attr-defined]

    rec = run(make, preview=True)
    assert len(rec.of_type(LOCALLY_SIGNED)) == 2 and len(rec.of_type(CERT_REQUEST)) == 2
    requests = {r.name: r.inputs for r in rec.of_type(CERT_REQUEST)}
    # The unknown address leaves that node's SANs unknown, not wrong.
    assert isinstance(requests["cluster-ca-aws-a-csr"]["ipAddresses"], Unknown)
    assert isinstance(requests["cluster-ca-aws-a-csr"]["dnsNames"], Unknown)
    assert requests["cluster-ca-dc-1-csr"]["ipAddresses"] == ["192.0.2.21"]
    value, secret = rec.outputs["aws-a.key"]
    assert secret is True and not isinstance(value, str)


def test_an_address_known_only_in_up_lands_in_the_sans() -> None:
    def make() -> dict[str, pulumi.Output[Any]]:
        eni = pulumi.CustomResource(ADDRESS_SOURCE, "aws-b-eni", {"privateIp": None})
        return make_ca(nodes={"aws-b": eni.privateIp})()  # type: ignore[attr-defined]

    rec = run(make)
    (request,) = rec.of_type(CERT_REQUEST)
    assert request.inputs["ipAddresses"] == ["10.20.2.10"]


def _plain_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string outside a secret wrapper, with its path."""
    if rpc.is_rpc_secret(value):
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _plain_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _plain_strings(v, f"{path}[{i}]")
