"""Roster management (RFC 6121 2): get, set, update, remove, pushes to every interested
resource, error cases, the roster size limit and roster versioning (2.6), over raw sockets.

A resource becomes "interested" (and so gets pushes) by requesting the roster (2.2); every
client here does that before it expects a push.
"""

import asyncio

import pytest

from rawxmpp import (
    NS_PREAPPROVAL,
    NS_ROSTERVER,
    ROSTER_QUERY,
    bare,
    is_roster_push,
    item_summary,
    login,
    q,
    roster_item_xml,
    roster_items,
    stanza_error,
    xml_str,
)

ACCOUNT_POOL = 40

ERROR_TYPES = {"auth", "cancel", "continue", "modify", "wait"}


def contact(n: str) -> str:
    """A contact JID for roster items (roster items need no account behind them)."""
    return f"contact-{n}@localhost"


async def interested(server, acct, resource):
    c = await login(server, acct, resource=resource, label=f"{acct.local}/{resource}")
    resp = await c.roster_get()
    assert resp.get("type") == "result", xml_str(resp)
    return c


def assert_push_addressing(push, c):
    """RFC 6121 2.1.6: a push has no 'from' or the account's bare JID (a client MUST ignore
    any other), and is addressed to the resource."""
    assert push.get("from") in (None, bare(c.jid)), f"roster push from {push.get('from')!r}: {xml_str(push)}"
    assert push.get("to") in (None, c.jid), xml_str(push)
    assert push.get("id"), f"a roster push is an IQ set and needs an id: {xml_str(push)}"


def assert_error(resp, condition):
    assert resp.get("type") == "error", f"expected an error <{condition}/>, got {xml_str(resp)}"
    etype, cond = stanza_error(resp)
    assert cond == condition, f"expected <{condition}/>, got <{cond}/>: {xml_str(resp)}"
    assert etype in ERROR_TYPES, xml_str(resp)


def pushes_for(elements, jid):
    return [e for e in elements if e.tag == q("iq") and e.get("type") == "set" and jid in roster_items(e)]


# -- stream features and get ----------------------------------------------------------


async def test_features_advertise_roster_versioning_and_preapproval(server):
    c = await login(server, server.account(), resource="feat")
    try:
        feats = c.post_auth_features
        assert feats.find(f"{{{NS_ROSTERVER}}}ver") is not None, (
            f"RFC 6121 2.6.1: <ver xmlns='{NS_ROSTERVER}'/> missing from {xml_str(feats)}"
        )
        assert feats.find(f"{{{NS_PREAPPROVAL}}}sub") is not None, (
            f"RFC 6121 3.4: <sub xmlns='{NS_PREAPPROVAL}'/> missing from {xml_str(feats)}"
        )
    finally:
        await c.close()


async def test_roster_get_of_new_account_is_empty(server):
    acct = server.account()
    c = await login(server, acct, resource="get")
    try:
        resp = await c.roster_get()
        assert resp.get("type") == "result", xml_str(resp)
        assert resp.get("from") in (None, acct.jid), xml_str(resp)
        query = resp.find(ROSTER_QUERY)
        assert query is not None, f"RFC 6121 2.1.3: the result carries the <query/>: {xml_str(resp)}"
        assert list(query) == [], f"a new account has no roster items: {xml_str(resp)}"
        resp = await c.roster_get("")
        query = resp.find(ROSTER_QUERY)
        assert query is not None and query.get("ver"), (
            f"RFC 6121 2.6.3: a get with ver='' returns the roster with its version: {xml_str(resp)}"
        )
    finally:
        await c.close()


async def test_roster_get_to_own_bare_jid(server):
    acct = server.account()
    c = await login(server, acct, resource="own")
    try:
        assert (await c.roster_set(roster_item_xml(contact("own1"), name="One")))\
            .get("type") == "result"
        resp = await c.roster_get(to=acct.jid)
        assert resp.get("type") == "result", xml_str(resp)
        assert contact("own1") in roster_items(resp), xml_str(resp)
    finally:
        await c.close()


# -- set, update, remove ------------------------------------------------------------------


async def test_roster_set_adds_item_and_pushes_to_every_interested_resource(server):
    acct = server.account()
    c1 = await interested(server, acct, "one")
    c2 = await interested(server, acct, "two")
    jid = contact("nurse")
    try:
        resp = await c1.roster_set(roster_item_xml(jid, name="Nurse", groups=["Servants", "Friends"]))
        assert resp.get("type") == "result", xml_str(resp)
        assert resp.find(ROSTER_QUERY) is None, f"RFC 6121 2.3.2: an empty result: {xml_str(resp)}"
        for c in (c1, c2):
            push = await c.expect(is_roster_push(jid), what=f"the roster push on {c.label}")
            assert_push_addressing(push, c)
            s = item_summary(roster_items(push)[jid])
            assert s == {
                "name": "Nurse", "subscription": "none", "ask": None, "approved": False,
                "groups": ["Friends", "Servants"],
            }, f"pushed item {s}: {xml_str(push)}"
        _, items = await c2.roster()
        assert items == {jid: {"name": "Nurse", "subscription": "none", "ask": None,
                               "approved": False, "groups": ["Friends", "Servants"]}}, items
    finally:
        await c1.close()
        await c2.close()


async def test_roster_update_replaces_name_and_groups(server):
    """RFC 6121 2.4: an update carries the whole item; what it leaves out is gone."""
    acct = server.account()
    c = await interested(server, acct, "upd")
    jid = contact("upd")
    try:
        assert (await c.roster_set(roster_item_xml(jid, name="Old", groups=["G1"]))).get("type") == "result"
        resp = await c.roster_set(roster_item_xml(jid, name="New", groups=["G2", "G3"]))
        assert resp.get("type") == "result", xml_str(resp)
        await c.expect(is_roster_push(jid, name="New"), what="the push of the update")
        _, items = await c.roster()
        assert items[jid]["name"] == "New" and items[jid]["groups"] == ["G2", "G3"], items
        resp = await c.roster_set(roster_item_xml(jid))
        assert resp.get("type") == "result", xml_str(resp)
        _, items = await c.roster()
        assert items[jid]["name"] is None and items[jid]["groups"] == [], (
            f"an update without name and groups must clear them: {items[jid]}"
        )
        assert len(items) == 1, items
    finally:
        await c.close()


async def test_roster_remove_pushes_remove_to_every_interested_resource(server):
    acct = server.account()
    c1 = await interested(server, acct, "r1")
    c2 = await interested(server, acct, "r2")
    keep, gone = contact("keep"), contact("gone")
    try:
        for jid in (keep, gone):
            assert (await c1.roster_set(roster_item_xml(jid))).get("type") == "result"
        resp = await c1.roster_set(roster_item_xml(gone, subscription="remove"))
        assert resp.get("type") == "result", xml_str(resp)
        for c in (c1, c2):
            push = await c.expect(is_roster_push(gone, subscription="remove"), what="the remove push")
            assert_push_addressing(push, c)
        _, items = await c2.roster()
        assert set(items) == {keep}, f"after removing {gone}: {items}"
    finally:
        await c1.close()
        await c2.close()


async def test_remove_of_unknown_item_is_item_not_found(server):
    """RFC 6121 2.5.3."""
    c = await interested(server, server.account(), "rnf")
    try:
        assert (await c.roster_set(roster_item_xml(contact("there")))).get("type") == "result"
        ver, before = await c.roster()
        resp = await c.roster_set(roster_item_xml(contact("never-added"), subscription="remove"))
        assert_error(resp, "item-not-found")
        assert await c.roster() == (ver, before)
    finally:
        await c.close()


# -- bad roster sets change nothing ----------------------------------------------------------

BAD_SETS = {
    # RFC 6121 2.3.3: more than one <item/> -> bad-request
    "two-items": (
        roster_item_xml(contact("two-a")) + roster_item_xml(contact("two-b")),
        "bad-request",
    ),
    # RFC 6121 2.3.3: duplicate <group/> -> bad-request
    "duplicate-group": (roster_item_xml(contact("dup"), groups=["Same", "Same"]), "bad-request"),
    # RFC 6121 2.3.3: a <group/> of zero length -> not-acceptable
    "empty-group": (roster_item_xml(contact("emptyg"), groups=["Ok", ""]), "not-acceptable"),
    # RFC 6120 8.3.3.8 / RFC 7622: not a JID
    "jid-empty-localpart": (roster_item_xml("@localhost"), "jid-malformed"),
    "jid-empty-domain": (roster_item_xml("user@"), "jid-malformed"),
    "jid-empty-resource": (roster_item_xml("user@localhost/"), "jid-malformed"),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
async def test_bad_roster_set_is_refused_and_changes_nothing(server, case):
    items_xml, condition = BAD_SETS[case]
    acct = server.account()
    c = await interested(server, acct, "bad")
    other = await interested(server, acct, "watch")
    try:
        assert (await c.roster_set(roster_item_xml(contact("pre"), name="Pre"))).get("type") == "result"
        await other.expect(is_roster_push(contact("pre")), what="the push of the good set")
        ver, before = await c.roster()
        resp = await c.roster_set(items_xml)
        assert_error(resp, condition)
        assert await c.roster() == (ver, before), "a refused roster set changed the roster"
        await other.barrier()
        leaked = [e for e in await other.drain(0.3) if e.tag == q("iq") and e.get("type") == "set"]
        assert not leaked, f"a refused roster set was pushed: {xml_str(leaked[0])}"
    finally:
        await c.close()
        await other.close()


@pytest.mark.parametrize("value", ["both", "from", "to"])
async def test_roster_set_cannot_grant_a_subscription(server, value):
    """A client cannot create subscription state with a roster set, whatever the server
    answers (RFC 6121 2.1.2.5: only presence stanzas change subscriptions)."""
    c = await interested(server, server.account(), "sub")
    jid = contact(f"forged-{value}")
    try:
        await c.roster_set(roster_item_xml(jid, subscription=value))
        await c.roster_set(roster_item_xml(
            contact("forged-ask"), extra_attrs=" ask='subscribe' approved='true'"))
        _, items = await c.roster()
        for j in (jid, contact("forged-ask")):
            if j in items:
                assert items[j]["subscription"] == "none", f"{j}: {items[j]}"
                assert items[j]["ask"] is None and not items[j]["approved"], f"{j}: {items[j]}"
    finally:
        await c.close()


async def test_roster_set_ignores_subscription_values_other_than_remove(server):
    """RFC 6121 2.1.2.5: "in a roster set the server MUST ignore all values of the
    'subscription' attribute other than 'remove'" -- the set is processed as if it were
    absent (result, item with subscription 'none')."""
    c = await interested(server, server.account(), "ign")
    jid = contact("ignored-sub")
    try:
        resp = await c.roster_set(roster_item_xml(jid, name="Ign", subscription="both"))
        assert resp.get("type") == "result", (
            f"RFC 6121 2.1.2.5: subscription='both' in a roster set must be ignored, "
            f"not refused: {xml_str(resp)}"
        )
        _, items = await c.roster()
        assert items.get(jid, {}).get("subscription") == "none", items
        assert items[jid]["name"] == "Ign", items
    finally:
        await c.close()


async def test_roster_iq_to_another_account_is_forbidden(server):
    """RFC 6121 2.3.3 (and 2.1.5): only the account itself may see or change its roster."""
    a, b = server.account(), server.account()
    ca = await interested(server, a, "a")
    cb = await interested(server, b, "b")
    try:
        assert (await cb.roster_set(roster_item_xml(contact("bs-own"), name="B's"))).get("type") == "result"
        await cb.expect(is_roster_push(contact("bs-own")), what="B's own push")
        ver, before = await cb.roster()
        resp = await ca.roster_get(to=b.jid)
        assert_error(resp, "forbidden")
        assert roster_items(resp) == {}, f"B's roster leaked to A: {xml_str(resp)}"
        resp = await ca.roster_set(roster_item_xml(contact("planted"), name="x"), to=b.jid)
        assert_error(resp, "forbidden")
        resp = await ca.roster_set(roster_item_xml(contact("bs-own"), subscription="remove"), to=b.jid)
        assert_error(resp, "forbidden")
        assert await cb.roster() == (ver, before), "A changed B's roster"
        leaked = pushes_for(await cb.drain(0.3), contact("planted"))
        assert not leaked, xml_str(leaked[0])
        _, own = await ca.roster()
        assert own == {}, f"a refused IQ for B's roster changed A's: {own}"
    finally:
        await ca.close()
        await cb.close()


async def test_roster_size_limit(make_server):
    """[im] max_roster_items = 3: a fourth item is refused with <not-allowed/>; updates and
    removals still work at the limit."""
    srv = make_server({"im": {"max_roster_items": 3}}, accounts=1)
    c = await interested(srv, srv.account(), "lim")
    try:
        for n in range(3):
            resp = await c.roster_set(roster_item_xml(contact(f"lim{n}")))
            assert resp.get("type") == "result", xml_str(resp)
        ver, before = await c.roster()
        resp = await c.roster_set(roster_item_xml(contact("lim3")))
        assert_error(resp, "not-allowed")
        assert await c.roster() == (ver, before)
        resp = await c.roster_set(roster_item_xml(contact("lim0"), name="renamed"))
        assert resp.get("type") == "result", f"updating an item at the limit: {xml_str(resp)}"
        resp = await c.roster_set(roster_item_xml(contact("lim1"), subscription="remove"))
        assert resp.get("type") == "result", xml_str(resp)
        resp = await c.roster_set(roster_item_xml(contact("lim3")))
        assert resp.get("type") == "result", f"adding after a removal: {xml_str(resp)}"
        _, items = await c.roster()
        assert set(items) == {contact("lim0"), contact("lim2"), contact("lim3")}, items
        assert items[contact("lim0")]["name"] == "renamed"
    finally:
        await c.close()


# -- versioning (RFC 6121 2.6) ------------------------------------------------------------------


async def test_roster_get_with_current_version_is_empty_result(server):
    acct = server.account()
    c = await interested(server, acct, "cur")
    try:
        assert (await c.roster_set(roster_item_xml(contact("v1")))).get("type") == "result"
        await c.expect(is_roster_push(contact("v1")), what="the push")
        ver, _ = await c.roster()
        resp = await c.roster_get(ver)
        assert resp.get("type") == "result", xml_str(resp)
        assert list(resp) == [], (
            f"RFC 6121 2.6.3: with the current version the result is empty: {xml_str(resp)}"
        )
        pushed = [e for e in await c.drain(0.3) if e.tag == q("iq") and e.get("type") == "set"]
        assert not pushed, f"nothing changed, yet a push came: {xml_str(pushed[0])}"
    finally:
        await c.close()


async def test_roster_pushes_carry_the_new_version(server):
    acct = server.account()
    c = await interested(server, acct, "pv")
    try:
        ver0, _ = await c.roster()
        assert (await c.roster_set(roster_item_xml(contact("pv")))).get("type") == "result"
        push = await c.expect(is_roster_push(contact("pv")), what="the push")
        ver1 = push.find(ROSTER_QUERY).get("ver")
        assert ver1 and ver1 != ver0, f"RFC 6121 2.6: the push carries the new version: {xml_str(push)}"
        assert (await c.roster())[0] == ver1, "the version of the last push is the roster's version"
        resp = await c.roster_get(ver1)
        assert list(resp) == [], f"the pushed version is current: {xml_str(resp)}"
    finally:
        await c.close()


async def _stale_get(server):
    """An account whose roster changed (add, update, remove) after version `old_ver`; a new
    resource asks for the roster with `old_ver`. Returns what the tests below need."""
    acct = server.account()
    c1 = await interested(server, acct, "writer")
    keep, gone, changed, added = contact("keep"), contact("gone"), contact("chg"), contact("add")
    for jid in (keep, gone, changed):
        assert (await c1.roster_set(roster_item_xml(jid, name=jid[:6]))).get("type") == "result"
    old_ver, cache = await c1.roster()
    assert set(cache) == {keep, gone, changed}
    assert (await c1.roster_set(roster_item_xml(added, name="Added"))).get("type") == "result"
    assert (await c1.roster_set(roster_item_xml(changed, name="Changed", groups=["G"])))\
        .get("type") == "result"
    assert (await c1.roster_set(roster_item_xml(gone, subscription="remove"))).get("type") == "result"
    cur_ver, current = await c1.roster()
    assert cur_ver != old_ver
    await c1.close()
    c2 = await login(server, acct, resource="stale", label="stale")
    resp = await c2.roster_get(old_ver)
    return c2, resp, old_ver, cache, cur_ver, current, gone


def _is_any_push(e):
    return e.tag == q("iq") and e.get("type") == "set" and e.find(ROSTER_QUERY) is not None


async def test_roster_get_with_stale_version_brings_the_cache_up_to_date(server):
    """RFC 6121 2.6.3: with an older version the server returns either the whole roster or
    an empty result followed by one push per item modified since (removals included);
    either way the client's cache ends up equal to the roster, at the current version."""
    c2, resp, old_ver, cache, cur_ver, current, gone = await _stale_get(server)
    try:
        assert resp.get("type") == "result", xml_str(resp)
        query = resp.find(ROSTER_QUERY)
        if query is not None:
            assert query.get("ver") == cur_ver, xml_str(resp)
            got = {j: item_summary(i) for j, i in roster_items(query).items()}
            assert got == current, f"full roster {got} != current {current}"
            return
        assert list(resp) == [], xml_str(resp)
        applied, last_ver = [], None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not (cache == current and last_ver == cur_ver):
            push = await c2.recv_match(
                _is_any_push, timeout=max(0.1, deadline - loop.time()),
                what=f"pushes that bring the cache from {old_ver!r} to {cur_ver!r} "
                     f"(so far {applied}: cache {cache}, roster {current})",
            )
            assert_push_addressing(push, c2)
            pq = push.find(ROSTER_QUERY)
            last_ver = pq.get("ver")
            for jid, item in roster_items(pq).items():
                applied.append((jid, item.get("subscription"), last_ver))
                if item.get("subscription") == "remove":
                    cache.pop(jid, None)
                else:
                    cache[jid] = item_summary(item)
        assert any(j == gone and s == "remove" for j, s, _ in applied), applied
        resp = await c2.roster_get(cur_ver)
        assert list(resp) == [], f"now current: {xml_str(resp)}"
    finally:
        await c2.close()


async def test_interim_roster_pushes_carry_their_own_versions(server):
    """RFC 6121 2.6.3: interim pushes replay the modifications as if the client had been
    online (the RFC's example: ver34, ver42, ver72, ver96), and a client caches the version
    of each push it applies. So only the last one may carry the current version: a client
    cut off after the first push would otherwise believe its cache current while missing
    the other changes (and the next get with that version returns nothing)."""
    c2, resp, old_ver, _, cur_ver, _, _ = await _stale_get(server)
    try:
        if resp.find(ROSTER_QUERY) is not None:
            return  # the server chose to send the whole roster: nothing to check here
        pushes = [e for e in await c2.drain(1.5) if _is_any_push(e)]
        vers = [p.find(ROSTER_QUERY).get("ver") for p in pushes]
        assert len(pushes) >= 3, f"three items changed since {old_ver!r}; pushes: {vers}"
        assert vers[-1] == cur_ver, vers
        early = [(i, v) for i, v in enumerate(vers[:-1]) if v == cur_ver]
        assert not early, (
            f"interim pushes {vers}: push(es) {early} already claim the current version "
            f"{cur_ver!r} before the later changes were sent:\n"
            + "\n".join(xml_str(p) for p in pushes)
        )
    finally:
        await c2.close()


@pytest.mark.parametrize("ver", ["garbage", "999999999", "-1", "1.5"])
async def test_roster_get_with_unknown_version_returns_the_whole_roster(server, ver):
    acct = server.account()
    c = await interested(server, acct, "unk")
    try:
        for n in range(2):
            assert (await c.roster_set(roster_item_xml(contact(f"u{n}")))).get("type") == "result"
        cur_ver, current = await c.roster()
        resp = await c.roster_get(ver)
        assert resp.get("type") == "result", xml_str(resp)
        query = resp.find(ROSTER_QUERY)
        assert query is not None, (
            f"a version the server never issued ({ver!r}) must get the whole roster: {xml_str(resp)}"
        )
        assert query.get("ver") == cur_ver, xml_str(resp)
        got = {j: item_summary(i) for j, i in roster_items(query).items()}
        assert got == current, got
    finally:
        await c.close()

