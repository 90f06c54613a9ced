#!/usr/bin/env bash
# Installs what weir's main job and its tests need on Debian 12 (bookworm) or a close relative.
# Idempotent: packages already present are skipped; apt runs only when something is missing.
#
# QEMU trap (see docs/environment.md): a machine with qemu-utils 10.0 from bookworm-backports
# cannot take bookworm's qemu-system-x86 7.2, so qemu-system-x86 comes from backports too. The
# backports source is derived from the mirror the machine already uses.
set -euo pipefail

need=()
want() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || need+=("$1"); }

# Guest image build: Debian kernel source, kernel build deps, busybox, fio (its binary and libs
# go into the initramfs), cpio for the archive.
for p in linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev dwarves \
         busybox-static fio cpio xz-utils kmod; do
  want "$p"
done
# The lab VM (weir lab): modinfo orders the L1 kernel's modules, strip slims weir for its
# initramfs; the L1 kernel itself is fetched by `weir lab kernel` (apt-get download).
for p in kmod binutils dpkg; do want "$p"; done
# weir run's report is checked in headless Chromium.
want chromium
# weir top is driven in a real terminal (tmux); the broker's /metrics is scraped by a real
# Prometheus and linted by promtool (both in Debian's prometheus package).
want tmux
want prometheus
# The NBD backend is tested against a real nbdkit (nbdinfo, from libnbd-bin, to look at exports
# by hand).
for p in nbdkit libnbd-bin; do want "$p"; done
# The iSCSI backend loads libiscsi at run time (libiscsi7; libiscsi-bin has iscsi-ls and
# iscsi-inq to look at targets) and is tested against real tgt and istgt targets; the failover
# test kills connections with ss -K (iproute2).
for p in libiscsi7 libiscsi-bin tgt istgt iproute2; do want "$p"; done
# Tests start small helper servers and unprivileged children with python3 (lab/src/target.rs,
# tests/broker_cli.rs).
want python3
# The dark-storage report is tested on partition tables and filesystems made by the real tools.
for p in fdisk e2fsprogs xfsprogs btrfs-progs; do want "$p"; done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

backports_needed=0
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then backports_needed=1; fi
# `weir bench broker` and its test compare against qemu-storage-daemon (qemu-utils, kept at
# the same version as qemu-system-x86).
if ! command -v qemu-storage-daemon >/dev/null 2>&1; then backports_needed=1; fi

if [ ${#need[@]} -eq 0 ] && [ $backports_needed -eq 0 ]; then
  echo "install-deps: everything present"
  exit 0
fi

. /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"

if [ $backports_needed -eq 1 ]; then
  bp_list=/etc/apt/sources.list.d/weir-backports.sources
  if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Reuse the mirror the machine already trusts for the main suite.
    mirror=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      mirror=$(awk '/^URIs:/{u=$2} /^Suites:/{ for(i=2;i<=NF;i++) if ($i=="'"$codename"'") {print u; exit} }' \
        /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
      mirror=$(awk '$1=="deb" && $3=="'"$codename"'" {print $2; exit}' /etc/apt/sources.list)
    fi
    if [ -z "$mirror" ]; then
      echo "install-deps: cannot find the Debian mirror for $codename to enable ${codename}-backports;" >&2
      echo "  add ${codename}-backports to your apt sources, or install QEMU >= 7.2 yourself." >&2
      exit 1
    fi
    echo "install-deps: enabling ${codename}-backports from $mirror (for qemu-system-x86 10.0)"
    $SUDO tee "$bp_list" >/dev/null <<SRC
Types: deb
URIs: $mirror
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
fi

echo "install-deps: apt-get update"
$SUDO apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ $backports_needed -eq 1 ]; then
  echo "install-deps: installing qemu-system-x86 from ${codename}-backports"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -t "${codename}-backports" qemu-system-x86 qemu-system-data qemu-utils seabios ipxe-qemu
fi
qemu-system-x86_64 --version | head -n1
