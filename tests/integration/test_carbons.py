"""Message Carbons (XEP-0280): enable/disable (§4, §5), received carbons (§7) to a second and
third resource of one account, sent carbons (§6), `<private/>` (§8) and `<no-copy/>`
(XEP-0334 §4.3) honoured, which messages are copied (chat; normal with a body), a resource
that did not enable gets nothing; across the nodes of a three-node cluster and for messages
from a federated sender (Prosody). Raw clients check the exact wrapping; slixmpp's
`xep_0280` plugin checks a real client library sees its carbons.

Every test asserts both that a carbon arrives where it must and that none arrives where it
must not: a later copied message (or a ping round trip) is the barrier after which an
unwanted carbon would already have arrived."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp

from rawxmpp import bare, login, make_ssl_context, new_id, q, xml_str

ACCOUNT_POOL = 24

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"


async def enable(c, on: bool = True) -> None:
    what = "enable" if on else "disable"
    resp = await c.iq(f"<{what} xmlns='{NS_CARBONS}'/>", type_="set")
    assert resp.get("type") == "result", xml_str(resp)


def forwarded(el, kind: str):
    """The message a `<sent/>`/`<received/>` carbon wraps, else None."""
    if el.tag != q("message"):
        return None
    return el.find(f"{{{NS_CARBONS}}}{kind}/{{{NS_FORWARD}}}forwarded/{q('message')}")


def is_carbon(kind: str, id_: str):
    def pred(e):
        inner = forwarded(e, kind)
        return inner is not None and inner.get("id") == id_

    return pred


def is_msg(id_: str):
    return lambda e: e.tag == q("message") and e.get("id") == id_ and forwarded_any(e) is None


def forwarded_any(e):
    return forwarded(e, "sent") if forwarded(e, "sent") is not None else forwarded(e, "received")


def carbons_among(elements, id_: str | None = None):
    """The carbons (either kind) among `elements`, optionally only those of message `id_`."""
    out = []
    for e in elements:
        inner = forwarded_any(e)
        if inner is not None and (id_ is None or inner.get("id") == id_):
            out.append(e)
    return out


async def no_carbon(c, id_: str | None = None) -> None:
    """After a round trip to the server, `c` has received no carbon (of message `id_`)."""
    await c.barrier()
    got = carbons_among(c.skipped + await c.expect_silence(0.3), id_)
    c.skipped = []
    assert not got, f"{c.jid} got carbons it must not: {[xml_str(e) for e in got]}"


def chat(to: str, id_: str, body: str = "hi", type_: str | None = "chat", extra: str = "") -> str:
    t = f" type='{type_}'" if type_ else ""
    b = f"<body>{body}</body>" if body is not None else ""
    return f"<message to='{to}' id='{id_}'{t}>{b}{extra}</message>"


async def close_all(*clients):
    for c in clients:
        await c.close()


# ---------------------------------------------------------------------------
# one node
# ---------------------------------------------------------------------------


async def test_received_carbons_reach_the_second_and_third_resource(server):
    alice, bob = server.account(), server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    a3 = await login(server, alice, resource="three")
    b = await login(server, bob, resource="desk")
    try:
        for c in (a1, a2, a3):
            await enable(c)
        mid = new_id("rc")
        await b.send(chat(a1.jid, mid))
        orig = await a1.expect(is_msg(mid), what="the original on alice/one")
        assert orig.get("from") == b.jid
        for c in (a2, a3):
            carbon = await c.expect(is_carbon("received", mid), what=f"the received carbon on {c.jid}")
            # §7: from the bare JID of the account, to the receiving resource, same type.
            assert carbon.get("from") == bare(alice.jid), xml_str(carbon)
            assert carbon.get("to") == c.jid, xml_str(carbon)
            assert carbon.get("type") == "chat", xml_str(carbon)
            inner = forwarded(carbon, "received")
            assert inner.get("from") == b.jid and inner.get("to") == a1.jid, xml_str(carbon)
            assert inner.findtext(q("body")) == "hi", xml_str(carbon)
        # The resource that got the original gets no copy of it.
        await no_carbon(a1, mid)
        # The sender's account has no carbons enabled: nothing comes back to it either.
        await no_carbon(b)
    finally:
        await close_all(a1, a2, a3, b)


async def test_sent_carbons_reach_the_other_resources_not_the_sender(server):
    alice, bob = server.account(), server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    a3 = await login(server, alice, resource="three")
    b = await login(server, bob, resource="desk")
    try:
        for c in (a1, a2, a3):
            await enable(c)
        mid = new_id("sc")
        await a1.send(chat(b.jid, mid, "from one"))
        await b.expect(is_msg(mid), what="the message on bob")
        for c in (a2, a3):
            carbon = await c.expect(is_carbon("sent", mid), what=f"the sent carbon on {c.jid}")
            assert carbon.get("from") == bare(alice.jid), xml_str(carbon)
            inner = forwarded(carbon, "sent")
            assert inner.get("from") == a1.jid, xml_str(carbon)
            assert inner.get("to") == b.jid, xml_str(carbon)
            assert inner.findtext(q("body")) == "from one", xml_str(carbon)
        await no_carbon(a1, mid)
        await no_carbon(b)  # bob is not alice: no carbon of alice's message for him
    finally:
        await close_all(a1, a2, a3, b)


async def test_a_resource_that_did_not_enable_gets_nothing(server):
    alice, bob = server.account(), server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="enabled")
    a3 = await login(server, alice, resource="plain")
    b = await login(server, bob, resource="desk")
    try:
        await enable(a2)
        rid, sid = new_id("in"), new_id("out")
        await b.send(chat(a1.jid, rid))
        await a1.send(chat(b.jid, sid))
        await a2.expect(is_carbon("received", rid), what="the received carbon on the enabled resource")
        await a2.expect(is_carbon("sent", sid), what="the sent carbon on the enabled resource")
        await a1.expect(is_msg(rid), what="the original on alice/one")
        # Neither the resource that never enabled, nor the one that got the original / sent it.
        await no_carbon(a3)
        await no_carbon(a1)
    finally:
        await close_all(a1, a2, a3, b)


async def test_disable_stops_the_copies(server):
    alice, bob = server.account(), server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    b = await login(server, bob, resource="desk")
    try:
        await enable(a2)
        first = new_id("on")
        await b.send(chat(a1.jid, first))
        await a2.expect(is_carbon("received", first), what="a carbon while enabled")
        await enable(a2, on=False)
        second, third = new_id("off"), new_id("offsent")
        await b.send(chat(a1.jid, second))
        await a1.send(chat(b.jid, third))
        await a1.expect(is_msg(second), what="the second original")
        await b.expect(is_msg(third), what="alice's message")
        await no_carbon(a2)
        # Enabled again: copies again (the disable was not a one-way switch).
        await enable(a2)
        fourth = new_id("again")
        await b.send(chat(a1.jid, fourth))
        await a2.expect(is_carbon("received", fourth), what="a carbon after re-enabling")
    finally:
        await close_all(a1, a2, b)


async def test_enable_as_a_get_or_to_another_entity_is_an_error(server):
    alice = server.account()
    a1 = await login(server, alice, resource="one")
    try:
        resp = await a1.iq(f"<enable xmlns='{NS_CARBONS}'/>", type_="get")
        assert resp.get("type") == "error", xml_str(resp)
    finally:
        await a1.close()


async def test_private_and_no_copy_are_honoured(server):
    alice, bob = server.account(), server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    b = await login(server, bob, resource="desk")
    try:
        await enable(a1)
        await enable(a2)
        private = f"<private xmlns='{NS_CARBONS}'/><no-copy xmlns='{NS_HINTS}'/>"
        nocopy = f"<no-copy xmlns='{NS_HINTS}'/>"
        only_private = f"<private xmlns='{NS_CARBONS}'/>"
        ids = {}
        # Received: bob marks his messages to alice/one.
        for name, extra in (("priv", only_private), ("nocopy", nocopy), ("both", private)):
            ids[f"in-{name}"] = new_id(name)
            await b.send(chat(a1.jid, ids[f"in-{name}"], extra=extra))
        # Sent: alice/one marks her messages to bob.
        for name, extra in (("priv", only_private), ("nocopy", nocopy)):
            ids[f"out-{name}"] = new_id(name)
            await a1.send(chat(b.jid, ids[f"out-{name}"], extra=extra))
        # A plain message after them: its carbon is the barrier for the marked ones.
        plain = new_id("plain")
        await b.send(chat(a1.jid, plain))
        for key, id_ in ids.items():
            if key.startswith("in-"):
                await a1.expect(is_msg(id_), what=f"the original {key}")
            else:
                await b.expect(is_msg(id_), what=f"alice's {key}")
        await a2.recv_match(is_carbon("received", plain), what="the carbon of the plain message")
        got = carbons_among(a2.skipped + await a2.expect_silence(0.3))
        assert not got, f"marked messages were copied: {[xml_str(e) for e in got]}"
    finally:
        await close_all(a1, a2, b)


async def test_which_message_types_are_copied(server):
    alice, bob = server.account(), server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    b = await login(server, bob, resource="desk")
    try:
        await enable(a2)
        normal_body = new_id("nb")
        untyped_body = new_id("ub")
        normal_empty = new_id("ne")
        headline = new_id("hl")
        chat_state = new_id("cs")
        await b.send(chat(a1.jid, normal_body, type_="normal"))
        await b.send(chat(a1.jid, untyped_body, type_=None))
        await b.send(chat(a1.jid, normal_empty, type_="normal", body=None,
                          extra="<active xmlns='http://jabber.org/protocol/chatstates'/>"))
        await b.send(chat(a1.jid, headline, type_="headline"))
        # A chat message without a body (a chat state) is copied: §6 copies every `chat`.
        await b.send(chat(a1.jid, chat_state, body=None,
                          extra="<composing xmlns='http://jabber.org/protocol/chatstates'/>"))
        for id_ in (normal_body, untyped_body, chat_state):
            await a2.expect(is_carbon("received", id_), what=f"the carbon of {id_}")
        for id_ in (normal_body, untyped_body, normal_empty, headline, chat_state):
            await a1.expect(is_msg(id_), what=f"the original {id_}")
        await a2.barrier()
        got = carbons_among(a2.skipped + await a2.expect_silence(0.3))
        copied = sorted(forwarded_any(e).get("id") for e in got)
        assert copied == [], f"copies of a bodiless normal or a headline message: {copied}"
    finally:
        await close_all(a1, a2, b)


async def test_messages_between_own_resources_get_no_sent_carbons(server):
    alice = server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    a3 = await login(server, alice, resource="three")
    try:
        for c in (a1, a2, a3):
            await enable(c)
        mid = new_id("self")
        await a1.send(chat(a2.jid, mid))
        await a2.expect(is_msg(mid), what="the message between alice's resources")
        # No sent carbon (§6: the outbound hook skips messages to the own account); the
        # third resource gets the one received copy (§7: it did not get the message).
        got = {}
        for c in (a1, a2, a3):
            await c.barrier()
            got[c] = carbons_among(c.skipped + await c.expect_silence(0.3), mid)
            c.skipped = []
            assert all(forwarded(e, "sent") is None for e in got[c]), [xml_str(e) for e in got[c]]
        assert got[a2] == [], [xml_str(e) for e in got[a2]]
        assert len(got[a3]) == 1, [xml_str(e) for e in got[a3]]
    finally:
        await close_all(a1, a2, a3)


async def test_the_sender_gets_no_copy_of_its_message_to_its_own_resource(server):
    alice = server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    try:
        await enable(a1)
        mid = new_id("self")
        await a1.send(chat(a2.jid, mid))
        await a2.expect(is_msg(mid), what="the message between alice's resources")
        await no_carbon(a1, mid)
    finally:
        await close_all(a1, a2)


# ---------------------------------------------------------------------------
# slixmpp's xep_0280
# ---------------------------------------------------------------------------


class SliSession:
    def __init__(self, server, account, resource):
        self.xmpp = x = slixmpp.ClientXMPP(f"{account.jid}/{resource}", account.password)
        x.ssl_context = make_ssl_context(server.cafile)
        x.enable_direct_tls = False
        x.enable_starttls = True
        x.enable_plaintext = False
        for plugin in ("xep_0030", "xep_0199", "xep_0280"):
            x.register_plugin(plugin)
        self.port = server.c2s_port
        self.started = asyncio.get_running_loop().create_future()
        self.received: list = []
        self.sent: list = []
        self.messages: list = []
        x.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        x.add_event_handler("carbon_received", self.received.append)
        x.add_event_handler("carbon_sent", self.sent.append)
        x.add_event_handler("message", self.messages.append)

    async def start(self):
        self.xmpp.connect(host="127.0.0.1", port=self.port)
        await asyncio.wait_for(self.started, 20)
        self.xmpp.send_presence()
        return self

    async def stop(self):
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.transport:
            try:
                await asyncio.wait_for(self.xmpp.disconnect(wait=1), 5)
            except Exception:
                self.xmpp.abort()


async def wait_for(pred, what: str, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_slixmpp_xep_0280_sees_its_carbons(server):
    alice, bob = server.account(), server.account()
    phone = await SliSession(server, alice, "phone").start()
    laptop = await SliSession(server, alice, "laptop").start()
    b = await login(server, bob, resource="desk")
    try:
        await phone.xmpp.plugin["xep_0280"].enable(timeout=10)
        await laptop.xmpp.plugin["xep_0280"].enable(timeout=10)
        await b.send(chat(f"{alice.jid}/phone", "sli-in", "to the phone"))
        await wait_for(lambda: laptop.received, "a received carbon on the laptop")
        inner = laptop.received[0]["carbon_received"]
        assert inner["body"] == "to the phone" and inner["from"] == b.jid
        phone.xmpp.send_message(mto=b.jid, mbody="from the phone", mtype="chat")
        await wait_for(lambda: laptop.sent, "a sent carbon on the laptop")
        assert laptop.sent[0]["carbon_sent"]["body"] == "from the phone"
        await b.recv_match(lambda e: e.tag == q("message") and e.findtext(q("body")) == "from the phone")
        # The phone sent one and received one: neither comes back to it as a carbon.
        await phone.xmpp.plugin["xep_0199"].ping(jid=server.domain, timeout=10)
        await asyncio.sleep(0.3)
        assert phone.received == [] and phone.sent == []
        assert [m["body"] for m in phone.messages if m["body"]] == ["to the phone"]
    finally:
        await phone.stop()
        await laptop.stop()
        await b.close()


# ---------------------------------------------------------------------------
# three-node cluster
# ---------------------------------------------------------------------------


async def test_carbons_across_the_nodes_of_a_cluster(cluster):
    alice, bob = cluster.account(), cluster.account()
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a1 = await login(n1, alice, resource="n1", label="alice@n1")
    a2 = await login(n2, alice, resource="n2", label="alice@n2")
    a3 = await login(n3, alice, resource="n3", label="alice@n3")
    b = await login(n3, bob, resource="n3", label="bob@n3")
    try:
        await enable(a2)
        await enable(a3)
        # The flag travels through the routing table: wait until every node has alice's
        # three resources (a carbon goes to resources the local node knows are flagged).
        cluster.wait_for(
            "every node to route to alice's three resources",
            lambda: all(
                sum(line.split()[0].startswith(bare(alice.jid) + "/") for line in cluster.routes(n)) == 3
                for n in cluster.nodes
            ),
        )
        # Received on n1 from bob on n3: carbons on n2 and n3.
        mid = new_id("xin")
        for attempt in range(30):
            await b.send(chat(a1.jid, mid))
            await a1.expect(is_msg(mid), what="the original on n1")
            try:
                await a2.expect(is_carbon("received", mid), timeout=1.0, what="carbon on n2")
                break
            except AssertionError:
                # The flag may not have been committed everywhere yet; try a new message.
                mid = new_id("xin")
        else:
            pytest.fail("no received carbon reached n2")
        await a3.expect(is_carbon("received", mid), what="the received carbon on n3")
        await no_carbon(a1, mid)
        # Sent from n1: carbons on n2 and n3, not n1.
        sid = new_id("xout")
        await a1.send(chat(b.jid, sid))
        await b.expect(is_msg(sid), what="alice's message on bob")
        for c in (a2, a3):
            carbon = await c.expect(is_carbon("sent", sid), what=f"the sent carbon on {c.label}")
            assert carbon.get("from") == bare(alice.jid), xml_str(carbon)
        await no_carbon(a1, sid)
        # alice@n2 disables: n3 still gets copies, n2 none.
        await enable(a2, on=False)
        for attempt in range(30):
            did = new_id("xdis")
            await b.send(chat(a1.jid, did))
            await a3.expect(is_carbon("received", did), what="carbon on n3 after n2 disabled")
            await a2.barrier()
            if not carbons_among(a2.skipped + await a2.expect_silence(0.2), did):
                break
            a2.skipped = []
        else:
            pytest.fail("alice@n2 kept receiving carbons after disabling")
        await no_carbon(a2)
    finally:
        await close_all(a1, a2, a3, b)


# ---------------------------------------------------------------------------
# federated sender (Prosody)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    import federation as f

    if f.PROSODY_BIN is None:
        pytest.skip("prosody is not installed (apt-get install prosody)")
    with f.sb_and_prosody(tmp_path_factory.mktemp("carbons-prosody"), "selfsigned", accounts=4) as (sb, prosody):
        yield f.Fed("selfsigned", sb, prosody)


async def test_carbons_of_messages_from_and_to_a_federated_peer(fed):
    import federation as f

    acc = fed.sb.account()
    a1 = await login(fed.sb, acc, resource="one")
    a2 = await login(fed.sb, acc, resource="two")
    a3 = await login(fed.sb, acc, resource="three")
    pjid, ppw = fed.peer_account()
    peer = f.Client(f"{pjid}/peer", ppw, fed.peer.addr, fed.peer.c2s_port)
    await peer.start()
    try:
        await enable(a2)
        # From Prosody to alice/one: a received carbon on alice/two, none on three.
        peer.xmpp.send_message(mto=a1.jid, mbody="over s2s", mtype="chat")
        orig = await a1.recv_match(
            lambda e: e.tag == q("message") and e.findtext(q("body")) == "over s2s",
            timeout=30, what="the federated message")
        assert bare(orig.get("from")) == pjid
        carbon = await a2.recv_match(
            lambda e: (m := forwarded(e, "received")) is not None
            and m.findtext(q("body")) == "over s2s",
            timeout=10, what="the received carbon of the federated message")
        assert carbon.get("from") == bare(a1.jid), xml_str(carbon)
        assert forwarded(carbon, "received").get("from").startswith(pjid), xml_str(carbon)
        # Sent to Prosody from alice/one: a sent carbon on alice/two.
        sid = new_id("fed")
        await a1.send(chat(f"{pjid}/peer", sid, "back over s2s"))
        await a2.expect(is_carbon("sent", sid), what="the sent carbon of a federated message")
        await f.wait_until(lambda: "back over s2s" in f.bodies(peer), 30, "the reply on Prosody")
        await no_carbon(a3)
        await no_carbon(a1)
    finally:
        await peer.stop()
        await close_all(a1, a2, a3)
