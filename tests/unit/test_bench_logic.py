"""The pure parts of the benchmarks: variant configs derived from a node's rendered files, the encryption
progress read from InnoDB's view, the probe scripts; each against known answers and a case that must fail."""

from __future__ import annotations

import pytest

from bench import encrypt_existing as ee
from bench import in_transit
from bench.single_node import Variant, provider_options, variant_config

NODE_CNF = """[mariadb]
wsrep_on = ON
wsrep_provider_options = "gmcast.listen_addr=tcp://10.0.0.5:4567; gmcast.segment=1; gcache.dir=/run/galera; \
gcache.size=64M; gcache.recover=no"
datadir = /var/lib/mysql
"""
ENC_CNF = "[mariadb]\nplugin_load_add = file_key_management\ninnodb_encrypt_tables = FORCE\n"


def test_provider_options_are_the_rendered_ones() -> None:
    assert provider_options(NODE_CNF) == {
        "gmcast.listen_addr": "tcp://10.0.0.5:4567", "gmcast.segment": "1", "gcache.dir": "/run/galera",
        "gcache.size": "64M", "gcache.recover": "no",
    }


def test_provider_options_take_the_last_line_as_the_server_does() -> None:
    text = NODE_CNF + 'wsrep_provider_options = "gcache.size=1G"\n'
    assert provider_options(text) == {"gcache.size": "1G"}


def test_provider_options_refuse_a_config_without_them() -> None:
    with pytest.raises(ValueError, match="no wsrep_provider_options"):
        provider_options("[mariadb]\nwsrep_on = ON\n")


def test_plain_variant_leaves_out_the_encryption_file_and_keeps_the_node_file() -> None:
    text = variant_config(NODE_CNF, ENC_CNF, Variant("plain", encrypted=False), index=0, buffer_pool="64M")
    assert text.startswith(NODE_CNF)
    assert "file_key_management" not in text
    encrypted = variant_config(NODE_CNF, ENC_CNF, Variant("default", encrypted=True), index=0, buffer_pool="64M")
    assert "plugin_load_add = file_key_management" in encrypted  # control: the same call does include it


def test_variant_moves_only_what_sharing_a_host_needs() -> None:
    text = variant_config(NODE_CNF, ENC_CNF, Variant("cbc", True, {"innodb_encrypt_log": "OFF"}), index=2,
                          buffer_pool="32M")
    options = provider_options(text)
    assert options["gmcast.listen_addr"] == "tcp://127.0.0.1:4620"
    assert options["ist.recv_addr"] == "127.0.0.1:4621"
    assert options["gcache.dir"].endswith("/cbc")
    assert (options["gcache.size"], options["gcache.recover"], options["gmcast.segment"]) == ("64M", "no", "1")
    tail = text.split("# variant cbc", 1)[1]
    assert "innodb_encrypt_log = OFF" in tail and "port = 3312" in tail and "innodb_buffer_pool_size = 32M" in tail
    assert tail.index("innodb_encrypt_log") < tail.index("datadir")  # the variant's change comes before the host's


def _space(name: str, min_kv: int, page: int | None = None, rotating: bool = False) -> ee.Space:
    return ee.Space(name, 1, min_kv, page, 100 if page is not None else None, rotating)


def test_parse_spaces_reads_mariadb_batch_output_with_nulls() -> None:
    text = "existing/t0\t1\t1\tNULL\tNULL\t0\nexisting/t1\t1\t0\t37\t400\t1\n"
    assert ee.parse_spaces(text) == [ee.Space("existing/t0", 1, 1, None, None, False),
                                     ee.Space("existing/t1", 1, 0, 37, 400, True)]


def test_progress_counts_done_spaces_whole_and_rotating_ones_to_their_page() -> None:
    sizes = {"existing/t0": 1_000_000, "existing/t1": 1_000_000}
    spaces = [_space("existing/t0", 1), _space("existing/t1", 0, page=10, rotating=True)]
    assert ee.progress(spaces, sizes, encrypt=True) == (1_000_000 + 10 * ee.PAGE, False)


def test_progress_encrypting_is_complete_only_when_every_space_is_encrypted_and_settled() -> None:
    sizes = {"existing/t0": 5, "existing/t1": 7}
    assert ee.progress([_space("existing/t0", 1), _space("existing/t1", 1)], sizes, encrypt=True) == (12, True)
    # Controls: one space missing from the view, one still flushing, one not yet at key version 1.
    assert ee.progress([_space("existing/t0", 1)], sizes, encrypt=True)[1] is False
    assert ee.progress([_space("existing/t0", 1), _space("existing/t1", 1, rotating=True)], sizes,
                       encrypt=True)[1] is False
    assert ee.progress([_space("existing/t0", 1), _space("existing/t1", 0)], sizes, encrypt=True)[1] is False


def test_progress_decrypting_counts_spaces_without_crypt_data_as_plain() -> None:
    sizes = {"existing/t0": 5, "existing/t1": 7}
    assert ee.progress([_space("existing/t0", 0)], sizes, encrypt=False) == (12, True)
    assert ee.progress([_space("existing/t0", 1)], sizes, encrypt=False) == (7, False)


@pytest.mark.parametrize("rows", [1, 2, 3, 1000, 32_000, 32_768])
def test_doubling_limits_reach_exactly_the_row_count(rows: int) -> None:
    limits = ee.doubling_limits(rows)
    assert 1 + sum(limits) == rows
    count = 1
    for n in limits:  # a pass can copy at most the rows already there
        assert 0 < n <= count
        count += n


def test_dd_rate_reads_gnu_dd_and_refuses_other_output() -> None:
    out = "1024+0 records in\n1024+0 records out\n1073741824 bytes (1.1 GB, 1.0 GiB) copied, 4.0 s, 268 MB/s\n"
    assert ee.dd_rate(out) == pytest.approx(1073741824 / 4.0 / 1e6)
    with pytest.raises(ValueError, match="no dd summary"):
        ee.dd_rate("dd: failed to open 'x': No space left on device\n")


def test_probe_script_is_one_autocommit_insert_per_transaction() -> None:
    script = in_transit.probe_script(in_transit.Probe("large", 3, 65536))
    lines = script.splitlines()
    assert len(lines) == 3 and all(line == lines[0] for line in lines)
    assert "REPEAT('x', 65536)" in lines[0] and "bench.large" in lines[0]
    assert "BEGIN" not in script.upper() and "COMMIT" not in script.upper()


def test_rounds_alternate_the_order() -> None:
    assert [in_transit.alternate(r) for r in range(4)] == [("plain", "tls"), ("tls", "plain")] * 2


# --tls-versions of bench/in_transit.py


def _client_tls_cnf(clients: bool) -> str:
    """The [mariadb] group as the program renders it for client TLS on or off."""
    from components.config.model import TlsConfig
    from components.mycnf import _section, tls_lines

    return _section("mariadb", ["wsrep_on = ON", *tls_lines(TlsConfig(clients=clients))])


def test_tls_versions_are_read_in_order_and_checked() -> None:
    assert in_transit.parse_tls_versions("1.2,1.3") == ("1.2", "1.3")
    assert in_transit.parse_tls_versions(" 1.3 ") == ("1.3",)
    assert in_transit.parse_tls_versions("") == ()
    for wrong in ("1.1", "1.2,1.2", "TLSv1.3"):
        with pytest.raises(ValueError, match=r"each of 1\.2, 1\.3 at most once"):
            in_transit.parse_tls_versions(wrong)


def test_tls_variants_replace_the_deployed_tls_variant_by_one_per_version() -> None:
    assert in_transit.tls_variants(()) == ("plain", "tls")
    assert in_transit.tls_variants(("1.2", "1.3")) == ("plain", "tls-v1.2", "tls-v1.3")


def _protocol_bounds(version: str | None) -> dict[str, str]:
    import configparser

    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string("[top]\n" + in_transit.openssl_conf(version))
    assert parsed["top"]["openssl_conf"] == "openssl_init"
    assert parsed["openssl_init"]["ssl_conf"] == "ssl_sect"
    assert parsed["ssl_sect"]["system_default"] == "system_default_sect"
    section = parsed["system_default_sect"]
    return {k: section[k] for k in ("minprotocol", "maxprotocol") if k in section}


def test_openssl_conf_allows_exactly_one_version_or_both_on_the_way_between_them() -> None:
    assert _protocol_bounds("1.2") == {"minprotocol": "TLSv1.2", "maxprotocol": "TLSv1.2"}
    assert _protocol_bounds("1.3") == {"minprotocol": "TLSv1.3", "maxprotocol": "TLSv1.3"}
    assert _protocol_bounds(None) == {"minprotocol": "TLSv1.2", "maxprotocol": "TLSv1.3"}
    with pytest.raises(ValueError, match="expected one of"):
        in_transit.openssl_conf("1.1")


def test_client_tls_version_is_pinned_in_the_rendered_file_and_nothing_else_changes() -> None:
    rendered = _client_tls_cnf(clients=True)
    assert "tls_version = TLSv1.2,TLSv1.3" in rendered
    pinned = in_transit.pin_client_tls_version(rendered, "1.3")
    assert "tls_version = TLSv1.3\n" in pinned
    assert pinned.replace("tls_version = TLSv1.3\n", "") == rendered.replace("tls_version = TLSv1.2,TLSv1.3\n", "")


def test_client_tls_version_refuses_a_file_without_client_tls_or_with_two_lines() -> None:
    with pytest.raises(ValueError, match="exactly one tls_version line"):
        in_transit.pin_client_tls_version(_client_tls_cnf(clients=False), "1.2")
    twice = _client_tls_cnf(clients=True) + "tls_version = TLSv1.3\n"
    with pytest.raises(ValueError, match="exactly one tls_version line"):
        in_transit.pin_client_tls_version(twice, "1.2")


def test_s_client_brief_output_gives_protocol_and_cipher_and_a_failed_handshake_nothing() -> None:
    ok = ("Connecting to 10.231.28.14\nCONNECTION ESTABLISHED\nProtocol version: TLSv1.2\n"
          "Ciphersuite: ECDHE-ECDSA-AES256-GCM-SHA384\nPeer certificate: CN = t1\nVerification: OK\nDONE\n")
    assert in_transit.parse_s_client(ok) == {"protocol": "TLSv1.2", "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384"}
    failed = ("Connecting to 10.231.28.14\n40D7:error:0A00042E:SSL routines:ssl3_read_bytes:tlsv1 alert protocol "
              "version:../ssl/record/rec_layer_s3.c:1586:SSL alert number 70\n")
    assert in_transit.parse_s_client(failed) == {}


PERF_DSO_REPORT = """# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 8K of event 'cpu-clock'
# Event count (approx.): 16032064128
#
# Overhead  Shared Object
# ........  ......................
#
    41.20%  [kernel.kallsyms]
    22.75%  mariadbd
    12.02%  libgalera_smm.so
     6.50%  libcrypto.so.3
     1.05%  libssl.so.3


#
# (Tip: Search options using a keyword: perf report -h <keyword>)
#
"""


def test_perf_report_by_object_keeps_the_order_and_the_percentages() -> None:
    from bench.perf_profile import parse_report, per_object

    samples, rows = parse_report(PERF_DSO_REPORT.replace("8K", "8032"))
    assert samples == 8032
    assert rows == [(41.2, "[kernel.kallsyms]"), (22.75, "mariadbd"), (12.02, "libgalera_smm.so"),
                    (6.5, "libcrypto.so.3"), (1.05, "libssl.so.3")]
    assert per_object(rows, 2.0)["libcrypto.so.3"] == pytest.approx(0.13)
    assert parse_report(PERF_DSO_REPORT)[0] == 8000  # perf's own rounding of large counts
    # The header's own percent-free lines and the tip are not rows; a report of nothing has no rows.
    assert parse_report("# Samples: 0 of event 'cpu-clock'\n#\n") == (0, [])


def test_perf_report_by_symbol_folds_the_columns_to_one_name() -> None:
    from bench.perf_profile import parse_report

    text = "# Samples: 120 of event 'cpu-clock'\n     3.10%  libcrypto.so.3     [.] aesni_gcm_encrypt\n" \
           "     2.00%  [kernel.kallsyms]  [k] copy_user_enhanced_fast_string\n"
    assert parse_report(text) == (120, [(3.1, "libcrypto.so.3 [.] aesni_gcm_encrypt"),
                                       (2.0, "[kernel.kallsyms] [k] copy_user_enhanced_fast_string")])


def test_perf_records_the_software_clock_system_wide_and_reports_exactly_the_given_processes() -> None:
    from pathlib import Path

    from bench.perf_profile import record_command, report_command

    argv = record_command(20, Path("/tmp/x.data"))
    assert argv[:2] == ["perf", "record"]
    assert argv[argv.index("-e") + 1] == "cpu-clock"  # hardware counters are not there
    assert "-a" in argv and "-p" not in argv  # per-process events tax every context switch
    assert argv[-3:] == ["--", "sleep", "20"]
    shown = report_command(Path("/tmp/x.data"), "dso,sym")
    assert shown[shown.index("--sort") + 1] == "pid,dso,sym"
    assert shown[shown.index("--percent-limit") + 1] == "0"  # every row: the wanted ones are picked out after


def test_perf_rows_of_the_wanted_threads_are_summed_and_made_shares_of_their_own_samples() -> None:
    from bench.perf_profile import of_threads, parse_report

    text = ("# Samples: 400 of event 'cpu-clock'\n"
            "    40.00%        0:swapper          [kernel.kallsyms]\n"
            "    20.00%    101:mariadbd           [kernel.kallsyms]\n"
            "    10.00%    202:mariadbd           [kernel.kallsyms]\n"
            "    15.00%    101:mariadbd           libcrypto.so.3\n"
            "    10.00%   1010:mariadbd           libcrypto.so.3\n"
            "     5.00%    202:mariadbd           mariadbd\n")
    _, rows = parse_report(text)
    # Threads 101 and 202 hold 50% of all samples: the kernel's 30 of them is 60% of theirs; 1010 is not wanted,
    # though its name is the same, and an id that is a prefix of another does not match it.
    assert of_threads(rows, {101, 202, 10}, 0.0) == [(60.0, "[kernel.kallsyms]"), (30.0, "libcrypto.so.3"),
                                                      (10.0, "mariadbd")]
    assert of_threads(rows, {101, 202}, 15.0) == [(60.0, "[kernel.kallsyms]"), (30.0, "libcrypto.so.3")]
    assert of_threads(rows, {999}, 0.0) == []  # control: nobody else's samples are taken


def test_threads_of_a_process_are_its_tasks_and_a_gone_process_has_none() -> None:
    import os

    from bench.perf_profile import threads_of

    assert os.getpid() in threads_of([os.getpid()])
    assert threads_of([2**22 + 7]) == set()  # above pid_max: no such process


def test_perf_stat_counts_are_read_per_call_and_what_perf_could_not_count_is_left_out() -> None:
    from bench.perf_profile import count_command, parse_counts

    argv = count_command([5, 6], 10, ("sendmsg", "futex"))
    assert argv[argv.index("-e") + 1] == "raw_syscalls:sys_enter,syscalls:sys_enter_sendmsg,syscalls:sys_enter_futex"
    assert argv[argv.index("-p") + 1] == "5,6"
    text = ("145,,raw_syscalls:sys_enter,882295,100.00,,\n0,,syscalls:sys_enter_sendmsg,882295,100.00,,\n"
            "<not counted>,,syscalls:sys_enter_futex,0,0.00,,\n\n")
    assert parse_counts(text) == {"all": 145, "sendmsg": 0}
    assert parse_counts("") == {}


def test_plots_draw_side_by_side_runs_and_program_eval_and_skip_what_they_cannot() -> None:
    from bench.plots import plottable

    pair = {"tps_ratio": {}, "cpu_ratio": {}}
    assert plottable({"summary": [pair, pair]})
    assert plottable({"trees": {}})
    assert not plottable({"summary": [pair, {"speed_ratio": {}}]})  # the SST part
    assert not plottable({"summary": [], "profiles": {}})  # a run that only profiled
    assert not plottable({"runs": []})  # encrypting existing data


def test_share_of_threads_is_their_part_of_all_samples() -> None:
    from bench.perf_profile import parse_report, share_of_threads

    _, rows = parse_report("    40.00%   0:swapper  [kernel.kallsyms]\n    20.00%   101:mariadbd  mariadbd\n"
                           "     5.00%   1010:mariadbd  mariadbd\n")
    assert share_of_threads(rows, {101}) == pytest.approx(20.0)
    assert share_of_threads(rows, {10}) == 0.0  # an id that is a prefix of another is not it
