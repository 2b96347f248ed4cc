"""IM data shards compact their logs into snapshots, and a replica that was down while the
log moved past it catches up from the leader's snapshot (real processes, kill -9)."""

import pytest

from cluster import Cluster
from conftest import render_toml
from rawxmpp import online, subscribe, xml_str
from test_metrics import scrape, value


def small_snapshots(cluster: Cluster, entries: int, shards: int) -> None:
    """Few shards that snapshot often, so a short test crosses several snapshots."""
    for n in cluster.nodes:
        n.config["cluster"]["shard_snapshot_entries"] = entries
        n.config["cluster"]["shards"] = shards
        n.config_path.write_text(render_toml(n.config))


def applied(cluster: Cluster, node) -> dict[int, int]:
    return {e["shard"]: e.get("applied") or 0 for e in cluster.shards(node)}


async def test_a_replica_that_was_down_catches_up_from_a_snapshot(tmp_path):
    cluster = Cluster(tmp_path)
    small_snapshots(cluster, entries=16, shards=2)
    user = cluster.account()
    try:
        cluster.start()
        cluster.wait_shards_ready()
        n1, n2, n3 = cluster.nodes
        n3.kill9()
        c = await online(n1, user, "r", label="user@n1")
        contacts = [f"snap{i:03d}@example.org" for i in range(80)]
        for jid in contacts:
            resp = await c.roster_set(f"<item jid='{jid}'/>")
            assert resp.get("type") == "result", f"roster set of {jid}: {resp}"
        await c.close()
        built = sum(value(scrape(n), "switchboard_shard_snapshots_total", event="built") or 0
                    for n in (n1, n2))
        assert built >= 2, f"80 writes with snapshots every 16 entries built {built} snapshots"

        n3.start()
        cluster.wait_formed()
        cluster.wait_shards_ready()

        def caught_up():
            lead, mine = applied(cluster, n1), applied(cluster, n3)
            return mine and all(mine.get(s, 0) >= idx for s, idx in lead.items())

        cluster.wait_for("n3's shard replicas to catch up", caught_up, timeout=30)
        installed = value(scrape(n3), "switchboard_shard_snapshots_total", event="installed")
        assert installed and installed >= 1, "n3 caught up without installing a snapshot"

        # With n1 gone, n3's copy is half of every quorum: the roster must be whole.
        n1.kill9()
        cluster.wait_shards_ready(nodes=[n2, n3])
        c = await online(n3, user, "r2", label="user@n3")
        _, items = await c.roster()
        missing = [j for j in contacts if j not in items]
        assert not missing, f"{len(missing)} acknowledged roster items missing: {missing[:5]}"
        await c.close()
    finally:
        errors = cluster.stop()
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


async def test_a_new_shard_leader_knows_who_is_online(tmp_path):
    """The shard's leader dies: its successor learns from every node which of its accounts
    are online, so Last Activity (XEP-0012) still answers 0 seconds for an online user."""
    cluster = Cluster(tmp_path)
    a_acc, b_acc = cluster.account(), cluster.account()
    try:
        cluster.start()
        cluster.wait_shards_ready()
        count = cluster.shard_count()
        shard = Cluster.shard_of(b_acc.jid, count)
        leader = cluster.shard_leaders(cluster.nodes[0])[shard]
        others = [n for n in cluster.nodes if Cluster.node_id(n) != leader]
        doomed = cluster.node_by_id(leader)
        a = await online(others[0], a_acc, "r", label="a")
        b = await online(others[1], b_acc, "r", label="b")
        await subscribe(a, b)

        async def last_seconds():
            resp = await a.iq("<query xmlns='jabber:iq:last'/>", to=b_acc.jid)
            query = resp.find("{jabber:iq:last}query")
            print("LAST", xml_str(resp))
            return resp.get("type"), None if query is None else query.get("seconds")

        assert await last_seconds() == ("result", "0")
        doomed.kill9()
        cluster.wait_shards_ready(nodes=others)
        assert cluster.shard_leaders(others[0])[shard] != leader
        assert await last_seconds() == ("result", "0"), "the new leader lost who is online"
        await a.close()
        await b.close()
    finally:
        errors = cluster.stop()
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)
