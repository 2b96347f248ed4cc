"""Group chat (XEP-0045) in a real three-node cluster: a room lives in the account shard of
its bare JID and acts on that shard's leader, whichever node its occupants are on. Three
occupants on three nodes chat; the node leading the room's shard is killed with `kill -9`;
a new leader serves the room from the replicated state (configuration, affiliations, avatar and the
occupant list), each message sent after the failover reaches each surviving occupant
exactly once, and the occupant that was on the dead node is shown leaving (status 333).
That removal needs no message: once the routing table purges the dead node's sessions the
rooms are swept (`node::muc_sweep`), whether the dead node held only an occupant or also
served the room. The room's archive (XEP-0313 §5) is replicated with it: what it held
before the kill reads back identically, same ids, from the survivors."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import render_toml
from rawxmpp import bare, mam_query, new_id, q, rsm_set, stanza_error, xml_str
from test_mam_cluster import login_retry
from test_stream_management_cluster import enable as sm_enable
from test_muc_vcard import PNG, avatar_hashes, is_avatar_presence, sha1, vcard
from test_muc import (
    NS_ADMIN,
    NS_DELAY,
    NS_DISCO_INFO,
    NS_DATA,
    NS_DISCO_ITEMS,
    SERVICE,
    NS_OWNER,
    codes,
    configure,
    groupchat,
    instant,
    is_groupchat,
    item,
    join,
)
from test_muc_mam import check_room_results, room_sid


def room_leader(cluster, room: str):
    """The node leading the shard of `room`, as the first node sees it."""
    shard = cluster.shard_of(room, cluster.shard_count())
    return cluster.node_by_id(cluster.shard_leaders(cluster.nodes[0])[shard])


async def online(node, account, resource: str):
    """A client logged in on `node` that sent its initial presence."""
    c = await login_retry(node, account, resource)
    await c.send("<presence/>")
    return c


async def test_room_survives_kill9_of_its_leader(cluster):
    accs = cluster.accounts(4)
    cluster.start()
    cluster.wait_shards_ready()
    room = f"kill-{new_id('r').lower()}@{SERVICE}"
    victim = room_leader(cluster, room)
    survivors = [n for n in cluster.nodes if n is not victim]

    owner = await online(survivors[0], accs[0], "o")
    got = await join(owner, room, "owner")
    assert codes(got[0]) == ["201", "110"], xml_str(got[0])
    await configure(owner, room, roomname="Survivors", persistentroom=1)
    # The room's avatar (XEP-0486) is room state too.
    r = await owner.iq(vcard(("image/png", PNG)), type_="set", to=room)
    assert r.get("type") == "result", xml_str(r)
    await owner.expect(is_avatar_presence(room), what="the avatar announced")
    await owner.expect(lambda e: e.tag == q("message") and "104" in codes(e), what="status 104")
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='{accs[1].jid}'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    member = await online(survivors[1], accs[1], "m")
    doomed = await online(victim, accs[2], "d")
    await join(member, room, "member")
    await join(doomed, room, "doomed")
    clients = {"owner": owner, "member": member, "doomed": doomed}
    # Everyone hears everyone, once.
    for nick, c in clients.items():
        await groupchat(c, room, f"hi from {nick}")
    live_ids = {}
    for c in clients.values():
        for nick in clients:
            m = await c.expect(is_groupchat(f"hi from {nick}"), what=f"{nick}'s message")
            live_ids.setdefault(nick, room_sid(m, room))
            assert live_ids[nick] == room_sid(m, room), "one id for every occupant's copy"
        extra = [e for e in await c.drain(0.5) if e.tag == q("message") and e.get("type") == "groupchat"]
        assert extra == [], [xml_str(e) for e in extra]

    # The room's archive before the kill: what was said, under the ids seen live.
    before = await mam_query(owner, "", rsm_set(max=250), to=room)
    archived = check_room_results(before, owner, room)
    assert before.complete and sorted(archived, key=lambda a: a[2]) == archived, before.describe()
    assert {(n, b, i) for n, b, i in archived} == {
        (n, f"hi from {n}", live_ids[n]) for n in clients
    }, archived

    victim.kill9()
    cluster.wait_shards_ready(nodes=survivors, timeout=40)

    # After the failover the owner speaks until the dead occupant's removal shows: the
    # sweep removes it once its node's routes are purged (or the room's message to it
    # bounces, whichever comes first).
    live = {"owner": owner, "member": member}
    seen: dict[str, list] = {n: [] for n in live}
    probes = []
    gone = None
    deadline = time.monotonic() + 40
    while gone is None and time.monotonic() < deadline:
        body = f"probe {len(probes)}"
        probes.append(body)
        await groupchat(owner, room, body)
        for n, c in live.items():
            seen[n] += await c.drain(1.5)
        gone = next(
            (e for e in seen["member"] if e.tag == q("presence") and e.get("from") == f"{room}/doomed"
             and e.get("type") == "unavailable"),
            None,
        )
    assert gone is not None, "the occupant on the dead node was never shown leaving"
    assert "333" in codes(gone), xml_str(gone)
    # The removal comes on its own (the sweep), so the owner's copy may still be on its way.
    seen["owner"] += await owner.drain(1.0)
    assert any(e.get("from") == f"{room}/doomed" and e.get("type") == "unavailable"
               for e in seen["owner"]), "the owner was not told either"

    # One more message now that the room settled: exactly once to each survivor.
    await groupchat(member, room, "after failover")
    for n, c in live.items():
        seen[n] += await c.drain(2.0)
    for n in live:
        bodies = [e.findtext(q("body")) for e in seen[n]
                  if e.tag == q("message") and e.get("type") == "groupchat"]
        for b in set(bodies):
            assert bodies.count(b) == 1, f"{n} got {b!r} {bodies.count(b)} times: {bodies}"
        assert "after failover" in bodies, (n, bodies)
        # At least the probe that revealed the removal arrived (earlier ones may have been
        # lost with the dead leader).
        assert probes[-1] in bodies, (n, probes, bodies)

    # The archive, read from both survivors, starts with exactly what it held before the
    # kill and holds the message after the failover once.
    for c in live.values():
        after = await mam_query(c, "", rsm_set(max=250), to=room)
        now = check_room_results(after, c, room)
        assert after.complete, after.describe()
        assert now[: len(archived)] == archived, (now, archived)
        assert [b for _, b, _ in now].count("after failover") == 1, now
    # A newcomer's history, from the new leader's copy of the archive: the same messages
    # under the same ids.
    newcomer = await online(survivors[1], accs[3], "n")
    got = await join(newcomer, room, "newcomer")
    history = [(e.findtext(q("body")), room_sid(e, room)) for e in got
               if e.tag == q("message") and e.find(f"{{{NS_DELAY}}}delay") is not None]
    assert history[: len(archived)] == [(b, i) for _, b, i in archived], (history, archived)
    await newcomer.close()

    # The room kept its configuration and members on the new leader.
    info = await member.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    feats = [f.get("var") for f in info.iter(f"{{{NS_DISCO_INFO}}}feature")]
    assert "muc_persistent" in feats, xml_str(info)
    ident = info.find(f"{{{NS_DISCO_INFO}}}query/{{{NS_DISCO_INFO}}}identity")
    assert ident.get("name") == "Survivors"
    r = await owner.iq(f"<query xmlns='{NS_ADMIN}'><item affiliation='member'/></query>", to=room)
    assert [i.get("jid") for i in r.iter(f"{{{NS_ADMIN}}}item")] == [bare(accs[1].jid)], xml_str(r)
    assert await avatar_hashes(member, room) == [sha1(PNG)]
    # The directory, gathered from every shard, lists it.
    r = await member.iq(f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=SERVICE)
    assert room in [i.get("jid") for i in r.iter(f"{{{NS_DISCO_ITEMS}}}item")], xml_str(r)
    for c in live.values():
        await c.close()
    await asyncio.sleep(0)


async def test_rooms_per_user_are_counted_in_the_creators_shard(cluster):
    """`max_rooms_per_user = 2`: the rooms a user creates are counted in the user's own
    shard whatever shards the rooms land in (here three shards, none the user's, led by
    whichever nodes); the third creation is refused with `not-allowed` (XEP-0045 §10.1.1),
    a destroyed room leaves the count so another may be created, and the count stays right
    for every room the user created."""
    for n in cluster.nodes:
        n.config.setdefault("modules.muc", {}).update({"max_rooms_per_user": 2})
        n.config_path.write_text(render_toml(n.config))
    (acc,) = cluster.accounts(1)
    cluster.start()
    cluster.wait_shards_ready()
    count = cluster.shard_count()
    own = cluster.shard_of(acc.jid, count)
    rooms, used = [], {own}
    while len(rooms) < 3:
        r = f"lim-{new_id('r').lower()}@{SERVICE}"
        s = cluster.shard_of(r, count)
        if s not in used:
            used.add(s)
            rooms.append(r)
    c = await online(cluster.nodes[0], acc, "a")

    async def create(room: str) -> list:
        return await join(c, room, "me")

    for r in rooms[:2]:
        got = await create(r)
        assert codes(got[0]) == ["201", "110"], xml_str(got[0])
        await instant(c, r)
    got = await create(rooms[2])
    assert got[-1].get("type") == "error", [xml_str(e) for e in got]
    assert stanza_error(got[-1]) == ("cancel", "not-allowed"), xml_str(got[-1])

    # Destroying one gives its place back.
    r = await c.iq(f"<query xmlns='{NS_OWNER}'><destroy/></query>", type_="set", to=rooms[0])
    assert r.get("type") == "result", xml_str(r)
    await c.expect(lambda e: e.get("type") == "unavailable" and bare(e.get("from", "")) == rooms[0],
                   what="the destroyed room's unavailable")
    deadline = time.monotonic() + 10
    while True:
        got = await create(rooms[2])
        if got[-1].get("type") != "error" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)  # the release is one-way: it may trail the destroy's answer
    assert codes(got[0]) == ["201", "110"], [xml_str(e) for e in got]
    await instant(c, rooms[2])
    # At the limit again: the destroyed room cannot be made anew.
    got = await create(rooms[0])
    assert stanza_error(got[-1]) == ("cancel", "not-allowed"), [xml_str(e) for e in got]
    await c.close()


def is_unavailable_from(occupant_jid: str):
    return lambda e: (
        e.tag == q("presence") and e.get("from") == occupant_jid and e.get("type") == "unavailable"
    )


@pytest.mark.parametrize(
    "victim_leads_the_room,restart",
    [(False, False), (True, False), (False, True)],
    ids=["occupant-node", "room-leader", "restarted-at-once"],
)
async def test_occupants_of_a_killed_node_leave_without_a_message(cluster, victim_leads_the_room, restart):
    """`kill -9` of a node that holds an occupant: the routing table purges the node's
    sessions and the room removes the occupant at once (status 333) — nobody has to speak
    for the room to notice. Both when the dead node only held the occupant and when it also
    served the room, or came back at once (before it could be marked down: its resync drops
    its previous life's sessions). The occupants on live nodes stay, a hibernating one too: a detached
    resumable session (XEP-0198 §5) is still bound, so it counts as present (as in Prosody)."""
    accs = cluster.accounts(4)
    cluster.start()
    cluster.wait_shards_ready()
    room = f"sweep-{new_id('r').lower()}@{SERVICE}"
    leader = room_leader(cluster, room)
    if victim_leads_the_room:
        victim = leader
    else:
        victim = next(n for n in cluster.nodes if n is not leader)
    survivors = [n for n in cluster.nodes if n is not victim]
    # Without a victim leading the room, the owner sits on the room's leader.
    survivors.sort(key=lambda n: n is not leader)

    owner = await online(survivors[0], accs[0], "o")
    got = await join(owner, room, "owner")
    assert codes(got[0]) == ["201", "110"], xml_str(got[0])
    await configure(owner, room, roomname="Swept", persistentroom=1)
    other = await online(survivors[1], accs[1], "x")
    doomed = await online(victim, accs[2], "d")
    sleeper = await login_retry(survivors[1], accs[3], "s")
    await sm_enable(sleeper)
    await sleeper.send("<presence/>")
    await join(other, room, "other")
    await join(doomed, room, "doomed")
    await join(sleeper, room, "sleeper")
    sleeper.abort()  # detached, waiting for its client to resume
    for c in (owner, other):
        for nick in ("doomed", "sleeper"):
            await c.expect(lambda e, n=nick: e.tag == q("presence") and e.get("from") == f"{room}/{n}"
                           and e.get("type") is None, what=f"{nick}'s join")

    victim.kill9()
    killed = time.monotonic()
    if restart:
        victim.start()
    # No one speaks: the removal must come on its own, within the failure timeout (2 s),
    # an election and the sweep's grace.
    for name, c in (("owner", owner), ("other", other)):
        gone = await c.expect(is_unavailable_from(f"{room}/doomed"), timeout=20,
                              what=f"{name} told the dead node's occupant left")
        assert "333" in codes(gone), xml_str(gone)
        assert item(gone).get("role") == "none", xml_str(gone)
    elapsed = time.monotonic() - killed
    assert elapsed < 15, f"the stale occupant was removed only after {elapsed:.1f} s"

    # Only the dead node's occupant went: the others are still in, and hear each other once.
    for c in (owner, other):
        left = [e for e in await c.drain(1.0)
                if e.tag == q("presence") and bare(e.get("from", "")) == room
                and e.get("type") == "unavailable" and e.get("from") != f"{room}/doomed"]
        assert left == [], [xml_str(e) for e in left]
    if victim_leads_the_room:
        cluster.wait_shards_ready(nodes=survivors, timeout=40)
    await groupchat(other, room, "still here")
    for c in (owner, other):
        await c.expect(is_groupchat("still here"), timeout=15, what="the message after the sweep")
        extra = [e for e in await c.drain(1.0) if is_groupchat("still here")(e)]
        assert extra == [], [xml_str(e) for e in extra]
    info = await owner.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    occupants = [
        f.findtext(f"{{{NS_DATA}}}value")
        for f in info.iter(f"{{{NS_DATA}}}field")
        if f.get("var") == "muc#roominfo_occupants"
    ]
    assert occupants == ["3"], xml_str(info)
    for c in (owner, other):
        await c.close()
