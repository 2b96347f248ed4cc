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
# (`switchboard_c2s_sessions`), every process's RSS and the kernel's memory (MemFree, page
# cache, MemAvailable, Slab, TCP socket pages), and writes docs/scale-benchmarks.md with the
# figures at the peak.
#
# Independent nodes each get only their own users' accounts, so the run scales to a million
# sessions (53 nodes of 18,900). Two guards keep such a run from taking the machine down: it
# stops the generators when free memory (MemFree plus page cache) falls below
# --min-free-mib, and where netfilter tracks connections with a table too small for the run
# it exempts the nodes' c2s ports on loopback (raw-table NOTRACK, removed at the end; needs
# root and iptables) or refuses to start.
#
#   load-tests/scale/run.sh [--nodes 6] [--per-node 17000] [--hold-secs 60] [--tls none|starttls] [--cluster]
#   load-tests/scale/run.sh --nodes 53 --per-node 18900 --concurrency 20   # 1,001,700 sessions
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

NODES=6
PER_NODE=17000
HOLD=60
CLUSTER=0
TLS=none
CONCURRENCY=100
C2S_BASE=36300          # node i: 127.0.0.1:$((C2S_BASE + i))
LINK_BASE=36230         # node i's NodeLink (--cluster, at most 9 nodes): 127.0.0.2i:$((LINK_BASE + i))
HTTP_BASE=36400         # node i's /metrics: 127.0.0.1:$((HTTP_BASE + i))
MIN_FREE_MIB=1536
WORK=""
OUT="$ROOT/docs/scale-benchmarks.md"
BUILD=1

usage() {
  cat <<EOF
usage: $0 [options]
  --nodes K         nodes, one generator process each (default $NODES; at most 60, 9 with --cluster)
  --per-node N      sessions per node (default $PER_NODE, at most 19000: the open-file cap)
  --hold-secs T     how long each generator holds its sessions after its logins (default $HOLD)
  --tls MODE        none (SCRAM-SHA-256 over plain TCP) or starttls (PLAIN over TLS) (default $TLS)
  --concurrency C   logins in progress per generator (default $CONCURRENCY)
  --cluster         one cluster of the nodes instead of independent nodes
  --min-free-mib M  stop the generators when MemFree + page cache falls below M MiB (default $MIN_FREE_MIB)
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
    --min-free-mib) MIN_FREE_MIB=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) usage >&2; exit 2;;
  esac
done
case "$TLS" in none) MECH=scram-sha-256; REQUIRE_TLS=false;; starttls) MECH=plain; REQUIRE_TLS=true;;
  *) echo "--tls must be none or starttls" >&2; exit 2;; esac
MAX_NODES=60; [ "$CLUSTER" = 1 ] && MAX_NODES=9
[ "$NODES" -ge 1 ] && [ "$NODES" -le "$MAX_NODES" ] || { echo "--nodes must be 1..$MAX_NODES" >&2; exit 2; }
[ "$MIN_FREE_MIB" -ge 0 ] 2>/dev/null || { echo "--min-free-mib must be a number" >&2; exit 2; }
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
NOTRACK_RULES=()
cleanup() {
  stop_started
  local rule
  for rule in "${NOTRACK_RULES[@]}"; do
    # shellcheck disable=SC2086 # a rule is its iptables words
    iptables -t raw -D $rule 2>/dev/null || log "could not remove iptables -t raw rule: $rule"
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- kernel limits
# Each loopback connection is one conntrack entry while netfilter tracks connections (Docker
# loads it); a full table drops new connections' packets, which looks like a server that
# stopped accepting.
CT_MAX=/proc/sys/net/netfilter/nf_conntrack_max
if [ -r "$CT_MAX" ] && [ "$(cat "$CT_MAX")" -lt $(( TOTAL + 20000 )) ]; then
  if [ "$(id -u)" = 0 ] && command -v iptables >/dev/null 2>&1; then
    PORTS="$(( C2S_BASE + 1 )):$(( C2S_BASE + NODES ))"
    for rule in "OUTPUT -o lo -p tcp --dport $PORTS -j NOTRACK" "OUTPUT -o lo -p tcp --sport $PORTS -j NOTRACK" \
      "PREROUTING -i lo -p tcp --dport $PORTS -j NOTRACK" "PREROUTING -i lo -p tcp --sport $PORTS -j NOTRACK"; do
      # shellcheck disable=SC2086
      iptables -t raw -I $rule && NOTRACK_RULES+=("$rule")
    done
    log "conntrack table ($(cat "$CT_MAX")) < $TOTAL connections: c2s ports $PORTS on lo exempted (NOTRACK)"
  else
    echo "net.netfilter.nf_conntrack_max is $(cat "$CT_MAX"), below the $TOTAL connections of this run;" \
      "raise it or run as root with iptables (the script then exempts the c2s ports on lo)" >&2
    exit 1
  fi
fi

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
  # Each node checks logins against its own account store, created offline with keys derived
  # once for the common password (load-test population): a cluster's nodes hold every
  # account, an independent node only the users its generator logs in.
  if [ "$CLUSTER" = 1 ]; then first=1 count=$TOTAL; else first=$(( (i - 1) * PER_NODE + 1 )) count=$PER_NODE; fi
  log "provisioning $count accounts for n$i"
  FIRST=$first SHARED_SALT=1 "$ROOT/load-tests/provision.sh" "$count" "$d/server.toml" "$SB" > "$d/provision.log" 2>&1
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
    # MemAvailable counts socket inodes and dentries (SReclaimable) as reclaimable, which
    # they are not while the sockets are open: MemFree plus page cache is the honest figure.
    "mem_free_kib": mem["MemFree"], "file_kib": mem["Active(file)"] + mem["Inactive(file)"],
    "slab_unreclaimable_kib": mem["SUnreclaim"],
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
  free_mib=$(tail -n 1 "$RES/samples.jsonl" | python3 -c '
import json, sys
s = json.load(sys.stdin)
free = (s["mem_free_kib"] + s["file_kib"]) // 1024
print("sessions", sum(s["sessions"]), "free + page cache MiB", free, file=sys.stderr)
print(free)' || echo "")
  if [ -n "$free_mib" ] && [ "$free_mib" -lt "$MIN_FREE_MIB" ]; then
    log "free memory $free_mib MiB < --min-free-mib $MIN_FREE_MIB: stopping the generators"
    echo "aborted=free memory $free_mib MiB below $MIN_FREE_MIB MiB" >> "$RES/abort.txt"
    for p in "${GEN_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    break
  fi
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
  echo "notrack=${#NOTRACK_RULES[@]}"
  cat "$RES/abort.txt" 2>/dev/null || true
} > "$RES/meta.txt"
mkdir -p "$(dirname "$OUT")"
python3 "$HERE/report.py" "$RES" > "$OUT"
log "wrote $OUT"
rm -rf "$HERE/last-run"; mkdir -p "$HERE/last-run"
cp "$RES"/*.json "$RES"/*.jsonl "$RES"/*.txt "$RES"/*.err "$HERE/last-run/" 2>/dev/null || true
