#!/usr/bin/env bash
# A/B of two Switchboard builds in one run, side by side: the node pinned to CPU 0, the
# generator to CPU 1, rounds alternating A and B so that drift on the machine hits both.
# Per build and round: stepped chat (STARTTLS, SASL PLAIN, 200 users; the highest rate
# sustained with p99 < 100 ms and nothing lost) and a login storm (STARTTLS + SCRAM-free
# PLAIN logins at stepped rates; the highest rate with every login done).
#
#   load-tests/ab/run.sh BASE_BIN HEAD_BIN [ROUNDS]     # e.g. the previous commit's release
#                                                       # binary against this one's
# Env: LG (loadgen binary, default target/release/switchboard-loadgen), CHAT_RATES,
# LOGIN_RATES, WORK (default /tmp/sb-ab). Loopback only; every step bounded in time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
A=${1:?usage: run.sh BASE_BIN HEAD_BIN [ROUNDS]}
B=${2:?usage: run.sh BASE_BIN HEAD_BIN [ROUNDS]}
ROUNDS=${3:-2}
LG=${LG:-$ROOT/target/release/switchboard-loadgen}
CHAT_RATES=${CHAT_RATES:-16000,24000,32000,40000,48000,56000,64000}
LOGIN_RATES=${LOGIN_RATES:-100,200,300,400,500,600}
WORK=${WORK:-/tmp/sb-ab}
PORT=5399
ulimit -n "$(ulimit -Hn)"
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"

run_one() {  # run_one LABEL BIN ROUND
  local label=$1 bin=$2 round=$3 d="$WORK/$1-$3" pid
  rm -rf "$d"; mkdir -p "$d/data"
  plain_node_toml "$d" "$PORT" > "$d/server.toml"
  for i in $(seq 1 2000); do echo "user$i@localhost secret"; done > "$d/users.txt"
  "$bin" --config "$d/server.toml" user import --shared-salt "$d/users.txt" > /dev/null
  taskset -c 0 "$bin" run --config "$d/server.toml" > "$d/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
  timeout 300 taskset -c 1 "$LG" --server 127.0.0.1:$PORT --domain localhost \
    --json "$d/chat.json" -n 200 chat --rates "$CHAT_RATES" --step-secs 5 --drain-secs 5 \
    --p99-limit-ms 100 --stop-after 2 > "$d/chat.txt" 2> "$d/chat.err" || echo "chat: loadgen exit $?"
  timeout 300 taskset -c 1 "$LG" --server 127.0.0.1:$PORT --domain localhost \
    --json "$d/login.json" -n 2000 login --rates "$LOGIN_RATES" --step-secs 3 \
    > "$d/login.txt" 2> "$d/login.err" || echo "login: loadgen exit $?"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "== $label round $round"
  grep -iE "sustain|highest|step|rate" "$d/chat.txt" | tail -12 || true
  grep -iE "sustain|highest|step|rate|logins" "$d/login.txt" | tail -10 || true
}

for round in $(seq 1 "$ROUNDS"); do
  run_one A "$A" "$round"
  run_one B "$B" "$round"
done
echo "results under $WORK/{A,B}-ROUND/{chat,login}.{txt,json}"
