#!/usr/bin/env bash
# check-host: is this machine one the Makefile can set up? Every problem found is printed, then it exits 1.
#
#   tools/check-host.sh python    what the Python environment needs: a Debian or Ubuntu host with apt,
#                                 python3 >= 3.11 and its venv module (installed with apt when missing
#                                 and we are root; `make test-unit` and `make lint` need no more)
#   tools/check-host.sh testbed   what `make demo` and `make test` need besides: root, free disk for the
#                                 cache, no unencrypted swap, and the testbed's address ranges not in use
#
# Settings it reads as the testbed does: MARIADB_KMS_CACHE (default ~/.cache/mariadb-kms),
# MARIADB_KMS_TESTBED_PREFIX/_SUBNET (mk, 10.231.0.0/24), MARIADB_KMS_DEMO_PREFIX/_SUBNET (mkdemo,
# 10.231.5.0/24). CHECK_HOST_OS_RELEASE points at another os-release file (tests).
set -uo pipefail

PROG=check-host
MIN_PYTHON=3.11
MIN_FREE_MIB=${CHECK_HOST_MIN_FREE_MIB:-2048}   # the cache holds about 1.1 GB (rootfs, package repository, venv)
OS_RELEASE=${CHECK_HOST_OS_RELEASE:-/etc/os-release}
problems=()
needs_venv_module=0

problem() { problems+=("$*"); }

usage() {
    cat <<EOF
usage: $PROG python|testbed
  python   Debian/Ubuntu with apt, python3 >= $MIN_PYTHON with venv (installs python3-venv as root)
  testbed  all of the above, plus root, $MIN_FREE_MIB MiB free for the cache, no unencrypted swap,
           testbed subnets free
exit status: 0 fit, 1 something is missing (every problem is listed), 2 usage
EOF
}

check_os() {
    local id="" like="" pretty=""
    if [ -r "$OS_RELEASE" ]; then
        id=$(. "$OS_RELEASE" && echo "${ID:-}")
        like=$(. "$OS_RELEASE" && echo "${ID_LIKE:-}")
        pretty=$(. "$OS_RELEASE" && echo "${PRETTY_NAME:-${ID:-}}")
    fi
    case " $id $like " in
        *" debian "*|*" ubuntu "*) ;;
        *) problem "this needs a Debian or Ubuntu host (found: ${pretty:-unknown, no ID in $OS_RELEASE}): host packages come from apt and the testbed's hosts from debootstrap" ;;
    esac
    command -v apt-get >/dev/null 2>&1 || problem "apt-get not found: host packages are installed with apt"
}

check_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        problem "python3 not found: install it (apt-get install python3 python3-venv); $MIN_PYTHON or newer is needed"
        return
    fi
    local version
    version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if ! python3 -c "import sys; sys.exit(0 if sys.version_info[:2] >= (${MIN_PYTHON/./, }) else 1)"; then
        problem "python3 is $version, $MIN_PYTHON or newer is needed (Debian 12 and Ubuntu 24.04 ship one)"
        return
    fi
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            needs_venv_module=1   # installed once every check passed
        else
            problem "python3 has no venv module: run 'sudo apt-get install python3-venv' (or 'sudo make deps')"
        fi
    fi
}

# The one thing this script installs, and only on a host that passed every check.
install_venv_module() {
    echo "==> installing python3-venv (python3 has no venv module yet)"
    bash "$(dirname "$0")/../rehearsal/install-host-deps.sh" python3-venv \
        || problem "apt-get could not install python3-venv"
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || problem "python3 still has no venv module after installing python3-venv"
}

check_root() {
    [ "$(id -u)" -eq 0 ] || problem "must run as root (sudo make ...): the testbed makes network namespaces, a bridge and systemd-nspawn hosts, and installs packages"
}

check_disk() {
    local cache=${MARIADB_KMS_CACHE:-$HOME/.cache/mariadb-kms} dir free
    dir=$cache
    while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
    free=$(df -Pm "$dir" | awk 'NR == 2 {print $4}')
    if [ -n "$free" ] && [ "$free" -lt "$MIN_FREE_MIB" ]; then
        problem "only $free MiB free under $dir: the cache ($cache) needs about $MIN_FREE_MIB MiB (CACHE=... moves it)"
    fi
}

# The test hosts share this kernel, so the verification they run sees its swap: unencrypted swap is a gap.
check_swap() {
    local swaps=${CHECK_HOST_SWAPS:-/proc/swaps} name
    [ -r "$swaps" ] || return 0
    while read -r name _; do
        case "$name" in
            Filename|"") ;;
            /dev/dm-*|/dev/mapper/*|/dev/zram*) ;;
            *) problem "swap $name is on and not encrypted: the hosts' verification reports it as a gap (swapoff -a for the run, or encrypted swap)" ;;
        esac
    done <"$swaps"
}

# Every IPv4 address or route on this host that overlaps a testbed subnet, except the testbed's own bridge
# (a demo left running owns its subnet, and `make demo-down` or a second `make demo` must still work).
check_subnets() {
    command -v ip >/dev/null 2>&1 || { problem "ip not found (package iproute2): cannot check the testbed's addresses"; return; }
    command -v python3 >/dev/null 2>&1 || return
    local out
    out=$(
        { ip -o -4 addr show; echo "--routes--"; ip -o -4 route show table all; } | python3 "$(dirname "$0")/subnet_overlap.py" \
            "${MARIADB_KMS_TESTBED_SUBNET:-10.231.0.0/24}=${MARIADB_KMS_TESTBED_PREFIX:-mk}br0=MARIADB_KMS_TESTBED_SUBNET" \
            "${MARIADB_KMS_DEMO_SUBNET:-10.231.5.0/24}=${MARIADB_KMS_DEMO_PREFIX:-mkdemo}br0=MARIADB_KMS_DEMO_SUBNET"
    ) || true
    while IFS= read -r line; do
        [ -n "$line" ] && problem "$line"
    done <<<"$out"
}

case "${1:-}" in
    python) check_os; check_python ;;
    testbed) check_os; check_root; check_python; check_disk; check_swap; check_subnets ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

if [ "${#problems[@]}" -eq 0 ] && [ "$needs_venv_module" -eq 1 ]; then
    install_venv_module
fi

if [ "${#problems[@]}" -gt 0 ]; then
    echo "$PROG: this host cannot run it yet:" >&2
    for p in "${problems[@]}"; do echo "  - $p" >&2; done
    exit 1
fi
exit 0
