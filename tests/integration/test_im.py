"""Stanza routing, presence between own resources, server IQs, resource conflicts
(RFC 6120 8 and 10, RFC 6121 4 and 8, XEP-0030, XEP-0092, XEP-0199), over raw sockets."""

import pytest

from rawxmpp import (
    NS_DISCO_INFO,
    NS_PING,
    NS_VERSION,
    authenticated,
    bound_jid,
    login,
    q,
    stanza_error,
    xml_str,
)

ACCOUNT_POOL = 70

ERROR_TYPES = {"auth", "cancel", "continue", "modify", "wait"}


def is_message(id_=None, from_=None):
    def pred(e):
        return (
            e.tag == q("message")
            and (id_ is None or e.get("id") == id_)
            and (from_ is None or e.get("from") == from_)
        )

    return pred


def is_presence(from_, type_=None):
    return lambda e: e.tag == q("presence") and e.get("from") == from_ and e.get("type") == type_


def body(e):
    b = e.find(q("body"))
    return None if b is None else b.text


async def pair(server, ra="a", rb="b"):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource=ra, label=f"A/{ra}")
    cb = await login(server, b, resource=rb, label=f"B/{rb}")
    return ca, cb


# -- messages --------------------------------------------------------------------


async def test_message_to_full_jid_is_delivered_intact(server):
    ca, cb = await pair(server)
    try:
        await ca.send(
            f"<message to='{cb.jid}' type='chat' id='m1'>"
            "<body>fish &amp; chips &lt;3 &#x41;&#66; \u00e9\u4e2d</body></message>"
        )
        got = await cb.recv_match(is_message("m1"), what="message m1")
        assert got.get("from") == ca.jid, xml_str(got)
        assert got.get("to") == cb.jid, xml_str(got)
        assert got.get("type") == "chat", xml_str(got)
        assert body(got) == "fish & chips <3 AB \u00e9\u4e2d", xml_str(got)
    finally:
        await ca.close()
        await cb.close()


@pytest.mark.parametrize(
    "forged", [None, "mallory@localhost/evil", "{victim}", "localhost"],
    ids=["absent", "other-user", "recipient", "server"],
)
async def test_server_stamps_from_on_messages(server, forged):
    """RFC 6120 8.1.2.1: the server adds or overrides 'from' with the sender's full JID."""
    ca, cb = await pair(server)
    try:
        attr = "" if forged is None else f" from='{forged.format(victim=cb.jid)}'"
        await ca.send(f"<message{attr} to='{cb.jid}' id='f1'><body>who am I</body></message>")
        got = await cb.recv_match(is_message("f1"), what="message f1")
        assert got.get("from") == ca.jid, (
            f"sent with from={forged!r}; delivered with from={got.get('from')!r}, "
            f"expected {ca.jid!r}: {xml_str(got)}"
        )
    finally:
        await ca.close()
        await cb.close()


async def test_server_stamps_from_on_iq_and_directed_presence(server):
    ca, cb = await pair(server)
    try:
        await ca.send(
            f"<iq type='get' id='iqf' from='mallory@localhost/x' to='{cb.jid}'>"
            "<query xmlns='urn:example:q'/></iq>"
        )
        got = await cb.recv_match(lambda e: e.tag == q("iq") and e.get("id") == "iqf", what="iq")
        assert got.get("from") == ca.jid, xml_str(got)
        await ca.send(f"<presence from='mallory@localhost/x' to='{cb.jid}'/>")
        got = await cb.recv_match(
            lambda e: e.tag == q("presence") and e.get("from") != cb.jid, what="directed presence"
        )
        assert got.get("from") == ca.jid, xml_str(got)
    finally:
        await ca.close()
        await cb.close()


async def test_message_to_bare_jid_goes_to_highest_priority_resource(server):
    sender_acct, acct = server.account(), server.account()
    sender = await login(server, sender_acct, resource="s", label="sender")
    hi = await login(server, acct, resource="hi", priority=5, label="hi")
    lo = await login(server, acct, resource="lo", priority=1, label="lo")
    neg = await login(server, acct, resource="neg", priority=-1, label="neg")
    try:
        for c in (hi, lo, neg):
            await c.barrier()  # presence exchange settled
        await sender.send(f"<message to='{acct.jid}' type='chat' id='bare1'><body>x</body></message>")
        got = await hi.recv_match(is_message("bare1"), what="the bare-JID message on prio 5")
        assert got.get("from") == sender.jid, xml_str(got)
        for c in (lo, neg):
            extra = [e for e in c.skipped + await c.expect_silence(1.0) if is_message("bare1")(e)]
            assert not extra, f"{c.label} also received the chat message: {xml_str(extra[0])}"
    finally:
        for c in (sender, hi, lo, neg):
            await c.close()


async def test_headline_to_bare_jid_goes_to_all_non_negative_resources(server):
    """RFC 6121 8.5.2.1.1: headline -> every available resource with priority >= 0."""
    sender_acct, acct = server.account(), server.account()
    sender = await login(server, sender_acct, resource="s", label="sender")
    hi = await login(server, acct, resource="hi", priority=5, label="hi")
    zero = await login(server, acct, resource="zero", priority=0, label="zero")
    neg = await login(server, acct, resource="neg", priority=-1, label="neg")
    try:
        for c in (hi, zero, neg):
            await c.barrier()
        await sender.send(f"<message to='{acct.jid}' type='headline' id='hl1'><body>news</body></message>")
        for c in (hi, zero):
            await c.recv_match(is_message("hl1"), what=f"the headline on {c.label}")
        extra = [e for e in neg.skipped + await neg.expect_silence(1.0) if is_message("hl1")(e)]
        assert not extra, "a resource with negative priority received a bare-JID headline"
    finally:
        for c in (sender, hi, zero, neg):
            await c.close()


async def test_bare_jid_message_skips_negative_priority_only_resource(server):
    sender_acct, acct = server.account(), server.account()
    sender = await login(server, sender_acct, resource="s", label="sender")
    neg = await login(server, acct, resource="neg", priority=-1, label="neg")
    try:
        await neg.barrier()
        await sender.send(f"<message to='{acct.jid}' type='chat' id='neg1'><body>x</body></message>")
        got = [e for e in neg.skipped + await neg.expect_silence(1.5) if is_message("neg1")(e)]
        assert not got, "RFC 6121 8.5.2.1.1: a negative-priority resource got a bare-JID message"
    finally:
        await sender.close()
        await neg.close()


@pytest.mark.parametrize(
    "stanza",
    [
        "<message to='{to}' type='chat' id='{id}'><body>hello?</body></message>",
        "<message to='{to}' id='{id}'><body>hello?</body></message>",
        "<iq to='{to}' type='get' id='{id}'><query xmlns='jabber:iq:version'/></iq>",
    ],
    ids=["chat", "normal", "iq"],
)
async def test_stanza_to_unknown_user_gets_service_unavailable(server, stanza):
    c = await login(server, server.account(), resource="u")
    to = "nobody-here@localhost"
    try:
        await c.send(stanza.format(to=to, id="unk1"))
        err = await c.recv_match(
            lambda e: e.get("id") == "unk1" and e.get("type") == "error", what="an error reply"
        )
        etype, cond = stanza_error(err)
        assert cond == "service-unavailable", xml_str(err)
        assert etype in ERROR_TYPES, f"error type {etype!r}: {xml_str(err)}"
        assert err.get("from") == to, f"error must come from the addressed JID: {xml_str(err)}"
        assert err.get("to") == c.jid, xml_str(err)
    finally:
        await c.close()


async def test_presence_to_unknown_user_is_silently_ignored(server):
    c = await login(server, server.account(), resource="p")
    try:
        await c.send("<presence to='nobody-here@localhost' id='pr1'/>")
        await c.send("<presence to='nobody-here@localhost' type='subscribe' id='pr2'/>")
        await c.barrier()
        errors = [e for e in c.skipped if e.get("type") == "error"]
        assert not errors, f"RFC 6121 8.5.1: presence must be ignored, got {xml_str(errors[0])}"
    finally:
        await c.close()


# -- presence between resources of one account ------------------------------------------


async def test_initial_presence_is_exchanged_between_own_resources(server):
    acct = server.account()
    one = await login(server, acct, resource="one", presence=True, label="one")
    two = await login(server, acct, resource="two", label="two")
    try:
        await one.barrier()
        await two.send("<presence><show>chat</show><status>here</status></presence>")
        got = await one.recv_match(is_presence(two.jid), what="presence of the newcomer")
        assert got.find(q("status")) is not None and got.find(q("status")).text == "here", xml_str(got)
        got = await two.recv_match(is_presence(one.jid), what="presence of the other resource")
        assert got.get("to") in (two.jid, acct.jid), xml_str(got)
    finally:
        await one.close()
        await two.close()


async def test_initial_presence_is_reflected_to_its_own_resource(server):
    """RFC 6121 4.2.2: broadcast to all available resources 'including the resource that
    generated the presence notification'."""
    acct = server.account()
    c = await login(server, acct, resource="solo", label="solo")
    try:
        await c.send("<presence/>")
        await c.recv_match(is_presence(c.jid), what="own initial presence")
    finally:
        await c.close()


@pytest.mark.parametrize("how", ["unavailable-then-close", "close-stream", "tcp-drop"])
async def test_unavailable_presence_when_a_resource_leaves(server, how):
    acct = server.account()
    stay = await login(server, acct, resource="stay", presence=True, label="stay")
    leave = await login(server, acct, resource="leave", presence=True, label="leave")
    try:
        await stay.recv_match(is_presence(leave.jid), what="the leaver's initial presence")
        if how == "unavailable-then-close":
            await leave.send("<presence type='unavailable'/>")
            await leave.close()
        elif how == "close-stream":
            await leave.close()
        else:
            leave.abort()
        got = await stay.recv_match(
            is_presence(leave.jid, "unavailable"), timeout=10, what="unavailable presence"
        )
        assert got.get("from") == leave.jid, xml_str(got)
    finally:
        await stay.close()
        leave.abort()


# -- IQs to the server ----------------------------------------------------------------


async def test_ping_server(server):
    c = await login(server, server.account(), resource="ping")
    try:
        resp = await c.ping()
        assert resp.get("type") == "result", xml_str(resp)
        assert resp.get("from") == "localhost", xml_str(resp)
        assert resp.get("to") in (c.jid, None), xml_str(resp)
    finally:
        await c.close()


async def test_disco_info_on_server(server):
    c = await login(server, server.account(), resource="disco")
    try:
        resp = await c.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to="localhost")
        assert resp.get("type") == "result", xml_str(resp)
        query = resp.find(f"{{{NS_DISCO_INFO}}}query")
        assert query is not None, xml_str(resp)
        identities = query.findall(f"{{{NS_DISCO_INFO}}}identity")
        assert identities, f"XEP-0030: every entity MUST have an identity: {xml_str(resp)}"
        for ident in identities:
            assert ident.get("category") and ident.get("type"), xml_str(ident)
        features = {f.get("var") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")}
        for needed in (NS_DISCO_INFO, NS_PING, NS_VERSION):
            assert needed in features, f"{needed} missing from disco#info features {sorted(features)}"
        # XEP-0160: a server that stores offline messages advertises it.
        assert "msgoffline" in features, f"msgoffline missing from {sorted(features)}"
    finally:
        await c.close()


async def test_software_version_of_server(server):
    c = await login(server, server.account(), resource="ver")
    try:
        resp = await c.iq(f"<query xmlns='{NS_VERSION}'/>", to="localhost")
        assert resp.get("type") == "result", xml_str(resp)
        query = resp.find(f"{{{NS_VERSION}}}query")
        assert query is not None, xml_str(resp)
        name, version = query.find(f"{{{NS_VERSION}}}name"), query.find(f"{{{NS_VERSION}}}version")
        assert name is not None and (name.text or "").strip(), xml_str(resp)
        assert version is not None and (version.text or "").strip(), xml_str(resp)
    finally:
        await c.close()


@pytest.mark.parametrize("to", ["localhost", "own-bare", "other-bare"])
@pytest.mark.parametrize("type_", ["get", "set"])
async def test_iq_with_unknown_namespace_gets_service_unavailable(server, type_, to):
    """To the server, or to a bare JID (which the server answers on the account's
    behalf, RFC 6121 8.5.2.1.3 / 8.5.1): an unhandled namespace -> service-unavailable."""
    acct = server.account()
    c = await login(server, acct, resource="ns")
    to = {"localhost": "localhost", "own-bare": acct.jid, "other-bare": server.account().jid}[to]
    try:
        resp = await c.iq("<query xmlns='urn:example:nothing-handles-this'/>", type_=type_, to=to)
        assert resp.get("type") == "error", xml_str(resp)
        etype, cond = stanza_error(resp)
        assert cond == "service-unavailable", xml_str(resp)
        assert etype in ERROR_TYPES, xml_str(resp)
    finally:
        await c.close()


@pytest.mark.parametrize(
    "type_,payload",
    [
        (None, f"<ping xmlns='{NS_PING}'/>"),
        ("bogus", f"<ping xmlns='{NS_PING}'/>"),
        ("get", ""),
        ("get", f"<ping xmlns='{NS_PING}'/><query xmlns='{NS_VERSION}'/>"),
    ],
    ids=["type-missing", "type-bogus", "get-without-child", "get-with-two-children"],
)
async def test_malformed_iq_gets_bad_request(server, type_, payload):
    c = await login(server, server.account(), resource="bad")
    try:
        resp = await c.iq(payload, type_=type_, to="localhost")
        assert resp.get("type") == "error", xml_str(resp)
        etype, cond = stanza_error(resp)
        assert cond == "bad-request", xml_str(resp)
        assert etype in ERROR_TYPES, xml_str(resp)
    finally:
        await c.close()


async def test_iq_result_to_server_is_not_answered(server):
    """RFC 6120 8.2.3: a result/error IQ MUST NOT be answered."""
    c = await login(server, server.account(), resource="res")
    try:
        await c.send("<iq type='result' id='stray1' to='localhost'/>")
        await c.send("<iq type='error' id='stray2' to='localhost'><error type='cancel'>"
                     "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        await c.barrier()
        replies = [e for e in c.skipped if e.get("id") in ("stray1", "stray2")]
        assert not replies, f"server answered a result/error IQ: {xml_str(replies[0])}"
    finally:
        await c.close()


# -- resource conflicts -------------------------------------------------------------


async def test_resource_conflict_replace_kicks_old_session(server):
    acct, other = server.account(), server.account()
    old = await login(server, acct, resource="same", presence=True, label="old")
    new = await login(server, acct, resource="same", label="new")
    peer = await login(server, other, resource="peer", label="peer")
    try:
        assert new.jid == f"{acct.jid}/same", new.jid
        cond = await old.expect_stream_error()
        assert cond == "conflict", f"old session got <{cond}/>, expected <conflict/>\n{old.describe()}"
        await old.expect_closed()
        resp = await new.ping()
        assert resp.get("type") == "result"
        await peer.send(f"<message to='{acct.jid}/same' id='after'><body>to the new one</body></message>")
        got = await new.recv_match(is_message("after"), what="message to the replaced resource")
        assert got.get("from") == peer.jid
    finally:
        for c in (old, new, peer):
            await c.close()


async def test_resource_conflict_reject_refuses_new_bind(make_server):
    """resource_conflict = "reject": the new bind gets a <conflict/> stanza error
    (RFC 6120 7.7.2.2), the existing session is untouched, the newcomer may retry."""
    srv = make_server({"c2s": {"resource_conflict": "reject"}}, accounts=1)
    acct = srv.account()
    old = await login(srv, acct, resource="same", label="old")
    new = await authenticated(srv, acct, label="new")
    try:
        resp = await new.bind("same")
        assert resp.get("type") == "error", f"second bind of the same resource: {xml_str(resp)}"
        etype, cond = stanza_error(resp)
        assert cond == "conflict", xml_str(resp)
        assert etype in ERROR_TYPES, xml_str(resp)
        resp = await old.ping()
        assert resp.get("type") == "result", "the existing session was disturbed"
        assert not [e for e in old.skipped if e.tag.endswith("}error")], old.describe()
        resp = await new.bind("other")
        assert bound_jid(resp) == f"{acct.jid}/other", xml_str(resp)
    finally:
        await old.close()
        await new.close()


# -- more routing rules ---------------------------------------------------------------


async def test_error_stanza_to_unknown_user_is_not_answered(server):
    """RFC 6120 8.3.1: an entity MUST NOT respond to an error stanza with another error."""
    c = await login(server, server.account(), resource="e")
    try:
        await c.send(
            "<message to='nobody-here@localhost' type='error' id='err1'><error type='cancel'>"
            "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )
        await c.barrier()
        replies = [e for e in c.skipped if e.get("id") == "err1"]
        assert not replies, f"an error stanza was answered: {xml_str(replies[0])}"
    finally:
        await c.close()


async def test_iq_to_unavailable_full_jid_gets_service_unavailable(server):
    """RFC 6121 8.5.3.2.1: IQ to a full JID with no such session -> service-unavailable."""
    ca, cb = await pair(server)
    try:
        ghost = f"{cb.jid.split('/')[0]}/no-such-resource"
        resp = await ca.iq("<ping xmlns='urn:xmpp:ping'/>", to=ghost)
        assert resp.get("type") == "error", xml_str(resp)
        assert stanza_error(resp)[1] == "service-unavailable", xml_str(resp)
        assert resp.get("from") == ghost, xml_str(resp)
        leaked = [e for e in await cb.expect_silence(0.3) if e.tag == q("iq")]
        assert not leaked, f"IQ to another resource was delivered to {cb.jid}: {xml_str(leaked[0])}"
    finally:
        await ca.close()
        await cb.close()


async def test_iq_between_clients_round_trip(server):
    ca, cb = await pair(server)
    try:
        await ca.send(f"<iq type='get' id='c2c' to='{cb.jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
        req = await cb.recv_match(lambda e: e.tag == q("iq") and e.get("id") == "c2c", what="the iq")
        assert req.get("from") == ca.jid and req.get("type") == "get", xml_str(req)
        await cb.send(f"<iq type='result' id='c2c' to='{ca.jid}'/>")
        resp = await ca.recv_match(lambda e: e.tag == q("iq") and e.get("id") == "c2c", what="the result")
        assert resp.get("type") == "result" and resp.get("from") == cb.jid, xml_str(resp)
    finally:
        await ca.close()
        await cb.close()


async def test_jid_addresses_are_normalized(server):
    """RFC 7622: localpart (UsernameCaseMapped) and domainpart compare case-insensitively."""
    ca, cb = await pair(server, rb="Res")
    try:
        local, rest = cb.jid.split("@", 1)
        shouted = f"{local.upper()}@{rest.split('/')[0].upper()}/Res"
        await ca.send(f"<message to='{shouted}' type='chat' id='norm'><body>hi</body></message>")
        got = await cb.recv_match(is_message("norm"), what=f"the message sent to {shouted}")
        assert got.get("from") == ca.jid, xml_str(got)
    finally:
        await ca.close()
        await cb.close()


async def test_message_to_offline_account_is_stored_or_refused(server):
    """RFC 6121 8.5.2.2.1: chat to an account with no available resource -> stored for
    later delivery or <service-unavailable/>; never silently lost."""
    sender_acct, offline_acct = server.account(), server.account()
    c = await login(server, sender_acct, resource="s")
    try:
        await c.send(f"<message to='{offline_acct.jid}' type='chat' id='off1'><body>later</body></message>")
        replies = [e for e in await c.expect_silence(1.0) if e.get("id") == "off1"]
        if replies:
            assert stanza_error(replies[0])[1] == "service-unavailable", xml_str(replies[0])
            return
        later = await login(server, offline_acct, resource="back", presence=True, label="returning")
        try:
            await later.recv_match(is_message("off1"), timeout=5, what="the stored message")
        finally:
            await later.close()
    finally:
        await c.close()


async def test_large_stanza_below_limit_is_delivered(server):
    ca, cb = await pair(server)
    try:
        text = "0123456789abcdef" * 12000  # 192 000 bytes < max_stanza_bytes (262144)
        await ca.send(f"<message to='{cb.jid}' id='large'><body>{text}</body></message>")
        got = await cb.recv_match(is_message("large"), what="the 192 kB message")
        assert body(got) == text
    finally:
        await ca.close()
        await cb.close()


async def test_incremental_parsing_byte_by_byte_and_whitespace_keepalive(server):
    """Stanzas may arrive in any fragmentation (even inside a UTF-8 sequence); whitespace
    between stanzas is a keepalive (RFC 6120 4.6.1)."""
    ca, cb = await pair(server)
    try:
        raw = f"  \n<message to='{cb.jid}' id='frag'><body>\u00e9\u4e2d\U0001f600</body></message>\n ".encode()
        for i in range(len(raw)):
            await ca.send(raw[i : i + 1])
        got = await cb.recv_match(is_message("frag"), what="the fragmented message")
        assert body(got) == "\u00e9\u4e2d\U0001f600", xml_str(got)
        two = (
            f"<message to='{cb.jid}' id='two-a'><body>a</body></message>"
            f"<message to='{cb.jid}' id='two-b'><body>b</body></message>"
        )
        await ca.send(two)
        await cb.recv_match(is_message("two-a"), what="first of two")
        await cb.recv_match(is_message("two-b"), what="second of two")
    finally:
        await ca.close()
        await cb.close()


# -- RFC 6121 8.5.3.2.1: a full JID whose resource is not online ------------------------


@pytest.mark.parametrize("type_", ["normal", None], ids=["normal", "no-type"])
async def test_normal_message_to_absent_resource_is_bounced_not_redirected(server, type_):
    """RFC 6121 8.5.3.2.1: a normal message (also one without a type, 5.2.2) to a full JID
    with no such resource is ignored or answered service-unavailable, never delivered to
    another resource (nor stored). We answer, so the sender learns the resource is gone."""
    ca, cb = await pair(server, rb="here")
    try:
        gone = f"{cb.jid.split('/')[0]}/gone"
        t = f" type='{type_}'" if type_ else ""
        await ca.send(f"<message to='{gone}'{t} id='abs-n'><body>for gone</body></message>")
        err = await ca.recv_match(lambda e: e.get("id") == "abs-n", what="the bounce")
        assert err.get("type") == "error", xml_str(err)
        assert stanza_error(err)[1] == "service-unavailable", xml_str(err)
        assert err.get("from") == gone, f"RFC 6120 8.3.1: from the addressee: {xml_str(err)}"
        leaked = [e for e in await cb.expect_silence(0.4) if e.tag == q("message")]
        assert not leaked, f"delivered to another resource: {xml_str(leaked[0])}"
    finally:
        await ca.close()
        await cb.close()


async def test_headline_to_absent_resource_is_silently_ignored(server):
    """RFC 6121 8.5.3.2.1: a headline to a full JID with no such resource: not delivered to
    another resource, no error either."""
    ca, cb = await pair(server, rb="here")
    try:
        await cb.send_presence()
        gone = f"{cb.jid.split('/')[0]}/gone"
        await ca.send(f"<message to='{gone}' type='headline' id='abs-h'><body>news</body></message>")
        await ca.barrier()
        answered = [e for e in ca.skipped if e.get("id") == "abs-h"]
        assert not answered, f"a headline was answered: {xml_str(answered[0])}"
        leaked = [e for e in await cb.expect_silence(0.4) if e.get("id") == "abs-h"]
        assert not leaked, f"delivered to another resource: {xml_str(leaked[0])}"
    finally:
        await ca.close()
        await cb.close()


async def test_chat_to_absent_resource_goes_to_the_available_resource(server):
    """RFC 6121 8.5.3.2.1: a chat to a gone resource is treated as if sent to the bare JID
    (the contrast to the two tests above)."""
    ca, cb = await pair(server, rb="here")
    try:
        await cb.send_presence()
        gone = f"{cb.jid.split('/')[0]}/gone"
        await ca.send(f"<message to='{gone}' type='chat' id='abs-c'><body>hi</body></message>")
        got = await cb.recv_match(is_message("abs-c"), what="the chat for the gone resource")
        assert got.get("from") == ca.jid, xml_str(got)
    finally:
        await ca.close()
        await cb.close()


# -- RFC 6121 8.5.1 vs 8.5.2 / 8.5.3: no user enumeration -------------------------------

# Stanzas whose answer the RFC lets be the same for an account that does not exist and for
# one that exists with no resource online. {to} is the addressee (bare or full JID).
ENUMERATION_PROBES = {
    "headline-bare": ("bare", "<message to='{to}' type='headline' id='{id}'><body>x</body></message>"),
    "headline-full": ("full", "<message to='{to}' type='headline' id='{id}'><body>x</body></message>"),
    "normal-full": ("full", "<message to='{to}' type='normal' id='{id}'><body>x</body></message>"),
    "notype-full": ("full", "<message to='{to}' id='{id}'><body>x</body></message>"),
    "groupchat-bare": ("bare", "<message to='{to}' type='groupchat' id='{id}'><body>x</body></message>"),
    "error-bare": ("bare", "<message to='{to}' type='error' id='{id}'><error type='cancel'>"
                   "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
    "iq-version-bare": ("bare", "<iq to='{to}' type='get' id='{id}'><query xmlns='jabber:iq:version'/></iq>"),
    "iq-version-full": ("full", "<iq to='{to}' type='get' id='{id}'><query xmlns='jabber:iq:version'/></iq>"),
    "iq-ping-full": ("full", "<iq to='{to}' type='get' id='{id}'><ping xmlns='urn:xmpp:ping'/></iq>"),
    # XEP-0054 3.3: "the same error condition in both cases".
    "iq-vcard-bare": ("bare", "<iq to='{to}' type='get' id='{id}'><vCard xmlns='vcard-temp'/></iq>"),
    "iq-result-bare": ("bare", "<iq to='{to}' type='result' id='{id}'/>"),
    "iq-result-full": ("full", "<iq to='{to}' type='result' id='{id}'/>"),
    "probe-bare": ("bare", "<presence to='{to}' type='probe' id='{id}'/>"),
    "subscribe-bare": ("bare", "<presence to='{to}' type='subscribe' id='{id}'/>"),
    "directed-full": ("full", "<presence to='{to}' id='{id}'/>"),
}


def reply_shape(replies, addressee):
    """What a sender can observe of the answers to one stanza: (kind, type, condition,
    error type, whether it came from the addressee) for each."""
    shapes = []
    for r in replies:
        etype, cond = stanza_error(r) if r.get("type") == "error" else (None, None)
        shapes.append((r.tag, r.get("type"), cond, etype, r.get("from") == addressee))
    return shapes


@pytest.mark.parametrize("probe", sorted(ENUMERATION_PROBES))
async def test_unknown_and_offline_accounts_answer_alike(server, probe):
    """RFC 6121 8.5.1 (no such account) against 8.5.2.2 / 8.5.3.2 (an account with no
    resource online): wherever the RFC allows the same treatment, the sender gets the same
    answer (same condition and type, from the addressed JID) or the same silence; and the
    answers take the same way through the node (an IQ in a namespace the account's shard
    answers goes there for both). What necessarily differs, and is not probed: a chat or
    normal message to the bare JID is stored for an existing account."""
    where, template = ENUMERATION_PROBES[probe]
    sender = await login(server, server.account(), resource="enum")
    offline = server.account()  # exists, never logs in, has no vCard
    try:
        shapes = {}
        for label, local in (("unknown", "nobody-enum"), ("offline", offline.local)):
            to = f"{local}@localhost" + ("/somewhere" if where == "full" else "")
            id_ = f"{probe}-{label}"
            await sender.send(template.format(to=to, id=id_))
            await sender.barrier()
            replies = [e for e in sender.skipped + await sender.expect_silence(0.3)
                       if e.get("id") == id_]
            sender.skipped = []
            shapes[label] = reply_shape(replies, to)
        assert shapes["unknown"] == shapes["offline"], (
            f"{probe}: an unknown account answers {shapes['unknown']}, "
            f"an existing offline one {shapes['offline']}")
        for kind, type_, cond, _, from_addressee in shapes["unknown"]:
            assert type_ == "error" and cond == "service-unavailable" and from_addressee, (
                f"{probe}: {shapes['unknown']}")
    finally:
        await sender.close()
