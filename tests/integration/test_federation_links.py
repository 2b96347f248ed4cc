"""Federation between two Switchboard nodes (no third-party server needed): the link
life cycle and policies. Messages both ways over STARTTLS and over direct TLS (XEP-0368),
bounces for unreachable and silent peers, idle links closing and reopening, and a policy
that refuses dialback.
"""

from __future__ import annotations

import socket

import pytest

from conftest import free_ports
from federation import (
    SB_ADDR,
    Certs,
    Client,
    StubDns,
    bodies,
    make_sb,
    render_toml_nested,
    wait_until,
)

A, B = "a.fed.test", "b.fed.test"


@pytest.fixture
def pair(tmp_path):
    """factory(a_s2s=..., b_s2s=..., a_route=..., a_dns=...) -> (node_a, node_b), routed
    to each other (A's route to B overridable; with `a_dns`, A has no route and finds B
    through that DNS server), started."""
    made = []

    def _make(a_s2s: dict | None = None, b_s2s: dict | None = None, a_route: str | None = None,
              a_dns: StubDns | None = None):
        certs = Certs(tmp_path / "certs", "selfsigned", [])
        a = make_sb(tmp_path / "a", certs, routes={}, s2s=a_s2s, accounts=3, domain=A, name="a")
        b = make_sb(tmp_path / "b", certs, routes={}, s2s=b_s2s, accounts=3, domain=B, name="b")
        for x, y, route in ((a, b, a_route), (b, a, None)):
            x.config["s2s"]["routes"] = {y.domain: route or "{}:{}".format(*y.s2s_addr)}
            x.config_path.write_text(render_toml_nested(x.config))
        if a_dns is not None:
            a.config["s2s"]["routes"] = {}
            a.config["s2s"]["nameserver"] = f"127.0.0.1:{a_dns.port}"
            # The stub DNS points at loopback addresses, which are refused when learned from
            # DNS unless allowed (test_s2s_hardening.py checks the refusal).
            a.config["s2s"]["allow_private_targets"] = True
            a.config_path.write_text(render_toml_nested(a.config))
        made.extend([a, b])
        a.start()
        b.start()
        return a, b

    yield _make
    for srv in made:
        if srv.proc is not None and srv.exit_code is None:
            srv.stop()


@pytest.fixture
async def login():
    made = []

    async def _login(srv):
        acc = srv.account()
        c = Client(f"{acc.jid}/r", acc.password, SB_ADDR, srv.c2s_port)
        made.append(c)
        return await c.start()

    yield _login
    for c in made:
        await c.stop()


def bare(c: Client) -> str:
    return c.jid.split("/")[0]


def errors(c: Client) -> list[str]:
    return [m["error"]["condition"] for m in c.messages if m["type"] == "error"]


async def exchange(a: Client, b: Client, tag: str) -> None:
    a.xmpp.send_message(mto=bare(b), mbody=f"{tag}-ab", mtype="chat")
    b.xmpp.send_message(mto=bare(a), mbody=f"{tag}-ba", mtype="chat")
    await wait_until(lambda: f"{tag}-ab" in bodies(b) and f"{tag}-ba" in bodies(a), 20,
                     f"messages {tag} both ways")


async def test_two_nodes_exchange_messages_over_dialback(pair, login):
    na, nb = pair()
    a, b = await login(na), await login(nb)
    await exchange(a, b, "x")
    na.wait_log(rf's2s outbound link authenticated local={A} remote={B} method="dialback" tls=true')
    na.wait_log(rf'domain={B} method="dialback" tls=true')
    # Federation shows in /metrics: links by state, authentications by method, routed stanzas.
    from test_metrics import scrape, value

    m = scrape(na)
    assert value(m, "switchboard_s2s_authentications_total",
                 direction="outbound", method="dialback") >= 1, m
    assert value(m, "switchboard_s2s_links", direction="outbound", state="authenticated") >= 1
    assert value(m, "switchboard_routed_total", destination="s2s") >= 1


async def test_ping_to_a_remote_domain(pair, login):
    """A client pings the other node's domain: the IQ crosses, the answer comes back."""
    na, nb = pair()
    a = await login(na)
    await a.xmpp.plugin["xep_0199"].ping(jid=B, timeout=20)


async def test_direct_tls_link(pair, login, tmp_path):
    """B listens for direct TLS (XEP-0368) too; A's static route says tls://."""
    (tls_port,) = free_ports(1)
    na, nb = pair(
        a_route=f"tls://{SB_ADDR}:{tls_port}",
        b_s2s={"tls_listen": f"{SB_ADDR}:{tls_port}"},
    )
    a, b = await login(na), await login(nb)
    await exchange(a, b, "t")
    nb.wait_log(rf"s2s listening addr={SB_ADDR}:{tls_port} direct_tls=true")
    na.wait_log(rf's2s outbound link authenticated local={A} remote={B} method="dialback" tls=true')


async def test_unreachable_domain_bounces_remote_server_not_found(pair, login):
    (closed,) = free_ports(1)
    na, nb = pair(a_route=f"{SB_ADDR}:{closed}")
    a = await login(na)
    a.xmpp.send_message(mto=f"someone@{B}", mbody="into the void", mtype="chat")
    await wait_until(lambda: "remote-server-not-found" in errors(a), 20, "remote-server-not-found")
    bounce = next(m for m in a.messages if m["type"] == "error")
    assert bounce["from"].bare == f"someone@{B}"
    na.wait_log(rf"s2s link failed local={A} remote={B}")
    # Right after a failure the peer is not dialled again: the next stanza bounces at once.
    a.xmpp.send_message(mto=f"other@{B}", mbody="again", mtype="chat")
    await wait_until(lambda: errors(a).count("remote-server-not-found") == 2, 5, "a second bounce")
    assert na.log_text().count(f"s2s link failed local={A} remote={B}") == 1


async def test_silent_peer_bounces_remote_server_timeout(pair, login):
    """A peer that accepts TCP but never answers: the stanzas queued for it bounce with
    remote-server-timeout after s2s.auth_timeout_secs."""
    silent = socket.socket()
    silent.bind((SB_ADDR, 0))
    silent.listen(8)
    try:
        na, nb = pair(a_s2s={"auth_timeout_secs": 2},
                      a_route="{}:{}".format(*silent.getsockname()))
        a = await login(na)
        for i in range(3):
            a.xmpp.send_message(mto=f"someone@{B}", mbody=f"q{i}", mtype="chat")
        await wait_until(lambda: errors(a).count("remote-server-timeout") == 3, 20,
                         "three remote-server-timeout bounces")
    finally:
        silent.close()


async def test_idle_link_closes_and_reopens(pair, login):
    na, nb = pair(a_s2s={"idle_timeout_secs": 2}, b_s2s={"idle_timeout_secs": 2})
    a, b = await login(na), await login(nb)
    await exchange(a, b, "before")
    na.wait_log(rf"s2s link closed local={A} remote={B}", timeout=15)
    await exchange(a, b, "after")
    assert na.log_text().count(f'local={A} remote={B} method="dialback"') >= 2


async def test_policy_without_dialback_refuses_unverifiable_peers(pair, login):
    """B accepts only SASL EXTERNAL; A's self-signed certificate cannot be verified, so
    A's link fails with a clear reason and A's user gets a bounce."""
    na, nb = pair(b_s2s={"dialback": False})
    a = await login(na)
    a.xmpp.send_message(mto=f"someone@{B}", mbody="refused", mtype="chat")
    await wait_until(lambda: "remote-server-not-found" in errors(a), 20, "a bounce")
    na.wait_log(rf"s2s link failed local={A} remote={B} reason=not-authorized: {B} offers neither dialback nor SASL EXTERNAL")


async def test_discovery_through_srv_and_a_records(pair, login):
    """No static route: A finds B with `_xmpp-server._tcp` SRV and the target's A record."""
    b_port, = free_ports(1)
    dns = StubDns(a={B: SB_ADDR}, srv={f"_xmpp-server._tcp.{B}": (B, b_port)})
    try:
        na, nb = pair(b_s2s={"listen": f"{SB_ADDR}:{b_port}"}, a_dns=dns)
        a, b = await login(na), await login(nb)
        await exchange(a, b, "srv")
        assert (f"_xmpp-server._tcp.{B}", 33) in dns.queries
        assert (B, 1) in dns.queries
    finally:
        dns.close()


async def test_direct_tls_srv_is_preferred(pair, login):
    """`_xmpps-server._tcp` (XEP-0368) points at B's direct-TLS port, `_xmpp-server._tcp`
    at a closed port with the same priority: the direct-TLS target is tried first."""
    b_port, tls_port, closed = free_ports(3)
    dns = StubDns(
        a={B: SB_ADDR},
        srv={f"_xmpps-server._tcp.{B}": (B, tls_port), f"_xmpp-server._tcp.{B}": (B, closed)},
    )
    try:
        na, nb = pair(b_s2s={"listen": f"{SB_ADDR}:{b_port}", "tls_listen": f"{SB_ADDR}:{tls_port}"},
                      a_dns=dns)
        a, b = await login(na), await login(nb)
        await exchange(a, b, "xmpps")
    finally:
        dns.close()


def test_unencrypted_peer_is_refused_with_a_stream_error(pair):
    """With s2s.require_tls (the default), dialback before STARTTLS is a policy violation,
    answered with a stream error and logged."""
    from federation import RawS2s

    na, nb = pair()
    raw = RawS2s(na.s2s_addr, B, A)
    try:
        raw.header()
        features = raw.read_until(r"</stream:features>")
        assert "<required/>" in features and "urn:xmpp:features:dialback" not in features, features
        raw.send(f"<db:result from='{B}' to='{A}'>{'ab' * 32}</db:result>")
        out = raw.read_until(r"</stream:stream>")
        assert "<policy-violation" in out and "STARTTLS is required" in out, out
    finally:
        raw.close()
    na.wait_log(r"s2s inbound stream closed with an error.*policy-violation.*STARTTLS is required")


async def test_probe_of_an_offline_contact_is_answered_unavailable(pair, login):
    from federation import presences_from, subscribe_both_ways

    na, nb = pair()
    a, b = await login(na), await login(nb)
    await subscribe_both_ways(a, b)
    await b.stop()
    await wait_until(lambda: presences_from(a, bare(b), "unavailable"), 20, "b going offline")
    # A new session of a's account probes b's server, which answers for the offline b.
    acc = bare(a)
    a2 = Client(f"{acc}/two", a.password, SB_ADDR, na.c2s_port)
    try:
        await a2.start()
        await wait_until(
            lambda: any(p["type"] == "unavailable" and str(p["from"]) == bare(b)
                        for p in a2.presences),
            20, "unavailable presence in answer to the probe",
        )
    finally:
        await a2.stop()
