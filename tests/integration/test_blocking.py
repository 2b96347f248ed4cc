"""Blocking command (XEP-0191) over raw sockets: the blocklist, its pushes, and what a
blocked contact can and cannot reach, in both directions."""

from rawxmpp import bare, login, q, stanza_error, xml_str

ACCOUNT_POOL = 20

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_ROSTER = "jabber:iq:roster"


def bq(tag):
    return f"{{{NS_BLOCKING}}}{tag}"


async def recv_or_skipped(conn, pred, what):
    """The server may send a push before or after the IQ result that caused it: look among
    the elements already skipped first."""
    for e in list(conn.skipped):
        if pred(e):
            conn.skipped.remove(e)
            return e
    return await conn.recv_match(pred, what=what)


async def blocklist(c):
    resp = await c.iq(f"<blocklist xmlns='{NS_BLOCKING}'/>")
    assert resp.get("type") == "result", xml_str(resp)
    bl = resp.find(bq("blocklist"))
    assert bl is not None, xml_str(resp)
    return sorted(i.get("jid") for i in bl.findall(bq("item")))


async def subscribe_both(ca, cb):
    """Make a and b mutually subscribed (so presence flows both ways)."""
    for x, y in ((ca, cb), (cb, ca)):
        await x.send(f"<presence to='{bare(y.jid)}' type='subscribe'/>")
        await y.recv_match(
            lambda e: e.tag == q("presence") and e.get("type") == "subscribe", what="subscribe"
        )
        await y.send(f"<presence to='{bare(x.jid)}' type='subscribed'/>")
        await x.recv_match(
            lambda e: e.tag == q("presence") and e.get("type") == "subscribed", what="subscribed"
        )


async def test_block_unblock_list_and_pushes(server):
    a, b, c = server.account(), server.account(), server.account()
    ca1 = await login(server, a, resource="one")
    ca2 = await login(server, a, resource="two")
    try:
        assert await blocklist(ca1) == []
        resp = await ca1.iq(
            f"<block xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/><item jid='{c.jid.upper()}'/></block>",
            type_="set",
        )
        assert resp.get("type") == "result", xml_str(resp)
        # Every resource gets the push (XEP-0191 §3.3), with prepared JIDs.
        for conn in (ca1, ca2):
            push = await recv_or_skipped(
                conn, lambda e: e.tag == q("iq") and e.find(bq("block")) is not None, "block push"
            )
            assert push.get("type") == "set", xml_str(push)
            items = sorted(i.get("jid") for i in push.find(bq("block")).findall(bq("item")))
            assert items == sorted([b.jid, c.jid]), xml_str(push)
        assert await blocklist(ca2) == sorted([b.jid, c.jid])

        resp = await ca1.iq(f"<unblock xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></unblock>", type_="set")
        assert resp.get("type") == "result", xml_str(resp)
        await recv_or_skipped(
            ca2, lambda e: e.tag == q("iq") and e.find(bq("unblock")) is not None, "unblock push"
        )
        assert await blocklist(ca1) == [c.jid]
        # An unblock without items empties the list (XEP-0191 §3.4).
        resp = await ca1.iq(f"<unblock xmlns='{NS_BLOCKING}'/>", type_="set")
        assert resp.get("type") == "result", xml_str(resp)
        assert await blocklist(ca1) == []
    finally:
        await ca1.close()
        await ca2.close()


async def test_bad_block_requests_change_nothing(server):
    a = server.account()
    ca = await login(server, a)
    try:
        for body, cond in [
            (f"<block xmlns='{NS_BLOCKING}'/>", "bad-request"),
            (f"<block xmlns='{NS_BLOCKING}'><item jid='a@b@c'/></block>", "jid-malformed"),
            (f"<block xmlns='{NS_BLOCKING}'><item/></block>", "bad-request"),
        ]:
            resp = await ca.iq(body, type_="set")
            assert resp.get("type") == "error", xml_str(resp)
            assert stanza_error(resp)[1] == cond, xml_str(resp)
        assert await blocklist(ca) == []
    finally:
        await ca.close()


async def test_blocked_contact_cannot_reach_user_and_user_cannot_reach_it(server):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource="r")
    cb = await login(server, b, resource="r")
    try:
        await ca.send_presence()
        await cb.send_presence()
        await ca.iq(f"<block xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></block>", type_="set")
        await ca.barrier()

        # Inbound: the blocked sender gets service-unavailable, the user sees nothing.
        await cb.send(f"<message to='{ca.jid}' id='in1' type='chat'><body>hi</body></message>")
        err = await cb.recv_match(
            lambda e: e.tag == q("message") and e.get("id") == "in1", what="bounce of in1"
        )
        assert err.get("type") == "error", xml_str(err)
        assert stanza_error(err)[1] == "service-unavailable", xml_str(err)
        resp = await cb.iq("<query xmlns='jabber:iq:version'/>", to=ca.jid)
        assert resp.get("type") == "error", xml_str(resp)
        assert stanza_error(resp)[1] == "service-unavailable", xml_str(resp)
        leaked = [e for e in await ca.expect_silence(0.5) if e.get("from", "").startswith(b.jid)]
        assert leaked == [], [xml_str(e) for e in leaked]

        # Outbound: the user is told the contact is blocked (XEP-0191 §3.6).
        await ca.send(f"<message to='{cb.jid}' id='out1'><body>hi</body></message>")
        err = await ca.recv_match(
            lambda e: e.tag == q("message") and e.get("id") == "out1", what="bounce of out1"
        )
        assert err.get("type") == "error", xml_str(err)
        error = err.find(q("error"))
        assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}not-acceptable") is not None, xml_str(err)
        assert error.find(f"{{{NS_BLOCKING_ERRORS}}}blocked") is not None, xml_str(err)
        assert [e for e in await cb.expect_silence(0.5) if e.get("id") == "out1"] == []

        # Unblocked, messages flow again.
        await ca.iq(f"<unblock xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></unblock>", type_="set")
        await ca.barrier()
        await cb.send(f"<message to='{ca.jid}' id='in2' type='chat'><body>again</body></message>")
        got = await ca.recv_match(
            lambda e: e.tag == q("message") and e.get("id") == "in2", what="message in2"
        )
        assert got.get("type") == "chat", xml_str(got)
    finally:
        await ca.close()
        await cb.close()


async def test_domain_block_covers_every_account_of_the_domain(server):
    a, b = server.account(), server.account()
    ca = await login(server, a)
    cb = await login(server, b)
    try:
        await ca.send_presence()
        await ca.iq(f"<block xmlns='{NS_BLOCKING}'><item jid='{server.domain}'/></block>", type_="set")
        await ca.barrier()
        await cb.send(f"<message to='{ca.jid}' id='d1' type='chat'><body>hi</body></message>")
        err = await cb.recv_match(lambda e: e.get("id") == "d1", what="bounce of d1")
        assert stanza_error(err)[1] == "service-unavailable", xml_str(err)
    finally:
        await ca.close()
        await cb.close()


async def test_blocking_a_subscriber_withdraws_presence_and_stops_broadcasts(server):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource="r")
    cb = await login(server, b, resource="r")
    try:
        await ca.send_presence()
        await cb.send_presence()
        await subscribe_both(ca, cb)
        await ca.barrier()
        await cb.barrier()

        await ca.iq(f"<block xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></block>", type_="set")
        gone = await cb.recv_match(
            lambda e: e.tag == q("presence") and e.get("from") == ca.jid and e.get("type") == "unavailable",
            what="unavailable from the blocking user",
        )
        assert gone.get("to", "").startswith(b.jid), xml_str(gone)

        # New presence from the blocking user does not reach the blocked subscriber, and the
        # blocked contact's presence does not reach the user.
        await ca.send("<presence><show>dnd</show></presence>")
        await cb.send("<presence><show>away</show></presence>")
        seen_by_b = [e for e in await cb.expect_silence(0.7) if e.get("from") == ca.jid]
        seen_by_a = [e for e in await ca.expect_silence(0.3) if e.get("from") == cb.jid]
        assert seen_by_b == [], [xml_str(e) for e in seen_by_b]
        assert seen_by_a == [], [xml_str(e) for e in seen_by_a]

        # Unblocking gives the subscriber the user's presence again.
        await ca.iq(f"<unblock xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></unblock>", type_="set")
        back = await cb.recv_match(
            lambda e: e.tag == q("presence") and e.get("from") == ca.jid and e.get("type") is None,
            what="presence after unblock",
        )
        assert back.findtext(q("show")) == "dnd", xml_str(back)
    finally:
        await ca.close()
        await cb.close()


async def test_blocklist_survives_restart_and_blocks_offline_messages(make_server):
    srv = make_server(accounts=2)
    a, b = srv.account(), srv.account()
    ca = await login(srv, a)
    await ca.iq(f"<block xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></block>", type_="set")
    await ca.close()
    srv.kill9()  # no shutdown code runs: only what was flushed survives
    srv.start()
    cb = await login(srv, b)
    try:
        # a is offline: the message would be stored, but a blocks b.
        await cb.send(f"<message to='{a.jid}' id='o1' type='chat'><body>stored?</body></message>")
        err = await cb.recv_match(lambda e: e.get("id") == "o1", what="bounce of o1")
        assert stanza_error(err)[1] == "service-unavailable", xml_str(err)
        ca = await login(srv, a)
        assert await blocklist(ca) == [b.jid]
        await ca.send_presence()
        stored = [e for e in await ca.expect_silence(0.7) if e.get("id") == "o1"]
        assert stored == [], [xml_str(e) for e in stored]
        await ca.close()
    finally:
        await cb.close()


async def test_disco_advertises_blocking(server):
    a = server.account()
    ca = await login(server, a)
    try:
        resp = await ca.iq(
            "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=server.domain
        )
        features = {f.get("var") for f in resp.iter("{http://jabber.org/protocol/disco#info}feature")}
        assert NS_BLOCKING in features, xml_str(resp)
    finally:
        await ca.close()


async def test_blocked_subscriber_gets_no_presence_when_it_logs_in(server):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource="r", presence=True)
    cb = await login(server, b, resource="r", presence=True)
    try:
        await subscribe_both(ca, cb)
        await ca.iq(f"<block xmlns='{NS_BLOCKING}'><item jid='{b.jid}'/></block>", type_="set")
        await ca.barrier()
        await cb.close()
        # b's probe at login is answered without a's presence (XEP-0191 §3.3).
        cb = await login(server, b, resource="r", presence=True)
        leaked = [e for e in await cb.expect_silence(0.7) if e.get("from") == ca.jid]
        assert leaked == [], [xml_str(e) for e in leaked]
    finally:
        await ca.close()
        await cb.close()
