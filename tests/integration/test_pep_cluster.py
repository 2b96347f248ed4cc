"""PEP in a three-node cluster: nodes and items are the account's state in its replicated
shard, so every published item survives `kill -9` of each node in turn and reads the same
on every live node; a notification reaches a contact's session on another node; and two
slixmpp-omemo clients on different nodes exchange an encrypted message."""

from __future__ import annotations

import asyncio
import time

import pytest

from rawxmpp import login, new_id
from test_mam_cluster import login_retry
from test_omemo import exchange
from test_pep import NODE, announce_caps, is_event, item_ids, items, options, publish, subscribe_both, tune

LIST_NODE = "urn:example:journal"


async def read_ids(node, account) -> list[str]:
    c = await login_retry(node, account, new_id("read"))
    try:
        return item_ids(await items(c, None, LIST_NODE))
    finally:
        await c.close()


async def publish_one(node, account, item_id: str) -> None:
    c = await login_retry(node, account, new_id("pub"))
    try:
        resp = await publish(c, LIST_NODE, tune(item_id), item_id, options(max_items="max"))
        assert resp.get("type") == "result", resp
    finally:
        await c.close()


async def wait_items(nodes, account, want: list[str], what: str, timeout: float = 0.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = {n.name: await read_ids(n, account) for n in nodes}
        bad = {k: v for k, v in got.items() if v != want}
        if not bad:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: want {want}, read {bad}", pytrace=False)
        await asyncio.sleep(0.5)


@pytest.mark.timeout(420)
async def test_pep_items_survive_kill9_of_each_node(cluster):
    alice, bob = cluster.accounts(2)
    cluster.start()
    cluster.wait_shards_ready()
    n1, n2, n3 = cluster.nodes

    # A notification across nodes: alice on n1 publishes, bob on n2 wants the node.
    a = await login(n1, alice, resource="pub")
    b = await login(n2, bob, resource="sub")
    try:
        await announce_caps(a, [])
        await announce_caps(b, [NODE])
        await subscribe_both(a, b)
        iid = new_id("x")
        resp = await publish(a, NODE, tune("cross-node"), iid)
        assert resp.get("type") == "result", resp
        await b.expect(is_event(NODE, iid), what="the notification on another node")
    finally:
        await a.close()
        await b.close()

    published: list[str] = []
    for i in range(2):
        published.append(f"r0-{i}")
        await publish_one(n1, alice, published[-1])
    await wait_items(cluster.nodes, alice, published, "before any kill")
    for victim in (n1, n2, n3):
        victim.kill9()
        live = [n for n in cluster.nodes if n is not victim]
        cluster.wait_shards_ready(live)
        await wait_items(live, alice, published, f"right after kill -9 of {victim.name}")
        published.append(f"no-{victim.name}")
        await publish_one(live[0], alice, published[-1])
        await wait_items(live, alice, published, f"after a publish with {victim.name} down")
        victim.start()
        cluster.wait_formed()
        cluster.wait_shards_ready()
        await wait_items(cluster.nodes, alice, published, f"after {victim.name} came back", timeout=20)


@pytest.mark.timeout(240)
async def test_omemo_between_two_cluster_nodes(cluster):
    """alice on n1 and bob on n3: each one's device list and bundles are published to its
    shard (wherever its leader is) and fetched through the other node."""
    alice, bob = cluster.accounts(2)
    cluster.start()
    cluster.wait_shards_ready()
    n1, _, n3 = cluster.nodes
    a = await login(n1, alice, resource="setup", presence=True)
    b = await login(n3, bob, resource="setup", presence=True)
    try:
        await subscribe_both(a, b)
    finally:
        await a.close()
        await b.close()
    await exchange(n1, n3, pair=(alice, bob))
