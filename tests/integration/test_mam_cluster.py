"""The message archive (XEP-0313) in a real three-node cluster: archive writes go through the
account shard's Raft group, so every archived message survives `kill -9` of any one node and
reads back identically (ids, stamps, content) from every node, including the one that was
killed once it is back. Users chat from different nodes, and the stanza-ids seen on delivery
(XEP-0359) are the archive's ids wherever the archive is read."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from rawxmpp import XmppTestError, login, new_id
from test_mam import NS_DELAY, NS_FORWARD, archive, conversation, sid

NS_MAM = "urn:xmpp:mam:2"

ROUND = 3  # messages per round (alternating alice -> bob, bob -> alice)


async def login_retry(node, account, resource: str, attempts: int = 6):
    """Log in, retrying a bounded number of times: right after a node died a bind may get
    resource-constraint until the cluster's metadata group has a leader again (RFC 6120
    §7.6.2.1 lets the client retry)."""
    last = None
    for i in range(attempts):
        try:
            return await login(node, account, resource=resource, label=f"{account.local}@{node.name}")
        except (XmppTestError, ConnectionError, OSError) as exc:
            last = exc
            await asyncio.sleep(1.0 + i)
    raise AssertionError(f"{account.jid} could not log in on {node.name} after {attempts} attempts: {last}")


async def snapshot(node, account) -> list[tuple]:
    """(id, stamp, inner message XML) of the whole archive, read on `node`."""
    c = await login_retry(node, account, f"snap-{new_id()}")
    try:
        page = await archive(c)
        return [(rid, r.find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{{{NS_DELAY}}}delay").get("stamp"),
                 ET.tostring(m, encoding="unicode")) for rid, r, m in zip(page.ids, page.results, page.messages)]
    finally:
        await c.close()


class Ledger:
    """What the test sent and saw delivered: (message id, body, sender bare JID) in order,
    and the stanza-id each recipient was given."""

    def __init__(self, alice, bob):
        self.alice, self.bob = alice, bob
        self.sent: list[str] = []
        self.delivered_sid: dict[tuple[str, str], str] = {}  # (recipient bare, id) -> stanza-id

    async def round(self, tag: str, a_node, b_node) -> None:
        a = await login_retry(a_node, self.alice, f"a-{tag}-{new_id()}")
        b = await login_retry(b_node, self.bob, f"b-{tag}-{new_id()}")
        try:
            for i, (mid, _, got) in enumerate(await conversation(a, b, ROUND, f"{tag}-")):
                recipient = self.bob.jid if i % 2 == 0 else self.alice.jid
                self.delivered_sid[(recipient, mid)] = sid(got, recipient)
                self.sent.append(mid)
        finally:
            await a.close()
            await b.close()
        # Archive writes are group-committed after delivery: a small window before a crash.
        await asyncio.sleep(0.5)

    async def views(self, nodes) -> dict[tuple[str, str], list[tuple]]:
        return {(n.name, acct.jid): await snapshot(n, acct) for n in nodes for acct in (self.alice, self.bob)}

    def problems(self, views) -> list[str]:
        """Why these views are not identical and complete, if they are not."""
        out = []
        for acct in (self.alice, self.bob):
            mine = {name: v for (name, jid), v in views.items() if jid == acct.jid}
            reference_name, reference = next(iter(mine.items()))
            for name, v in mine.items():
                if v != reference:
                    out.append(f"{acct.jid}: the archive read on {name} differs from {reference_name}:\n"
                               f"  {name}: {[e[0] for e in v]}\n  {reference_name}: {[e[0] for e in reference]}")
            for name, v in mine.items():
                ids_in_order = [mid_of(xml) for _, _, xml in v]
                if ids_in_order != self.sent:
                    out.append(f"{acct.jid} read on {name}: messages {ids_in_order}, sent {self.sent}")
                by_mid = {mid_of(xml): rid for rid, _, xml in v}
                for (recipient, mid), stanza_id in self.delivered_sid.items():
                    if recipient == acct.jid and by_mid.get(mid) not in (None, stanza_id):
                        out.append(f"{acct.jid} read on {name}: {mid} has archive id {by_mid[mid]}, "
                                   f"delivered with stanza-id {stanza_id}")
        return out


def mid_of(xml: str) -> str | None:
    return ET.fromstring(xml).get("id")


async def wait_consistent(ledger: Ledger, nodes, what: str, timeout: float = 0.0):
    """The archives read on `nodes` are identical and complete: at once (timeout 0), or
    within `timeout` seconds (a node just restarted may still be catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        problems = ledger.problems(await ledger.views(nodes))
        if not problems:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}:\n" + "\n".join(problems), pytrace=False)
        await asyncio.sleep(0.5)


@pytest.mark.timeout(420)
async def test_archive_survives_kill9_of_each_node_and_reads_the_same_everywhere(cluster):
    """Alice and Bob chat from different nodes. Then each node in turn is killed with
    SIGKILL: right after the kill every live node reads both archives identical and
    complete (every message delivered before the kill is there, stanza-ids as delivered);
    more messages are exchanged through the two survivors; the killed node is started again
    and, once it has caught up (at most 20 s), reads the same as the others. Fails on a lost,
    duplicated or reordered message or on nodes that disagree."""
    alice, bob = cluster.accounts(2)
    cluster.start()
    cluster.wait_shards_ready()
    n1, n2, n3 = cluster.nodes
    ledger = Ledger(alice, bob)
    await ledger.round("r0", n1, n2)
    await wait_consistent(ledger, cluster.nodes, "before any kill")
    for victim in (n1, n2, n3):
        victim.kill9()
        live = [n for n in cluster.nodes if n is not victim]
        cluster.wait_shards_ready(live)
        await wait_consistent(ledger, live, f"right after kill -9 of {victim.name}")
        await ledger.round(f"no-{victim.name}", live[0], live[1])
        await wait_consistent(ledger, live, f"after messages with {victim.name} down")
        victim.start()
        cluster.wait_formed()
        cluster.wait_shards_ready()
        await wait_consistent(ledger, cluster.nodes, f"after {victim.name} came back", timeout=20)
    assert len(ledger.sent) == ROUND * 4
