"""Group chat (XEP-0045) over federation from a three-node cluster serving sb.fed.test, with
a private Prosody (pro.fed.test), once with dialback ("selfsigned") and once with SASL
EXTERNAL against a test CA ("ca", Prosody refusing dialback).

Prosody reaches both our domains through the first node (its static routes name n1's s2s
port), while the room lives in the account shard of its JID, led by another node. So a
Prosody user's stanzas to the room enter at n1 and cross the cluster to the room's leader,
and the room's stanzas to that user leave from the leader on a link of its own (local
domain conference.sb.fed.test), authenticated like any other: for dialback Prosody asks
n1, which checks the key with the secret every node derives from `cluster.secret`.

Three occupants (our users on two nodes, the Prosody user) chat, each message once for
each; then the leader of the room's shard is killed with `kill -9`: the new leader serves
the room from the replicated occupant list, the Prosody occupant stays in the room (never
removed with 333) and keeps receiving each message exactly once, over the new leader's own
link to Prosody."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from cluster import Cluster
from federation import (
    METHOD,
    PROSODY_BIN,
    PROSODY_DOMAIN,
    SB_ADDR,
    SB_DOMAIN,
    Certs,
    Client,
    Prosody,
    bodies,
    render_toml_nested,
    strip_ansi,
    wait_until,
)
from test_muc_federation import (
    codes,
    exactly_once,
    from_occupant,
    groupchat,
    instant,
    join,
    joined,
)

SB_MUC = f"conference.{SB_DOMAIN}"
PROSODY_MUC = f"conference.{PROSODY_DOMAIN}"

pytestmark = pytest.mark.skipif(
    PROSODY_BIN is None, reason="prosody is not installed (apt-get install prosody)"
)


def log_text(node) -> str:
    try:
        return strip_ansi(node.log_path.read_text(errors="replace"))
    except OSError:
        return ""


async def wait_log(node, needle: str, timeout: float = 20.0) -> None:
    await wait_until(lambda: needle in log_text(node), timeout, f"{needle!r} in {node.name}'s log")


@pytest.fixture(params=["selfsigned", "ca"])
def fedcluster(request, tmp_path):
    """(cluster, prosody, mode, accounts): three nodes serving sb.fed.test, not started
    yet but configured, Prosody running with its group chat service. In "ca" mode every
    node presents the same certificate, naming sb.fed.test and conference.sb.fed.test."""
    mode = request.param
    certs = Certs(tmp_path / "certs", mode, [SB_DOMAIN, PROSODY_DOMAIN, PROSODY_MUC],
                  names={SB_DOMAIN: [SB_MUC]})
    cluster = Cluster(tmp_path)
    entry = cluster.nodes[0]
    prosody = Prosody(
        tmp_path / "prosody", certs,
        routes={d: (SB_ADDR, entry.s2s_port) for d in (SB_DOMAIN, SB_MUC)}, muc=True,
    )
    routes = {d: f"{prosody.addr}:{prosody.s2s_port}" for d in (PROSODY_DOMAIN, PROSODY_MUC)}
    accounts = [(f"fc{i}", f"pw-fc{i}") for i in range(3)]
    for n in cluster.nodes:
        n.domain = SB_DOMAIN
        n.config["domains"] = [SB_DOMAIN]
        n.config["s2s"] = {"listen": f"{SB_ADDR}:{n.s2s_port}", "routes": routes}
        if mode == "ca":
            n.config["s2s"]["ca_file"] = str(certs.ca)
            # Where the test harness looks for the node's certificate (Server.cafile).
            tls = n.data_dir / "tls"
            tls.mkdir(exist_ok=True)
            shutil.copy(certs.cert[SB_DOMAIN], tls / "cert.pem")
            shutil.copy(certs.key[SB_DOMAIN], tls / "key.pem")
            n.config["tls"] = {"cert": str(tls / "cert.pem"), "key": str(tls / "key.pem")}
        n.config["log"] = {
            "level": os.environ.get("SWITCHBOARD_TEST_LOG_LEVEL", "info,openraft=warn,nodes::s2s=debug")
        }
        n.config_path.write_text(render_toml_nested(n.config))
        lines = "".join(f"{local}@{SB_DOMAIN} {pw}\n" for local, pw in accounts)
        r = n.cli("user", "import", "-", input=lines)
        assert r.returncode == 0, f"user import on {n.name}: {r.stdout}\n{r.stderr}"
    prosody.start()
    try:
        yield cluster, prosody, mode, accounts
    finally:
        prosody.stop()
        errors = cluster.stop()
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


async def start_client(jid: str, password: str, host: str, port: int, attempts: int = 5) -> Client:
    """A slixmpp session, retried a few times: right after a node died, a bind may be
    refused until the cluster's metadata group has a leader again."""
    last = None
    for i in range(attempts):
        c = Client(jid, password, host, port)
        try:
            return await c.start()
        except AssertionError as exc:
            last = exc
            await c.stop()
            await asyncio.sleep(1.0 + i)
    raise AssertionError(f"{jid} could not log in: {last}")


def no_duplicates(clients) -> None:
    for c in clients:
        got = bodies(c)
        dup = {b: got.count(b) for b in set(got) if got.count(b) > 1}
        assert not dup, (c.jid, dup, got)


@pytest.mark.timeout(300)
async def test_a_prosody_occupant_of_a_cluster_room_survives_kill9_of_its_leader(fedcluster):
    cluster, prosody, mode, accounts = fedcluster
    cluster.start()
    cluster.wait_shards_ready()
    entry = cluster.nodes[0]

    # A room whose shard is led by a node other than the one Prosody's streams reach.
    shards = cluster.shard_count()
    leaders = cluster.shard_leaders(entry)
    room = next(
        r for r in (f"fedc{i}@{SB_MUC}" for i in range(1000))
        if leaders.get(cluster.shard_of(r, shards)) not in (None, cluster.node_id(entry))
    )
    victim = cluster.node_by_id(leaders[cluster.shard_of(room, shards)])
    other = next(n for n in cluster.nodes if n is not entry and n is not victim)

    # Our users on the two nodes that stay (the owner on the third node, one on the entry
    # node), the Prosody user on Prosody.
    (la, pa), (lc, pc), _ = accounts
    alice = await start_client(f"{la}@{SB_DOMAIN}/a", pa, SB_ADDR, other.c2s_port)
    carol = await start_client(f"{lc}@{SB_DOMAIN}/c", pc, SB_ADDR, entry.c2s_port)
    prosody.register("pbob", "pw-pbob")
    bob = await start_client(f"pbob@{PROSODY_DOMAIN}/p", "pw-pbob", prosody.addr, prosody.c2s_port)
    clients = [alice, carol, bob]
    try:
        join(alice, f"{room}/alice")
        own = await joined(alice, f"{room}/alice")
        assert "201" in codes(own)
        await instant(alice, room)
        join(carol, f"{room}/carol")
        await joined(carol, f"{room}/carol")
        join(bob, f"{room}/bob")
        await joined(bob, f"{room}/bob")
        await wait_until(lambda: from_occupant(alice, f"{room}/bob", "available"), 30, "bob at alice")
        await wait_until(lambda: from_occupant(carol, f"{room}/bob", "available"), 30, "bob at carol")

        for c, nick in ((alice, "alice"), (carol, "carol"), (bob, "bob")):
            groupchat(c, room, f"hi from {nick}")
            await exactly_once(clients, f"hi from {nick}")
        got = next(m for m in bob.messages if m["body"] == "hi from carol")
        assert str(got["from"]) == f"{room}/carol" and got["type"] == "groupchat"

        # The room's stanzas to Prosody left from its leader, on a link of the service's
        # domain (no client and no peer's stream is on that node: the link is the room's);
        # Prosody's stanzas to the room came in at the entry node.
        method = METHOD[mode]
        await wait_log(victim, f'local={SB_MUC} remote={PROSODY_DOMAIN} method="{method}"')
        await wait_log(entry, f'domain={PROSODY_DOMAIN} method="{method}" tls=true local={SB_MUC}')
        assert "s2s inbound peer authenticated" not in log_text(victim)

        victim.kill9()
        survivors = [n for n in cluster.nodes if n is not victim]
        cluster.wait_shards_ready(nodes=survivors, timeout=40)
        new_leader = cluster.node_by_id(cluster.shard_leaders(entry)[cluster.shard_of(room, shards)])
        assert new_leader in survivors

        # Messages sent while the shard changed leader may be lost with the dead node; once
        # one reaches bob, the new leader's link to Prosody is up.
        probes = []
        deadline = time.monotonic() + 60
        while not any(p in bodies(bob) for p in probes):
            assert time.monotonic() < deadline, f"no probe reached bob: {bodies(bob)}"
            probes.append(f"probe {len(probes)}")
            groupchat(alice, room, probes[-1])
            await asyncio.sleep(1.5)

        # After the failover: every message once at each of the three, from any of them.
        for c, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            groupchat(c, room, f"after failover from {nick}")
            await exactly_once(clients, f"after failover from {nick}")
        no_duplicates(clients)
        # Bob was never taken for a vanished occupant, and still is one.
        assert not [p for c in clients for p in c.presences if "333" in codes(p)]
        assert not from_occupant(alice, f"{room}/bob", "unavailable")
        await wait_log(new_leader, f'local={SB_MUC} remote={PROSODY_DOMAIN} method="{method}"')
        other_method = METHOD["ca" if mode == "selfsigned" else "selfsigned"]
        for n in cluster.nodes:
            assert f'method="{other_method}"' not in log_text(n), n.name
    finally:
        for c in clients:
            await c.stop()
