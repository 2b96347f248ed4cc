"""A three-node cluster of real processes (Raft-replicated routing table, NodeLinks):
users on different nodes talk as if on one server; a resource bound on two nodes resolves
through the log; a killed node's routes vanish and it rejoins; a partitioned node keeps its
sessions, refuses binds it cannot commit and converges after the partition heals."""

import asyncio
import time

import pytest

from cluster import Cluster, Partition, iptables_usable
from rawxmpp import (
    XmppTestError,
    is_presence,
    is_roster_push,
    login,
    online,
    q,
    stanza_error,
    subscribe,
    xml_str,
)


def is_msg(id_):
    return lambda e: e.tag == q("message") and e.get("id") == id_


def route_nodes(routes, jid):
    return [line.split()[1] for line in routes if line.split()[0] == jid]


def marked_down(node) -> int:
    """How many times `node`, as the leader, marked a member down (all members)."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in node.metrics_text().splitlines()
        if line.startswith("switchboard_cluster_members_marked_down_total{")
    )


async def test_users_on_different_nodes_message_subscribe_and_see_presence(cluster):
    alice, bob = cluster.account(), cluster.account()
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a = await online(n1, alice, "phone", label="alice@n1")
    b = await online(n2, bob, "desk", label="bob@n2")
    a2 = await online(n3, alice, "laptop", label="alice@n3")
    try:
        # Availability reaches the other nodes through the log, a few ms after the
        # presence itself.
        cluster.wait_for(
            "every node to route to the three available resources",
            lambda: all(
                sum(line.endswith(" available") for line in cluster.routes(n)) == 3
                for n in cluster.nodes
            ),
        )
        # The two resources of alice on n1 and n3 see each other's presence.
        await a.expect(is_presence(a2.jid), what="alice/laptop's presence from n3")
        # A message to a full JID on another node, and back to a bare JID.
        await a.send(f"<message to='{b.jid}' id='m1' type='chat'><body>hi bob</body></message>")
        got = await b.expect(is_msg("m1"), what="alice's message, routed n1 -> n2")
        assert got.get("from") == a.jid, xml_str(got)
        await b.send(f"<message to='{alice.jid}' id='m2' type='chat'><body>hi</body></message>")
        # A bare-JID chat message goes to every top-priority resource, on either node.
        await a.expect(is_msg("m2"), what="bob's message to alice's bare JID at n1")
        await a2.expect(is_msg("m2"), what="bob's message to alice's bare JID at n3")

        # A subscription across nodes; alice's roster lives on her home node, wherever
        # her sessions are, so the push reaches her resource on n3 too.
        await subscribe(a, b)
        await a2.expect(is_roster_push(bob.jid, subscription=("to", "both")),
                        what="the roster push on alice's other node")
        await a.expect(is_presence(b.jid), what="bob's presence after approval")
        # Presence updates follow: bob goes away, alice's resources on both nodes hear it.
        await b.send("<presence><show>away</show></presence>")
        def away(e):
            show = e.find(q("show"))
            return is_presence(b.jid)(e) and show is not None and show.text == "away"

        for c in (a, a2):
            await c.expect(away, what="bob's presence update (away)")
        # The roster read on a third node sees the same roster.
        _, items = await a2.roster()
        assert items[bob.jid]["subscription"] in ("to", "both"), items
        # The Raft and routing figures show up in /metrics.
        from test_metrics import scrape, value

        m = scrape(n1)
        assert value(m, "switchboard_raft_leader") in (1, 2, 3), m
        assert value(m, "switchboard_cluster_members", state="up") == 3
        assert value(m, "switchboard_routed_total", destination="cluster") >= 1
        assert value(m, "switchboard_raft_applied_index") > 0
    finally:
        for c in (a, b, a2):
            await c.close()


async def test_the_same_resource_on_two_nodes_resolves_through_the_log(cluster):
    alice = cluster.account()
    cluster.start()
    n1, n2, _ = cluster.nodes
    old = await login(n1, alice, resource="r", label="alice/r@n1")
    new = await login(n2, alice, resource="r", label="alice/r@n2")
    try:
        cond = await old.expect_stream_error(timeout=10)
        assert cond == "conflict", f"the older session must get <conflict/>, got {cond}"
        routes = cluster.wait_routes_converge()
        assert route_nodes(routes, f"{alice.jid}/r") == ["2"], routes
    finally:
        await new.close()


async def test_a_killed_node_vanishes_from_routing_and_rejoins(cluster):
    users = [cluster.account() for _ in range(4)]
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a = await online(n1, users[0], "r", label="u0@n1")
    b = await online(n2, users[1], "r", label="u1@n2")
    c = await online(n3, users[2], "r", label="u2@n3")
    try:
        await subscribe(a, c)  # a sees c's presence
        await a.expect(is_presence(c.jid), what="c's presence")
        routes = cluster.wait_routes_converge()
        assert route_nodes(routes, c.jid) == ["3"], routes

        # Steady traffic between the surviving nodes while n3 dies.
        sent = 0

        async def traffic(seconds):
            nonlocal sent
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sent += 1
                await a.send(f"<message to='{b.jid}' id='t{sent}'><body>{sent}</body></message>")
                await asyncio.sleep(0.02)

        pump = asyncio.create_task(traffic(5.0))
        await asyncio.sleep(0.5)
        n3.kill9()
        t_kill = time.monotonic()
        # Until n3 is found dead (failure_timeout_ms) its routes stand, but n1's link to it is
        # down at once: a chat message to c sent in that window is stored offline for c, not
        # lost (it was dropped: "cluster: link down, stanza dropped").
        await asyncio.sleep(0.3)
        await a.send(f"<message to='{c.jid}' id='while-down' type='chat'><body>missed</body></message>")
        # a learns that c went away (its node died without a word).
        await a.expect(is_presence(c.jid, "unavailable"), timeout=15,
                       what="unavailable for the resource on the killed node")
        purge_s = time.monotonic() - t_kill
        cluster.wait_for(
            "n3's routes to disappear on n1 and n2",
            lambda: all(route_nodes(cluster.routes(n), c.jid) == [] for n in (n1, n2)),
        )
        await pump
        ids = set()
        for _ in range(sent):
            m = await b.expect(lambda e: e.tag == q("message"), what="the steady traffic")
            ids.add(m.get("id"))
        assert len(ids) == sent, f"lost {sent - len(ids)} of {sent} messages between n1 and n2"
        st = cluster.status(n1)
        assert st["members"]["3"] == "down", st
        assert purge_s < 10, f"purge took {purge_s:.1f}s"

        # n3 comes back by itself and takes sessions again.
        n3.start()
        cluster.wait_formed()
        c2 = await online(n3, users[2], "r2", label="u2@n3 again")
        await c2.expect(is_msg("while-down"), what="the message sent while n3 was dying, from offline storage")
        # At once, from the other side: n1's link to n3 must be back as soon as n3 is (n3
        # connecting to n1 cuts n1's redial backoff short), or this would be dropped.
        await a.send(f"<message to='{c2.jid}' id='at-once'><body>hi</body></message>")
        await c2.expect(is_msg("at-once"), timeout=5, what="a message from n1 right after the rejoin")
        await a.expect(is_presence(c2.jid), what="c's presence from the restarted node")
        routes = cluster.wait_routes_converge()
        assert route_nodes(routes, c2.jid) == ["3"], routes
        # Back up means up for good: the leader's link to n3 redials out of its backoff after
        # n3's resync is in the table, and that silence must not mark n3 down a second time
        # (it did, and a bind in between was refused with resource-constraint).
        await asyncio.sleep(2 * cluster.failure_timeout_ms / 1000 + 0.5)
        downs = marked_down(n1) + marked_down(n2)
        assert downs == 1, f"n3 was marked down {downs} times; once, for the kill, is right"
        await a.send(f"<message to='{c2.jid}' id='back'><body>back</body></message>")
        await c2.expect(is_msg("back"), what="a message to the session on the rejoined node")
        await c2.close()
    finally:
        for x in (a, b):
            await x.close()
        c.io.abort()


@pytest.mark.skipif(not iptables_usable(), reason="needs iptables (root) to cut a node off")
async def test_a_partitioned_node_keeps_its_sessions_and_converges_after_healing(cluster):
    users = [cluster.account() for _ in range(4)]
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a = await online(n1, users[0], "r", label="u0@n1")
    c = await online(n3, users[1], "r", label="u1@n3")
    d = await online(n3, users[2], "r", label="u2@n3")
    try:
        await subscribe(a, c)  # a sees c's presence
        await a.expect(is_presence(c.jid), what="c's presence before the partition")
        with Partition("127.0.0.13") as cut:
            # The majority purges n3's routes...
            cluster.wait_for(
                "n1 to mark n3 down",
                lambda: cluster.status(n1)["members"].get("3") == "down",
                timeout=20,
            )
            # ...and tells n3's users' contacts that they went away...
            await a.expect(is_presence(c.jid, "unavailable"), timeout=15,
                           what="unavailable for c while n3 is cut off")
            # ...while n3 keeps serving its local sessions from its own replica.
            await c.send(f"<message to='{d.jid}' id='local1'><body>x</body></message>")
            await d.expect(is_msg("local1"), what="a message between two sessions on n3")
            # A new bind on n3 cannot be committed: a clear, retryable error.
            with pytest.raises(XmppTestError) as err:
                await login(n3, users[3], resource="new", label="u3@n3 (minority)", timeout=15)
            assert "resource-constraint" in str(err.value), str(err.value)
            cut.heal()
            # After healing, n3 rejoins by itself and every node holds the same table.
            cluster.wait_formed(timeout=30)
            routes = cluster.wait_routes_converge(timeout=20)
            assert route_nodes(routes, c.jid) == ["3"], routes
            assert route_nodes(routes, d.jid) == ["3"], routes
            # c never went offline: once n3 is back, its contacts see it available again.
            await a.expect(is_presence(c.jid), timeout=15,
                           what="c's presence again after the partition healed")
        await a.send(f"<message to='{c.jid}' id='after'><body>y</body></message>")
        await c.expect(is_msg("after"), what="a message across the healed partition")
    finally:
        for x in (a, c, d):
            await x.close()


async def test_a_stopping_node_leaves_the_routing_table_at_once(tmp_path):
    # A failure timeout far longer than the test: only the clean departure can explain
    # how fast the others learn.
    cluster = Cluster(tmp_path, failure_timeout_ms=30000)
    users = [cluster.account() for _ in range(3)]
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a = await online(n1, users[0], "r", label="u0@n1")
    b = await online(n2, users[1], "r", label="u1@n2")
    c = await online(n3, users[2], "r", label="u2@n3")
    try:
        await subscribe(a, c)
        await a.expect(is_presence(c.jid), what="c's presence")
        t0 = time.monotonic()
        n3.signal_term()
        assert await c.expect_stream_error(timeout=10) == "system-shutdown"
        await a.expect(is_presence(c.jid, "unavailable"), timeout=5,
                       what="unavailable from the stopping node's user")
        assert n3.wait_exit(10) == 0, n3.log_tail()
        cluster.wait_for("n3 to be marked down",
                         lambda: cluster.status(n1)["members"].get("3") == "down", timeout=5)
        assert time.monotonic() - t0 < 10
        assert all(route_nodes(cluster.routes(n), c.jid) == [] for n in (n1, n2))
        # The other two keep serving.
        await a.send(f"<message to='{b.jid}' id='still'><body>z</body></message>")
        await b.expect(is_msg("still"), what="a message while n3 is stopped")
        # A rolling restart: n3 comes back and is up again.
        n3.start()
        cluster.wait_formed()
    finally:
        for x in (a, b):
            await x.close()
        errors = cluster.stop()
        assert not errors, errors


async def test_a_new_node_joins_through_a_seed_and_leaves(cluster, tmp_path):
    from cluster import SECRET
    from conftest import Server, free_ports

    alice, bob = cluster.account(), cluster.account()
    cluster.start()
    n1 = cluster.nodes[0]
    (port,) = free_ports(1)
    seed = cluster.nodes[0].config["cluster"]["members"][0]
    n4 = Server(tmp_path / "n4", {
        "c2s": {"require_tls": True},
        "cluster": {"node_id": 4, "listen": f"127.0.0.14:{port}", "secret": SECRET,
                    "seeds": [seed], "heartbeat_ms": 100, "failure_timeout_ms": 2000},
    }, name="n4")
    for acc in (alice, bob):
        n4.add_user(acc.local, acc.password)
    cluster.nodes.append(n4)
    n4.start()
    cluster.wait_for("node 4 to become a voter and be up", lambda: (
        "4" in cluster.status(n1)["voters"] and cluster.status(n1)["members"].get("4") == "up"
    ), timeout=30)
    a = await online(n1, alice, "r", label="alice@n1")
    d = await online(n4, bob, "r", label="bob@n4")
    try:
        await d.send(f"<message to='{a.jid}' id='j1'><body>from the new node</body></message>")
        await a.expect(is_msg("j1"), what="a message from the node that joined")
    finally:
        await a.close()
        await d.close()
    r = n4.cli("cluster", "leave")
    assert r.returncode == 0, r.stderr
    cluster.wait_for("node 4 to leave", lambda: (
        "4" not in cluster.status(n1)["voters"] and cluster.status(n1)["members"].get("4") == "down"
    ), timeout=20)


async def test_accounts_created_on_one_node_work_on_every_node(cluster):
    from conftest import Account

    cluster.start()
    n1, n2, n3 = cluster.nodes
    r = n1.cli("user", "add", "shared@localhost", "--password", "pw-one")
    assert r.returncode == 0, r.stderr
    r = n2.cli("user", "add", "shared@localhost", "--password", "pw-x")
    assert r.returncode == 1 and "already exists" in r.stderr, r.stderr
    acc = Account("shared", "localhost", "pw-one")
    c3 = await login(n3, acc, resource="r3", label="shared@n3")
    await c3.close()
    # A password change through n2 applies on n3.
    r = n2.cli("user", "passwd", "shared@localhost", "--password", "pw-two")
    assert r.returncode == 0, r.stderr
    with pytest.raises(XmppTestError):
        await login(n3, acc, resource="r3", label="old password on n3")
    c1 = await login(n1, Account("shared", "localhost", "pw-two"), resource="r1")
    # Deleting through n3 disconnects the session on n1 and removes the account everywhere.
    r = n3.cli("user", "del", "shared@localhost")
    assert r.returncode == 0, r.stderr
    assert await c1.expect_stream_error(timeout=10) == "not-authorized"
    for n in cluster.nodes:
        r = n.cli("user", "list")
        assert "shared@localhost" not in r.stdout.split(), (n.name, r.stdout)


async def test_the_whole_cluster_restarts_on_its_data(cluster):
    alice, bob = cluster.account(), cluster.account()
    cluster.start()
    n1, n2, _ = cluster.nodes
    a = await login(n1, alice, resource="before", label="alice before")
    await a.close()
    # Every node dies at once: the table still says they are up, as their previous lives.
    for n in cluster.nodes:
        n.kill9()
    for n in cluster.nodes:
        n.start()
    cluster.wait_formed(timeout=30)
    a = await login(n1, alice, resource="after", label="alice after restart")
    b = await login(n2, bob, resource="after", label="bob after restart")
    try:
        cluster.wait_for("both routes on n2", lambda: len(cluster.routes(n2)) == 2)
        await b.send(f"<message to='{a.jid}' id='r1'><body>after</body></message>")
        await a.expect(is_msg("r1"), what="a message after the whole cluster restarted")
    finally:
        await a.close()
        await b.close()


async def test_a_roster_import_through_one_node_reaches_every_shard(cluster):
    """`switchboard roster import` on n1 writes through each owner's shard, wherever it is
    led; the owners then find the items through any node, and presence flows."""
    users = cluster.accounts(6)
    cluster.start()
    cluster.wait_shards_ready()
    n1, n2, n3 = cluster.nodes
    shards = {cluster.shard_of(u.jid, cluster.shard_count()) for u in users}
    assert len(shards) > 1, "the test needs owners in more than one shard"
    lines = "".join(f"{x.jid} {y.jid}\n" for x in users for y in users if x is not y)
    r = n1.cli("roster", "import", "-", input=lines)
    assert r.returncode == 0, r.stderr
    assert "30 roster items for 6 accounts imported, 30 of them new or changed" in r.stderr, r.stderr
    for i, u in enumerate(users):
        c = await login((n2, n3)[i % 2], u, resource="r")
        _, roster = await c.roster()
        want = {y.jid: "both" for y in users if y is not u}
        assert {j: it["subscription"] for j, it in roster.items()} == want, (u.jid, roster)
        await c.close()
    a = await online(n2, users[0], "a")
    b = await online(n3, users[1], "b")
    await a.expect(is_presence(b.jid))
    await b.expect(is_presence(a.jid))
    await a.close()
    await b.close()
