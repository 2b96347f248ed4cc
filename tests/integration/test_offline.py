"""Offline messages (XEP-0160, with XEP-0203 delay stamps; RFC 6121 8.5.2) and the
persistence of rosters, subscriptions, pending requests and offline messages across a
kill -9 of the node, over raw sockets."""

import asyncio
import calendar
import re
import time

from rawxmpp import (
    NS_DELAY,
    is_message,
    is_presence,
    is_roster_push,
    is_sub,
    login,
    online,
    q,
    roster_item_xml,
    roster_items,
    item_summary,
    ROSTER_QUERY,
    stanza_error,
    subscribe,
    xml_str,
)

ACCOUNT_POOL = 30

ERROR_TYPES = {"auth", "cancel", "continue", "modify", "wait"}

# XEP-0082 DateTime in UTC (XEP-0203: "MUST be expressed in UTC"); fractions allowed.
STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$")


def stamp_epoch(stamp: str) -> float:
    m = STAMP.match(stamp or "")
    assert m, f"XEP-0203/XEP-0082: stamp {stamp!r} is not CCYY-MM-DDThh:mm:ss[.sss]Z"
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + float(m.group(7) or 0)


def check_delayed(msg, *, sender_jid, body, type_, not_before, not_after, domain="localhost"):
    """A stored message as delivered: the original from/type/body plus one XEP-0203 <delay/>
    from the server with the time it was stored."""
    assert msg.get("from") == sender_jid, f"from must be the sender's full JID: {xml_str(msg)}"
    assert msg.get("type", "normal") == type_, xml_str(msg)
    assert msg.findtext(q("body")) == body, xml_str(msg)
    delays = msg.findall(f"{{{NS_DELAY}}}delay")
    assert len(delays) == 1, f"XEP-0160: one <delay xmlns='{NS_DELAY}'/> expected: {xml_str(msg)}"
    delay = delays[0]
    assert delay.get("from") == domain, f"XEP-0203: delay from the server: {xml_str(msg)}"
    t = stamp_epoch(delay.get("stamp"))
    # Second resolution: allow the stamp to be truncated to the second it was stored in.
    assert int(not_before) - 1 <= t <= not_after + 1, (
        f"stamp {delay.get('stamp')} ({t}) is not between the sending ({not_before}) "
        f"and the delivery ({not_after}): {xml_str(msg)}"
    )


def messages(elements, ids):
    return [e for e in elements if e.tag == q("message") and e.get("id") in ids]


async def collect_in_order(c, ids, timeout=5.0, what="the stored messages"):
    """The messages with these ids, in arrival order (each once)."""
    got = messages(c.skipped, ids)
    c.skipped = [e for e in c.skipped if e not in got]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < len(ids):
        e = await c.recv_match(
            lambda e: e.tag == q("message") and e.get("id") in ids,
            timeout=max(0.1, deadline - loop.time()),
            what=f"{what} (have {[m.get('id') for m in got]} of {ids})",
        )
        got.append(e)
    return got


async def close_all(*clients):
    for c in clients:
        if c is not None:
            await c.close()


async def no_errors(c, ids, seconds=0.3):
    await c.barrier()
    errs = [e for e in await c.drain(seconds) if e.get("id") in ids and e.get("type") == "error"]
    assert not errs, f"the sender got an error for a storable message: {xml_str(errs[0])}"


# -- storage and delivery --------------------------------------------------------------------


async def test_offline_messages_delivered_at_next_presence_in_order_with_delay_once(server):
    s_acct, r_acct = server.account(), server.account()
    cs = await login(server, s_acct, resource="s")
    cr = None
    try:
        sent = [("off-1", "chat", "first"), ("off-2", None, "second"),
                ("off-3", "normal", "third & <last> \u00e9")]
        t0 = time.time()
        for id_, type_, text in sent:
            t = f" type='{type_}'" if type_ else ""
            body = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            await cs.send(f"<message to='{r_acct.jid}'{t} id='{id_}'><body>{body}</body></message>")
        await no_errors(cs, {i for i, _, _ in sent})

        cr = await login(server, r_acct, resource="r")
        await cr.roster_get()
        await cr.barrier()
        early = messages(cr.skipped, {i for i, _, _ in sent})
        assert not early, f"XEP-0160: delivered before available presence: {xml_str(early[0])}"
        await cr.send_presence()
        got = await collect_in_order(cr, [i for i, _, _ in sent])
        t1 = time.time()
        assert [m.get("id") for m in got] == [i for i, _, _ in sent], "not in the order sent"
        for m, (id_, type_, text) in zip(got, sent):
            check_delayed(m, sender_jid=cs.jid, body=text, type_=type_ or "normal",
                          not_before=t0, not_after=t1)
            assert m.get("to") in (r_acct.jid, cr.jid), xml_str(m)
        dup = messages(await cr.drain(0.5), {i for i, _, _ in sent})
        assert not dup, f"delivered twice: {xml_str(dup[0])}"
        await cr.close()
        cr = await online(server, r_acct, "again")
        again = messages(await cr.drain(0.7), {i for i, _, _ in sent})
        assert not again, f"XEP-0160: delivered again at the next login: {xml_str(again[0])}"
    finally:
        await close_all(cs, cr)


async def test_connected_but_unavailable_resource_gets_stored_messages_at_presence(server):
    """Bound without presence is not available (RFC 6121 4.1): a bare-JID chat is stored,
    then delivered with a delay once the resource sends initial presence."""
    s_acct, r_acct = server.account(), server.account()
    cs = await login(server, s_acct, resource="s")
    cr = await login(server, r_acct, resource="quiet")
    try:
        await cr.roster_get()
        t0 = time.time()
        await cs.send(f"<message to='{r_acct.jid}' type='chat' id='cu-1'><body>hi</body></message>")
        await no_errors(cs, {"cu-1"})
        early = messages(await cr.drain(0.5), {"cu-1"})
        assert not early, f"a bare-JID chat went to a resource that is not available: {xml_str(early[0])}"
        await cr.send_presence()
        got = await cr.expect(is_message("cu-1"), what="the stored chat after initial presence")
        check_delayed(got, sender_jid=cs.jid, body="hi", type_="chat",
                      not_before=t0, not_after=time.time())
    finally:
        await close_all(cs, cr)


async def test_only_negative_priority_resources_means_stored(server):
    """RFC 6121 8.5.2.1.1: only negative-priority resources -> as if none were available;
    XEP-0160: delivered at the next presence with non-negative priority."""
    s_acct, r_acct = server.account(), server.account()
    cs = await login(server, s_acct, resource="s")
    neg = await online(server, r_acct, "neg", priority=-1)
    pos = None
    try:
        t0 = time.time()
        await cs.send(f"<message to='{r_acct.jid}' type='chat' id='np-1'><body>one</body></message>")
        await no_errors(cs, {"np-1"})
        assert not messages(await neg.drain(0.5), {"np-1"}), "the -1 resource got a bare-JID chat"
        pos = await online(server, r_acct, "zero", priority=0)
        got = await pos.expect(is_message("np-1"), what="the stored chat at the priority-0 resource")
        check_delayed(got, sender_jid=cs.jid, body="one", type_="chat",
                      not_before=t0, not_after=time.time())
        assert not messages(await neg.drain(0.3), {"np-1"}), "the -1 resource got it too"
    finally:
        await close_all(cs, neg, pos)


async def test_raising_priority_to_non_negative_delivers_stored_messages(server):
    """XEP-0160: "When the recipient next sends non-negative available presence to the
    server, the server delivers the message to the resource that has sent that presence" --
    a presence update from priority -1 to 1 is such a presence."""
    s_acct, r_acct = server.account(), server.account()
    cs = await login(server, s_acct, resource="s")
    neg = await online(server, r_acct, "riser", priority=-1)
    try:
        t0 = time.time()
        await cs.send(f"<message to='{r_acct.jid}' type='chat' id='rise-1'><body>up</body></message>")
        await no_errors(cs, {"rise-1"})
        assert not messages(await neg.drain(0.3), {"rise-1"}), "delivered at priority -1"
        await neg.send_presence(1)
        got = await neg.expect(is_message("rise-1"), timeout=5,
                               what="the stored chat after raising the priority to 1")
        check_delayed(got, sender_jid=cs.jid, body="up", type_="chat",
                      not_before=t0, not_after=time.time())
    finally:
        await close_all(cs, neg)


async def test_headline_groupchat_and_error_messages_are_not_stored(server):
    """RFC 6121 8.5.2.2.1: headline and error are silently dropped, groupchat gets an error
    (SHOULD be service-unavailable); none is delivered later. A chat sent after them is."""
    s_acct, r_acct = server.account(), server.account()
    cs = await login(server, s_acct, resource="s")
    cr = None
    try:
        await cs.send(f"<message to='{r_acct.jid}' type='headline' id='ns-hl'><body>news</body></message>")
        await cs.send(f"<message to='{r_acct.jid}' type='groupchat' id='ns-gc'><body>room</body></message>")
        await cs.send(
            f"<message to='{r_acct.jid}' type='error' id='ns-err'><error type='cancel'>"
            "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
        await cs.send(f"<message to='{r_acct.jid}' type='chat' id='ns-ctl'><body>control</body></message>")
        gc_err = await cs.expect(lambda e: e.get("id") == "ns-gc", what="the groupchat error")
        assert gc_err.get("type") == "error", xml_str(gc_err)
        etype, cond = stanza_error(gc_err)
        assert cond == "service-unavailable", xml_str(gc_err)
        assert etype in ERROR_TYPES, xml_str(gc_err)
        await cs.barrier()
        other = [e for e in await cs.drain(0.3) if e.get("id") in ("ns-hl", "ns-err", "ns-ctl")]
        assert not other, f"unexpected answer: {xml_str(other[0])}"

        cr = await online(server, r_acct, "r")
        await cr.expect(is_message("ns-ctl"), what="the stored control chat")
        leaked = messages(await cr.drain(0.5), {"ns-hl", "ns-gc", "ns-err"})
        assert not leaked, f"stored and delivered: {xml_str(leaked[0])}"
    finally:
        await close_all(cs, cr)


async def test_offline_storage_limit(make_server):
    """[im] max_offline_messages = 3: the fourth gets <service-unavailable/> (XEP-0160),
    from the recipient's JID; the three stored ones are delivered, the fourth is not."""
    srv = make_server({"im": {"max_offline_messages": 3}}, accounts=2)
    s_acct, r_acct = srv.account(), srv.account()
    cs = await login(srv, s_acct, resource="s")
    cr = None
    try:
        ids = [f"q{n}" for n in range(4)]
        for id_ in ids[:3]:
            await cs.send(f"<message to='{r_acct.jid}' type='chat' id='{id_}'><body>{id_}</body></message>")
        await no_errors(cs, set(ids[:3]))
        await cs.send(f"<message to='{r_acct.jid}' type='chat' id='q3'><body>q3</body></message>")
        err = await cs.expect(lambda e: e.get("id") == "q3", what="the error for the fourth message")
        assert err.tag == q("message") and err.get("type") == "error", xml_str(err)
        etype, cond = stanza_error(err)
        assert cond == "service-unavailable", xml_str(err)
        assert etype in ERROR_TYPES, xml_str(err)
        assert err.get("from") == r_acct.jid, f"RFC 6120 8.3.1: from the addressee: {xml_str(err)}"
        assert err.get("to") in (cs.jid, None), xml_str(err)

        cr = await online(srv, r_acct, "r")
        got = await collect_in_order(cr, ids[:3])
        assert [m.get("id") for m in got] == ids[:3]
        assert not messages(await cr.drain(0.5), {"q3"}), "the refused message was stored"
        # Delivered messages free the quota.
        await cr.close()
        cr = None
        await cs.send(f"<message to='{r_acct.jid}' type='chat' id='q4'><body>q4</body></message>")
        await no_errors(cs, {"q4"})
        cr = await online(srv, r_acct, "r2")
        await cr.expect(is_message("q4"), what="a message stored after the quota was freed")
    finally:
        await close_all(cs, cr)


# -- persistence across kill -9 -------------------------------------------------------------


async def test_state_survives_kill9_and_restart(make_server):
    srv = make_server(accounts=6)
    a, b, c_, d, e, f = (srv.account() for _ in range(6))
    clients = []
    try:
        ca = await online(srv, a, "a")
        cb = await online(srv, b, "b")
        clients += [ca, cb]
        await subscribe(ca, cb)
        await subscribe(cb, ca)  # A <-> B: both
        assert (await ca.roster_set(roster_item_xml(c_.jid, name="Cee", groups=["G1", "G2"])))\
            .get("type") == "result"
        await ca.send(f"<presence to='{e.jid}' type='subscribed'/>")  # pre-approval of E
        await ca.expect(is_roster_push(e.jid, approved=True), what="A's pre-approval of E")
        await ca.send(f"<presence to='{d.jid}' type='subscribe'/>")  # D is offline
        await ca.expect(is_roster_push(d.jid, ask="subscribe"), what="A asks D")
        t0 = time.time()
        for id_ in ("k1", "k2"):
            await cb.send(f"<message to='{f.jid}' type='chat' id='{id_}'><body>{id_}</body></message>")
        await no_errors(cb, {"k1", "k2"})
        ver_a, roster_a = await ca.roster()
        _, roster_b = await cb.roster()
        assert roster_a[b.jid]["subscription"] == "both" and roster_a[e.jid]["approved"], roster_a
        await asyncio.sleep(0.3)  # let the contacts' shards store what they were sent
        t_kill = time.time()

        srv.kill9()
        for c in clients:
            c.abort()
        clients.clear()
        srv.start()

        ca = await online(srv, a, "a-after")
        clients.append(ca)
        _, after_a = await ca.roster()
        assert after_a == roster_a, f"A's roster before kill -9: {roster_a}\nafter: {after_a}"
        resp = await ca.roster_get(ver_a)
        if resp.find(ROSTER_QUERY) is not None:
            got = {j: item_summary(i) for j, i in roster_items(resp).items()}
            assert got == roster_a, f"a stale version gets the whole roster, unchanged: {got}"
        else:
            assert list(resp) == [], xml_str(resp)
        cb = await online(srv, b, "b-after")
        clients.append(cb)
        assert (await cb.roster())[1] == roster_b
        # Both subscriptions still work: B's probe gets A's presence, A gets B's broadcast.
        await cb.expect(is_presence(ca.jid), what="A's presence at B after the restart")
        await ca.expect(is_presence(cb.jid), what="B's presence at A after the restart")

        cd = await online(srv, d, "d")
        clients.append(cd)
        await cd.expect(is_sub(a.jid, "subscribe"), what="A's pending request at D after the restart")

        ce = await online(srv, e, "e")
        clients.append(ce)
        ca.skipped.clear()
        await ce.send(f"<presence to='{a.jid}' type='subscribe'/>")
        await ce.expect(is_roster_push(a.jid, subscription="to", ask=None),
                        what="E's request auto-approved by the surviving pre-approval")
        await ca.expect(is_roster_push(e.jid, subscription="from"), what="A: E is 'from'")
        asked = [x for x in await ca.drain(0.3) if is_sub(e.jid, "subscribe")(x)]
        assert not asked, f"a pre-approved request was shown to A: {xml_str(asked[0])}"

        cf = await online(srv, f, "f")
        clients.append(cf)
        got = await collect_in_order(cf, ["k1", "k2"])
        assert [m.get("id") for m in got] == ["k1", "k2"]
        for m in got:
            check_delayed(m, sender_jid=f"{b.jid}/b", body=m.get("id"), type_="chat",
                          not_before=t0, not_after=t_kill)
        await cf.close()
        clients.remove(cf)
        cf = await online(srv, f, "f-again")
        clients.append(cf)
        again = messages(await cf.drain(0.5), {"k1", "k2"})
        assert not again, f"delivered again after the restart: {xml_str(again[0])}"
    finally:
        for c in clients:
            await c.close()
