#!/usr/bin/env bash
# Coverage-guided fuzzing of every input weir parses (fuzz/fuzz_targets/, libFuzzer through
# cargo-fuzz on the nightly toolchain; docs/fuzzing.md).
#
#   scripts/fuzz.sh                    # the campaign: every target for 300 s
#   scripts/fuzz.sh --time 3600 descriptor_chain
#   scripts/fuzz.sh --runs 1000000 sim_scenario   # until N inputs have run (or --time ends)
#   scripts/fuzz.sh --smoke            # CI: every target for a few seconds
#
# Each target starts from its committed seed corpus (fuzz/corpus/TARGET) and grows a working
# corpus in target/fuzz-corpus/TARGET (never the committed one). A crash stops the target,
# leaves its input in fuzz/artifacts/TARGET/, and fails the script; turn it into a regression
# test in the crate it broke before fixing it. The last line per target says how many inputs
# ran and the coverage reached.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=300
runs=-1
smoke=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) secs=${WEIR_FUZZ_SMOKE_SECS:-5}; smoke=1; shift ;;
    --time) secs="$2"; shift 2 ;;
    --runs) runs="$2"; secs=86400; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if [ $smoke = 1 ]; then
    # cargo-fuzz needs nightly's sanitizer flags; a machine without it skips the smoke, loudly.
    echo "SKIPPED fuzz smoke: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 0
  fi
  echo "fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

cargo +nightly fuzz build --fuzz-dir fuzz --release 2>&1 | tail -n 3
summary=()
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="target/fuzz-$t.log"
  echo "== $t: ${secs}s"
  if ! cargo +nightly fuzz run --fuzz-dir fuzz --release "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -runs="$runs" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz.sh: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1 || echo "cov: ?")
  summary+=("$(printf '%-18s %12s executions  %s' "$t" "$done_runs" "$cov")")
done
printf '%s\n' "${summary[@]}"
