"""The node security group: its rules as data, and the component that creates them under mocks."""

from __future__ import annotations

from typing import Any

import pytest
from mocks import Recording, Types, full_config, run_program

from components.config import ClusterConfig, ConfigError, parse_config
from components.security_group import NodeSecurityGroup
from components.security_group_rules import (
    ANYWHERE_V4,
    ANYWHERE_V6,
    SELF,
    SecurityGroupRule,
    exposure_warnings,
    ingress_peers,
    node_security_group_rules,
)

MODES = pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
GALERA = {("tcp", 4567), ("udp", 4567), ("tcp", 4568), ("tcp", 4444)}
DC1 = "192.0.2.21/32"  # the on-prem member's own address (FULL_CONFIG), inside onPremCidrs 192.0.2.0/24


def cluster(**changes: Any) -> ClusterConfig:
    return parse_config(full_config(**changes), stack="dev", region="eu-west-1")


def ingress(rules: tuple[SecurityGroupRule, ...]) -> set[tuple[str, int, str]]:
    return {(r.protocol, r.port, r.peer) for r in rules if r.direction == "ingress"}


def egress(rules: tuple[SecurityGroupRule, ...]) -> set[tuple[str, int, str]]:
    return {(r.protocol, r.port, r.peer) for r in rules if r.direction == "egress"}


# -- the rules as data -------------------------------------------------------


def test_ingress_is_exactly_what_the_config_allows() -> None:
    # FULL_CONFIG: clientCidrs 10.20.0.0/16, adminCidrs 198.51.100.0/24, onPremCidrs 192.0.2.0/24.
    expected = {("tcp", 3306, "10.20.0.0/16"), ("tcp", 22, "198.51.100.0/24")}
    expected |= {(proto, port, peer) for proto, port in GALERA for peer in (SELF, DC1)}
    assert ingress(node_security_group_rules(cluster())) == expected


def test_nothing_is_open_to_the_internet_by_default() -> None:
    rules = node_security_group_rules(cluster())
    assert not [r for r in rules if r.direction == "ingress" and r.peer in (ANYWHERE_V4, ANYWHERE_V6)]
    assert exposure_warnings(cluster()) == ()


def test_galera_ports_only_between_members() -> None:
    rules = node_security_group_rules(cluster())
    for proto, port in GALERA:
        assert ingress_peers(rules, port, proto) == {SELF, DC1}, (proto, port)  # type: ignore[arg-type]
    # Clients and administrators reach their own port only.
    assert ingress_peers(rules, 3306) == {"10.20.0.0/16"}
    assert ingress_peers(rules, 22) == {"198.51.100.0/24"}


def test_without_cidrs_there_is_no_client_or_ssh_access_and_galera_is_self_only() -> None:
    rules = node_security_group_rules(cluster(clientCidrs=[], adminCidrs=[], onPremCidrs=[]))
    assert ingress(rules) == {(proto, port, SELF) for proto, port in GALERA}


def test_egress_is_https_http_and_galera_to_members() -> None:
    expected = {("tcp", 443, ANYWHERE_V4), ("tcp", 80, ANYWHERE_V4)}
    expected |= {(proto, port, peer) for proto, port in GALERA for peer in (SELF, DC1)}
    assert egress(node_security_group_rules(cluster())) == expected


def test_open_cidrs_are_honoured_and_warned_about() -> None:
    cfg = cluster(clientCidrs=["0.0.0.0/0"], adminCidrs=["::/0", "198.51.100.0/24"])
    rules = node_security_group_rules(cfg)
    assert ("tcp", 3306, ANYWHERE_V4) in ingress(rules)
    [ssh_v6] = [r for r in rules if r.port == 22 and r.peer == ANYWHERE_V6]
    assert ssh_v6.cidr_ipv6 == ANYWHERE_V6 and ssh_v6.cidr_ipv4 is None
    warnings = exposure_warnings(cfg)
    assert len(warnings) == 2
    assert any("clientCidrs" in w and "0.0.0.0/0" in w and "3306" in w for w in warnings)
    assert any("adminCidrs" in w and "::/0" in w and "SSH" in w for w in warnings)


def test_a_wide_but_not_open_cidr_is_not_warned_about() -> None:
    # The control for the warning: it fires on /0 only, not on any large network.
    assert exposure_warnings(cluster(clientCidrs=["10.0.0.0/8"], adminCidrs=["0.0.0.0/1"])) == ()


def dc1_at(address: str, **changes: Any) -> ClusterConfig:
    raw = full_config(**changes)
    raw["onPremNodes"] = [{**raw["onPremNodes"][0], "address": address}]
    return parse_config(raw, stack="dev", region="eu-west-1")


def test_an_ipv6_member_becomes_an_ipv6_rule_of_its_own_address() -> None:
    rules = node_security_group_rules(dc1_at("2001:db8:100::21", onPremCidrs=["2001:db8:100::/48"]))
    galera = [r for r in rules if r.port == 4567 and r.peer == "2001:db8:100::21/128"]
    assert {(r.direction, r.protocol) for r in galera} == {
        ("ingress", "tcp"), ("ingress", "udp"), ("egress", "tcp"), ("egress", "udp")
    }
    assert all(r.cidr_ipv6 == "2001:db8:100::21/128" and r.cidr_ipv4 is None for r in galera)


def test_a_leaving_onprem_node_is_in_no_rule() -> None:
    raw = full_config()
    raw["onPremNodes"] = [*raw["onPremNodes"], {**raw["onPremNodes"][0], "name": "dc-2", "address": "192.0.2.22"}]
    staying = parse_config(raw, stack="dev", region="eu-west-1")
    # Control: as a member, dc-2's own address is admitted on every Galera port, both ways.
    assert {(r.protocol, r.port) for r in node_security_group_rules(staying) if r.peer == "192.0.2.22/32"} == GALERA
    raw["onPremNodes"][1]["decommission"] = True
    leaving = node_security_group_rules(parse_config(raw, stack="dev", region="eu-west-1"))
    assert not [r for r in leaving if r.peer == "192.0.2.22/32"]
    assert not [r for r in leaving if r.peer == "192.0.2.0/24"]  # nor the range that holds it
    assert ingress_peers(leaving, 4567) == {SELF, DC1}


def test_a_member_given_by_dns_name_keeps_the_ranges() -> None:
    # AWS rules take CIDRs, not names: then onPremCidrs stands in for the on-prem members, as before.
    rules = node_security_group_rules(dc1_at("db1.dc.example.net"))
    assert ingress_peers(rules, 4567) == {SELF, "192.0.2.0/24"}


def test_an_onprem_address_outside_onprem_cidrs_is_refused() -> None:
    with pytest.raises(ConfigError) as outside:
        dc1_at("198.18.0.5")
    assert any("onPremNodes[0].address = 198.18.0.5" in e and "inside one of onPremCidrs (192.0.2.0/24)" in e
               for e in outside.value.errors), outside.value.errors
    # Control: inside, and without EC2 nodes (no security group), it is accepted.
    dc1_at("192.0.2.99")
    raw = full_config(ec2Nodes=[])
    raw["onPremNodes"] = [{**raw["onPremNodes"][0], "address": "198.18.0.5"}]
    parse_config({k: v for k, v in raw.items() if k not in ("vpcId", "amiId")}, stack="dev", region="eu-west-1")


def test_duplicates_collapse_and_names_are_unique_and_stable() -> None:
    rules = node_security_group_rules(cluster(clientCidrs=["10.20.0.0/16", "10.20.0.0/16"]))
    assert len([r for r in rules if r.port == 3306]) == 1
    keys = [r.key for r in rules]
    assert len(keys) == len(set(keys))
    # Adding a CIDR adds rules; it renames none (a rename would delete and recreate the rule).
    more = node_security_group_rules(cluster(clientCidrs=["10.20.0.0/16", "10.30.0.0/16"]))
    assert set(keys) < {r.key for r in more}
    assert "in-tcp-3306-10-20-0-0-16" in keys and "in-udp-4567-self" in keys


# -- the component under mocks -------------------------------------------------


def _run_group(cfg: ClusterConfig, preview: bool) -> Recording:
    def program() -> None:
        NodeSecurityGroup("nodes", cluster=cfg)

    return run_program(full_config(), preview=preview, program=program)


@MODES
def test_component_creates_one_resource_per_rule(preview: bool) -> None:
    cfg = cluster()
    rec = _run_group(cfg, preview)
    component = rec.one(Types.NODE_SECURITY_GROUP)
    group = rec.one(Types.EC2_SECURITY_GROUP)
    assert group.parent_urn == component.urn
    assert group.input("vpcId") == "vpc-0123456789abcdef0"
    assert not {"ingress", "egress"} & set(group.inputs), "rules must be separate resources, not inline"
    registered = rec.of_type(Types.SG_INGRESS_RULE) + rec.of_type(Types.SG_EGRESS_RULE)
    expected = node_security_group_rules(cfg)
    assert len(registered) == len(expected)
    seen = set()
    for res in registered:
        assert res.parent_urn == component.urn
        direction = "ingress" if res.type == Types.SG_INGRESS_RULE else "egress"
        peer = res.input("cidrIpv4") or res.input("cidrIpv6") or SELF
        seen.add((direction, res.input("ipProtocol"), res.input("fromPort"), peer))
        assert res.input("fromPort") == res.input("toPort")
        if preview:
            continue
        assert res.input("securityGroupId") == group.id
        if peer == SELF:
            assert res.input("referencedSecurityGroupId") == group.id
    assert seen == {(r.direction, r.protocol, r.port, r.peer) for r in expected}


def test_component_warns_about_an_open_cidr() -> None:
    assert _run_group(cluster(), False).warnings == []
    rec = _run_group(cluster(adminCidrs=["0.0.0.0/0"]), False)
    assert len(rec.warnings) == 1 and "adminCidrs" in rec.warnings[0] and "0.0.0.0/0" in rec.warnings[0]
