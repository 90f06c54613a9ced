#!/usr/bin/env bash
# The chaos soak (tests/soak.rs): a QEMU fio guest with verify and three probe guests under
# `weir vm` through one broker, while a seeded script kills and restarts the broker, hands it
# over with --replace, fails and restores a path, changes policies and disconnects guests.
#
#   scripts/soak.sh                        # 10 minutes, seed 14
#   scripts/soak.sh --minutes 30 --seed 7
#
# CI runs the same test for 40 s. Needs KVM (the probes), QEMU and the guest image.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
seed=14
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
export WEIR_SOAK_SECONDS=$((minutes * 60)) WEIR_SOAK_SEED="$seed" WEIR_REQUIRE_KVM=1
exec cargo test --release --test soak -- --nocapture
