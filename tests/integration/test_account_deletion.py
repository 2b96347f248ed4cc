"""Deleting an account (`switchboard user del`, node running) removes everything stored for
it: a new account with the same name starts with an empty roster, no offline messages, no
blocklist and no vCard."""

from rawxmpp import login, q, xml_str

ACCOUNT_POOL = 4


async def test_deleted_account_leaves_nothing_behind(server):
    a, b = server.account(), server.account()
    ca = await login(server, a)
    await ca.iq(
        f"<query xmlns='jabber:iq:roster'><item jid='{b.jid}' name='B'/></query>", type_="set"
    )
    await ca.iq("<block xmlns='urn:xmpp:blocking'><item jid='x@elsewhere'/></block>", type_="set")
    await ca.iq("<vCard xmlns='vcard-temp'><FN>Old</FN></vCard>", type_="set")
    await ca.close()
    cb = await login(server, b)
    try:
        await cb.send(f"<message to='{a.jid}' type='chat' id='o1'><body>stored</body></message>")
        await cb.barrier()

        r = server.cli("user", "del", a.jid)
        assert r.returncode == 0, r.stderr
        r = server.cli("user", "add", a.jid, "--password", a.password)
        assert r.returncode == 0, r.stderr

        ca = await login(server, a)
        roster = await ca.iq("<query xmlns='jabber:iq:roster'/>")
        assert roster.find(q("query", "jabber:iq:roster")).findall(q("item", "jabber:iq:roster")) == [], xml_str(roster)
        bl = await ca.iq("<blocklist xmlns='urn:xmpp:blocking'/>")
        assert list(bl.find("{urn:xmpp:blocking}blocklist")) == [], xml_str(bl)
        vc = await ca.iq("<vCard xmlns='vcard-temp'/>")
        assert vc.find("{vcard-temp}vCard/{vcard-temp}FN") is None, xml_str(vc)
        await ca.send_presence()
        stale = [e for e in await ca.expect_silence(0.7) if e.get("id") == "o1"]
        assert stale == [], [xml_str(e) for e in stale]
        await ca.close()
    finally:
        await cb.close()
