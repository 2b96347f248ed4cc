#!/usr/bin/env bash
# Presence fan-out and PEP notification fan-out side by side in one run (issue 20): the same
# node process, the same users with the same contacts, the same stepped rates. The node is
# pinned to CPU 0, the generator to CPU 1; plain TCP, SCRAM.
#
#   load-tests/features/fanout.sh [ROUNDS]
#
# Per round: a fresh node; USERS accounts in groups of GROUP mutual contacts (rosters
# imported, `both`); then `switchboard-loadgen pep --event presence` and `pep --event pep`
# (every client announces caps asking for tune notifications and answers the server's
# disco#info), each offering RATES events/s in steps of STEP_SECS (then at most DRAIN_SECS of
# drain), stopping after two steps in a row not sustained (p99 >= 100 ms, a loss, or under
# 90 % of the target offered). Prints per event kind: the highest rate sustained (events/s
# and notifications/s) and the node's CPU per delivered notification at each step.
# Env: BIN (target/release/switchboard), LG (target/release/switchboard-loadgen), USERS (2100),
# GROUP (21: 20 contacts each), RATES, STEP_SECS (5), DRAIN_SECS (5), WORK (/tmp/sb-fanout),
# EVENTS ("presence pep"), PORT (5489: c2s; /metrics one below). Loopback only; every step bounded in time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${1:-1}
BIN=${BIN:-$ROOT/target/release/switchboard}
LG=${LG:-$ROOT/target/release/switchboard-loadgen}
USERS=${USERS:-2100}
GROUP=${GROUP:-21}
RATES=${RATES:-100,200,400,700,1000,1500,2000,3000,4000,6000,8000}
STEP_SECS=${STEP_SECS:-5}
DRAIN_SECS=${DRAIN_SECS:-5}
WORK=${WORK:-/tmp/sb-fanout}
EVENTS=${EVENTS:-presence pep}
PORT=${PORT:-5489}
ulimit -n "$(ulimit -Hn)"
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"

run_round() {  # run_round ROUND
  local round=$1 d="$WORK/round-$1" pid ev rosters=provisioned
  rm -rf "$d"; mkdir -p "$d/data"
  { plain_node_toml "$d" "$PORT" "require_tls = false"; printf '[modules.mam]\nenabled = false\n'; } \
    > "$d/node.toml"
  taskset -c 0 "$BIN" run --config "$d/node.toml" > "$d/node.log" 2>&1 &
  pid=$!
  wait_port 127.0.0.1 "$PORT" 30
  SHARED_SALT=1 ROSTER_GROUP=$GROUP "$ROOT/load-tests/provision.sh" "$USERS" "$d/node.toml" "$BIN" \
    > "$d/provision.txt" 2>&1
  for ev in $EVENTS; do
    timeout 900 taskset -c 1 "$LG" --server "127.0.0.1:$PORT" --domain localhost --tls none \
      --mech scram-sha-256 -n "$USERS" --server-pid "$pid" --json "$d/$ev.json" \
      --report "$d/$ev-report" pep --event "$ev" --group "$GROUP" --rosters "$rosters" \
      --rates "$RATES" --step-secs "$STEP_SECS" --drain-secs "$DRAIN_SECS" --p99-limit-ms 100 \
      --stop-after 2 --setup-secs 120 > "$d/$ev.txt" 2> "$d/$ev.err" \
      || echo "$ev: loadgen exit $?"
    json_field "$d/$ev.json" "'%-8s round $round: sustained %s events/s = %.0f notifications/s (p99 < 100 ms, nothing lost); %d lost, %d publish errors in all; server CPU per notification by step: %s' % (d['pep']['event'], d['pep']['sustainable_rate'], d['pep']['sustainable_delivered_per_sec'], d['pep']['lost'], d['pep']['errors'], ', '.join('%d/s %.1f µs%s' % (s['target_rate'], s.get('server_cpu_us_per_notification') or 0, '' if s['sustained'] else ' (not sustained, p99 %.0f ms, %d lost)' % (s['latency_ms']['p99'], s['lost'])) for s in d['pep']['steps']))" \
      | tee -a "$WORK/summary.txt"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

mkdir -p "$WORK"; : > "$WORK/summary.txt"
for round in $(seq 1 "$ROUNDS"); do
  run_round "$round"
done
echo "summary: $WORK/summary.txt; per run: $WORK/round-N/{presence,pep}.{txt,json,err}, *-report/report.md"
