#!/usr/bin/env python3
"""Turn load-tests/compare results (loadgen --json files + meta) into docs/benchmarks.md.

usage: report.py RESULTS_DIR COMPARE_DIR [FIGURES_DIR] > docs/benchmarks.md

With FIGURES_DIR, the stepped runs are also drawn there (benchmarks-latency.svg,
benchmarks-delivered.svg) and the report links them by file name, so FIGURES_DIR should be
the report's own directory.
"""
import json, os, sys

import stepsplot

res, here = sys.argv[1], sys.argv[2]
figures = sys.argv[3] if len(sys.argv) > 3 else None
meta = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(res, "meta.txt")) if "=" in l)
servers = meta["servers"].split()
prov = {}
if os.path.exists(os.path.join(res, "provision.txt")):
    for l in open(os.path.join(res, "provision.txt")):
        k, v = l.split()
        prov[k] = float(v)
failed = open(os.path.join(res, "failed.txt")).read().split("\n") if os.path.exists(os.path.join(res, "failed.txt")) else []


def load(s, sc):
    try:
        j = json.load(open(os.path.join(res, f"{s}-{sc}.json")))
    except (OSError, ValueError):
        return None
    try:
        j["_cpu"] = json.load(open(os.path.join(res, f"{s}-{sc}.cpu.json")))
    except (OSError, ValueError):
        j["_cpu"] = {}
    return j


data = {s: {sc: load(s, sc) for sc in ("idle", "chat", "chatsteps", "chatceiling", "mixed")} for s in servers}
# The carrier shape (issue 22) has its own meta: a --carrier-only run measures it alone and keeps
# the other scenarios' results from the run before.
cmeta_path = os.path.join(res, "meta-carrier.txt")
cmeta = dict(l.rstrip("\n").split("=", 1) for l in open(cmeta_path) if "=" in l) if os.path.exists(cmeta_path) else {}
carrier_servers = cmeta.get("servers", "").split()
for s in carrier_servers:
    data.setdefault(s, {})
    for sc in ("carrier", "carrierplain", "carrierpresence"):
        data[s][sc] = load(s, sc)
stepped = meta.get("steps") == "1"
ceiling = meta.get("ceiling") == "1"
# The stepped-chat scenarios that ran: (scenario, users).
stepped_runs = [(sc, users) for sc, users, on in (("chatsteps", meta.get("step_users"), stepped),
                                                   ("chatceiling", meta.get("ceiling_users"), ceiling),
                                                   ("carrier", cmeta.get("carrier_users"), bool(cmeta)),
                                                   ("carrierplain", cmeta.get("carrier_users"), bool(cmeta))) if on]


def g(s, sc, *path):
    x = data.get(s, {}).get(sc)
    for p in path:
        if x is None:
            return None
        x = x.get(p) if isinstance(x, dict) else None
    return x


# (label, function(server) -> value or None, lower_is_better, format)
def per(a, b):
    return None if a is None or not b else a / b


rows = [
    ("provisioning, s (all accounts)", lambda s: prov.get(s), True, "{:.1f}"),
    ("idle: logins ok", lambda s: g(s, "idle", "login", "succeeded"), False, "{:.0f}"),
    ("idle: login failures", lambda s: g(s, "idle", "login", "failed"), True, "{:.0f}"),
    ("idle: login rate, logins/s", lambda s: g(s, "idle", "login", "rate_per_sec"), False, "{:.0f}"),
    ("idle: login latency p50, ms", lambda s: g(s, "idle", "login", "latency_ms", "p50"), True, "{:.1f}"),
    ("idle: login latency p99, ms", lambda s: g(s, "idle", "login", "latency_ms", "p99"), True, "{:.1f}"),
    ("idle: sessions held", lambda s: g(s, "idle", "idle", "sessions"), False, "{:.0f}"),
    ("idle: server RSS before, MiB", lambda s: per(g(s, "idle", "idle", "rss", "before_kib"), 1024), True, "{:.1f}"),
    ("idle: server RSS right after the logins, MiB", lambda s: per(g(s, "idle", "idle", "rss", "after_login_kib"), 1024), True, "{:.1f}"),
    ("idle: server RSS with sessions, MiB", lambda s: per(g(s, "idle", "idle", "rss", "after_kib"), 1024), True, "{:.1f}"),
    ("idle: RSS per session, KiB", lambda s: g(s, "idle", "idle", "rss", "per_session_kib"), True, "{:.1f}"),
    ("idle: server CPU, s (login+hold+close)", lambda s: g(s, "idle", "_cpu", "server_cpu_secs"), True, "{:.2f}"),
    ("idle: server CPU per login, ms", lambda s: per(1000 * (g(s, "idle", "_cpu", "server_cpu_secs") or 0), g(s, "idle", "login", "succeeded")), True, "{:.2f}"),
    ("chat: logins ok", lambda s: g(s, "chat", "login", "succeeded"), False, "{:.0f}"),
    ("chat: messages sent", lambda s: g(s, "chat", "chat", "sent"), False, "{:.0f}"),
    ("chat: messages received", lambda s: g(s, "chat", "chat", "received"), False, "{:.0f}"),
    ("chat: lost + bounced", lambda s: None if g(s, "chat", "chat") is None else g(s, "chat", "chat", "lost") + g(s, "chat", "chat", "bounced"), True, "{:.0f}"),
    ("chat: delivered, msgs/s", lambda s: per(g(s, "chat", "chat", "received"), g(s, "chat", "chat", "elapsed_secs")), False, "{:.0f}"),
    ("chat: latency p50, ms", lambda s: g(s, "chat", "chat", "latency_ms", "p50"), True, "{:.2f}"),
    ("chat: latency p90, ms", lambda s: g(s, "chat", "chat", "latency_ms", "p90"), True, "{:.2f}"),
    ("chat: latency p99, ms", lambda s: g(s, "chat", "chat", "latency_ms", "p99"), True, "{:.2f}"),
    ("chat: latency max, ms", lambda s: g(s, "chat", "chat", "latency_ms", "max"), True, "{:.2f}"),
    ("chat: server CPU, s (logins+exchange+close)", lambda s: g(s, "chat", "_cpu", "server_cpu_secs"), True, "{:.2f}"),
]


def steps_of(s, sc="chatsteps"):
    return g(s, sc, "chat", "stepped", "steps") or []


def sustainable(s, sc="chatsteps"):
    return g(s, sc, "chat", "stepped", "sustainable_rate")


def why_not(p):
    """Why step p was not sustained."""
    why = []
    d = p["latency_ms"]
    if d["p99"] >= 100:
        why.append(f"p99 {d['p99']:.0f} ms")
    if p["lost"]:
        why.append(f"{p['lost']} lost" + (f" ({p['late']} late)" if p["late"] else ""))
    if p["bounced"]:
        why.append(f"{p['bounced']} bounced")
    if p["offered_per_sec"] < 0.9 * p["target_rate"]:
        # Writes also stall when the server stops reading (TCP backpressure): the generator's
        # CPU tells the two apart.
        busy = p.get("generator_cpu_percent", 100) >= 90
        why.append(f"only {p['offered_per_sec']:.0f}/s offered"
                   + (" (generator-bound)" if busy else " (the server stopped reading)"))
    return ", ".join(why) or "no delivery"


def next_failure(s, sc="chatsteps"):
    """The first step above the sustainable rate that was not sustained, and why."""
    v = sustainable(s, sc) or 0
    for p in steps_of(s, sc):
        if p["target_rate"] > v and not p["sustained"]:
            return f"{p['target_rate']}/s: {why_not(p)}"
    return "none run (limit not reached)"


if stepped:
    rows += [
        ("stepped chat: sustainable rate, msgs/s (p99 < 100 ms, no loss)", sustainable, False, "{:.0f}"),
        ("stepped chat: delivered/s at that step", lambda s: g(s, "chatsteps", "chat", "stepped", "sustainable_delivered_per_sec"), False, "{:.0f}"),
        ("stepped chat: highest delivered/s at any step", lambda s: max((p["delivered_per_sec"] for p in steps_of(s)), default=None), False, "{:.0f}"),
        ("stepped chat: CPU stolen by the hypervisor during the run (both CPUs), s", lambda s: g(s, "chatsteps", "_cpu", "steal_secs"), True, "{:.2f}"),
        ("stepped chat: server CPU per delivered message, µs (whole run)", lambda s: per(1e6 * (g(s, "chatsteps", "_cpu", "server_cpu_secs") or 0), g(s, "chatsteps", "chat", "received")), True, "{:.0f}"),
    ]


if meta.get("mixed") == "1":
    def mx(s, *path):
        return g(s, "mixed", "mixed", *path)

    rows += [
        ("mixed: messages sent", lambda s: mx(s, "messages", "sent"), False, "{:.0f}"),
        ("mixed: messages delivered (late ones included)", lambda s: mx(s, "messages", "delivered"), False, "{:.0f}"),
        ("mixed: lost + bounced + duplicates", lambda s: None if mx(s) is None else mx(s, "messages", "lost") + mx(s, "messages", "bounced") + mx(s, "messages", "duplicates"), True, "{:.0f}"),
        ("mixed: message latency p99, ms", lambda s: mx(s, "messages", "latency_ms", "p99"), True, "{:.2f}"),
        ("mixed: presence changes sent", lambda s: mx(s, "presences", "sent"), False, "{:.0f}"),
        ("mixed: reconnects ok", lambda s: mx(s, "reconnects", "ok"), False, "{:.0f}"),
        ("mixed: reconnects failed", lambda s: mx(s, "reconnects", "failed"), True, "{:.0f}"),
        ("mixed: reconnect (login) latency p99, ms", lambda s: mx(s, "reconnects", "latency_ms", "p99"), True, "{:.1f}"),
        ("mixed: server CPU, s (logins, profile, drain, close)", lambda s: g(s, "mixed", "_cpu", "server_cpu_secs"), True, "{:.2f}"),
    ]


def fmt(v, f):
    return "–" if v is None else f.format(v)


def step_at(s, sc, rate):
    return next((p for p in steps_of(s, sc) if p["target_rate"] == rate), None)


def cliff(s, sc):
    """The first step whose p99 passed 100 ms (None: none did). The first step is left out:
    it starts right after thousands of logins, whose aftermath it measures as much as itself."""
    for p in steps_of(s, sc)[1:]:
        if p["latency_ms"]["p99"] >= 100:
            return p
    return None


def presence_steps(s):
    return g(s, "carrierpresence", "pep", "steps") or []


def presence_sustainable(s):
    return g(s, "carrierpresence", "pep", "sustainable_rate")


def carrier_section():
    users, group = cmeta["carrier_users"], int(cmeta["carrier_group"])
    w("## Headline: a carrier's traffic shape\n")
    rate = sustainable("switchboard", "carrier") or int(cmeta["carrier_rates"].split(",")[-1])
    w(f"{int(users):,} users online, each sending now and then (at {rate:,} msgs/s in all, one"
      f" message every {int(users) / rate:.2f} s per user), to random online users, one"
      " message per write: nearly every message costs the server a read and a write of its own. Stepped as above"
      f" ({cmeta['step_secs']} s per step, p99 < 100 ms and no loss to be sustained), over STARTTLS (`carrier`) and over"
      " plain TCP (`carrierplain`: PLAIN login on plain TCP for Prosody and ejabberd, SCRAM-SHA-256 for Switchboard, which"
      " offers PLAIN over TLS only; the login is not in the steps). The server's CPU is read from the step's start to the"
      " end of its drain, and given per delivered message at the sustained step.\n")
    w("Goals (issue 22): at least 10x ejabberd's rate, at most 10 µs of server CPU per delivered message and per delivered"
      " presence, no step with p99 over 100 ms while the server's core is below 90 % (the first step, right after the"
      " logins, is a warm-up and not counted for this).\n")
    w("| server | STARTTLS: msgs/s sustained | µs/message there | first step with p99 ≥ 100 ms (server CPU %) | plain TCP: msgs/s sustained | µs/message there | Switchboard / server (STARTTLS) |")
    w("|---|---:|---:|---|---:|---:|---:|")
    for s in carrier_servers:
        v, vp = sustainable(s, "carrier"), sustainable(s, "carrierplain")
        at, atp = step_at(s, "carrier", v), step_at(s, "carrierplain", vp)
        c = cliff(s, "carrier")
        cl = "none" if c is None else f"{c['target_rate']}/s ({fmt(c.get('server_cpu_percent'), '{:.0f}')} %)"
        ratio = "–"
        if s != "switchboard" and v and sustainable("switchboard", "carrier"):
            ratio = f"{sustainable('switchboard', 'carrier') / v:.2f}"
        w(f"| {s} | {fmt(v, '{:.0f}')} | {fmt(at and at.get('server_cpu_us_per_message'), '{:.1f}')} | {cl}"
          f" | {fmt(vp, '{:.0f}')} | {fmt(atp and atp.get('server_cpu_us_per_message'), '{:.1f}')} | {ratio} |")
    w("")
    pu = int(cmeta["carrier_presence_users"])
    w(f"Presence: {pu:,} users in groups of {group} mutual contacts (subscriptions made through the protocol on every"
      f" server), so each presence change reaches {group - 1} contacts; stepped presence changes/s"
      f" (`pep --event presence --group {group} --rates {cmeta['carrier_presence_rates']}`), over STARTTLS.\n")
    w("| server | changes/s sustained | deliveries/s there | µs per delivered presence there | Switchboard / server |")
    w("|---|---:|---:|---:|---:|")
    for s in carrier_servers:
        v = presence_sustainable(s)
        at = next((p for p in presence_steps(s) if p["target_rate"] == v), None)
        ratio = "–"
        if s != "switchboard" and v and presence_sustainable("switchboard"):
            ratio = f"{presence_sustainable('switchboard') / v:.2f}"
        w(f"| {s} | {fmt(v, '{:.0f}')} | {fmt(at and at['delivered_per_sec'], '{:.0f}')}"
          f" | {fmt(at and at.get('server_cpu_us_per_notification'), '{:.1f}')} | {ratio} |")
    w("")
    if "switchboard" in carrier_servers:
        sbv = sustainable("switchboard", "carrier")
        ej = sustainable("ejabberd", "carrier")
        at = step_at("switchboard", "carrier", sbv)
        us = at and at.get("server_cpu_us_per_message")
        pat = next((p for p in presence_steps("switchboard") if p["target_rate"] == presence_sustainable("switchboard")), None)
        pus = pat and pat.get("server_cpu_us_per_notification")
        c = cliff("switchboard", "carrier")
        w("| goal | Switchboard | met |")
        w("|---|---:|---|")
        if ej:
            w(f"| 10x ejabberd's msgs/s (STARTTLS) | {(sbv or 0) / ej:.1f}x | {'yes' if (sbv or 0) >= 10 * ej else '**no**'} |")
        w(f"| ≤ 10 µs per delivered message | {fmt(us, '{:.1f}')} | {'yes' if us is not None and us <= 10 else '**no**'} |")
        w(f"| ≤ 10 µs per delivered presence | {fmt(pus, '{:.1f}')} | {'yes' if pus is not None and pus <= 10 else '**no**'} |")
        cpu = c and c.get("server_cpu_percent")
        w(f"| no p99 ≥ 100 ms below 90 % of the core | {'none' if c is None else fmt(cpu, '{:.0f} %') + ' at ' + str(c['target_rate']) + '/s'}"
          f" | {'yes' if c is None or (cpu is not None and cpu >= 90) else '**no**'} |")
        w("")
    w("Per-step tables: \"Stepped chat per server\" (`carrier`, `carrierplain`) and \"Presence per server\" below.\n")



others = [s for s in servers if s != "switchboard"]
sb = "switchboard" in servers
out = []
w = out.append
w("# Switchboard vs Prosody vs ejabberd\n")
w(f"Measured {meta['date']} by `load-tests/compare/run.sh` (generated file; rerun the script to refresh it).")
w("Small sizes on a small shared machine: read the figures as a smoke comparison, not as capacity numbers.\n")
if cmeta and cmeta.get("carrier_only") == "1":
    w(f"The carrier shape was measured {cmeta['date']} on Switchboard {cmeta['switchboard']} (`run.sh --carrier-only`);"
      f" the other sections come from the run of {meta['date']} on Switchboard {meta['switchboard']}.\n")
w("## Setup\n")
w(f"- Machine: {meta['cpu']}, {meta['cpus']} CPUs, {meta['mem']}, {meta['os']}, kernel {meta['kernel']} (a container, no systemd).")
w(f"- Each server pinned to CPU 0 and the generator to CPU 1 (`taskset`): server and generator share this 2-CPU box,")
w("  everything over loopback; other processes on the machine (e.g. builds) were not controlled for.")
w(f"- Switchboard {meta['switchboard']} (`target/release/switchboard` built {meta.get('switchboard_bin', '?')};"
  f" `switchboard-loadgen` built {meta.get('loadgen_bin', '?')}), 127.0.0.1:5222.")
w(f"- Prosody {meta['prosody']} (Debian package, Lua {meta['lua']}), 127.0.0.2:5222.")
w(f"- ejabberd {meta['ejabberd']} (Debian package, Erlang/OTP {meta['erlang']}), 127.0.0.3:5222; the VM inherits the")
w("  one-CPU affinity and so runs one scheduler.")
w("- All three: domain `localhost`, STARTTLS offered (every scenario uses it but the carrier shape's plain-TCP run),")
w("  the same self-signed RSA-2048 certificate, SASL PLAIN")
w(f"  (the generator's default) checked against stored SCRAM-SHA-1/-256 keys with {meta['iterations']} PBKDF2 iterations")
w("  (Switchboard's and ejabberd's default; Prosody's default is 10,000, lowered for equal work per login).")
w(f"- Accounts user1..user{meta['accounts']}, password `secret`, provisioned with `load-tests/provision.sh` (Switchboard),")
w("  account files written directly (Prosody, `prosody_accounts.py`), mod_http_api `register` (ejabberd, `ejabberd_register.py`).")
w("- Tuning: Prosody `network_backend = \"epoll\"`, only saslauth/tls/roster/disco/ping/posix/limits/offline, mod_limits c2s rate")
w("  raised to 10 MB/s; ejabberd `c2s_shaper: none` (Debian's default shapes c2s to 3,000 B/s), only mod_disco/mod_offline/mod_ping/")
w("  mod_roster, ERL_MAX_PORTS 65536; Switchboard defaults. Details and reasons: `load-tests/compare/README.md`;")
w("  the config templates are next to the script.")
w(f"- Scenarios (a fresh server process for each):")
w(f"  - `idle`: `switchboard-loadgen -n {meta['idle_users']} --server-pid PID idle --hold-secs {meta['hold_secs']}` — login rate,")
w("    latency, server `VmRSS` before and with all sessions, `(after - before) / sessions`.")
w(f"  - `chat`: `switchboard-loadgen -n {meta['chat_users']} chat --messages {meta['chat_messages']} --interval-ms {meta['chat_interval_ms']}"
  f" --duration-secs {meta['chat_duration']}` — each user sends {meta['chat_messages']} messages, one every {meta['chat_interval_ms']} ms,"
  " to random other users (100-byte bodies, the generator's default); delivery and latency.")
if stepped:
    w(f"  - `chatsteps`: `switchboard-loadgen -n {meta['step_users']} chat --rates {meta['step_rates']} --step-secs {meta['step_secs']}"
      f" --drain-secs {meta['step_drain']} --p99-limit-ms 100 --stop-after 2` — all users together offer each aggregate rate"
      f" for {meta['step_secs']} s (spread evenly over the users, random online recipients, full JIDs), then wait at most"
      f" {meta['step_drain']} s for the step's messages in flight; a step is sustained if its p99 < 100 ms, nothing was lost"
      " or bounced and at least 90 % of the target was offered; the run stops after two steps in a row not sustained.")
if ceiling:
    w(f"  - `chatceiling`: the same as `chatsteps` with {meta['ceiling_users']} users and `--rates {meta['ceiling_rates']}`"
      " (see \"Ceiling\" below).")
if meta.get("mixed") == "1":
    every, rec, users = float(meta["mixed_every"]), float(meta["mixed_reconnect"]), int(meta["mixed_users"])
    w(f"  - `mixed`: `switchboard-loadgen -n {users} mixed --message-interval-secs {meta['mixed_every']}"
      f" --presence-interval-secs {meta['mixed_every']} --reconnect-interval-secs {meta['mixed_reconnect']}"
      f" --duration-secs {meta['mixed_secs']} --drain-secs 10` — the mobile profile (per user a 100-byte message to a"
      " random online user, a presence change and a reconnect, at random times) sped up: the realistic pace is one of"
      f" each every 600 s, so this offers the message load of {users * 600 / every:,.0f} users and the reconnect load of"
      f" {users * 600 / rec:,.0f} users at that pace.")
if cmeta:
    w(f"  - `carrier`, `carrierplain`: `switchboard-loadgen -n {cmeta['carrier_users']} chat --rates {cmeta['carrier_rates']}"
      f" --step-secs {cmeta['step_secs']} --drain-secs {cmeta['step_drain']} --p99-limit-ms 100 --stop-after 2`, the second with"
      f" `--tls none`; `carrierpresence`: `switchboard-loadgen -n {cmeta['carrier_presence_users']} pep --event presence"
      f" --group {cmeta['carrier_group']} --rates {cmeta['carrier_presence_rates']}` (see the carrier headline).")
w("  - Server CPU: utime+stime of the server process (all threads) from `/proc/PID/stat` around each generator run.")
w(f"- Command: `load-tests/compare/run.sh -n {meta['idle_users']} -c {meta['chat_users']} --messages {meta['chat_messages']}"
  f" --interval-ms {meta['chat_interval_ms']} --duration-secs {meta['chat_duration']} --hold-secs {meta['hold_secs']}"
  + (f" --step-users {meta['step_users']} --step-rates {meta['step_rates']} --step-secs {meta['step_secs']}"
     f" --step-drain-secs {meta['step_drain']}" if stepped else " --no-steps")
  + (f" --ceiling-users {meta['ceiling_users']} --ceiling-rates {meta['ceiling_rates']}" if ceiling else " --no-ceiling")
  + "`.\n")
if failed and any(failed):
    w("**Failures during this run:** " + ", ".join(f for f in failed if f) + " (see the script's output).\n")

if cmeta:
    carrier_section()

if stepped:
    w("## Many messages per user: messages/s at p99 < 100 ms with no loss\n")
    w("The sustainable rate is the highest offered aggregate rate (messages/s over all users) whose step had p99")
    w("latency below 100 ms, nothing lost or bounced, and at least 90 % of the target actually offered. Goal (issue 8):")
    w("Switchboard at least 3x ejabberd and 10x Prosody.\n")
    w("| server | sustainable rate, msgs/s | delivered/s at that step | first step above it not sustained | Switchboard / server | goal | met |")
    w("|---|---:|---:|---|---:|---:|---|")
    goal = {"prosody": 10, "ejabberd": 3}
    for s in servers:
        v = sustainable(s)
        ran = steps_of(s)
        ratio = goals = met = "–"
        if s != "switchboard" and sb and v and sustainable("switchboard") is not None:
            r = sustainable("switchboard") / v
            ratio = f"{r:.2f}"
            goals = f"{goal.get(s, 0)}x"
            met = "yes" if r >= goal.get(s, 0) else "**no**"
        w(f"| {s} | {fmt(v, '{:.0f}')} | {fmt(g(s, 'chatsteps', 'chat', 'stepped', 'sustainable_delivered_per_sec'), '{:.0f}')}"
          f" | {next_failure(s) if ran else '–'} | {ratio} | {goals} | {met} |")
    w("")
    w("A step's latency includes the generator's own queueing: the generator has one CPU, as the server does, and")
    w("does the same TLS and XML work per message on the other side of each connection (see the per-step tables).\n")

if ceiling:
    w("## Ceiling: few users sending a lot\n")
    w(f"The same stepped chat with {meta['ceiling_users']} users (`chatceiling`: `-n {meta['ceiling_users']} chat --rates"
      f" {meta['ceiling_rates']}`, STARTTLS, 100-byte bodies). Each user sends many messages per second, so the"
      " generator writes all a user has due in one write and reads many per read: it needs a few µs per message"
      " instead of about 25, and its core is far from full (`gen CPU %`). The figure is each server's own limit;"
      " it is not a carrier's traffic (few senders, big batches per read), so read it next to the headline, not"
      " instead of it.\n")
    w("| server | sustainable rate, msgs/s | gen CPU % at that step | first step above it not sustained | server CPU per delivered message, µs | Switchboard / server |")
    w("|---|---:|---:|---|---:|---:|")
    for s in servers:
        v = sustainable(s, "chatceiling")
        ran = steps_of(s, "chatceiling")
        at = next((p for p in ran if p["target_rate"] == v), None)
        cpu_us = per(1e6 * (g(s, "chatceiling", "_cpu", "server_cpu_secs") or 0), g(s, "chatceiling", "chat", "received"))
        ratio = "–"
        if s != "switchboard" and sb and v and sustainable("switchboard", "chatceiling"):
            ratio = f"{sustainable('switchboard', 'chatceiling') / v:.2f}"
        w(f"| {s} | {fmt(v, '{:.0f}')} | {fmt(at and at.get('generator_cpu_percent'), '{:.0f}')}"
          f" | {next_failure(s, 'chatceiling') if ran else '–'} | {fmt(cpu_us, '{:.1f}')} | {ratio} |")
    w("")

panels = [(f"{users} users ({sc})", {s: steps_of(s, sc) for s in servers if steps_of(s, sc)})
          for sc, users in stepped_runs]
if figures and any(series for _, series in panels):
    w("## Stepped runs, drawn\n")
    for name, draw, alt in (("benchmarks-latency.svg", stepsplot.latency_chart, "p99 latency per step"),
                            ("benchmarks-delivered.svg", stepsplot.delivered_chart, "delivered/s per step")):
        svg = draw(panels)
        if svg:
            with open(os.path.join(figures, name), "w") as f:
                f.write(svg)
            w(f"![{alt}]({name})\n")
    w("Each point is a step: its offered target against its p99 latency (dashed: the 100 ms limit) or its distinct")
    w("deliveries per second (dashed: delivered = target). Both axes are logarithmic.\n")

w("## Results\n")
hdr = "| figure | " + " | ".join(servers)
if sb:
    hdr += "".join(f" | Switchboard/{o.capitalize()}" for o in others)
w(hdr + " |")
w("|---|" + "---:|" * (len(servers) + (len(others) if sb else 0)))
worse = []
for label, fn, lower, f in rows:
    vals = {s: fn(s) for s in servers}
    line = f"| {label} | " + " | ".join(fmt(vals[s], f) for s in servers)
    if sb:
        for o in others:
            a, b = vals.get("switchboard"), vals.get(o)
            r = per(a, b) if a is not None and b else None
            line += " | " + ("–" if r is None else f"{r:.2f}")
            if a is not None and b is not None and label not in ("chat: messages sent",) and (
                    (lower and a > b * 1.05) or (not lower and a < b * 0.95)):
                worse.append((label, o, a, b, f))
    w(line + " |")
w("")
w("Ratios are Switchboard's figure divided by the other server's; whether lower or higher is better depends on the row")
w("(RSS, latency, CPU, provisioning time: lower; rates and counts of successes: higher).\n")

for sc, users in stepped_runs:
    w(f"## Stepped chat per server (`{sc}`)\n")
    w(f"{users} users; per step: target and offered rate, distinct deliveries per second, lost (not delivered"
      f" by the end of the {meta['step_drain']} s drain; `late` ones arrived after it), duplicates, bounces, latency in ms,"
      " and the generator's CPU while the step offered its rate (100 % is its one core).\n")
    for s in servers:
        ran = steps_of(s, sc)
        cpu = g(s, sc, "_cpu", "server_cpu_secs")
        wall = g(s, sc, "_cpu", "wall_secs")
        w(f"### {s} ({sc})\n")
        if not ran:
            w("No stepped-chat result (see the script's output).\n")
            continue
        w("| target/s | offered/s | delivered/s | lost | late | dup | bounced | p50 | p99 | p99.9 | max | gen CPU % | server CPU % | server µs/msg | sustained |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for p in ran:
            d = p["latency_ms"]
            w(f"| {p['target_rate']} | {p['offered_per_sec']:.0f} | {p['delivered_per_sec']:.0f} | {p['lost']} | {p['late']}"
              f" | {p['duplicates']} | {p['bounced']} | {d['p50']:.2f} | {d['p99']:.2f} | {d.get('p999', 0):.2f} | {d['max']:.2f}"
              f" | {p.get('generator_cpu_percent', 0):.0f} | {fmt(p.get('server_cpu_percent'), '{:.0f}')}"
              f" | {fmt(p.get('server_cpu_us_per_message'), '{:.1f}')} | {'yes' if p['sustained'] else 'no: ' + why_not(p)} |")
        dropped = g(s, sc, "dropped") or {}
        w("")
        w(f"Sustainable: **{fmt(sustainable(s, sc), '{:.0f}')} msgs/s**. Server CPU over the whole run (logins, steps, drains,"
          f" close): {fmt(cpu, '{:.1f}')} s in {fmt(wall, '{:.1f}')} s wall."
          + (f" Sessions dropped: {dropped}." if dropped else "") + "\n")

if cmeta:
    w("## Presence per server (`carrierpresence`)\n")
    w("Per step: presence changes/s wanted and offered, deliveries to contacts per second, lost, latency in ms, the server's"
      " CPU from the step's start to the end of its drain per delivered presence.\n")
    for s in carrier_servers:
        w(f"### {s} (carrierpresence)\n")
        ran = presence_steps(s)
        if not ran:
            w("No result (see the script's output).\n")
            continue
        w("| target/s | offered/s | delivered/s | lost | dup | p50 | p99 | gen CPU % | server µs/presence | sustained |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for p in ran:
            d = p["latency_ms"]
            w(f"| {p['target_rate']} | {p['offered_per_sec']:.0f} | {p['delivered_per_sec']:.0f} | {p['lost']} | {p['duplicates']}"
              f" | {d['p50']:.2f} | {d['p99']:.2f} | {p.get('generator_cpu_percent', 0):.0f}"
              f" | {fmt(p.get('server_cpu_us_per_notification'), '{:.1f}')} | {'yes' if p['sustained'] else 'no'} |")
        w("")

w("## Where we fall short and why\n")
if worse:
    w("Rows where Switchboard is more than 5 % worse than the other server in this run:\n")
    for label, o, a, b, f in worse:
        w(f"- {label}: Switchboard {fmt(a, f)} vs {o.capitalize()} {fmt(b, f)}.")
    w("")
notes = os.path.join(here, "notes.md")
if os.path.exists(notes):
    w(open(notes).read().strip() + "\n")
w("## Raw output\n")
w("The generator's summaries of this run (`load-tests/compare/last-run/*.txt`, JSON next to them):\n")
for s in servers:
    for sc in ("idle", "chat", "chatsteps", "chatceiling", "carrier", "carrierplain", "carrierpresence"):
        p = os.path.join(res, f"{s}-{sc}.txt")
        if os.path.exists(p):
            w(f"{s} `{sc}`:\n\n```\n" + open(p).read().strip() + "\n```\n")
print("\n".join(out))
