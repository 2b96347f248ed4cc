"""Message Archive Management (XEP-0313 v1.1, urn:xmpp:mam:2) with XEP-0359 stanza ids,
XEP-0059 paging and XEP-0441 preferences, on one node, over real sockets.

slixmpp's `xep_0313` reads a conversation back from both archives; a raw client checks the
exact shape of the results and of `<fin/>`, paging forward and backward to the end
(`complete='true'` only there), `<count/>`, the `with`/`start`/`end`/`after-id`/`before-id`/
`ids` filters, `<flip-page/>`, what is not archived (XEP-0334 hints, headlines, bare chat
states), forged stanza ids, offline recipients, preferences, errors, metadata and disco,
account deletion and `switchboard mam purge`, a restart and `kill -9`, and the metrics.

Every assertion compares the archive with what the test itself sent and saw delivered, so
a message missing, duplicated, reordered or misattributed fails the test."""

from __future__ import annotations

import asyncio
import calendar
import glob
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import slixmpp

from rawxmpp import (
    NS_DISCO_INFO,
    NS_MAM,
    NS_SID,
    MamPage,
    bare,
    login,
    make_ssl_context,
    mam_forwarded,
    mam_form,
    mam_query,
    new_id,
    q,
    roster_item_xml,
    rsm_set,
    stanza_error,
    xml_str,
)

ACCOUNT_POOL = 44

NS_CARBONS = "urn:xmpp:carbons:2"
NS_HINTS = "urn:xmpp:hints"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"

# XEP-0359 ids as this server makes them: 16 lowercase hex digits (time in the top bits).
HEX16 = re.compile(r"^[0-9a-f]{16}$")
# XEP-0082 DateTime in UTC, fractions allowed.
STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$")
# An id no archive can hold (its time is the epoch) and one that is not an id at all.
UNKNOWN_IDS = ("0000000000000001", "no-such-id")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def stamp_epoch(stamp: str | None) -> float:
    m = STAMP.match(stamp or "")
    assert m, f"XEP-0082: stamp {stamp!r} is not CCYY-MM-DDThh:mm:ss[.sss]Z"
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) + float(m.group(7) or 0)


def xep82(t: float) -> str:
    """An XEP-0082 DateTime with milliseconds."""
    ms = int(round(t * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def chat(to: str, id_: str, body: str | None = "hi", type_: str | None = "chat", extra: str = "") -> str:
    t = f" type='{type_}'" if type_ else ""
    b = f"<body>{escape(body)}</body>" if body is not None else ""
    return f"<message to='{to}' id='{id_}'{t}>{b}{extra}</message>"


def is_delivered(id_: str):
    """The message itself: not an archive result, not a carbon."""
    return lambda e: (
        e.tag == q("message")
        and e.get("id") == id_
        and e.find(f"{{{NS_MAM}}}result") is None
        and e.find(f"{{{NS_CARBONS}}}received") is None
        and e.find(f"{{{NS_CARBONS}}}sent") is None
    )


def stanza_ids(msg: ET.Element, by: str) -> list[str]:
    return [e.get("id") for e in msg.findall(f"{{{NS_SID}}}stanza-id") if e.get("by") == by]


def sid(msg: ET.Element, by: str) -> str:
    """XEP-0359 §3: the one `<stanza-id by=by/>` the archiving server added."""
    ids = stanza_ids(msg, by)
    assert len(ids) == 1, f"XEP-0359: expected one <stanza-id by='{by}'/>, got {ids}: {xml_str(msg)}"
    assert HEX16.match(ids[0] or ""), f"stanza-id {ids[0]!r} is not 16 lowercase hex: {xml_str(msg)}"
    return ids[0]


async def deliver(sender, recipient, id_: str, body: str | None = "hi", *, to: str | None = None,
                  type_: str | None = "chat", extra: str = "") -> ET.Element:
    """`sender` sends to `recipient`'s full JID (or `to`) and the message arrives there."""
    await sender.send(chat(to or recipient.jid, id_, body, type_, extra))
    return await recipient.expect(is_delivered(id_), what=f"message {id_} at {recipient.jid}")


def check_results(page: MamPage, c, owner: str, *, now: float | None = None) -> list[str]:
    """XEP-0313 §4.2: each result is a <message/> to the requesting resource, from the
    archive (the account's bare JID, or no 'from', RFC 6120 §8.1.2.1), with one <result/>
    holding an id and <forwarded/> (XEP-0297) with a <delay/> (XEP-0203) and the original.
    Ids strictly ascending (oldest first, §4.3; XEP-0359 ids sort by time). Returns them."""
    assert page.error is None and page.fin is not None, f"the query failed:\n{page.describe()}"
    now = now or time.time()
    ids = []
    for r in page.results:
        assert r.get("to") == c.jid, f"§4.2: result to the requesting full JID {c.jid}: {xml_str(r)}"
        assert r.get("from") in (None, owner), f"§4.2: result from the archive {owner}: {xml_str(r)}"
        res = r.find(f"{{{NS_MAM}}}result")
        rid = res.get("id")
        assert HEX16.match(rid or ""), f"result id {rid!r} is not 16 lowercase hex: {xml_str(r)}"
        delay = res.find(f"{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay")
        assert delay is not None, f"XEP-0297/0203: no <delay/> in <forwarded/>: {xml_str(r)}"
        t = stamp_epoch(delay.get("stamp"))
        assert now - 600 < t < now + 2, f"delay stamp {delay.get('stamp')} is not about now: {xml_str(r)}"
        assert mam_forwarded(r) is not None, f"no jabber:client <message/> forwarded: {xml_str(r)}"
        ids.append(rid)
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"ids not strictly ascending: {ids}"
    return ids


async def archive(c, form: str = "", *, extra: str = "") -> MamPage:
    """The whole (filtered) archive in one page of 250, checked; must be complete."""
    page = await mam_query(c, form, rsm_set(max=250), extra=extra)
    check_results(page, c, bare(c.jid))
    assert page.complete, f"§4.3: a page holding everything must be complete:\n{page.describe()}"
    return page


def inner_ids(page: MamPage) -> list[str | None]:
    return [m.get("id") for m in page.messages]


# How long a delivered message may take to show in the archive. Archive writes are
# group-committed per account shard after routing (one batch in flight per shard, FIFO), so
# a query sent right after a delivery may not see the newest messages yet: about 0.1 s on an
# idle debug build. Tests wait for the last message they sent to be visible (which implies
# every earlier one of that archive is), then compare the archive exactly.
SETTLE = 5.0


async def settled(c, mid: str, form: str = "", timeout: float = SETTLE) -> None:
    """Wait until the message with id `mid` is among the newest 250 of `c`'s archive
    (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        page = await mam_query(c, form, rsm_set(max=250, before=""))
        if mid in inner_ids(page):
            return
        assert time.monotonic() < deadline, (
            f"message {mid} not in {c.jid}'s archive {timeout}s after its delivery:\n{page.describe()}")
        await asyncio.sleep(0.05)


async def close_all(*clients):
    for c in clients:
        if c is not None:
            await c.close()


async def expect_error(c, body: str, condition: str | set, *, type_: str = "set", to: str | None = None):
    resp = await c.iq(body, type_=type_, to=to)
    want = {condition} if isinstance(condition, str) else condition
    assert resp.get("type") == "error" and stanza_error(resp)[1] in want, (
        f"expected <{'/> or <'.join(sorted(want))}/> for {body}, got {xml_str(resp)}"
    )
    return resp


async def archived_conversation(srv, alice, bob, n: int, prefix: str) -> None:
    """Log both in, hold `conversation` of n, wait until its last message is in both
    archives, and log out."""
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        await conversation(a, b, n, prefix)
        await settled(a, f"{prefix}{n - 1}")
        await settled(b, f"{prefix}{n - 1}")
    finally:
        await a.close()
        await b.close()


async def conversation(a, b, n: int, prefix: str) -> list[tuple[str, str, ET.Element]]:
    """n messages alternating a->b, b->a, each delivered before the next is sent. Returns
    (message id, body, the message as delivered) in sending order."""
    out = []
    for i in range(n):
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        mid = f"{prefix}{i}"
        body = f"{prefix} body {i} from {src.jid}"
        got = await deliver(src, dst, mid, body)
        out.append((mid, body, got))
    return out


def metrics(srv) -> dict[str, float]:
    """{sample name: sum over every label set} from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


# ---------------------------------------------------------------------------
# 1. slixmpp
# ---------------------------------------------------------------------------


class Slix:
    """A slixmpp client with the archive plugins (and XEP-0359's stanzas when installed)."""

    def __init__(self, server, account, resource: str):
        x = slixmpp.ClientXMPP(f"{account.jid}/{resource}", account.password)
        x.ssl_context = make_ssl_context(server.cafile)
        x.enable_direct_tls = False
        x.enable_starttls = True
        x.enable_plaintext = False
        for plugin in ("xep_0030", "xep_0059", "xep_0297", "xep_0313"):
            x.register_plugin(plugin)
        try:
            x.register_plugin("xep_0359")
        except Exception:  # an older slixmpp without it: the raw XML is read below anyway
            pass
        self.xmpp = x
        self.port = server.c2s_port
        self.started = asyncio.get_running_loop().create_future()
        self.messages: list = []
        x.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        x.add_event_handler("failed_all_auth", lambda *_: self._fail("authentication failed"))
        x.add_event_handler("disconnected", lambda e: self._fail(f"disconnected: {e}"))
        x.add_event_handler("message", self._on_message)

    def _fail(self, why):
        if not self.started.done():
            self.started.set_exception(AssertionError(f"{self.xmpp.requested_jid}: {why}"))

    def _on_message(self, msg):
        if msg.xml.find(f"{{{NS_MAM}}}result") is None and msg["body"]:
            self.messages.append(msg)

    async def start(self, timeout: float = 20):
        self.xmpp.connect(host="127.0.0.1", port=self.port)
        await asyncio.wait_for(self.started, timeout)
        self.xmpp.send_presence()
        return self

    async def wait_message(self, id_: str, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if m["id"] == id_:
                    return m
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.xmpp.boundjid}: message {id_} did not arrive within {timeout}s")

    async def read_archive(self, reverse: bool = False, page: int = 4, total: int | None = None) -> list:
        out = []
        mam = self.xmpp.plugin["xep_0313"]

        async def collect():
            async for m in mam.iterate(reverse=reverse, rsm={"max": page}, total=total):
                out.append(m)
                assert len(out) <= 100, "xep_0313 iterated past 100 results of a 10-message archive"

        await asyncio.wait_for(collect(), 20)
        return out

    async def settle(self, mid: str, timeout: float = SETTLE) -> None:
        """Wait until message `mid` is in the archive (see SETTLE)."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.read_archive()
            if mid in [r["mam_result"]["forwarded"]["stanza"]["id"] for r in got]:
                return
            assert time.monotonic() < deadline, f"{mid} not in the archive after {timeout}s"
            await asyncio.sleep(0.05)

    async def stop(self):
        x = self.xmpp
        x.cancel_connection_attempt()
        if x.transport:
            try:
                await asyncio.wait_for(x.disconnect(wait=1), 5)
            except (asyncio.TimeoutError, Exception):
                x.abort()


async def test_slixmpp_reads_a_conversation_back_from_both_archives(server):
    """Two slixmpp users exchange 5 messages each way; each reads its own archive back with
    xep_0313 (RSM pages of 4 forward; the newest page backward): all 10 in the order sent, the right
    direction, and for every message it received the result id equals the XEP-0359
    stanza-id it saw on delivery. Fails on a missing, extra or reordered message, on an id
    mismatch, or if slixmpp cannot parse the results."""
    alice, bob = server.account(), server.account()
    sa = Slix(server, alice, "slix")
    sb = Slix(server, bob, "slix")
    try:
        await sa.start()
        await sb.start()
        sent = []  # (id, body, sender Slix, recipient Slix)
        for i in range(10):
            src, dst = (sa, sb) if i % 2 == 0 else (sb, sa)
            mid, body = f"sx{i}-{new_id()}", f"slixmpp says {i}"
            msg = src.xmpp.make_message(mto=dst.xmpp.boundjid.full, mbody=body, mtype="chat")
            msg["id"] = mid
            msg.send()
            await dst.wait_message(mid)
            sent.append((mid, body, src, dst))
        for me in (sa, sb):
            own = me.xmpp.boundjid.bare
            await me.settle(sent[-1][0])
            delivered = {}
            for mid, _, _, dst in sent:
                if dst is me:
                    m = await me.wait_message(mid)
                    delivered[mid] = sid(m.xml, own)
            results = await me.read_archive()
            assert len(results) == 10, f"{own}: {len(results)} results: {[str(r) for r in results]}"
            got = []
            for r in results:
                inner = r["mam_result"]["forwarded"]["stanza"]
                got.append((inner["id"], inner["body"], inner["from"].bare, inner["to"].bare))
                if inner["id"] in delivered:
                    assert r["mam_result"]["id"] == delivered[inner["id"]], (
                        f"{own}: archive id {r['mam_result']['id']} of {inner['id']} is not the "
                        f"stanza-id {delivered[inner['id']]} seen on delivery"
                    )
            want = [(mid, body, src.xmpp.boundjid.bare, dst.xmpp.boundjid.bare)
                    for mid, body, src, dst in sent]
            assert got == want, f"{own}: archive read back\n{got}\nexpected\n{want}"
            # Backwards from an empty <before/>: the newest page first. (Only one page:
            # slixmpp 1.17's reverse iteration stops once first index + page size equals the
            # count, which the newest page always satisfies.)
            backwards = await me.read_archive(reverse=True, total=4)
            back_ids = [r["mam_result"]["forwarded"]["stanza"]["id"] for r in backwards]
            assert back_ids == [mid for mid, *_ in reversed(sent)][:4], back_ids
    finally:
        await sa.stop()
        await sb.stop()


# ---------------------------------------------------------------------------
# 2. paging and filters (raw client)
# ---------------------------------------------------------------------------


async def ten(server, prefix):
    """alice and bob online, 10 messages alternating; alice's archive ids (checked in
    order against the messages sent) and the messages."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    sent = await conversation(a, b, 10, prefix)
    await settled(a, sent[-1][0])
    page = await archive(a)
    assert inner_ids(page) == [m for m, _, _ in sent], page.describe()
    return a, b, sent, check_results(page, a, alice.jid)


async def test_paging_forward_and_backward_to_the_end(server):
    """XEP-0313 §4.3 with XEP-0059: 10 messages read with <max>3</max> forward (pages of
    3, 3, 3, 1 chained by <after/>) and backward from an empty <before/> (the newest 3
    first, each page still oldest first): every page's <first/>/<last/> are its ids,
    complete='true' only on the page that reaches the end in the paging direction, the
    pages together are the archive exactly once, <count/> is 10, a first 'index' (when
    given) is the page's position. Also: no RSM gives everything (default page 50),
    <max>0</max> gives the count alone."""
    a, b, sent, ids = await ten(server, "pg")
    try:
        # Forward.
        pages, after = [], None
        for _ in range(6):
            page = await mam_query(a, "", rsm_set(max=3, after=after))
            got = check_results(page, a, bare(a.jid))
            pages.append(got)
            if got:
                assert (page.first, page.last) == (got[0], got[-1]), page.describe()
                if page.first_index is not None:
                    assert page.first_index == ids.index(got[0]), page.describe()
            if page.count is not None:
                assert page.count == 10, page.describe()
            if page.complete:
                break
            assert got, f"an empty page that is not complete:\n{page.describe()}"
            after = page.last
        assert pages == [ids[0:3], ids[3:6], ids[6:9], ids[9:]], (
            f"forward pages {pages}, complete only on the last, expected {ids}")
        # Backward from the end (XEP-0059 §2.5).
        pages, before = [], ""
        for _ in range(6):
            page = await mam_query(a, "", rsm_set(max=3, before=before))
            got = check_results(page, a, bare(a.jid))
            pages.append(got)
            if got:
                assert (page.first, page.last) == (got[0], got[-1]), page.describe()
                if page.first_index is not None:
                    assert page.first_index == ids.index(got[0]), page.describe()
            if page.complete:
                break
            assert got, f"an empty page that is not complete:\n{page.describe()}"
            before = page.first
        assert pages == [ids[7:10], ids[4:7], ids[1:4], ids[0:1]], (
            f"backward pages {pages}, complete only on the last, expected {ids}")
        # No <set/>: the default page holds all 10; max 0: only the count (XEP-0059 §2.7).
        page = await mam_query(a)
        assert check_results(page, a, bare(a.jid)) == ids and page.complete, page.describe()
        page = await mam_query(a, "", rsm_set(max=0))
        assert page.error is None and page.results == [], page.describe()
        assert page.count == 10, f"<max>0</max> must give <count>10</count>:\n{page.describe()}"
        # After the last id: an empty, complete page.
        page = await mam_query(a, "", rsm_set(max=3, after=ids[-1]))
        assert page.error is None and page.results == [] and page.complete, page.describe()
        assert page.first is None and page.last is None, f"XEP-0059 §2.6: no first/last:\n{page.describe()}"
    finally:
        await close_all(a, b)


async def test_after_id_before_id_ids_and_flip_page(server):
    """The extended fields (XEP-0313 §4.1.3, urn:xmpp:mam:2#extended): after-id and
    before-id are exclusive bounds and combine with RSM paging; `ids` returns exactly those
    messages in archive order; <flip-page/> (§4.3.4) sends the same page newest first."""
    a, b, sent, ids = await ten(server, "ex")
    try:
        form = mam_form(after_id=ids[2], before_id=ids[7])
        assert inner_ids(await archive(a, form)) == [m for m, _, _ in sent[3:7]]
        page = await mam_query(a, form, rsm_set(max=2))
        assert check_results(page, a, bare(a.jid)) == ids[3:5] and not page.complete, page.describe()
        page = await mam_query(a, form, rsm_set(max=2, after=ids[4]))
        assert check_results(page, a, bare(a.jid)) == ids[5:7] and page.complete, page.describe()
        assert (await archive(a, mam_form(after_id=ids[8]))).ids == ids[9:]
        assert (await archive(a, mam_form(before_id=ids[1]))).ids == ids[:1]
        assert (await archive(a, mam_form(after_id=ids[9]))).ids == []
        page = await archive(a, mam_form(ids=[ids[8], ids[1], ids[5]]))
        assert page.ids == [ids[1], ids[5], ids[8]], page.describe()
        assert inner_ids(page) == [sent[1][0], sent[5][0], sent[8][0]], page.describe()
        # flip-page: the same pages, newest first.
        flip = f"<flip-page xmlns='{NS_MAM}'/>"
        page = await mam_query(a, "", rsm_set(max=3, before=""), extra=flip)
        assert page.error is None and page.ids == ids[9:6:-1], page.describe()
        assert not page.complete, page.describe()
        page = await mam_query(a, "", rsm_set(max=3), extra=flip)
        assert page.error is None and page.ids == ids[2::-1], page.describe()
        assert not page.complete, page.describe()
        page = await mam_query(a, "", rsm_set(max=20), extra=flip)
        assert page.error is None and page.ids == ids[::-1] and page.complete, page.describe()
    finally:
        await close_all(a, b)


async def test_with_filter_bare_and_full_jid(server):
    """XEP-0313 §4.1.1: `with` a bare JID matches messages to and from it and all its
    resources; a full JID only that resource; a contact never talked to, nothing."""
    alice, bob, carol = server.account(), server.account(), server.account()
    a = await login(server, alice, resource="a")
    b1 = await login(server, bob, resource="b1")
    b2 = await login(server, bob, resource="b2")
    c = await login(server, carol, resource="c")
    try:
        with_b1 = [m for m, _, _ in await conversation(a, b1, 4, "wb1-")]
        with_b2 = [m for m, _, _ in await conversation(a, b2, 3, "wb2-")]
        with_c = [m for m, _, _ in await conversation(c, a, 2, "wc-")]
        with_b1 += [m for m, _, _ in await conversation(a, b1, 2, "wb1x-")]
        await settled(a, with_b1[-1])
        await settled(b1, with_b1[-1])
        everything = await archive(a)
        assert len(everything.results) == 11, everything.describe()
        assert inner_ids(await archive(a, mam_form(**{"with": bob.jid}))) == (
            with_b1[:4] + with_b2 + with_b1[4:])
        assert inner_ids(await archive(a, mam_form(**{"with": b2.jid}))) == with_b2
        assert inner_ids(await archive(a, mam_form(**{"with": b1.jid}))) == with_b1
        assert inner_ids(await archive(a, mam_form(**{"with": carol.jid}))) == with_c
        assert inner_ids(await archive(a, mam_form(**{"with": f"{carol.jid}/elsewhere"}))) == []
        assert inner_ids(await archive(a, mam_form(**{"with": "nobody@localhost"}))) == []
        # Bob's archive with alice: only what bob/b1 and bob/b2 exchanged with her.
        assert inner_ids(await archive(b1, mam_form(**{"with": alice.jid}))) == (
            with_b1[:4] + with_b2 + with_b1[4:])
        # with + RSM: paging stays inside the filter.
        page = await mam_query(a, mam_form(**{"with": bob.jid}), rsm_set(max=4, before=""))
        assert inner_ids(page) == (with_b1[:4] + with_b2 + with_b1[4:])[-4:], page.describe()
        assert page.count in (None, 9), page.describe()
    finally:
        await close_all(a, b1, b2, c)


async def test_start_and_end_filters(server):
    """XEP-0313 §4.1.2: start/end (XEP-0082) bound the archive time, inclusive. Three
    batches 0.8 s apart; a boundary between batches selects exactly the batches after or
    before it; start after end gives an empty complete page; each result's delay stamp lies
    within its batch's sending window."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        batches, marks, windows = [], [], []
        for n in range(3):
            if n:
                await asyncio.sleep(0.4)
                marks.append(time.time())
                await asyncio.sleep(0.4)
            t0 = time.time()
            batches.append([m for m, _, _ in await conversation(a, b, 3, f"t{n}-")])
            windows.append((t0, time.time()))
        t1, t2 = (xep82(m) for m in marks)
        await settled(a, batches[-1][-1])
        page = await archive(a)
        assert inner_ids(page) == sum(batches, []), page.describe()
        for i, r in enumerate(page.results):
            stamp = r.find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay").get("stamp")
            lo, hi = windows[i // 3]
            assert lo - 0.3 <= stamp_epoch(stamp) <= hi + 0.3, (
                f"XEP-0313 §4.2: the delay of result {i} ({stamp}) is not within the time "
                f"its message was sent ({xep82(lo)} .. {xep82(hi)})")
        assert inner_ids(await archive(a, mam_form(start=t1))) == batches[1] + batches[2]
        assert inner_ids(await archive(a, mam_form(end=t2))) == batches[0] + batches[1]
        assert inner_ids(await archive(a, mam_form(start=t1, end=t2))) == batches[1]
        assert inner_ids(await archive(a, mam_form(start=t2, end=t1))) == []
        assert inner_ids(await archive(a, mam_form(start=xep82(time.time() + 3600)))) == []
        assert inner_ids(await archive(a, mam_form(end="2000-01-01T00:00:00Z"))) == []
        # Time and paging: the last 2 of the middle batch, then the one before them.
        page = await mam_query(a, mam_form(start=t1, end=t2), rsm_set(max=2, before=""))
        assert inner_ids(page) == batches[1][1:] and not page.complete, page.describe()
        page = await mam_query(a, mam_form(start=t1, end=t2), rsm_set(max=2, before=page.first))
        assert inner_ids(page) == batches[1][:1] and page.complete, page.describe()
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------------------
# 3. what is archived
# ---------------------------------------------------------------------------


async def test_what_is_archived_and_what_is_not(server):
    """XEP-0313 §6.1.1 and XEP-0334: archived (in both archives) are chat and normal
    messages with a body, a body-less message with <store/>, an OMEMO message with a
    payload; not a <no-store/> or <no-permanent-store/> message, a headline, a groupchat
    message, a bare chat state (archive_chat_states is off by default), an OMEMO key
    transport message, or presence."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        omemo = ("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><iv>AA==</iv>"
                 "</header><payload>AAAA</payload></encrypted>")
        key_transport = ("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'>"
                         "<key rid='2'>a2V5</key><iv>AA==</iv></header></encrypted>")
        cases = [  # (id, body, type, extra, archived)
            ("nostore", "secret", "chat", f"<no-store xmlns='{NS_HINTS}'/>", False),
            ("normal", "a normal one", "normal", "", True),
            ("noperm", "fleeting", "chat", f"<no-permanent-store xmlns='{NS_HINTS}'/>", False),
            ("headline", "news", "headline", "", False),
            ("untyped", "no type is normal", None, "", True),
            ("state", None, "chat", f"<composing xmlns='{NS_CHATSTATES}'/>", False),
            ("store", None, "chat", f"<store xmlns='{NS_HINTS}'/>", True),
            ("keytransport", None, "chat", key_transport, False),
            ("omemo", None, "chat", omemo, True),
            ("storeno", "both hints", "chat", f"<store xmlns='{NS_HINTS}'/><no-store xmlns='{NS_HINTS}'/>", False),
            ("last", "the barrier", "chat", "", True),
        ]
        for mid, body, type_, extra, _ in cases:
            await deliver(a, b, mid, body, type_=type_, extra=extra)
        # Neither a groupchat message (delivered or bounced) nor presence.
        await a.send(chat(b.jid, "gc", "to a room?", "groupchat"))
        await a.send(f"<presence to='{b.jid}'><status>not a message</status></presence>")
        await deliver(a, b, "last2", "after the others")
        want = [mid for mid, *_, kept in cases if kept] + ["last2"]
        await settled(a, "last2")
        await settled(b, "last2")
        assert inner_ids(await archive(a)) == want, "alice's (outgoing) archive"
        assert inner_ids(await archive(b)) == want, "bob's (incoming) archive"
    finally:
        await close_all(a, b)


async def test_chat_states_archived_when_configured(make_server):
    """[modules.mam] archive_chat_states = true: a body-less chat state is archived (both
    directions) like a message; a <no-store/> one still is not."""
    srv = make_server({"modules.mam": {"archive_chat_states": True}}, accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        await deliver(a, b, "cs1", None, extra=f"<composing xmlns='{NS_CHATSTATES}'/>")
        await deliver(a, b, "cs2", None, extra=f"<paused xmlns='{NS_CHATSTATES}'/><no-store xmlns='{NS_HINTS}'/>")
        await deliver(b, a, "cs3", None, extra=f"<active xmlns='{NS_CHATSTATES}'/>")
        await deliver(a, b, "cs4", "a body")
        for c in (a, b):
            await settled(c, "cs4")
            page = await archive(c)
            assert inner_ids(page) == ["cs1", "cs3", "cs4"], page.describe()
            assert page.messages[0].find(f"{{{NS_CHATSTATES}}}composing") is not None, page.describe()
    finally:
        await close_all(a, b)


async def test_a_message_between_own_resources_is_archived_once(server):
    """A message from one resource of an account to another is one message of its archive,
    not an outgoing and an incoming copy."""
    alice = server.account()
    a1 = await login(server, alice, resource="one")
    a2 = await login(server, alice, resource="two")
    try:
        await deliver(a1, a2, "self1", "note to self")
        await settled(a1, "self1")
        page = await archive(a1)
        assert inner_ids(page) == ["self1"], page.describe()
        assert page.messages[0].get("from") == a1.jid and page.messages[0].get("to") == a2.jid, page.describe()
    finally:
        await close_all(a1, a2)


async def test_a_message_to_the_bare_jid_is_archived_once_with_one_id(server):
    """A chat message to the bare JID of an account with two available resources (RFC 6121
    §8.5.2.1.1: the server may deliver it to both) is one message of the archive, and every
    copy delivered carries the same stanza-id, the archive's id for it."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b1 = await login(server, bob, resource="b1")
    b2 = await login(server, bob, resource="b2")
    try:
        for c in (b1, b2):
            await c.send_presence(5)
        await a.send(chat(bob.jid, "bare1", "to the bare JID"))
        await settled(b1, "bare1")
        copies = []
        for c in (b1, b2):
            await c.barrier()
            copies += [e for e in c.skipped + await c.expect_silence(0.3) if is_delivered("bare1")(e)]
            c.skipped = []
        assert copies, "RFC 6121 §8.5.2.1.1: the message reached no resource of bob"
        page = await archive(b1)
        assert inner_ids(page) == ["bare1"], page.describe()
        for m in copies:
            assert sid(m, bob.jid) == page.ids[0], f"copy {xml_str(m)}\narchive:\n{page.describe()}"
    finally:
        await close_all(a, b1, b2)


# ---------------------------------------------------------------------------
# 4. stanza ids
# ---------------------------------------------------------------------------


async def test_stanza_ids_forged_stripped_origin_kept_carbons_agree(server):
    """XEP-0359 §3 and XEP-0280: the delivered message carries exactly one <stanza-id
    by='recipient bare JID'/>, the server's (a forged one with that 'by' from the sender is
    removed), the sender's <origin-id/> unchanged; the received carbon carries the same
    stanza-id; the archive's result id for it is that id and the archived copy has no
    forged id. Ids grow with time."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b1 = await login(server, bob, resource="b1")
    b2 = await login(server, bob, resource="b2")
    try:
        resp = await b2.iq(f"<enable xmlns='{NS_CARBONS}'/>", type_="set")
        assert resp.get("type") == "result", xml_str(resp)
        forged = (f"<stanza-id xmlns='{NS_SID}' by='{bob.jid}' id='forged-by-alice'/>"
                  f"<stanza-id xmlns='{NS_SID}' by='{bob.jid.upper()}' id='forged-uppercase'/>"
                  f"<origin-id xmlns='{NS_SID}' id='origin-1234'/>")
        got = await deliver(a, b1, "sid1", "with forged ids", extra=forged)
        sid1 = sid(got, bob.jid)
        assert sid1 not in ("forged-by-alice", "forged-uppercase"), xml_str(got)
        forged_left = [e.get("id") for e in got.findall(f"{{{NS_SID}}}stanza-id") if e.get("id", "").startswith("forged")]
        assert not forged_left, f"XEP-0359 §3.1: forged stanza-ids delivered: {xml_str(got)}"
        origin = got.find(f"{{{NS_SID}}}origin-id")
        assert origin is not None and origin.get("id") == "origin-1234", xml_str(got)
        carbon = await b2.expect(
            lambda e: e.find(f"{{{NS_CARBONS}}}received/{{{NS_FORWARD}}}forwarded/{q('message')}") is not None
            and e.find(f"{{{NS_CARBONS}}}received/{{{NS_FORWARD}}}forwarded/{q('message')}").get("id") == "sid1",
            what="the received carbon of sid1")
        inner = carbon.find(f"{{{NS_CARBONS}}}received/{{{NS_FORWARD}}}forwarded/{q('message')}")
        assert sid(inner, bob.jid) == sid1, f"carbon and delivery disagree:\n{xml_str(carbon)}\n{xml_str(got)}"
        got2 = await deliver(a, b1, "sid2", "a second one")
        sid2 = sid(got2, bob.jid)
        assert sid2 > sid1, f"XEP-0359 ids of later messages sort later: {sid1} then {sid2}"
        await settled(b1, "sid2")
        page = await archive(b1)
        assert page.ids == [sid1, sid2], page.describe()
        copy = page.messages[0]
        assert copy.findtext(q("body")) == "with forged ids", page.describe()
        assert not [e for e in copy.findall(f"{{{NS_SID}}}stanza-id") if (e.get("id") or "").startswith("forged")], (
            f"the archive kept a forged stanza-id:\n{page.describe()}")
        o = copy.find(f"{{{NS_SID}}}origin-id")
        assert o is not None and o.get("id") == "origin-1234", f"origin-id not archived:\n{page.describe()}"
        # Bob's reply gets a stanza-id by alice on delivery, equal to her archive's id.
        reply = await deliver(b1, a, "sid3", "reply")
        await settled(a, "sid3")
        page = await archive(a)
        assert page.ids[-1] == sid(reply, alice.jid) and inner_ids(page) == ["sid1", "sid2", "sid3"], page.describe()
    finally:
        await close_all(a, b1, b2)


# ---------------------------------------------------------------------------
# 5. offline recipient
# ---------------------------------------------------------------------------


async def test_messages_to_an_offline_account_are_archived_and_carry_the_ids(server):
    """XEP-0313 §6.1 with XEP-0160: messages sent while bob has no session are in bob's
    archive (readable before he sends presence), in order, and the offline messages he is
    then given carry <stanza-id/>s equal to the archive's ids."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = None
    try:
        mids = [f"off{i}" for i in range(3)]
        for i, mid in enumerate(mids):
            await a.send(chat(bob.jid, mid, f"while you were out {i}"))
        await a.barrier()
        errors = [e for e in a.skipped if e.get("type") == "error"]
        assert not errors, xml_str(errors[0])
        await settled(a, mids[-1])
        assert inner_ids(await archive(a)) == mids, "alice's outgoing archive"
        b = await login(server, bob, resource="b")
        await settled(b, mids[-1])
        page = await archive(b)
        assert inner_ids(page) == mids, page.describe()
        assert [m.get("from") for m in page.messages] == [a.jid] * 3, page.describe()
        await b.send_presence()
        for mid, archived_id in zip(mids, page.ids):
            m = await b.expect(is_delivered(mid), what=f"offline message {mid}")
            assert sid(m, bob.jid) == archived_id, (
                f"offline delivery of {mid} has stanza-id {stanza_ids(m, bob.jid)}, the archive {archived_id}")
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------------------
# 6. preferences (XEP-0441)
# ---------------------------------------------------------------------------


def prefs_xml(default: str, always=(), never=()) -> str:
    def lst(name, jids):
        return f"<{name}>" + "".join(f"<jid>{j}</jid>" for j in jids) + f"</{name}>"
    return f"<prefs xmlns='{NS_MAM}' default='{default}'>{lst('always', always)}{lst('never', never)}</prefs>"


def read_prefs(iq: ET.Element) -> tuple[str | None, list[str], list[str]]:
    p = iq.find(f"{{{NS_MAM}}}prefs")
    assert iq.get("type") == "result" and p is not None, f"no <prefs/> in {xml_str(iq)}"
    for name in ("always", "never"):
        assert p.find(f"{{{NS_MAM}}}{name}") is not None, f"XEP-0441 §2.1: <{name}/> must be present: {xml_str(iq)}"
    lst = lambda name: sorted(j.text or "" for j in p.findall(f"{{{NS_MAM}}}{name}/{{{NS_MAM}}}jid"))
    return p.get("default"), lst("always"), lst("never")


async def set_prefs(c, default, always=(), never=()):
    """Set and check the reply (§2.1: the applied preferences) and a get agree."""
    want = (default, sorted(always), sorted(never))
    got = read_prefs(await c.iq(prefs_xml(default, always, never), type_="set"))
    assert got == want, f"the set's reply: {got}, expected {want}"
    got = read_prefs(await c.iq(f"<prefs xmlns='{NS_MAM}'/>", type_="get"))
    assert got == want, f"a get after the set: {got}, expected {want}"


async def test_preferences_get_set_and_what_they_archive(server):
    """XEP-0441 §2: the preferences start as default='always' with empty lists; default
    'never' archives only JIDs in <always/>; default 'always' archives all but JIDs in
    <never/>; a full JID in <never/> excludes that resource only. Bob's archive (his own
    preferences untouched) keeps everything."""
    alice, bob, carol, dave = (server.account() for _ in range(4))
    a = await login(server, alice, resource="a")
    b1 = await login(server, bob, resource="b1")
    b2 = await login(server, bob, resource="b2")
    c = await login(server, carol, resource="c")
    d = await login(server, dave, resource="d")
    try:
        assert read_prefs(await a.iq(f"<prefs xmlns='{NS_MAM}'/>", type_="get")) == ("always", [], [])
        await set_prefs(a, "never", always=[carol.jid])
        await deliver(b1, a, "p1", "bob while never")
        await deliver(c, a, "p2", "carol always")
        await deliver(a, b1, "p3", "to bob while never")
        await deliver(a, c, "p4", "to carol always")
        await settled(a, "p4")
        assert inner_ids(await archive(a)) == ["p2", "p4"]
        await set_prefs(a, "always", never=[bob.jid])
        await deliver(b1, a, "p5", "bob is never")
        await deliver(a, b2, "p6", "to bob/b2, never")
        await deliver(c, a, "p7", "carol by default")
        await deliver(d, a, "p8", "dave by default")
        await settled(a, "p8")
        assert inner_ids(await archive(a)) == ["p2", "p4", "p7", "p8"]
        await set_prefs(a, "always", never=[b2.jid])
        await deliver(b2, a, "p9", "bob/b2 not")
        await deliver(b1, a, "p10", "bob/b1 archived")
        await settled(a, "p10")
        assert inner_ids(await archive(a)) == ["p2", "p4", "p7", "p8", "p10"]
        await settled(b1, "p10")
        assert inner_ids(await archive(b1, mam_form(**{"with": alice.jid}))) == [
            "p1", "p3", "p5", "p6", "p9", "p10"]
        # A malformed set changes nothing (XEP-0441 §2.1; proto: bad-request).
        await expect_error(a, f"<prefs xmlns='{NS_MAM}' default='sometimes'/>", "bad-request")
        await expect_error(a, f"<prefs xmlns='{NS_MAM}'/>", "bad-request")
        assert read_prefs(await a.iq(f"<prefs xmlns='{NS_MAM}'/>", type_="get")) == ("always", [], [b2.jid])
    finally:
        await close_all(a, b1, b2, c, d)


async def test_preferences_roster_default(server):
    """XEP-0441 §2.1.1 default='roster': messages with a contact in the roster (an item,
    whatever the subscription) are archived, with anyone else not."""
    alice, carol, dave = (server.account() for _ in range(3))
    a = await login(server, alice, resource="a")
    c = await login(server, carol, resource="c")
    d = await login(server, dave, resource="d")
    try:
        assert (await a.roster_set(roster_item_xml(carol.jid, name="Carol"))).get("type") == "result"
        await set_prefs(a, "roster")
        await deliver(d, a, "r1", "dave is not")
        await deliver(a, d, "r2", "to dave")
        await deliver(c, a, "r3", "carol is a contact")
        await deliver(a, c, "r4", "to carol")
        await settled(a, "r4")
        await settled(d, "r2")
        assert inner_ids(await archive(a)) == ["r3", "r4"]
        assert inner_ids(await archive(d)) == ["r1", "r2"], "dave's own archive keeps everything"
    finally:
        await close_all(a, c, d)


async def test_configured_default_never(make_server):
    """[modules.mam] default = "never": an account's preferences start as 'never' and
    nothing is archived until it asks for more."""
    srv = make_server({"modules.mam": {"default": "never"}}, accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        assert read_prefs(await a.iq(f"<prefs xmlns='{NS_MAM}'/>", type_="get"))[0] == "never"
        await deliver(a, b, "n1", "not archived")
        assert inner_ids(await archive(a)) == [] and inner_ids(await archive(b)) == []
        await set_prefs(a, "always")
        await deliver(a, b, "n2", "alice archives now")
        await deliver(b, a, "n3", "so does she here")
        await settled(a, "n3")
        assert inner_ids(await archive(a)) == ["n2", "n3"]
        assert inner_ids(await archive(b)) == [], "bob's default is still never"
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------------------
# 7. errors
# ---------------------------------------------------------------------------


async def test_query_errors(server):
    """XEP-0313 §4.1.3, §4.3.2 and proto's mapping (MamError::condition): an RSM
    <after/>/<before/> or after-id/before-id not in the archive is item-not-found; an
    unknown form field or RSM <index/> feature-not-implemented; a malformed date, JID,
    form type, FORM_TYPE, <max/>, or <after/> with <before/> bad-request. No result
    message is sent for a refused query."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        await conversation(a, b, 2, "er")
        await settled(a, "er1")
        cases = []
        for unknown in UNKNOWN_IDS:
            cases += [
                ("", rsm_set(max=5, after=unknown), "item-not-found"),
                ("", rsm_set(max=5, before=unknown), "item-not-found"),
                (mam_form(after_id=unknown), "", "item-not-found"),
                (mam_form(before_id=unknown), "", "item-not-found"),
            ]
        cases += [
            (mam_form(**{"{urn:example}free-text-search": "x"}), "", "feature-not-implemented"),
            (mam_form(**{"include-groupchat": "true"}), "", "feature-not-implemented"),
            ("", f"<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><index>1</index></set>",
             "feature-not-implemented"),
            (mam_form(start="yesterday"), "", "bad-request"),
            (mam_form(end="2010-07-07"), "", "bad-request"),
            (mam_form(**{"with": "@localhost"}), "", "bad-request"),
            ("<x xmlns='jabber:x:data' type='form'/>", "", "bad-request"),
            ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1"
             "</value></field></x>", "", "bad-request"),
            ("", rsm_set(max="ten"), "bad-request"),
            ("", f"<set xmlns='http://jabber.org/protocol/rsm'><after>a</after><before/></set>", "bad-request"),
        ]
        for form, rsm, condition in cases:
            page = await mam_query(a, form, rsm)
            assert page.error == condition and not page.results, (
                f"expected <{condition}/> for {form}{rsm}:\n{page.describe()}")
        # The node still answers a good query after all of that.
        assert len((await archive(a)).results) == 2
    finally:
        await close_all(a, b)


async def test_paging_on_from_the_id_just_received(server):
    """A client catching up pages on from the stanza-id of the last message it received. The
    archive is written milliseconds after delivery (group commit), so that id may not be in
    it yet: it must not be refused with item-not-found (which is for ids the server never
    assigned, see test_query_errors), and the page after it holds nothing older. 20 tries,
    each querying the moment the message arrives (on the old binary 4 in 5 were refused)."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        for i in range(20):
            got = await deliver(a, b, f"just{i}", f"body {i}")
            last = sid(got, bare(b.jid))
            page = await mam_query(b, "", rsm_set(max=10, after=last))
            assert page.error is None, f"paging on from {last} just received:\n{page.describe()}"
            assert not page.results, f"nothing is newer than {last}:\n{page.describe()}"
    finally:
        await close_all(a, b)


async def test_another_accounts_archive_is_refused(server):
    """XEP-0313 §4: a user queries its own archive only. A query, a metadata or preferences
    request to another account's bare JID gets an error (forbidden or service-unavailable)
    and reveals nothing of that archive."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        await conversation(b, a, 2, "fa")
        await settled(a, "fa1")
        refused = {"forbidden", "service-unavailable"}
        page = await mam_query(a, "", rsm_set(max=10), to=bob.jid)
        assert page.error in refused and not page.results, page.describe()
        await expect_error(a, f"<metadata xmlns='{NS_MAM}'/>", refused, type_="get", to=bob.jid)
        await expect_error(a, f"<prefs xmlns='{NS_MAM}'/>", refused, type_="get", to=bob.jid)
        await expect_error(a, prefs_xml("never"), refused, to=bob.jid)
        # Bob's preferences were not changed by alice.
        assert read_prefs(await b.iq(f"<prefs xmlns='{NS_MAM}'/>", type_="get"))[0] == "always"
        # A query to one's own bare JID (explicit 'to') works.
        page = await mam_query(a, "", rsm_set(max=10), to=alice.jid)
        assert inner_ids(page) == ["fa0", "fa1"], page.describe()
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------------------
# 8. metadata, the form, disco
# ---------------------------------------------------------------------------


async def test_metadata_query_form_and_disco(server):
    """XEP-0313 §5.1 (form), §6.2 (disco#info of the account's bare JID: urn:xmpp:mam:2,
    urn:xmpp:mam:2#extended, and XEP-0359 urn:xmpp:sid:0), and the extended archive
    metadata: an empty <metadata/> for an empty archive, then <start/> and <end/> with the
    first and last ids and their times."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        info = await a.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=alice.jid)
        features = {f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")}
        missing = {NS_MAM, f"{NS_MAM}#extended", NS_SID} - features
        assert info.get("type") == "result" and not missing, f"missing {missing}: {xml_str(info)}"

        form = await a.iq(f"<query xmlns='{NS_MAM}'/>", type_="get")
        x = form.find(f"{{{NS_MAM}}}query/{{jabber:x:data}}x")
        assert form.get("type") == "result" and x is not None, xml_str(form)
        fields = {f.get("var"): f for f in x.findall("{jabber:x:data}field")}
        assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= set(fields), xml_str(form)
        assert fields["FORM_TYPE"].findtext("{jabber:x:data}value") == NS_MAM, xml_str(form)
        assert x.find(".//{jabber:x:data}required") is None, f"§4.1: no field may be required: {xml_str(form)}"

        meta = await a.iq(f"<metadata xmlns='{NS_MAM}'/>")
        el = meta.find(f"{{{NS_MAM}}}metadata")
        assert meta.get("type") == "result" and el is not None and len(el) == 0, (
            f"an empty archive has an empty <metadata/>: {xml_str(meta)}")

        await conversation(a, b, 3, "md")
        await settled(a, "md2")
        page = await archive(a)
        meta = await a.iq(f"<metadata xmlns='{NS_MAM}'/>")
        start = meta.find(f"{{{NS_MAM}}}metadata/{{{NS_MAM}}}start")
        end = meta.find(f"{{{NS_MAM}}}metadata/{{{NS_MAM}}}end")
        assert start is not None and end is not None, xml_str(meta)
        assert (start.get("id"), end.get("id")) == (page.ids[0], page.ids[-1]), (
            f"{xml_str(meta)}\n{page.describe()}")
        stamps = [r.find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay").get("stamp")
                  for r in (page.results[0], page.results[-1])]
        for el, stamp in zip((start, end), stamps):
            assert abs(stamp_epoch(el.get("timestamp")) - stamp_epoch(stamp)) < 1.0, (
                f"metadata time {el.get('timestamp')} vs the result's delay {stamp}")
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------------------
# 9. deletion and purge
# ---------------------------------------------------------------------------


async def test_deleting_an_account_deletes_its_archive(server):
    """`switchboard user del` removes the account's archive with it: an account made again
    with the same name starts with an empty archive and empty metadata. The contact's own
    archive keeps the conversation."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        await conversation(a, b, 2, "del")
        await settled(a, "del1")
        await settled(b, "del1")
        assert len((await archive(a)).results) == 2
        await a.close()
        r = server.cli("user", "del", alice.jid)
        assert r.returncode == 0, r.stdout + r.stderr
        r = server.cli("user", "add", alice.jid, "--password", alice.password)
        assert r.returncode == 0, r.stdout + r.stderr
        a = await login(server, alice, resource="again")
        page = await archive(a)
        assert page.results == [], f"the deleted account's archive is back:\n{page.describe()}"
        meta = await a.iq(f"<metadata xmlns='{NS_MAM}'/>")
        assert len(meta.find(f"{{{NS_MAM}}}metadata")) == 0, xml_str(meta)
        assert inner_ids(await archive(b)) == ["del0", "del1"]
    finally:
        await close_all(a, b)


async def test_mam_purge_empties_one_archive(server):
    """`switchboard mam purge JID` (node running) empties that account's archive and only
    that one; the account archives again afterwards."""
    alice, bob = server.account(), server.account()
    a = await login(server, alice, resource="a")
    b = await login(server, bob, resource="b")
    try:
        await conversation(a, b, 4, "pu")
        # Settled first: a write still queued would land after the purge.
        await settled(a, "pu3")
        await settled(b, "pu3")
        r = server.cli("mam", "purge", alice.jid)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        page = await archive(a)
        assert page.results == [], f"after `mam purge`:\n{page.describe()}"
        meta = await a.iq(f"<metadata xmlns='{NS_MAM}'/>")
        assert len(meta.find(f"{{{NS_MAM}}}metadata")) == 0, xml_str(meta)
        assert inner_ids(await archive(b)) == ["pu0", "pu1", "pu2", "pu3"], "bob's archive was purged too"
        await deliver(b, a, "pu4", "after the purge")
        await settled(a, "pu4")
        assert inner_ids(await archive(a)) == ["pu4"]
    finally:
        await close_all(a, b)


# ---------------------------------------------------------------------------
# 10. restart and kill -9
# ---------------------------------------------------------------------------


async def snapshot(srv, account) -> list[tuple]:
    """(id, stamp, inner message XML) of the whole archive, read with a new session."""
    c = await login(srv, account, resource=new_id("snap"))
    try:
        page = await archive(c)
        return [(rid, r.find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay").get("stamp"),
                 xml_str(m)) for rid, r, m in zip(page.ids, page.results, page.messages)]
    finally:
        await c.close()


async def restart_then_kill9(srv, alice, bob, held: int, more: int, prefix: str) -> dict:
    """Both archives (each `held` messages) read back identical after SIGTERM and a start;
    then `more` messages each way, delivered 0.5 s before a kill -9 (archive writes are
    group-committed after delivery), are all there after it. Returns the archives then."""
    before = {acct.jid: await snapshot(srv, acct) for acct in (alice, bob)}
    assert all(len(v) == held for v in before.values()), before
    srv.stop()
    srv.start()
    after = {acct.jid: await snapshot(srv, acct) for acct in (alice, bob)}
    assert after == before, f"after a restart:\n{after}\nbefore:\n{before}"

    a = await login(srv, alice, resource="a2")
    b = await login(srv, bob, resource="b2")
    await conversation(a, b, more, prefix)
    await asyncio.sleep(0.5)
    expected = {acct.jid: await snapshot(srv, acct) for acct in (alice, bob)}
    assert all(len(v) == held + more for v in expected.values()), expected
    srv.kill9()
    a.abort()
    b.abort()
    srv.start()
    after = {acct.jid: await snapshot(srv, acct) for acct in (alice, bob)}
    assert after == expected, f"after kill -9:\n{after}\nbefore:\n{expected}"
    return expected


async def test_archive_survives_restart_and_kill9(make_server):
    """The embedded archive is durable: after SIGTERM and a start, both archives read back
    identical (ids, stamps, content); messages delivered 0.5 s before a kill -9 (archive
    writes are group-committed, so a small window is allowed) are all there after it."""
    srv = make_server(accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    await conversation(a, b, 4, "rs")
    await settled(a, "rs3")
    await settled(b, "rs3")
    await close_all(a, b)
    expected = await restart_then_kill9(srv, alice, bob, 4, 3, "k9")
    # Still archiving, with ids after the old ones.
    a = await login(srv, alice, resource="a3")
    b = await login(srv, bob, resource="b3")
    try:
        await deliver(a, b, "post", "after the crash")
        await settled(a, "post")
        page = await archive(a)
        assert page.ids[:-1] == [e[0] for e in expected[alice.jid]] and inner_ids(page)[-1] == "post", page.describe()
    finally:
        await close_all(a, b)


async def archive_count(srv, account) -> int | None:
    """The <count/> of the account's whole archive (XEP-0059 §2.7: <max>0</max>)."""
    c = await login(srv, account, resource=new_id("count"))
    try:
        page = await mam_query(c, "", rsm_set(max=0))
        assert page.error is None, page.describe()
        return page.count
    finally:
        await c.close()


async def test_an_archive_past_a_full_stage_reads_whole_and_survives_kill9(make_server):
    """On a node alone the archive's inserts wait in a stage that is sealed at 32,768
    entries and put into the keyspace by a settle thread while a second stage takes the
    inserts (storage::lsm_stage). 17,000 messages (two records each, one per archive) pass
    a full stage: both archives count every one of them once delivered, and again after a
    kill -9 (each stage's log is replayed)."""
    n = 17_000
    srv = make_server(accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        # 500 at a time, each read before the next are sent (bob's send queue is bounded).
        for start in range(0, n, 500):
            end = min(n, start + 500)
            await a.send("".join(chat(b.jid, f"st{i}", f"m{i}") for i in range(start, end)), timeout=30)
            for i in range(start, end):
                await b.recv_match(lambda e: e.tag == q("message") and (e.get("id") or "").startswith("st"),
                                   timeout=60, what=f"message {i + 1} of {n}")
                b.skipped.clear()
        await settled(a, f"st{n - 1}", timeout=30)
        await settled(b, f"st{n - 1}", timeout=30)
        counts = {acct.jid: await archive_count(srv, acct) for acct in (alice, bob)}
        assert counts == {alice.jid: n, bob.jid: n}, counts
    finally:
        a.abort()
        b.abort()
    srv.kill9()
    srv.start()
    counts = {acct.jid: await archive_count(srv, acct) for acct in (alice, bob)}
    assert counts == {alice.jid: n, bob.jid: n}, f"after kill -9: {counts}"
    print(f"\n[archive past a full stage] {counts}")


# ---------------------------------------------------------------------------
# page sizes and metrics
# ---------------------------------------------------------------------------


async def test_page_size_default_and_cap(make_server):
    """[modules.mam] max_page is the page size without RSM <max/> (50 by default, here 5);
    a client <max/> above 250 is capped to 250 (XEP-0313 §4.3: the server MAY cap it)."""
    srv = make_server({"modules.mam": {"max_page": 5}}, accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        n = 260
        for i in range(n):
            await a.send(chat(b.jid, f"cap{i}", f"m{i}"))
        await b.expect(is_delivered(f"cap{n - 1}"), timeout=30, what="the last of 260 messages")
        await settled(a, f"cap{n - 1}")
        page = await mam_query(a)
        got = check_results(page, a, alice.jid)
        assert len(got) == 5 and not page.complete, f"max_page 5: {len(got)} results\n{page.describe()}"
        assert inner_ids(page) == [f"cap{i}" for i in range(5)], page.describe()
        page = await mam_query(a, "", rsm_set(max=1000), timeout=30)
        got = check_results(page, a, alice.jid)
        assert len(got) == 250 and not page.complete, f"max 1000 gave {len(got)} results, expected 250"
        assert inner_ids(page) == [f"cap{i}" for i in range(250)]
        assert page.count in (None, n), page.describe()
        rest = await mam_query(a, "", rsm_set(max=1000, after=page.last), timeout=30)
        assert inner_ids(rest) == [f"cap{i}" for i in range(250, n)] and rest.complete, rest.describe()
    finally:
        await close_all(a, b)


async def test_per_account_cap(make_server):
    """[modules.mam] max_messages_per_account = 5: the retention pass (every few seconds)
    trims each archive to its newest 5 messages, the others untouched; within 20 s."""
    srv = make_server({"modules.mam": {"max_messages_per_account": 5}}, accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        sent = [m for m, _, _ in await conversation(a, b, 8, "cap")]
        for c in (a, b):
            await settled(c, sent[-1])
        deadline = time.monotonic() + 20
        for c in (a, b):
            while True:
                got = inner_ids(await archive(c))
                if len(got) <= 5:
                    break
                assert time.monotonic() < deadline, f"{c.jid}'s archive still holds {got} after 20 s"
                await asyncio.sleep(0.5)
            assert got == sent[-5:], f"{c.jid}: the cap kept {got}, not the newest five {sent[-5:]}"
        # A later message: again at most 5, the newest.
        await deliver(a, b, "cap-late", "one more")
        await settled(a, "cap-late")
        deadline = time.monotonic() + 20
        while len(got := inner_ids(await archive(a))) > 5:
            assert time.monotonic() < deadline, f"alice's archive still holds {got} after 20 s"
            await asyncio.sleep(0.5)
        assert got == sent[-4:] + ["cap-late"], got
    finally:
        await close_all(a, b)


# libfaketime (Debian `libfaketime`, installed by scripts/test-deps.sh): runs the node with
# its wall clock moved, so that a test can archive messages "days ago".
FAKETIME_LIB = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)


async def test_retention_days_deletes_what_is_older(make_server):
    """[modules.mam] retention_days = 2: a conversation archived while the node's wall clock
    was three days behind (libfaketime) is kept while that clock runs, and deleted from both
    archives by the retention pass (every few seconds) once the node runs on the real clock;
    what is archived today stays."""
    assert FAKETIME_LIB, "libfaketime is not installed (scripts/test-deps.sh installs it)"
    srv = make_server({"modules.mam": {"retention_days": 2}}, accounts=2, start=False)
    srv.extra_env = {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": "-3d",
                     "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    srv.start()
    alice, bob = srv.account(), srv.account()
    await archived_conversation(srv, alice, bob, 3, "old")
    await asyncio.sleep(6)  # a retention pass on the node's own (behind) clock keeps them
    c = await login(srv, alice, resource="old")
    try:
        # (`archive` would check that the stamps are about now.)
        page = await mam_query(c, "", rsm_set(max=50))
    finally:
        await c.close()
    assert inner_ids(page) == ["old0", "old1", "old2"], page.describe()
    stamp = page.results[0].find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay").get("stamp")
    moved = time.time() - calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    assert moved > 2.5 * 86400, f"archived at {stamp}: the node's clock was not moved back"

    srv.stop()
    srv.extra_env = {}
    srv.start()
    await archived_conversation(srv, alice, bob, 2, "new")
    deadline = time.monotonic() + 20
    for account in (alice, bob):
        while (got := inner_ids(await archive_of(srv, account))) != ["new0", "new1"]:
            assert time.monotonic() < deadline, (
                f"{account.jid}'s archive holds {got} 20 s after the start on the real clock")
            await asyncio.sleep(0.5)


async def archive_of(srv, account):
    """`account`'s whole archive, read with a session of its own (checked as `archive`)."""
    c = await login(srv, account, resource=new_id("read"))
    try:
        return await archive(c)
    finally:
        await c.close()


async def test_metrics(make_server):
    """/metrics: switchboard_mam_archived_total grows by two per message between two local
    accounts (outgoing and incoming copy), switchboard_mam_queries_total and the
    switchboard_mam_query_duration_seconds histogram by the queries made."""
    srv = make_server(accounts=2)
    alice, bob = srv.account(), srv.account()
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        m0 = metrics(srv)
        await conversation(a, b, 3, "mx")
        deadline = time.monotonic() + 5
        while metrics(srv).get("switchboard_mam_archived_total", 0) - m0.get("switchboard_mam_archived_total", 0) < 6:
            assert time.monotonic() < deadline, f"archived_total did not grow by 6 in 5 s: {metrics(srv)}"
            await asyncio.sleep(0.1)
        for _ in range(3):
            await archive(a)
        m1 = metrics(srv)
        d = {k: m1.get(k, 0) - m0.get(k, 0) for k in (
            "switchboard_mam_archived_total", "switchboard_mam_queries_total",
            "switchboard_mam_query_duration_seconds_count")}
        assert d["switchboard_mam_archived_total"] == 6, d
        assert d["switchboard_mam_queries_total"] >= 3, d
        assert d["switchboard_mam_query_duration_seconds_count"] >= 3, d
    finally:
        await close_all(a, b)
