"""Stream management (XEP-0198 v1.6) over raw sockets: enable, acknowledgements both ways with
exact counts, detached sessions that keep presence and stanzas, expiry that hands what the
client never acknowledged to offline storage, and resumption."""

import asyncio
import urllib.request

from rawxmpp import (
    authenticated,
    is_message,
    is_presence,
    login,
    online,
    q,
    stanza_error,
    subscribe,
    xml_str,
)

NS_SM = "urn:xmpp:sm:3"


def sm(tag: str) -> str:
    return f"{{{NS_SM}}}{tag}"


def is_sm(tag: str):
    return lambda e: e.tag == sm(tag)


async def enable(c, resume=True, max_=None):
    attrs = " resume='true'" if resume else ""
    if max_ is not None:
        attrs += f" max='{max_}'"
    await c.send(f"<enable xmlns='{NS_SM}'{attrs}/>")
    return await c.expect(lambda e: e.tag in (sm("enabled"), sm("failed")), 5, "<enabled/>")


async def handled(c) -> int:
    """Ask the server for its count of our stanzas."""
    await c.send(f"<r xmlns='{NS_SM}'/>")
    a = await c.expect(is_sm("a"), 5, "<a h/> answering our <r/>")
    return int(a.get("h"))


def metrics(srv) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=5) as r:
        return r.read().decode()


def sm_servers(make_server, **settings):
    return make_server({"modules.stream_management": settings}, accounts=4)


async def test_feature_offered_after_auth_and_enable_answers_with_id_and_max(server):
    acct = server.account()
    c = await login(server, acct, resource="sm")
    try:
        assert c.post_auth_features.find(sm("sm")) is not None, xml_str(c.post_auth_features)
        enabled = await enable(c, max_=60)
        assert enabled.tag == sm("enabled"), xml_str(enabled)
        assert enabled.get("resume") in ("true", "1"), xml_str(enabled)
        assert enabled.get("id"), xml_str(enabled)
        assert enabled.get("max") == "60", xml_str(enabled)
        # §3: a second enable on the same stream fails.
        again = await enable(c)
        assert again.tag == sm("failed"), xml_str(again)
        assert again.find(f"{{urn:ietf:params:xml:ns:xmpp-stanzas}}unexpected-request") is not None
    finally:
        await c.close()


async def test_enable_without_resume_has_no_id_and_max_is_capped(make_server):
    srv = sm_servers(make_server, resume_timeout_secs=60, max_resume_timeout_secs=120)
    acct = srv.account()
    c = await login(srv, acct, resource="a")
    d = await login(srv, acct, resource="b")
    try:
        plain = await enable(c, resume=False)
        assert plain.tag == sm("enabled") and plain.get("id") is None, xml_str(plain)
        capped = await enable(d, max_=86400)
        assert capped.get("max") == "120", xml_str(capped)
    finally:
        await c.close()
        await d.close()


async def test_server_counts_client_stanzas_and_wraps_nothing_before_enable(server):
    acct = server.account()
    c = await login(server, acct, resource="count")
    try:
        await c.ping()  # before enable: not counted
        await enable(c)
        assert await handled(c) == 0
        await c.ping()
        await c.send(f"<message to='{acct.jid}' id='self1'><body>x</body></message>")
        await c.send("<presence/>")
        assert await handled(c) == 3
    finally:
        await c.close()


async def test_server_requests_acks_and_releases_what_the_client_acknowledged(server):
    a_acct, b_acct = server.account(), server.account()
    a = await login(server, a_acct, resource="a")
    b = await login(server, b_acct, resource="b")
    try:
        await enable(b)
        await a.send(f"<message to='{b.jid}' id='m1'><body>one</body></message>")
        await b.expect(is_message("m1"), 5, "m1")
        r = await b.expect(is_sm("r"), 5, "the server's <r/> after a stanza")
        assert r is not None
        # Acknowledging more than was sent is a stream error (§4).
        await b.send(f"<a xmlns='{NS_SM}' h='5'/>")
        cond = await b.expect_stream_error()
        assert cond == "undefined-condition", cond
        raw = b.describe()
        assert "handled-count-too-high" in raw, raw
    finally:
        await a.close()
        await b.close()


async def test_detached_session_keeps_presence_then_expires_to_offline(make_server):
    srv = sm_servers(make_server, resume_timeout_secs=3)
    a_acct, b_acct = srv.account(), srv.account()
    a = await online(srv, a_acct, "a")
    b = await online(srv, b_acct, "b")
    await subscribe(a, b)
    await subscribe(b, a)
    b2 = None
    try:
        await enable(b)
        await b.send(f"<a xmlns='{NS_SM}' h='0'/>")
        await a.drain(0.3)
        b.abort()  # the phone lost its network: no </stream>
        await asyncio.sleep(0.5)
        # Detached: no unavailable presence, messages are accepted (no error).
        await a.send(f"<message to='{b.jid}' type='chat' id='while-away'><body>hold</body></message>")
        early = await a.drain(1.0)
        assert not [e for e in early if e.get("type") in ("unavailable", "error")], [
            xml_str(e) for e in early
        ]
        # After max seconds the session ends: contacts see unavailable ...
        await a.expect(is_presence(b.jid, "unavailable"), 8, "b's unavailable at expiry")
        # ... and what b never acknowledged waits offline for its next login.
        b2 = await online(srv, b_acct, "b2")
        got = await b2.expect(is_message("while-away"), 5, "the message kept for b")
        assert got.findtext(q("body")) == "hold", xml_str(got)
        assert stanza_error(got) == (None, None)
        assert 'switchboard_sm_sessions_total{event="expired"} 1' in metrics(srv)
        assert 'switchboard_sm_stanzas_total{outcome="rerouted"} 1' in metrics(srv)
    finally:
        await a.close()
        if b2 is not None:
            await b2.close()


async def resume(srv, acct, previd, h, label="resumer"):
    c = await authenticated(srv, acct, label=label)
    await c.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
    answer = await c.expect(lambda e: e.tag in (sm("resumed"), sm("failed")), 12, "<resumed/>")
    return c, answer


async def test_resume_after_a_dropped_connection_retransmits_in_order(make_server):
    srv = sm_servers(make_server, resume_timeout_secs=30)
    a_acct, b_acct = srv.account(), srv.account()
    a = await online(srv, a_acct, "a")
    b = await online(srv, b_acct, "b")
    await subscribe(a, b)
    await subscribe(b, a)
    b2 = None
    try:
        enabled = await enable(b)
        previd = enabled.get("id")
        await b.send(f"<message to='{a.jid}' id='from-b'><body>up</body></message>")
        await a.expect(is_message("from-b"), 5, "b's message")
        await a.send(f"<message to='{b.jid}' type='chat' id='m1'><body>one</body></message>")
        await b.expect(is_message("m1"), 5, "m1")  # read, never acknowledged
        b.abort()
        await asyncio.sleep(0.3)
        await a.send(f"<message to='{b.jid}' type='chat' id='m2'><body>two</body></message>")
        await a.drain(0.3)
        b2, answer = await resume(srv, b_acct, previd, 0)
        assert answer.tag == sm("resumed"), xml_str(answer)
        assert answer.get("previd") == previd, xml_str(answer)
        assert answer.get("h") == "1", f"the server handled one stanza of b's: {xml_str(answer)}"
        got = []
        while len(got) < 2:
            e = await b2.expect(lambda e: e.tag == q("message"), 5, "retransmitted messages")
            got.append(e.get("id"))
        assert got == ["m1", "m2"], got
        # The session goes on: counts continue, and a saw nothing of it.
        assert await handled(b2) == 1
        seen = await a.drain(0.5)
        assert not [e for e in seen if e.tag == q("presence")], [xml_str(e) for e in seen]
        await a.send(f"<message to='{b.jid}' type='chat' id='m3'><body>three</body></message>")
        await b2.expect(is_message("m3"), 5, "m3 to the resumed session")
        # Acknowledge all three: 2 retransmitted + 1 new, counted from the old h (0).
        await b2.send(f"<a xmlns='{NS_SM}' h='3'/>")
        assert 'switchboard_sm_sessions_total{event="resumed_local"} 1' in metrics(srv)
    finally:
        await a.close()
        if b2 is not None:
            await b2.close()


async def test_resume_refused_for_junk_other_accounts_and_expired_sessions(make_server):
    srv = sm_servers(make_server, resume_timeout_secs=2)
    b_acct, m_acct = srv.account(), srv.account()
    b = await login(srv, b_acct, resource="b")
    previd = (await enable(b)).get("id")
    b.abort()
    for who, pid in ((b_acct, "bm90LWFuLWlk"), (m_acct, previd)):
        c, answer = await resume(srv, who, pid, 0, label="intruder")
        assert answer.tag == sm("failed"), xml_str(answer)
        assert answer.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
        # The stream is still usable: the client binds instead.
        resp = await c.bind("fresh")
        assert resp.get("type") == "result", xml_str(resp)
        await c.close()
    await asyncio.sleep(3)
    c, answer = await resume(srv, b_acct, previd, 0, label="late")
    assert answer.tag == sm("failed"), f"expired sessions cannot be resumed: {xml_str(answer)}"
    await c.close()


async def test_resume_while_the_old_connection_looks_alive_closes_it(make_server):
    srv = sm_servers(make_server)
    b_acct = srv.account()
    old = await login(srv, b_acct, resource="phone")
    previd = (await enable(old)).get("id")
    await old.ping()
    new, answer = await resume(srv, b_acct, previd, 0, label="new")
    try:
        assert answer.tag == sm("resumed"), xml_str(answer)
        assert answer.get("h") == "1", xml_str(answer)
        cond = await old.expect_stream_error()
        assert cond == "conflict", cond
        pong = await new.ping()
        assert pong.get("type") == "result", xml_str(pong)
    finally:
        await new.close()


async def test_a_new_bind_replaces_a_detached_session_and_its_id_dies(make_server):
    srv = sm_servers(make_server, resume_timeout_secs=30)
    a_acct, b_acct = srv.account(), srv.account()
    a = await login(srv, a_acct, resource="a")
    b = await online(srv, b_acct, "phone")
    previd = (await enable(b)).get("id")
    await a.send(f"<message to='{b.jid}' type='chat' id='kept'><body>k</body></message>")
    await b.expect(is_message("kept"), 5, "kept")
    b.abort()
    await asyncio.sleep(0.3)
    b2 = await online(srv, b_acct, "phone")
    try:
        # The replaced session's unacknowledged message goes to the account, which has the
        # new session online.
        got = await b2.expect(is_message("kept"), 5, "the replaced session's message")
        assert got.findtext(q("body")) == "k"
        c, answer = await resume(srv, b_acct, previd, 0, label="stale")
        assert answer.tag == sm("failed"), xml_str(answer)
        await c.close()
    finally:
        await a.close()
        await b2.close()


async def test_idle_clients_are_pinged_and_a_silent_one_is_cut_then_resumable(make_server):
    srv = make_server(
        {"c2s": {"idle_ping_secs": 1, "idle_ping_timeout_secs": 1},
         "modules.stream_management": {"resume_timeout_secs": 30}},
        accounts=2,
    )
    acct = srv.account()
    c = await login(srv, acct, resource="idle")
    try:
        ping = await c.expect(
            lambda e: e.tag == q("iq") and e.get("type") == "get"
            and e.find("{urn:xmpp:ping}ping") is not None, 4, "the server's XEP-0199 ping")
        await c.send(f"<iq type='result' id='{ping.get('id')}' to='{ping.get('from')}'/>")
        # Answered: still connected a while later.
        assert (await c.ping()).get("type") == "result"
    finally:
        await c.close()
    # Under stream management the sign of life asked for is an <a/>; a client that gives
    # none is cut off, and its session waits to be resumed.
    s = await login(srv, acct, resource="sm")
    previd = (await enable(s)).get("id")
    await s.expect(is_sm("r"), 4, "the server's <r/> to a silent client")
    await s.expect_stream_error_and_close("connection-timeout", timeout=5)
    r, answer = await resume(srv, acct, previd, 0)
    assert answer.tag == sm("resumed"), xml_str(answer)
    await r.close()


async def test_slixmpp_xep_0198_enables_and_resumes_after_a_cut(server):
    """A real client's plugin: it enables with resume, answers our <r/>, and after its
    connection is cut resumes and gets what was sent meanwhile, once."""
    import slixmpp

    from rawxmpp import make_ssl_context

    acct, other = server.account(), server.account()
    loop = asyncio.get_running_loop()
    x = slixmpp.ClientXMPP(f"{acct.jid}/slix", acct.password)
    x.ssl_context = make_ssl_context(server.cafile)
    x.enable_plaintext = False
    x.register_plugin("xep_0198")
    enabled, resumed = loop.create_future(), loop.create_future()
    got: list[str] = []
    x.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
    x.add_event_handler("session_resumed", lambda _: resumed.done() or resumed.set_result(True))
    x.add_event_handler("message", lambda m: got.append(m["id"]))
    x.connect(host="127.0.0.1", port=server.c2s_port)
    sender = None
    try:
        await asyncio.wait_for(enabled, 20)
        x.send_presence()
        sender = await login(server, other, resource="s")

        async def arrived(id_):
            for _ in range(100):
                if id_ in got:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"{id_} never reached slixmpp (got {got})")

        await sender.send(f"<message to='{acct.jid}/slix' id='s1'><body>1</body></message>")
        await arrived("s1")
        await asyncio.sleep(0.3)  # slixmpp answers our <r/>
        x.transport.abort()
        await asyncio.sleep(0.3)
        await sender.send(f"<message to='{acct.jid}/slix' id='s2'><body>2</body></message>")
        x.connect(host="127.0.0.1", port=server.c2s_port)
        await asyncio.wait_for(resumed, 20)
        await arrived("s2")
        assert got.count("s1") == 1 and got.count("s2") == 1, got
    finally:
        if sender is not None:
            await sender.close()
        x.disconnect()


async def test_what_csi_held_moves_with_a_resumed_session(make_server):
    srv = sm_servers(make_server, resume_timeout_secs=30)
    a_acct, b_acct = srv.account(), srv.account()
    a = await online(srv, a_acct, "a")
    b = await online(srv, b_acct, "b")
    b2 = None
    try:
        await subscribe(a, b)
        await subscribe(b, a)
        previd = (await enable(b)).get("id")
        await b.drain(0.3)
        await b.send("<inactive xmlns='urn:xmpp:csi:0'/>")
        await a.send("<presence><status>later</status></presence>")
        held = await b.drain(0.7)
        assert not [e for e in held if e.tag == q("presence")], "XEP-0352: held while inactive"
        b.abort()
        await asyncio.sleep(0.3)
        b2, answer = await resume(srv, b_acct, previd, 0)
        assert answer.tag == sm("resumed"), xml_str(answer)
        # A presence from the subscription handshake that reached b after <enable/> is
        # retransmitted too (b acknowledged nothing): what counts is that the held one comes.
        p = await b2.expect(
            lambda e: is_presence(a.jid)(e) and e.findtext(q("status")) == "later",
            5,
            "the presence CSI held, after <resumed/>",
        )
        assert p.findtext(q("status")) == "later", xml_str(p)
    finally:
        await a.close()
        if b2 is not None:
            await b2.close()
