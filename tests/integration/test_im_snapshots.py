"""IM data shards compact their logs into snapshots, and a replica that was down while the
log moved past it catches up from the leader's snapshot (real processes, kill -9)."""

import pytest

from cluster import Cluster
from conftest import render_toml
from rawxmpp import online
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
