"""The operator's HTTP endpoint: Prometheus /metrics (valid text format, counters that move
by what scripted traffic did), /healthz and /readyz, and the token-protected admin API."""

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rawxmpp import authenticated, login, online, q

TOKEN = "metrics-test-token-0123456789"


def http(server, path, *, method="GET", body=None, token=TOKEN, timeout=10):
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(server) -> dict:
    """{(name, frozenset(labels)): value} from a parse with the official parser."""
    status, text = http(server, "/metrics", token=None)
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def node(make_server):
    return make_server({"http": {"token": TOKEN}}, accounts=4)


async def test_counters_move_by_what_the_traffic_did(node):
    before = scrape(node)
    a, b = node.account(), node.account()
    ca = await online(node, a, "r")
    cb = await online(node, b, "r")
    third = await authenticated(node, a, mechanism="SCRAM-SHA-256")  # authenticated, not bound
    await third.close()
    try:
        for i in range(5):
            await ca.send(f"<message to='{cb.jid}' id='m{i}' type='chat'><body>{i}</body></message>")
        for i in range(5):
            await cb.expect(lambda e, i=i: e.tag == q("message") and e.get("id") == f"m{i}")
        await ca.send("<message to='nobody@localhost' id='x' type='chat'><body>?</body></message>")
        await ca.expect(lambda e: e.get("id") == "x" and e.get("type") == "error")
        after = scrape(node)
        d = lambda name, **l: value(after, name, **l) - value(before, name, **l)  # noqa: E731
        assert d("switchboard_logins_total", result="success", mechanism="SCRAM-SHA-256",
                 reason="none") == 3
        assert d("switchboard_stanzas_total", direction="in", kind="message", type="chat") == 6
        assert d("switchboard_stanzas_total", direction="out", kind="message", type="chat") >= 5
        assert d("switchboard_routed_total", destination="local") >= 5
        assert d("switchboard_bounces_total", reason="service-unavailable") == 1
        assert value(after, "switchboard_c2s_sessions") == 2
        assert value(after, "switchboard_c2s_connections", state="bound", tls="starttls") == 2
        assert d("switchboard_login_duration_seconds_count") == 2
        assert d("switchboard_c2s_bytes_total", direction="in") > 0
        assert value(after, "switchboard_storage_bytes") > 0
        # Everything queued for the clients above has been written by now.
        assert ("switchboard_c2s_queued_bytes", frozenset()) in after
        assert value(after, "switchboard_c2s_queued_bytes") == 0
    finally:
        await ca.close()
        await cb.close()


async def test_failed_logins_are_counted_by_mechanism(node):
    before = scrape(node)
    a = node.account()
    from conftest import Account

    wrong = Account(a.local, a.domain, "not-the-password")
    with pytest.raises(Exception):
        await authenticated(node, wrong, mechanism="SCRAM-SHA-1")
    after = scrape(node)
    key = dict(result="failure", mechanism="SCRAM-SHA-1", reason="not-authorized")
    assert value(after, "switchboard_logins_total", **key) - value(
        before, "switchboard_logins_total", **key
    ) == 1


def test_probes(node):
    assert http(node, "/healthz", token=None) == (200, "ok\n")
    status, body = http(node, "/readyz", token=None)
    assert status == 200 and json.loads(body)["ready"] is True, body
    assert http(node, "/nope", token=None)[0] == 404


async def test_admin_api_needs_the_token_and_manages_users_and_sessions(node):
    assert http(node, "/api/users", token=None)[0] == 401
    assert http(node, "/api/users", token="wrong")[0] == 401
    status, body = http(node, "/api/users", method="POST",
                        body={"jid": "apiuser@localhost", "password": "pw-api-1"})
    assert status == 200, body
    status, body = http(node, "/api/users")
    assert status == 200 and "apiuser@localhost" in json.loads(body)["result"], body
    status, body = http(node, "/api/users", method="POST",
                        body={"jid": "apiuser@localhost", "password": "x"})
    assert status == 400 and "already exists" in json.loads(body)["error"], body

    from conftest import Account

    c = await login(node, Account("apiuser", "localhost", "pw-api-1"), resource="r")
    status, body = http(node, "/api/sessions")
    assert status == 200 and any(s["jid"] == "apiuser@localhost/r"
                                 for s in json.loads(body)["result"]), body
    status, body = http(node, "/api/stats")
    assert status == 200 and json.loads(body)["result"]["sessions"] >= 1, body
    status, body = http(node, "/api/sessions/apiuser%40localhost", method="DELETE")
    assert status == 200, body
    assert await c.expect_stream_error() == "not-authorized"
    status, body = http(node, "/api/users/apiuser@localhost", method="DELETE")
    assert status == 200, body
    status, body = http(node, "/api/users/apiuser@localhost", method="DELETE")
    assert status == 404, body


def test_a_public_listener_without_token_is_refused(make_server):
    srv = make_server({"http": {"listen": "0.0.0.0:0", "token": ""}}, accounts=0, start=False)
    r = srv.cli("run", timeout=10)
    assert r.returncode != 0 and "http.token" in r.stderr, r.stderr


def test_the_cli_manages_a_node_through_the_http_api(node, tmp_path):
    # A config with another data dir: only --api can reach the node.
    other = tmp_path / "elsewhere.toml"
    other.write_text(f'data_dir = "{tmp_path / "nodata"}"\n')
    import subprocess

    from conftest import SWITCHBOARD_BIN

    def cli(*args, token=TOKEN):
        extra = ["--token", token] if token else []
        return subprocess.run(
            [str(SWITCHBOARD_BIN), "--config", str(other),
             "--api", f"http://127.0.0.1:{node.http_port}", *extra, *args],
            capture_output=True, text=True, timeout=30,
        )

    r = cli("user", "add", "viahttp@localhost", "--password", "pw-via-http")
    assert r.returncode == 0, r.stderr
    r = cli("user", "list")
    assert "viahttp@localhost" in r.stdout.split(), r.stdout
    r = cli("user", "list", token="wrong")
    assert r.returncode == 1 and "bearer token" in r.stderr, r.stderr
