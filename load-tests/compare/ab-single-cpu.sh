#!/usr/bin/env bash
# A/B of Switchboard builds (usage: ab-single-cpu.sh TAG... for /tmp/sb-head/switchboard-TAG): one node pinned to CPU 0, the generator on CPU 1, stepped chat (STARTTLS,
# SASL PLAIN, 200 users), old binary vs new. Loopback only, bounded.
set -euo pipefail
LG=/work/main/target/release/switchboard-loadgen
RATES=${RATES:-16000,20000,24000,28000,32000,36000,40000,48000}
for tag in "$@"; do
  bin=/tmp/sb-head/switchboard-$tag
  d=/tmp/ab/$tag; rm -rf $d; mkdir -p $d/data
  cat > $d/server.toml <<T
domains = ["localhost"]
data_dir = "$d/data"
[c2s]
listen = "127.0.0.1:5399"
tls_listen = ""
[s2s]
listen = ""
[http]
listen = "127.0.0.1:5398"
[log]
level = "warn"
[limits]
T
  sed -i '/^\[limits\]$/d' $d/server.toml
  for i in $(seq 1 200); do echo "user$i@localhost secret"; done > $d/users.txt
  $bin --config $d/server.toml user import $d/users.txt > /dev/null
  taskset -c 0 $bin run --config $d/server.toml > $d/server.log 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/5399) 2>/dev/null && break; sleep 0.2; done
  timeout 300 taskset -c 1 $LG --server 127.0.0.1:5399 --domain localhost --json $d/steps.json \
    -n 200 chat --rates "$RATES" --step-secs 5 --drain-secs 5 \
    --p99-limit-ms 100 --stop-after 2 > $d/steps.txt 2> $d/steps.err || echo "loadgen exit $?"
  kill $pid; wait $pid 2>/dev/null || true
  echo "== $tag"; tail -25 $d/steps.txt
done
