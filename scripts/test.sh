#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds the Linux test guest image (cached
# while its recipe is unchanged), checks formatting and lints, and runs every test.
# WEIR_REQUIRE_KVM=1 turns a machine test that cannot run (no QEMU, no /dev/kvm, no image) into
# a failure instead of a skip; CI sets it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --bin weir
./target/release/weir image build
# The lab VM's L1 kernel (Debian's cloud kernel with kvm-amd), fetched once into the cache.
./target/release/weir lab kernel
./target/release/weir host

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The probe guest is its own crate (no_std, own linker script): format, lint and build it too.
(cd guest-images/probe && cargo fmt -- --check && cargo clippy --release --quiet -- -D warnings \
    && cargo build --release --quiet)
cargo test --workspace --release -- --nocapture
# Every fuzz target for a few seconds from its seed corpus (the campaign runs by hand:
# docs/fuzzing.md).
scripts/fuzz.sh --smoke
