"""Per-account caps (`[im]` max_*): everything a client or a peer can make the node store
for an account is bounded. Each test trips one cap over real sockets, checks the exact
stanza error (condition, type, the <text/> naming the key) and that what was stored before
is unchanged; the subscription flood also checks that the stored requests stop growing at
the cap (counted by their redelivery at login)."""

import xml.etree.ElementTree as ET

import pytest

from conftest import Server
from rawxmpp import (
    NS_ROSTER,
    ROSTER_GROUP,
    ROSTER_QUERY,
    bare,
    login,
    online,
    q,
    roster_items,
    stanza_error,
    xml_str,
)

NS_BLOCKING = "urn:xmpp:blocking"
NS_PRIVACY = "jabber:iq:privacy"
NS_PRIVATE = "jabber:iq:private"
NS_VCARD = "vcard-temp"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"

CAPS = {
    "max_roster_items": 3,
    "max_pending_subscriptions": 5,
    "max_roster_groups": 3,
    "max_blocklist_items": 4,
    "max_privacy_lists": 2,
    "max_privacy_items": 3,
    "max_private_entries": 3,
    "max_private_bytes": 2048,
    "max_vcard_bytes": 1024,
    "max_iqs_in_flight": 4,
}


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("sb-caps"), {"im": CAPS}, name="caps")
    srv.prepare_accounts(30)
    srv.start()
    yield srv
    srv.stop()


def error_text(el: ET.Element) -> str | None:
    t = el.find(f"{q('error')}/{{{NS_STANZAS}}}text")
    return None if t is None else t.text


def assert_cap(resp: ET.Element, type_: str, condition: str, key: str) -> None:
    assert resp.get("type") == "error", xml_str(resp)
    assert stanza_error(resp) == (type_, condition), xml_str(resp)
    text = error_text(resp) or ""
    assert f"im.{key}" in text and str(CAPS[key]) in text, xml_str(resp)


def assert_result(resp: ET.Element) -> None:
    assert resp.get("type") == "result", xml_str(resp)


async def test_roster_groups_per_item(capped):
    c = await login(capped, capped.account(), resource="r")
    try:
        groups = lambda n: "".join(f"<group>g{i}</group>" for i in range(n))  # noqa: E731
        assert_result(await c.roster_set(f"<item jid='kept@example.net'>{groups(3)}</item>"))
        resp = await c.roster_set(f"<item jid='kept@example.net'>{groups(4)}</item>")
        assert_cap(resp, "modify", "policy-violation", "max_roster_groups")
        resp = await c.roster_set(f"<item jid='new@example.net'>{groups(4)}</item>")
        assert_cap(resp, "modify", "policy-violation", "max_roster_groups")
        resp = await c.roster_get()
        items = roster_items(resp.find(ROSTER_QUERY))
        assert set(items) == {"kept@example.net"}, xml_str(resp)
        kept = [g.text for g in items["kept@example.net"].iter(ROSTER_GROUP)]
        assert kept == ["g0", "g1", "g2"], xml_str(resp)
    finally:
        await c.close()


async def test_roster_items_added_by_presence_subscriptions(capped):
    """A subscription request (or a pre-approval) to a new contact adds a roster item
    (RFC 6121 §3.1.2): on a full roster it is refused like a roster set (not-allowed) and not
    routed; to a contact already on the roster it goes through."""
    c = await login(capped, capped.account(), resource="r")
    try:
        for i in range(3):
            assert_result(await c.roster_set(f"<item jid='c{i}@example.net'/>"))
        resp = await c.roster_set("<item jid='c3@example.net'/>")
        assert_cap(resp, "cancel", "not-allowed", "max_roster_items")
        for kind in ("subscribe", "subscribed"):
            await c.send(f"<presence to='c9@example.net' type='{kind}' id='over-{kind}'/>")
            err = await c.expect(lambda e: e.tag == q("presence") and e.get("id") == f"over-{kind}",
                                 what=f"the refusal of the {kind}")
            assert_cap(err, "cancel", "not-allowed", "max_roster_items")
            assert err.get("from") == "c9@example.net", xml_str(err)
        await c.send("<presence to='c1@example.net' type='subscribe' id='fits'/>")
        def asks_c1(e):
            item = e.find(f"{ROSTER_QUERY}/{{{NS_ROSTER}}}item")
            return (e.tag == q("iq") and item is not None
                    and item.get("jid") == "c1@example.net" and item.get("ask") == "subscribe")

        await c.expect(asks_c1, what="the roster push of c1 with ask='subscribe'")
        resp = await c.roster_get()
        items = roster_items(resp.find(ROSTER_QUERY))
        assert sorted(items) == ["c0@example.net", "c1@example.net", "c2@example.net"]
    finally:
        await c.close()


async def test_blocklist_entries(capped):
    c = await login(capped, capped.account(), resource="r")
    try:
        items = lambda *js: "".join(f"<item jid='{j}'/>" for j in js)  # noqa: E731
        block = lambda *js: c.iq(f"<block xmlns='{NS_BLOCKING}'>{items(*js)}</block>",  # noqa: E731
                                 type_="set")
        assert_result(await block("a@x.test", "b@x.test", "c@x.test"))
        # Two new entries where one is left: all or nothing.
        assert_cap(await block("d@x.test", "e@x.test"), "modify", "policy-violation",
                   "max_blocklist_items")
        assert_result(await block("d@x.test"))
        assert_result(await block("a@x.test"))  # already blocked: no new entry
        assert_cap(await block("e@x.test"), "modify", "policy-violation", "max_blocklist_items")
        resp = await c.iq(f"<blocklist xmlns='{NS_BLOCKING}'/>")
        listed = sorted(i.get("jid") for i in resp.iter(f"{{{NS_BLOCKING}}}item"))
        assert listed == ["a@x.test", "b@x.test", "c@x.test", "d@x.test"], xml_str(resp)
        # Room again after an unblock.
        assert_result(await c.iq(f"<unblock xmlns='{NS_BLOCKING}'>{items('a@x.test')}</unblock>",
                                 type_="set"))
        assert_result(await block("e@x.test"))
    finally:
        await c.close()


def privacy_list(name: str, n: int) -> str:
    items = "".join(
        f"<item type='jid' value='u{i}@x.test' action='deny' order='{i + 1}'/>" for i in range(n)
    )
    return f"<query xmlns='{NS_PRIVACY}'><list name='{name}'>{items}</list></query>"


async def test_privacy_lists_and_items(capped):
    c = await login(capped, capped.account(), resource="r")
    try:
        assert_result(await c.iq(privacy_list("one", 3), type_="set"))
        assert_result(await c.iq(privacy_list("two", 1), type_="set"))
        assert_cap(await c.iq(privacy_list("three", 1), type_="set"), "modify",
                   "policy-violation", "max_privacy_lists")
        assert_cap(await c.iq(privacy_list("two", 4), type_="set"), "modify",
                   "policy-violation", "max_privacy_items")
        assert_result(await c.iq(privacy_list("two", 2), type_="set"))  # replacing is fine
        resp = await c.iq(f"<query xmlns='{NS_PRIVACY}'/>")
        names = sorted(l.get("name") for l in resp.iter(f"{{{NS_PRIVACY}}}list"))
        assert names == ["one", "two"], xml_str(resp)
        resp = await c.iq(f"<query xmlns='{NS_PRIVACY}'><list name='two'/></query>")
        assert len(list(resp.iter(f"{{{NS_PRIVACY}}}item"))) == 2, xml_str(resp)
    finally:
        await c.close()


def private_set(name: str, ns: str, text: str = "") -> str:
    return f"<query xmlns='{NS_PRIVATE}'><{name} xmlns='{ns}'>{text}</{name}></query>"


async def test_private_xml_entries_and_bytes(capped):
    c = await login(capped, capped.account(), resource="r")
    try:
        for i in range(3):
            assert_result(await c.iq(private_set("e", f"urn:cap:{i}", "x"), type_="set"))
        assert_cap(await c.iq(private_set("e", "urn:cap:3"), type_="set"), "modify",
                   "policy-violation", "max_private_entries")
        # Replacing an element adds no entry; but it may not push the bytes over the cap.
        assert_result(await c.iq(private_set("e", "urn:cap:0", "y" * 500), type_="set"))
        assert_cap(await c.iq(private_set("e", "urn:cap:1", "z" * 1700), type_="set"),
                   "modify", "policy-violation", "max_private_bytes")
        resp = await c.iq(private_set("e", "urn:cap:1"))
        stored = resp.find(f"{{{NS_PRIVATE}}}query/{{urn:cap:1}}e")
        assert stored is not None and stored.text == "x", xml_str(resp)
        resp = await c.iq(private_set("e", "urn:cap:3"))
        absent = resp.find(f"{{{NS_PRIVATE}}}query/{{urn:cap:3}}e")
        assert absent is not None and not absent.text, xml_str(resp)
    finally:
        await c.close()


async def test_vcard_bytes(capped):
    c = await login(capped, capped.account(), resource="r")
    try:
        small = f"<vCard xmlns='{NS_VCARD}'><FN>Small</FN></vCard>"
        assert_result(await c.iq(small, type_="set"))
        big = f"<vCard xmlns='{NS_VCARD}'><FN>{'b' * 1100}</FN></vCard>"
        assert_cap(await c.iq(big, type_="set"), "modify", "not-acceptable", "max_vcard_bytes")
        resp = await c.iq(f"<vCard xmlns='{NS_VCARD}'/>")
        fn = resp.find(f"{{{NS_VCARD}}}vCard/{{{NS_VCARD}}}FN")
        assert fn is not None and fn.text == "Small", xml_str(resp)
    finally:
        await c.close()


async def test_iqs_in_flight_per_session(capped):
    """500 roster gets in one write: each gets exactly one answer, those beyond
    im.max_iqs_in_flight `resource-constraint` (wait), and the session keeps working."""
    c = await login(capped, capped.account(), resource="r")
    try:
        n = 500
        await c.send("".join(
            f"<iq type='get' id='flood{i}'><query xmlns='{NS_ROSTER}'/></iq>" for i in range(n)
        ))
        answers = {}
        while len(answers) < n:
            el = await c.recv_match(lambda e: e.tag == q("iq") and e.get("id", "").startswith("flood"),
                                    10, "the answers to the roster gets")
            assert el.get("id") not in answers, f"two answers to {el.get('id')}"
            answers[el.get("id")] = el
        refused = [e for e in answers.values() if e.get("type") == "error"]
        served = [e for e in answers.values() if e.get("type") == "result"]
        assert len(refused) + len(served) == n
        assert refused, "nothing was refused: the cap did not trip"
        assert len(served) >= CAPS["max_iqs_in_flight"]
        for e in refused:
            assert stanza_error(e) == ("wait", "resource-constraint"), xml_str(e)
            assert "im.max_iqs_in_flight" in (error_text(e) or ""), xml_str(e)
        assert_result(await c.roster_get())
    finally:
        await c.close()


async def test_iqs_in_flight_to_another_account(capped):
    """The same bound for requests another user's shard answers (vCard gets to a contact's
    bare JID, routed through the router): beyond the cap resource-constraint, every request
    answered once, and answered ones free their place."""
    c = await login(capped, capped.account(), resource="r")
    other = capped.account()
    try:
        n = 300
        await c.send("".join(
            f"<iq type='get' id='vflood{i}' to='{other.jid}'><vCard xmlns='{NS_VCARD}'/></iq>"
            for i in range(n)
        ))
        answers = {}
        while len(answers) < n:
            el = await c.recv_match(
                lambda e: e.tag == q("iq") and e.get("id", "").startswith("vflood"),
                10, "the answers to the vCard gets")
            assert el.get("id") not in answers, f"two answers to {el.get('id')}"
            answers[el.get("id")] = el
        refused = [e for e in answers.values()
                   if stanza_error(e) == ("wait", "resource-constraint")]
        assert refused, "nothing was refused: the cap did not trip"
        assert all("im.max_iqs_in_flight" in (error_text(e) or "") for e in refused)
        # The others were served by the contact's shard (no vCard: service-unavailable, the
        # same answer as for no such user, XEP-0054 §3.3).
        served = [e for e in answers.values() if e not in refused]
        assert len(served) >= CAPS["max_iqs_in_flight"]
        assert all(stanza_error(e) == ("cancel", "service-unavailable") for e in served), \
            [xml_str(e) for e in served[:3]]
        # Nothing stays counted: one at a time, more requests than the cap all pass.
        for i in range(CAPS["max_iqs_in_flight"] * 2):
            resp = await c.iq(f"<vCard xmlns='{NS_VCARD}'/>", to=other.jid)
            assert stanza_error(resp) == ("cancel", "service-unavailable"), xml_str(resp)
    finally:
        await c.close()


async def test_subscription_flood_stops_at_the_cap(capped):
    """Eight contacts ask an offline account for a subscription: five are kept, three bounce
    with resource-constraint; at login exactly the kept ones are redelivered, as their sender
    and status text only. A repeated request is a duplicate, an answered one makes room."""
    cap = CAPS["max_pending_subscriptions"]
    victim = capped.account()
    senders = [await online(capped, capped.account(), "s") for _ in range(cap + 3)]
    try:
        v = victim.jid
        for i, s in enumerate(senders):
            await s.send(f"<presence to='{v}' type='subscribe' id='sub{i}'>"
                         f"<status>from {i}</status><x xmlns='urn:bulk'>{'p' * 2000}</x>"
                         "</presence>")
        bounced = {}
        for i, s in enumerate(senders):
            got = await s.drain(1.0 if bounced or i else 2.0)
            errs = [e for e in got if e.tag == q("presence") and e.get("type") == "error"]
            if errs:
                bounced[i] = errs[0]
        assert len(bounced) == 3, {i: xml_str(e) for i, e in bounced.items()}
        for e in bounced.values():
            assert e.get("from") == v, xml_str(e)
            assert stanza_error(e) == ("wait", "resource-constraint"), xml_str(e)
            assert "im.max_pending_subscriptions" in (error_text(e) or ""), xml_str(e)
            assert e.find("{urn:bulk}x") is None, "the bounce does not echo the payload"
        kept = [i for i in range(len(senders)) if i not in bounced]

        async def redelivered():
            c = await online(capped, victim, "v", roster=False)
            got = await c.drain(1.5)
            await c.close()
            return {e.get("from"): e for e in got if e.tag == q("presence")
                    and e.get("type") == "subscribe"}

        got = await redelivered()
        assert sorted(got) == sorted(bare(senders[i].jid) for i in kept), sorted(got)
        for i in kept:
            e = got[bare(senders[i].jid)]
            assert e.findtext(q("status")) == f"from {i}", xml_str(e)
            assert e.find("{urn:bulk}x") is None, "only the status is stored"
        # The same contact asking again is a duplicate (RFC 6121 §3.1.3): no bounce, no
        # growth, the first request kept.
        first = senders[kept[0]]
        await first.send(f"<presence to='{v}' type='subscribe'><status>again</status></presence>")
        assert not [e for e in await first.drain(1.0) if e.get("type") == "error"]
        got = await redelivered()
        assert len(got) == cap
        assert got[bare(first.jid)].findtext(q("status")) == f"from {kept[0]}"
        # Answering one makes room for one more.
        answer = await login(capped, victim, resource="a")
        await answer.send(f"<presence to='{bare(first.jid)}' type='unsubscribed'/>")
        await answer.barrier()
        await answer.close()
        late = senders[next(iter(bounced))]
        await late.send(f"<presence to='{v}' type='subscribe'/>")
        assert not [e for e in await late.drain(1.0) if e.get("type") == "error"]
        got = await redelivered()
        assert len(got) == cap and bare(late.jid) in got and bare(first.jid) not in got
    finally:
        for s in senders:
            await s.close()


async def test_a_remote_domain_flooding_one_account_hits_the_cap(tmp_path):
    """Eight users of another server (a second node, federated over dialback) ask one
    offline account here for a subscription: the account keeps five, the other three bounce
    back across the link with resource-constraint, and at login exactly five are
    redelivered, so what the remote domain made this node store stopped at the cap."""
    from federation import Certs, make_sb, render_toml_nested

    a_dom, b_dom = "flood-a.fed.test", "flood-b.fed.test"
    certs = Certs(tmp_path / "certs", "selfsigned", [])
    na = make_sb(tmp_path / "a", certs, routes={}, accounts=8, domain=a_dom, name="fa")
    nb = make_sb(tmp_path / "b", certs, routes={}, accounts=1, domain=b_dom, name="fb")
    nb.config["im"] = {"max_pending_subscriptions": CAPS["max_pending_subscriptions"]}
    for x, y in ((na, nb), (nb, na)):
        x.config["s2s"]["routes"] = {y.domain: "{}:{}".format(*y.s2s_addr)}
        x.config_path.write_text(render_toml_nested(x.config))
    na.start()
    nb.start()
    senders = []
    try:
        victim = nb.account()
        senders = [await online(na, na.account(), "s") for _ in range(8)]
        for i, s in enumerate(senders):
            await s.send(f"<presence to='{victim.jid}' type='subscribe'>"
                         f"<status>remote {i}</status></presence>")
        bounced = []
        for s in senders:
            got = await s.drain(3.0 if not bounced else 1.0)
            errs = [e for e in got if e.tag == q("presence") and e.get("type") == "error"]
            if errs:
                e = errs[0]
                assert e.get("from") == victim.jid, xml_str(e)
                assert stanza_error(e) == ("wait", "resource-constraint"), xml_str(e)
                bounced.append(bare(s.jid))
        assert len(bounced) == 8 - CAPS["max_pending_subscriptions"], bounced
        c = await online(nb, victim, "v", roster=False)
        got = await c.drain(2.0)
        await c.close()
        requests = {e.get("from") for e in got
                    if e.tag == q("presence") and e.get("type") == "subscribe"}
        assert len(requests) == CAPS["max_pending_subscriptions"], requests
        assert requests == {bare(s.jid) for s in senders} - set(bounced), requests
        nb.wait_log(r"im: per-account cap reached.*max_pending_subscriptions")
    finally:
        for s in senders:
            await s.close()
        for n in (na, nb):
            if n.proc is not None and n.exit_code is None:
                n.stop()


def test_refusals_are_logged(capped):
    """Runs after the tests above (file order): their refusals left warn lines naming the
    cap (the 1st, 2nd, 4th... refusal per shard is logged at warn, the rest at debug)."""
    log = capped.log_path.read_text(errors="replace")
    assert "im: per-account cap reached" in log, capped.log_tail(40)
    assert "cap=" in log and "limit=" in log, capped.log_tail(40)
