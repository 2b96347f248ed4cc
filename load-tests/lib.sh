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

plain_node_toml() {  # plain_node_toml DIR PORT [C2S_LINE]: node.toml of one plain-TCP node
  # (c2s on 127.0.0.1:PORT, /metrics on PORT-1, data in DIR/data, no s2s, warnings only);
  # C2S_LINE goes in [c2s]; more sections may be appended.
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
listen = "127.0.0.1:$(( $2 - 1 ))"
[log]
level = "warn"
T
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
