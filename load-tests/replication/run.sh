#!/usr/bin/env bash
# Replication benchmarks on one machine, loopback only: per-user IM data writes on a
# three-node Switchboard cluster (where that data is replicated) against one node with no
# [cluster] section (no replication), same binary, same load generator, same parameters.
#
#   (a) roster-writes: acknowledged jabber:iq:roster sets (new contacts) per second, with up
#       to --outstanding sets in flight per user; errors by condition, latency p50/p99;
#   (b) offline-store: messages to accounts that are not logged in, stored offline per
#       second (acknowledged, and from switchboard_routed_total{destination="offline"}),
#       then verified by logging the recipients in (stored vs delivered, lost, duplicates).
#
# Plain TCP everywhere (c2s.require_tls = false, loadgen --tls none --mech scram-sha-256).
# Servers are pinned to one CPU, the generator to the other (both setups alike). Writes
# docs/replication-benchmarks.md; a "Reading" section between the notes markers of the
# existing report is carried over. Only processes this script started are stopped, by PID.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

ROSTER_USERS=200
OUTSTANDING=4
ROSTER_RATES=max        # aggregate writes/s per step, "max" = as fast as the window allows
ROSTER_SECS=20          # length of each step
SENDERS=50
RECIPIENTS=1000
MESSAGES=600            # per sender
OFFLINE_RATE=""         # aggregate messages/s; "" = as fast as possible
OFFLINE_QUOTA=500       # im.max_offline_messages on every node
OFFLINE_BATCH=10        # messages per vCard acknowledgement
OFFLINE_WINDOW=1        # unacknowledged batches per sender
WARMUP=1
SHARDS=""              # cluster.shards / cluster.replicas: the binary's defaults unless given
REPLICAS=""
C2S_BASE=35320          # node i: 127.0.0.1:$((C2S_BASE + i)); the single node: + 4
LINK_BASE=35330         # node i's NodeLink: 127.0.0.1i:$((LINK_BASE + i))
HTTP_BASE=35340         # node i's /metrics: 127.0.0.1:$((HTTP_BASE + i)); the single node: + 4
SERVER_CPU=0
LOADGEN_CPU=1
WORK=""
OUT="$ROOT/docs/replication-benchmarks.md"
BUILD=1
SB="$ROOT/target/release/switchboard"
LG="$ROOT/target/release/switchboard-loadgen"
SETUPS="single cluster"
BUILT_FROM=""           # how the server binary was built, when not from this tree
RUN_TIMEOUT=420         # per loadgen run, seconds
TOTAL_LIMIT=900         # the whole script gives up after this many seconds

usage() {
  cat <<EOF
usage: $0 [options]
  --roster-users N      users writing their rosters (default $ROSTER_USERS)
  --outstanding K       roster sets in flight per user (default $OUTSTANDING)
  --roster-rates LIST   aggregate writes/s per step, "max" allowed (default $ROSTER_RATES)
  --roster-secs T       length of each roster step (default $ROSTER_SECS)
  --senders N           offline-store senders (default $SENDERS)
  --recipients M        offline recipients, never logged in while storing (default $RECIPIENTS)
  --messages M          messages per sender (default $MESSAGES)
  --offline-rate R      aggregate messages/s (default: as fast as possible)
  --offline-quota Q     im.max_offline_messages on every node (default $OFFLINE_QUOTA)
  --offline-batch B     messages per vCard acknowledgement (default $OFFLINE_BATCH)
  --offline-window W    unacknowledged batches per sender, 0 = no limit (default $OFFLINE_WINDOW)
  --no-warmup           skip the short roster-writes warm-up on each setup
  --shards N            cluster.shards (IM data Raft groups; default: the binary's default)
  --replicas R          cluster.replicas (default: the binary's default)
  --setups LIST         "single cluster" (default), or one of them
  --switchboard BIN     server binary (default target/release/switchboard; implies --no-build)
  --loadgen BIN         generator binary (default target/release/switchboard-loadgen; implies --no-build)
  --built-from TEXT     how --switchboard was built (e.g. "a clean export of HEAD abc1234"),
                        for the report instead of this tree's state
  --work DIR            work dir (default: a new mktemp dir, removed at the end)
  --out FILE            report (default docs/replication-benchmarks.md)
  --no-build            use the existing binaries
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --roster-users) ROSTER_USERS=$2; shift 2;;
    --outstanding) OUTSTANDING=$2; shift 2;;
    --roster-rates) ROSTER_RATES=$2; shift 2;;
    --roster-secs) ROSTER_SECS=$2; shift 2;;
    --senders) SENDERS=$2; shift 2;;
    --recipients) RECIPIENTS=$2; shift 2;;
    --messages) MESSAGES=$2; shift 2;;
    --offline-rate) OFFLINE_RATE=$2; shift 2;;
    --offline-quota) OFFLINE_QUOTA=$2; shift 2;;
    --offline-batch) OFFLINE_BATCH=$2; shift 2;;
    --offline-window) OFFLINE_WINDOW=$2; shift 2;;
    --no-warmup) WARMUP=0; shift;;
    --shards) SHARDS=$2; shift 2;;
    --replicas) REPLICAS=$2; shift 2;;
    --setups) SETUPS=$2; shift 2;;
    --switchboard) SB=$(realpath "$2"); BUILD=0; shift 2;;
    --loadgen) LG=$(realpath "$2"); BUILD=0; shift 2;;
    --built-from) BUILT_FROM=$2; shift 2;;
    --work) WORK=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-build) BUILD=0; shift;;
    -h|--help) usage; exit 0;;
    *) usage >&2; exit 2;;
  esac
done
for v in ROSTER_USERS OUTSTANDING ROSTER_SECS SENDERS RECIPIENTS MESSAGES OFFLINE_QUOTA OFFLINE_BATCH OFFLINE_WINDOW; do
  case ${!v} in '' | *[!0-9]*) echo "$v must be a number" >&2; exit 2;; esac
done
for s in $SETUPS; do
  case $s in single|cluster) ;; *) echo "--setups: single and/or cluster" >&2; exit 2;; esac
done
# Accounts: roster users first, then the senders, then the recipients.
SENDER_FIRST=$(( ROSTER_USERS + 1 ))
ACCOUNTS=$(( ROSTER_USERS + SENDERS + RECIPIENTS ))
STEPS=$(awk -F, '{print NF}' <<<"$ROSTER_RATES")
ROSTER_DURATION=$(( STEPS * ROSTER_SECS ))
# Roster items per user grow with the writes: the cap must not be what is measured.
MAX_ROSTER_ITEMS=1000000
SECRET="replication-bench-secret-0123456789abcdef"
SCRIPT_START=$(date +%s)

log() { echo "[replication-bench $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- work dir, cleanup
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"
results_dir replication-bench
trap stop_started EXIT
trap 'exit 130' INT TERM

over_time() { [ $(( $(date +%s) - SCRIPT_START )) -ge "$TOTAL_LIMIT" ]; }
wait_ready() {  # wait_ready SECS: every node of the setup answers /readyz with 200
  local i port ok
  for i in $(seq 1 $(( $1 * 5 ))); do
    ok=1
    for port in "${HTTP_PORTS[@]}"; do
      curl -sf --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null || { ok=0; break; }
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "not every node is ready after $1 s" >&2; return 1
}
rss_kib() {  # rss_kib PID...: VmRSS summed
  local p t=0
  for p in "$@"; do t=$(( t + $(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done
  echo "$t"
}

# ---------------------------------------------------------------- binaries
release_binaries
command -v taskset >/dev/null && command -v curl >/dev/null && command -v python3 >/dev/null ||
  { echo "needs taskset, curl and python3" >&2; exit 1; }
three_node_ports_free

# ---------------------------------------------------------------- configs and accounts
NODE_TOML="[im]
max_roster_items = $MAX_ROSTER_ITEMS
max_offline_messages = $OFFLINE_QUOTA"
CLUSTER_TOML=""
if [ -n "$SHARDS" ]; then CLUSTER_TOML+="shards = $SHARDS"$'\n'; fi
if [ -n "$REPLICAS" ]; then CLUSTER_TOML+="replicas = $REPLICAS"$'\n'; fi
for i in 1 2 3; do three_node_config "n$i" $(( C2S_BASE + i )) $(( HTTP_BASE + i )) "$i"; done
three_node_config single $(( C2S_BASE + 4 )) $(( HTTP_BASE + 4 ))
# Every node authenticates against its own account store: the same accounts on each, created
# offline (no node running) with `switchboard user import`.
NAMES=""
for s in $SETUPS; do
  case $s in single) NAMES="$NAMES single";; cluster) NAMES="$NAMES n1 n2 n3";; esac
done
for n in $NAMES; do
  log "provisioning $ACCOUNTS accounts for $n"
  "$ROOT/load-tests/provision.sh" "$ACCOUNTS" "$WORK/$n/server.toml" "$SB" >"$WORK/$n/provision.log" 2>&1 ||
    { cat "$WORK/$n/provision.log" >&2; exit 1; }
done

# ---------------------------------------------------------------- runs
COMMANDS="$RES/commands.txt"
: > "$COMMANDS"
run_lg() {  # run_lg NAME SERVERS ARGS...
  local name=$1 servers=$2; shift 2
  if over_time; then log "$name: skipped, the script has run for ${TOTAL_LIMIT} s"; echo "$name skipped" >> "$COMMANDS"; return 0; fi
  log "$name: $*"
  echo "$name: switchboard-loadgen --server $servers --tls none --mech scram-sha-256 $*" >> "$COMMANDS"
  timed_lg "$name" "$RUN_TIMEOUT" "$servers" --report "$RES/$name" "$@"
  echo "{\"rc\": $LG_RC, $LG_MEASURED, \"server_rss_kib\": $(rss_kib "${NODE_PIDS[@]}")}" > "$RES/$name.cpu.json"
}
setup_runs() {  # setup_runs SETUP SERVERS METRICS
  local setup=$1 servers=$2 metrics=$3
  local rate_args=()
  if [ -n "$OFFLINE_RATE" ]; then rate_args=(--rate "$OFFLINE_RATE"); fi
  if [ "$WARMUP" = 1 ]; then
    run_lg "warmup-$setup" "$servers" -n 10 roster-writes --duration-secs 2 --drain-secs 5
  fi
  run_lg "roster-$setup" "$servers" -n "$ROSTER_USERS" roster-writes \
    --outstanding "$OUTSTANDING" --rates "$ROSTER_RATES" --step-secs "$ROSTER_SECS" \
    --drain-secs 10 --duration-secs "$ROSTER_DURATION"
  run_lg "offline-$setup" "$servers" -n "$SENDERS" --first "$SENDER_FIRST" offline-store \
    --recipients "$RECIPIENTS" --messages "$MESSAGES" "${rate_args[@]}" \
    --offline-quota "$OFFLINE_QUOTA" --batch "$OFFLINE_BATCH" --window "$OFFLINE_WINDOW" --metrics "$metrics" \
    --duration-secs 120 --drain-secs 60 --verify-secs 60
}

SINGLE="127.0.0.1:$(( C2S_BASE + 4 ))"
SINGLE_METRICS="http://127.0.0.1:$(( HTTP_BASE + 4 ))/metrics"
ALL="127.0.0.1:$(( C2S_BASE + 1 )),127.0.0.1:$(( C2S_BASE + 2 )),127.0.0.1:$(( C2S_BASE + 3 ))"
ALL_METRICS="http://127.0.0.1:$(( HTTP_BASE + 1 ))/metrics,http://127.0.0.1:$(( HTTP_BASE + 2 ))/metrics,http://127.0.0.1:$(( HTTP_BASE + 3 ))/metrics"

for setup in $SETUPS; do
  case $setup in
    single)
      log "== single node (no [cluster], no replication)"
      start_node single $(( C2S_BASE + 4 )) $(( HTTP_BASE + 4 ))
      wait_ready 30
      setup_runs single "$SINGLE" "$SINGLE_METRICS"
      date -u +%FT%T > "$RES/stopping-single.ts"
      stop_nodes
      ;;
    cluster)
      log "== cluster: starting n1 n2 n3"
      for i in 1 2 3; do start_node "n$i" $(( C2S_BASE + i )) $(( HTTP_BASE + i )); done
      wait_formed
      wait_ready 30
      log "cluster formed"
      snapshot start
      setup_runs cluster "$ALL" "$ALL_METRICS"
      snapshot end
      date -u +%FT%T > "$RES/stopping-cluster.ts"
      stop_nodes
      ;;
  esac
done

# ---------------------------------------------------------------- report
# shellcheck disable=SC2086
keep_node_files $NAMES
{
  machine_meta
  echo "commit_subject=$(cd "$ROOT" && git log -1 --format=%s)"
  echo "switchboard_bin=${SB#"$ROOT"/}"
  echo "built_from=$BUILT_FROM"
  echo "switchboard_built=$(date -u -r "$SB" +%FT%TZ)"
  echo "loadgen_built=$(date -u -r "$LG" +%FT%TZ)"
  echo "setups=$SETUPS"
  echo "roster_users=$ROSTER_USERS"; echo "outstanding=$OUTSTANDING"
  echo "roster_rates=$ROSTER_RATES"; echo "roster_secs=$ROSTER_SECS"
  echo "senders=$SENDERS"; echo "recipients=$RECIPIENTS"; echo "messages=$MESSAGES"
  echo "offline_rate=${OFFLINE_RATE:-max}"; echo "offline_quota=$OFFLINE_QUOTA"
  echo "offline_batch=$OFFLINE_BATCH"; echo "offline_window=$OFFLINE_WINDOW"
  echo "max_roster_items=$MAX_ROSTER_ITEMS"
  echo "shards=${SHARDS:-default}"; echo "replicas=${REPLICAS:-default}"
  echo "server_cpu=$SERVER_CPU"; echo "loadgen_cpu=$LOADGEN_CPU"
  echo "script_secs=$(( $(date +%s) - SCRIPT_START ))"
} > "$RES/meta.txt"
mkdir -p "$(dirname "$OUT")"
python3 "$HERE/report.py" "$RES" "$OUT"
log "wrote $OUT"
if [ "$KEEP_WORK" = 1 ]; then log "raw results in $RES"; fi
