"""Data the server keeps for an account, over raw sockets: vcard-temp (XEP-0054), private
XML storage (XEP-0049) and last activity (XEP-0012), plus the server's uptime (XEP-0012 §5)."""

import asyncio
import xml.etree.ElementTree as ET

import pytest

from rawxmpp import NS_DISCO_INFO, login, q, stanza_error, xml_str

ACCOUNT_POOL = 40

NS_VCARD = "vcard-temp"
NS_PRIVATE = "jabber:iq:private"
NS_LAST = "jabber:iq:last"

VCARD = (
    f"<vCard xmlns='{NS_VCARD}'>"
    "<FN>Juliet Capulet</FN>"
    "<N><FAMILY>Capulet</FAMILY><GIVEN>Juliet</GIVEN><MIDDLE/></N>"
    "<NICKNAME>jc &amp; &lt;co&gt; \u00e9\u4e2d</NICKNAME>"
    "<PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0KGgoAAAANSUhEUg==</BINVAL></PHOTO>"
    "</vCard>"
)


def bare(jid):
    return jid.split("/", 1)[0]


def shape(el):
    """Everything that makes two elements equal: name, attributes, text, children."""
    return (
        el.tag,
        sorted(el.attrib.items()),
        el.text or "",
        [shape(c) for c in el],
        el.tail or "",
    )


def parsed(xml):
    return ET.fromstring(xml)


def assert_result(resp, *, from_=None):
    assert resp.get("type") == "result", xml_str(resp)
    assert resp.get("from") == from_, xml_str(resp)


def assert_error(resp, type_, condition, *, from_=None):
    assert resp.get("type") == "error", xml_str(resp)
    assert stanza_error(resp) == (type_, condition), xml_str(resp)
    assert resp.get("from") == from_, xml_str(resp)


def payload(resp):
    """The single child of an IQ result (None if it has none)."""
    children = list(resp)
    assert len(children) <= 1, xml_str(resp)
    return children[0] if children else None


# -- vcard-temp (XEP-0054) ------------------------------------------------------------


async def vcard_get(c, to=None):
    return await c.iq(f"<vCard xmlns='{NS_VCARD}'/>", to=to)


async def vcard_set(c, vcard, to=None):
    return await c.iq(vcard, type_="set", to=to)


async def test_vcard_set_and_get_own(server):
    c = await login(server, server.account(), resource="vc")
    try:
        # §3.1: no vCard yet -> an empty one (the XEP's alternative to item-not-found).
        resp = await vcard_get(c)
        assert_result(resp)
        assert shape(payload(resp)) == shape(parsed(f"<vCard xmlns='{NS_VCARD}'/>")), xml_str(resp)

        resp = await vcard_set(c, VCARD)
        assert_result(resp)
        assert payload(resp) is None, xml_str(resp)

        resp = await vcard_get(c)
        assert_result(resp)
        assert shape(payload(resp)) == shape(parsed(VCARD)), xml_str(resp)

        # A set replaces the whole vCard (§3.2), also when sent to the own bare JID.
        smaller = f"<vCard xmlns='{NS_VCARD}'><FN>J.</FN></vCard>"
        resp = await vcard_set(c, smaller, to=bare(c.jid))
        assert resp.get("type") == "result", xml_str(resp)
        resp = await vcard_get(c)
        assert shape(payload(resp)) == shape(parsed(smaller)), xml_str(resp)
    finally:
        await c.close()


async def test_vcard_of_another_user(server):
    owner, reader, nocard = server.account(), server.account(), server.account()
    co = await login(server, owner, resource="o")
    cr = await login(server, reader, resource="r")
    try:
        assert (await vcard_set(co, VCARD)).get("type") == "result"
        # §3.3: anyone may read it; the server answers for the account, from its bare JID.
        resp = await vcard_get(cr, to=owner.jid)
        assert_result(resp, from_=owner.jid)
        assert shape(payload(resp)) == shape(parsed(VCARD)), xml_str(resp)
        # §3.3: someone else's missing vCard is an error, the same as for a user that does
        # not exist (service-unavailable, RFC 6121 8.5.1): see test_im.py's enumeration test.
        resp = await vcard_get(cr, to=nocard.jid)
        assert_error(resp, "cancel", "service-unavailable", from_=nocard.jid)
    finally:
        await co.close()
        await cr.close()


async def test_vcard_set_by_another_user_is_forbidden(server):
    owner, other = server.account(), server.account()
    co = await login(server, owner, resource="o")
    cx = await login(server, other, resource="x")
    try:
        assert (await vcard_set(co, VCARD)).get("type") == "result"
        evil = f"<vCard xmlns='{NS_VCARD}'><FN>Mallory</FN></vCard>"
        resp = await vcard_set(cx, evil, to=owner.jid)
        # §3.2: forbidden (or not-allowed).
        assert_error(resp, "auth", "forbidden", from_=owner.jid)
        resp = await vcard_get(co)
        assert shape(payload(resp)) == shape(parsed(VCARD)), xml_str(resp)
        # Nor was the other user's own vCard touched.
        resp = await vcard_get(cx)
        assert shape(payload(resp)) == shape(parsed(f"<vCard xmlns='{NS_VCARD}'/>")), xml_str(resp)
    finally:
        await co.close()
        await cx.close()


async def test_vcard_over_64_kib_is_refused(server):
    c = await login(server, server.account(), resource="big")
    try:
        assert (await vcard_set(c, VCARD)).get("type") == "result"
        big = f"<vCard xmlns='{NS_VCARD}'><PHOTO><BINVAL>{'A' * 70_000}</BINVAL></PHOTO></vCard>"
        resp = await vcard_set(c, big)
        assert_error(resp, "modify", "not-acceptable")
        resp = await vcard_get(c)
        assert shape(payload(resp)) == shape(parsed(VCARD)), xml_str(resp)
    finally:
        await c.close()


async def test_bad_vcard_requests(server):
    c = await login(server, server.account(), resource="bad")
    try:
        resp = await c.iq(f"<VCARD xmlns='{NS_VCARD}'/>")
        assert_error(resp, "modify", "bad-request")
    finally:
        await c.close()


# -- private XML storage (XEP-0049) ------------------------------------------------------


def private_query(inner=""):
    return f"<query xmlns='{NS_PRIVATE}'>{inner}</query>"


PREFS = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick><x a='1'/></exodus>"


async def test_private_storage_set_and_get(server):
    c = await login(server, server.account(), resource="priv")
    try:
        # Nothing stored: the element comes back empty, as asked.
        resp = await c.iq(private_query("<exodus xmlns='exodus:prefs'/>"))
        assert_result(resp)
        expected = parsed(private_query("<exodus xmlns='exodus:prefs'/>"))
        assert shape(payload(resp)) == shape(expected), xml_str(resp)

        resp = await c.iq(private_query(PREFS), type_="set")
        assert_result(resp)
        assert payload(resp) is None, xml_str(resp)

        # What a get sends inside the element does not matter; the name and namespace do.
        resp = await c.iq(private_query("<exodus xmlns='exodus:prefs'><junk/></exodus>"))
        assert_result(resp)
        assert shape(payload(resp)) == shape(parsed(private_query(PREFS))), xml_str(resp)

        # Stored per (name, namespace): other namespaces and other names are separate.
        for other in ("<exodus xmlns='other:prefs'/>", "<psi xmlns='exodus:prefs'/>"):
            resp = await c.iq(private_query(other))
            assert shape(payload(resp)) == shape(parsed(private_query(other))), xml_str(resp)

        # A set replaces.
        newer = "<exodus xmlns='exodus:prefs'><defaultnick>Ophelia</defaultnick></exodus>"
        assert (await c.iq(private_query(newer), type_="set")).get("type") == "result"
        resp = await c.iq(private_query("<exodus xmlns='exodus:prefs'/>"))
        assert shape(payload(resp)) == shape(parsed(private_query(newer))), xml_str(resp)
    finally:
        await c.close()


async def test_private_storage_several_elements_of_one_namespace(server):
    """§2.3: a set or result may carry several elements of the same namespace."""
    c = await login(server, server.account(), resource="multi")
    try:
        two = "<a xmlns='urn:example:n'>1</a><b xmlns='urn:example:n'>2</b>"
        assert (await c.iq(private_query(two), type_="set")).get("type") == "result"
        resp = await c.iq(private_query("<b xmlns='urn:example:n'/><a xmlns='urn:example:n'/>"))
        assert_result(resp)
        want = private_query("<b xmlns='urn:example:n'>2</b><a xmlns='urn:example:n'>1</a>")
        assert shape(payload(resp)) == shape(parsed(want)), xml_str(resp)
    finally:
        await c.close()


async def test_private_storage_is_per_account_and_only_for_its_owner(server):
    owner, other = server.account(), server.account()
    co = await login(server, owner, resource="o")
    cx = await login(server, other, resource="x")
    try:
        assert (await co.iq(private_query(PREFS), type_="set")).get("type") == "result"
        # The other account has its own, empty storage.
        resp = await cx.iq(private_query("<exodus xmlns='exodus:prefs'/>"))
        expected = parsed(private_query("<exodus xmlns='exodus:prefs'/>"))
        assert shape(payload(resp)) == shape(expected), xml_str(resp)
        # §2.3: another user's data -> forbidden (preferred over service-unavailable).
        for type_ in ("get", "set"):
            resp = await cx.iq(private_query(PREFS), type_=type_, to=owner.jid)
            assert_error(resp, "auth", "forbidden", from_=owner.jid)
        resp = await co.iq(private_query("<exodus xmlns='exodus:prefs'/>"))
        assert shape(payload(resp)) == shape(parsed(private_query(PREFS))), xml_str(resp)
    finally:
        await co.close()
        await cx.close()


@pytest.mark.parametrize(
    "type_, body, condition",
    [
        # §2.3: at least one child element with a proper namespace, else not-acceptable.
        ("get", private_query(), "not-acceptable"),
        ("set", private_query(), "not-acceptable"),
        ("set", private_query("<exodus/>"), "not-acceptable"),  # in jabber:iq:private
        ("get", private_query("<message xmlns='jabber:client'/>"), "not-acceptable"),
        ("set", private_query("<x xmlns='jabber:server'/>"), "not-acceptable"),
        ("set", private_query(f"{PREFS}<exodus/>"), "not-acceptable"),
        # §2.3: a get asks about one namespace only.
        ("get", private_query("<a xmlns='urn:one'/><b xmlns='urn:two'/>"), "bad-request"),
        # Not the protocol's <query/>.
        ("get", f"<storage xmlns='{NS_PRIVATE}'/>", "bad-request"),
    ],
    ids=["get-empty", "set-empty", "own-ns", "client-ns", "server-ns", "one-bad-of-two",
         "two-namespaces", "not-query"],
)
async def test_private_storage_errors(server, type_, body, condition):
    c = await login(server, server.account(), resource="err")
    try:
        resp = await c.iq(body, type_=type_)
        assert_error(resp, "modify", condition)
        # Nothing of a refused set was stored.
        resp = await c.iq(private_query("<exodus xmlns='exodus:prefs'/>"))
        expected = parsed(private_query("<exodus xmlns='exodus:prefs'/>"))
        assert shape(payload(resp)) == shape(expected), xml_str(resp)
    finally:
        await c.close()


# -- last activity (XEP-0012) ------------------------------------------------------------


def is_presence_from(account, type_=None):
    return (
        lambda e: e.tag == q("presence")
        and bare(e.get("from") or "") == account.jid
        and e.get("type") == type_
    )


async def subscribe(subscriber, sc, contact, cc):
    """`subscriber` gets a subscription to `contact`'s presence (both are online):
    afterwards the contact's roster has the subscriber with subscription 'from'."""
    await sc.send(f"<presence to='{contact.jid}' type='subscribe'/>")
    await cc.recv_match(is_presence_from(subscriber, "subscribe"), what="the subscription request")
    await cc.send(f"<presence to='{subscriber.jid}' type='subscribed'/>")
    await sc.recv_match(is_presence_from(contact, "subscribed"), what="the approval")


async def last_query(c, to=None):
    return await c.iq(f"<query xmlns='{NS_LAST}'/>", to=to)


def last_result(resp, from_):
    """(seconds, text) of a last activity result, which must have nothing else."""
    assert_result(resp, from_=from_)
    query = payload(resp)
    assert query is not None and query.tag == q("query", NS_LAST), xml_str(resp)
    assert list(query.attrib) == ["seconds"], xml_str(resp)
    assert list(query) == [], xml_str(resp)
    return int(query.get("seconds")), query.text


async def test_last_activity_after_logout_has_seconds_and_status(server):
    watcher, user = server.account(), server.account()
    cw = await login(server, watcher, resource="w", presence=True)
    cu = await login(server, user, resource="u", presence=True)
    try:
        await subscribe(watcher, cw, user, cu)
        await cu.send("<presence type='unavailable'><status>Heading Home</status></presence>")
        await cw.recv_match(is_presence_from(user, "unavailable"), what="the logout")
        await cu.close()
        seconds, text = last_result(await last_query(cw, to=user.jid), user.jid)
        assert 0 <= seconds <= 5 and text == "Heading Home", (seconds, text)
        # §3: seconds since the logout, so they grow.
        await asyncio.sleep(2.1)
        later, text = last_result(await last_query(cw, to=user.jid), user.jid)
        assert later >= seconds + 2 and text == "Heading Home", (seconds, later, text)
    finally:
        await cw.close()
        await cu.close()


async def test_last_activity_after_a_dropped_connection_has_no_status(server):
    watcher, user = server.account(), server.account()
    cw = await login(server, watcher, resource="w", presence=True)
    cu = await login(server, user, resource="u", presence=True)
    try:
        await subscribe(watcher, cw, user, cu)
        cu.abort()
        await cw.recv_match(is_presence_from(user, "unavailable"), what="the generated unavailable")
        seconds, text = last_result(await last_query(cw, to=user.jid), user.jid)
        assert 0 <= seconds <= 5 and text is None, (seconds, text)
    finally:
        await cw.close()


async def test_last_activity_is_zero_while_a_resource_is_available(server):
    watcher, user = server.account(), server.account()
    cw = await login(server, watcher, resource="w", presence=True)
    cu = await login(server, user, resource="u", presence=True)
    cu2 = await login(server, user, resource="u2", presence=True)
    try:
        await subscribe(watcher, cw, user, cu)
        # §3: at least one available resource -> seconds='0', no text.
        assert last_result(await last_query(cw, to=user.jid), user.jid) == (0, None)
        # One of two resources leaving does not make the account offline.
        await cu2.send("<presence type='unavailable'><status>one gone</status></presence>")
        await cw.recv_match(is_presence_from(user, "unavailable"), what="u2 leaving")
        assert last_result(await last_query(cw, to=user.jid), user.jid) == (0, None)
        # The account asks about itself (no 'to'): the answer carries no 'from'.
        assert last_result(await last_query(cu), None) == (0, None)
    finally:
        for c in (cw, cu, cu2):
            await c.close()


async def test_last_activity_is_forbidden_without_a_subscription(server):
    """§3: only those allowed to see the account's presence; others get forbidden."""
    user, stranger, followed, pending = (server.account() for _ in range(4))
    cu = await login(server, user, resource="u", presence=True)
    cs = await login(server, stranger, resource="s", presence=True)
    cf = await login(server, followed, resource="f", presence=True)
    cp = await login(server, pending, resource="p", presence=True)
    try:
        # The user subscribes to `followed`: that gives the user's presence to nobody.
        await subscribe(user, cu, followed, cf)
        # `pending` asked but was never approved.
        await cp.send(f"<presence to='{user.jid}' type='subscribe'/>")
        await cu.recv_match(is_presence_from(pending, "subscribe"), what="the pending request")
        for c in (cs, cf, cp):
            resp = await last_query(c, to=user.jid)
            assert_error(resp, "auth", "forbidden", from_=user.jid)
    finally:
        for c in (cu, cs, cf, cp):
            await c.close()


async def test_last_activity_set_is_not_allowed(server):
    c = await login(server, server.account(), resource="set")
    try:
        resp = await c.iq(f"<query xmlns='{NS_LAST}' seconds='5'/>", type_="set")
        assert_error(resp, "cancel", "not-allowed")
    finally:
        await c.close()


async def test_server_uptime(server):
    """§5: to the server itself, 'seconds' is its uptime, with no character data."""
    c = await login(server, server.account(), resource="up")
    try:
        first, text = last_result(await last_query(c, to=server.domain), server.domain)
        assert first >= 0 and text is None, (first, text)
        await asyncio.sleep(1.1)
        second, _ = last_result(await last_query(c, to=server.domain), server.domain)
        assert second >= first + 1, (first, second)
    finally:
        await c.close()


# -- discovery and persistence -------------------------------------------------------------


async def test_disco_info_lists_vcard_and_last_activity(server):
    c = await login(server, server.account(), resource="disco")
    try:
        resp = await c.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=server.domain)
        assert resp.get("type") == "result", xml_str(resp)
        features = {f.get("var") for f in resp.iter(f"{{{NS_DISCO_INFO}}}feature")}
        # XEP-0054 §4 and XEP-0012 §6; XEP-0049 defines no feature.
        assert {NS_VCARD, NS_LAST} <= features, sorted(features)
    finally:
        await c.close()


async def test_account_data_survives_a_restart(make_server):
    srv = make_server(accounts=2)
    user, watcher = srv.account(), srv.account()
    try:
        cu = await login(srv, user, resource="u", presence=True)
        cw = await login(srv, watcher, resource="w", presence=True)
        await subscribe(watcher, cw, user, cu)
        assert (await vcard_set(cu, VCARD)).get("type") == "result"
        assert (await cu.iq(private_query(PREFS), type_="set")).get("type") == "result"
        await cu.send("<presence type='unavailable'><status>bye</status></presence>")
        await cw.recv_match(is_presence_from(user, "unavailable"), what="the logout")
        await cu.close()
        await cw.close()
        srv.kill9()  # no shutdown code runs: only what was flushed survives
        srv.start()

        cw = await login(srv, watcher, resource="w")
        try:
            resp = await vcard_get(cw, to=user.jid)
            assert_result(resp, from_=user.jid)
            assert shape(payload(resp)) == shape(parsed(VCARD)), xml_str(resp)
            seconds, text = last_result(await last_query(cw, to=user.jid), user.jid)
            assert seconds >= 0 and text == "bye", (seconds, text)
        finally:
            await cw.close()
        cu = await login(srv, user, resource="u")
        try:
            resp = await cu.iq(private_query("<exodus xmlns='exodus:prefs'/>"))
            assert shape(payload(resp)) == shape(parsed(private_query(PREFS))), xml_str(resp)
        finally:
            await cu.close()
    finally:
        # make_server does not stop a node that was stopped once and started again.
        if srv.alive():
            srv.stop()
