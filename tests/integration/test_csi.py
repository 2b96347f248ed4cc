"""Client State Indication (XEP-0352): the `urn:xmpp:csi:0` stream feature (§4); while a
client is inactive, presence updates from its contacts are held and coalesced (the latest
per contact) and bodiless messages wait; a message with a body is delivered at once (after
what was held, in order); `<active/>` flushes; the bounds of `[modules.csi]` (max_held,
max_held_bytes, max_delay_secs) flush early. Raw clients, plus slixmpp's `xep_0352`.

"Held" is checked after a ping round trip (IQs are never held), so a presence that was not
held would already have arrived."""

from __future__ import annotations

import asyncio

import slixmpp

from rawxmpp import bare, make_ssl_context, new_id, online, q, subscribe, xml_str

ACCOUNT_POOL = 24

NS_CSI = "urn:xmpp:csi:0"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def presences_from(elements, jid: str):
    return [e for e in elements if e.tag == q("presence") and e.get("from") == jid]


def shows(elements):
    return [e.findtext(q("show")) for e in elements]


async def settled(c, seconds: float = 0.3):
    """Everything `c` got up to a ping round trip and `seconds` after it."""
    await c.barrier()
    got = await c.drain(seconds)
    return got


async def watcher_and_contacts(srv, n_contacts: int = 2):
    """alice, online, subscribed to the presence of `n_contacts` online contacts."""
    alice = await online(srv, srv.account(), "phone", label="alice")
    contacts = []
    for i in range(n_contacts):
        c = await online(srv, srv.account(), "desk", label=f"contact{i}")
        await subscribe(alice, c)
        contacts.append(c)
    # The initial presences the subscriptions brought: not part of any test.
    await settled(alice)
    return alice, contacts


async def close_all(*clients):
    for c in clients:
        await c.close()


async def test_csi_is_a_stream_feature(server):
    from rawxmpp import authenticated

    c = await authenticated(server, server.account())
    try:
        feats = c.post_auth_features
        assert feats.find(f"{{{NS_CSI}}}csi") is not None, xml_str(feats)
    finally:
        await c.close()


async def test_inactive_holds_and_coalesces_presence_and_active_flushes(server):
    alice, (bob, carol) = await watcher_and_contacts(server)
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.barrier()  # the node read <inactive/> before what follows
        for show in ("away", "xa", "dnd"):
            await bob.send(f"<presence><show>{show}</show></presence>")
        await carol.send("<presence><show>chat</show></presence>")
        # A chat state (no body) waits as well.
        cs = new_id("cs")
        await bob.send(f"<message to='{alice.jid}' id='{cs}' type='chat'>"
                       f"<composing xmlns='{NS_CHATSTATES}'/></message>")
        await bob.barrier()
        await carol.barrier()
        held = await settled(alice, 0.5)
        assert presences_from(held, bob.jid) == [], [xml_str(e) for e in held]
        assert presences_from(held, carol.jid) == [], [xml_str(e) for e in held]
        assert not [e for e in held if e.tag == q("message")], [xml_str(e) for e in held]

        await alice.send(f"<active xmlns='{NS_CSI}'/>")
        flushed = await settled(alice, 0.3)
        # One presence per contact, the latest; the chat state too.
        assert shows(presences_from(flushed, bob.jid)) == ["dnd"], [xml_str(e) for e in flushed]
        assert shows(presences_from(flushed, carol.jid)) == ["chat"], [xml_str(e) for e in flushed]
        assert [e.get("id") for e in flushed if e.tag == q("message")] == [cs]

        # Active again: presence flows at once.
        await bob.send("<presence><show>away</show></presence>")
        await alice.expect(lambda e: e.tag == q("presence") and e.get("from") == bob.jid
                           and e.findtext(q("show")) == "away", what="bob's presence while active")
    finally:
        await close_all(alice, bob, carol)


async def test_a_message_with_a_body_is_never_held(server):
    alice, (bob,) = await watcher_and_contacts(server, 1)
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.barrier()  # the node read <inactive/> before what follows
        await bob.send("<presence><show>away</show></presence>")
        await bob.barrier()
        held = await settled(alice, 0.3)
        assert presences_from(held, bob.jid) == [], [xml_str(e) for e in held]
        mid = new_id("body")
        await bob.send(f"<message to='{alice.jid}' id='{mid}' type='chat'><body>now</body></message>")
        # The message arrives without <active/>; what was held comes first, in order.
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not any(e.tag == q("message") and e.get("id") == mid for e in got):
            assert loop.time() < deadline, f"the message did not arrive: {[xml_str(e) for e in got]}"
            got.append(await alice.recv(timeout=5))
        kinds = [(e.tag, e.get("from")) for e in got]
        assert kinds == [(q("presence"), bob.jid), (q("message"), bob.jid)], kinds
        # Still inactive afterwards: the next presence is held again.
        await bob.send("<presence><show>xa</show></presence>")
        await bob.barrier()
        held = await settled(alice, 0.3)
        assert presences_from(held, bob.jid) == [], [xml_str(e) for e in held]
    finally:
        await close_all(alice, bob)


async def test_a_subscription_request_is_not_held(server):
    alice, (bob,) = await watcher_and_contacts(server, 1)
    dave = await online(server, server.account(), "desk", label="dave")
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.barrier()  # the node read <inactive/> before what follows
        await dave.send(f"<presence to='{bare(alice.jid)}' type='subscribe'/>")
        await alice.expect(lambda e: e.tag == q("presence") and e.get("type") == "subscribe",
                           what="the subscription request while inactive")
    finally:
        await close_all(alice, bob, dave)


def chat_state(to: str, id_: str, pad: int = 0) -> str:
    thread = f"<thread>{'x' * pad}</thread>" if pad else ""
    return (f"<message to='{to}' id='{id_}' type='chat'>{thread}"
            f"<paused xmlns='{NS_CHATSTATES}'/></message>")


async def test_max_held_flushes_everything(make_server):
    srv = make_server({"modules.csi": {"max_held": 3}}, accounts=4)
    alice, (bob,) = await watcher_and_contacts(srv, 1)
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.barrier()  # the node read <inactive/> before what follows
        ids = [new_id("h") for _ in range(3)]
        for i in ids[:2]:
            await bob.send(chat_state(alice.jid, i))
        await bob.barrier()
        held = await settled(alice, 0.3)
        assert [e for e in held if e.tag == q("message")] == [], [xml_str(e) for e in held]
        await bob.send(chat_state(alice.jid, ids[2]))
        await bob.barrier()
        got = await settled(alice, 0.3)
        assert [e.get("id") for e in got if e.tag == q("message")] == ids
    finally:
        await close_all(alice, bob)


async def test_max_held_bytes_flushes_everything(make_server):
    srv = make_server({"modules.csi": {"max_held_bytes": 1000}}, accounts=4)
    alice, (bob,) = await watcher_and_contacts(srv, 1)
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.barrier()  # the node read <inactive/> before what follows
        first, second = new_id("b"), new_id("b")
        await bob.send(chat_state(alice.jid, first, pad=400))
        await bob.barrier()
        held = await settled(alice, 0.3)
        assert [e for e in held if e.tag == q("message")] == [], [xml_str(e) for e in held]
        await bob.send(chat_state(alice.jid, second, pad=700))
        await bob.barrier()
        got = await settled(alice, 0.3)
        assert [e.get("id") for e in got if e.tag == q("message")] == [first, second]
    finally:
        await close_all(alice, bob)


async def test_max_delay_bounds_the_wait(make_server):
    srv = make_server({"modules.csi": {"max_delay_secs": 1}}, accounts=4)
    alice, (bob,) = await watcher_and_contacts(srv, 1)
    try:
        await alice.send(f"<inactive xmlns='{NS_CSI}'/>")
        await alice.barrier()  # the node read <inactive/> before what follows
        await bob.send("<presence><show>away</show></presence>")
        await bob.barrier()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        held = await settled(alice, 0.2)
        assert presences_from(held, bob.jid) == [], [xml_str(e) for e in held]
        await alice.expect(lambda e: e.tag == q("presence") and e.get("from") == bob.jid,
                           timeout=5, what="the held presence after max_delay_secs")
        waited = loop.time() - t0
        assert 0.3 < waited < 4, f"flushed after {waited:.2f}s, max_delay_secs = 1"
    finally:
        await close_all(alice, bob)


async def test_an_unknown_csi_option_is_refused(make_server):
    srv = make_server({"modules.csi": {"max_hold": 3}}, accounts=0, start=False)
    r = srv.cli("modules")
    assert r.returncode != 0, r.stdout
    assert "max_hold" in r.stderr, r.stderr


class SliSession:
    def __init__(self, server, account, resource):
        self.xmpp = x = slixmpp.ClientXMPP(f"{account.jid}/{resource}", account.password)
        x.ssl_context = make_ssl_context(server.cafile)
        x.enable_direct_tls = False
        x.enable_starttls = True
        x.enable_plaintext = False
        for plugin in ("xep_0030", "xep_0199", "xep_0352"):
            x.register_plugin(plugin)
        x.auto_authorize = True
        x.auto_subscribe = False
        self.port = server.c2s_port
        self.started = asyncio.get_running_loop().create_future()
        self.presences: list = []
        x.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        x.add_event_handler("presence", self.presences.append)

    async def start(self):
        self.xmpp.connect(host="127.0.0.1", port=self.port)
        await asyncio.wait_for(self.started, 20)
        await self.xmpp.get_roster(timeout=10)
        self.xmpp.send_presence()
        await self.xmpp.plugin["xep_0199"].ping(jid=self.xmpp.boundjid.domain, timeout=10)
        return self

    async def stop(self):
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.transport:
            try:
                await asyncio.wait_for(self.xmpp.disconnect(wait=1), 5)
            except Exception:
                self.xmpp.abort()


async def test_slixmpp_xep_0352_inactive_then_active(server):
    acc = server.account()
    sli = await SliSession(server, acc, "phone").start()
    bob = await online(server, server.account(), "desk", label="bob")
    try:
        assert sli.xmpp.plugin["xep_0352"].enabled, "slixmpp did not see the csi stream feature"
        # bob subscribes to the slixmpp account (auto_authorize approves), then the reverse.
        await bob.send(f"<presence to='{acc.jid}' type='subscribe'/>")
        await bob.expect(lambda e: e.tag == q("presence") and e.get("type") == "subscribed",
                         what="the approval from slixmpp")
        sli.xmpp.send_presence(pto=bare(bob.jid), ptype="subscribe")
        await bob.expect(lambda e: e.tag == q("presence") and e.get("type") == "subscribe",
                         what="slixmpp's subscription request")
        await bob.send(f"<presence to='{acc.jid}' type='subscribed'/>")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not [p for p in sli.presences if p["from"] == bob.jid and p["type"] == "available"]:
            assert loop.time() < deadline, "bob's presence never reached slixmpp"
            await asyncio.sleep(0.05)

        sli.xmpp.plugin["xep_0352"].send_inactive()
        await sli.xmpp.plugin["xep_0199"].ping(jid=server.domain, timeout=10)
        before = len(sli.presences)
        await bob.send("<presence><show>away</show></presence>")
        await bob.barrier()
        await sli.xmpp.plugin["xep_0199"].ping(jid=server.domain, timeout=10)
        await asyncio.sleep(0.3)
        assert len(sli.presences) == before, "a presence reached the inactive client"
        sli.xmpp.plugin["xep_0352"].send_active()
        deadline = loop.time() + 5
        while not [p for p in sli.presences[before:] if p["show"] == "away"]:
            assert loop.time() < deadline, "the held presence was not flushed on <active/>"
            await asyncio.sleep(0.05)
    finally:
        await sli.stop()
        await bob.close()
