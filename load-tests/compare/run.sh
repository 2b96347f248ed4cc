#!/usr/bin/env bash
# Compare Switchboard with Prosody and ejabberd (Debian packages) on this machine, loopback only.
# See load-tests/compare/README.md. Writes docs/benchmarks.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

IDLE_USERS=2000
CHAT_USERS=200
CHAT_MESSAGES=100
CHAT_INTERVAL_MS=100
CHAT_DURATION=60
HOLD_SECS=10
STEP_USERS=200
STEP_RATES=1000,2000,3000,4000,6000,8000,12000,16000,24000,32000,48000
STEP_SECS=5
STEP_DRAIN=5
# The ceiling run: stepped chat with few users sending a lot each. Every message a user has
# due goes out in one write and a read takes many, so the generator needs a few µs per
# message instead of 25: it shows each server's own limit, which the many-user steps above
# cannot once the generator's core is full.
CEIL_USERS=20
CEIL_RATES=2000,4000,8000,16000,32000,48000,64000,80000,96000,128000,160000,200000
CEILING=1
# The mixed mobile profile (`switchboard-loadgen mixed`), sped up: each user sends a message
# and changes presence every MIXED_EVERY seconds and reconnects every MIXED_RECONNECT seconds
# (the realistic defaults are 600 s each), so MIXED_USERS users offer the load of
# MIXED_USERS x 600 / MIXED_EVERY users at the realistic pace.
MIXED_USERS=1000
MIXED_EVERY=10
MIXED_RECONNECT=30
MIXED_SECS=60
MIXED=1
# The carrier shape (issue 22): many users, each sending now and then, so nearly every message
# costs the server its own read and its own write. Stepped chat with CARRIER_USERS users over
# STARTTLS and over plain TCP, and presence fan-out (CARRIER_PRESENCE_USERS users in groups of
# CARRIER_GROUP mutual contacts, one presence change reaching CARRIER_GROUP - 1 contacts).
CARRIER_USERS=10000
# The first step follows thousands of logins: a warm-up, not counted for the latency cliff.
CARRIER_RATES=1000,2000,4000,8000,12000,16000,20000,24000,28000,32000,40000,48000
CARRIER_PRESENCE_USERS=5000
CARRIER_GROUP=21
CARRIER_PRESENCE_RATES=50,100,200,400,600,800,1000,1200,1600,2000,2400,3200
CARRIER=1
# --carrier-only: run the carrier scenarios alone and take every other scenario's results
# from the previous run (load-tests/compare/last-run); the report says which run is which.
CARRIER_ONLY=0
SERVERS="switchboard prosody ejabberd"
WORK=""
OUT="$ROOT/docs/benchmarks.md"
SERVER_CPU=0
LOADGEN_CPU=1
PASSWORD=secret
ITERATIONS=4096

usage() {
  cat <<EOF
usage: $0 [options]
  -n, --idle-users N      idle sessions per server (default $IDLE_USERS)
  -c, --chat-users N      chat users (default $CHAT_USERS)
  --messages M            chat messages per user (default $CHAT_MESSAGES)
  --interval-ms I         ms between two messages of one user (default $CHAT_INTERVAL_MS)
  --duration-secs T       upper bound of the chat exchange (default $CHAT_DURATION)
  --hold-secs T           idle hold (default $HOLD_SECS)
  --step-users N          stepped-chat users (default $STEP_USERS)
  --step-rates LIST       stepped-chat aggregate messages/s per step (default $STEP_RATES)
  --step-secs T           stepped-chat step length (default $STEP_SECS)
  --step-drain-secs T     stepped-chat longest drain after each step (default $STEP_DRAIN)
  --no-steps              skip the stepped chat
  --ceiling-users N       ceiling run: stepped chat with few heavy users (default $CEIL_USERS)
  --ceiling-rates LIST    ceiling run's aggregate messages/s per step (default $CEIL_RATES)
  --no-ceiling            skip the ceiling run
  --mixed-users N         users of the mixed profile (default $MIXED_USERS)
  --mixed-every T,R       mixed: a message and a presence change every T s, a reconnect every R s
                          per user (default $MIXED_EVERY,$MIXED_RECONNECT)
  --mixed-secs T          mixed: length of the run (default $MIXED_SECS)
  --no-mixed              skip the mixed profile
  --carrier-users N       carrier shape: stepped chat users, STARTTLS and plain TCP (default $CARRIER_USERS)
  --carrier-rates LIST    carrier shape: aggregate messages/s per step (default $CARRIER_RATES)
  --carrier-presence-users N  carrier shape: presence fan-out users (default $CARRIER_PRESENCE_USERS)
  --carrier-group K       carrier shape: mutual contacts per group, K-1 each (default $CARRIER_GROUP)
  --carrier-presence-rates LIST  carrier shape: presence changes/s per step (default $CARRIER_PRESENCE_RATES)
  --no-carrier            skip the carrier shape
  --carrier-only          only the carrier shape; the other sections come from last-run/
  --servers "A B"         subset of: switchboard prosody ejabberd (default: all)
  --work DIR              work dir (default: a new mktemp dir, removed at the end)
  --out FILE              report (default docs/benchmarks.md)
  --no-install            do not apt-get install missing packages
  --build                 cargo build --release first (default: only if the binaries are missing)
EOF
}
INSTALL=1
BUILD=0
STEPS=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--idle-users) IDLE_USERS=$2; shift 2;;
    -c|--chat-users) CHAT_USERS=$2; shift 2;;
    --messages) CHAT_MESSAGES=$2; shift 2;;
    --interval-ms) CHAT_INTERVAL_MS=$2; shift 2;;
    --duration-secs) CHAT_DURATION=$2; shift 2;;
    --hold-secs) HOLD_SECS=$2; shift 2;;
    --step-users) STEP_USERS=$2; shift 2;;
    --step-rates) STEP_RATES=$2; shift 2;;
    --step-secs) STEP_SECS=$2; shift 2;;
    --step-drain-secs) STEP_DRAIN=$2; shift 2;;
    --no-steps) STEPS=0; shift;;
    --ceiling-users) CEIL_USERS=$2; shift 2;;
    --ceiling-rates) CEIL_RATES=$2; shift 2;;
    --no-ceiling) CEILING=0; shift;;
    --mixed-users) MIXED_USERS=$2; shift 2;;
    --mixed-every) MIXED_EVERY=${2%,*}; MIXED_RECONNECT=${2#*,}; shift 2;;
    --mixed-secs) MIXED_SECS=$2; shift 2;;
    --no-mixed) MIXED=0; shift;;
    --carrier-users) CARRIER_USERS=$2; shift 2;;
    --carrier-rates) CARRIER_RATES=$2; shift 2;;
    --carrier-presence-users) CARRIER_PRESENCE_USERS=$2; shift 2;;
    --carrier-group) CARRIER_GROUP=$2; shift 2;;
    --carrier-presence-rates) CARRIER_PRESENCE_RATES=$2; shift 2;;
    --no-carrier) CARRIER=0; shift;;
    --carrier-only) CARRIER_ONLY=1; shift;;
    --servers) SERVERS=$2; shift 2;;
    --work) WORK=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-install) INSTALL=0; shift;;
    --build) BUILD=1; shift;;
    -h|--help) usage; exit 0;;
    *) usage >&2; exit 2;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (installs packages, runs servers as their users)" >&2; exit 1; }
if [ "$CARRIER_ONLY" = 1 ]; then
  [ -f "$HERE/last-run/meta.txt" ] || { echo "--carrier-only needs a previous run in $HERE/last-run" >&2; exit 1; }
  CARRIER=1; STEPS=0; CEILING=0; MIXED=0; ACCOUNTS=0
else
  ACCOUNTS=$(( IDLE_USERS > CHAT_USERS ? IDLE_USERS : CHAT_USERS ))
fi
[ "$STEPS" = 1 ] && [ "$STEP_USERS" -gt "$ACCOUNTS" ] && ACCOUNTS=$STEP_USERS
[ "$CEILING" = 1 ] && [ "$CEIL_USERS" -gt "$ACCOUNTS" ] && ACCOUNTS=$CEIL_USERS
[ "$MIXED" = 1 ] && [ "$MIXED_USERS" -gt "$ACCOUNTS" ] && ACCOUNTS=$MIXED_USERS
[ "$CARRIER" = 1 ] && [ "$CARRIER_USERS" -gt "$ACCOUNTS" ] && ACCOUNTS=$CARRIER_USERS
[ "$CARRIER" = 1 ] && [ "$CARRIER_PRESENCE_USERS" -gt "$ACCOUNTS" ] && ACCOUNTS=$CARRIER_PRESENCE_USERS

log() { echo "[compare $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- work dir, cleanup
KEEP_WORK=1
if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/sb-compare.XXXXXX); KEEP_WORK=0; fi
mkdir -p "$WORK/results"
chmod 755 "$WORK"
RES="$WORK/results"
# Provisioning times go with the run that provisioned: a carrier-only run keeps the previous
# run's figures for the other scenarios.
PROV_FILE="$RES/provision.txt"
if [ "$CARRIER_ONLY" = 1 ]; then
  cp -r "$HERE/last-run"/. "$RES/"
  rm -f "$RES"/*-carrier*.* "$RES/meta-carrier.txt" "$RES/provision-carrier.txt"
  PROV_FILE="$RES/provision-carrier.txt"
fi
STARTED_PIDS=()        # server processes this script started (killed by PID only)
EPMD_WAS_RUNNING=0
pgrep -x epmd >/dev/null && EPMD_WAS_RUNNING=1

# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"
cleanup() {
  stop_started
  # epmd is started by the Erlang VM we launched; stop it only if it was not running before.
  if [ "$EPMD_WAS_RUNNING" = 0 ] && command -v epmd >/dev/null && pgrep -x epmd >/dev/null; then
    epmd -kill >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

steal_ticks() { awk '$1 == "cpu" { print $9 }' /proc/stat; }

# ---------------------------------------------------------------- packages
install_packages() {
  local missing=()
  command -v prosody >/dev/null || missing+=(prosody)
  command -v ejabberdctl >/dev/null || missing+=(ejabberd)
  [ ${#missing[@]} = 0 ] && return 0
  [ "$INSTALL" = 1 ] || { echo "missing: ${missing[*]}" >&2; exit 1; }
  # Keep the packages' own services from starting: policy-rc.d (invoke-rc.d, no systemd) ...
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$WORK/apt.log" 2>&1
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
}
stop_system_services() {
  # ... and with systemd, stop and disable them (they would hold 5222 on all addresses).
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prosody ejabberd >/dev/null 2>&1 || true
  else
    local s
    for s in prosody ejabberd; do
      if service "$s" status >/dev/null 2>&1; then log "stopping system service $s"; service "$s" stop || true; fi
    done
  fi
}
install_packages
stop_system_services

# ---------------------------------------------------------------- binaries
SB="$ROOT/target/release/switchboard"
LG="$ROOT/target/release/switchboard-loadgen"
if [ "$BUILD" = 1 ] || [ ! -x "$SB" ] || [ ! -x "$LG" ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p switchboard-loadgen -p nodes)
fi
ulimit -n "$(ulimit -Hn)"
NEED_FDS=$(( ACCOUNTS + 200 ))
[ "$(ulimit -n)" -ge "$NEED_FDS" ] || { echo "open-file limit $(ulimit -n) < $NEED_FDS" >&2; exit 1; }

# ---------------------------------------------------------------- certificate
mkdir -p "$WORK/cert"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost" \
  -keyout "$WORK/cert/localhost.key" -out "$WORK/cert/localhost.crt" >/dev/null 2>&1

# ---------------------------------------------------------------- per-server setup/start
fill() { sed "s|@WORK@|$WORK|g" "$1" > "$2"; }
PROV_SECS=()

setup_switchboard() {
  mkdir -p "$WORK/switchboard/data"
  fill "$HERE/switchboard.toml.in" "$WORK/switchboard/server.toml"
  local t0=$(date +%s.%N)
  FIRST=1 "$ROOT/load-tests/provision.sh" "$ACCOUNTS" "$WORK/switchboard/server.toml" "$SB" >"$WORK/switchboard/provision.log" 2>&1 || return 1
  echo "switchboard $(echo "$(date +%s.%N) - $t0" | bc)" >> "$PROV_FILE"
}
start_switchboard() {
  taskset -c "$SERVER_CPU" "$SB" run --config "$WORK/switchboard/server.toml" >>"$WORK/switchboard/server.log" 2>&1 &
  SERVER_PID=$!; STARTED_PIDS+=("$SERVER_PID")
  wait_port 127.0.0.1 5222 30
}

setup_prosody() {
  mkdir -p "$WORK/prosody/data" "$WORK/prosody/certs"
  fill "$HERE/prosody.cfg.lua.in" "$WORK/prosody/prosody.cfg.lua"
  cp "$WORK/cert/localhost.crt" "$WORK/cert/localhost.key" "$WORK/prosody/certs/"
  local t0=$(date +%s.%N)
  python3 "$HERE/prosody_accounts.py" "$WORK/prosody/data" localhost 1 "$ACCOUNTS" "$PASSWORD" "$ITERATIONS" || return 1
  echo "prosody $(echo "$(date +%s.%N) - $t0" | bc)" >> "$PROV_FILE"
  chown -R prosody: "$WORK/prosody"; chmod 700 "$WORK/prosody/data"
}
start_prosody() {
  # setpriv execs (no fork), so $! is Prosody's own (single) process.
  taskset -c "$SERVER_CPU" setpriv --reuid=prosody --regid=prosody --init-groups \
    prosody --config "$WORK/prosody/prosody.cfg.lua" -F >>"$WORK/prosody/stdout.log" 2>&1 &
  SERVER_PID=$!; STARTED_PIDS+=("$SERVER_PID")
  wait_port 127.0.0.2 5222 30
}

EJ_NODE=sbcompare@localhost
setup_ejabberd() {
  mkdir -p "$WORK/ejabberd/spool" "$WORK/ejabberd/logs"
  fill "$HERE/ejabberd.yml.in" "$WORK/ejabberd/ejabberd.yml"
  cat "$WORK/cert/localhost.key" "$WORK/cert/localhost.crt" > "$WORK/ejabberd/localhost.pem"
  # Our own ejabberdctl.cfg: Debian's sets EJABBERD_CONFIG_PATH=/etc/ejabberd/ejabberd.yml, which
  # would override --config. Erlang distribution on loopback, fixed port, no epmd.
  cat > "$WORK/ejabberd/ejabberdctl.cfg" <<EOF
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH=$WORK/ejabberd/ejabberd.pid
EJABBERD_CONFIG_PATH=$WORK/ejabberd/ejabberd.yml
ERL_MAX_PORTS=65536
ERL_PROCESSES=1000000
INET_DIST_INTERFACE=127.0.0.1
ERL_DIST_PORT=5299
EOF
  chown -R ejabberd: "$WORK/ejabberd"; chmod 600 "$WORK/ejabberd/localhost.pem"
  start_ejabberd
  wait_port 127.0.0.3 5280 60
  local t0=$(date +%s.%N)
  python3 "$HERE/ejabberd_register.py" 127.0.0.3:5280 localhost 1 "$ACCOUNTS" "$PASSWORD" || { stop_server; return 1; }
  echo "ejabberd $(echo "$(date +%s.%N) - $t0" | bc)" >> "$PROV_FILE"
  stop_server
}
start_ejabberd() {
  # Started as the ejabberd user through setpriv: run as root, ejabberdctl would `su` to it, and
  # su's PAM session resets the open-file limit to 1024 ("Failed TCP accept: too many open
  # files" past ~1,000 sessions). The VM is beam.smp (found by node name below). The affinity
  # set by taskset is inherited, so the VM sees one CPU and starts one scheduler.
  HOME=/var/lib/ejabberd taskset -c "$SERVER_CPU" \
    setpriv --reuid=ejabberd --regid=ejabberd --init-groups ejabberdctl --ctl-config "$WORK/ejabberd/ejabberdctl.cfg" --config "$WORK/ejabberd/ejabberd.yml" \
    --spool "$WORK/ejabberd/spool" --logs "$WORK/ejabberd/logs" --node "$EJ_NODE" foreground \
    >>"$WORK/ejabberd/stdout.log" 2>&1 &
  STARTED_PIDS+=("$!")
  local i p; SERVER_PID=""
  for i in $(seq 1 150); do
    for p in $(pgrep -x beam.smp || true); do
      tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "-sname $EJ_NODE " && SERVER_PID=$p
    done
    [ -n "$SERVER_PID" ] && break; sleep 0.2
  done
  [ -n "$SERVER_PID" ] || { echo "ejabberd's beam.smp did not appear" >&2; return 1; }
  STARTED_PIDS+=("$SERVER_PID")
  wait_port 127.0.0.3 5222 60 || return 1
}
stop_server() {
  stop_pid "$SERVER_PID"
  sleep 1
}

server_addr() { case $1 in switchboard) echo 127.0.0.1;; prosody) echo 127.0.0.2;; ejabberd) echo 127.0.0.3;; esac; }

# ---------------------------------------------------------------- scenarios
run_lg() {  # run_lg SERVER SCENARIO ARGS...
  local s=$1 sc=$2; shift 2
  local t0 c0 c1 t1 rc=0
  c0=$(cpu_ticks "$SERVER_PID"); t0=$(date +%s.%N); st0=$(steal_ticks)
  log "$s: $sc"
  timeout 600 taskset -c "$LOADGEN_CPU" "$LG" --server "$(server_addr "$s"):5222" --domain localhost \
    --json "$RES/$s-$sc.json" "$@" >"$RES/$s-$sc.txt" 2>"$RES/$s-$sc.err" || rc=$?
  c1=$(cpu_ticks "$SERVER_PID"); t1=$(date +%s.%N); st1=$(steal_ticks)
  # Steal: time the hypervisor ran someone else on our CPUs (both), which no process sees.
  # awk, not bc: JSON numbers need a digit before the point.
  awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v s0="$st0" -v s1="$st1" -v hz="$(getconf CLK_TCK)" -v rc="$rc" \
    'BEGIN { printf "{\"server_cpu_secs\": %.3f, \"wall_secs\": %.3f, \"steal_secs\": %.3f, \"rc\": %d}\n", (c1 - c0) / hz, t1 - t0, (s1 - s0) / hz, rc }' \
    > "$RES/$s-$sc.cpu.json"
  cat "$RES/$s-$sc.txt" >&2
  [ "$rc" = 0 ] || log "$s $sc: loadgen exited $rc (see $RES/$s-$sc.err)"
}

# Stepped chat on a fresh server, the same steps against every server; it stops after two
# steps in a row that are not sustained (p99 >= 100 ms, loss, or under 90 % of the target
# offered).
stepped_chat() {  # stepped_chat SERVER SCENARIO USERS RATES [LOADGEN OPTIONS...]
  local s=$1 sc=$2 users=$3 rates=$4; shift 4
  if "start_$s"; then
    run_lg "$s" "$sc" -n "$users" --server-pid "$SERVER_PID" "$@" chat --rates "$rates" \
      --step-secs "$STEP_SECS" --drain-secs "$STEP_DRAIN" --p99-limit-ms 100 --stop-after 2
    stop_server
  else log "$s: start failed"; echo "$s start" >> "$RES/failed.txt"; stop_server || true; fi
}

# The carrier shape's login over plain TCP: Switchboard offers PLAIN over TLS only, the others
# are set to offer it on plain TCP too (the login is outside the measured steps).
plain_tcp_mech() { case $1 in switchboard) echo scram-sha-256;; *) echo plain;; esac; }

carrier_runs() {  # carrier_runs SERVER
  local s=$1
  stepped_chat "$s" carrier "$CARRIER_USERS" "$CARRIER_RATES"
  stepped_chat "$s" carrierplain "$CARRIER_USERS" "$CARRIER_RATES" --tls none --mech "$(plain_tcp_mech "$s")"
  if "start_$s"; then
    # The groups' subscriptions go through the protocol (each member subscribes to the others
    # and approves their requests), the same way on every server.
    run_lg "$s" carrierpresence -n "$CARRIER_PRESENCE_USERS" --server-pid "$SERVER_PID" pep --event presence \
      --group "$CARRIER_GROUP" --setup-secs 400 --rates "$CARRIER_PRESENCE_RATES" \
      --step-secs "$STEP_SECS" --drain-secs "$STEP_DRAIN" --p99-limit-ms 100 --stop-after 2
    stop_server
  else log "$s: start failed"; echo "$s start" >> "$RES/failed.txt"; stop_server || true; fi
}

for s in $SERVERS; do
  log "== $s: setup"
  if ! "setup_$s"; then log "$s: setup failed"; echo "$s setup" >> "$RES/failed.txt"; continue; fi
  if [ "$CARRIER_ONLY" = 1 ]; then carrier_runs "$s"; continue; fi
  # A fresh server for each scenario (the allocator keeps freed memory).
  if "start_$s"; then
    run_lg "$s" idle -n "$IDLE_USERS" --server-pid "$SERVER_PID" idle --hold-secs "$HOLD_SECS"
    stop_server
  else log "$s: start failed"; echo "$s start" >> "$RES/failed.txt"; stop_server || true; continue; fi
  if "start_$s"; then
    run_lg "$s" chat -n "$CHAT_USERS" --server-pid "$SERVER_PID" chat --messages "$CHAT_MESSAGES" \
      --interval-ms "$CHAT_INTERVAL_MS" --duration-secs "$CHAT_DURATION"
    stop_server
  else log "$s: start failed"; echo "$s start" >> "$RES/failed.txt"; stop_server || true; fi
  if [ "$STEPS" = 1 ]; then stepped_chat "$s" chatsteps "$STEP_USERS" "$STEP_RATES"; fi
  if [ "$CEILING" = 1 ]; then stepped_chat "$s" chatceiling "$CEIL_USERS" "$CEIL_RATES"; fi
  if [ "$MIXED" = 1 ]; then
    if "start_$s"; then
      run_lg "$s" mixed -n "$MIXED_USERS" --server-pid "$SERVER_PID" mixed \
        --message-interval-secs "$MIXED_EVERY" --presence-interval-secs "$MIXED_EVERY" \
        --reconnect-interval-secs "$MIXED_RECONNECT" --duration-secs "$MIXED_SECS" --drain-secs 10
      stop_server
    else log "$s: start failed"; echo "$s start" >> "$RES/failed.txt"; stop_server || true; fi
  fi
  if [ "$CARRIER" = 1 ]; then carrier_runs "$s"; fi
done

# ---------------------------------------------------------------- report
servers_meta() {  # the machine, the three servers' versions and the binaries compared
  echo "kernel=$(uname -r)"
  echo "os=Debian $(cat /etc/debian_version)"
  echo "cpu=$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "cpus=$(nproc)"
  echo "mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "prosody=$(dpkg-query -W -f '${Version}' prosody 2>/dev/null)"
  echo "ejabberd=$(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null)"
  echo "erlang=$(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null)"
  echo "lua=$(dpkg-query -W -f '${Version}' lua5.4 2>/dev/null)"
  echo "switchboard=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- . ':!load-tests/compare' ':!docs/benchmarks.md' || echo '+dirty')"
  echo "switchboard_bin=$(date -u -r "$SB" +%FT%TZ)"
  echo "loadgen_bin=$(date -u -r "$LG" +%FT%TZ)"
}
if [ "$CARRIER" = 1 ]; then
  {
    echo "date=$(date -u +%FT%TZ)"
    servers_meta
    echo "servers=$SERVERS"; echo "accounts=$ACCOUNTS"
    echo "carrier_users=$CARRIER_USERS"; echo "carrier_rates=$CARRIER_RATES"
    echo "carrier_presence_users=$CARRIER_PRESENCE_USERS"; echo "carrier_group=$CARRIER_GROUP"
    echo "carrier_presence_rates=$CARRIER_PRESENCE_RATES"
    echo "step_secs=$STEP_SECS"; echo "step_drain=$STEP_DRAIN"
    echo "carrier_only=$CARRIER_ONLY"
  } > "$RES/meta-carrier.txt"
fi
[ "$CARRIER_ONLY" = 1 ] || {
  echo "date=$(date -u +%FT%TZ)"
  servers_meta
  echo "idle_users=$IDLE_USERS"; echo "chat_users=$CHAT_USERS"; echo "chat_messages=$CHAT_MESSAGES"
  echo "chat_interval_ms=$CHAT_INTERVAL_MS"; echo "chat_duration=$CHAT_DURATION"; echo "hold_secs=$HOLD_SECS"
  echo "servers=$SERVERS"; echo "accounts=$ACCOUNTS"; echo "iterations=$ITERATIONS"
  echo "steps=$STEPS"; echo "step_users=$STEP_USERS"; echo "step_rates=$STEP_RATES"
  echo "step_secs=$STEP_SECS"; echo "step_drain=$STEP_DRAIN"
  echo "ceiling=$CEILING"; echo "ceiling_users=$CEIL_USERS"; echo "ceiling_rates=$CEIL_RATES"
  echo "mixed=$MIXED"; echo "mixed_users=$MIXED_USERS"; echo "mixed_every=$MIXED_EVERY"
  echo "mixed_reconnect=$MIXED_RECONNECT"; echo "mixed_secs=$MIXED_SECS"
} > "$RES/meta.txt"
mkdir -p "$(dirname "$OUT")"
# The sections written by hand (other scripts' figures) survive the rewrite: they go back in
# before the raw output.
HAND=$(sed -n '/^<!-- hand-written:begin/,/^<!-- hand-written:end/p' "$OUT" 2>/dev/null || true)
python3 "$HERE/report.py" "$RES" "$HERE" "$(dirname "$OUT")" > "$OUT.new"
if [ -n "$HAND" ]; then
  HAND="$HAND" python3 - "$OUT.new" <<'PY'
import os, sys
path = sys.argv[1]
text = open(path).read()
at = text.find("## Raw output")
at = len(text) if at < 0 else at
open(path, "w").write(text[:at] + os.environ["HAND"] + "\n\n" + text[at:])
PY
fi
mv "$OUT.new" "$OUT"
log "wrote $OUT"
if [ "$KEEP_WORK" = 0 ]; then
  rm -rf "$HERE/last-run"; mkdir -p "$HERE/last-run"; cp -r "$RES"/. "$HERE/last-run/"
  log "raw results copied to $HERE/last-run"
fi
