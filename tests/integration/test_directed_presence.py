"""Directed presence (RFC 6121 §4.6): an entity that got directed presence from a resource
learns when that resource goes unavailable, by unavailable presence or by disconnecting."""

from rawxmpp import login, q, xml_str

ACCOUNT_POOL = 8


def presence_from(jid, type_=None):
    return lambda e: e.tag == q("presence") and e.get("from") == jid and e.get("type") == type_


async def test_directed_presence_target_learns_of_unavailable(server):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource="r")
    cb = await login(server, b, resource="r")
    try:
        await ca.send_presence()
        await ca.send(f"<presence to='{cb.jid}'><show>chat</show></presence>")
        got = await cb.recv_match(presence_from(ca.jid), what="directed presence")
        assert got.findtext(q("show")) == "chat", xml_str(got)
        # a and b have no subscription: only the directed presence makes b hear of a going.
        await ca.send("<presence type='unavailable'/>")
        gone = await cb.recv_match(presence_from(ca.jid, "unavailable"), what="unavailable")
        assert gone.get("to") == cb.jid, xml_str(gone)
    finally:
        await ca.close()
        await cb.close()


async def test_directed_presence_target_learns_of_disconnect(server):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource="r")
    cb = await login(server, b, resource="r")
    try:
        await ca.send(f"<presence to='{cb.jid}'/>")
        await cb.recv_match(presence_from(ca.jid), what="directed presence")
        ca.abort()
        await cb.recv_match(presence_from(ca.jid, "unavailable"), what="unavailable on disconnect")
    finally:
        await cb.close()


async def test_directed_unavailable_ends_tracking(server):
    a, b = server.account(), server.account()
    ca = await login(server, a, resource="r")
    cb = await login(server, b, resource="r")
    try:
        await ca.send(f"<presence to='{cb.jid}'/>")
        await cb.recv_match(presence_from(ca.jid), what="directed presence")
        await ca.send(f"<presence to='{cb.jid}' type='unavailable'/>")
        await cb.recv_match(presence_from(ca.jid, "unavailable"), what="directed unavailable")
        await ca.close()
        again = [e for e in await cb.expect_silence(0.7) if e.get("from") == ca.jid]
        assert again == [], [xml_str(e) for e in again]
    finally:
        await cb.close()
