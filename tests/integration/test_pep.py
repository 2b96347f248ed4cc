"""Personal eventing (XEP-0163) on the publish-subscribe core (XEP-0060): publish, retrieve,
retract, delete for each access model (a stranger or contact refused where the model says
so, with XEP-0060's error conditions), publish-options preconditions, notifications only to
the account's contacts with a presence subscription whose entity capabilities (XEP-0115)
list `<node>+notify` (the server asks the client for the caps' disco#info), the last item at
login, and a node that survives a restart. Raw clients, so the exact stanzas are checked;
and XEP-0084 avatars with slixmpp's own plugins."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import slixmpp

from rawxmpp import bare, login, make_ssl_context, new_id, q, stanza_error, xml_str

ACCOUNT_POOL = 24

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = "http://jabber.org/protocol/pubsub#owner"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_DISCO = "http://jabber.org/protocol/disco#info"
NS_CAPS = "http://jabber.org/protocol/caps"
NODE = "urn:example:tune"


def caps_ver(features: list[str]) -> str:
    """XEP-0115 §5.1 for one identity client/pc and `features`."""
    s = "client/pc//pep-test<" + "".join(f + "<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


async def announce_caps(c, notify: list[str]) -> None:
    """Send initial presence with caps whose features are disco#info and `node+notify` for
    each node, and answer the server's disco#info query for them (XEP-0115 §6.2)."""
    features = [NS_DISCO, NS_CAPS] + [n + "+notify" for n in notify]
    ver = caps_ver(features)
    await c.send(
        f"<presence><c xmlns='{NS_CAPS}' hash='sha-1' node='urn:pep-test' ver='{ver}'/></presence>"
    )
    # The server asks unless an earlier client with the same caps answered already.
    seen = c.skipped + await c.expect_silence(0.5)
    c.skipped = []
    for el in seen:
        query = el.find(f"{{{NS_DISCO}}}query")
        if not (el.tag == q("iq") and el.get("type") == "get" and query is not None):
            c.skipped.append(el)  # kept for later expect()s
        else:
            assert query.get("node") == f"urn:pep-test#{ver}", xml_str(el)
            feats = "".join(f"<feature var='{f}'/>" for f in features)
            await c.send(
                f"<iq type='result' id='{el.get('id')}' to='{el.get('from')}'>"
                f"<query xmlns='{NS_DISCO}' node='urn:pep-test#{ver}'>"
                f"<identity category='client' type='pc' name='pep-test'/>{feats}</query></iq>"
            )


async def subscribe_both(ca, cb):
    for x, y in ((ca, cb), (cb, ca)):
        await x.send(f"<presence to='{bare(y.jid)}' type='subscribe'/>")
        await y.expect(lambda e: e.tag == q("presence") and e.get("type") == "subscribe", what="subscribe")
        await y.send(f"<presence to='{bare(x.jid)}' type='subscribed'/>")
        await x.expect(lambda e: e.tag == q("presence") and e.get("type") == "subscribed", what="subscribed")


async def mutual_contacts(server):
    """Two new accounts subscribed to each other's presence (PEP's `presence` access and
    notifications), set up from short-lived raw sessions."""
    alice, bob = server.account(), server.account()
    ra = await login(server, alice, resource="setup", presence=True)
    rb = await login(server, bob, resource="setup", presence=True)
    await subscribe_both(ra, rb)
    await ra.close()
    await rb.close()
    return alice, bob


def options(**fields) -> str:
    fs = "".join(
        f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items()
    )
    return (
        "<publish-options><x xmlns='jabber:x:data' type='submit'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#publish-options</value></field>"
        f"{fs}</x></publish-options>"
    )


async def publish(c, node: str, payload: str, item_id: str | None = None, opts: str = ""):
    id_attr = f" id='{item_id}'" if item_id else ""
    return await c.iq(
        f"<pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'><item{id_attr}>{payload}</item>"
        f"</publish>{opts}</pubsub>",
        type_="set",
    )


async def items(c, owner: str | None, node: str, extra: str = "", attrs: str = ""):
    return await c.iq(f"<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'{attrs}>{extra}</items></pubsub>", to=owner)


def item_ids(resp) -> list[str]:
    its = resp.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items")
    assert its is not None, xml_str(resp)
    return [i.get("id") for i in its.findall(f"{{{NS_PUBSUB}}}item")]


def pubsub_error(resp) -> tuple[str | None, str | None]:
    """(stanza condition, pubsub#errors condition)."""
    assert resp.get("type") == "error", xml_str(resp)
    _, cond = stanza_error(resp)
    err = resp.find(q("error"))
    app = next((c.tag.split("}")[1] for c in err if c.tag.startswith(f"{{{NS_ERRORS}}}")), None)
    return cond, app


def is_event(node: str, item_id: str | None = None):
    def pred(e):
        if e.tag != q("message"):
            return False
        its = e.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        if its is None or its.get("node") != node:
            return False
        return item_id is None or any(i.get("id") == item_id for i in its.findall(f"{{{NS_EVENT}}}item"))

    return pred


def tune(title: str) -> str:
    return f"<tune xmlns='http://jabber.org/protocol/tune'><title>{title}</title></tune>"


async def owner_contact_stranger(server):
    """Three online sessions: a publisher, a contact subscribed both ways, a stranger."""
    a = await login(server, server.account(), resource="pub", presence=True)
    b = await login(server, server.account(), resource="contact", presence=True)
    c = await login(server, server.account(), resource="stranger", presence=True)
    await subscribe_both(a, b)
    return a, b, c


async def test_publish_retrieve_retract_delete_per_access_model(server):
    a, b, c = await owner_contact_stranger(server)
    try:
        r = await a.roster_set(f"<item jid='{bare(b.jid)}'><group>Friends</group></item>")
        assert r.get("type") == "result", xml_str(r)
        owner = bare(a.jid)
        # model → (bob's outcome, carol's outcome): None is allowed.
        cases = {
            "open": (None, None),
            "presence": (None, ("not-authorized", "presence-subscription-required")),
            "roster": (None, ("not-authorized", "not-in-roster-group")),
            "whitelist": (("not-allowed", "closed-node"), ("not-allowed", "closed-node")),
        }
        for model, (bob_gets, carol_gets) in cases.items():
            node = f"urn:example:{model}"
            extra = {"roster_groups_allowed": "Friends"} if model == "roster" else {}
            resp = await publish(a, node, tune(model), "one", options(access_model=model, **extra))
            assert resp.get("type") == "result", xml_str(resp)
            resp = await publish(a, node, tune(model + "2"), None)
            assert resp.get("type") == "result", xml_str(resp)
            gen = resp.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish/{{{NS_PUBSUB}}}item")
            assert gen is not None and gen.get("id"), xml_str(resp)
            # The default max_items is 1: the second publish replaced the first.
            assert item_ids(await items(a, None, node)) == [gen.get("id")]
            for who, expected in ((b, bob_gets), (c, carol_gets)):
                resp = await items(who, owner, node)
                if expected is None:
                    assert item_ids(resp) == [gen.get("id")], (model, xml_str(resp))
                    assert resp.get("from") == owner, xml_str(resp)
                else:
                    assert pubsub_error(resp) == expected, (model, who.jid, xml_str(resp))
            # Only the owner publishes, retracts, deletes.
            resp = await c.iq(
                f"<pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub>", type_="set", to=owner
            )
            assert pubsub_error(resp)[0] == "forbidden", xml_str(resp)
            resp = await a.iq(
                f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{node}'><item id='{gen.get('id')}'/></retract></pubsub>",
                type_="set",
            )
            assert resp.get("type") == "result", xml_str(resp)
            assert item_ids(await items(a, None, node)) == []
            resp = await a.iq(f"<pubsub xmlns='{NS_OWNER}'><delete node='{node}'/></pubsub>", type_="set")
            assert resp.get("type") == "result", xml_str(resp)
            assert pubsub_error(await items(a, None, node)) == ("item-not-found", None)
    finally:
        for x in (a, b, c):
            await x.close()


async def test_disco_items_lists_the_nodes_the_requester_may_access(server):
    """XEP-0163 §9 / XEP-0060 §5.2 and §5.5: disco#items on the account's bare JID lists its
    nodes, each only to those its access model admits; with a node, its item ids."""
    a, b, c = await owner_contact_stranger(server)
    try:
        for model in ("open", "presence", "whitelist"):
            resp = await publish(a, f"urn:example:d-{model}", tune(model), f"i-{model}", options(access_model=model))
            assert resp.get("type") == "result", xml_str(resp)
        owner = bare(a.jid)
        NS_ITEMS = "http://jabber.org/protocol/disco#items"

        async def nodes(who):
            resp = await who.iq(f"<query xmlns='{NS_ITEMS}'/>", to=owner)
            assert resp.get("type") == "result", xml_str(resp)
            assert all(i.get("jid") == owner for i in resp.iter(f"{{{NS_ITEMS}}}item")), xml_str(resp)
            return {i.get("node") for i in resp.iter(f"{{{NS_ITEMS}}}item")}

        everything = {f"urn:example:d-{m}" for m in ("open", "presence", "whitelist")}
        assert await nodes(a) == everything
        assert await nodes(b) == everything - {"urn:example:d-whitelist"}
        assert await nodes(c) == {"urn:example:d-open"}
        resp = await c.iq(f"<query xmlns='{NS_ITEMS}' node='urn:example:d-open'/>", to=owner)
        assert [i.get("name") for i in resp.iter(f"{{{NS_ITEMS}}}item")] == ["i-open"], xml_str(resp)
        resp = await c.iq(f"<query xmlns='{NS_ITEMS}' node='urn:example:d-presence'/>", to=owner)
        assert pubsub_error(resp) == ("not-authorized", "presence-subscription-required"), xml_str(resp)
    finally:
        for x in (a, b, c):
            await x.close()


async def test_errors_carry_the_legacy_code(server):
    """PEP errors carry XEP-0086's numeric `code` too: profanity 0.13 publishes its first
    OMEMO device list only when asking for its (missing) list got item-not-found with
    code='404' (test_profanity's OMEMO exchange stands on it)."""
    alice, carol = server.account(), server.account()
    a = await login(server, alice, resource="own", presence=True)
    c = await login(server, carol, resource="stranger", presence=True)
    try:
        owner = bare(a.jid)
        devicelist = "eu.siacs.conversations.axolotl.devicelist"
        for who, to in ((a, None), (a, owner), (c, owner)):
            resp = await items(who, to, devicelist)
            assert pubsub_error(resp) == ("item-not-found", None), xml_str(resp)
            assert resp.find(q("error")).get("code") == "404", xml_str(resp)
        # With a pubsub#errors condition as well.
        resp = await publish(a, NODE, tune("x"), "one", options(access_model="presence"))
        assert resp.get("type") == "result", xml_str(resp)
        resp = await items(c, owner, NODE)
        assert pubsub_error(resp) == ("not-authorized", "presence-subscription-required"), xml_str(resp)
        assert resp.find(q("error")).get("code") == "401", xml_str(resp)
    finally:
        for x in (a, c):
            await x.close()


async def test_publish_options_precondition_and_configure(server):
    alice = server.account()
    a = await login(server, alice, resource="pub")
    try:
        node = "urn:example:prefs"
        resp = await publish(a, node, tune("1"), "1", options(access_model="whitelist", max_items="max"))
        assert resp.get("type") == "result", xml_str(resp)
        resp = await publish(a, node, tune("2"), "2", options(access_model="open"))
        assert pubsub_error(resp) == ("conflict", "precondition-not-met"), xml_str(resp)
        resp = await publish(a, node, tune("2"), "2", options(access_model="whitelist"))
        assert resp.get("type") == "result", xml_str(resp)
        # max_items=max keeps both; max_items on retrieval gives the latest.
        assert item_ids(await items(a, None, node)) == ["1", "2"]
        assert item_ids(await items(a, None, node, attrs=" max_items='1'")) == ["2"]
        assert item_ids(await items(a, None, node, extra="<item id='1'/>")) == ["1"]
        # The configuration form says what was asked for.
        resp = await a.iq(f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'/></pubsub>")
        assert resp.get("type") == "result", xml_str(resp)
        vals = {
            f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
            for f in resp.iter("{jabber:x:data}field")
        }
        assert vals["pubsub#access_model"] == ["whitelist"], xml_str(resp)
        assert vals["pubsub#max_items"] == ["max"], xml_str(resp)
        # Configure back to one item: the oldest goes.
        form = (
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{NS_PUBSUB}#node_config</value></field>"
            "<field var='pubsub#max_items'><value>1</value></field></x>"
        )
        resp = await a.iq(
            f"<pubsub xmlns='{NS_OWNER}'><configure node='{node}'>{form}</configure></pubsub>", type_="set"
        )
        assert resp.get("type") == "result", xml_str(resp)
        assert item_ids(await items(a, None, node)) == ["2"]
        # A publish without a node, an item too big.
        resp = await a.iq(f"<pubsub xmlns='{NS_PUBSUB}'><publish><item/></publish></pubsub>", type_="set")
        assert pubsub_error(resp) == ("bad-request", "nodeid-required"), xml_str(resp)
        big = "<blob xmlns='urn:big'>" + "x" * 70000 + "</blob>"
        resp = await publish(a, node, big, "big")
        assert pubsub_error(resp) == ("not-acceptable", "payload-too-big"), xml_str(resp)
        # Affiliations: the owner's own (XEP-0060 §5.7) and the node's (§8.9.1); the
        # default configuration (§8.3).
        resp = await a.iq(f"<pubsub xmlns='{NS_PUBSUB}'><affiliations/></pubsub>")
        affs = {(x.get("node"), x.get("affiliation")) for x in resp.iter(f"{{{NS_PUBSUB}}}affiliation")}
        assert (node, "owner") in affs, xml_str(resp)
        resp = await a.iq(f"<pubsub xmlns='{NS_OWNER}'><affiliations node='{node}'/></pubsub>")
        affs = [(x.get("jid"), x.get("affiliation")) for x in resp.iter(f"{{{NS_OWNER}}}affiliation")]
        assert affs == [(bare(a.jid), "owner")], xml_str(resp)
        resp = await a.iq(f"<pubsub xmlns='{NS_OWNER}'><default/></pubsub>")
        vals = {f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
                for f in resp.iter("{jabber:x:data}field")}
        assert vals.get("pubsub#access_model") == ["presence"], xml_str(resp)
        # Purge empties the node.
        resp = await a.iq(f"<pubsub xmlns='{NS_OWNER}'><purge node='{node}'/></pubsub>", type_="set")
        assert resp.get("type") == "result", xml_str(resp)
        assert item_ids(await items(a, None, node)) == []
        # disco#info of the account: the PEP identity and features.
        resp = await a.iq(f"<query xmlns='{NS_DISCO}'/>", to=bare(a.jid))
        ids = [(i.get("category"), i.get("type")) for i in resp.iter(f"{{{NS_DISCO}}}identity")]
        assert ("pubsub", "pep") in ids, xml_str(resp)
        feats = {f.get("var") for f in resp.iter(f"{{{NS_DISCO}}}feature")}
        for f in ("", "#publish-options", "#auto-create", "#filtered-notifications", "#access-whitelist"):
            assert NS_PUBSUB + f in feats, (f, xml_str(resp))
    finally:
        await a.close()


async def test_notifications_only_to_subscribed_contacts_with_notify(server):
    alice, bob, dave, carol = (server.account() for _ in range(4))
    a = await login(server, alice, resource="pub")
    b = await login(server, bob, resource="wants")
    d = await login(server, dave, resource="nocaps")
    c = await login(server, carol, resource="stranger")
    try:
        await announce_caps(b, [NODE])
        await announce_caps(d, ["urn:example:other"])
        await announce_caps(c, [NODE])
        await announce_caps(a, [])
        await subscribe_both(a, b)
        await subscribe_both(a, d)
        iid = new_id("tune")
        resp = await publish(a, NODE, tune("Song"), iid)
        assert resp.get("type") == "result", xml_str(resp)
        ev = await b.expect(is_event(NODE, iid), what="bob's notification")
        assert ev.get("from") == bare(a.jid) and ev.get("type") == "headline", xml_str(ev)
        assert ev.find(f".//{{http://jabber.org/protocol/tune}}title").text == "Song", xml_str(ev)
        for who in (d, c, a):
            await who.barrier()
            got = [e for e in who.skipped + await who.expect_silence(0.5) if is_event(NODE)(e)]
            who.skipped = []
            assert not got, f"{who.jid} got {[xml_str(e) for e in got]}"
        # Retract notifies too (notify_retract defaults to true).
        await a.iq(
            f"<pubsub xmlns='{NS_PUBSUB}'><retract node='{NODE}'><item id='{iid}'/></retract></pubsub>",
            type_="set",
        )

        def is_retract(e):
            its = e.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
            return its is not None and its.find(f"{{{NS_EVENT}}}retract") is not None

        await b.expect(is_retract, what="bob's retract notification")
    finally:
        for x in (a, b, d, c):
            await x.close()


async def test_last_item_at_login(server):
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="pub")
    b = await login(server, bob, resource="first")
    try:
        await announce_caps(a, [])
        await announce_caps(b, [NODE])
        await subscribe_both(a, b)
        await b.close()
        iid = new_id("last")
        resp = await publish(a, NODE, tune("While away"), iid)
        assert resp.get("type") == "result", xml_str(resp)
        b = await login(server, bob, resource="again")
        await announce_caps(b, [NODE])
        await b.expect(is_event(NODE, iid), what="the last item at login")
        # A client that does not want the node gets nothing at login.
        b2 = await login(server, bob, resource="nowant")
        await announce_caps(b2, ["urn:example:else"])
        await b2.barrier()
        got = [e for e in b2.skipped + await b2.expect_silence(0.5) if is_event(NODE)(e)]
        assert not got, [xml_str(e) for e in got]
        await b2.close()
    finally:
        await a.close()
        await b.close()


async def test_node_survives_restart(make_server):
    srv = make_server(accounts=2)
    alice = srv.account()
    a = await login(srv, alice, resource="pub")
    resp = await publish(a, "urn:example:keep", tune("kept"), "k1", options(access_model="open"))
    assert resp.get("type") == "result", xml_str(resp)
    await a.close()
    srv.stop()
    srv.start()
    a = await login(srv, alice, resource="again")
    try:
        resp = await items(a, None, "urn:example:keep")
        assert item_ids(resp) == ["k1"], xml_str(resp)
        assert "kept" in xml_str(resp)
        resp = await publish(a, "urn:example:keep", tune("x"), None, options(access_model="presence"))
        assert pubsub_error(resp) == ("conflict", "precondition-not-met"), xml_str(resp)
    finally:
        await a.close()


async def slix_client(server, account, resource: str):
    x = slixmpp.ClientXMPP(f"{account.jid}/{resource}", account.password)
    x.ssl_context = make_ssl_context(server.cafile)
    x.enable_starttls, x.enable_direct_tls, x.enable_plaintext = True, False, False
    for p in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0084"):
        x.register_plugin(p)
    started = asyncio.get_running_loop().create_future()
    x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    x.connect(host="127.0.0.1", port=server.c2s_port)
    await asyncio.wait_for(started, 20)
    x.send_presence()
    await x.get_roster()
    return x


async def test_slixmpp_avatar_metadata_notification_and_data(server):
    """XEP-0084 with slixmpp's plugins (xep_0060, xep_0163, xep_0115): bob's client asks
    for `urn:xmpp:avatar:metadata+notify` in its caps, gets the metadata notification when
    alice publishes, and fetches the data item by id."""
    import asyncio

    alice, bob = await mutual_contacts(server)
    a = await slix_client(server, alice, "slix")
    b = await slix_client(server, bob, "slix")
    try:
        got = asyncio.get_running_loop().create_future()
        b.add_event_handler("avatar_metadata_publish", lambda m: got.done() or got.set_result(m))
        await asyncio.sleep(0.5)  # the server's caps query and bob's answer
        data = b"\x89PNG fake avatar bytes"
        avatar_id = a.plugin["xep_0084"].generate_id(data)
        await a.plugin["xep_0084"].publish_avatar(data)
        await a.plugin["xep_0084"].publish_avatar_metadata(
            {"id": avatar_id, "type": "image/png", "bytes": len(data)}
        )
        msg = await asyncio.wait_for(got, 10)
        assert str(msg["from"]) == bare(alice.jid)
        info = msg["pubsub_event"]["items"]["item"]["avatar_metadata"]["info"]
        assert info["id"] == avatar_id, msg
        resp = await b.plugin["xep_0084"].retrieve_avatar(bare(alice.jid), avatar_id)
        assert resp["pubsub"]["items"]["item"]["avatar_data"]["value"] == data
    finally:
        for x in (a, b):
            x.disconnect()
        await asyncio.sleep(0.2)


async def test_a_resumed_session_keeps_its_notifications(server):
    """XEP-0198 §5: the session a client resumes is the one it had, with the interests its
    caps stated; the hand-over carries its presence, from which PEP learns them again."""
    from test_stream_management import enable, resume

    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="pub")
    b = await login(server, bob, resource="mobile")
    b2 = None
    try:
        await announce_caps(a, [])
        await announce_caps(b, [NODE])
        await subscribe_both(a, b)
        enabled = await enable(b)
        assert enabled.get("resume") in ("true", "1"), xml_str(enabled)
        b.abort()
        await asyncio.sleep(0.3)
        b2, answer = await resume(server, bob, enabled.get("id"), 0)
        assert answer.tag.endswith("resumed"), xml_str(answer)
        await b2.drain(0.3)
        iid = new_id("after-resume")
        resp = await publish(a, NODE, tune("Still listening"), iid)
        assert resp.get("type") == "result", xml_str(resp)
        await b2.expect(is_event(NODE, iid), what="the notification to the resumed session")
    finally:
        await a.close()
        if b2 is not None:
            await b2.close()


async def test_limits_refuse_with_the_right_errors(make_server):
    """`[modules.pep]` caps: nodes per account (`not-allowed` + `max-nodes-exceeded`), the
    account's total item bytes (`policy-violation`, the cap named), and a peer cannot make
    the node store anything in another account's service (`forbidden`, nothing created)."""
    srv = make_server({"modules.pep": {"max_nodes": 2, "max_bytes_per_account": 3000}}, accounts=2)
    alice, mallory = srv.account(), srv.account()
    a = await login(srv, alice, resource="pub")
    m = await login(srv, mallory, resource="peer")
    try:
        for n in ("urn:example:n1", "urn:example:n2"):
            resp = await publish(a, n, tune(n), "x")
            assert resp.get("type") == "result", xml_str(resp)
        resp = await publish(a, "urn:example:n3", tune("3"), "x")
        assert pubsub_error(resp) == ("not-allowed", "max-nodes-exceeded"), xml_str(resp)
        # Replacing an item counts its new size only; growing past the total is refused.
        big = "<blob xmlns='urn:big'>" + "y" * 2500 + "</blob>"
        resp = await publish(a, "urn:example:n1", big, "x")
        assert resp.get("type") == "result", xml_str(resp)
        resp = await publish(a, "urn:example:n2", big, "x")
        assert pubsub_error(resp)[0] == "policy-violation", xml_str(resp)
        assert "max_bytes_per_account" in xml_str(resp), xml_str(resp)
        assert "yyyy" not in xml_str(await items(a, None, "urn:example:n2"))
        # Another account (or a remote peer, answered the same way) publishing to alice.
        resp = await m.iq(
            f"<pubsub xmlns='{NS_PUBSUB}'><publish node='urn:example:planted'><item>{tune('x')}</item>"
            "</publish></pubsub>",
            type_="set", to=bare(a.jid),
        )
        assert pubsub_error(resp)[0] == "forbidden", xml_str(resp)
        assert pubsub_error(await items(a, None, "urn:example:planted")) == ("item-not-found", None)
    finally:
        await a.close()
        await m.close()
