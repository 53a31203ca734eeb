"""bench/stats.py: pair ratios, quantiles and the bootstrap interval of the median, against known answers."""

from __future__ import annotations

import math
import statistics

import pytest

from bench import stats


def test_pair_ratios_are_per_round() -> None:
    assert stats.pair_ratios([100.0, 50.0], [90.0, 50.0]) == [0.9, 1.0]


def test_pair_ratios_refuse_unequal_or_empty_or_zero() -> None:
    with pytest.raises(ValueError, match="equal counts"):
        stats.pair_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        stats.pair_ratios([], [])
    with pytest.raises(ValueError, match="denominator"):
        stats.pair_ratios([0.0], [1.0])


def test_quantile_matches_the_standard_librarys_inclusive_method() -> None:
    sample = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    expected = statistics.quantiles(sample, n=4, method="inclusive")
    assert [stats.quantile(sample, q) for q in (0.25, 0.5, 0.75)] == pytest.approx(expected)
    assert stats.quantile(sample, 0.0) == 1.0 and stats.quantile(sample, 1.0) == 9.0


def test_bootstrap_interval_of_a_three_value_sample_is_known_exactly() -> None:
    # Resampling [1, 2, 3] three times: the median is 1 with probability 7/27 (at least two 1s), 3 likewise,
    # so both 2.5% tails fall on the extremes: the 95% interval is exactly (1, 3).
    assert stats.bootstrap_median_ci([1.0, 2.0, 3.0], resamples=4000) == (1.0, 3.0)


def test_bootstrap_interval_of_a_constant_sample_has_no_width() -> None:
    assert stats.bootstrap_median_ci([0.97] * 7) == (pytest.approx(0.97), pytest.approx(0.97))


def test_bootstrap_interval_has_the_width_theory_gives() -> None:
    # 0..1000: the median's standard error is about 1 / (2 f(m) sqrt(n)) = 1000 / (2 sqrt(1001)) ~ 15.8,
    # so the 95% interval is about 500 +- 31. A wrong tail (e.g. 0.05 instead of 0.025) or a mean
    # instead of a median would move it out of these bounds.
    low, high = stats.bootstrap_median_ci([float(v) for v in range(1001)], resamples=2000, seed=7)
    half_width = 1.96 * 1000 / (2 * math.sqrt(1001))
    assert low == pytest.approx(500 - half_width, abs=8)
    assert high == pytest.approx(500 + half_width, abs=8)


def test_bootstrap_is_reproducible_from_its_seed() -> None:
    sample = [0.91, 0.97, 1.02, 0.88, 0.95, 0.99, 0.93]
    assert stats.bootstrap_median_ci(sample, seed=3) == stats.bootstrap_median_ci(sample, seed=3)


def test_summary_of_pairs_and_its_cost() -> None:
    plain = [100.0, 120.0, 90.0, 110.0, 100.0, 105.0, 95.0]
    encrypted = [97.0, 114.0, 90.0, 99.0, 98.0, 105.0, 76.0]
    s = stats.compare(plain, encrypted)
    assert s.ratios == pytest.approx((0.97, 0.95, 1.0, 0.9, 0.98, 1.0, 0.8))
    assert s.median == pytest.approx(0.97)
    assert (s.minimum, s.maximum) == (pytest.approx(0.8), pytest.approx(1.0))
    assert s.ci_low <= s.median <= s.ci_high
    assert s.cost == pytest.approx(0.03)
    assert s.cost_upper == pytest.approx(1 - s.ci_low)
    assert s.as_dict()["ci95"] == [s.ci_low, s.ci_high]


def test_cpu_per_thousand_transactions() -> None:
    assert stats.per_thousand(2.5, 5000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no transactions"):
        stats.per_thousand(1.0, 0)


def test_at_rest_variants_add_one_flag_group_at_a_time_and_default_is_the_programs_file() -> None:
    from types import SimpleNamespace

    from bench import at_rest
    from bench.single_node import SideBySide
    from components.config import parse_config
    from components.mycnf import ENCRYPTION_FLAGS_ON, render_mycnf
    from components.node_files import MYCNF_ENCRYPTION_PATH, MYCNF_NODE_PATH

    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmAzJ0x7dGVzdGJlZCBkdW1teSBob3N0IGtleSEhISE="
    raw = {"keyAdmins": ["arn:aws:iam::123456789012:role/kms-admin"],
           "onPremNodes": [{"name": "bench", "address": "10.0.0.5", "sshUser": "root", "hostKey": host_key}],
           "tlsReplication": False, "tlsSst": False, "tlsClients": False, "requireSecureTransport": False}
    cluster = parse_config(raw, stack="bench", region="us-east-1")
    files = render_mycnf(cluster.nodes[0], cluster, node_address="10.0.0.5", member_addresses=["10.0.0.5"],
                         key_arn=None)
    bed = SimpleNamespace(hosts={"bench": SimpleNamespace(address="10.0.0.5")})
    servers = SideBySide(bed, "bench", at_rest.VARIANTS)  # type: ignore[arg-type]
    # What take_over reads back from a deployed node: the files the program rendered.
    servers.node_cnf, servers.encryption_cnf = files[MYCNF_NODE_PATH], files[MYCNF_ENCRYPTION_PATH]

    def flags_on(name: str) -> set[str]:
        variant = next(v for v in at_rest.VARIANTS if v.name == name)
        text = servers.config_text(variant)
        if not variant.encrypted:
            assert "file_key_management" not in text
            return set()
        assert files[MYCNF_ENCRYPTION_PATH] in text  # the program's file, whole
        return {f for f in ENCRYPTION_FLAGS_ON if f"{f} = OFF" not in text}

    assert flags_on("plain") == set()
    assert flags_on("tables") == set()
    assert flags_on("redo") == {"innodb_encrypt_log"}
    assert flags_on("binlog") == {"innodb_encrypt_log", "encrypt_binlog"}
    assert flags_on("temp") == {"innodb_encrypt_log", "encrypt_binlog", *at_rest.TEMP_FLAGS}
    assert flags_on("default") == set(ENCRYPTION_FLAGS_ON)
    assert flags_on("kernel-logs") == set(ENCRYPTION_FLAGS_ON) - {"innodb_encrypt_log", "encrypt_binlog"}
    # The variant is what the program renders for logEncryption kernel: the same flags, read by the server.
    kernel = parse_config({**raw, "logEncryption": "kernel"}, stack="bench", region="us-east-1")
    kernel_cnf = render_mycnf(kernel.nodes[0], kernel, node_address="10.0.0.5", member_addresses=["10.0.0.5"],
                              key_arn=None)[MYCNF_ENCRYPTION_PATH]
    variant = servers.config_text(next(v for v in at_rest.VARIANTS if v.name == "kernel-logs"))
    for flag in ENCRYPTION_FLAGS_ON:
        assert _last(variant, flag) == _last(kernel_cnf, flag), flag
    default = servers.config_text(next(v for v in at_rest.VARIANTS if v.name == "default"))
    assert "AES_CBC" not in default
    assert "file_key_management_encryption_algorithm = AES_CBC" in servers.config_text(at_rest.VARIANTS[-1])


def _last(text: str, option: str) -> str | None:
    """The value a server takes for ``option``: its last ``option = value`` line."""
    values = [line.split("=", 1)[1].strip() for line in text.splitlines()
              if line.split("=", 1)[0].strip() == option and "=" in line]
    return values[-1] if values else None
