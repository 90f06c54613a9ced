#!/usr/bin/env bash
# The main job, from a fresh machine: installs what is missing, builds weir and the Linux test
# guest image, boots the guest, runs the quick fio job in it and the same job with host fio on
# the same file, and prints IOPS, latency and the guest/host ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --bin weir
./target/release/weir image build
exec ./target/release/weir guest --job scenarios/fio/quick.fio --host-baseline "$@"
