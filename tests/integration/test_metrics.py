"""The operator's HTTP endpoint: Prometheus /metrics (valid text format, counters that move
by what scripted traffic did), /healthz and /readyz, and the token-protected admin API."""

import http.client as httpclient
import json
import os
import stat
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
    if body is not None:
        # urllib would say application/x-www-form-urlencoded, which the API refuses.
        req.add_header("Content-Type", "application/json")
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


def raw(server, method, path, headers, body=b""):
    """(status, body) of one request with exactly these headers (http.client adds Host only
    when not given, and Content-Length for a body)."""
    conn = httpclient.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def users(server):
    status, body = http(server, "/api/users")
    assert status == 200, body
    return json.loads(body)["result"]


AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW_USER = json.dumps({"jid": "browser@localhost", "password": "pw-browser-1"}).encode()


def test_admin_api_refuses_browsers_and_rebound_hosts(node):
    here = f"127.0.0.1:{node.http_port}"
    before = users(node)
    # A page on any origin, even the node's own: 403, and nothing is created.
    for origin in ("http://evil.example", f"http://{here}", "null"):
        status, body = raw(node, "POST", "/api/users",
                           {**AUTH, "Host": here, "Origin": origin,
                            "Content-Type": "application/json"}, NEW_USER)
        assert status == 403 and "Origin" in json.loads(body)["error"], (origin, status, body)
    status, body = raw(node, "GET", "/api/users", {**AUTH, "Host": here, "Origin": "http://x"})
    assert status == 403, body
    status, body = raw(node, "GET", "/api/users",
                       {**AUTH, "Host": here, "Sec-Fetch-Site": "cross-site"})
    assert status == 403, body
    # DNS rebinding: the browser sends the attacker's name as Host.
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{node.http_port}",
                 f"10.9.8.7:{node.http_port}"):
        status, body = raw(node, "GET", "/api/users", {**AUTH, "Host": host})
        assert status == 421, (host, status, body)
    # The listen address, loopback names and addresses are this node.
    for host in (here, f"localhost:{node.http_port}", "LocalHost", f"[::1]:{node.http_port}"):
        status, body = raw(node, "GET", "/api/users", {**AUTH, "Host": host})
        assert status == 200, (host, status, body)
    # Writes with a body must be JSON: what an HTML form can send without a preflight is not.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, body = raw(node, "POST", "/api/users",
                           {**AUTH, "Host": here, "Content-Type": ctype}, NEW_USER)
        assert status == 415, (ctype, status, body)
    status, body = raw(node, "POST", "/api/users", {**AUTH, "Host": here}, NEW_USER)
    assert status == 415, body
    assert users(node) == before, "a refused request changed nothing"
    log = node.log_path.read_text(errors="replace")
    assert "http: admin API request refused" in log and "status=421" in log, node.log_tail(20)
    assert "admin API write without a JSON body refused" in log, node.log_tail(20)
    # Probes and metrics stay open to scrapers whatever they send.
    assert raw(node, "GET", "/healthz", {"Host": "prometheus.internal"})[0] == 200
    status, body = raw(node, "POST", "/api/users",
                       {**AUTH, "Host": here, "Content-Type": "application/json; charset=utf-8"},
                       NEW_USER)
    assert status == 200, body
    assert "browser@localhost" in users(node)
    # A write without a body needs no Content-Type.
    status, body = raw(node, "DELETE", "/api/users/browser%40localhost", {**AUTH, "Host": here})
    assert status == 200, body


def test_admin_api_answers_configured_host_names(make_server):
    srv = make_server({"http": {"token": TOKEN, "allowed_hosts": ["admin.switchboard.test"]}},
                      accounts=0)
    status, body = raw(srv, "GET", "/api/users", {**AUTH, "Host": "admin.switchboard.test:9090"})
    assert status == 200, body
    status, body = raw(srv, "GET", "/api/users", {**AUTH, "Host": "other.switchboard.test"})
    assert status == 421, body


def test_a_host_name_with_a_port_is_refused_in_allowed_hosts(make_server):
    srv = make_server({"http": {"allowed_hosts": ["admin.test:9090"]}}, accounts=0, start=False)
    r = srv.cli("run", timeout=10)
    assert r.returncode != 0 and "http.allowed_hosts" in r.stderr, r.stderr


def test_data_dir_and_everything_in_it_is_owner_only(node):
    """The harness created data_dir 0755 (default umask): the node narrows it at start,
    and the database, the generated TLS key and certificate and the admin socket are 0600."""
    def mode(p):
        return stat.S_IMODE(os.lstat(p).st_mode)

    data = node.data_dir
    assert mode(data) == 0o700, oct(mode(data))
    seen = {}
    for root, dirs, files in os.walk(data):
        for d in dirs:
            seen[os.path.join(root, d)] = (mode(os.path.join(root, d)), 0o700)
        for f in files:
            seen[os.path.join(root, f)] = (mode(os.path.join(root, f)), 0o600)
    wrong = {p: oct(m) for p, (m, want) in seen.items() if m != want}
    assert not wrong, wrong
    names = {os.path.relpath(p, data) for p in seen}
    for expected in ("admin.sock", "tls/key.pem", "tls/cert.pem", "db/conf", "db/db"):
        assert expected in names, sorted(names)
    assert stat.S_ISSOCK(os.lstat(data / "admin.sock").st_mode)
    # No leftover of the private directory the socket was bound in.
    assert not [n for n in names if n.startswith(".admin-bind")], sorted(names)
    # The CLI still reaches the node through the socket.
    r = node.cli("user", "list")
    assert r.returncode == 0, r.stderr
