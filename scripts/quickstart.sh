#!/usr/bin/env bash
# The main job, from a fresh machine: installs what is missing, builds weir, the Linux test
# guest image and the probe guest, then runs scenarios/quick.toml — a fio victim in a Linux
# guest next to a noisy neighbour on one congested LUN, under fifo and under adaptive mClock —
# and prints the fairness table and the report's path. Extra arguments go to `weir run`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --bin weir
./target/release/weir image build
exec ./target/release/weir run scenarios/quick.toml "$@"
