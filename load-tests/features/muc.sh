#!/usr/bin/env bash
# Group chat throughput (issue 21): one XEP-0045 room of SIZES occupants each (100 and 1,000
# by default), groupchat messages at stepped aggregate rates, every occupant measuring each
# reflected message (`switchboard-loadgen muc`). The node (or, with NODES=3, every node of a
# three-node cluster on loopback) is pinned to CPU 0, the generator to CPU 1; plain TCP,
# SCRAM, users spread over the nodes.
#
#   load-tests/features/muc.sh [ROUNDS]
#
# Per size and round: fresh node(s) with `[modules.muc] max_occupants` above the size; SIZE
# accounts; `muc` with RATES_<SIZE> messages/s in steps of STEP_SECS (then at most
# DRAIN_SECS of drain), stopping after two steps in a row not sustained (p99 >= 100 ms, a
# loss or duplicate, an error, or under 90 % of the target offered). Prints per size the
# highest rate sustained (messages/s and deliveries/s) and the nodes' CPU per delivered
# message at each step.
# Env: BIN (target/release/switchboard), LG (target/release/switchboard-loadgen), SIZES
# ("100 1000"), RATES_100, RATES_1000 (or RATES for every size), SENDERS (10: the occupants
# that send, the others only receive), STEP_SECS (5), DRAIN_SECS (5), NODES (1 or 3), WORK (/tmp/sb-muc),
# PORT (5589: node i's c2s on PORT+10i, /metrics one below, NodeLink on PORT+100+i; the
# script stops if one is in use). Loopback only; every step bounded in time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${1:-1}
BIN=${BIN:-$ROOT/target/release/switchboard}
LG=${LG:-$ROOT/target/release/switchboard-loadgen}
SIZES=${SIZES:-100 1000}
RATES_100=${RATES_100:-${RATES:-50,100,200,300,400,500,600,700,800,1000,1300}}
RATES_1000=${RATES_1000:-${RATES:-5,10,15,20,25,30,40,50,70,100}}
SENDERS=${SENDERS:-10}
STEP_SECS=${STEP_SECS:-5}
DRAIN_SECS=${DRAIN_SECS:-5}
NODES=${NODES:-1}
WORK=${WORK:-/tmp/sb-muc}
PORT=${PORT:-5589}
STARTED_PIDS=()
KEEP_WORK=1
log() { echo "[muc.sh] $*" >&2; }
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"
ulimit -n "$(ulimit -Hn)"
trap stop_started EXIT
case $NODES in 1|3) ;; *) echo "NODES must be 1 or 3" >&2; exit 2 ;; esac

run_one() {  # run_one SIZE ROUND
  local size=$1 round=$2 d="$WORK/n$NODES-s$1-r$2" i rates pidlist
  rm -rf "$d"; mkdir -p "$d"
  for i in $(seq 1 "$size"); do echo "user$i@localhost secret"; done > "$d/users.txt"
  start_loopback_nodes "$BIN" "$d" "$NODES" "$PORT" "muc-benchmark-secret-0123456789abcdef" \
    "$(printf '[modules.muc]\nmax_occupants = %d' $((size + 100)))"
  rates=RATES_$size; rates=${!rates:-${RATES:-10,20,50}}
  pidlist=$(IFS=,; echo "${NODE_PIDS[*]}")
  # shellcheck disable=SC2086
  timeout 900 taskset -c 1 "$LG" $SERVERS --domain localhost --tls none --mech scram-sha-256 \
    -n "$size" --json "$d/muc.json" --report "$d/report" muc --server-pids "$pidlist" --senders "$SENDERS" \
    --rates "$rates" --step-secs "$STEP_SECS" --drain-secs "$DRAIN_SECS" --p99-limit-ms 100 \
    --stop-after 2 --setup-secs 120 > "$d/muc.txt" 2> "$d/muc.err" \
    || echo "size $size: loadgen exit $?"
  json_field "$d/muc.json" "'%d node(s), %4d occupants, round $round: sustained %s msgs/s = %.0f deliveries/s (p99 < 100 ms, nothing lost); %d lost, %d duplicates, %d errors in all; server CPU per delivery by step: %s' % ($NODES, d['muc']['occupants'], d['muc']['sustainable_rate'], d['muc']['sustainable_delivered_per_sec'], d['muc']['lost'], d['muc']['duplicates'], d['muc']['errors'], ', '.join('%d/s %.1f µs (p99 %.0f ms%s)' % (s['target_rate'], s.get('server_cpu_us_per_delivery') or 0, s['latency_ms']['p99'], '' if s['sustained'] else ', not sustained, %d lost' % s['lost']) for s in d['muc']['steps']))" \
    | tee -a "$WORK/summary.txt"
  for i in "${NODE_PIDS[@]}"; do stop_pid "$i"; done
}

mkdir -p "$WORK"; : > "$WORK/summary.txt"
for round in $(seq 1 "$ROUNDS"); do
  for size in $SIZES; do
    run_one "$size" "$round"
  done
done
echo "summary: $WORK/summary.txt; per run: $WORK/nN-sSIZE-rROUND/muc.{txt,json,err}, report/report.md"
