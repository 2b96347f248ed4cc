#!/usr/bin/env python3
"""docs/scale-benchmarks.md from a load-tests/scale/run.sh results directory."""

import json
import sys
from pathlib import Path


def main(res: Path) -> None:
    meta = dict(
        line.split("=", 1) for line in (res / "meta.txt").read_text().splitlines() if "=" in line
    )
    nodes = int(meta["nodes"])
    before = json.loads((res / "before.json").read_text())
    samples = [json.loads(l) for l in (res / "samples.jsonl").read_text().splitlines() if l.strip()]
    gens = []
    for i in range(1, nodes + 1):
        p = res / f"gen-{i}.json"
        gens.append(json.loads(p.read_text()) if p.exists() else None)
    if not samples:
        print("# Scale run\n\nNo samples were taken (see the generators' stderr in last-run).")
        return
    peak = max(samples, key=lambda s: (sum(s["sessions"]), s["t"]))
    held = sum(peak["sessions"])
    per = lambda kib: kib / held if held else 0.0
    node_before = sum(before["node_rss_kib"])
    node_peak = sum(peak["node_rss_kib"])
    gen_peak = sum(peak["gen_rss_kib"])
    slab = peak["slab_kib"] - before["slab_kib"]
    tcp = (peak["tcp_mem_pages"] - before["tcp_mem_pages"]) * 4
    machine = before["mem_available_kib"] - peak["mem_available_kib"]
    # Older result sets have no MemFree / page cache samples.
    free_of = lambda s: s.get("mem_free_kib", 0) + s.get("file_kib", 0)
    used = free_of(before) - free_of(peak) if "mem_free_kib" in peak else None
    unreclaimable = peak.get("slab_unreclaimable_kib", 0) - before.get("slab_unreclaimable_kib", 0)
    ok = sum(g["login"]["succeeded"] for g in gens if g)
    failed = sum(g["login"]["failed"] for g in gens if g)
    longest = max((g["login"]["elapsed_secs"] for g in gens if g), default=0.0)
    t0 = samples[0]["t"]
    first_full = next((s["t"] for s in samples if sum(s["sessions"]) >= held), peak["t"])

    out = []
    w = out.append
    w("# Scale: idle sessions on one machine")
    w("")
    w(f"Measured {meta['date']} by `load-tests/scale/run.sh` (generated file; rerun the script to refresh it).")
    w("")
    w("## Setup")
    w("")
    w(f"- Machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['mem']}, kernel {meta['kernel']}; "
      f"every process capped at {meta['nofile']} open files (`ulimit -Hn`, not raisable here).")
    kind = "one cluster" if meta.get("cluster") == "1" else "independent (no `[cluster]`)"
    w(f"- **{nodes} Switchboard nodes**, {kind} (release build of {meta['commit']}, default "
      "settings but `c2s.max_connections = 19500`), and one "
      f"`switchboard-loadgen idle` process per node with {meta['per_node']} users "
      f"(`--tls {meta['tls']} --mech {meta['mech']}`, {meta['concurrency']} logins in progress "
      f"per process, `--hold-secs {meta['hold']}`), each from its own four source addresses.")
    accounts = ("the same accounts on every node" if meta.get("cluster") == "1"
                else "each node holding the accounts of its own generator's users")
    w(f"- Nothing pinned: nodes and generators share both CPUs; {accounts}, "
      "created offline with `switchboard user import --shared-salt`.")
    if int(meta.get("notrack", "0")):
        w("- Netfilter's connection table was smaller than the run, so the nodes' c2s ports on "
          "loopback were exempted from connection tracking for the run (`iptables -t raw ... -j NOTRACK`).")
    if meta.get("aborted"):
        w(f"- **The run was stopped early: {meta['aborted']}** (`--min-free-mib`).")
    w("- Sampled every 2 s: each node's `switchboard_c2s_sessions`, every process's `VmRSS`, "
      "`MemFree`, page cache, `MemAvailable` and `Slab` (`/proc/meminfo`), TCP socket memory (`/proc/net/sockstat`). "
      "The figures below are at the sample with the most sessions.")
    w("")
    w("## Results")
    w("")
    w("| figure | value |")
    w("|---|---:|")
    w(f"| sessions held at once (sum of the nodes' `switchboard_c2s_sessions`) | **{held:,}** |")
    w(f"| sessions per node | {', '.join(f'{s:,}' for s in peak['sessions'])} |")
    w(f"| logins ok / failed (all generators) | {ok:,} / {failed:,} |")
    w(f"| longest generator's login phase, s | {longest:.1f} |")
    w(f"| all sessions up after, s (first sample at the peak count) | {first_full - t0:.0f} |")
    w(f"| logins/s, all nodes (ok / longest login phase) | {ok / longest if longest else 0:,.0f} |")
    w(f"| nodes' RSS before / at the peak, MiB | {node_before / 1024:,.0f} / {node_peak / 1024:,.0f} |")
    w(f"| **server memory per session** (nodes' RSS growth / sessions), KiB | **{per(node_peak - node_before):.2f}** |")
    w(f"| generators' RSS at the peak, MiB (per session, KiB) | {gen_peak / 1024:,.0f} ({per(gen_peak):.2f}) |")
    w(f"| kernel Slab growth, MiB (per session, both ends of the loopback connection), KiB | {slab / 1024:,.0f} ({per(slab):.2f}) |")
    w(f"| TCP socket buffer pages growth, MiB | {tcp / 1024:,.1f} |")
    if used is not None:
        w(f"| kernel unreclaimable Slab growth, MiB (per session, KiB) | {unreclaimable / 1024:,.0f} ({per(unreclaimable):.2f}) |")
        w(f"| **whole machine** (drop in MemFree + page cache), MiB (per session, KiB) | **{used / 1024:,.0f} ({per(used):.2f})** |")
        w(f"| free memory left at the peak (MemFree + page cache), MiB | {free_of(peak) / 1024:,.0f} |")
    w(f"| drop in MemAvailable (counts open sockets' inodes as reclaimable), MiB (per session, KiB) | {machine / 1024:,.0f} ({per(machine):.2f}) |")
    machine = used if used is not None else machine
    w("")
    w("## What it says about 1,000,000 sessions")
    w("")
    if held >= 1_000_000:
        w(f"- **{held:,} sessions were held at once on this machine**, server, generators and "
          f"kernel together using {per(machine) * held / 1048576:.1f} GiB "
          f"({per(machine):.1f} KiB per session), the servers' share "
          f"{per(node_peak - node_before) * held / 1048576:.1f} GiB.")
    else:
        w(f"- At {per(machine):.1f} KiB of machine memory per session (server, generator and kernel, "
          f"both ends on this machine), 1,000,000 sessions need about "
          f"{per(machine) * 1e6 / 1048576:.1f} GiB, of which the server's share is "
          f"{per(node_peak - node_before) * 1e6 / 1048576:.1f} GiB.")
    w("- The per-process cap of 20,000 open files is what limits one process here; "
      "docs/one-million-sessions.md lists what the kernel needs to hold 1,000,000 on one node.")
    w("")
    w("## Per generator")
    w("")
    w("| node | sessions | logins ok | failed | login rate/s | p50 ms | p99 ms | node RSS per session (generator's own reading), KiB |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, g in enumerate(gens, 1):
        if not g:
            w(f"| {i} | – | – | – | – | – | – | – |")
            continue
        lg = g["login"]
        lat = lg.get("latency_ms") or {}
        rss = (g.get("idle") or {}).get("rss") or {}
        w(f"| {i} | {peak['sessions'][i - 1]:,} | {lg['succeeded']:,} | {lg['failed']:,} | "
          f"{lg['rate_per_sec']:,.0f} | {lat.get('p50', 0):.1f} | {lat.get('p99', 0):.1f} | "
          f"{rss.get('per_session_kib', 0):.2f} |")
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        w("")
        w(notes.read_text().rstrip())
    print("\n".join(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
