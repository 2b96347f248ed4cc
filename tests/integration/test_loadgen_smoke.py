"""Smoke test of the bundled load generator (load-tests/, `switchboard-loadgen`).

Runs each scenario with a handful of users for a second or two (`mixed`: six) against one
node and checks the JSON summary: nothing failed, something was counted.  It catches a loadgen that no
longer builds, logs in or parses the server's replies; it measures nothing.

The binary is `target/debug/switchboard-loadgen`; if it is missing, the test builds it with
`cargo build -p switchboard-loadgen` (skipped only if cargo is not installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Server, _child_env

LOADGEN = REPO_ROOT / "target" / "debug" / "switchboard-loadgen"
USERS = 12
PASSWORD = "smoke-secret"
RUN_TIMEOUT = 30.0
BUILD_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def loadgen() -> Path:
    if not LOADGEN.exists():
        cargo = shutil.which("cargo")
        if cargo is None:
            pytest.skip(f"{LOADGEN} is missing and cargo is not installed to build it")
        r = subprocess.run(
            [cargo, "build", "-p", "switchboard-loadgen"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        assert r.returncode == 0, f"cargo build -p switchboard-loadgen failed:\n{r.stderr[-3000:]}"
    return LOADGEN


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One node with accounts lg1..lgN sharing a password, made before it starts."""
    srv = Server(tmp_path_factory.mktemp("sb-loadgen"), name="loadgen")
    for i in range(1, USERS + 1):
        srv.add_user(f"lg{i}", PASSWORD)
    srv.start()
    yield srv
    srv.stop()


def run_loadgen(
    loadgen: Path, node: Server, tmp_path: Path, args: list[str], cafile: str | None = None
) -> dict:
    summary = tmp_path / "summary.json"
    report = tmp_path / "report"
    cmd = [
        str(loadgen),
        "--user-prefix", "lg",
        "--password", PASSWORD,
        "--ca", cafile or node.cafile,
        "--json", str(summary),
        "--report", str(report),
        *args,
    ]
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {RUN_TIMEOUT}s: {exc}")
    (tmp_path / "loadgen.log").write_text(r.stderr)  # kept for a look after a failure
    assert r.returncode == 0, (
        f"`{' '.join(cmd)}` exited with {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    )
    data = json.loads(summary.read_text())
    context = f"summary: {json.dumps(data, indent=1)}\nstdout: {r.stdout}"
    # The generator's own CPU is in every summary.
    assert data["generator_cpu_secs"] >= 0 and data["generator_wall_secs"] > 0, context
    assert data["generator_cores"] >= 1 and "generator CPU:" in r.stdout, context
    login = data["login"]
    assert login["failed"] == 0 and login["failures"] == {}, context
    assert login["succeeded"] > 0 and login["latency_ms"]["count"] == login["succeeded"], context
    assert data["dropped"] == {}, context
    assert data["close"]["unclean"] == 0, context
    text = (report / "report.md").read_text()
    assert f"`{data['scenario']}`" in text
    for svg in report.glob("*.svg"):
        assert svg.read_text().startswith("<svg"), svg
    assert any(report.glob("*.svg")), f"no chart in {report}"
    return data


def test_login_storm(loadgen, node, tmp_path):
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(USERS),
            "login", "--rates", "10,20", "--step-secs", "1",
        ],
    )
    steps = data["storm"]["steps"]
    assert [s["target_rate"] for s in steps] == [10, 20]
    for step in steps:
        assert step["succeeded"] == step["attempts"] > 0, steps
        assert step["failed"] == 0 and step["achieved_per_sec"] > 0, steps
    assert data["close"]["clean"] == data["login"]["succeeded"] == 30
    assert sum(p["ok"] for p in data["timeline"]) == 30


def test_presence_fan_out(loadgen, node, tmp_path):
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(USERS),
            "presence", "--group", "4", "--changes", "3", "--interval-ms", "100",
            "--setup-secs", "10", "--duration-secs", "5",
        ],
    )
    p = data["presence"]
    # 3 groups of 4: each change reaches 3 contacts.
    assert p["ready"] == USERS and p["not_ready"] == 0, p
    assert p["sent"] == USERS * 3, p
    assert p["expected"] == USERS * 3 * 3, p
    assert p["delivered"] == p["expected"] and p["lost"] == 0 and p["duplicates"] == 0, p
    assert p["latency_ms"]["count"] == p["delivered"], p


def test_churn_over_direct_tls_with_scram(loadgen, node, tmp_path):
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.tls_port}",
            "--tls", "direct",
            "--mech", "scram-sha-256",
            "-n", "8",
            "churn", "--cycles", "3", "--min-pause-ms", "50", "--max-pause-ms", "300",
            "--drop-percent", "30", "--duration-secs", "10",
        ],
    )
    c = data["churn"]
    assert data["login"]["succeeded"] == 8 * 3, data["login"]
    assert c["reconnects"] == 8 * 2, c
    assert c["reconnects_per_sec"] > 0, c
    assert data["close"]["clean"] + c["abrupt"] == 8 * 3, (data["close"], c)


def test_stepped_chat(loadgen, node, tmp_path):
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(USERS),
            "chat", "--rates", "24,48", "--step-secs", "1", "--drain-secs", "2",
            "--body-bytes", "200",
        ],
    )
    chat = data["chat"]
    assert chat["body_bytes"] == 200, chat
    assert chat["generator_cpu_secs"] >= 0 and chat["generator_cpu_us_per_message"] >= 0, chat
    st = chat["stepped"]
    assert [s["target_rate"] for s in st["steps"]] == [24, 48], st
    for step in st["steps"]:
        assert step["sent"] > 0 and step["received"] == step["sent"], st
        assert step["lost"] == 0 and step["duplicates"] == 0 and step["bounced"] == 0, st
        assert step["latency_ms"]["count"] == step["received"], st
        assert step["generator_cpu_percent"] >= 0, st
    assert data["chat"]["sent"] == sum(s["sent"] for s in st["steps"]), data["chat"]
    assert st["sustainable_rate"] in (0, 24, 48), st


def test_chat_with_carbons_and_server_cpu(loadgen, node, tmp_path):
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(USERS),
            "--server-pid", str(node.proc.pid),
            "chat", "--messages", "5", "--interval-ms", "20", "--duration-secs", "10",
            "--carbons",
        ],
    )
    chat = data["chat"]
    assert chat["sent"] == USERS * 5 and chat["received"] == chat["sent"], chat
    k = chat["carbons"]
    # Every message: a sent carbon to the sender's second session, a received one to the
    # recipient's.
    assert k["sessions"] == USERS, k
    assert k["sent_carbons"] == k["received_carbons"] == chat["sent"], k
    assert k["expected"] == 2 * chat["sent"], k
    cpu = chat["server_cpu"]
    assert cpu["server_pid"] == node.proc.pid and cpu["cpu_secs"] >= 0, cpu
    assert cpu["us_per_message"] >= 0, cpu
    # Both sessions of every user closed cleanly.
    assert data["close"]["clean"] == 2 * USERS, data["close"]


def test_presence_with_inactive_sessions(loadgen, node, tmp_path):
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(USERS),
            "presence", "--group", "4", "--changes", "3", "--interval-ms", "100",
            "--setup-secs", "10", "--duration-secs", "5", "--csi-inactive-percent", "50",
        ],
    )
    p = data["presence"]
    csi = p["csi"]
    assert csi["inactive_sessions"] == csi["active_sessions"] == USERS // 2, csi
    # Only the active sessions' deliveries are expected, and they all arrive.
    assert p["delivered"] == p["expected"] > 0 and p["lost"] == 0, p
    # An inactive session gets the latest change of each of its 3 contacts (held, then
    # flushed on <active/>), an active one all 9: fewer bytes.
    assert 0 < csi["delivered_to_inactive"] <= (USERS // 2) * 3 * 3, csi
    assert 0 < csi["bytes_per_inactive_session"] < csi["bytes_per_active_session"], csi
    assert p["bytes_received"] == csi["bytes_received_active"] + csi["bytes_received_inactive"], p


def test_roster_writes_and_offline_store(loadgen, node, tmp_path):
    """`roster-writes` and `offline-store` on accounts of their own (lg13..lg22), so the
    other scenarios' rosters and offline queues stay as they were."""
    first = USERS + 1
    for i in range(first, first + 10):
        node.add_user(f"lg{i}", PASSWORD)
    server = f"127.0.0.1:{node.c2s_port}"

    (tmp_path / "roster").mkdir()
    data = run_loadgen(
        loadgen,
        node,
        tmp_path / "roster",
        [
            "--server", server,
            "-n", "3", "--first", str(first),
            "roster-writes", "--outstanding", "2", "--rates", "15,max", "--step-secs", "1",
            "--drain-secs", "5", "--duration-secs", "5",
        ],
    )
    r = data["roster_writes"]
    assert [s["target_rate"] for s in r["steps"]] == [15, None], r
    for step in r["steps"]:
        assert step["sent"] > 0 and step["acked"] == step["sent"], step
        assert step["errors"] == {} and step["wait_errors"] == {}, step
        assert step["unanswered"] == 0 and step["late"] == 0, step
        assert step["latency_ms"]["count"] == step["acked"], step
    assert r["acked"] == r["sent"] and r["pushes"] == r["acked"], r
    assert r["best_acked_per_sec"] > 0, r
    assert sum(p["ok"] for p in r["timeline"]) == r["acked"], r

    # Senders lg16, lg17; recipients lg18..lg22, never logged in until the verification.
    (tmp_path / "offline").mkdir()
    data = run_loadgen(
        loadgen,
        node,
        tmp_path / "offline",
        [
            "--server", server,
            "-n", "2", "--first", str(first + 3),
            "offline-store", "--recipients", "5", "--messages", "10", "--batch", "2",
            "--metrics", f"http://127.0.0.1:{node.http_port}/metrics",
            "--drain-secs", "10", "--verify-secs", "10",
        ],
    )
    o = data["offline_store"]
    assert o["recipient_first"] == first + 5, o
    assert o["sent"] == 20 and o["bounced"] == 0 and o["accepted"] == 20, o
    # Five batches of two per sender, each acknowledged by its vCard query.
    assert o["barriers"] == o["barriers_answered"] == 10, o
    assert o["acked"] == 20 and o["acked_per_sec"] > 0, o
    assert o["ack_latency_ms"]["count"] == 10, o
    assert o["counter"]["stored"] == 20 and o["counter"]["scrape_failures"] == 0, o
    v = o["verify"]
    assert v["login"]["succeeded"] == 5 and v["login"]["failed"] == 0, v
    assert v["expected"] == v["delivered"] == v["delayed"] == 20, v
    assert v["lost"] == v["duplicates"] == v["stale"] == v["recipients_short"] == 0, v
    assert v["dropped"] == {} and v["close"]["unclean"] == 0, v


def add_users(node: Server, first: int, n: int) -> None:
    """Accounts lg<first>..lg<first+n-1> in one `switchboard user import`."""
    lines = "".join(f"lg{i}@{node.domain} {PASSWORD}\n" for i in range(first, first + n))
    r = node.cli("user", "import", "-", input=lines)
    assert r.returncode == 0, f"user import failed:\nstdout: {r.stdout}\nstderr: {r.stderr}"


def test_presence_with_provisioned_rosters(loadgen, node, tmp_path):
    """Rosters imported with `switchboard roster import` (what `ROSTER_GROUP=K
    load-tests/provision.sh` does): `--rosters provisioned` sends no subscription and finds
    every contact `both`. Accounts of its own (lg201..lg206), in groups of three."""
    first, n, group = 201, 6, 3
    add_users(node, first, n)
    pairs = "".join(
        f"lg{i}@{node.domain} lg{j}@{node.domain} both\n"
        for g in range(first, first + n, group)
        for i in range(g, g + group)
        for j in range(g, g + group)
        if i != j
    )
    r = node.cli("roster", "import", "-", input=pairs)
    assert r.returncode == 0, f"roster import failed:\nstdout: {r.stdout}\nstderr: {r.stderr}"
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(n), "--first", str(first),
            "presence", "--group", str(group), "--rosters", "provisioned", "--changes", "3",
            "--interval-ms", "100", "--setup-secs", "10", "--duration-secs", "5",
        ],
    )
    p = data["presence"]
    assert p["rosters"] == "provisioned", p
    assert p["ready"] == n and p["not_ready"] == 0, p
    assert p["expected"] == n * 3 * (group - 1), p
    assert p["delivered"] == p["expected"] and p["lost"] == 0 and p["duplicates"] == 0, p


def run_mixed(loadgen, node, tmp_path, first: int, n: int, *schedule: str) -> dict:
    """`mixed` for 6 s (then at most 10 s of drain) with users lg<first>.. (created here),
    a presence change every second, 0.2-1 s away at each reconnect, and `schedule`."""
    add_users(node, first, n)
    return run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(n), "--first", str(first),
            "mixed", "--presence-interval-secs", "1", "--min-pause-ms", "200",
            "--max-pause-ms", "1000", "--duration-secs", "6", "--drain-secs", "10",
            *schedule,
        ],
    )


def test_mixed(loadgen, node, tmp_path):
    """20 users (lg101..lg120) for 6 s, each every second or two sending a message, changing
    presence and reconnecting (closing its stream, 0.2-1 s away). Messages to a user who is
    away are stored and delivered when it is back: late, not lost. No TCP drops: a message in
    flight to a dropped connection is lost (no stream management)."""
    first, n = 101, 20
    data = run_mixed(
        loadgen, node, tmp_path, first, n,
        "--message-interval-secs", "1", "--reconnect-interval-secs", "2",
        "--drop-percent", "0", "--body-bytes", "150",
    )
    m = data["mixed"]
    assert data["login"]["succeeded"] == n, data["login"]
    assert m["users"] == n and m["body_bytes"] == 150, m
    g = m["messages"]
    assert g["sent"] > 0 and g["delivered"] == g["sent"], g
    assert g["lost"] == 0 and g["duplicates"] == 0 and g["bounced"] == 0, g
    assert g["stale"] == 0 and g["delivered_late"] > 0, g
    assert g["latency_ms"]["count"] + g["late_latency_ms"]["count"] == g["delivered"], g
    assert m["presences"]["sent"] > 0, m["presences"]
    r = m["reconnects"]
    assert r["ok"] > 0 and r["failed"] == 0 and r["failures"] == {} and r["gave_up"] == 0, r
    assert r["latency_ms"]["count"] == r["ok"], r
    assert m["online"]["end"] == n, m["online"]
    # Each reconnect closed its stream first; every session was closed at the end.
    assert r["abrupt"] == 0 and data["close"]["clean"] == r["ok"] + n, (data["close"], r)
    t = m["timeline"]
    assert sum(p["delivered"] for p in t) == g["delivered"], t
    assert sum(p["presences"] for p in t) == m["presences"]["sent"], t
    assert sum(p["logins_ok"] for p in t) == r["ok"], t


def test_messages_routed_to_a_closing_session_are_not_lost(loadgen, node, tmp_path):
    """50 users exchanging 1,000 messages/s and reconnecting (clean closes) every second or so:
    a message the router hands a session just before its client's `</stream:stream>` must
    still reach the client before the server's closing tag (or be stored offline). The server
    used to drop a few per run (2, 10 and 1 of ~4,000 in three runs of this test)."""
    first, n = 301, 50
    data = run_mixed(
        loadgen, node, tmp_path, first, n,
        "--message-interval-secs", "0.05", "--reconnect-interval-secs", "1",
    )
    g = data["mixed"]["messages"]
    assert g["sent"] > 1000 and data["mixed"]["reconnects"]["ok"] > 50, data["mixed"]
    assert g["lost"] == 0 and g["duplicates"] == 0 and g["bounced"] == 0, g


def assert_flaky_kept_every_message(data: dict, users: int) -> dict:
    """The flaky run's summary: drops happened, each one resumed, and the server's
    XEP-0198 promise held: every message arrived exactly once."""
    chat, f = data["chat"], data["chat"]["flaky"]
    assert f["clients"] == users // 2, f
    assert f["drops"] > 0 and f["resumed"] == f["drops"] and f["failed"] == 0, f
    assert f["resume_ms"]["count"] == f["resumed"], f
    assert chat["sent"] > 0 and chat["received"] == chat["sent"], chat
    assert chat["lost"] == 0 and chat["duplicates"] == 0 and chat["bounced"] == 0, chat
    return f


def test_flaky_clients_resume_and_lose_nothing(loadgen, node, tmp_path):
    """`chat --flaky-percent 50`: half the users drop their TCP connection about every
    second while messages flow both ways, and resume (XEP-0198) each time."""
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(USERS),
            "chat", "--messages", "40", "--interval-ms", "75", "--duration-secs", "20",
            "--flaky-percent", "50", "--flaky-every-secs", "1",
        ],
    )
    f = assert_flaky_kept_every_message(data, USERS)
    # One server: every resumption lands where the session was.
    assert f["resumed_elsewhere"] == 0, f


def test_flaky_clients_resume_on_another_node_of_a_cluster(loadgen, cluster, tmp_path):
    """The same over a three-node cluster: each drop resumes on the next node, so every
    resumption fetches the session from the node that held it (XEP-0198 §5 on any node)."""
    lines = "".join(f"lg{i}@localhost {PASSWORD}\n" for i in range(1, USERS + 1))
    for n in cluster.nodes:
        r = n.cli("user", "import", "-", input=lines)
        assert r.returncode == 0, r.stderr
    cluster.start()
    cluster.wait_shards_ready()
    # Each node has its own self-signed certificate: trust all three.
    cafile = tmp_path / "cluster-ca.pem"
    cafile.write_text("".join(Path(n.cafile).read_text() for n in cluster.nodes))
    servers = []
    for n in cluster.nodes:
        servers += ["--server", f"127.0.0.1:{n.c2s_port}"]
    data = run_loadgen(
        loadgen,
        cluster.nodes[0],
        tmp_path,
        [
            *servers,
            "-n", str(USERS),
            "chat", "--messages", "30", "--interval-ms", "100", "--duration-secs", "25",
            "--flaky-percent", "50", "--flaky-every-secs", "1",
        ],
        cafile=str(cafile),
    )
    f = assert_flaky_kept_every_message(data, USERS)
    assert f["resumed_elsewhere"] == f["resumed"], f


def test_pep_and_presence_fan_out(loadgen, node, tmp_path):
    """`pep` on accounts of its own (lg401..lg408, two groups of four: three contacts each).
    First `--event presence` (subscribing through the protocol), then PEP publishes on the
    rosters that made (`--rosters provisioned`). Every client announces caps whose disco#info
    asks for tune notifications and answers the server's query for them: without the answer
    the server would filter every notification out (XEP-0163 §4.3.3). A publish notifies the
    three contacts and the publisher's own session (the account's bare JID, XEP-0163 §4.3); a
    presence change the three contacts and, back, its sender (RFC 6121 §4.4.2)."""
    first, n, contacts = 401, 8, 3
    add_users(node, first, n)

    def fan_out(event: str, rosters: str, sub: str) -> dict:
        (tmp_path / sub).mkdir()
        data = run_loadgen(
            loadgen,
            node,
            tmp_path / sub,
            [
                "--server", f"127.0.0.1:{node.c2s_port}",
                "-n", str(n), "--first", str(first),
                "--server-pid", str(node.proc.pid),
                "pep", "--group", str(contacts + 1), "--rosters", rosters, "--event", event,
                "--rates", "8,16", "--step-secs", "1", "--drain-secs", "5", "--setup-secs", "10",
                "--stop-after", "0",
            ],
        )
        p = data["pep"]
        assert p["event"] == event and p["contacts"] == contacts, p
        assert p["ready"] == n and p["not_ready"] == 0, p
        assert [s["target_rate"] for s in p["steps"]] == [8, 16], p
        for s in p["steps"]:
            assert s["sent"] > 0 and s["lost"] == 0 and s["late"] == 0, s
            # Each event reaches the three contacts and the sender's own session.
            assert s["delivered_to_contacts"] == s["sent"] * contacts, s
            assert s["delivered_to_self"] == s["sent"], s
            assert s["expected"] == s["sent"] * (contacts + 1) == s["delivered"], s
            assert s["duplicates"] == 0 and s["errors"] == 0, s
            # 10 ms ticks: a small step may cost none.
            assert s["server_cpu_us_per_notification"] >= 0, s
        assert p["sent"] == sum(s["sent"] for s in p["steps"]), p
        assert p["lost"] == 0 and p["duplicates"] == 0 and p["stale"] == 0, p
        assert p["latency_ms"]["count"] == p["delivered"] == p["sent"] * (contacts + 1), p
        return p

    fan_out("presence", "protocol", "presence")
    p = fan_out("pep", "provisioned", "pep")
    # Every publish was answered with a result.
    assert all(s["acked"] == s["sent"] for s in p["steps"]), p


def test_muc_room_fan_out(loadgen, node, tmp_path):
    """`muc` on accounts of its own (lg501..lg505): the first joins alone, gets status 201 and
    makes the new room an instant one (XEP-0045 §10.1.2); the others join; then at two rates
    every groupchat message must come back once to each of the five occupants, the sender
    included (§7.4), with nothing lost, late, duplicated or refused."""
    first, n = 501, 5
    add_users(node, first, n)
    data = run_loadgen(
        loadgen,
        node,
        tmp_path,
        [
            "--server", f"127.0.0.1:{node.c2s_port}",
            "-n", str(n), "--first", str(first),
            "--server-pid", str(node.proc.pid),
            "muc", "--room", "smoke@conference.localhost",
            "--rates", "5,10", "--step-secs", "1", "--drain-secs", "5", "--setup-secs", "10",
            "--stop-after", "0",
        ],
    )
    m = data["muc"]
    assert m["room"] == "smoke@conference.localhost" and m["created"] is True, m
    assert m["occupants"] == n and m["not_ready"] == 0, m
    assert [s["target_rate"] for s in m["steps"]] == [5, 10], m
    for s in m["steps"]:
        assert s["sent"] > 0 and s["lost"] == 0 and s["late"] == 0, s
        assert s["expected"] == s["sent"] * n == s["delivered"], s
        assert s["delivered_to_self"] == s["sent"], s
        assert s["duplicates"] == 0 and s["errors"] == 0 and s["sustained"], s
        # 10 ms ticks: a small step may cost none.
        assert s["server_cpu_us_per_delivery"] >= 0, s
    assert m["sent"] == sum(s["sent"] for s in m["steps"]), m
    assert m["stale"] == 0 and m["latency_ms"]["count"] == m["delivered"] == m["sent"] * n, m
    assert m["server_pids"] == [node.proc.pid], m
