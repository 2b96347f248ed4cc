"""Smoke test of the bundled load generator (load-tests/, `switchboard-loadgen`).

Runs each scenario with a handful of users for a second or two against one node and checks
the JSON summary: nothing failed, something was counted.  It catches a loadgen that no
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


def run_loadgen(loadgen: Path, node: Server, tmp_path: Path, args: list[str]) -> dict:
    summary = tmp_path / "summary.json"
    report = tmp_path / "report"
    cmd = [
        str(loadgen),
        "--user-prefix", "lg",
        "--password", PASSWORD,
        "--ca", node.cafile,
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
    assert r.returncode == 0, (
        f"`{' '.join(cmd)}` exited with {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    )
    data = json.loads(summary.read_text())
    context = f"summary: {json.dumps(data, indent=1)}\nstdout: {r.stdout}"
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
        ],
    )
    st = data["chat"]["stepped"]
    assert [s["target_rate"] for s in st["steps"]] == [24, 48], st
    for step in st["steps"]:
        assert step["sent"] > 0 and step["received"] == step["sent"], st
        assert step["lost"] == 0 and step["duplicates"] == 0 and step["bounced"] == 0, st
        assert step["latency_ms"]["count"] == step["received"], st
    assert data["chat"]["sent"] == sum(s["sent"] for s in st["steps"]), data["chat"]
    assert st["sustainable_rate"] in (0, 24, 48), st


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
