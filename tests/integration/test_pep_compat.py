"""What PEP keeps in step with older specifications: XEP-0402 bookmarks with XEP-0048
bookmarks in private XML storage (`#compat`) and in the `storage:bookmarks` PEP node
(`#compat-pep`), whichever a client writes; and XEP-0084 avatars with the vCard photo
(XEP-0398), both ways. slixmpp's xep_0402 and xep_0048 plugins on one side, raw clients
for the exact stanzas on the other."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import slixmpp

from rawxmpp import bare, login, make_ssl_context, xml_str
from test_pep import NS_DISCO, NS_PUBSUB, announce_caps, is_event, item_ids, items, mutual_contacts, options, publish

ACCOUNT_POOL = 8

NS_BM2 = "urn:xmpp:bookmarks:1"
NS_LEGACY = "storage:bookmarks"
NS_PRIVATE = "jabber:iq:private"
NS_VCARD = "vcard-temp"
NS_AVATAR_DATA = "urn:xmpp:avatar:data"
NS_AVATAR_META = "urn:xmpp:avatar:metadata"


async def slix(server, account, resource: str, plugins: tuple[str, ...]):
    x = slixmpp.ClientXMPP(f"{account.jid}/{resource}", account.password)
    x.ssl_context = make_ssl_context(server.cafile)
    x.enable_starttls, x.enable_direct_tls, x.enable_plaintext = True, False, False
    for p in plugins:
        x.register_plugin(p)
    started = asyncio.get_running_loop().create_future()
    x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    x.connect(host="127.0.0.1", port=server.c2s_port)
    await asyncio.wait_for(started, 20)
    return x


async def private_bookmarks(c) -> dict[str, dict]:
    """XEP-0048 via private XML storage: jid → {name, autojoin, nick}, and the urls."""
    resp = await c.iq(f"<query xmlns='{NS_PRIVATE}'><storage xmlns='{NS_LEGACY}'/></query>")
    assert resp.get("type") == "result", xml_str(resp)
    out = {}
    for conf in resp.iter(f"{{{NS_LEGACY}}}conference"):
        nick = conf.find(f"{{{NS_LEGACY}}}nick")
        out[conf.get("jid")] = {
            "name": conf.get("name"),
            "autojoin": conf.get("autojoin") in ("true", "1"),
            "nick": nick.text if nick is not None else None,
        }
    out["urls"] = [u.get("url") for u in resp.iter(f"{{{NS_LEGACY}}}url")]
    return out


async def test_bookmarks2_and_xep0048_views_stay_equal(server):
    alice = server.account()
    # A slixmpp client writes XEP-0402 with its plugin (and XEP-0402 §5's publish-options);
    # a raw client of the same account reads the legacy views and watches notifications.
    s = await slix(server, alice, "modern", ("xep_0030", "xep_0060", "xep_0402", "xep_0048", "xep_0049", "xep_0223"))
    r = await login(server, alice, resource="legacy")
    try:
        await announce_caps(r, [NS_BM2])
        resp = await r.iq(f"<query xmlns='{NS_DISCO}'/>", to=bare(r.jid))
        feats = {f.get("var") for f in resp.iter(f"{{{NS_DISCO}}}feature")}
        assert {NS_BM2 + "#compat", NS_BM2 + "#compat-pep"} <= feats, xml_str(resp)

        # 1. XEP-0402 publish → the legacy views.
        item = s.plugin["xep_0060"].stanza.Item()
        item["id"] = "council@conference.example.org"
        item["conference"]["name"] = "Council"
        item["conference"]["autojoin"] = True
        item["conference"]["nick"] = "JC"
        form = s.plugin["xep_0004"].make_form("submit")
        form.add_field("FORM_TYPE", ftype="hidden", value=NS_PUBSUB + "#publish-options")
        for var, value in (("persist_items", "true"), ("max_items", "max"),
                           ("send_last_published_item", "never"), ("access_model", "whitelist")):
            form.add_field("pubsub#" + var, value=value)
        await s.plugin["xep_0060"].publish(bare(alice.jid), NS_BM2, id=item["id"],
                                           payload=item["conference"], options=form)
        await r.expect(is_event(NS_BM2, "council@conference.example.org"), what="the bookmarks2 notification")
        legacy = await private_bookmarks(r)
        assert legacy["council@conference.example.org"] == {"name": "Council", "autojoin": True, "nick": "JC"}, legacy
        pep_legacy = await items(r, None, NS_LEGACY)
        assert item_ids(pep_legacy) == ["current"], xml_str(pep_legacy)
        assert "council@conference.example.org" in xml_str(pep_legacy)

        # 2. XEP-0048 in private storage (slixmpp's xep_0048 over xep_0049) → XEP-0402.
        bm = s.plugin["xep_0048"].stanza.Bookmarks()
        bm.add_conference("lobby@conference.example.org", "lobbyist", name="Lobby", autojoin=False)
        bm.add_conference("council@conference.example.org", "JC", name="Council", autojoin=True)
        bm.add_url("https://example.org", name="site")
        await s.plugin["xep_0048"].set_bookmarks(bm, method="xep_0049")
        await r.expect(is_event(NS_BM2, "lobby@conference.example.org"), what="the new room's notification")
        got = await s.plugin["xep_0060"].get_items(bare(alice.jid), NS_BM2)
        confs = {i["id"]: i["conference"] for i in got["pubsub"]["items"]}
        assert set(confs) == {"lobby@conference.example.org", "council@conference.example.org"}, got
        assert confs["lobby@conference.example.org"]["nick"] == "lobbyist"
        assert confs["lobby@conference.example.org"]["name"] == "Lobby"
        assert confs["council@conference.example.org"]["autojoin"] is True
        # The XEP-0402 node keeps its XEP-0402 §5 configuration.
        resp = await r.iq(f"<pubsub xmlns='{NS_PUBSUB}#owner'><configure node='{NS_BM2}'/></pubsub>")
        vals = {f.get("var"): [v.text for v in f.findall("{jabber:x:data}value")]
                for f in resp.iter("{jabber:x:data}field")}
        assert vals["pubsub#access_model"] == ["whitelist"] and vals["pubsub#max_items"] == ["max"], xml_str(resp)

        # 3. An XEP-0402 retract → gone from the legacy views; the legacy URL stays.
        await s.plugin["xep_0060"].retract(bare(alice.jid), NS_BM2, "lobby@conference.example.org")
        legacy = await private_bookmarks(r)
        assert set(legacy) == {"council@conference.example.org", "urls"}, legacy
        assert legacy["urls"] == ["https://example.org"], legacy
        assert "lobby@" not in xml_str(await items(r, None, NS_LEGACY))

        # 4. XEP-0048 in its PEP node (#compat-pep) → XEP-0402 and private storage.
        storage = (f"<storage xmlns='{NS_LEGACY}'><conference jid='pep@conference.example.org' "
                   "name='Via PEP' autojoin='true'><nick>p</nick></conference></storage>")
        resp = await publish(r, NS_LEGACY, storage, "current", options(access_model="whitelist"))
        assert resp.get("type") == "result", xml_str(resp)
        assert item_ids(await items(r, None, NS_BM2)) == ["pep@conference.example.org"]
        legacy = await private_bookmarks(r)
        assert legacy["pep@conference.example.org"]["name"] == "Via PEP", legacy
        assert "council@conference.example.org" not in legacy
    finally:
        s.disconnect()
        await r.close()


def vcard_with_photo(data: bytes) -> str:
    return (f"<vCard xmlns='{NS_VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
            f"<BINVAL>{base64.b64encode(data).decode()}</BINVAL></PHOTO></vCard>")


def is_presence_of(jid: str):
    return lambda e: e.tag == "{jabber:client}presence" and e.get("from") == jid and e.get("type") is None


def photo_of(presence) -> str | None:
    photo = presence.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
    return photo.text if photo is not None and photo.text else None


async def vcard_photo(c, of: str) -> bytes | None:
    resp = await c.iq(f"<vCard xmlns='{NS_VCARD}'/>", to=of)
    assert resp.get("type") == "result", xml_str(resp)
    binval = resp.find(f".//{{{NS_VCARD}}}PHOTO/{{{NS_VCARD}}}BINVAL")
    return base64.b64decode(binval.text) if binval is not None else None


async def test_vcard_avatar_converted_both_ways(server):
    alice, bob = await mutual_contacts(server)
    a = await login(server, alice, resource="a", presence=True)
    b = await login(server, bob, resource="b")
    try:
        await announce_caps(b, [NS_AVATAR_META])
        resp = await a.iq(f"<query xmlns='{NS_DISCO}'/>", to=bare(a.jid))
        assert "urn:xmpp:pep-vcard-conversion:0" in xml_str(resp)

        # vCard → PEP (XEP-0398 §3.2): bob is notified of metadata naming the image's SHA-1,
        # and the data item holds the image.
        png = b"\x89PNG\r\n\x1a\n first avatar"
        resp = await a.iq(vcard_with_photo(png), type_="set")
        assert resp.get("type") == "result", xml_str(resp)
        sha = hashlib.sha1(png).hexdigest()
        ev = await b.expect(is_event(NS_AVATAR_META, sha), what="the metadata notification")
        info = ev.find(f".//{{{NS_AVATAR_META}}}info")
        assert info.get("type") == "image/png" and info.get("bytes") == str(len(png)), xml_str(ev)
        resp = await items(b, bare(a.jid), NS_AVATAR_DATA, extra=f"<item id='{sha}'/>")
        data = resp.find(f".//{{{NS_AVATAR_DATA}}}data")
        assert data is not None and base64.b64decode(data.text) == png, xml_str(resp)
        # XEP-0398 §4: alice's next presence carries the hash; the session learnt it from
        # the metadata event.
        await b.drain(0.2)
        b.skipped = []  # alice's earlier presences
        await a.send("<presence><show>away</show></presence>")
        assert photo_of(await b.expect(is_presence_of(a.jid), what="alice's presence")) == sha
        # The same vCard again publishes nothing new.
        await a.iq(vcard_with_photo(png), type_="set")
        await b.barrier()
        again = [e for e in b.skipped + await b.expect_silence(0.5) if is_event(NS_AVATAR_META)(e)]
        b.skipped = []
        assert not again, [xml_str(e) for e in again]

        # PEP → vCard (§3.1): a new avatar published with XEP-0084 becomes the photo; the
        # vCard's other fields stay.
        png2 = b"\x89PNG\r\n\x1a\n second avatar"
        sha2 = hashlib.sha1(png2).hexdigest()
        resp = await publish(a, NS_AVATAR_DATA, f"<data xmlns='{NS_AVATAR_DATA}'>{base64.b64encode(png2).decode()}</data>", sha2)
        assert resp.get("type") == "result", xml_str(resp)
        meta = (f"<metadata xmlns='{NS_AVATAR_META}'><info id='{sha2}' type='image/png' "
                f"bytes='{len(png2)}'/></metadata>")
        resp = await publish(a, NS_AVATAR_META, meta, sha2)
        assert resp.get("type") == "result", xml_str(resp)
        assert await vcard_photo(b, bare(a.jid)) == png2
        resp = await b.iq(f"<vCard xmlns='{NS_VCARD}'/>", to=bare(a.jid))
        assert resp.find(f".//{{{NS_VCARD}}}FN").text == "Alice", xml_str(resp)

        # Metadata naming an id whose data does not hash to it changes nothing.
        bogus = "0" * 40
        await publish(a, NS_AVATAR_DATA, f"<data xmlns='{NS_AVATAR_DATA}'>{base64.b64encode(b'x').decode()}</data>", bogus)
        await publish(a, NS_AVATAR_META, f"<metadata xmlns='{NS_AVATAR_META}'><info id='{bogus}' type='image/png' bytes='1'/></metadata>", bogus)
        assert await vcard_photo(b, bare(a.jid)) == png2

        # A new session of alice's starts with the hash (seeded at bind), in its initial
        # presence; a client's own empty <photo/> is left as it is.
        a2 = await login(server, alice, resource="a2")
        await a2.send("<presence/>")
        assert photo_of(await b.expect(is_presence_of(a2.jid), what="a2's presence")) == sha2
        await a2.send("<presence><x xmlns='vcard-temp:x:update'><photo/></x></presence>")
        p = await b.expect(is_presence_of(a2.jid), what="a2's presence without a photo")
        assert photo_of(p) is None and p.find("{vcard-temp:x:update}x") is not None, xml_str(p)
        await a2.close()

        # Empty metadata (XEP-0084 §4.6) removes the photo.
        await publish(a, NS_AVATAR_META, f"<metadata xmlns='{NS_AVATAR_META}'/>", "off")
        assert await vcard_photo(b, bare(a.jid)) is None
    finally:
        await a.close()
        await b.close()
