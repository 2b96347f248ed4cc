"""Privacy lists (XEP-0016) over raw sockets: managing lists, the active and default lists,
their pushes, and what each kind of item lets through, in both directions."""

from rawxmpp import bare, login, q, stanza_error, xml_str

ACCOUNT_POOL = 30

NS_PRIVACY = "jabber:iq:privacy"


def pq(tag):
    return f"{{{NS_PRIVACY}}}{tag}"


async def recv_or_skipped(conn, pred, what):
    """The server may send a push before or after the IQ result that caused it: look among
    the elements already skipped first."""
    for e in list(conn.skipped):
        if pred(e):
            conn.skipped.remove(e)
            return e
    return await conn.recv_match(pred, what=what)


def is_push(name):
    def pred(e):
        query = e.find(pq("query"))
        if e.tag != q("iq") or e.get("type") != "set" or query is None:
            return False
        return [lst.get("name") for lst in query.findall(pq("list"))] == [name]

    return pred


async def privacy(c, body, type_="set"):
    return await c.iq(f"<query xmlns='{NS_PRIVACY}'>{body}</query>", type_=type_)


async def ok(c, body, type_="set"):
    resp = await privacy(c, body, type_)
    assert resp.get("type") == "result", xml_str(resp)
    return resp


async def refused(c, body, cond, type_="set"):
    resp = await privacy(c, body, type_)
    assert resp.get("type") == "error", xml_str(resp)
    assert stanza_error(resp)[1] == cond, xml_str(resp)


async def names(c):
    query = (await ok(c, "", type_="get")).find(pq("query"))
    active, default = query.find(pq("active")), query.find(pq("default"))
    return (
        None if active is None else active.get("name"),
        None if default is None else default.get("name"),
        sorted(lst.get("name") for lst in query.findall(pq("list"))),
    )


def item(order, action, type_=None, value=None, kinds=()):
    attrs = f"action='{action}' order='{order}'"
    if type_ is not None:
        attrs += f" type='{type_}' value='{value}'"
    return f"<item {attrs}>{''.join(f'<{k}/>' for k in kinds)}</item>"


def plist(name, *items):
    return f"<list name='{name}'>{''.join(items)}</list>"


async def subscribe_both(ca, cb):
    for x, y in ((ca, cb), (cb, ca)):
        await x.send(f"<presence to='{bare(y.jid)}' type='subscribe'/>")
        await y.recv_match(
            lambda e: e.tag == q("presence") and e.get("type") == "subscribe", what="subscribe"
        )
        await y.send(f"<presence to='{bare(x.jid)}' type='subscribed'/>")
        await x.recv_match(
            lambda e: e.tag == q("presence") and e.get("type") == "subscribed", what="subscribed"
        )


async def message_bounces(sender, to, msg_id):
    await sender.send(f"<message to='{to}' id='{msg_id}' type='chat'><body>hi</body></message>")
    err = await sender.recv_match(lambda e: e.get("id") == msg_id, what=f"bounce of {msg_id}")
    assert err.get("type") == "error", xml_str(err)
    return stanza_error(err)[1]


async def message_arrives(sender, receiver, msg_id):
    await sender.send(
        f"<message to='{receiver.jid}' id='{msg_id}' type='chat'><body>hi</body></message>"
    )
    got = await receiver.recv_match(lambda e: e.get("id") == msg_id, what=f"message {msg_id}")
    assert got.get("type") == "chat", xml_str(got)


async def test_list_crud_names_and_pushes(server):
    a, b = server.account(), server.account()
    ca1 = await login(server, a, resource="one")
    ca2 = await login(server, a, resource="two")
    try:
        assert await names(ca1) == (None, None, [])
        await ok(ca1, plist("public", item(1, "deny", "jid", b.jid.upper(), ["message"])))
        # Every resource learns which list changed (XEP-0016 §2.6).
        for conn in (ca1, ca2):
            await recv_or_skipped(conn, is_push("public"), "push of public")
        await ok(ca1, plist("private", item(5, "allow")))
        assert await names(ca2) == (None, None, ["private", "public"])

        got = (await ok(ca2, "<list name='public'/>", type_="get")).find(pq("query"))
        lists = got.findall(pq("list"))
        assert [lst.get("name") for lst in lists] == ["public"], xml_str(got)
        items = lists[0].findall(pq("item"))
        assert len(items) == 1, xml_str(got)
        it = items[0]
        # Values are stored prepared.
        assert (it.get("type"), it.get("value"), it.get("action"), it.get("order")) == (
            "jid",
            b.jid,
            "deny",
            "1",
        ), xml_str(got)
        assert [c.tag for c in it] == [pq("message")], xml_str(got)

        await refused(ca1, "<list name='nope'/>", "item-not-found", type_="get")
        # One list at a time (XEP-0016 §2.3).
        await refused(
            ca1, "<list name='public'/><list name='private'/>", "bad-request", type_="get"
        )

        # An empty list removes it (§2.8), with a push.
        await ok(ca1, "<list name='private'/>")
        await recv_or_skipped(ca2, is_push("private"), "push of the removal")
        await refused(ca1, "<list name='private'/>", "item-not-found", type_="get")
        await refused(ca1, "<list name='private'/>", "item-not-found")
        assert await names(ca1) == (None, None, ["public"])
    finally:
        await ca1.close()
        await ca2.close()


async def test_invalid_lists_are_refused_and_change_nothing(server):
    a, b = server.account(), server.account()
    ca = await login(server, a)
    try:
        for body, cond in [
            (plist("x", item(1, "block")), "bad-request"),
            (plist("x", item(1, "deny"), item(1, "allow", "jid", b.jid)), "bad-request"),
            (plist("x", item(1, "deny", "subscription", "some")), "bad-request"),
            (plist("x", item(1, "deny", "jid", "a@b@c")), "bad-request"),
            (plist("x", item(1, "deny", "color", "red")), "bad-request"),
            (plist("x", "<item action='deny'/>"), "bad-request"),
            (plist("x", item(1, "deny", "group", "no such group")), "item-not-found"),
            (plist("x", item(1, "deny")) + plist("y", item(1, "deny")), "bad-request"),
        ]:
            await refused(ca, body, cond)
        assert await names(ca) == (None, None, [])
        await refused(ca, "<active name='x'/>", "item-not-found")
        await refused(ca, "<default name='x'/>", "item-not-found")
    finally:
        await ca.close()


async def test_default_list_denies_messages_from_a_jid(server):
    a, b, c = server.account(), server.account(), server.account()
    ca = await login(server, a, presence=True)
    cb = await login(server, b)
    cc = await login(server, c)
    try:
        await ok(ca, plist("l", item(1, "deny", "jid", b.jid, ["message"])))
        await ok(ca, "<default name='l'/>")
        await ca.barrier()
        assert await names(ca) == (None, "l", ["l"])
        assert await message_bounces(cb, ca.jid, "m1") == "service-unavailable"
        # Only messages are denied: b's IQs still reach a.
        await cb.send(f"<iq to='{ca.jid}' id='v1' type='get'><query xmlns='jabber:iq:version'/></iq>")
        got = await ca.recv_match(lambda e: e.get("id") == "v1", what="b's iq")
        assert got.tag == q("iq"), xml_str(got)
        await message_arrives(cc, ca, "m2")
        leaked = [e for e in await ca.expect_silence(0.5) if e.get("id") == "m1"]
        assert leaked == [], [xml_str(e) for e in leaked]

        # Declining the default lets b through again.
        await ok(ca, "<default/>")
        await ca.barrier()
        await message_arrives(cb, ca, "m3")
    finally:
        for conn in (ca, cb, cc):
            await conn.close()


async def test_earlier_order_wins(server):
    a, b, c = server.account(), server.account(), server.account()
    ca = await login(server, a, presence=True)
    cb = await login(server, b)
    cc = await login(server, c)
    try:
        # Listed out of order on purpose: order, not position, decides (§2.2).
        await ok(ca, plist("only-b", item(2, "deny"), item(1, "allow", "jid", b.jid)))
        await ok(ca, "<active name='only-b'/>")
        await ca.barrier()
        assert (await names(ca))[0] == "only-b"
        await message_arrives(cb, ca, "o1")
        assert await message_bounces(cc, ca.jid, "o2") == "service-unavailable"
        # The fall-through deny covers everything: IQs too, and what a sends.
        resp = await cc.iq("<query xmlns='jabber:iq:version'/>", to=ca.jid)
        assert stanza_error(resp)[1] == "service-unavailable", xml_str(resp)
        await ca.send(f"<message to='{cc.jid}' id='o3'><body>hi</body></message>")
        err = await ca.recv_match(lambda e: e.get("id") == "o3", what="bounce of o3")
        assert stanza_error(err)[1] == "not-acceptable", xml_str(err)
        assert [e for e in await cc.expect_silence(0.5) if e.get("id") == "o3"] == []
        # The server itself and the account's own JID stay reachable.
        assert (await ca.ping()).get("type") == "result"
        assert (await ca.roster_get()).get("type") == "result"
    finally:
        for conn in (ca, cb, cc):
            await conn.close()


async def test_group_item_follows_the_roster(server):
    a, b, c = server.account(), server.account(), server.account()
    ca = await login(server, a, presence=True)
    cb = await login(server, b)
    cc = await login(server, c)
    try:
        await ca.roster_set(f"<item jid='{b.jid}'><group>enemies</group></item>")
        await ok(ca, plist("g", item(1, "deny", "group", "enemies", ["message"])))
        await ok(ca, "<active name='g'/>")
        await ca.barrier()
        assert await message_bounces(cb, ca.jid, "g1") == "service-unavailable"
        await message_arrives(cc, ca, "g2")
        # c joins the group: the list now covers c too.
        await ca.roster_set(f"<item jid='{c.jid}'><group>enemies</group></item>")
        await ca.barrier()
        assert await message_bounces(cc, ca.jid, "g3") == "service-unavailable"
        # b leaves the group.
        await ca.roster_set(f"<item jid='{b.jid}'/>")
        await ca.barrier()
        await message_arrives(cb, ca, "g4")
    finally:
        for conn in (ca, cb, cc):
            await conn.close()


async def test_subscription_none_blocks_strangers_not_contacts(server):
    a, b, c = server.account(), server.account(), server.account()
    ca = await login(server, a, presence=True)
    cb = await login(server, b, presence=True)
    cc = await login(server, c)
    try:
        await subscribe_both(ca, cb)
        await ok(ca, plist("friends", item(1, "deny", "subscription", "none", ["message"])))
        await ok(ca, "<active name='friends'/>")
        await ca.barrier()
        assert await message_bounces(cc, ca.jid, "s1") == "service-unavailable"
        await message_arrives(cb, ca, "s2")
    finally:
        for conn in (ca, cb, cc):
            await conn.close()


async def test_presence_out_deny(server):
    a, b, c = server.account(), server.account(), server.account()
    ca = await login(server, a, resource="r", presence=True)
    cb = await login(server, b, resource="r", presence=True)
    cc = await login(server, c, resource="r", presence=True)
    try:
        await subscribe_both(ca, cb)
        await subscribe_both(ca, cc)
        await ok(ca, plist("invisible-to-b", item(1, "deny", "jid", b.jid, ["presence-out"])))
        await ok(ca, "<active name='invisible-to-b'/>")
        await ca.barrier()
        await cb.barrier()
        cb.skipped = []

        await ca.send("<presence><show>dnd</show></presence>")
        await cc.recv_match(
            lambda e: e.tag == q("presence")
            and e.get("from") == ca.jid
            and e.findtext(q("show")) == "dnd",
            what="a's new presence at c",
        )
        leaked = [e for e in await cb.expect_silence(0.7) if e.get("from") == ca.jid]
        assert leaked == [], [xml_str(e) for e in leaked]

        # Directed presence is refused too.
        await ca.send(f"<presence to='{cb.jid}' id='dp1'/>")
        err = await ca.recv_match(lambda e: e.get("id") == "dp1", what="bounce of dp1")
        assert stanza_error(err)[1] == "not-acceptable", xml_str(err)
        # Only presence: messages to b still go out, and b's presence still comes in.
        await message_arrives(ca, cb, "p1")
        await cb.send("<presence><show>away</show></presence>")
        await ca.recv_match(
            lambda e: e.tag == q("presence")
            and e.get("from") == cb.jid
            and e.findtext(q("show")) == "away",
            what="b's new presence",
        )

        # When b comes back, the answer to its probe is withheld too; c, logging in again,
        # still gets a's presence.
        await cb.close()
        await cc.close()
        cb = await login(server, b, resource="r", presence=True)
        cc = await login(server, c, resource="r", presence=True)
        await cc.recv_match(
            lambda e: e.tag == q("presence") and e.get("from") == ca.jid, what="a's presence at c"
        )
        leaked = [e for e in await cb.expect_silence(0.7) if e.get("from") == ca.jid]
        assert leaked == [], [xml_str(e) for e in leaked]
    finally:
        for conn in (ca, cb, cc):
            await conn.close()


async def test_active_and_default_conflicts(server):
    a = server.account()
    ca1 = await login(server, a, resource="one")
    ca2 = await login(server, a, resource="two")
    try:
        await ok(ca1, plist("x", item(1, "allow")))
        await ok(ca1, plist("y", item(1, "deny", "jid", "nobody@example.org")))
        # No default yet: setting one disturbs nobody.
        await ok(ca1, "<default name='x'/>")
        # ca2 has no active list, so it uses x: changing or declining the default, or
        # removing x, would change ca2's rules (XEP-0016 §2.5, §2.8).
        await refused(ca1, "<default name='y'/>", "conflict")
        await refused(ca1, "<default/>", "conflict")
        await refused(ca1, "<list name='x'/>", "conflict")
        await ok(ca2, "<active name='y'/>")
        assert await names(ca2) == ("y", "x", ["x", "y"])
        await refused(ca1, "<list name='y'/>", "conflict")
        await ok(ca1, "<default name='y'/>")
        # ca2 declines its active list and falls back to the default, y.
        await ok(ca2, "<active/>")
        assert await names(ca2) == (None, "y", ["x", "y"])
        await refused(ca1, "<list name='y'/>", "conflict")
        await ok(ca1, "<list name='x'/>")
    finally:
        await ca1.close()
        await ca2.close()
    # Once alone, the session may remove the default list; there is no default then.
    ca = await login(server, a)
    try:
        await ok(ca, "<list name='y'/>")
        assert await names(ca) == (None, None, [])
    finally:
        await ca.close()


async def test_lists_survive_restart_and_default_applies_offline(make_server):
    srv = make_server(accounts=2)
    a, b = srv.account(), srv.account()
    ca = await login(srv, a)
    await ok(ca, plist("l", item(1, "deny", "jid", b.jid, ["message"])))
    await ok(ca, "<default name='l'/>")
    await ca.close()
    srv.kill9()  # no shutdown code runs: only what was flushed survives
    srv.start()
    cb = await login(srv, b)
    try:
        # a is offline: the message would be stored, but a's default list denies it.
        assert await message_bounces(cb, a.jid, "r1") == "service-unavailable"
        ca = await login(srv, a, presence=True)
        assert await names(ca) == (None, "l", ["l"])
        stored = [e for e in await ca.expect_silence(0.7) if e.get("id") == "r1"]
        assert stored == [], [xml_str(e) for e in stored]
        assert await message_bounces(cb, ca.jid, "r2") == "service-unavailable"
        await ca.close()
    finally:
        await cb.close()


async def test_disco_advertises_privacy(server):
    a = server.account()
    ca = await login(server, a)
    try:
        resp = await ca.iq(
            "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=server.domain
        )
        features = {f.get("var") for f in resp.iter("{http://jabber.org/protocol/disco#info}feature")}
        assert NS_PRIVACY in features, xml_str(resp)
    finally:
        await ca.close()
