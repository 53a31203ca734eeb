"""tools/check-host.sh and tools/subnet_overlap.py: each problem of a host is named, all at once; a fit host passes."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]

IP_OUTPUT = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever
5: mkbr0    inet 10.231.0.1/24 scope global mkbr0\\       valid_lft forever preferred_lft forever
9: docker0    inet 10.231.5.1/24 scope global docker0\\       valid_lft forever preferred_lft forever
--routes--
default via 192.0.2.1 dev eth0
10.231.0.0/24 dev mkbr0 proto kernel scope link src 10.231.0.1
10.231.5.0/24 dev docker0 proto kernel scope link src 10.231.5.1
10.200.0.0/16 via 192.0.2.1 dev eth0
local 10.231.0.1 dev mkbr0 table local proto kernel scope host src 10.231.0.1
"""


def overlap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("subnet_overlap", ROOT / "tools" / "subnet_overlap.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wanted(*args: str) -> list:
    import ipaddress

    out = []
    for arg in args:
        subnet, bridge, setting = arg.split("=")
        out.append((ipaddress.IPv4Network(subnet), bridge, setting))
    return out


def test_the_testbeds_own_bridge_may_hold_its_range() -> None:
    assert overlap().conflicts(IP_OUTPUT, wanted("10.231.0.0/24=mkbr0=MARIADB_KMS_TESTBED_SUBNET")) == []


def test_control_another_interface_in_the_range_is_named_once() -> None:
    lines = overlap().conflicts(IP_OUTPUT, wanted("10.231.5.0/24=mkdemobr0=MARIADB_KMS_DEMO_SUBNET"))
    assert lines == ["the testbed's address range 10.231.5.0/24 (MARIADB_KMS_DEMO_SUBNET) is already in use here: "
                     "address 10.231.5.1/24 on docker0; pick a free range with MARIADB_KMS_DEMO_SUBNET=<a free /24>"]


def test_control_a_route_alone_is_a_conflict() -> None:
    lines = overlap().conflicts(IP_OUTPUT, wanted("10.200.7.0/24=mkbr0=MARIADB_KMS_TESTBED_SUBNET"))
    assert len(lines) == 1 and "route 10.200.0.0/16 on eth0" in lines[0]


def check(mode: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "tools" / "check-host.sh"), mode], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), **env}, timeout=60)


def test_control_another_os_is_refused_by_name(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    proc = check("python", tmp_path, CHECK_HOST_OS_RELEASE=str(release))
    assert proc.returncode == 1
    assert "needs a Debian or Ubuntu host (found: Fedora Linux 40)" in proc.stderr


def test_a_debian_host_passes_the_os_check(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('ID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    proc = check("python", tmp_path, CHECK_HOST_OS_RELEASE=str(release))
    assert "Debian or Ubuntu" not in proc.stderr


def test_control_unencrypted_swap_is_named_and_encrypted_swap_is_not(tmp_path: Path) -> None:
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swapfile file 100 0 -2\n/dev/dm-1 partition 10 0 -3\n")
    proc = check("testbed", tmp_path, CHECK_HOST_SWAPS=str(swaps))
    assert "swap /swapfile is on and not encrypted" in proc.stderr
    assert "/dev/dm-1" not in proc.stderr


def test_usage_errors_are_not_host_problems(tmp_path: Path) -> None:
    proc = check("frobnicate", tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr
