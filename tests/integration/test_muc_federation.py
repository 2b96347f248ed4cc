"""Group chat (XEP-0045) across federation, with a private Prosody (Debian `prosody`, its
`muc` component on conference.pro.fed.test) in "selfsigned" mode, so every stream is
authenticated with Server Dialback (XEP-0220), including the ones whose domain is a group
chat service: conference.sb.fed.test towards pro.fed.test (our rooms' stanzas) and
conference.pro.fed.test towards sb.fed.test (Prosody's rooms').

- A Prosody user joins a room of ours, sees the occupants with their `#user` items,
  chats (each body once for each party, the sender's reflection included), exchanges
  private messages through the room both ways and leaves; it is never taken for a
  vanished occupant (no 333). When its server is killed, the room's next message to it
  bounces and the room removes it with 333.
- One of our users joins a Prosody room and chats with a Prosody occupant; when its
  session ends, its directed presence (RFC 6121 §4.6) tells the room it left.
- The service's disco#info asked from Prosody is answered by our component, not by the
  server's own handlers."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

import pytest

from federation import (
    METHOD,
    PROSODY_BIN,
    Certs,
    make_sb,
    PROSODY_DOMAIN,
    SB_DOMAIN,
    bodies,
    clients_factory,
    Fed,
    sb_and_prosody,
    wait_until,
)

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = NS_MUC + "#user"
NS_OWNER = NS_MUC + "#owner"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"

SB_MUC = f"conference.{SB_DOMAIN}"
PROSODY_MUC = f"conference.{PROSODY_DOMAIN}"

pytestmark = pytest.mark.skipif(
    PROSODY_BIN is None, reason="prosody is not installed (apt-get install prosody)"
)


@pytest.fixture(scope="module", params=["selfsigned", "ca"])
def fed(request, tmp_path_factory):
    """Both certificate modes: in "ca" mode our certificate names the service's domain
    besides ours (one certificate with both SANs, what an operator gets from a CA for a
    server with a group chat service), Prosody's service has a certificate of its own, and
    Prosody refuses dialback (s2s_secure_auth)."""
    mode = request.param
    with sb_and_prosody(tmp_path_factory.mktemp(f"fed-muc-{mode}"), mode, accounts=6,
                        muc=True) as (sb, prosody):
        yield Fed(mode, sb, prosody)


@pytest.fixture
async def clients(fed):
    pair, stop = clients_factory(fed)
    yield pair
    await stop()


def user_x(p):
    return p.xml.find(f"{{{NS_USER}}}x")


def codes(p) -> list[str]:
    x = user_x(p)
    return [] if x is None else [s.get("code") for s in x.findall(f"{{{NS_USER}}}status")]


def item(p) -> dict:
    x = user_x(p)
    it = None if x is None else x.find(f"{{{NS_USER}}}item")
    return {} if it is None else dict(it.attrib)


def from_occupant(c, occupant: str, ptype: str | None = None) -> list:
    return [
        p for p in c.presences
        if str(p["from"]) == occupant and (ptype is None or p["type"] == ptype)
    ]


def link_authenticated(fed, local: str, remote: str) -> None:
    """Our log shows the streams between `local` (one of our domains) and `remote` (the
    peer's) authenticated with the mode's method, both ways: our outbound link from `local`,
    and the peer's inbound stream from `remote` addressed to `local`; never with the other
    method (in "ca" mode: SASL EXTERNAL, XEP-0178, for the service domains too)."""
    method = METHOD[fed.mode]
    fed.sb.wait_log(
        rf's2s outbound link authenticated local={local} remote={remote} '
        rf'method="{method}" tls=true'
    )
    fed.sb.wait_log(rf'domain={remote} method="{method}" tls=true local={local}')
    other = METHOD["ca" if fed.mode == "selfsigned" else "selfsigned"]
    log = fed.sb.log_text()
    assert f'local={local} remote={remote} method="{other}"' not in log, log[-3000:]
    assert f'domain={remote} method="{other}" tls=true local={local}' not in log, log[-3000:]


def count(c, body: str) -> int:
    return sum(1 for b in bodies(c) if b == body)


def join(c, occupant: str) -> None:
    p = c.xmpp.make_presence(pto=occupant)
    p.append(ET.Element(f"{{{NS_MUC}}}x"))
    p.send()


def leave(c, occupant: str) -> None:
    c.xmpp.make_presence(pto=occupant, ptype="unavailable").send()


async def joined(c, occupant: str) -> object:
    """The room's self-presence (status 110) for `occupant`."""
    await wait_until(
        lambda: any("110" in codes(p) for p in from_occupant(c, occupant, "available")),
        30, f"{c.jid} in {occupant}",
    )
    return next(p for p in from_occupant(c, occupant, "available") if "110" in codes(p))


async def instant(c, room: str) -> None:
    iq = c.xmpp.Iq()
    iq["type"] = "set"
    iq["to"] = room
    q = ET.Element(f"{{{NS_OWNER}}}query")
    ET.SubElement(q, f"{{{NS_DATA}}}x", {"type": "submit"})
    iq.append(q)
    reply = await iq.send(timeout=20)
    assert reply["type"] == "result"


def groupchat(c, room: str, body: str) -> None:
    c.xmpp.send_message(mto=room, mbody=body, mtype="groupchat")


async def exactly_once(clients_, body: str) -> None:
    """Every client got `body` once, and no second copy turns up a little later."""
    for c in clients_:
        await wait_until(lambda c=c: count(c, body) >= 1, 30, f"{body!r} at {c.jid}")
    await asyncio.sleep(1.0)
    for c in clients_:
        assert count(c, body) == 1, (c.jid, bodies(c))


@pytest.mark.timeout(180)
async def test_a_prosody_user_in_a_switchboard_room(fed, clients):
    a, b = await clients()
    room = f"fedroom@{SB_MUC}"
    alice, bob = f"{room}/alice", f"{room}/bob"

    # Our user creates the room (XEP-0045 §10.1.2: 201, locked until configured).
    join(a, alice)
    own = await joined(a, alice)
    assert "201" in codes(own)
    await instant(a, room)

    # The Prosody user joins over s2s: it sees alice first, then itself (§7.2.3).
    join(b, bob)
    own_b = await joined(b, bob)
    assert item(own_b)["role"] == "participant"
    assert item(own_b)["affiliation"] == "none"
    alice_at_b = from_occupant(b, alice, "available")
    assert alice_at_b, [str(p) for p in b.presences]
    assert b.presences.index(alice_at_b[0]) < b.presences.index(own_b)
    assert item(alice_at_b[0])["affiliation"] == "owner"
    assert item(alice_at_b[0])["role"] == "moderator"
    # Semi-anonymous (whois moderators): bob, not a moderator, does not see alice's JID.
    assert "jid" not in item(alice_at_b[0])

    # Alice, a moderator, sees bob's real JID: the Prosody user's full JID.
    await wait_until(lambda: from_occupant(a, bob, "available"), 30, "bob's presence at alice")
    bob_at_a = from_occupant(a, bob, "available")[0]
    assert item(bob_at_a)["jid"] == b.jid
    assert item(bob_at_a)["role"] == "participant"
    assert "110" not in codes(bob_at_a)

    # Groupchat both ways; each body once at each party (the sender's reflection included).
    groupchat(a, room, "from switchboard to the room")
    await exactly_once([a, b], "from switchboard to the room")
    got = next(m for m in b.messages if m["body"] == "from switchboard to the room")
    assert str(got["from"]) == alice and got["type"] == "groupchat"
    groupchat(b, room, "from prosody to the room")
    await exactly_once([a, b], "from prosody to the room")
    got = next(m for m in a.messages if m["body"] == "from prosody to the room")
    assert str(got["from"]) == bob

    # Private messages through the room, both ways (§7.5).
    a.xmpp.send_message(mto=bob, mbody="psst bob", mtype="chat")
    await wait_until(lambda: count(b, "psst bob") == 1, 30, "the private message at bob")
    got = next(m for m in b.messages if m["body"] == "psst bob")
    assert str(got["from"]) == alice
    b.xmpp.send_message(mto=alice, mbody="psst alice", mtype="chat")
    await wait_until(lambda: count(a, "psst alice") == 1, 30, "the private message at alice")
    got = next(m for m in a.messages if m["body"] == "psst alice")
    assert str(got["from"]) == bob

    # The remote occupant was never taken for a vanished one (333), and is still there.
    assert not [p for p in a.presences + b.presences if "333" in codes(p)]
    groupchat(a, room, "still there?")
    await exactly_once([a, b], "still there?")

    # Bob leaves: alice sees him go (no 333, no kick), bob gets his own unavailable.
    leave(b, bob)
    await wait_until(lambda: from_occupant(a, bob, "unavailable"), 30, "bob's leaving at alice")
    gone = from_occupant(a, bob, "unavailable")[0]
    assert "333" not in codes(gone) and "307" not in codes(gone)
    await wait_until(
        lambda: any("110" in codes(p) for p in from_occupant(b, bob, "unavailable")),
        30, "bob's own unavailable",
    )
    # Gone means gone: later groupchat reaches alice only.
    groupchat(a, room, "after bob left")
    await exactly_once([a], "after bob left")
    assert count(b, "after bob left") == 0

    # The room's stanzas left on links of the service's domain (from conference.sb.fed.test
    # to pro.fed.test), and Prosody's user reached the room on a stream to it.
    link_authenticated(fed, SB_MUC, PROSODY_DOMAIN)


@pytest.mark.timeout(180)
async def test_a_switchboard_user_in_a_prosody_room(fed, clients):
    a, b = await clients()
    room = f"prosroom@{PROSODY_MUC}"
    alice, bob = f"{room}/alice", f"{room}/bob"

    # The Prosody user creates the room (unlocked at once: muc_room_locking = false).
    join(b, bob)
    await joined(b, bob)

    # Our user joins it over s2s: the room's stanzas come from conference.pro.fed.test.
    join(a, alice)
    own = await joined(a, alice)
    assert item(own)["role"] == "participant"
    assert from_occupant(a, bob, "available"), [str(p) for p in a.presences]
    await wait_until(lambda: from_occupant(b, alice, "available"), 30, "alice's presence at bob")
    assert item(from_occupant(b, alice, "available")[0]).get("jid") == a.jid

    groupchat(a, room, "hello prosody room")
    await exactly_once([a, b], "hello prosody room")
    groupchat(b, room, "welcome, switchboard")
    await exactly_once([a, b], "welcome, switchboard")
    got = next(m for m in a.messages if m["body"] == "welcome, switchboard")
    assert str(got["from"]) == bob and got["type"] == "groupchat"

    # Our user's session ends without a word to the room: its directed presence ends with
    # it (RFC 6121 §4.6.3), and the room tells bob that alice left.
    a.xmpp.abort()
    await wait_until(lambda: from_occupant(b, alice, "unavailable"), 30,
                     "alice's unavailable in the Prosody room")

    # Our user's stanzas went to the Prosody service's domain on a link of ours, and the
    # room's came from conference.pro.fed.test, authenticated on its own.
    link_authenticated(fed, SB_DOMAIN, PROSODY_MUC)


@pytest.mark.timeout(120)
async def test_the_service_answers_disco_from_prosody(fed, clients):
    _a, b = await clients()
    iq = b.xmpp.Iq()
    iq["type"] = "get"
    iq["to"] = SB_MUC
    iq.append(ET.Element(f"{{{NS_DISCO_INFO}}}query"))
    reply = await iq.send(timeout=20)
    assert reply["type"] == "result"
    q = reply.xml.find(f"{{{NS_DISCO_INFO}}}query")
    identities = [(i.get("category"), i.get("type")) for i in q.findall(f"{{{NS_DISCO_INFO}}}identity")]
    assert ("conference", "text") in identities, identities
    features = [f.get("var") for f in q.findall(f"{{{NS_DISCO_INFO}}}feature")]
    assert NS_MUC in features


UNNAMED = "the certificate in tls.cert does not name these s2s domains"


def test_a_certificate_naming_the_service_raises_no_warning(fed):
    assert UNNAMED not in fed.sb.log_text()


def test_a_certificate_without_the_service_domain_is_pointed_out(tmp_path):
    """The operator's certificate names the served domain only: the node starts (dialback
    still works for the service), and its log says which domain the certificate leaves
    out, so that SASL EXTERNAL towards peers that require it can be fixed."""
    certs = Certs(tmp_path / "certs", "ca", [SB_DOMAIN])
    sb = make_sb(tmp_path / "sb", certs, routes={}, accounts=0)
    sb.start()
    try:
        line = sb.wait_log(rf"{UNNAMED}.*")
        assert f'missing=["{SB_MUC}"]' in line.group(0), line.group(0)
    finally:
        sb.stop()


@pytest.fixture
def own_fed(tmp_path):
    """A pair of its own, for a test that stops Prosody."""
    with sb_and_prosody(tmp_path, "selfsigned", accounts=2, muc=True) as (sb, prosody):
        yield Fed("selfsigned", sb, prosody)


@pytest.mark.timeout(180)
async def test_a_remote_occupant_whose_server_is_gone_is_removed_with_333(own_fed):
    """The other side of "no misfire": when the remote occupant's server really is gone,
    the room's next message to it bounces (remote-server-not-found from our s2s) and the
    room removes it with 333 (XEP-0045 §9.9 of 1.34)."""
    pair, stop = clients_factory(own_fed)
    try:
        a, b = await pair()
        room = f"gone@{SB_MUC}"
        alice, bob = f"{room}/alice", f"{room}/bob"
        join(a, alice)
        await joined(a, alice)
        await instant(a, room)
        join(b, bob)
        await joined(b, bob)
        await wait_until(lambda: from_occupant(a, bob, "available"), 30, "bob at alice")
        groupchat(a, room, "before prosody stops")
        await exactly_once([a, b], "before prosody stops")
        assert not [p for p in a.presences if "333" in codes(p)]

        # Killed, so that nobody tells the room bob left (a clean stop would: Prosody sends
        # his session's directed unavailable presence on the way out).
        own_fed.peer.proc.kill()
        own_fed.peer.proc.wait(timeout=10)
        groupchat(a, room, "nobody at pro.fed.test")
        await wait_until(
            lambda: any("333" in codes(p) for p in from_occupant(a, bob, "unavailable")),
            60, "bob removed with 333",
        )
        await exactly_once([a], "nobody at pro.fed.test")
    finally:
        await stop()
