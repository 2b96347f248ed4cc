"""A room's own archive (XEP-0313 §5 "Querying a MUC archive") on one node: the groupchat
messages a room reflects are read back with an archive query to the room's JID, paged with
XEP-0059 to `complete='true'`, each result from the room with the original from the
occupant JID; the `<stanza-id by=room>` every occupant saw live is the archive's id; who may
read it (an occupant, an affiliated user even when absent; a members-only room refuses
others); disco#info advertises it; destroying the room empties it; `[modules.muc] archive =
false` turns it off. test_muc_cluster.py reads a room's archive after a `kill -9`,
test_mam_postgres.py with the PostgreSQL backend."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from conftest import render_toml
from rawxmpp import (
    NS_MAM,
    bare,
    login,
    mam_form,
    mam_query,
    new_id,
    q,
    rsm_set,
    xml_str,
)
from test_mam import check_results
from test_muc import (
    NS_ADMIN,
    NS_DELAY,
    NS_DISCO_INFO,
    NS_OWNER,
    NS_SID,
    NS_OID,
    codes,
    groupchat,
    instant,
    is_groupchat,
    join,
    new_room,
    room_jid,
)

ACCOUNT_POOL = 24

NS_MAM_EXTENDED = NS_MAM + "#extended"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"


def room_sid(msg: ET.Element, room: str) -> str:
    ids = [e.get("id") for e in msg.findall(f"{{{NS_SID}}}stanza-id") if e.get("by") == room]
    assert len(ids) == 1, f"XEP-0359: one <stanza-id by='{room}'/> expected: {xml_str(msg)}"
    return ids[0]


async def talk(room: str, speakers: list, watcher, n: int, prefix: str) -> list[tuple[str, str, str]]:
    """`n` groupchat messages, the speakers (client, nick) in turn; `watcher` sees each live.
    Returns (nick, body, the live room stanza-id) in order."""
    sent = []
    for i in range(n):
        c, nick = speakers[i % len(speakers)]
        body = f"{prefix}-{i}"
        await groupchat(c, room, body)
        m = await watcher.expect(is_groupchat(body), what=f"groupchat {body}")
        assert m.get("from") == f"{room}/{nick}", xml_str(m)
        sent.append((nick, body, room_sid(m, room)))
    return sent


async def affiliate(owner, room: str, who, affiliation: str) -> None:
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item affiliation='{affiliation}' jid='{bare(who.jid)}'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)


async def room_archive(c, room: str, form: str = "", rsm: str = ""):
    return await mam_query(c, form, rsm or rsm_set(max=250), to=room)


def check_room_results(page, c, room: str) -> list[tuple[str, str, str]]:
    """§5: every result comes from the room; the forwarded message from the occupant JID
    with its body. Returns (nick, body, result id)."""
    ids = check_results(page, c, room)
    for r in page.results:
        assert r.get("from") == room, f"§5: a room's result comes from the room: {xml_str(r)}"
    out = []
    for rid, m in zip(ids, page.messages):
        frm = m.get("from", "")
        assert bare(frm) == room and "/" in frm, f"forwarded from the occupant JID: {xml_str(m)}"
        assert m.get("type") == "groupchat", xml_str(m)
        assert m.find(f"{{{NS_OID}}}occupant-id") is not None, f"XEP-0421 id kept: {xml_str(m)}"
        out.append((frm.split("/", 1)[1], m.findtext(q("body")), rid))
    return out


async def test_room_archive_pages_to_complete_with_the_live_ids(server):
    owner, room = await new_room(server, "arch")
    bob = await login(server, server.account(), resource="b", presence=True)
    await join(bob, room, "bob")
    await owner.expect(lambda e: e.tag == q("presence") and e.get("from") == f"{room}/bob", what="bob joined")
    sent = await talk(room, [(owner, "owner"), (bob, "bob")], bob, 7, "hello")
    # A chat state is reflected, not archived; nor is a message that asks not to be stored.
    await owner.send(f"<message to='{room}' type='groupchat'><active xmlns='{NS_CHATSTATES}'/></message>")
    await owner.send(
        f"<message to='{room}' type='groupchat'><body>secret</body>"
        f"<no-store xmlns='urn:xmpp:hints'/></message>"
    )
    await bob.expect(is_groupchat("secret"), what="the no-store message")

    # The whole archive, then pages of 3 forward to complete='true'.
    whole = await room_archive(bob, room)
    assert whole.complete, whole.describe()
    got = check_room_results(whole, bob, room)
    assert got == sent, f"the archive {got} is not what was said {sent}"

    after, paged, pages = None, [], 0
    while True:
        page = await room_archive(bob, room, rsm=rsm_set(max=3, after=after))
        pages += 1
        paged += check_room_results(page, bob, room)
        if page.complete:
            break
        assert len(page.results) == 3, page.describe()
        after = page.last
        assert pages < 10
    assert pages == 3 and paged == sent, (pages, paged)

    # Backwards from the end: the last page is the newest 3, and it is complete too.
    last = await room_archive(bob, room, rsm=rsm_set(max=3, before=""))
    assert check_room_results(last, bob, room) == sent[-3:]
    # `with` an occupant JID: that nick's messages only; after-id from a live id.
    bobs = await room_archive(bob, room, mam_form(**{"with": f"{room}/bob"}))
    assert check_room_results(bobs, bob, room) == [s for s in sent if s[0] == "bob"]
    tail = await room_archive(owner, room, mam_form(after_id=sent[4][2]))
    assert check_room_results(tail, owner, room) == sent[5:]

    # disco#info of the room advertises its archive (XEP-0313 §7).
    info = await bob.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    feats = {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}
    assert {NS_MAM, NS_MAM_EXTENDED} <= feats, feats
    # Preferences are an account's, not a room's.
    r = await bob.iq(f"<prefs xmlns='{NS_MAM}'/>", to=room)
    assert r.get("type") == "error", xml_str(r)
    for c in (owner, bob):
        await c.close()


async def test_who_may_read_a_members_only_rooms_archive(server):
    owner, room = await new_room(server, "club", membersonly=1)
    await talk(room, [(owner, "owner")], owner, 2, "inner")
    carol = await login(server, server.account(), resource="c", presence=True)
    # Neither an occupant nor a member: forbidden.
    page = await room_archive(carol, room)
    assert page.error == "forbidden", page.describe()
    # A member may read it without being present.
    await affiliate(owner, room, carol, "member")
    page = await room_archive(carol, room)
    assert [b for _, b, _ in check_room_results(page, carol, room)] == ["inner-0", "inner-1"]
    # An outcast never.
    await affiliate(owner, room, carol, "outcast")
    page = await room_archive(carol, room)
    assert page.error == "forbidden", page.describe()
    # An open room's archive is for anyone who could join it.
    owner2, open_room = await new_room(server, "open")
    await talk(open_room, [(owner2, "owner")], owner2, 1, "public")
    page = await room_archive(carol, open_room)
    assert [b for _, b, _ in check_room_results(page, carol, open_room)] == ["public-0"]
    # A room that does not exist.
    page = await room_archive(carol, room_jid("nowhere"))
    assert page.error == "item-not-found", page.describe()
    for c in (owner, owner2, carol):
        await c.close()


async def test_destroying_the_room_empties_its_archive(server):
    owner, room = await new_room(server, "gone", persistentroom=1)
    sent = await talk(room, [(owner, "owner")], owner, 3, "before")
    assert [s[1] for s in check_room_results(await room_archive(owner, room), owner, room)] == [
        s[1] for s in sent
    ]
    r = await owner.iq(f"<query xmlns='{NS_OWNER}'><destroy/></query>", type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    await owner.expect(lambda e: e.get("type") == "unavailable", what="destroyed")
    # The same JID again: a new room, with an empty archive.
    got = await join(owner, room, "owner")
    assert "201" in codes(got[0]), xml_str(got[0])
    await instant(owner, room)
    page = await room_archive(owner, room)
    assert page.complete and page.results == [], page.describe()
    await owner.close()


async def test_archive_off(make_server):
    srv = make_server({"modules.muc": {"archive": False}}, accounts=2)
    owner = await login(srv, srv.account(), resource="o", presence=True)
    room = room_jid("plain")
    await join(owner, room, "owner")
    await instant(owner, room)
    await groupchat(owner, room, "unkept")
    await owner.expect(is_groupchat("unkept"), what="reflected")
    info = await owner.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    feats = {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}
    assert NS_MAM not in feats, feats
    page = await room_archive(owner, room)
    assert page.iq.get("type") == "error", page.describe()
    await owner.close()



async def history_of(srv, room: str, x: str = "") -> list[tuple[str, str | None]]:
    """What a newcomer gets as history (XEP-0045 §7.2.15): (body, room stanza-id) each."""
    c = await login(srv, srv.account(), presence=True)
    got = await join(c, room, new_id("n"), x=x)
    await c.close()
    assert got[-1].find(q("subject")) is not None, [xml_str(e) for e in got]
    out = []
    for e in got:
        if e.tag == q("message") and e.find(f"{{{NS_DELAY}}}delay") is not None:
            sids = [s.get("id") for s in e.findall(f"{{{NS_SID}}}stanza-id") if s.get("by") == room]
            out.append((e.findtext(q("body")), sids[0] if sids else None))
    return out


async def test_history_on_join_comes_from_the_archive(make_server):
    """With the archive on, a room's history is its archive's newest `max_history` messages
    (under the ids the archive holds), merged with what the archive does not keep (a
    `<no-store/>` message) and with the history a room kept before its archive was turned
    on (the same node restarted with `archive = true`)."""
    srv = make_server({"modules.muc": {"archive": False, "max_history": 4}}, accounts=12)
    owner, room = await new_room(srv, "hist", persistentroom=1)
    await talk(room, [(owner, "owner")], owner, 2, "legacy")
    await owner.close()
    srv.stop()
    srv.config["modules.muc"]["archive"] = True
    srv.config_path.write_text(render_toml(srv.config))
    srv.start()
    owner = await login(srv, srv.account(), resource="o", presence=True)
    got = await join(owner, room, "owner2")
    assert got[-1].find(q("subject")) is not None, [xml_str(e) for e in got]
    assert [b for b, _ in await history_of(srv, room)] == ["legacy-0", "legacy-1"]
    sent = await talk(room, [(owner, "owner2")], owner, 1, "kept")
    await owner.send(
        f"<message to='{room}' type='groupchat'><body>unkept</body>"
        f"<no-store xmlns='urn:xmpp:hints'/></message>"
    )
    await owner.expect(is_groupchat("unkept"), what="the no-store message")
    sent += await talk(room, [(owner, "owner2")], owner, 2, "late")
    # The newest 4 in order, whichever store each is in; archived ones with the archive's id.
    hist = await history_of(srv, room)
    assert [b for b, _ in hist] == ["kept-0", "unkept", "late-0", "late-1"], hist
    ids = {b: i for _, b, i in sent}
    assert [i for b, i in hist if b in ids] == [ids[b] for b, _ in hist if b in ids]
    assert [b for b, _ in await history_of(srv, room, "<history maxstanzas='2'/>")] == ["late-0", "late-1"]
    page = await room_archive(owner, room)
    assert [b for _, b, _ in check_room_results(page, owner, room)] == ["kept-0", "late-0", "late-1"]
    await owner.close()
