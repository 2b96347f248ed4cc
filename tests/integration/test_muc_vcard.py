"""Room avatars (XEP-0486 "MUC Avatars": a vcard-temp on the room's bare JID). An owner sets
the room's vCard, anyone reads it, others may not set it; the SHA-1 of each photo is in the
room's disco#info form (`muc#roominfo_avatarhash`); occupants hear the change (status 104
and a presence from the room with `vcard-temp:x:update`); an empty vCard removes it; the
vCard has the accounts' size cap; it is stored with the room, so it survives `kill -9` and
a restart, and goes when the room is destroyed."""

from __future__ import annotations

import base64
import hashlib

from rawxmpp import login, q, stanza_error, xml_str
from test_muc import (
    NS_DATA,
    NS_DISCO_INFO,
    NS_OWNER,
    NS_USER,
    SERVICE,
    codes,
    configure,
    join,
    new_room,
    room_jid,
)

ACCOUNT_POOL = 12

NS_VCARD = "vcard-temp"
NS_VCARD_UPDATE = "vcard-temp:x:update"

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
SVG = b"<svg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/>"


def vcard(*images: tuple[str, bytes], extra: str = "") -> str:
    photos = "".join(
        f"<PHOTO><TYPE>{mime}</TYPE><BINVAL>{base64.b64encode(data).decode()}</BINVAL></PHOTO>"
        for mime, data in images
    )
    return f"<vCard xmlns='{NS_VCARD}'>{extra}{photos}</vCard>"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


async def avatar_hashes(c, room: str) -> list[str] | None:
    """The room's `muc#roominfo_avatarhash` values (None: no such field)."""
    info = await c.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    assert info.get("type") == "result", xml_str(info)
    feats = [f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")]
    assert NS_VCARD in feats, feats
    for f in info.iter(f"{{{NS_DATA}}}field"):
        if f.get("var") == "muc#roominfo_avatarhash":
            assert f.get("type") == "text-multi", xml_str(f)
            return [v.text for v in f.findall(f"{{{NS_DATA}}}value")]
    return None


async def get_vcard(c, room: str):
    r = await c.iq(f"<vCard xmlns='{NS_VCARD}'/>", to=room)
    assert r.get("type") == "result", xml_str(r)
    v = r.find(f"{{{NS_VCARD}}}vCard")
    assert v is not None, xml_str(r)
    return v


def is_avatar_presence(room: str):
    return lambda e: (
        e.tag == q("presence") and e.get("from") == room
        and e.find(f"{{{NS_VCARD_UPDATE}}}x") is not None
    )


def is_config_change(room: str):
    return lambda e: e.tag == q("message") and e.get("from") == room and "104" in codes(e)


async def test_owner_sets_anyone_reads_occupants_hear(server):
    owner, room = await new_room(server, "avatar")
    member = await login(server, server.account(), resource="m", presence=True)
    await join(member, room, "member")
    # No avatar yet: a join brings no avatar presence.
    quiet = [e for e in await member.drain(0.5) if is_avatar_presence(room)(e)]
    assert quiet == [], [xml_str(e) for e in quiet]
    outsider = await login(server, server.account(), resource="x", presence=True)

    # The service and the room say they keep vCards; a room without one has none to show.
    info = await outsider.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=SERVICE)
    assert NS_VCARD in [f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")]
    assert await avatar_hashes(outsider, room) is None
    assert list(await get_vcard(outsider, room)) == []

    # Only an owner sets it.
    r = await member.iq(vcard(("image/png", PNG)), type_="set", to=room)
    assert stanza_error(r)[1] == "forbidden", xml_str(r)
    r = await outsider.iq(vcard(("image/png", PNG)), type_="set", to=room)
    assert stanza_error(r)[1] == "forbidden", xml_str(r)
    assert await avatar_hashes(outsider, room) is None

    r = await owner.iq(vcard(("image/png", PNG), ("image/svg+xml", SVG), extra="<FN>Room</FN>"),
                       type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    # Every occupant hears it: the configuration changed (104), and the room's presence
    # with the (first) photo's hash.
    for c in (owner, member):
        await c.expect(is_config_change(room), what="status 104")
        p = await c.expect(is_avatar_presence(room), what="the room's avatar presence")
        assert p.get("type") is None, xml_str(p)
        assert p.findtext(f"{{{NS_VCARD_UPDATE}}}x/{{{NS_VCARD_UPDATE}}}photo") == sha1(PNG), xml_str(p)
    # Anyone reads it, occupant or not, and disco#info names both photos.
    for c in (member, outsider):
        v = await get_vcard(c, room)
        assert v.findtext(f"{{{NS_VCARD}}}FN") == "Room"
        bins = [base64.b64decode(b.text) for b in v.iter(f"{{{NS_VCARD}}}BINVAL")]
        assert bins == [PNG, SVG]
        assert await avatar_hashes(c, room) == [sha1(PNG), sha1(SVG)]

    # A newcomer learns the avatar after its join sequence (as Prosody does).
    late = await login(server, server.account(), resource="l", presence=True)
    await join(late, room, "late")
    p = await late.expect(is_avatar_presence(room), what="the avatar on join")
    assert p.findtext(f"{{{NS_VCARD_UPDATE}}}x/{{{NS_VCARD_UPDATE}}}photo") == sha1(PNG), xml_str(p)

    # Setting the same avatar again announces nothing.
    r = await owner.iq(vcard(("image/png", PNG), ("image/svg+xml", SVG), extra="<FN>Room 2</FN>"),
                       type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    quiet = [e for e in await member.drain(1.0) if is_avatar_presence(room)(e)]
    assert quiet == [], [xml_str(e) for e in quiet]
    assert (await get_vcard(outsider, room)).findtext(f"{{{NS_VCARD}}}FN") == "Room 2"

    # Not base64: bad-request, and the stored one is kept.
    r = await owner.iq(f"<vCard xmlns='{NS_VCARD}'><PHOTO><BINVAL>%%%</BINVAL></PHOTO></vCard>",
                       type_="set", to=room)
    assert stanza_error(r)[1] == "bad-request", xml_str(r)
    # Over the accounts' cap (im.max_vcard_bytes, 64 KiB): not-acceptable, kept too.
    r = await owner.iq(vcard(("image/png", b"x" * 70_000)), type_="set", to=room)
    assert stanza_error(r)[1] == "not-acceptable", xml_str(r)
    assert await avatar_hashes(outsider, room) == [sha1(PNG), sha1(SVG)]

    # An empty vCard removes the avatar: an empty <photo/>, and no hash in disco#info.
    r = await owner.iq(f"<vCard xmlns='{NS_VCARD}'/>", type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    for c in (owner, member):
        p = await c.expect(is_avatar_presence(room), what="the avatar removed")
        photo = p.find(f"{{{NS_VCARD_UPDATE}}}x/{{{NS_VCARD_UPDATE}}}photo")
        assert photo is not None and not (photo.text or "").strip(), xml_str(p)
    assert await avatar_hashes(outsider, room) is None
    assert list(await get_vcard(outsider, room)) == []
    for c in (owner, member, outsider, late):
        await c.close()


async def test_no_vcard_on_a_room_that_does_not_exist(server):
    c = await login(server, server.account(), resource="n", presence=True)
    r = await c.iq(f"<vCard xmlns='{NS_VCARD}'/>", to=f"nowhere-vcard@{SERVICE}")
    assert stanza_error(r)[1] == "item-not-found", xml_str(r)
    await c.close()


async def test_avatar_survives_kill9_and_goes_with_the_room(make_server):
    srv = make_server(accounts=4)
    owner_acc = srv.account()
    owner = await login(srv, owner_acc, resource="o", presence=True)
    room = room_jid("avatar-durable")
    await join(owner, room, "owner")
    await configure(owner, room, persistentroom=1)
    r = await owner.iq(vcard(("image/png", PNG)), type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    srv.kill9()
    owner.abort()
    srv.start()

    reader = await login(srv, srv.account(), resource="r", presence=True)
    assert await avatar_hashes(reader, room) == [sha1(PNG)]
    v = await get_vcard(reader, room)
    assert [base64.b64decode(b.text) for b in v.iter(f"{{{NS_VCARD}}}BINVAL")] == [PNG]

    # Destroyed, the room takes its vCard along: a new room of that name has none.
    owner = await login(srv, owner_acc, resource="o2", presence=True)
    await join(owner, room, "owner")
    r = await owner.iq(f"<query xmlns='{NS_OWNER}'><destroy/></query>", type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    await owner.expect(lambda e: e.get("type") == "unavailable" and e.find(f"{{{NS_USER}}}x") is not None,
                       what="destroyed")
    got = await join(owner, room, "owner")
    assert codes(got[0]) == ["201", "110"], xml_str(got[0])
    r = await owner.iq(f"<query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>",
                       type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    assert await avatar_hashes(reader, room) is None
    assert list(await get_vcard(reader, room)) == []
    await owner.close()
    await reader.close()
