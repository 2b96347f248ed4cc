"""XEP-0033 per-domain presence between two Switchboard nodes (issue 22: "presence packets
should be per domain instead of per contact"), and multicast from a local client.

A's user has three contacts on B. Once A has learnt from B's disco#info that B supports
XEP-0033, a presence change goes to B as one stanza with three bcc addresses, and B copies
it only to the contacts whose own roster is subscribed to the sender: the rosters are made
to disagree (b3 has no subscription on B's side), so a B that copied blindly would fail the
test."""

from __future__ import annotations

import asyncio

from federation import SB_ADDR, Client, bodies, presences_from, wait_until
from test_federation_links import A, B, bare, pair  # noqa: F401  (the fixture)
from test_metrics import scrape, value

ADDRESS = "{http://jabber.org/protocol/address}addresses"


async def connect(srv, acc) -> Client:
    return await Client(f"{acc.jid}/r", acc.password, SB_ADDR, srv.c2s_port).start()


def multicast(srv, event: str) -> float:
    return value(scrape(srv), "switchboard_multicast_total", event=event) or 0


def statuses(c: Client, frm: str) -> list[str]:
    return [p["status"] for p in presences_from(c, frm)]


async def test_presence_goes_once_per_domain_and_only_to_subscribed_contacts(pair):  # noqa: F811
    na, nb = pair()
    a_acc = na.account()
    b_accs = [nb.account() for _ in range(3)]
    a_jid = a_acc.jid
    b1, b2, b3 = (acc.jid for acc in b_accs)
    # Rosters without the handshake: A's user shares presence with all three; on B only
    # b1 and b2 are subscribed to it.
    r = na.cli("roster", "import", "-", input="".join(f"{a_jid} {b} both\n" for b in (b1, b2, b3)))
    assert r.returncode == 0, r.stderr
    r = nb.cli("roster", "import", "-", input=f"{b1} {a_jid} both\n{b2} {a_jid} both\n")
    assert r.returncode == 0, r.stderr
    clients = [await connect(nb, acc) for acc in b_accs]
    a = await connect(na, a_acc)
    try:
        # Until B has answered A's disco#info, presence goes per contact (b3 too).
        await wait_until(lambda: all(statuses(c, a_jid) for c in clients[:2]), 20,
                         "the first presence per contact")
        n = 0
        while multicast(na, "sent") == 0:
            n += 1
            assert n < 100, "A never sent a per-domain presence"
            a.xmpp.send_presence(pstatus=f"probe-{n}")
            await asyncio.sleep(0.2)
        sent_before = multicast(na, "sent")
        copies_before = multicast(nb, "copies")
        refused_before = multicast(nb, "not_subscribed")
        a.xmpp.send_presence(pstatus="per-domain")
        await wait_until(lambda: all("per-domain" in statuses(c, a_jid) for c in clients[:2]), 20,
                         "the per-domain presence at b1 and b2")
        await wait_until(lambda: multicast(nb, "not_subscribed") > refused_before, 20,
                         "B refusing the copy for b3")
        # One stanza for three contacts; three copies made at B, b3's not delivered.
        assert multicast(na, "sent") == sent_before + 1
        assert multicast(nb, "copies") == copies_before + 3
        await asyncio.sleep(0.5)
        assert "per-domain" not in statuses(clients[2], a_jid), "b3 is not subscribed on B"
        for c in clients[:2]:
            got = [p for p in presences_from(c, a_jid) if p["status"] == "per-domain"]
            assert len(got) == 1, got
            # bcc: no contact learns the others; the copy is addressed to it and from a.
            assert got[0].xml.find(ADDRESS) is None
            assert got[0]["to"].bare == c.jid.split("/")[0]
            assert str(got[0]["from"]) == f"{a_jid}/r"
        # Going offline is a presence change too (b1 and b2 may have had an unavailable
        # presence of a's before: the answer to their probes at login).
        gone = [len(presences_from(c, a_jid, "unavailable")) for c in clients]
        await a.stop()
        await wait_until(lambda: all(len(presences_from(c, a_jid, "unavailable")) > n
                                     for c, n in zip(clients[:2], gone)),
                         20, "the unavailable presence at b1 and b2")
        assert multicast(na, "sent") == sent_before + 2
        await asyncio.sleep(0.5)
        assert len(presences_from(clients[2], a_jid, "unavailable")) == gone[2]
    finally:
        for c in clients:
            await c.stop()
        await a.stop()


async def test_a_local_client_multicasts_a_message(pair):  # noqa: F811
    na, nb = pair()
    accs = [nb.account() for _ in range(3)]
    remote = na.account()
    sender, c1, c2 = [await connect(nb, acc) for acc in accs]
    r = await connect(na, remote)
    try:
        m = sender.xmpp.make_message(mto=B, mbody="to all", mtype="chat")
        addresses = m.xml.makeelement(ADDRESS, {})
        for kind, jid in (("to", accs[1].jid), ("bcc", accs[2].jid), ("cc", remote.jid)):
            addresses.append(addresses.makeelement(
                "{http://jabber.org/protocol/address}address", {"type": kind, "jid": jid}))
        m.xml.append(addresses)
        m.send()
        await wait_until(lambda: all("to all" in bodies(c) for c in (c1, c2, r)), 20,
                         "the copies at both local addressees and over s2s")
        for c in (c1, c2, r):
            got = next(x for x in c.messages if x["body"] == "to all")
            assert str(got["from"]) == f"{accs[0].jid}/r"
            found = got.xml.find(ADDRESS)
            kinds = sorted((a.get("type"), a.get("delivered")) for a in found)
            # §6: the visible addresses marked delivered, the bcc one gone.
            assert kinds == [("cc", "true"), ("to", "true")], kinds
        # Each got one copy (A did not copy it again: its addresses were delivered).
        await asyncio.sleep(0.5)
        assert [b for b in bodies(r) if b == "to all"] == ["to all"]
    finally:
        for c in (sender, c1, c2, r):
            await c.stop()


async def test_too_many_addresses_are_refused(pair):  # noqa: F811
    na, nb = pair()
    nb.config.setdefault("modules", {})["multicast"] = {"max_addresses": 2}
    from federation import render_toml_nested

    nb.stop()
    nb.config_path.write_text(render_toml_nested(nb.config))
    nb.start()
    accs = [nb.account() for _ in range(4)]
    sender, *others = [await connect(nb, acc) for acc in accs]
    try:
        m = sender.xmpp.make_message(mto=B, mbody="too many", mtype="chat")
        addresses = m.xml.makeelement(ADDRESS, {})
        for acc in accs[1:]:
            addresses.append(addresses.makeelement(
                "{http://jabber.org/protocol/address}address", {"type": "to", "jid": acc.jid}))
        m.xml.append(addresses)
        m.send()
        await wait_until(lambda: any(x["type"] == "error" for x in sender.messages), 20,
                         "the error")
        err = next(x for x in sender.messages if x["type"] == "error")
        assert err["error"]["condition"] == "not-acceptable"
        await asyncio.sleep(0.5)
        assert not any("too many" in bodies(c) for c in others)
    finally:
        for c in (sender, *others):
            await c.stop()
