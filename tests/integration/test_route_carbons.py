"""The router's after-route step: received carbons (XEP-0280 §7) for each way a chat message
reaches an account (full JID, bare JID by priority, an absent resource falling back to the
bare JID), and none for messages that are not copied (`<private/>`, headline, stored)."""

from rawxmpp import login, q, xml_str

ACCOUNT_POOL = 8

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"


def message_from(jid):
    return lambda e: e.tag == q("message") and e.get("from") == jid


def carbon_of(msg_id):
    """A `<received/>` carbon wrapping the message `msg_id`."""

    def pred(e):
        if e.tag != q("message"):
            return False
        fwd = e.find(f"{{{NS_CARBONS}}}received/{{{NS_FORWARD}}}forwarded")
        inner = fwd.find(q("message")) if fwd is not None else None
        return inner is not None and inner.get("id") == msg_id

    return pred


async def two_resources(server):
    """Account a with `high` (priority 5) and `low` (priority 1), both with carbons on."""
    a = server.account()
    high = await login(server, a, resource="high", priority=5)
    low = await login(server, a, resource="low", priority=1)
    for c in (high, low):
        resp = await c.iq(f"<enable xmlns='{NS_CARBONS}'/>", type_="set")
        assert resp.get("type") == "result", xml_str(resp)
    return a, high, low


async def close_all(*clients):
    for c in clients:
        await c.close()


async def test_bare_jid_chat_carbon_to_the_other_resource(server):
    a, high, low = await two_resources(server)
    b = await login(server, server.account(), resource="r")
    try:
        await b.send(f"<message to='{a.jid}' type='chat' id='bare1'><body>hi</body></message>")
        got = await high.recv_match(lambda e: e.get("id") == "bare1", what="the message")
        assert got.get("to") == a.jid, xml_str(got)
        carbon = await low.recv_match(carbon_of("bare1"), what="received carbon")
        assert carbon.get("from") == a.jid, xml_str(carbon)
        inner = carbon.find(f".//{{{NS_FORWARD}}}forwarded/{q('message')}")
        assert inner.get("to") == a.jid, xml_str(carbon)
    finally:
        await close_all(high, low, b)


async def test_full_jid_chat_carbon_to_the_other_resource(server):
    a, high, low = await two_resources(server)
    b = await login(server, server.account(), resource="r")
    try:
        await b.send(f"<message to='{low.jid}' type='chat' id='full1'><body>hi</body></message>")
        await low.recv_match(lambda e: e.get("id") == "full1", what="the message")
        await high.recv_match(carbon_of("full1"), what="received carbon")
        # The resource that got the message gets no carbon of it.
        extra = [e for e in await low.expect_silence(0.5) if carbon_of("full1")(e)]
        assert extra == [], [xml_str(e) for e in extra]
    finally:
        await close_all(high, low, b)


async def test_absent_resource_chat_goes_to_bare_with_carbon(server):
    a, high, low = await two_resources(server)
    b = await login(server, server.account(), resource="r")
    try:
        await b.send(
            f"<message to='{a.jid}/gone' type='chat' id='gone1'><body>hi</body></message>"
        )
        got = await high.recv_match(lambda e: e.get("id") == "gone1", what="the message")
        assert got.get("to") == a.jid, xml_str(got)
        await low.recv_match(carbon_of("gone1"), what="received carbon")
    finally:
        await close_all(high, low, b)


async def test_private_and_headline_are_not_copied(server):
    a, high, low = await two_resources(server)
    b = await login(server, server.account(), resource="r")
    try:
        await b.send(
            f"<message to='{a.jid}' type='chat' id='priv1'><body>hi</body>"
            f"<private xmlns='{NS_CARBONS}'/></message>"
        )
        await high.recv_match(lambda e: e.get("id") == "priv1", what="the private message")
        await b.send(f"<message to='{high.jid}' type='headline' id='head1'><body>x</body></message>")
        await high.recv_match(lambda e: e.get("id") == "head1", what="the headline")
        quiet = await low.expect_silence(0.7)
        copies = [e for e in quiet if carbon_of("priv1")(e) or carbon_of("head1")(e)]
        assert copies == [], [xml_str(e) for e in copies]
    finally:
        await close_all(high, low, b)
