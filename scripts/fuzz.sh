#!/usr/bin/env bash
# Run the proto fuzz targets (proto/fuzz, cargo-fuzz + libFuzzer) one after another, each for
# SECONDS (default 1800) with libFuzzer's allocation limit, so that input which makes the
# parser allocate without bound fails like a crash. Installs cargo-fuzz when missing.
#
#   scripts/fuzz.sh                     # every target, 30 minutes each
#   scripts/fuzz.sh 60 sasl jid         # two targets, one minute each
#   FUZZ_JOBS=2 scripts/fuzz.sh 600     # two targets at a time
#
# Findings land in proto/fuzz/artifacts/TARGET/; the summary line per target gives its runs.
set -euo pipefail
cd "$(dirname "$0")/../proto/fuzz"

seconds="${1:-1800}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(stream_reader c2s_negotiation s2s_inbound sasl jid)
fi
jobs="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    cargo fuzz build -O "${t}"
done

run() {
    local t="$1" corpus="corpus/$1"
    mkdir -p "${corpus}"
    local seeds=()
    [ -d "seeds/${t}" ] && seeds=("seeds/${t}")
    cargo fuzz run -O "${t}" "${corpus}" "${seeds[@]}" -- \
        -max_total_time="${seconds}" -malloc_limit_mb=512 -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 >"fuzz-${t}.log" 2>&1
    local rc=$?
    echo "${t}: exit ${rc}, $(grep -E '^stat::number_of_executed_units' "fuzz-${t}.log" | awk '{print $2}') runs in ${seconds} s"
    return "${rc}"
}

failed=0
running=0
for t in "${targets[@]}"; do
    run "${t}" &
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while ((running > 0)); do
    wait -n || failed=1
    running=$((running - 1))
done
exit "${failed}"
