"""Presence subscriptions (RFC 6121 3, Appendix A) and presence to contacts (RFC 6121 4),
over raw sockets: request, approval, mutual subscription in every order, pre-approval,
denial, cancellation, unsubscription, duplicate and offline requests, roster removal, and
who gets whose presence (initial, probes, unavailable, negative priority).

Every client is "interested" (requested the roster) and "available" (sent initial presence)
unless a test says otherwise: RFC 6121 2.2 note -- subscription requests go to available
resources, roster pushes to interested ones.
"""

import pytest

from rawxmpp import (
    bare,
    is_message,
    is_presence,
    is_roster_push,
    is_sub,
    login,
    online,
    q,
    roster_item_xml,
    roster_items,
    stanza_error,
    subscribe,
    xml_str,
)

ACCOUNT_POOL = 70

ERROR_TYPES = {"auth", "cancel", "continue", "modify", "wait"}


def presences_from(elements, who):
    """Presence stanzas from `who` (its bare JID, or any full JID of that account)."""
    return [
        e for e in elements
        if e.tag == q("presence") and (e.get("from") or "").split("/")[0] == bare(who)
    ]


async def close_all(*clients):
    for c in clients:
        if c is not None:
            await c.close()


async def roster_of(c):
    return (await c.roster())[1]


# -- request, approval, mutual ------------------------------------------------------------


async def test_subscribe_request_reaches_contact_from_bare_jid_and_sets_ask(server):
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        # A forged 'from' (with a resource) must not survive: the request is from the
        # user's bare JID (RFC 6121 3.1.2).
        await ca.send(f"<presence to='{b.jid}' from='{a.jid}/forged' type='subscribe' id='sub1'/>")
        got = await cb.expect(lambda e: e.tag == q("presence") and e.get("type") == "subscribe",
                              what="the subscription request")
        assert got.get("from") == a.jid, f"RFC 6121 3.1.2: from must be {a.jid!r}: {xml_str(got)}"
        push = await ca.expect(is_roster_push(b.jid), what="the requester's roster push")
        item = roster_items(push)[b.jid]
        assert item.get("subscription", "none") == "none" and item.get("ask") == "subscribe", (
            f"RFC 6121 3.1.2: subscription='none' ask='subscribe': {xml_str(push)}"
        )
        assert (await roster_of(ca))[b.jid]["ask"] == "subscribe"
        contact_view = (await roster_of(cb)).get(a.jid)
        assert contact_view is None or contact_view["subscription"] == "none", contact_view
    finally:
        await close_all(ca, cb)


async def test_approval_gives_to_and_from_and_the_contacts_presence(server):
    a, b = server.account(), server.account()
    ca = await online(server, a, "a", status="A here")
    cb = await online(server, b, "b", status="B here")
    try:
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await cb.expect(is_sub(a.jid, "subscribe"), what="the request")
        await cb.send(f"<presence to='{a.jid}' type='subscribed'/>")
        # RFC 6121 3.1.5/3.1.6: the user gets the push, the 'subscribed' and the contact's
        # current presence (from each available resource).
        await ca.expect(is_roster_push(b.jid, subscription="to", ask=None), what="push: to")
        await ca.expect(is_sub(b.jid, "subscribed"), what="the 'subscribed' from B's bare JID")
        pres = await ca.expect(is_presence(cb.jid), what="B's available presence")
        assert pres.findtext(q("status")) == "B here", xml_str(pres)
        await cb.expect(is_roster_push(a.jid, subscription="from"), what="push: from")
        assert (await roster_of(ca))[b.jid]["subscription"] == "to"
        assert (await roster_of(cb))[a.jid]["subscription"] == "from"
        # Presence now flows B -> A only.
        ca.skipped.clear()
        cb.skipped.clear()
        await cb.send("<presence><status>B again</status></presence>")
        got = await ca.expect(is_presence(cb.jid), what="B's presence update")
        assert got.findtext(q("status")) == "B again", xml_str(got)
        await ca.send("<presence><status>A again</status></presence>")
        await ca.expect(is_presence(ca.jid), what="A's own update reflected")
        leaked = presences_from(await cb.drain(0.5), a.jid)
        assert not leaked, f"B is not subscribed to A, yet got: {xml_str(leaked[0])}"
    finally:
        await close_all(ca, cb)


async def test_mutual_subscription_one_after_the_other(server):
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await subscribe(ca, cb)  # A: to, B: from
        await cb.send(f"<presence to='{a.jid}' type='subscribe'/>")
        await ca.expect(is_sub(b.jid, "subscribe"), what="B's request")
        await cb.expect(is_roster_push(a.jid, subscription="from", ask="subscribe"),
                        what="B's push: from + ask")
        await ca.send(f"<presence to='{b.jid}' type='subscribed'/>")
        await ca.expect(is_roster_push(b.jid, subscription="both", ask=None), what="A: both")
        await cb.expect(is_roster_push(a.jid, subscription="both", ask=None), what="B: both")
        await cb.expect(is_presence(ca.jid), what="A's presence, now that B is subscribed")
        assert (await roster_of(ca))[b.jid] == {
            "name": None, "subscription": "both", "ask": None, "approved": False, "groups": []}
        assert (await roster_of(cb))[a.jid]["subscription"] == "both"
    finally:
        await close_all(ca, cb)


async def test_crossing_subscription_requests(server):
    """Both ask before either answers (RFC 6121 Appendix A: None + Pending Out/In)."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await cb.send(f"<presence to='{a.jid}' type='subscribe'/>")
        await ca.expect(is_sub(b.jid, "subscribe"), what="B's request")
        await cb.expect(is_sub(a.jid, "subscribe"), what="A's request")
        await ca.expect(is_roster_push(b.jid, subscription="none", ask="subscribe"), what="A: ask")
        await cb.expect(is_roster_push(a.jid, subscription="none", ask="subscribe"), what="B: ask")
        await ca.send(f"<presence to='{b.jid}' type='subscribed'/>")
        await ca.expect(is_roster_push(b.jid, subscription="from", ask="subscribe"),
                        what="A: from + still asking")
        await cb.expect(is_roster_push(a.jid, subscription="to", ask=None), what="B: to")
        await cb.expect(is_presence(ca.jid), what="A's presence at B")
        await cb.send(f"<presence to='{a.jid}' type='subscribed'/>")
        await ca.expect(is_roster_push(b.jid, subscription="both", ask=None), what="A: both")
        await cb.expect(is_roster_push(a.jid, subscription="both", ask=None), what="B: both")
        await ca.expect(is_presence(cb.jid), what="B's presence at A")
        assert (await roster_of(ca))[b.jid]["subscription"] == "both"
        assert (await roster_of(cb))[a.jid]["subscription"] == "both"
    finally:
        await close_all(ca, cb)


async def test_preapproval_then_request_is_approved_without_asking_the_contact(server):
    """RFC 6121 3.4: B pre-approves A; A's later request is answered by B's server."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b", status="B pre")
    try:
        await cb.send(f"<presence to='{a.jid}' type='subscribed'/>")
        await cb.expect(is_roster_push(a.jid, subscription="none", approved=True),
                        what="B's push of A with approved='true'")
        assert (await roster_of(cb))[a.jid]["approved"] is True
        stray = [e for e in await ca.drain(0.3) if e.tag == q("presence") and e.get("type")]
        assert not stray, f"RFC 6121 3.1.5: a pre-approval is not routed to A: {xml_str(stray[0])}"
        assert a.jid not in [j for j in (await roster_of(ca))], "A's roster changed"

        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await ca.expect(is_roster_push(b.jid, subscription="to", ask=None), what="A: to")
        await ca.expect(is_sub(b.jid, "subscribed"), what="the automatic 'subscribed'")
        pres = await ca.expect(is_presence(cb.jid), what="B's presence")
        assert pres.findtext(q("status")) == "B pre", xml_str(pres)
        await cb.expect(is_roster_push(a.jid, subscription="from"), what="B: from")
        asked = [e for e in await cb.drain(0.3) if is_sub(a.jid, "subscribe")(e)]
        assert not asked, f"RFC 6121 3.1.3: a pre-approved request is not delivered: {xml_str(asked[0])}"
        assert (await roster_of(cb))[a.jid]["subscription"] == "from"
    finally:
        await close_all(ca, cb)


async def test_preapproval_can_be_withdrawn(server):
    """RFC 6121 3.2.2 (2): 'unsubscribed' to a pre-approved user removes the pre-approval and
    is not routed; A's later request goes to B as usual."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await cb.send(f"<presence to='{a.jid}' type='subscribed'/>")
        await cb.expect(is_roster_push(a.jid, approved=True), what="B: approved='true'")
        await cb.send(f"<presence to='{a.jid}' type='unsubscribed'/>")
        await cb.expect(is_roster_push(a.jid, approved=False), what="B: pre-approval withdrawn")
        assert not (await roster_of(cb)).get(a.jid, {}).get("approved"), "still pre-approved"
        stray = [e for e in await ca.drain(0.3) if e.tag == q("presence") and e.get("type")]
        assert not stray, f"routed to A: {xml_str(stray[0])}"
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await cb.expect(is_sub(a.jid, "subscribe"), what="A's request, no longer pre-approved")
        assert (await roster_of(ca))[b.jid]["subscription"] == "none"
    finally:
        await close_all(ca, cb)


async def test_roster_set_keeps_the_subscription_state(server):
    """RFC 6121 2.4: a roster set changes name and groups, never the subscription."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    ca2 = await online(server, a, "a2")
    cb = await online(server, b, "b")
    try:
        await subscribe(ca, cb)
        resp = await ca.roster_set(roster_item_xml(b.jid, name="Bee", groups=["Friends"]))
        assert resp.get("type") == "result", xml_str(resp)
        for c in (ca, ca2):
            await c.expect(is_roster_push(b.jid, subscription="to", ask=None, name="Bee"),
                           what=f"the push of the renamed 'to' item on {c.label}")
        assert (await roster_of(ca2))[b.jid] == {
            "name": "Bee", "subscription": "to", "ask": None, "approved": False,
            "groups": ["Friends"]}
        ca.skipped.clear()
        await cb.send("<presence><status>still subscribed</status></presence>")
        got = await ca.expect(is_presence(cb.jid), what="B's presence after the rename")
        assert got.findtext(q("status")) == "still subscribed", xml_str(got)
    finally:
        await close_all(ca, ca2, cb)


async def test_state_changes_while_the_other_party_is_offline(server):
    """An approval that arrives while the requester is offline, and an unsubscribe that
    arrives while the contact is offline, are both in the roster at the next login."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b", status="B online")
    try:
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await cb.expect(is_sub(a.jid, "subscribe"), what="the request")
        await ca.expect(is_roster_push(b.jid, ask="subscribe"), what="A: ask")
        await ca.close()
        await cb.send(f"<presence to='{a.jid}' type='subscribed'/>")
        await cb.expect(is_roster_push(a.jid, subscription="from"), what="B: from")
        ca = await login(server, a, resource="back")
        assert (await roster_of(ca))[b.jid] == {
            "name": None, "subscription": "to", "ask": None, "approved": False, "groups": []}
        await ca.send_presence()
        got = await ca.expect(is_presence(cb.jid), what="B's presence (probe at login)")
        assert got.findtext(q("status")) == "B online", xml_str(got)

        await cb.close()
        await ca.send(f"<presence to='{b.jid}' type='unsubscribe'/>")
        await ca.expect(is_roster_push(b.jid, subscription="none", ask=None), what="A: none")
        await ca.barrier()
        cb = await login(server, b, resource="b-back")
        view = (await roster_of(cb)).get(a.jid)
        assert view is not None and view["subscription"] == "none", (
            f"B's roster after A unsubscribed while B was offline: {view}"
        )
    finally:
        await close_all(ca, cb)


async def test_denied_request(server):
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await cb.expect(is_sub(a.jid, "subscribe"), what="the request")
        await ca.expect(is_roster_push(b.jid, ask="subscribe"), what="A: ask")
        await cb.send(f"<presence to='{a.jid}' type='unsubscribed'/>")
        await ca.expect(is_sub(b.jid, "unsubscribed"), what="the denial, from B's bare JID")
        await ca.expect(is_roster_push(b.jid, subscription="none", ask=None), what="A: no ask")
        assert (await roster_of(ca))[b.jid]["ask"] is None
        assert (await roster_of(cb)).get(a.jid, {}).get("subscription", "none") == "none"
        await cb.close()
        cb = await online(server, b, "b2")
        again = [e for e in await cb.drain(0.5) if is_sub(a.jid, "subscribe")(e)]
        assert not again, f"a denied request was delivered again: {xml_str(again[0])}"
        await cb.send("<presence><status>after deny</status></presence>")
        leaked = presences_from(await ca.drain(0.5), b.jid)
        assert not [p for p in leaked if p.get("type") is None], "A got B's presence after the denial"
    finally:
        await close_all(ca, cb)


async def test_cancelled_subscription_sends_unavailable_before_unsubscribed(server):
    """RFC 6121 3.2.2: "While the user is still subscribed ... (i.e., before the contact's
    server routes or delivers the presence stanza of type 'unsubscribed' to the user), the
    contact's server MUST send a presence stanza of type 'unavailable' from all of the
    contact's online resources to the user"."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    cb2 = await online(server, b, "b2")
    try:
        await subscribe(ca, cb)
        await ca.expect(is_presence(cb.jid), what="B/b's presence")
        await ca.expect(is_presence(cb2.jid), what="B/b2's presence")
        ca.skipped.clear()
        await cb.send(f"<presence to='{a.jid}' type='unsubscribed'/>")
        await ca.expect(is_sub(b.jid, "unsubscribed"), what="the cancellation")
        before = ca.skipped
        for full in (cb.jid, cb2.jid):
            assert any(is_presence(full, "unavailable")(e) for e in before), (
                f"no unavailable presence from {full} before 'unsubscribed'; before it came: "
                + ", ".join(xml_str(e) for e in before)
            )
        await ca.expect(is_roster_push(b.jid, subscription="none"), what="A: none")
        await cb.expect(is_roster_push(a.jid, subscription="none"), what="B: none")
        ca.skipped.clear()
        await cb.send("<presence><status>gone for A</status></presence>")
        await cb.expect(is_presence(cb.jid), what="B's own update")
        leaked = [e for e in presences_from(await ca.drain(0.5), b.jid) if e.get("type") is None]
        assert not leaked, f"A still gets B's presence: {xml_str(leaked[0])}"
    finally:
        await close_all(ca, cb, cb2)


async def test_unsubscribe_from_both(server):
    """RFC 6121 3.3: A unsubscribes from B (both -> from / to), and gets B's unavailable."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await subscribe(ca, cb)
        await subscribe(cb, ca)
        await ca.expect(is_presence(cb.jid), what="B's presence")
        ca.skipped.clear()
        cb.skipped.clear()
        await ca.send(f"<presence to='{b.jid}' type='unsubscribe'/>")
        await ca.expect(is_roster_push(b.jid, subscription="from", ask=None), what="A: from")
        await cb.expect(is_sub(a.jid, "unsubscribe"), what="the unsubscribe from A's bare JID")
        await cb.expect(is_roster_push(a.jid, subscription="to"), what="B: to")
        await ca.expect(is_presence(cb.jid, "unavailable"),
                        what="RFC 6121 3.3.3: unavailable presence from B's resource")
        ca.skipped.clear()
        cb.skipped.clear()
        await cb.send("<presence><status>B after</status></presence>")
        await ca.send("<presence><status>A after</status></presence>")
        got = await cb.expect(is_presence(ca.jid), what="A's presence: B is still subscribed")
        assert got.findtext(q("status")) == "A after", xml_str(got)
        leaked = [e for e in presences_from(await ca.drain(0.5), b.jid) if e.get("type") is None]
        assert not leaked, f"A unsubscribed but got: {xml_str(leaked[0])}"
    finally:
        await close_all(ca, cb)


async def test_duplicate_request_is_delivered_once(server):
    """RFC 6121 Appendix A.3.1: subscribe in state None + Pending In is not delivered."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await ca.send(f"<presence to='{b.jid}' type='subscribe' id='d1'/>")
        await cb.expect(is_sub(a.jid, "subscribe"), what="the first request")
        await ca.send(f"<presence to='{b.jid}' type='subscribe' id='d2'/>")
        await ca.barrier()
        dup = [e for e in await cb.drain(0.7) if is_sub(a.jid, "subscribe")(e)]
        assert not dup, f"the duplicate request was delivered: {xml_str(dup[0])}"
    finally:
        await close_all(ca, cb)


async def test_resubscribe_when_already_subscribed_is_not_shown_to_the_contact(server):
    """RFC 6121 3.1.3: if the user already has a subscription, the contact's server
    auto-replies 'subscribed' and does not deliver the request."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await subscribe(ca, cb)
        cb.skipped.clear()
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await ca.barrier()
        asked = [e for e in await cb.drain(0.7) if is_sub(a.jid, "subscribe")(e)]
        assert not asked, f"the request was shown again: {xml_str(asked[0])}"
        assert (await roster_of(cb))[a.jid]["subscription"] == "from"
        assert (await roster_of(ca))[b.jid]["subscription"] == "to"
    finally:
        await close_all(ca, cb)


async def test_request_to_offline_account_is_delivered_at_every_login_until_answered(server):
    """RFC 6121 3.1.3: the contact's server keeps the request and delivers it each time the
    contact becomes available, until it is answered."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = None
    try:
        await ca.send(f"<presence to='{b.jid}' type='subscribe'/>")
        await ca.expect(is_roster_push(b.jid, ask="subscribe"), what="A: ask")
        for n in range(2):
            cb = await login(server, b, resource=f"b{n}")
            await cb.roster_get()
            await cb.barrier()
            early = [e for e in cb.skipped if is_sub(a.jid, "subscribe")(e)]
            assert not early, "RFC 6121 2.2: requests go to available resources only"
            await cb.send_presence()
            await cb.expect(is_sub(a.jid, "subscribe"), what=f"the stored request, login {n + 1}")
            if n == 0:
                await cb.close()
        await cb.send(f"<presence to='{a.jid}' type='subscribed'/>")
        await ca.expect(is_roster_push(b.jid, subscription="to", ask=None), what="A: to")
        await cb.close()
        cb = await online(server, b, "b-after")
        again = [e for e in await cb.drain(0.5) if is_sub(a.jid, "subscribe")(e)]
        assert not again, f"an answered request came again: {xml_str(again[0])}"
        assert (await roster_of(cb))[a.jid]["subscription"] == "from"
    finally:
        await close_all(ca, cb)


async def test_subscribe_to_oneself_is_refused(server):
    """RFC 6121 does not define self-subscription; this server refuses it with
    <bad-request/> (an account always gets its own presence, RFC 6121 4.2.2) and must not
    leave a roster item behind."""
    a = server.account()
    ca = await online(server, a, "self")
    try:
        await ca.send(f"<presence to='{a.jid}' type='subscribe' id='self1'/>")
        err = await ca.expect(lambda e: e.get("id") == "self1", what="the answer to self-subscribe")
        assert err.tag == q("presence") and err.get("type") == "error", xml_str(err)
        etype, cond = stanza_error(err)
        assert cond == "bad-request", xml_str(err)
        assert etype in ERROR_TYPES, xml_str(err)
        assert a.jid not in await roster_of(ca), "self-subscription left a roster item"
    finally:
        await close_all(ca)


async def test_roster_remove_cancels_subscriptions_both_ways(server):
    """RFC 6121 2.5.2: removing a 'both' contact sends it 'unsubscribe' and 'unsubscribed'
    (with A's unavailable presence, 3.2.2); both lose the subscription."""
    a, b = server.account(), server.account()
    ca = await online(server, a, "a")
    cb = await online(server, b, "b")
    try:
        await subscribe(ca, cb)
        await subscribe(cb, ca)
        await cb.expect(is_presence(ca.jid), what="A's presence at B")
        await ca.expect(is_presence(cb.jid), what="B's presence at A")
        ca.skipped.clear()
        cb.skipped.clear()
        resp = await ca.roster_set(roster_item_xml(b.jid, subscription="remove"))
        assert resp.get("type") == "result", xml_str(resp)
        await ca.expect(is_roster_push(b.jid, subscription="remove"), what="A: remove push")
        await cb.expect(is_sub(a.jid, "unsubscribe"), what="'unsubscribe' from A")
        await cb.expect(is_sub(a.jid, "unsubscribed"), what="'unsubscribed' from A")
        await cb.expect(is_presence(ca.jid, "unavailable"), what="A's unavailable presence at B")
        await cb.expect(is_roster_push(a.jid, subscription="none"), what="B: none")
        await ca.expect(is_presence(cb.jid, "unavailable"), what="B's unavailable presence at A")
        assert b.jid not in await roster_of(ca)
        assert (await roster_of(cb))[a.jid]["subscription"] == "none"
        ca.skipped.clear()
        cb.skipped.clear()
        await ca.send("<presence><status>A alone</status></presence>")
        await cb.send("<presence><status>B alone</status></presence>")
        await ca.expect(is_presence(ca.jid), what="A's own update")
        await cb.expect(is_presence(cb.jid), what="B's own update")
        for c, other in ((ca, b.jid), (cb, a.jid)):
            leaked = [e for e in presences_from(await c.drain(0.4), other) if e.get("type") is None]
            assert not leaked, f"{c.label} still gets presence: {xml_str(leaked[0])}"
    finally:
        await close_all(ca, cb)


# -- presence (RFC 6121 4) -------------------------------------------------------------------


async def test_initial_presence_goes_to_subscribers_and_probes_subscriptions(server):
    """A has: F (subscription from), T (to), N (none, just a roster item), P (pending
    request to A). A new resource of A: its presence reaches F only; it gets T's presence
    (4.2.2 probe) and P's pending request, nothing from F, N or P."""
    a = server.account()
    f, t, n, p = (server.account() for _ in range(4))
    ca = await online(server, a, "setup")
    cf = await online(server, f, "f")
    ct = await online(server, t, "t", status="T is here")
    cn = await online(server, n, "n")
    cp = await online(server, p, "p")
    ca2 = None
    try:
        await subscribe(cf, ca)  # F subscribed to A
        await subscribe(ca, ct)  # A subscribed to T
        assert (await ca.roster_set(roster_item_xml(n.jid, name="N"))).get("type") == "result"
        await cp.send(f"<presence to='{a.jid}' type='subscribe'/>")
        await ca.expect(is_sub(p.jid, "subscribe"), what="P's request")
        for c in (cf, ct, cn, cp):
            c.skipped.clear()
            await c.drain(0.1)

        ca2 = await login(server, a, resource="second", label="A/second")
        await ca2.roster_get()
        await ca2.send("<presence><status>second</status></presence>")
        got = await cf.expect(is_presence(ca2.jid), what="A/second's presence at F")
        assert got.findtext(q("status")) == "second", xml_str(got)
        tp = await ca2.expect(is_presence(ct.jid), what="T's presence (probe answered)")
        assert tp.findtext(q("status")) == "T is here", xml_str(tp)
        await ca2.expect(is_sub(p.jid, "subscribe"), what="P's pending request at the new resource")
        for c in (ct, cn, cp):
            leaked = presences_from(await c.drain(0.4), a.jid)
            assert not leaked, f"{c.label} is not subscribed to A, got {xml_str(leaked[0])}"
        got = await ca2.drain(0.2)
        for who in (f.jid, n.jid):
            leaked = [e for e in presences_from(got, who) if e.get("type") is None]
            assert not leaked, f"A is not subscribed to {who}, got {xml_str(leaked[0])}"
        leaked = [e for e in presences_from(got, p.jid) if e.get("type") is None]
        assert not leaked, f"A is not subscribed to {p.jid}, got {xml_str(leaked[0])}"
    finally:
        await close_all(ca, ca2, cf, ct, cn, cp)


@pytest.mark.parametrize("how", ["unavailable", "close-stream", "tcp-drop"])
async def test_subscribers_get_unavailable_when_a_resource_leaves(server, how):
    """RFC 6121 4.5: explicit unavailable, a closed stream, or a lost connection -- the
    subscribers get unavailable presence from that full JID."""
    a, f = server.account(), server.account()
    ca = await online(server, a, "leaver")
    cf = await online(server, f, "f")
    try:
        await subscribe(cf, ca)
        await cf.expect(is_presence(ca.jid), what="A's presence after the approval")
        cf.skipped.clear()
        if how == "unavailable":
            await ca.send("<presence type='unavailable'><status>bye</status></presence>")
        elif how == "close-stream":
            await ca.close()
        else:
            ca.abort()
        got = await cf.expect(is_presence(ca.jid, "unavailable"), timeout=10,
                              what=f"A's unavailable presence ({how})")
        if how == "unavailable":
            assert got.findtext(q("status")) == "bye", f"RFC 6121 4.5.2: the full stanza: {xml_str(got)}"
    finally:
        await close_all(ca, cf)


async def test_presence_to_non_subscribers_is_not_broadcast(server):
    """Contacts in state None, pending-in or To do not get A's broadcasts (RFC 6121 4.2.2)."""
    a, t, n = server.account(), server.account(), server.account()
    ca = await online(server, a, "a")
    ct = await online(server, t, "t")
    cn = await online(server, n, "n")
    try:
        await subscribe(ca, ct)  # A: to T (T does not see A)
        await ca.send(f"<presence to='{n.jid}' type='subscribe'/>")  # N: pending in
        await cn.expect(is_sub(a.jid, "subscribe"), what="A's request at N")
        ct.skipped.clear()
        cn.skipped.clear()
        await ca.send("<presence><show>dnd</show></presence>")
        await ca.expect(lambda e: is_presence(ca.jid)(e) and e.findtext(q("show")) == "dnd",
                        what="A's own update")
        for c in (ct, cn):
            leaked = presences_from(await c.drain(0.5), a.jid)
            assert not leaked, f"{c.label} got {xml_str(leaked[0])}"
    finally:
        await close_all(ca, ct, cn)


async def test_negative_priority_resource_gets_presence_but_not_bare_jid_messages(server):
    """RFC 6121 4.7.2.3 / 8.5.2.1.1: priority < 0 -- presence yes, bare-JID messages no."""
    a, t = server.account(), server.account()
    ca = await online(server, a, "setup")
    ct = await online(server, t, "t", status="T1")
    neg = None
    try:
        await subscribe(ca, ct)
        await ca.close()
        ca = None
        neg = await online(server, a, "neg", priority=-1)
        got = await neg.expect(is_presence(ct.jid), what="T's presence at the -1 resource")
        assert got.findtext(q("status")) == "T1", xml_str(got)
        await ct.send(f"<message to='{a.jid}' type='chat' id='neg-chat'><body>x</body></message>")
        await ct.send("<presence><status>T2</status></presence>")
        got = await neg.expect(lambda e: is_presence(ct.jid)(e) and e.findtext(q("status")) == "T2",
                               what="T's presence update at the -1 resource")
        msgs = [e for e in await neg.drain(0.5) if is_message("neg-chat")(e)]
        assert not msgs, f"a negative-priority resource got a bare-JID message: {xml_str(msgs[0])}"
        errors = [e for e in await ct.drain(0.1) if e.get("id") == "neg-chat"]
        assert not errors or stanza_error(errors[0])[1] == "service-unavailable", xml_str(errors[0])
    finally:
        await close_all(ca, ct, neg)
