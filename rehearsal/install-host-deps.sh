#!/usr/bin/env bash
# Installs the Debian packages the machine running the testbed needs, from nothing.
# Idempotent and quiet when everything is present; `apt-get update` only runs when a
# package has no install candidate or an install from stale lists fails.
#
#   install-host-deps.sh              every package below
#   install-host-deps.sh PKG...       only these (the Makefile: python3-venv before the venv exists,
#                                     graphviz for `make docs`)
set -euo pipefail

# debootstrap builds the host rootfs; systemd-container boots it (systemd-nspawn);
# iproute2 makes the bridge, veths and netns; util-linux has nsenter and flock;
# apt-utils indexes the local package repository (apt-ftparchive);
# cloud-init gives `cloud-init schema` for rendered user-data; openssh-client for SSH checks;
# tcpdump to look at testbed traffic when debugging; systemd gives systemd-analyze
# (unit checks); nftables and e2fsprogs are what the first-boot scripts' tests run;
# python3-venv makes the Python environment (Debian's python3 has no venv module without it);
# graphviz draws the diagrams in docs/ (`make docs`).
PACKAGES=(
  debootstrap
  debian-archive-keyring
  systemd-container
  iproute2
  util-linux
  apt-utils
  cloud-init
  openssh-client
  tcpdump
  python3
  python3-venv
  graphviz
  systemd
  nftables
  e2fsprogs
)

if [ "$#" -gt 0 ]; then
  PACKAGES=("$@")
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-host-deps: must run as root (apt-get install)" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
  if [ "${status:0:2}" != "ii" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "==> installing host packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Other users of this machine may be running apt: wait for the lock instead of failing.
APT=(apt-get -q -y -o DPkg::Lock::Timeout=300 --no-install-recommends)

needs_update=0
for pkg in "${missing[@]}"; do
  candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
    needs_update=1
    break
  fi
done

if [ "$needs_update" -eq 1 ]; then
  "${APT[@]}" update >/dev/null
fi

# Lists that are present but stale give 404s: refresh them once and retry.
if ! "${APT[@]}" install "${missing[@]}" >/dev/null; then
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install "${missing[@]}" >/dev/null
fi
echo "==> host packages installed"
