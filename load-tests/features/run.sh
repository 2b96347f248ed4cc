#!/usr/bin/env bash
# What a feature on the message path costs, side by side in one run: one build, several
# variants of the node's configuration (and of the clients), rounds alternating the variants
# so that drift on the machine hits them all. The node is pinned to CPU 0, the generator to
# CPU 1; plain TCP, 200 users.
#
# Per variant and round:
#   - cost: `chat --messages M --interval-ms I` → the server's CPU per delivered message
#     (utime + stime of the node(s) over the exchange, 10 ms ticks);
#   - capacity: stepped chat (`--rates`) → the highest rate sustained with p99 < 100 ms and
#     nothing lost and, with the archive on, nothing left unarchived during the step (the
#     generator reads `switchboard_mam_not_archived_total` per step: its queue overflowed);
#     "not archived" in the summary counts the whole run, failed steps included.
#
#   load-tests/features/run.sh [ROUNDS]
# Variants (VARIANTS, space-separated, default "base mam sm"):
#   base  [modules.mam] and [modules.stream_management] off
#   mam   the message archive on (the default configuration's embedded archive)
#   sm    stream management on and every client enabling it (`chat --sm`), archive off
#   all   the default configuration and `chat --sm`
#   flaky as `sm`, and FLAKY_PERCENT % of the users (10) drop their connection about every
#         FLAKY_EVERY_SECS (3) and resume (`chat --flaky-percent`); against `sm` it gives the
#         server's CPU per resumption, and its lost/duplicated counts must be 0
# Env: BIN (default target/release/switchboard), LG (target/release/switchboard-loadgen),
# BUILDS (optional: "LABEL=PATH ..." node binaries to compare, each variant of each build in
# every round, e.g. BUILDS="before=/tmp/a/switchboard after=target/release/switchboard"),
# USERS (200), MESSAGES (200), INTERVAL_MS (20), CHAT_RATES, WORK (/tmp/sb-features), NODES (1; 3: a
# three-node cluster, every node on CPU 0, users spread over them, the nodes' CPU summed),
# STEP_SECS (5: each stepped-chat step; 15 at the carrier shape, USERS=10000), PORT
# (5389: node i's c2s on PORT+10i, /metrics one below, NodeLink on PORT+100+i; the script
# stops if one is in use). Loopback only; every step bounded in time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${1:-2}
BIN=${BIN:-$ROOT/target/release/switchboard}
LG=${LG:-$ROOT/target/release/switchboard-loadgen}
VARIANTS=${VARIANTS:-base mam sm}
MESSAGES=${MESSAGES:-200}
INTERVAL_MS=${INTERVAL_MS:-20}
CHAT_RATES=${CHAT_RATES:-16000,32000,48000,56000,64000,72000,80000,88000,96000}
WORK=${WORK:-/tmp/sb-features}
USERS=${USERS:-200}
FLAKY_PERCENT=${FLAKY_PERCENT:-10}
FLAKY_EVERY_SECS=${FLAKY_EVERY_SECS:-3}
NODES=${NODES:-1}
PORT=${PORT:-5389}
STEP_SECS=${STEP_SECS:-5}
STARTED_PIDS=()
log() { echo "[features] $*" >&2; }
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"
ulimit -n "$(ulimit -Hn)"

config_of() {  # the [modules] of a variant
  case $1 in
    base) printf '[modules.mam]\nenabled = false\n[modules.stream_management]\nenabled = false\n' ;;
    mam) printf '[modules.stream_management]\nenabled = false\n' ;;
    sm|flaky) printf '[modules.mam]\nenabled = false\n' ;;
    all) printf '' ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

client_flags() {
  case $1 in
    sm|all) echo "--sm" ;;
    flaky) echo "--sm --flaky-percent $FLAKY_PERCENT --flaky-every-secs $FLAKY_EVERY_SECS" ;;
    *) echo "" ;;
  esac
}

run_one() {  # run_one VARIANT ROUND [BUILD-LABEL]
  local v=$1 round=$2 label=${3:-} d="$WORK/${3:+$3-}$1-$2" flags i modules
  rm -rf "$d"; mkdir -p "$d"
  for i in $(seq 1 $USERS); do echo "user$i@localhost secret"; done > "$d/users.txt"
  modules=$(config_of "$v")
  start_loopback_nodes "$BIN" "$d" "$NODES" "$PORT" "features-benchmark-secret-0123456789" "$modules"
  local servers=$SERVERS pids=("${NODE_PIDS[@]}")
  flags=$(client_flags "$v")
  local before after
  before=$(cpu_ticks "${pids[@]}")
  # shellcheck disable=SC2086
  timeout 300 taskset -c 1 "$LG" $servers --domain localhost --tls none --mech scram-sha-256 \
    --json "$d/cost.json" -n $USERS chat $flags --messages "$MESSAGES" \
    --interval-ms "$INTERVAL_MS" --duration-secs 120 > "$d/cost.txt" 2> "$d/cost.err" \
    || echo "cost: loadgen exit $?"
  after=$(cpu_ticks "${pids[@]}")
  # Stepped chat has no stream management (the generator does not answer <r/> there). A
  # step whose messages the archive did not all keep (its queue overflowed) is not
  # sustained: the generator reads the nodes' switchboard_mam_not_archived_total per step.
  if [ -z "$flags" ]; then
    local archive_metrics=""
    for i in $(seq 1 "$NODES"); do
      archive_metrics+=" --archive-metrics http://127.0.0.1:$((PORT + 10 * i - 1))/metrics"
    done
    # shellcheck disable=SC2086
    timeout 400 taskset -c 1 "$LG" $servers --domain localhost --tls none \
      --mech scram-sha-256 --json "$d/rate.json" -n $USERS chat --rates "$CHAT_RATES" \
      --step-secs "$STEP_SECS" --drain-secs 5 --p99-limit-ms 100 --stop-after 2 \
      $archive_metrics > "$d/rate.txt" 2> "$d/rate.err" || echo "rate: loadgen exit $?"
  fi
  # What the archives kept and missed (0 without them), once their queues drained (≤ 120 s).
  : > "$d/metrics.txt"
  for i in $(seq 1 "$NODES"); do
    local m="$d/metrics-n$i.txt"
    for _ in $(seq 1 240); do
      curl -s "http://127.0.0.1:$((PORT + 10 * i - 1))/metrics" > "$m" || true
      awk '/^switchboard_mam_pending_bytes/ {p = $2} END {exit !(p + 0 == 0)}' "$m" && break
      sleep 0.5
    done
    cat "$m" >> "$d/metrics.txt"
  done
  local rss=0 p
  for p in "${pids[@]}"; do
    rss=$((rss + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  for p in "${pids[@]}"; do kill "$p"; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  local delivered us rate archived missed
  delivered=$(json_field "$d/cost.json" "d['chat']['received']")
  # The nodes' CPU over the exchange (clock ticks of 10 ms) per delivered message.
  us=$(python3 -c "import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) * 10000 / max(1, int(sys.argv[3])), 1))" "$before" "$after" "$delivered" 2>/dev/null || echo "?")
  rate=$(json_field "$d/rate.json" "d['chat']['stepped']['sustainable_rate']")
  archived=$(awk '/^switchboard_mam_archived_total/ {s += $2} END {print s + 0}' "$d/metrics.txt")
  missed=$(awk '/^switchboard_mam_not_archived_total/ {s += $2} END {print s + 0}' "$d/metrics.txt")
  local flaky=""
  if [ "$v" = flaky ]; then
    flaky=$(json_field "$d/cost.json" "'; sent %d, lost %d, duplicated %d; %d drops, %d resumed (%d on another node, %.0f/s), %d failed; resume p50 %.1f ms, p99 %.1f ms' % (d['chat']['sent'], d['chat']['lost'], d['chat']['duplicates'], d['chat']['flaky']['drops'], d['chat']['flaky']['resumed'], d['chat']['flaky']['resumed_elsewhere'], d['chat']['flaky']['resumed'] / max(d['chat']['elapsed_secs'], 1e-6), d['chat']['flaky']['failed'], d['chat']['flaky']['resume_ms']['p50'], d['chat']['flaky']['resume_ms']['p99'])")
  fi
  printf '%s%-6s %s node(s) round %s: server CPU %s µs/message (%s delivered, %s ticks), sustained %s msgs/s, peak RSS %s kB, archived %s, not archived %s%s\n' \
    "${label:+$label }" "$v" "$NODES" "$round" "$us" "$delivered" "$((after - before))" "$rate" "$rss" "$archived" "$missed" "$flaky" | tee -a "$WORK/summary.txt"
}

mkdir -p "$WORK"; : > "$WORK/summary.txt"
for round in $(seq 1 "$ROUNDS"); do
  for build in ${BUILDS:-=$BIN}; do
    BIN=${build#*=}
    for v in $VARIANTS; do
      run_one "$v" "$round" "${build%%=*}"
    done
  done
done
echo "summary: $WORK/summary.txt; per run: $WORK/VARIANT-ROUND/{cost,rate}.{txt,json,err}"
