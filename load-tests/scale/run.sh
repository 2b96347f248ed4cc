#!/usr/bin/env bash
# Many idle sessions on this one machine: NODES Switchboard processes, each taking PER_NODE
# client connections from its own switchboard-loadgen process (`idle`).
#
# Why several processes: every process here is capped at 20,000 open files (`ulimit -Hn`, not
# raisable), so neither one node nor one generator can hold more than ~19,900 connections.
# By default the nodes are independent (no [cluster]): the run measures what sessions cost
# (server, generator, kernel) at ~17,000 per process. `--cluster` makes them one cluster, the
# way a carrier's front-ends would serve them; on two shared CPUs six nodes with 17 Raft
# groups each do not keep up with a login storm of this size. Nothing is pinned:
# the nodes and generators share both CPUs. Records, every 2 s, the sessions the nodes count
# (`switchboard_c2s_sessions`), every process's RSS and the kernel's memory (MemAvailable,
# Slab, TCP socket pages), and writes docs/scale-benchmarks.md with the figures at the peak.
#
#   load-tests/scale/run.sh [--nodes 6] [--per-node 17000] [--hold-secs 60] [--tls none|starttls] [--cluster]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

NODES=6
PER_NODE=17000
HOLD=60
CLUSTER=0
TLS=none
CONCURRENCY=100
C2S_BASE=36220          # node i: 127.0.0.1:$((C2S_BASE + i))
LINK_BASE=36230         # node i's NodeLink: 127.0.0.2i:$((LINK_BASE + i))
HTTP_BASE=36240         # node i's /metrics: 127.0.0.1:$((HTTP_BASE + i))
WORK=""
OUT="$ROOT/docs/scale-benchmarks.md"
BUILD=1

usage() {
  cat <<EOF
usage: $0 [options]
  --nodes K         cluster nodes, one generator process each (default $NODES, at most 9)
  --per-node N      sessions per node (default $PER_NODE, at most 19000: the open-file cap)
  --hold-secs T     how long each generator holds its sessions after its logins (default $HOLD)
  --tls MODE        none (SCRAM-SHA-256 over plain TCP) or starttls (PLAIN over TLS) (default $TLS)
  --concurrency C   logins in progress per generator (default $CONCURRENCY)
  --cluster         one cluster of the nodes instead of independent nodes
  --work DIR        work dir (default: a new mktemp dir, removed at the end)
  --out FILE        report (default docs/scale-benchmarks.md)
  --no-build        use the existing release binaries
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2;;
    --per-node) PER_NODE=$2; shift 2;;
    --hold-secs) HOLD=$2; shift 2;;
    --tls) TLS=$2; shift 2;;
    --concurrency) CONCURRENCY=$2; shift 2;;
    --work) WORK=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-build) BUILD=0; shift;;
    --cluster) CLUSTER=1; shift;;
    -h|--help) usage; exit 0;;
    *) usage >&2; exit 2;;
  esac
done
case "$TLS" in none) MECH=scram-sha-256; REQUIRE_TLS=false;; starttls) MECH=plain; REQUIRE_TLS=true;;
  *) echo "--tls must be none or starttls" >&2; exit 2;; esac
[ "$NODES" -ge 1 ] && [ "$NODES" -le 9 ] || { echo "--nodes must be 1..9" >&2; exit 2; }
[ "$PER_NODE" -ge 1 ] && [ "$PER_NODE" -le 19000 ] || { echo "--per-node must be 1..19000" >&2; exit 2; }
TOTAL=$(( NODES * PER_NODE ))
SECRET="scale-bench-secret-0123456789abcdef"

log() { echo "[scale $(date +%T)] $*" >&2; }

KEEP_WORK=1
if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/sb-scale.XXXXXX); KEEP_WORK=0; fi
RES="$WORK/results"; mkdir -p "$RES"
STARTED_PIDS=()
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"
trap stop_started EXIT
trap 'exit 130' INT TERM

release_binaries

# ---------------------------------------------------------------- configs, accounts
MEMBERS=""
for i in $(seq 1 "$NODES"); do MEMBERS="$MEMBERS${MEMBERS:+, }\"$i@127.0.0.2$i:$(( LINK_BASE + i ))\""; done
for i in $(seq 1 "$NODES"); do
  d="$WORK/n$i"; mkdir -p "$d/data"
  cat > "$d/server.toml" <<EOF
domains = ["localhost"]
data_dir = "$d/data"

[c2s]
listen = "127.0.0.1:$(( C2S_BASE + i ))"
tls_listen = ""
require_tls = $REQUIRE_TLS
# The process may open 20,000 files; keep room for the NodeLinks and the database.
max_connections = 19500

[http]
listen = "127.0.0.1:$(( HTTP_BASE + i ))"

[s2s]
listen = ""

[log]
level = "warn"
EOF
  if [ "$CLUSTER" = 1 ]; then
    cat >> "$d/server.toml" <<EOF

[cluster]
node_id = $i
listen = "127.0.0.2$i:$(( LINK_BASE + i ))"
secret = "$SECRET"
members = [$MEMBERS]
EOF
  fi
  # Each node checks logins against its own account store: the same accounts on every node,
  # created offline, keys derived once for the common password (load-test population).
  log "provisioning $TOTAL accounts for n$i"
  SHARED_SALT=1 "$ROOT/load-tests/provision.sh" "$TOTAL" "$d/server.toml" "$SB" > "$d/provision.log" 2>&1
done

# ---------------------------------------------------------------- cluster
NODE_PIDS=()
for i in $(seq 1 "$NODES"); do
  NO_COLOR=1 "$SB" run --config "$WORK/n$i/server.toml" >> "$WORK/n$i/server.log" 2>&1 &
  NODE_PIDS+=("$!"); STARTED_PIDS+=("$!")
done
for i in $(seq 1 "$NODES"); do wait_port 127.0.0.1 $(( C2S_BASE + i )) 60; done
ready() {  # every member up and every shard led, as node 1 sees it
  "$SB" cluster status --config "$WORK/n1/server.toml" 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
n = int(sys.argv[1])
up = sum(1 for v in s["members"].values() if v == "up")
led = all(e.get("leader") is not None for e in s.get("shards", []))
sys.exit(0 if s["leader"] is not None and up == n and led and s.get("shards") else 1)' "$NODES"
}
if [ "$CLUSTER" = 1 ]; then
  for t in $(seq 1 150); do ready && break; sleep 0.4; done
  ready || { echo "the cluster did not form in 60 s" >&2; exit 1; }
  log "cluster of $NODES formed"
fi
sleep 3

# ---------------------------------------------------------------- sampling
sample() {  # one line of JSON: time, sessions per node, RSS per node and generator, kernel memory
  local i pids=("$@")
  python3 - "$NODES" "$HTTP_BASE" "${pids[@]}" <<'EOF'
import json, re, sys, time, urllib.request
nodes, http_base, pids = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    except Exception:
        return 0
sessions = []
for i in range(1, nodes + 1):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{http_base + i}/metrics", timeout=5).read().decode()
        m = re.search(r"^switchboard_c2s_sessions (\S+)", text, re.M)
        sessions.append(int(float(m.group(1))) if m else 0)
    except Exception:
        sessions.append(0)
mem = {}
with open("/proc/meminfo") as f:
    for line in f:
        k, v = line.split(":")
        mem[k] = int(v.split()[0])
tcp_pages = 0
with open("/proc/net/sockstat") as f:
    for line in f:
        if line.startswith("TCP:"):
            parts = line.split()
            tcp_pages = int(parts[parts.index("mem") + 1])
            inuse = int(parts[parts.index("inuse") + 1])
print(json.dumps({
    "t": time.time(), "sessions": sessions,
    "node_rss_kib": [rss(p) for p in pids[:nodes]],
    "gen_rss_kib": [rss(p) for p in pids[nodes:]],
    "mem_available_kib": mem["MemAvailable"], "slab_kib": mem["Slab"],
    "tcp_mem_pages": tcp_pages, "tcp_inuse": inuse,
}))
EOF
}
sample "${NODE_PIDS[@]}" > "$RES/before.json"

# ---------------------------------------------------------------- generators
GEN_PIDS=()
for i in $(seq 1 "$NODES"); do
  "$LG" --server "127.0.0.1:$(( C2S_BASE + i ))" --tls "$TLS" --mech "$MECH" \
    -n "$PER_NODE" --first $(( (i - 1) * PER_NODE + 1 )) \
    --source-ips "127.0.$(( i + 1 )).1-127.0.$(( i + 1 )).4" --concurrency "$CONCURRENCY" \
    --login-timeout-secs 120 --server-pid "${NODE_PIDS[$(( i - 1 ))]}" \
    --json "$RES/gen-$i.json" idle --hold-secs "$HOLD" > "$RES/gen-$i.txt" 2> "$RES/gen-$i.err" &
  GEN_PIDS+=("$!"); STARTED_PIDS+=("$!")
done
log "$NODES generators started: $TOTAL sessions in all"
DEADLINE=$(( $(date +%s) + HOLD + 1800 ))
: > "$RES/samples.jsonl"
while :; do
  alive=0
  for p in "${GEN_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  [ "$(date +%s)" -lt "$DEADLINE" ] || { log "generators still running after the deadline"; break; }
  sample "${NODE_PIDS[@]}" "${GEN_PIDS[@]}" >> "$RES/samples.jsonl" || true
  tail -n 1 "$RES/samples.jsonl" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("sessions", sum(s["sessions"]), "MemAvailable MiB", s["mem_available_kib"] // 1024)' >&2 || true
  sleep 2
done
for p in "${GEN_PIDS[@]}"; do wait "$p" || log "a generator exited with $?"; done

# ---------------------------------------------------------------- report
{
  echo "date=$(date -u +%FT%TZ)"
  echo "kernel=$(uname -r)"
  echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "cpus=$(nproc)"
  echo "mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "commit=$(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "nofile=$(ulimit -Hn)"
  echo "nodes=$NODES"; echo "per_node=$PER_NODE"; echo "hold=$HOLD"; echo "tls=$TLS"; echo "mech=$MECH"
  echo "concurrency=$CONCURRENCY"
  echo "cluster=$CLUSTER"
} > "$RES/meta.txt"
mkdir -p "$(dirname "$OUT")"
python3 "$HERE/report.py" "$RES" > "$OUT"
log "wrote $OUT"
rm -rf "$HERE/last-run"; mkdir -p "$HERE/last-run"
cp "$RES"/*.json "$RES"/*.jsonl "$RES"/*.txt "$RES"/*.err "$HERE/last-run/" 2>/dev/null || true
