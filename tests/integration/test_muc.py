"""Group chat (XEP-0045) on one node: the service on conference.localhost and its rooms.
Raw clients check the exact stanzas and status codes (join order §7.2, 110 last, subject
after history, reflection with the same id, errors of §7.2.6–§7.2.10), and slixmpp's
`xep_0045` joins and chats as a real client would. Rooms live in the account shard of
their bare JID; test_muc_cluster.py checks them across nodes and a `kill -9`."""

from __future__ import annotations

import asyncio
import time

import slixmpp

from rawxmpp import bare, login, make_ssl_context, new_id, q, stanza_error, xml_str

ACCOUNT_POOL = 40

SERVICE = "conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_ADMIN = NS_MUC + "#admin"
NS_OWNER = NS_MUC + "#owner"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DATA = "jabber:x:data"
NS_SID = "urn:xmpp:sid:0"
NS_OID = "urn:xmpp:occupant-id:0"
NS_DELAY = "urn:xmpp:delay"
NS_PING = "urn:xmpp:ping"
NS_CONFERENCE = "jabber:x:conference"


def room_jid(tag: str) -> str:
    return f"{tag}-{new_id('r').lower()}@{SERVICE}"


def codes(el) -> list[str]:
    x = el.find(f"{{{NS_USER}}}x")
    if x is None:
        return []
    return [s.get("code") for s in x.findall(f"{{{NS_USER}}}status")]


def item(el):
    x = el.find(f"{{{NS_USER}}}x")
    return None if x is None else x.find(f"{{{NS_USER}}}item")


def is_subject(room: str):
    return lambda e: (
        e.tag == q("message")
        and e.find(q("subject")) is not None
        and bare(e.get("from", "")) == room
    )


async def join(c, room: str, nick: str, x: str = "", expect_error: bool = False):
    """Send a join and collect what the room sends up to the subject (or the error)."""
    await c.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{x}</x></presence>")
    got = []
    while True:
        el = await c.recv(timeout=10)
        if el.get("from", "").split("/")[0] != room:
            c.skipped.append(el)
            continue
        got.append(el)
        if el.get("type") == "error" or is_subject(room)(el):
            return got
        if expect_error and el.tag == q("presence") and "110" in codes(el):
            return got


async def instant(c, room: str) -> None:
    r = await c.iq(
        f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)


async def configure(c, room: str, **fields) -> None:
    body = "".join(
        f"<field var='muc#roomconfig_{k}'><value>{v}</value></field>" for k, v in fields.items()
    )
    r = await c.iq(
        f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{NS_MUC}#roomconfig</value></field>{body}</x></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)


async def new_room(server, tag: str, **config):
    """An owner online in a new, configured room: (owner client, room JID)."""
    owner = await login(server, server.account(), resource="o", presence=True)
    room = room_jid(tag)
    got = await join(owner, room, "owner")
    assert codes(got[0]) == ["201", "110"], xml_str(got[0])
    if config:
        await configure(owner, room, **config)
    else:
        await instant(owner, room)
    return owner, room


async def groupchat(c, room: str, body: str, msg_id: str | None = None) -> str:
    msg_id = msg_id or new_id("m")
    await c.send(f"<message to='{room}' type='groupchat' id='{msg_id}'><body>{body}</body></message>")
    return msg_id


def is_groupchat(body: str):
    return lambda e: (
        e.tag == q("message") and e.get("type") == "groupchat" and e.findtext(q("body")) == body
    )


async def test_service_is_discoverable(server):
    c = await login(server, server.account(), presence=True)
    items = await c.iq(f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=server.domain)
    jids = [i.get("jid") for i in items.iter(f"{{{NS_DISCO_ITEMS}}}item")]
    assert SERVICE in jids, xml_str(items)
    info = await c.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=SERVICE)
    ident = info.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
    assert (ident.get("category"), ident.get("type")) == ("conference", "text"), xml_str(info)
    feats = [f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")]
    assert NS_MUC in feats and NS_OID in feats
    pong = await c.iq(f"<ping xmlns='{NS_PING}'/>", to=SERVICE)
    assert pong.get("type") == "result"
    # A room that does not exist.
    r = await c.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room_jid("none"))
    assert stanza_error(r)[1] == "item-not-found", xml_str(r)
    await c.close()


async def test_create_join_chat_leave(server):
    owner = await login(server, server.account(), resource="o", presence=True)
    room = room_jid("basic")
    got = await join(owner, room, "owner")
    self_p = got[0]
    assert codes(self_p) == ["201", "110"], xml_str(self_p)
    it = item(self_p)
    assert (it.get("affiliation"), it.get("role")) == ("owner", "moderator")
    assert self_p.find(f"{{{NS_OID}}}occupant-id") is not None
    # Locked until configured (§10.1.1).
    other = await login(server, server.account(), resource="b", presence=True)
    err = await join(other, room, "bob")
    assert stanza_error(err[-1])[1] == "item-not-found", xml_str(err[-1])
    await instant(owner, room)

    got = await join(other, room, "bob")
    # §7.2.3: the owner's presence, then bob's own with 110, then the subject.
    assert [e.get("from") for e in got] == [f"{room}/owner", f"{room}/bob", room], [
        xml_str(e) for e in got
    ]
    assert codes(got[1]) == ["110"] and item(got[1]).get("role") == "participant"
    assert got[2].findtext(q("subject")) == ""
    # Semi-anonymous: bob sees no real JIDs; the owner, a moderator, does.
    assert item(got[0]).get("jid") is None
    seen = await owner.expect(lambda e: e.get("from") == f"{room}/bob", what="bob's presence")
    assert item(seen).get("jid") == other.jid and codes(seen) == []
    oid = seen.find(f"{{{NS_OID}}}occupant-id").get("id")
    assert oid == got[1].find(f"{{{NS_OID}}}occupant-id").get("id")

    # Reflected to everyone, the sender included, with its id (§7.4), a room stanza-id
    # (XEP-0359) and the occupant id (XEP-0421).
    mid = await groupchat(other, room, "hello all")
    for c in (owner, other):
        m = await c.expect(is_groupchat("hello all"), what="the reflected message")
        assert m.get("id") == mid and m.get("from") == f"{room}/bob", xml_str(m)
        sid = m.find(f"{{{NS_SID}}}stanza-id")
        assert sid is not None and sid.get("by") == room
        assert m.find(f"{{{NS_OID}}}occupant-id").get("id") == oid

    # A non-occupant may not speak (§7.4).
    stranger = await login(server, server.account(), presence=True)
    await groupchat(stranger, room, "let me in")
    e = await stranger.expect(lambda e: e.get("type") == "error", what="not-acceptable")
    assert stanza_error(e)[1] == "not-acceptable"

    # Leaving (§7.14): unavailable to all, 110 to itself.
    await other.send(f"<presence to='{room}/bob' type='unavailable'/>")
    p = await other.expect(lambda e: e.get("type") == "unavailable", what="own unavailable")
    assert codes(p) == ["110"]
    p = await owner.expect(lambda e: e.get("type") == "unavailable", what="bob left")
    assert p.get("from") == f"{room}/bob"
    for c in (owner, other, stranger):
        await c.close()


async def test_nick_conflict_password_members_only(server):
    owner, room = await new_room(server, "locks")
    alice = await login(server, server.account(), resource="a", presence=True)
    err = await join(alice, room, "owner")
    assert stanza_error(err[-1])[1] == "conflict", xml_str(err[-1])
    err_el = err[-1]
    assert err_el.tag == q("presence") and err_el.get("from") == f"{room}/owner"

    await configure(owner, room, passwordprotectedroom=1, roomsecret="sesame")
    err = await join(alice, room, "alice")
    assert stanza_error(err[-1])[1] == "not-authorized", xml_str(err[-1])
    got = await join(alice, room, "alice", x="<password>sesame</password>")
    assert "110" in codes(got[-2])

    await configure(owner, room, passwordprotectedroom=0, membersonly=1)
    # alice, not a member, is removed (322) when the room becomes members-only.
    p = await alice.expect(lambda e: e.get("type") == "unavailable", what="removed: 322")
    assert "322" in codes(p), xml_str(p)
    bob = await login(server, server.account(), resource="b", presence=True)
    err = await join(bob, room, "bob")
    assert stanza_error(err[-1])[1] == "registration-required", xml_str(err[-1])
    # Made a member, bob enters.
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='{bare(bob.jid)}'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    got = await join(bob, room, "bob")
    assert item(got[-2]).get("affiliation") == "member"
    # The member list (§9.5) and owner list (§10.5).
    r = await owner.iq(f"<query xmlns='{NS_ADMIN}'><item affiliation='member'/></query>", to=room)
    assert [i.get("jid") for i in r.iter(f"{{{NS_ADMIN}}}item")] == [bare(bob.jid)]
    r = await owner.iq(f"<query xmlns='{NS_ADMIN}'><item affiliation='owner'/></query>", to=room)
    assert [i.get("jid") for i in r.iter(f"{{{NS_ADMIN}}}item")] == [bare(owner.jid)]
    # A member may not read them.
    r = await bob.iq(f"<query xmlns='{NS_ADMIN}'><item affiliation='owner'/></query>", to=room)
    assert stanza_error(r)[1] == "forbidden"
    for c in (owner, alice, bob):
        await c.close()


async def test_configuration_form_and_room_info(server):
    owner = await login(server, server.account(), resource="o", presence=True)
    room = room_jid("reserved")
    await join(owner, room, "owner")
    # §10.1.3: the reserved room's form.
    r = await owner.iq(f"<query xmlns='{NS_OWNER}'/>", to=room)
    form = r.find(f"{{{NS_OWNER}}}query/{{{NS_DATA}}}x")
    assert form is not None and form.get("type") == "form", xml_str(r)
    fields = {f.get("var") for f in form.findall(f"{{{NS_DATA}}}field")}
    assert {"muc#roomconfig_persistentroom", "muc#roomconfig_whois", "FORM_TYPE"} <= fields
    await configure(owner, room, roomname="Tea room", persistentroom=1, whois="anyone")
    info = await owner.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    feats = [f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")]
    assert {"muc_persistent", "muc_nonanonymous", "muc_open", NS_MUC} <= set(feats), feats
    ident = info.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
    assert ident.get("name") == "Tea room"
    # Non-anonymous: everyone sees real JIDs and 100 (§7.2.4).
    bob = await login(server, server.account(), resource="b", presence=True)
    got = await join(bob, room, "bob")
    assert item(got[0]).get("jid") == owner.jid
    assert codes(got[1]) == ["100", "110"], xml_str(got[1])
    # A non-owner may not read or change the configuration.
    r = await bob.iq(f"<query xmlns='{NS_OWNER}'/>", to=room)
    assert stanza_error(r)[1] == "forbidden"
    # Occupants hear of a change (§10.2.1): 104, and 173 when the room turns semi-anonymous.
    await configure(owner, room, whois="moderators")
    for c in (owner, bob):
        m = await c.expect(lambda e: e.tag == q("message") and e.get("from") == room and codes(e),
                           what="the configuration change")
        assert codes(m) == ["104", "173"], xml_str(m)
    # Persistent: the room stays when everyone left.
    for c, nick in ((bob, "bob"), (owner, "owner")):
        await c.send(f"<presence to='{room}/{nick}' type='unavailable'/>")
        await c.expect(lambda e: e.get("type") == "unavailable", what="left")
    info = await bob.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    assert info.get("type") == "result", xml_str(info)
    await owner.close()
    await bob.close()


async def test_temporary_room_goes_with_its_last_occupant(server):
    owner, room = await new_room(server, "temp")
    await owner.send(f"<presence to='{room}/owner' type='unavailable'/>")
    await owner.expect(lambda e: e.get("type") == "unavailable", what="left")
    r = await owner.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    assert stanza_error(r)[1] == "item-not-found", xml_str(r)
    await owner.close()


async def test_subject_private_message_nick_change(server):
    owner, room = await new_room(server, "talk")
    bob = await login(server, server.account(), resource="b", presence=True)
    await join(bob, room, "bob")
    # A participant may not change the subject unless the room lets it (§8.1).
    await bob.send(f"<message to='{room}' type='groupchat'><subject>mine</subject></message>")
    e = await bob.expect(lambda e: e.get("type") == "error", what="forbidden")
    assert stanza_error(e)[1] == "forbidden"
    await owner.send(f"<message to='{room}' type='groupchat'><subject>Tea</subject></message>")
    for c in (owner, bob):
        s = await c.expect(is_subject(room), what="the subject")
        assert s.findtext(q("subject")) == "Tea" and s.get("from") == f"{room}/owner"
    # A newcomer gets the subject last (§7.2.16).
    carol = await login(server, server.account(), resource="c", presence=True)
    got = await join(carol, room, "carol")
    assert got[-1].findtext(q("subject")) == "Tea"

    # Private message through the room (§7.5).
    await bob.send(f"<message to='{room}/carol' type='chat' id='pm1'><body>psst</body></message>")
    pm = await carol.expect(lambda e: e.get("id") == "pm1", what="the private message")
    assert pm.get("from") == f"{room}/bob" and pm.get("to") == carol.jid
    assert pm.find(f"{{{NS_USER}}}x") is not None
    await bob.send(f"<message to='{room}/nobody' type='chat' id='pm2'><body>?</body></message>")
    e = await bob.expect(lambda e: e.get("id") == "pm2", what="item-not-found")
    assert stanza_error(e)[1] == "item-not-found"

    # Nick change (§7.6): 303 with the new nick, then the new presence; 110 to itself.
    await bob.send(f"<presence to='{room}/robert'/>")
    old = await bob.expect(lambda e: e.get("from") == f"{room}/bob", what="303")
    assert old.get("type") == "unavailable" and codes(old) == ["303", "110"]
    assert item(old).get("nick") == "robert"
    new = await bob.expect(lambda e: e.get("from") == f"{room}/robert", what="new nick")
    assert codes(new) == ["110"]
    seen = await carol.expect(lambda e: e.get("from") == f"{room}/bob", what="303 to others")
    assert codes(seen) == ["303"]
    # The nick is taken: conflict.
    await bob.send(f"<presence to='{room}/carol'/>")
    e = await bob.expect(lambda e: e.get("type") == "error", what="conflict")
    assert stanza_error(e)[1] == "conflict"
    for c in (owner, bob, carol):
        await c.close()


async def test_history_on_join(server):
    owner, room = await new_room(server, "hist")
    for i in range(5):
        await groupchat(owner, room, f"old {i}")
        await owner.expect(is_groupchat(f"old {i}"), what="reflection")
    stamp_before_last = time.time()
    time.sleep(1.2)
    await groupchat(owner, room, "recent")
    await owner.expect(is_groupchat("recent"), what="reflection")

    async def history(x: str) -> list[str]:
        c = await login(server, server.account(), presence=True)
        got = await join(c, room, new_id("n"), x=x)
        bodies = [e.findtext(q("body")) for e in got if e.find(f"{{{NS_DELAY}}}delay") is not None]
        # History comes after the own presence and before the subject.
        assert got[-1].find(q("subject")) is not None
        await c.close()
        return bodies

    assert await history("") == [f"old {i}" for i in range(5)] + ["recent"]
    assert await history("<history maxstanzas='2'/>") == ["old 4", "recent"]
    assert await history("<history maxstanzas='0'/>") == []
    assert await history("<history seconds='1'/>") == ["recent"]
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp_before_last + 1))
    assert await history(f"<history since='{since}'/>") == ["recent"]
    await owner.close()


async def test_kick_ban_voice(server):
    owner, room = await new_room(server, "mod", moderatedroom=1)
    bob = await login(server, server.account(), resource="b", presence=True)
    got = await join(bob, room, "bob")
    assert item(got[-2]).get("role") == "visitor"
    # A visitor has no voice in a moderated room.
    await groupchat(bob, room, "may I?")
    e = await bob.expect(lambda e: e.get("type") == "error", what="forbidden")
    assert stanza_error(e)[1] == "forbidden"
    # Voice granted (§8.3).
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item nick='bob' role='participant'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    p = await bob.expect(lambda e: e.get("from") == f"{room}/bob" and item(e) is not None
                         and item(e).get("role") == "participant", what="voice")
    await groupchat(bob, room, "thanks")
    await owner.expect(is_groupchat("thanks"), what="bob speaks")
    # The moderator and participant lists (§9.8, §8.5), for moderators only.
    r = await owner.iq(f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room)
    assert [i.get("nick") for i in r.iter(f"{{{NS_ADMIN}}}item")] == ["owner"], xml_str(r)
    r = await owner.iq(f"<query xmlns='{NS_ADMIN}'><item role='participant'/></query>", to=room)
    assert [i.get("nick") for i in r.iter(f"{{{NS_ADMIN}}}item")] == ["bob"], xml_str(r)
    r = await bob.iq(f"<query xmlns='{NS_ADMIN}'><item role='moderator'/></query>", to=room)
    assert stanza_error(r)[1] == "forbidden", xml_str(r)
    # A participant may not kick.
    r = await bob.iq(
        f"<query xmlns='{NS_ADMIN}'><item nick='owner' role='none'/></query>", type_="set", to=room
    )
    assert stanza_error(r)[1] in ("forbidden", "not-allowed"), xml_str(r)
    # A voice request (§7.13) reaches the moderator as a form; approving it (§8.6) grants
    # the voice, as the owner's revocation and a new request show.
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item nick='bob' role='visitor'/></query>", type_="set", to=room
    )
    assert r.get("type") == "result", xml_str(r)
    await bob.expect(lambda e: e.get("from") == f"{room}/bob" and item(e) is not None
                     and item(e).get("role") == "visitor", what="voice revoked")
    req = (f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'>"
           f"<value>{NS_MUC}#request</value></field>"
           f"<field var='muc#role'><value>participant</value></field></x>")
    await bob.send(f"<message to='{room}'>{req}</message>")
    m = await owner.expect(lambda e: e.tag == q("message") and e.find(f"{{{NS_DATA}}}x") is not None,
                           what="the voice request form")
    fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in m.iter(f"{{{NS_DATA}}}field")}
    assert fields["muc#roomnick"] == "bob" and fields["muc#jid"] == bob.jid, fields
    await owner.send(
        f"<message to='{room}'><x xmlns='{NS_DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{NS_MUC}#request</value></field>"
        f"<field var='muc#roomnick'><value>bob</value></field>"
        f"<field var='muc#request_allow'><value>true</value></field></x></message>"
    )
    await bob.expect(lambda e: e.get("from") == f"{room}/bob" and item(e) is not None
                     and item(e).get("role") == "participant", what="voice granted by the approval")
    # Kick (§8.2): 307, 110 to the kicked.
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item nick='bob' role='none'><reason>out</reason></item></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    p = await bob.expect(lambda e: e.get("type") == "unavailable", what="kicked")
    assert codes(p) == ["307", "110"], xml_str(p)
    assert item(p).findtext(f"{{{NS_USER}}}reason") == "out"
    p = await owner.expect(lambda e: e.get("type") == "unavailable", what="bob kicked")
    assert codes(p) == ["307"]
    # Ban (§9.1): 301; an outcast cannot come back.
    await join(bob, room, "bob")
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item jid='{bare(bob.jid)}' affiliation='outcast'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    p = await bob.expect(lambda e: e.get("type") == "unavailable", what="banned")
    assert codes(p) == ["301", "110"], xml_str(p)
    err = await join(bob, room, "bob")
    assert stanza_error(err[-1])[1] == "forbidden", xml_str(err[-1])
    r = await owner.iq(f"<query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query>", to=room)
    assert [i.get("jid") for i in r.iter(f"{{{NS_ADMIN}}}item")] == [bare(bob.jid)]
    # The last owner cannot be removed.
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item jid='{bare(owner.jid)}' affiliation='none'/></query>",
        type_="set",
        to=room,
    )
    assert stanza_error(r)[1] == "conflict", xml_str(r)
    await owner.close()
    await bob.close()


async def test_destroy_with_alternate_venue(server):
    owner, room = await new_room(server, "doomed")
    bob = await login(server, server.account(), resource="b", presence=True)
    await join(bob, room, "bob")
    r = await bob.iq(f"<query xmlns='{NS_OWNER}'><destroy/></query>", type_="set", to=room)
    assert stanza_error(r)[1] == "forbidden"
    alt = f"new@{SERVICE}"
    r = await owner.iq(
        f"<query xmlns='{NS_OWNER}'><destroy jid='{alt}'><reason>moved</reason></destroy></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    for c in (owner, bob):
        p = await c.expect(lambda e: e.get("type") == "unavailable", what="destroyed")
        d = p.find(f"{{{NS_USER}}}x/{{{NS_USER}}}destroy")
        assert d is not None and d.get("jid") == alt, xml_str(p)
        assert d.findtext(f"{{{NS_USER}}}reason") == "moved"
    r = await owner.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    assert stanza_error(r)[1] == "item-not-found"
    await owner.close()
    await bob.close()


async def test_invitations(server):
    owner, room = await new_room(server, "club", membersonly=1)
    guest = await login(server, server.account(), resource="g", presence=True)
    # Mediated (§7.8.2): the invitee gets it from the room and becomes a member.
    await owner.send(
        f"<message to='{room}'><x xmlns='{NS_USER}'><invite to='{bare(guest.jid)}'>"
        f"<reason>join us</reason></invite></x></message>"
    )
    m = await guest.expect(lambda e: e.get("from") == room, what="the invitation")
    inv = m.find(f"{{{NS_USER}}}x/{{{NS_USER}}}invite")
    assert inv is not None and bare(inv.get("from")) == bare(owner.jid), xml_str(m)
    assert inv.findtext(f"{{{NS_USER}}}reason") == "join us"
    got = await join(guest, room, "guest")
    assert item(got[-2]).get("affiliation") == "member", xml_str(got[-2])
    # Declining (§7.8.2): the inviter hears it from the room.
    await guest.send(
        f"<message to='{room}'><x xmlns='{NS_USER}'><decline to='{bare(owner.jid)}'>"
        f"<reason>maybe later</reason></decline></x></message>"
    )
    m = await owner.expect(lambda e: e.tag == q("message") and e.find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline") is not None,
                           what="the decline")
    dec = m.find(f"{{{NS_USER}}}x/{{{NS_USER}}}decline")
    assert m.get("from") == room and dec.get("from") == bare(guest.jid), xml_str(m)
    assert dec.findtext(f"{{{NS_USER}}}reason") == "maybe later"
    # A member may not invite to a members-only room unless the room allows it.
    other = await login(server, server.account(), presence=True)
    await guest.send(
        f"<message to='{room}' id='inv2'><x xmlns='{NS_USER}'><invite to='{bare(other.jid)}'/></x></message>"
    )
    e = await guest.expect(lambda e: e.get("id") == "inv2", what="forbidden")
    assert stanza_error(e)[1] == "forbidden"
    # Direct (XEP-0249): a normal message between users, passed through.
    await guest.send(
        f"<message to='{other.jid}' id='dir'><x xmlns='{NS_CONFERENCE}' jid='{room}'/></message>"
    )
    m = await other.expect(lambda e: e.get("id") == "dir", what="the direct invitation")
    assert m.find(f"{{{NS_CONFERENCE}}}x").get("jid") == room
    for c in (owner, guest, other):
        await c.close()


async def test_self_ping(server):
    owner, room = await new_room(server, "ping")
    r = await owner.iq(f"<ping xmlns='{NS_PING}'/>", to=f"{room}/owner")
    assert r.get("type") == "result", xml_str(r)
    stranger = await login(server, server.account(), presence=True)
    r = await stranger.iq(f"<ping xmlns='{NS_PING}'/>", to=f"{room}/owner")
    assert stanza_error(r)[1] == "not-acceptable", xml_str(r)
    await owner.close()
    await stranger.close()


async def test_session_end_leaves_the_room(server):
    owner, room = await new_room(server, "bye")
    bob = await login(server, server.account(), resource="b", presence=True)
    await join(bob, room, "bob")
    await bob.close()
    p = await owner.expect(
        lambda e: e.get("from") == f"{room}/bob" and e.get("type") == "unavailable",
        what="bob's unavailable (directed presence at session end)",
    )
    assert codes(p) == []
    await owner.close()


async def test_limits_and_creation_policy(make_server):
    srv = make_server({"modules.muc": {"max_occupants": 2, "creation": "admins", "admins": []}}, accounts=4)
    a = await login(srv, srv.account(), presence=True)
    err = await join(a, room_jid("nope"), "a")
    assert stanza_error(err[-1])[1] == "not-allowed", xml_str(err[-1])
    await a.close()
    srv.stop()

    srv = make_server({"modules.muc": {"max_occupants": 2}}, accounts=4)
    owner, room = await new_room(srv, "small")
    b = await login(srv, srv.account(), presence=True)
    await join(b, room, "b")
    c = await login(srv, srv.account(), presence=True)
    err = await join(c, room, "c")
    assert stanza_error(err[-1])[1] == "service-unavailable", xml_str(err[-1])
    # max_message_bytes.
    await groupchat(b, room, "x" * 20000)
    e = await b.expect(lambda e: e.get("type") == "error", what="too big")
    assert stanza_error(e)[1] == "policy-violation"
    for x in (owner, b, c):
        await x.close()


async def test_rooms_per_user(make_server):
    """`max_rooms_per_user = 1`: a second room is refused with `not-allowed` (XEP-0045
    §10.1.1) until the first is gone, also when it went as a temporary room emptied; the
    service's admins are exempt. (test_muc_cluster.py counts rooms of several shards.)"""
    srv = make_server({"modules.muc": {"max_rooms_per_user": 1, "admins": ["n0u002@localhost"]}},
                      accounts=3)
    user, admin = srv.account(), srv.account()
    assert admin.jid == "n0u002@localhost", admin.jid
    u = await login(srv, user, resource="u", presence=True)
    first, second = room_jid("one"), room_jid("two")
    got = await join(u, first, "u")
    assert codes(got[0]) == ["201", "110"], xml_str(got[0])
    await instant(u, first)
    err = await join(u, second, "u")
    assert stanza_error(err[-1]) == ("cancel", "not-allowed"), xml_str(err[-1])
    assert err[-1].get("from") == f"{second}/u", xml_str(err[-1])
    # Joining someone else's room is no creation: not counted.
    a = await login(srv, admin, resource="a", presence=True)
    for r in (room_jid("adm1"), room_jid("adm2")):
        got = await join(a, r, "a")
        assert codes(got[0]) == ["201", "110"], xml_str(got[0])
        await instant(a, r)
        got = await join(u, r, "u")
        assert all(e.get("type") != "error" for e in got), [xml_str(e) for e in got]
    # The temporary room empties as its owner leaves: it is gone, and so is its count.
    await u.send(f"<presence to='{first}/u' type='unavailable'/>")
    await u.expect(lambda e: e.get("from") == f"{first}/u" and e.get("type") == "unavailable",
                   what="left the first room")
    deadline = time.monotonic() + 10
    while True:
        got = await join(u, second, "u")
        if got[-1].get("type") != "error" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert codes(got[0]) == ["201", "110"], [xml_str(e) for e in got]
    await u.close()
    await a.close()


async def test_slixmpp_xep_0045(server):
    owner, room = await new_room(server, "slix")
    accounts = [server.account(), server.account()]
    got: dict[str, list[str]] = {}
    clients = []
    for i, acc in enumerate(accounts):
        cl = slixmpp.ClientXMPP(f"{acc.local}@{acc.domain}/slix", acc.password)
        cl.ssl_context = make_ssl_context(server.cafile)
        cl.register_plugin("xep_0045")
        got[f"n{i}"] = []
        cl.add_event_handler(
            "groupchat_message",
            lambda m, n=f"n{i}": got[n].append(str(m["body"])) if m["body"] else None,
        )
        connected = asyncio.get_running_loop().create_future()
        cl.add_event_handler("session_start", lambda _e, f=connected: f.done() or f.set_result(True))
        cl.connect(host="127.0.0.1", port=server.c2s_port)
        await asyncio.wait_for(connected, 15)
        cl.send_presence()
        await asyncio.wait_for(cl.plugin["xep_0045"].join_muc_wait(room, f"n{i}", maxstanzas=0), 15)
        clients.append(cl)
    roster = clients[0].plugin["xep_0045"].get_roster(room)
    assert {"owner", "n0", "n1"} <= set(roster), roster
    clients[1].send_message(mto=room, mbody="from slixmpp", mtype="groupchat")
    for _ in range(100):
        if all("from slixmpp" in v for v in got.values()):
            break
        await asyncio.sleep(0.1)
    assert all(v.count("from slixmpp") == 1 for v in got.values()), got
    await owner.expect(is_groupchat("from slixmpp"), what="the owner gets it")
    for cl in clients:
        cl.disconnect()
    await owner.close()


async def test_rejoin_and_several_sessions_under_one_nick(server):
    owner, room = await new_room(server, "again")
    acc = server.account()
    first = await login(server, acc, resource="one", presence=True)
    await join(first, room, "me")
    await owner.expect(lambda e: e.get("from") == f"{room}/me", what="me joined")
    # The same client joining again gets the whole join sequence again (110, subject).
    got = await join(first, room, "me")
    assert codes(got[-2]) == ["110"] and got[-1].find(q("subject")) is not None
    # Another session of the same account joins as the same occupant, not a conflict; the
    # others see no new occupant.
    await owner.drain(0.5)
    second = await login(server, acc, resource="two", presence=True)
    got = await join(second, room, "me")
    assert codes(got[-2]) == ["110"], [xml_str(e) for e in got]
    news = [e for e in await owner.drain(1.0) if bare(e.get("from", "")) == room]
    assert news == [], [xml_str(e) for e in news]
    # Both sessions get the room's messages and private messages to the nick.
    await groupchat(owner, room, "who is me?")
    for c in (first, second):
        await c.expect(is_groupchat("who is me?"), what="each session gets the room")
    await owner.send(f"<message to='{room}/me' type='chat' id='pm-me'><body>both?</body></message>")
    for c in (first, second):
        await c.expect(lambda e: e.get("id") == "pm-me", what="each session gets the PM")
    # One session leaving leaves the occupant in; the last one takes it out.
    await second.send(f"<presence to='{room}/me' type='unavailable'/>")
    p = await second.expect(lambda e: e.get("type") == "unavailable", what="own unavailable")
    assert codes(p) == ["110"]
    left = [e for e in await owner.drain(1.0) if e.tag == q("presence") and bare(e.get("from", "")) == room]
    assert left == [], [xml_str(e) for e in left]
    await first.send(f"<presence to='{room}/me' type='unavailable'/>")
    p = await owner.expect(lambda e: e.get("type") == "unavailable", what="me left")
    assert p.get("from") == f"{room}/me"
    for c in (owner, first, second):
        await c.close()


async def test_directory_lists_public_rooms(server):
    owner, public = await new_room(server, "listed", roomname="Open house")
    _, hidden = await new_room(server, "hidden", publicroom=0)
    locked_owner = await login(server, server.account(), presence=True)
    locked = room_jid("locked")
    await join(locked_owner, locked, "o")

    def listed(r) -> dict:
        return {i.get("jid"): i.get("name") for i in r.iter(f"{{{NS_DISCO_ITEMS}}}item")}

    r = await owner.iq(f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=SERVICE)
    rooms = listed(r)
    assert rooms.get(public) == "Open house", xml_str(r)
    assert hidden not in rooms and locked not in rooms, rooms
    # A temporary room leaves the directory with its last occupant.
    await owner.send(f"<presence to='{public}/owner' type='unavailable'/>")
    await owner.expect(lambda e: e.get("type") == "unavailable", what="left")
    r = await owner.iq(f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=SERVICE)
    assert public not in listed(r), xml_str(r)
    await owner.close()
    await locked_owner.close()


async def test_iqs_to_occupants_are_forwarded(server):
    owner, room = await new_room(server, "iqs")
    bob = await login(server, server.account(), resource="b", presence=True)
    await join(bob, room, "bob")
    # XEP-0410: a ping to another occupant reaches its client, and its answer comes back
    # from the occupant JID.
    await owner.send(f"<iq type='get' id='p1' to='{room}/bob'><ping xmlns='{NS_PING}'/></iq>")
    got = await bob.expect(lambda e: e.tag == q("iq") and e.get("id") == "p1", what="the forwarded ping")
    assert got.get("from") == f"{room}/owner" and got.get("to") == bob.jid, xml_str(got)
    await bob.send(f"<iq type='result' id='p1' to='{room}/owner'/>")
    r = await owner.expect(lambda e: e.tag == q("iq") and e.get("id") == "p1", what="the answer")
    assert r.get("type") == "result" and r.get("from") == f"{room}/bob", xml_str(r)
    # A vCard request goes to the occupant's account, answered by its server.
    r = await owner.iq("<vCard xmlns='vcard-temp'/>", to=f"{room}/bob")
    assert r.get("from") == f"{room}/bob", xml_str(r)
    assert r.get("type") in ("result", "error"), xml_str(r)
    # An IQ error from the client does not remove it (only message and presence errors do).
    await owner.send(f"<iq type='get' id='p2' to='{room}/bob'><query xmlns='urn:x:unknown'/></iq>")
    await bob.expect(lambda e: e.tag == q("iq") and e.get("id") == "p2", what="the second IQ")
    await bob.send(
        f"<iq type='error' id='p2' to='{room}/owner'><error type='cancel'>"
        "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    r = await owner.expect(lambda e: e.tag == q("iq") and e.get("id") == "p2", what="the error")
    assert stanza_error(r)[1] == "service-unavailable"
    await groupchat(owner, room, "still here?")
    await bob.expect(is_groupchat("still here?"), what="bob is still an occupant")
    await owner.close()
    await bob.close()


async def test_metrics_count_rooms_occupants_and_messages(make_server):
    from test_metrics import scrape, value

    # A node of its own: on the shared one, the rooms of earlier tests are still being
    # left (and destroyed) while this one counts.
    server = make_server(accounts=4)
    before = scrape(server)
    owner, room = await new_room(server, "metrics")
    bob = await login(server, server.account(), presence=True)
    await join(bob, room, "bob")
    await groupchat(bob, room, "counted")
    await owner.expect(is_groupchat("counted"), what="reflection")
    await bob.expect(is_groupchat("counted"), what="reflection")
    for c, nick in ((bob, "bob"), (owner, "owner")):
        await c.send(f"<presence to='{room}/{nick}' type='unavailable'/>")
        await c.expect(lambda e, n=nick: e.get("type") == "unavailable" and e.get("from") == f"{room}/{n}",
                       what="left")
    after = scrape(server)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("switchboard_muc_rooms_total", event="created") == 1
    assert moved("switchboard_muc_rooms_total", event="destroyed") == 1
    assert moved("switchboard_muc_occupants_total", event="joined") == 2
    assert moved("switchboard_muc_occupants_total", event="left") == 2
    assert moved("switchboard_muc_messages_total", kind="received") == 1
    assert moved("switchboard_muc_messages_total", kind="delivered") >= 2
    await owner.close()
    await bob.close()


async def test_persistent_room_survives_kill9_and_restart(make_server):
    srv = make_server(accounts=4)
    owner_acc, member_acc, guest_acc = srv.account(), srv.account(), srv.account()
    owner = await login(srv, owner_acc, resource="o", presence=True)
    room = room_jid("durable")
    await join(owner, room, "owner")
    await configure(owner, room, roomname="Durable", persistentroom=1, membersonly=1)
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='{member_acc.jid}'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result"
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='{guest_acc.jid}'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result"
    guest = await login(srv, guest_acc, resource="g", presence=True)
    await join(guest, room, "guest")
    await owner.send(f"<message to='{room}' type='groupchat'><subject>Kept</subject></message>")
    await owner.expect(is_subject(room), what="subject")
    await groupchat(owner, room, "before the crash")
    await owner.expect(is_groupchat("before the crash"), what="reflection")
    srv.kill9()
    owner.abort()
    guest.abort()
    srv.start()

    member = await login(srv, member_acc, presence=True)
    got = await join(member, room, "member")
    # Members-only and the member list kept; the history and the subject too.
    assert any(codes(e) == ["110"] and item(e).get("affiliation") == "member" for e in got), [
        xml_str(e) for e in got
    ]
    assert any(e.findtext(q("body")) == "before the crash" and e.find(f"{{{NS_DELAY}}}delay") is not None
               for e in got), [xml_str(e) for e in got]
    assert got[-1].findtext(q("subject")) == "Kept"
    # The sessions of the previous life are gone, and so are their occupants: the room
    # was swept before the node took clients, so the new occupant sees only itself.
    presences = [e for e in got if e.tag == q("presence")]
    assert [e.get("from") for e in presences] == [f"{room}/member"], [xml_str(e) for e in presences]
    info = await member.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    feats = [f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")]
    assert {"muc_persistent", "muc_membersonly"} <= set(feats), feats
    occupants = [
        f.findtext(f"{{{NS_DATA}}}value")
        for f in info.iter(f"{{{NS_DATA}}}field")
        if f.get("var") == "muc#roominfo_occupants"
    ]
    assert occupants == ["1"], xml_str(info)
    # Nothing stale is left to bounce: a message brings no 333.
    await groupchat(member, room, "anyone there?")
    await member.expect(is_groupchat("anyone there?"), what="reflection")
    late = [e for e in await member.drain(1.0) if e.tag == q("presence") and bare(e.get("from", "")) == room]
    assert late == [], [xml_str(e) for e in late]
    # The owner comes back under its nick (with a new session).
    owner = await login(srv, owner_acc, resource="o2", presence=True)
    got = await join(owner, room, "owner")
    assert any(codes(e) == ["110"] and item(e).get("affiliation") == "owner" for e in got)
    assert sorted(e.get("from") for e in got if e.tag == q("presence")) == [
        f"{room}/member", f"{room}/owner"
    ], [xml_str(e) for e in got]
    await owner.close()
    await member.close()


async def test_operator_lists_and_destroys_rooms(server):
    owner, room = await new_room(server, "ops", roomname="Ops room")
    _, hidden = await new_room(server, "opshidden", publicroom=0)
    r = server.cli("muc", "list")
    assert r.returncode == 0, r.stderr
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in r.stdout.splitlines()}
    assert rows.get(room) == ["public", "Ops room"], r.stdout
    assert rows.get(hidden, [None])[0] == "hidden", r.stdout
    r = server.cli("muc", "destroy", room, "--reason", "closing time")
    assert r.returncode == 0, r.stderr
    p = await owner.expect(lambda e: e.get("type") == "unavailable", what="destroyed by the operator")
    d = p.find(f"{{{NS_USER}}}x/{{{NS_USER}}}destroy")
    assert d is not None and d.findtext(f"{{{NS_USER}}}reason") == "closing time", xml_str(p)
    r = server.cli("muc", "list")
    assert room not in r.stdout, r.stdout
    r = server.cli("muc", "destroy", room)
    assert r.returncode != 0 and "no such room" in (r.stderr + r.stdout), (r.stdout, r.stderr)
    r = server.cli("muc", "destroy", "someone@localhost")
    assert r.returncode != 0
    await owner.close()
