"""Group chat (XEP-0045) in a real three-node cluster: a room lives in the account shard of
its bare JID and acts on that shard's leader, whichever node its occupants are on. Three
occupants on three nodes chat; the node leading the room's shard is killed with `kill -9`;
a new leader serves the room from the replicated state (configuration, affiliations and the
occupant list), each message sent after the failover reaches each surviving occupant
exactly once, and the occupant that was on the dead node is shown leaving (status 333,
found when the room's message to it bounces). The room's archive (XEP-0313 §5) is replicated
with it: what it held before the kill reads back identically, same ids, from the survivors."""

from __future__ import annotations

import asyncio
import time

from conftest import render_toml
from rawxmpp import bare, mam_query, new_id, q, rsm_set, stanza_error, xml_str
from test_mam_cluster import login_retry
from test_muc import (
    NS_ADMIN,
    NS_DELAY,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    SERVICE,
    NS_OWNER,
    codes,
    configure,
    groupchat,
    instant,
    is_groupchat,
    join,
)
from test_muc_mam import check_room_results, room_sid


async def test_room_survives_kill9_of_its_leader(cluster):
    accs = cluster.accounts(4)
    cluster.start()
    cluster.wait_shards_ready()
    room = f"kill-{new_id('r').lower()}@{SERVICE}"
    n1 = cluster.nodes[0]
    shard = cluster.shard_of(room, cluster.shard_count())
    leader = cluster.shard_leaders(n1)[shard]
    victim = cluster.node_by_id(leader)
    survivors = [n for n in cluster.nodes if n is not victim]

    owner = await login_retry(survivors[0], accs[0], "o")
    await owner.send("<presence/>")
    got = await join(owner, room, "owner")
    assert codes(got[0]) == ["201", "110"], xml_str(got[0])
    await configure(owner, room, roomname="Survivors", persistentroom=1)
    r = await owner.iq(
        f"<query xmlns='{NS_ADMIN}'><item affiliation='member' jid='{accs[1].jid}'/></query>",
        type_="set",
        to=room,
    )
    assert r.get("type") == "result", xml_str(r)
    member = await login_retry(survivors[1], accs[1], "m")
    await member.send("<presence/>")
    doomed = await login_retry(victim, accs[2], "d")
    await doomed.send("<presence/>")
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
    # room's message to it bounces once its node's routes are purged.
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
    newcomer = await login_retry(survivors[1], accs[3], "n")
    await newcomer.send("<presence/>")
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
    c = await login_retry(cluster.nodes[0], acc, "a")
    await c.send("<presence/>")

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
