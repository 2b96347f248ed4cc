# Shell helpers shared by the benchmark scripts (load-tests/*/run.sh); sourced, not run.
# The caller defines log() and fills STARTED_PIDS with the processes it starts; WORK and
# KEEP_WORK say whether the work dir goes at the end.

stop_pid() {  # stop_pid PID: TERM, wait up to 20 s, then KILL (never by name)
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  log "PID $pid did not stop on SIGTERM in 20 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_started() {  # every process the script started, then the work dir unless kept
  local p
  for p in "${STARTED_PIDS[@]}"; do stop_pid "$p"; done
  if [ "${KEEP_WORK:-1}" = 0 ]; then rm -rf "$WORK"; fi
}

plain_node_toml() {  # plain_node_toml DIR PORT [C2S_LINE] [HTTP_PORT]: node.toml of one plain-TCP
  # node (c2s on 127.0.0.1:PORT, /metrics on HTTP_PORT, by default PORT-1, data in DIR/data,
  # no s2s: several nodes share the host, warnings only); C2S_LINE goes in [c2s]; more
  # sections may be appended.
  cat <<T
domains = ["localhost"]
data_dir = "$1/data"
[c2s]
listen = "127.0.0.1:$2"
tls_listen = ""
${3:-}
[s2s]
listen = ""
[http]
listen = "127.0.0.1:${4:-$(( $2 - 1 ))}"
[log]
level = "warn"
T
}

cluster_toml() {  # cluster_toml I N LINK_BASE SECRET: the [cluster] of node I of N on loopback
  # (node j's NodeLink on 127.0.0.1j:LINK_BASE+j, every node a member); more keys of
  # [cluster] may be appended.
  local members="" j
  for j in $(seq 1 "$2"); do members+="${members:+, }\"$j@127.0.0.1$j:$(( $3 + j ))\""; done
  cat <<T
[cluster]
node_id = $1
listen = "127.0.0.1$1:$(( $3 + $1 ))"
secret = "$4"
members = [$members]
T
}

json_field() {  # json_field FILE PYTHON-EXPR-ON-d: the expression on the JSON in FILE, or "?"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null || echo "?"
}

start_loopback_nodes() {  # start_loopback_nodes BIN DIR NODES PORT SECRET [EXTRA_TOML]
  # NODES nodes of BIN (a cluster when NODES > 1), each pinned to CPU 0 with the accounts of
  # DIR/users.txt: node i has config DIR/ni.toml (plain TCP, c2s on 127.0.0.1:PORT+10i,
  # /metrics one below, NodeLink on 127.0.0.1i:PORT+100+i, data in DIR/ni/data, then
  # EXTRA_TOML) and log DIR/ni.log. Sets NODE_PIDS and SERVERS (the generator's --server
  # flags); returns once every node listens and a cluster's shards have had time to elect.
  local bin=$1 d=$2 n=$3 port=$4 secret=$5 extra=${6:-} i p
  NODE_PIDS=(); SERVERS=""
  # A port in use would have the generator measure whatever listens there.
  for i in $(seq 1 "$n"); do
    for p in $(( port + 10 * i )) $(( port + 10 * i - 1 )); do
      port_free 127.0.0.1 "$p" || { echo "127.0.0.1:$p is in use" >&2; return 1; }
    done
    if [ "$n" -gt 1 ] && ! port_free "127.0.0.1$i" $(( port + 100 + i )); then
      echo "127.0.0.1$i:$(( port + 100 + i )) is in use" >&2; return 1
    fi
  done
  for i in $(seq 1 "$n"); do
    mkdir -p "$d/n$i/data"
    {
      plain_node_toml "$d/n$i" $(( port + 10 * i )) "require_tls = false"
      if [ "$n" -gt 1 ]; then cluster_toml "$i" "$n" $(( port + 100 )) "$secret"; fi
      printf '%s\n' "$extra"
    } > "$d/n$i.toml"
    "$bin" --config "$d/n$i.toml" user import --shared-salt "$d/users.txt" > /dev/null
  done
  for i in $(seq 1 "$n"); do
    taskset -c 0 "$bin" run --config "$d/n$i.toml" > "$d/n$i.log" 2>&1 &
    NODE_PIDS+=($!); STARTED_PIDS+=($!)
    SERVERS+=" --server 127.0.0.1:$(( port + 10 * i ))"
  done
  for i in $(seq 1 "$n"); do wait_port 127.0.0.1 $(( port + 10 * i )) 30; done
  if [ "$n" -gt 1 ]; then sleep 5; fi  # the shards elect their leaders
}

port_free() { ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {  # wait_port IP PORT SECS
  local i
  for i in $(seq 1 $(( $3 * 5 ))); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "nothing listening on $1:$2 after $3 s" >&2; return 1
}

release_binaries() {  # SB and LG (unless set): the release binaries, built first if BUILD=1
  SB=${SB:-$ROOT/target/release/switchboard}
  LG=${LG:-$ROOT/target/release/switchboard-loadgen}
  if [ "${BUILD:-0}" = 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p nodes -p switchboard-loadgen)
  fi
  [ -x "$SB" ] && [ -x "$LG" ] || { echo "missing $SB or $LG (drop --no-build)" >&2; exit 1; }
  ulimit -n "$(ulimit -Hn)"
}

cpu_busy() {  # cpu_busy N: "busy total" jiffies of CPU N (all processes) from /proc/stat
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

cpu_ticks() {  # cpu_ticks PID...: user+system ticks, summed (0 for a process that is gone)
  local p t=0
  for p in "$@"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done
  echo "$t"
}

three_node_ports_free() {  # the three-node layout of the cluster benchmarks, or exit
  # c2s and /metrics of nodes 1-3 and of the single node (4) on 127.0.0.1; NodeLinks on 127.0.0.1i.
  local port i
  for port in $(( C2S_BASE + 1 )) $(( C2S_BASE + 2 )) $(( C2S_BASE + 3 )) $(( C2S_BASE + 4 )) \
    $(( HTTP_BASE + 1 )) $(( HTTP_BASE + 2 )) $(( HTTP_BASE + 3 )) $(( HTTP_BASE + 4 )); do
    port_free 127.0.0.1 "$port" || { echo "127.0.0.1:$port is in use" >&2; exit 1; }
  done
  for i in 1 2 3; do
    port_free "127.0.0.1$i" $(( LINK_BASE + i )) || { echo "127.0.0.1$i:$(( LINK_BASE + i )) is in use" >&2; exit 1; }
  done
}

# ---------------------------------------------------------------- the three-node benchmarks
# (cluster/run.sh, replication/run.sh): nodes n1..n3 and "single" under WORK, results in RES.
# The caller sets C2S_BASE, HTTP_BASE, LINK_BASE, SECRET, SB, LG, SERVER_CPU, LOADGEN_CPU
# and calls results_dir first; NODE_TOML (every node) and CLUSTER_TOML (in [cluster]) are
# added to the configs.

results_dir() {  # results_dir NAME: WORK (as given, or a new /tmp/sb-NAME.XXXXXX that goes at the
  # end: KEEP_WORK=0) and RES=WORK/results; empty STARTED_PIDS (every process the script
  # starts, stopped by PID only), NODE_PIDS and HTTP_PORTS (the current setup's nodes and
  # their /metrics ports).
  KEEP_WORK=1
  if [ -z "$WORK" ]; then WORK=$(mktemp -d "/tmp/sb-$1.XXXXXX"); KEEP_WORK=0; fi
  mkdir -p "$WORK/results"
  RES="$WORK/results"
  STARTED_PIDS=(); NODE_PIDS=(); HTTP_PORTS=()
}

three_node_config() {  # three_node_config NAME C2S_PORT HTTP_PORT [NODE_ID]: WORK/NAME/server.toml
  local dir="$WORK/$1"
  mkdir -p "$dir/data"
  {
    plain_node_toml "$dir" "$2" "require_tls = false" "$3"
    if [ -n "${NODE_TOML:-}" ]; then printf '%s\n' "$NODE_TOML"; fi
    if [ -n "${4:-}" ]; then
      cluster_toml "$4" 3 "$LINK_BASE" "$SECRET"
      if [ -n "${CLUSTER_TOML:-}" ]; then printf '%s\n' "${CLUSTER_TOML%$'\n'}"; fi
    fi
  } > "$dir/server.toml"
}

start_node() {  # start_node NAME PORT HTTP_PORT: node NAME on SERVER_CPU, once it listens
  NO_COLOR=1 taskset -c "$SERVER_CPU" "$SB" run --config "$WORK/$1/server.toml" >>"$WORK/$1/server.log" 2>&1 &
  local pid=$!
  STARTED_PIDS+=("$pid"); NODE_PIDS+=("$pid"); HTTP_PORTS+=("$3")
  echo "$pid" > "$WORK/$1/pid"
  wait_port 127.0.0.1 "$2" 30
}

stop_nodes() {  # the current setup's nodes
  local p
  for p in "${NODE_PIDS[@]}"; do stop_pid "$p"; done
  NODE_PIDS=(); HTTP_PORTS=()
}

node_status() { "$SB" cluster status --config "$WORK/$1/server.toml"; }

formed() {  # every node of n1..n3 sees a leader and all three members up
  local i
  for i in 1 2 3; do
    node_status "n$i" 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = s.get("leader") is not None and all(s.get("members", {}).get(k) == "up" for k in ("1", "2", "3"))
sys.exit(0 if ok else 1)' || return 1
  done
}

wait_formed() {
  local i
  for i in $(seq 1 150); do formed && return 0; sleep 0.2; done
  echo "the cluster did not form in 30 s" >&2; node_status n1 >&2 || true; return 1
}

snapshot() {  # snapshot TAG: every node's status into RES
  local i
  for i in 1 2 3; do node_status "n$i" > "$RES/status-n$i-$1.json" 2>/dev/null || echo '{}' > "$RES/status-n$i-$1.json"; done
}

timed_lg() {  # timed_lg NAME TIMEOUT SERVERS ARGS...: the generator on LOADGEN_CPU against SERVERS
  # (plain TCP, SCRAM), its output in RES/NAME.{json,txt,err}, the load average before it in
  # RES/NAME.load. Sets LG_RC (its exit code) and LG_MEASURED, the JSON fields (no braces)
  # server_cpu_secs (NODE_PIDS), loadgen_cpu_secs, wall_secs, server_core_busy and
  # loadgen_core_busy (the share of each CPU used by anything over the run).
  local name=$1 limit=$2 servers=$3; shift 3
  local c0 c1 t0 t1 lg_cpu s0 s1 g0 g1
  c0=$(cpu_ticks "${NODE_PIDS[@]}"); t0=$(date +%s.%N)
  s0=$(cpu_busy "$SERVER_CPU"); g0=$(cpu_busy "$LOADGEN_CPU")
  cut -d' ' -f1-3 /proc/loadavg > "$RES/$name.load"
  # The generator's own CPU time (user + system) through bash's `time`: near the wall time
  # means the generator, not the server, set the pace.
  LG_RC=0
  TIMEFORMAT='%U %S'
  { time timeout "$limit" taskset -c "$LOADGEN_CPU" "$LG" --server "$servers" --tls none \
      --mech scram-sha-256 --json "$RES/$name.json" "$@" >"$RES/$name.txt" 2>"$RES/$name.err"
  } 2>"$RES/$name.time" || LG_RC=$?
  lg_cpu=$(awk '{print $1 + $2}' "$RES/$name.time")
  c1=$(cpu_ticks "${NODE_PIDS[@]}"); t1=$(date +%s.%N)
  s1=$(cpu_busy "$SERVER_CPU"); g1=$(cpu_busy "$LOADGEN_CPU")
  local busy='{ split(a, x, " "); split(b, y, " "); print (y[2] > x[2]) ? (y[1] - x[1]) / (y[2] - x[2]) : 0 }'
  LG_MEASURED="\"server_cpu_secs\": $(awk -v a="$c0" -v b="$c1" -v h="$(getconf CLK_TCK)" 'BEGIN{print (b-a)/h}'), \"loadgen_cpu_secs\": ${lg_cpu:-0}, \"wall_secs\": $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}'), \"server_core_busy\": $(awk -v a="$s0" -v b="$s1" "BEGIN $busy"), \"loadgen_core_busy\": $(awk -v a="$g0" -v b="$g1" "BEGIN $busy")"
  cat "$RES/$name.txt" >&2
  [ "$LG_RC" = 0 ] || log "$name: loadgen exited $LG_RC (see $RES/$name.err)"
}

machine_meta() {  # key=value lines of meta.txt on the machine and the tree (WORK's disk)
  echo "date=$(date -u +%FT%TZ)"
  echo "kernel=$(uname -r)"
  echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "cpus=$(nproc)"
  echo "mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "disk=$(df -T "$WORK" | awk 'NR==2{print $2}')"
  echo "commit=$(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "dirty=$(cd "$ROOT" && git status --porcelain -- nodes storage proto | awk '{print $2}' | tr '\n' ' ')"
}

keep_node_files() {  # keep_node_files NAME...: their server logs, and n1's and single's configs, into RES
  local n
  for n in "$@"; do cp "$WORK/$n/server.log" "$RES/server-$n.log" 2>/dev/null || true; done
  cp "$WORK/n1/server.toml" "$RES/n1.toml"; cp "$WORK/single/server.toml" "$RES/single.toml"
}
