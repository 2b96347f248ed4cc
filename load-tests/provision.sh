#!/usr/bin/env bash
# Create the load-test accounts user1..userN with `switchboard user import`.
#
#   load-tests/provision.sh N CFG [BIN]
#
# CFG is the node's config file; BIN defaults to target/debug/switchboard. Works whether or not
# the node is running (admin socket, or the database directly). Existing accounts are skipped,
# so the script can be re-run to extend a range. Environment: FIRST (1), PREFIX (user),
# DOMAIN (localhost), PASSWORD (secret) must match the loadgen's --first, --user-prefix,
# --domain and --password. SHARED_SALT=1 passes --shared-salt (the keys are derived once for
# the common password: 102,000 accounts in about 12 s). ROSTER_GROUP=K also makes groups of K consecutive users (from FIRST)
# mutual contacts (subscription both) with `switchboard roster import`, for
# `switchboard-loadgen presence --group K --rosters provisioned`; that needs the node running.
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
group=${ROSTER_GROUP:-0}

case $n in '' | *[!0-9]*) echo "$0: N must be a number" >&2; exit 2 ;; esac
case $group in '' | *[!0-9]*) echo "$0: ROSTER_GROUP must be a number" >&2; exit 2 ;; esac
[ -f "$cfg" ] || { echo "$0: no config file $cfg" >&2; exit 2; }
[ -x "$bin" ] || { echo "$0: no switchboard binary at $bin (cargo build -p nodes)" >&2; exit 2; }

start=$(date +%s.%N)
last=$((first + n - 1))
# One `switchboard user import` for all of them (a process per account costs ~40 ms each).
for ((i = first; i <= last; i++)); do
    printf '%s@%s %s\n' "$prefix$i" "$domain" "$password"
done | "$bin" user import - --config "$cfg" ${SHARED_SALT:+--shared-salt}
end=$(date +%s.%N)
echo "$prefix$first..$prefix$last@$domain provisioned" \
    "in $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }') s"

if [ "$group" -gt 1 ]; then
    start=$(date +%s.%N)
    # Every ordered pair inside each group: both sides get the item.
    for ((g = first; g <= last; g += group)); do
        end_g=$((g + group - 1 < last ? g + group - 1 : last))
        for ((i = g; i <= end_g; i++)); do
            for ((j = g; j <= end_g; j++)); do
                [ "$i" -eq "$j" ] || printf '%s@%s %s@%s both\n' "$prefix$i" "$domain" "$prefix$j" "$domain"
            done
        done
    done | "$bin" roster import - --config "$cfg"
    end=$(date +%s.%N)
    echo "rosters: groups of $group mutual contacts" \
        "in $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }') s"
fi
