"""Stream management (XEP-0198) in a real three-node cluster: a session detached on one node
is resumed on another (the state moves over the NodeLink, the route in one commit), and a
session whose node was killed with SIGKILL cannot be resumed but its account finds what was
stored offline meanwhile."""

import asyncio
import urllib.request

import pytest

from rawxmpp import authenticated, is_message, is_presence, online, q, subscribe, xml_str

NS_SM = "urn:xmpp:sm:3"


def sm(tag: str) -> str:
    return f"{{{NS_SM}}}{tag}"


def metrics(srv) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=5) as r:
        return r.read().decode()


def route_nodes(routes, jid):
    return [line.split()[1] for line in routes if line.split()[0] == jid]


async def enable(c):
    await c.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    e = await c.expect(lambda e: e.tag in (sm("enabled"), sm("failed")), 5, "<enabled/>")
    assert e.tag == sm("enabled") and e.get("id"), xml_str(e)
    return e.get("id")


async def resume(node, acct, previd, h, label):
    c = await authenticated(node, acct, label=label)
    await c.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
    answer = await c.expect(lambda e: e.tag in (sm("resumed"), sm("failed")), 15, "<resumed/>")
    return c, answer


async def test_a_session_detached_on_one_node_resumes_on_another(cluster):
    alice, bob = cluster.account(), cluster.account()
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a = await online(n1, alice, "phone", label="alice@n1")
    b = await online(n2, bob, "desk", label="bob@n2")
    a2 = None
    try:
        await subscribe(a, b)
        await subscribe(b, a)
        previd = await enable(a)
        await b.send(f"<message to='{a.jid}' type='chat' id='m1'><body>one</body></message>")
        await a.expect(is_message("m1"), 10, "m1 on n1")  # read, never acknowledged
        await b.drain(0.5)  # what the subscriptions brought
        a.abort()
        await asyncio.sleep(0.5)
        await b.send(f"<message to='{a.jid}' type='chat' id='m2'><body>two</body></message>")
        await asyncio.sleep(0.3)
        a2, answer = await resume(n3, alice, previd, 0, "alice@n3")
        assert answer.tag == sm("resumed"), xml_str(answer)
        got = []
        while len(got) < 2:
            m = await a2.expect(lambda e: e.tag == q("message"), 10, "retransmission on n3")
            got.append(m.get("id"))
        assert got == ["m1", "m2"], got
        routes = cluster.wait_routes_converge()
        assert route_nodes(routes, a.jid) == ["3"], routes
        assert 'switchboard_sm_sessions_total{event="resumed_remote"} 1' in metrics(n3)
        seen = await b.drain(0.5)
        assert not [e for e in seen if e.tag == q("presence") and e.get("from") == a.jid], [
            xml_str(e) for e in seen
        ]
        # The old holder can die now: the session lives on n3.
        n1.kill9()
        await b.send(f"<message to='{a.jid}' type='chat' id='m3'><body>three</body></message>")
        await a2.expect(is_message("m3"), 10, "m3 on n3 after n1 died")
    finally:
        await b.close()
        if a2 is not None:
            await a2.close()


async def test_the_holder_killed_the_resume_fails_and_offline_has_the_messages(cluster):
    alice, bob = cluster.account(), cluster.account()
    cluster.start()
    n1, n2, n3 = cluster.nodes
    a = await online(n1, alice, "phone", label="alice@n1")
    b = await online(n2, bob, "desk", label="bob@n2")
    a2 = None
    try:
        await subscribe(a, b)
        await subscribe(b, a)
        previd = await enable(a)
        a.abort()
        n1.kill9()
        await b.expect(is_presence(a.jid, "unavailable"), 15, "alice gone with n1")
        await b.send(f"<message to='{alice.jid}' type='chat' id='later'><body>l</body></message>")
        await asyncio.sleep(0.5)
        c, answer = await resume(n2, alice, previd, 0, "alice@n2")
        assert answer.tag == sm("failed"), xml_str(answer)
        assert answer.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
        await c.close()
        a2 = await online(n3, alice, "phone2", label="alice@n3")
        got = await a2.expect(is_message("later"), 10, "the message stored offline meanwhile")
        assert got.findtext(q("body")) == "l"
    finally:
        await b.close()
        if a2 is not None:
            await a2.close()
