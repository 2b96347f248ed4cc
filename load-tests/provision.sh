#!/usr/bin/env bash
# Create the load-test accounts user1..userN with the switchboard CLI, one process per account.
#
#   load-tests/provision.sh N CFG [BIN]
#
# CFG is the node's config file; BIN defaults to target/debug/switchboard. Works whether or not
# the node is running (admin socket, or the database directly). Existing accounts are skipped,
# so the script can be re-run to extend a range. Environment: FIRST (1), PREFIX (user),
# DOMAIN (localhost), PASSWORD (secret) must match the loadgen's --first, --user-prefix,
# --domain and --password.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 N CFG [BIN]" >&2
    exit 2
fi
n=$1
cfg=$2
bin=${3:-target/debug/switchboard}
first=${FIRST:-1}
prefix=${PREFIX:-user}
domain=${DOMAIN:-localhost}
password=${PASSWORD:-secret}

case $n in '' | *[!0-9]*) echo "$0: N must be a number" >&2; exit 2 ;; esac
[ -f "$cfg" ] || { echo "$0: no config file $cfg" >&2; exit 2; }
[ -x "$bin" ] || { echo "$0: no switchboard binary at $bin (cargo build -p nodes)" >&2; exit 2; }

created=0
existing=0
start=$(date +%s.%N)
last=$((first + n - 1))
for ((i = first; i <= last; i++)); do
    if err=$("$bin" user add "$prefix$i@$domain" --password "$password" --config "$cfg" 2>&1 >/dev/null); then
        created=$((created + 1))
    elif [[ $err == *"already exists"* ]]; then
        existing=$((existing + 1))
    else
        echo "$0: $prefix$i@$domain: $err" >&2
        exit 1
    fi
    if (( (i - first + 1) % 1000 == 0 )); then
        echo "  $((i - first + 1))/$n" >&2
    fi
done
end=$(date +%s.%N)
echo "$created created, $existing already existed ($prefix$first..$prefix$last@$domain)" \
    "in $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }') s"
