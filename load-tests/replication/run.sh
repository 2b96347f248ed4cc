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
python3 - "$RES" "$OUT" <<'PY'
import json, os, re, sys

res, out = sys.argv[1], sys.argv[2]
lines = []
w = lines.append
anomalies = []


def load(name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def text(name):
    try:
        with open(os.path.join(res, name)) as f:
            return f.read()
    except OSError:
        return ""


meta = dict(l.split("=", 1) for l in text("meta.txt").splitlines() if "=" in l)
setups = meta.get("setups", "single cluster").split()


def f0(v):
    return "-" if v is None else f"{v:,.0f}"


def f2(v):
    return "-" if v is None else f"{v:,.2f}"


def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"


def reasons(m):
    return "none" if not m else "; ".join(f"{n} × {k}" for k, n in sorted(m.items())).replace("|", "\\|")


def get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d


def check_common(name, j, cpu):
    if j is None:
        anomalies.append(f"`{name}`: no result; stderr: `{text(name + '.err').strip()[-300:]}`")
        return
    if cpu and cpu.get("rc"):
        anomalies.append(f"`{name}`: the generator exited {cpu['rc']}")
    if j["login"]["failed"]:
        anomalies.append(f"`{name}`: login failures: {reasons(j['login']['failures'])}")
    if j["dropped"]:
        anomalies.append(f"`{name}`: sessions dropped: {reasons(j['dropped'])}")


R = {s: load(f"roster-{s}.json") for s in setups}
O = {s: load(f"offline-{s}.json") for s in setups}
RC = {s: load(f"roster-{s}.cpu.json") for s in setups}
OC = {s: load(f"offline-{s}.cpu.json") for s in setups}
for s in setups:
    check_common(f"roster-{s}", R[s], RC[s])
    check_common(f"offline-{s}", O[s], OC[s])
    r = get(R[s], "roster_writes")
    if r:
        if r["errors"]:
            anomalies.append(f"`roster-{s}`: error replies: {reasons(r['errors'])}")
        if r["wait_errors"]:
            anomalies.append(f"`roster-{s}`: `type='wait'` error replies: {reasons(r['wait_errors'])}")
        if r["unanswered"]:
            anomalies.append(f"`roster-{s}`: {r['unanswered']:,} sets unanswered by the end of their drain")
        if r["pushes"] != r["acked"] + sum(st["late"] for st in r["steps"]):
            anomalies.append(f"`roster-{s}`: {r['pushes']:,} roster pushes for {r['acked']:,} acknowledged writes")
    o = get(O[s], "offline_store")
    if o:
        v = o["verify"]
        if o["bounced"]:
            anomalies.append(f"`offline-{s}`: bounces: {reasons(o['bounces'])}; wait: {reasons(o['wait_bounces'])}")
        if o.get("barrier_refusals"):
            anomalies.append(f"`offline-{s}`: vCard queries (batch acknowledgements) refused: {reasons(o['barrier_refusals'])}")
        if o["barriers_answered"] < o["barriers"]:
            anomalies.append(f"`offline-{s}`: {o['barriers'] - o['barriers_answered']:,} of {o['barriers']:,} vCard queries (batch acknowledgements) unanswered")
        if v["lost"] or v["duplicates"] or v["delivered_bounced"]:
            anomalies.append(f"`offline-{s}`: verification: {v['lost']:,} lost, {v['duplicates']:,} duplicates, {v['delivered_bounced']:,} delivered despite a bounce")
        if v["stale"]:
            anomalies.append(f"`offline-{s}`: {v['stale']:,} messages from another run delivered")
        if v["delayed"] != v["delivered"] + v["delivered_bounced"]:
            anomalies.append(f"`offline-{s}`: {v['delivered'] - v['delayed']:,} delivered without a delay stamp")
        c = o.get("counter")
        if c and c["stored"] != o["sent"]:
            anomalies.append(f"`offline-{s}`: the server counter grew by {c['stored']:,} for {o['sent']:,} messages sent")
        if v["login"]["failed"]:
            anomalies.append(f"`offline-{s}`: recipient login failures: {reasons(v['login']['failures'])}")

w("# Replication benchmarks: per-user IM data writes, three replicas against one node")
w("")
w("Generated by `load-tests/replication/run.sh` (see `load-tests/README.md`, \"Replication benchmarks\"); "
  "everything but the reading at the end (kept between the notes markers when the script rewrites this file) is regenerated by every run.")
w("")
dirty = meta.get("dirty", "").split()
w(f"Run {meta.get('date', '?')} on {meta.get('cpus', '?')} CPUs ({meta.get('cpu', '?')}), {meta.get('mem', '?')}, "
  f"Linux {meta.get('kernel', '?')}, data dirs on {meta.get('disk', '?')}; `{meta.get('switchboard_bin', '?')}` "
  f"built {meta.get('switchboard_built', '?')}, HEAD {meta.get('commit', '?')} (\"{meta.get('commit_subject', '')}\") at run time"
  + (f"; the binary was built from {meta['built_from']}" if meta.get("built_from") else
     f"; the tree had uncommitted changes in {len(dirty)} files under nodes/, proto/, storage/, which the binary may or may not include" if dirty else
     "; no uncommitted changes under nodes/, proto/, storage/")
  + f". Whole script: {meta.get('script_secs', '?')} s.")
w("")
w("## Setup")
w("")
w(f"- **One machine, {meta.get('cpus', '?')} CPUs.** Every server process is pinned to CPU {meta.get('server_cpu')} and the generator to CPU {meta.get('loadgen_cpu')}: "
  "the single node has one core to itself, the **three cluster nodes share that one core** and flush to the same disk. "
  "The cluster figures are a lower bound for three machines; the ratio says what three replicas cost on the same hardware.")
w("- **Plain TCP.** `c2s.require_tls = false`, generator `--tls none --mech scram-sha-256`: no TLS in the figures.")
w("- **Cluster.** Nodes 1–3 with NodeLinks on 127.0.0.11–13, c2s and `/metrics` on 127.0.0.1, the same secret and `members`, "
  "`s2s.listen = \"\"`, default Raft timings, "
  + (f"`cluster.shards = {meta.get('shards')}`" if meta.get("shards", "default") != "default" else "the binary's default `cluster.shards`")
  + " and " + (f"`cluster.replicas = {meta.get('replicas')}`" if meta.get("replicas", "default") != "default" else "default `cluster.replicas`")
  + ", log level `warn`; user *i* connects to node *i* mod 3. "
  "**Single node**: the same binary and config without `[cluster]`, so no replication.")
w(f"- **Both**: `im.max_roster_items = {int(meta.get('max_roster_items', 0)):,}` (so the roster cap is never what is measured), "
  f"`im.max_offline_messages = {meta.get('offline_quota')}`; the same accounts created on every node offline with `switchboard user import` "
  f"(user1..user{meta.get('roster_users')} write rosters, the next {meta.get('senders')} send, the next {meta.get('recipients')} receive offline); "
  "fresh data dirs; " + ("a 2-second roster-writes warm-up with 10 users before the measured runs." if load("warmup-single.json") or load("warmup-cluster.json") else "no warm-up."))
w("")

# ---- headline
w("## Results")
w("")
hdr = "| figure | " + " | ".join({"cluster": "**cluster (3 nodes)**", "single": "**single node**"}[s] for s in setups)
if len(setups) == 2:
    hdr += " | cluster/single"
w(hdr + " |")
w("|---|" + "---|" * (len(setups) + (1 if len(setups) == 2 else 0)))


def headline(label, fn, fmt=f0, with_ratio=True):
    vals = {s: fn(s) for s in setups}
    row = f"| {label} | " + " | ".join(fmt(vals[s]) for s in setups)
    if len(setups) == 2:
        row += " | " + (ratio(vals.get("cluster"), vals.get("single")) if with_ratio else "")
    w(row + " |")


rw = {s: get(R[s], "roster_writes") for s in setups}
ow = {s: get(O[s], "offline_store") for s in setups}
headline("**roster writes/s acknowledged** (best step)", lambda s: get(rw[s], "best_acked_per_sec"))
headline("roster set round trip p50 (ms)", lambda s: get(rw[s], "latency_ms", "p50"), f2)
headline("roster set round trip p99 (ms)", lambda s: get(rw[s], "latency_ms", "p99"), f2)
w("| roster writes acknowledged / sent | " + " | ".join(
    f"{rw[s]['acked']:,} / {rw[s]['sent']:,}" if rw[s] else "-" for s in setups) + (" | |" if len(setups) == 2 else " |"))
w("| roster error replies (wait) | " + " | ".join(
    (f"{sum(rw[s]['errors'].values()):,} ({sum(rw[s]['wait_errors'].values()):,})" if rw[s] else "-") for s in setups) + (" | |" if len(setups) == 2 else " |"))
headline("**offline stores/s acknowledged**", lambda s: get(ow[s], "acked_per_sec"))
headline("offline batch acknowledgement p50 (ms)", lambda s: get(ow[s], "ack_latency_ms", "p50"), f2)
headline("offline batch acknowledgement p99 (ms)", lambda s: get(ow[s], "ack_latency_ms", "p99"), f2)
headline("offline stores/s, server counter", lambda s: get(ow[s], "counter", "stores_per_sec"))
headline("offline messages offered/s", lambda s: get(ow[s], "offered_per_sec"))
w("| offline stored / delivered / lost / duplicates | " + " | ".join(
    (f"{ow[s]['accepted']:,} / {ow[s]['verify']['delivered']:,} / {ow[s]['verify']['lost']:,} / {ow[s]['verify']['duplicates']:,}" if ow[s] else "-")
    for s in setups) + (" | |" if len(setups) == 2 else " |"))


def cpu_per(cpu, n):
    if not cpu or not n:
        return None
    return cpu["server_cpu_secs"] / n * 1e6


headline("server CPU per roster write (µs, all nodes)", lambda s: cpu_per(RC[s], get(rw[s], "acked")))
headline("server CPU per offline message (µs, all nodes; includes the verification logins and deliveries)", lambda s: cpu_per(OC[s], get(ow[s], "sent")))
w("")

# ---- roster details
w("## (a) Roster writes")
w("")
ru = meta.get("roster_users")
w(f"`roster-writes -n {ru} --outstanding {meta.get('outstanding')} --rates {meta.get('roster_rates')} --step-secs {meta.get('roster_secs')}`: "
  f"each of {ru} users adds new contacts (`w<run>.<seq>@bench.example`) with `jabber:iq:roster` sets, at most {meta.get('outstanding')} in flight per user "
  "(so at most users × outstanding sets are queued in the server); a write counts when its `type='result'` arrives. "
  "In the cluster each set is a write to the user's replicated IM data; on the single node it is a local storage write. "
  "Latency is the IQ round trip in milliseconds; acked/s is over the step (or to its last result).")
w("")
w("| setup | target | time (s) | sent | offered/s | acked | **acked/s** | errors | wait errors | unanswered | p50 | p90 | p99 | max | pushes |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for s in setups:
    r = rw[s]
    if not r:
        w(f"| {s} | no result | | | | | | | | | | | | | |")
        continue
    for st in r["steps"]:
        t = "max" if st["target_rate"] is None else f"{st['target_rate']}/s"
        L = st["latency_ms"]
        w(f"| {s} | {t} | {st['secs']:.1f} | {st['sent']:,} | {st['offered_per_sec']:,.0f} | {st['acked']:,} | **{st['acked_per_sec']:,.0f}** | "
          f"{reasons(st['errors'])} | {reasons(st['wait_errors'])} | {st['unanswered']:,} | {L['p50']:.2f} | {L['p90']:.2f} | {L['p99']:.2f} | {L['max']:.2f} | {r['pushes']:,} |")
w("")

# ---- offline details
w("## (b) Offline message stores")
w("")
o_any = next((ow[s] for s in setups if ow[s]), None)
if o_any:
    win = o_any["window"]
    w(f"`offline-store -n {meta.get('senders')} --recipients {meta.get('recipients')} --messages {meta.get('messages')}"
      + (f" --rate {meta.get('offline_rate')}" if meta.get('offline_rate') not in (None, 'max') else "")
      + f" --batch {o_any['batch']} --window {win} --offline-quota {meta.get('offline_quota')}`: {o_any['senders']} senders send `type='chat'` messages with {o_any['body_bytes']}-byte bodies "
      f"to the bare JIDs of {o_any['recipients']} accounts that are not logged in (each recipient fed by one sender, at most {o_any['per_recipient_max']} messages each), "
      + ("as fast as the window allows" if o_any["target_rate"] is None else f"at {o_any['target_rate']} messages/s in all")
      + ". The server stores each one offline (XEP-0160) or bounces it. XMPP has no acknowledgement for a message, so a sender writes batches of "
      f"{o_any['batch']} messages to one recipient, each followed by a vCard query to that recipient's bare JID: the server answers it on the account's behalf "
      "from the same per-user IM state (in a cluster, the RosterActor on the shard's leader, which commits every write before taking the next request), "
      "after the messages before it, so the answer acknowledges the batch. "
      + (f"At most {win} unacknowledged batch{'es' if win != 1 else ''} per sender, so at most {o_any['senders'] * win * o_any['batch']:,} messages are in flight. " if win else "No window: every message is sent at once. ")
      + "**Acknowledged stores/s** = messages of answered batches (bounced ones excluded) / time from the first message to the last answer; "
      "latency from a batch's first message to its answer. "
      "The **server counter** is `switchboard_routed_total{destination=\"offline\"}` summed over the nodes' `/metrics`, read every 250 ms "
      "(it counts when the router hands a message to storage, so it runs ahead of the stores by the messages in flight). "
      "Then the recipients log in with initial presence and count what is delivered from storage.")
w("")
w("| setup | sent | send time (s) | offered/s | bounced | accepted | batches answered | acknowledged | time to last answer (s) | **stores/s acked** | batch ack p50 / p99 ms | counter | counter time (s) | **counter stores/s** | counter peak/s |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for s in setups:
    o = ow[s]
    if not o:
        w(f"| {s} | no result |" + " |" * 13)
        continue
    c = o.get("counter") or {}
    B = o["ack_latency_ms"]
    w(f"| {s} | {o['sent']:,} | {o['send_secs']:.2f} | {o['offered_per_sec']:,.0f} | {o['bounced']:,} | {o['accepted']:,} | {o['barriers_answered']:,}/{o['barriers']:,} | "
      f"{o['acked']:,} | {o['acked_secs']:.2f} | **{o['acked_per_sec']:,.0f}** | {B['p50']:.1f} / {B['p99']:.1f} | {c.get('stored', '-')} | {f2(c.get('secs'))} | **{f0(c.get('stores_per_sec'))}** | {f0(c.get('peak_per_sec'))} |")
w("")
w("Verification (the recipients log in afterwards):")
w("")
w("| setup | recipients logged in | stored (accepted) | delivered | with delay stamp | lost | duplicates | delivered despite bounce | stale | last delivery (s) | deliveries/s |")
w("|---|---|---|---|---|---|---|---|---|---|---|")
for s in setups:
    o = ow[s]
    if not o:
        continue
    v = o["verify"]
    w(f"| {s} | {v['login']['succeeded']:,}/{o['recipients']:,} | {v['expected']:,} | {v['delivered']:,} | {v['delayed']:,} | {v['lost']:,} | {v['duplicates']:,} | "
      f"{v['delivered_bounced']:,} | {v['stale']:,} | {v['last_delivery_secs']:.2f} | {v['delivered_per_sec']:,.0f} |")
w("")

# ---- machine use
w("## Machine use per run")
w("")
w("| run | wall s | server CPU s | server core busy | generator CPU s | generator core busy | server RSS after (MiB) | load avg at start |")
w("|---|---|---|---|---|---|---|---|")
for s in setups:
    for kind, cpu in (("roster", RC[s]), ("offline", OC[s])):
        if not cpu:
            continue
        la = text(f"{kind}-{s}.load").strip()
        w(f"| {kind}-{s} | {cpu['wall_secs']:.1f} | {cpu['server_cpu_secs']:.1f} | {cpu['server_core_busy'] * 100:.0f} % | {cpu['loadgen_cpu_secs']:.1f} | "
          f"{cpu['loadgen_core_busy'] * 100:.0f} % | {cpu['server_rss_kib'] / 1024:.0f} | {la} |")
w("")
w("*Server core busy* is the share of the servers' CPU used by anything over the run; a generator core near 100 % means the generator, not the server, set the pace.")
w("")

# ---- server logs
for s in setups:
    stopping = text(f"stopping-{s}.ts").strip() or "9999"
    for n in (["single"] if s == "single" else ["n1", "n2", "n3"]):
        log = text(f"server-{n}.log")
        # Vote and replication errors while a node is not connected yet (the cluster
        # forming) or any more (the nodes stopping one after the other) are expected.
        errs = [l for l in log.splitlines() if " ERROR " in l
                and not re.search(r"Unreachable node|not connected|while requesting vote", l)]
        # ISO timestamps compare as text: lines from when the script began stopping the nodes.
        late = [l for l in errs if l[:19] >= stopping[:19]]
        early = [l for l in errs if l[:19] < stopping[:19]]
        if early:
            anomalies.append(f"{n}: {len(early)} error lines in the server log during the runs, e.g. `{early[0][:200]}`")
        if late:
            kinds = sorted({re.sub(r"^\S+\s+ERROR\s+", "", l).split(" error=")[0][:90] for l in late})
            anomalies.append(f"{n}: {len(late)} error lines while the nodes were being stopped (after the runs): "
                             + "; ".join(f"`{k}`" for k in kinds[:4]))

w("## Anomalies")
w("")
if anomalies:
    for a in anomalies:
        w(f"- {a}")
else:
    w("None found in the results (errors, bounces, unanswered or lost writes, duplicates, dropped sessions, login failures, error lines in the server logs).")
w("")
w("## Commands")
w("")
w("```")
w(f"load-tests/replication/run.sh --roster-users {meta.get('roster_users')} --outstanding {meta.get('outstanding')} --roster-rates {meta.get('roster_rates')} "
  f"--roster-secs {meta.get('roster_secs')} --senders {meta.get('senders')} --recipients {meta.get('recipients')} --messages {meta.get('messages')} "
  + (f"--offline-rate {meta.get('offline_rate')} " if meta.get('offline_rate') not in (None, 'max') else "")
  + f"--offline-quota {meta.get('offline_quota')}")
w("")
w(text("commands.txt").rstrip())
w("```")
w("")
st = load("status-n1-end.json")
st0 = load("status-n1-start.json") or {}
if st and st.get("shards"):
    before = {x.get("shard"): x.get("applied") or 0 for x in st0.get("shards") or []}
    leaders = {}
    for x in st["shards"]:
        leaders[x.get("leader")] = leaders.get(x.get("leader"), 0) + 1
    total = sum((x.get("applied") or 0) - before.get(x.get("shard"), 0) for x in st["shards"])
    w(f"IM data shards after the cluster runs, from node 1's `switchboard cluster status` ({st.get('shard_count', len(st['shards']))} shards; "
      "leaders per node: " + ", ".join(f"node {k}: {v}" for k, v in sorted(leaders.items(), key=lambda kv: str(kv[0]))) +
      f"; {total:,} shard log entries applied during the cluster runs, warm-up and logins included):")
    w("")
    w("| shard | leader | voters | learners | term | applied at start | applied at the end |")
    w("|---|---|---|---|---|---|---|")
    for x in st["shards"]:
        w(f"| {x.get('shard')} | {x.get('leader')} | {', '.join(map(str, x.get('voters') or []))} | {', '.join(map(str, x.get('learners') or [])) or '-'} | "
          f"{x.get('term')} | {before.get(x.get('shard'), '-')} | {x.get('applied')} |")
    w("")
elif st:
    w("Node 1's `switchboard cluster status` after the cluster runs:")
    w("")
    w("```json")
    body = json.dumps(st, indent=1, sort_keys=True)
    w(body if len(body) <= 4000 else body[:4000] + "\n... (cut)")
    w("```")
    w("")
w("Node 1's config:")
w("")
w("```toml")
w(re.sub(r'secret = ".*"', 'secret = "..."', text("n1.toml")).rstrip())
w("```")
w("")

# ---- notes carried over
BEGIN, END = "<!-- notes:begin -->", "<!-- notes:end -->"
notes = ""
try:
    with open(out) as f:
        old = f.read()
    if BEGIN in old and END in old:
        notes = old[old.index(BEGIN) + len(BEGIN):old.index(END)].strip("\n")
except OSError:
    pass
w(BEGIN)
w(notes if notes else "## Reading\n\n(No reading written for this run yet.)")
w(END)
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
PY
log "wrote $OUT"
if [ "$KEEP_WORK" = 1 ]; then log "raw results in $RES"; fi
