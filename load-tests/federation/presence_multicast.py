#!/usr/bin/env python3
"""What per-domain presence (XEP-0033, `[modules.multicast]`) saves over federation: one
user on node A with CONTACTS contacts on node B (all online), CHANGES presence changes;
per change the s2s bytes A sent (TCP payload, TLS included, from `ss`) and the CPU of
both nodes (utime + stime), with the module on and off on A, rounds alternating, in one
run. Loopback only; every wait bounded.

    SWITCHBOARD_BIN=/path/to/release/switchboard \
        python3 load-tests/federation/presence_multicast.py [ROUNDS]

Needs the test virtualenv (scripts/test-deps.sh: slixmpp) and reuses the federation
tests' helpers (tests/integration/federation.py) for configs, certificates and clients.
Env: CONTACTS (200), CHANGES (100), INTERVAL_MS (50).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
os.environ.setdefault("SWITCHBOARD_TEST_LOG_LEVEL", "warn")

from federation import SB_ADDR, Certs, Client, make_sb, render_toml_nested, wait_until  # noqa: E402

A, B = "a.bench.test", "b.bench.test"
CONTACTS = int(os.environ.get("CONTACTS", "200"))
CHANGES = int(os.environ.get("CHANGES", "100"))
INTERVAL = int(os.environ.get("INTERVAL_MS", "50")) / 1000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def s2s_bytes_sent(port: int) -> int:
    """Payload bytes sent on established TCP connections to `port` (A's link to B)."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(m) for m in re.findall(r"bytes_sent:(\d+)", out))


async def one(workdir: Path, multicast: bool) -> dict:
    certs = Certs(workdir / "certs", "selfsigned", [])
    a = make_sb(workdir / "a", certs, routes={}, accounts=1, domain=A, name="a")
    b = make_sb(workdir / "b", certs, routes={}, accounts=CONTACTS, domain=B, name="b")
    for x, y in ((a, b), (b, a)):
        x.config["s2s"]["routes"] = {y.domain: "{}:{}".format(*y.s2s_addr)}
    a.config["modules"] = {"multicast": {"enabled": multicast}}
    for x in (a, b):
        x.config_path.write_text(render_toml_nested(x.config))
        x.start()
    clients: list[Client] = []
    try:
        alice = a.account()
        contacts = [b.account() for _ in range(CONTACTS)]
        r = a.cli("roster", "import", "-", input="".join(f"{alice.jid} {c.jid} both\n" for c in contacts))
        assert r.returncode == 0, r.stderr
        r = b.cli("roster", "import", "-", input="".join(f"{c.jid} {alice.jid} both\n" for c in contacts))
        assert r.returncode == 0, r.stderr
        for i in range(0, CONTACTS, 20):
            batch = [Client(f"{c.jid}/r", c.password, SB_ADDR, b.c2s_port) for c in contacts[i:i + 20]]
            clients += batch
            await asyncio.gather(*(c.start() for c in batch))
        me = Client(f"{alice.jid}/r", alice.password, SB_ADDR, a.c2s_port)
        clients.append(me)
        await me.start()

        def reached(status: str) -> bool:
            return all(any(p["status"] == status for p in c.presences) for c in clients[:CONTACTS])

        # Warm up: the link is up and A has learnt whether B supports XEP-0033.
        for n in range(5):
            me.xmpp.send_presence(pstatus=f"warm-{n}")
            await wait_until(lambda: reached(f"warm-{n}"), 60, "the warm-up presence")
            await asyncio.sleep(0.3)
        port = b.s2s_addr[1]
        t0, u0, s0 = cpu_ticks(a.proc.pid), cpu_ticks(b.proc.pid), s2s_bytes_sent(port)
        for n in range(CHANGES):
            me.xmpp.send_presence(pstatus=f"change-{n}")
            await asyncio.sleep(INTERVAL)
        await wait_until(lambda: reached(f"change-{CHANGES - 1}"), 120, "the last change")
        await asyncio.sleep(0.5)
        t1, u1, s1 = cpu_ticks(a.proc.pid), cpu_ticks(b.proc.pid), s2s_bytes_sent(port)
        per = 1e6 / TICK / CHANGES
        return {"bytes": (s1 - s0) / CHANGES, "a_us": (t1 - t0) * per, "b_us": (u1 - u0) * per}
    finally:
        for c in clients:
            await c.stop()
        for x in (a, b):
            x.stop()


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print(f"{CONTACTS} contacts on one remote domain, {CHANGES} presence changes; per change:")
    for r in range(1, rounds + 1):
        for multicast in (False, True):
            with tempfile.TemporaryDirectory(prefix="sb-multicast-") as d:
                res = await one(Path(d), multicast)
            label = "per-domain (XEP-0033)" if multicast else "per contact          "
            print(f"round {r} {label}: s2s {res['bytes']:9.0f} bytes, CPU A {res['a_us']:8.0f} µs, "
                  f"B {res['b_us']:8.0f} µs, both {res['a_us'] + res['b_us']:8.0f} µs", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
