"""Stream errors and limits over raw sockets (RFC 6120 4.9, 11; the node's limits)."""

import asyncio
import os
import time

import pytest

from conftest import Server
from rawxmpp import (
    STREAM_ERROR,
    XmppClient,
    XmppTestError,
    login,
    q,
    stream_error_condition,
    stream_header,
    xml_str,
)

ACCOUNT_POOL = 16


async def plain_client(server, label="plain"):
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile, label=label)
    await c.start()
    return c


async def expect_error(c, *conditions, timeout=10):
    cond = await c.expect_stream_error(timeout)
    assert cond in conditions, (
        f"expected stream error {' or '.join(f'<{x}/>' for x in conditions)}, got <{cond}/>\n"
        f"{c.describe()}"
    )
    await c.expect_closed()
    return cond


# -- malformed input -----------------------------------------------------------


async def test_not_well_formed_before_auth(server):
    c = await plain_client(server)
    try:
        await c.send("<message><body>x</bod></message>")
        await expect_error(c, "not-well-formed")
    finally:
        await c.close()


async def test_not_well_formed_after_bind(server):
    acct = server.account()
    c = await login(server, acct, resource="nwf")
    try:
        await c.send(f"<message to='{acct.jid}'><body>x</bod></message>")
        await expect_error(c, "not-well-formed")
    finally:
        await c.close()


async def test_invalid_utf8_closes_the_stream(server):
    """RFC 6120 11.6 / 4.9.3.22: improperly encoded UTF-8 -> <unsupported-encoding/>
    (not-well-formed is tolerated here); it must never be routed."""
    acct = server.account()
    c = await login(server, acct, resource="utf8")
    try:
        await c.send(b"<message to='" + acct.jid.encode() + b"'><body>\xff\xfe\xc3</body></message>")
        await expect_error(c, "unsupported-encoding", "not-well-formed")
    finally:
        await c.close()


@pytest.mark.parametrize(
    "header",
    [
        stream_header("localhost", stream_ns="http://etherx.jabber.org/streamz"),
        stream_header("localhost", default_ns="urn:example:bogus"),
    ],
    ids=["stream-namespace", "content-namespace"],
)
async def test_invalid_namespace(server, header):
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        ev = await c.open_stream(header)  # RFC 6120 4.9.1.2: header first, then the error
        assert ev.element.tag == "{http://etherx.jabber.org/streams}stream", c.describe()
        await expect_error(c, "invalid-namespace")
    finally:
        await c.close()


async def test_unknown_domain_gives_host_unknown(server):
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        ev = await c.open_stream(stream_header("unknown.example"))
        assert ev.element.tag == "{http://etherx.jabber.org/streams}stream", c.describe()
        await expect_error(c, "host-unknown")
    finally:
        await c.close()


@pytest.mark.parametrize(
    "element",
    ["<foo/>", "<foo xmlns='urn:example:unknown'/>", "<stanza xmlns='jabber:client' type='get'/>"],
    ids=["jabber-client", "foreign-namespace", "made-up-name"],
)
async def test_unknown_top_level_element_after_bind(server, element):
    acct = server.account()
    c = await login(server, acct, resource="uns")
    try:
        await c.send(element)
        await expect_error(c, "unsupported-stanza-type")
    finally:
        await c.close()


# -- stanzas before the stream is authenticated / bound ---------------------------


async def test_stanza_before_authentication_gives_not_authorized(server):
    acct = server.account()
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        await c.start()
        await c.starttls()
        await c.start()
        await c.send(f"<message to='{acct.jid}' id='m1'><body>hi</body></message>")
        await expect_error(c, "not-authorized")
    finally:
        await c.close()


async def test_stanza_before_bind_gives_not_authorized(server):
    """RFC 6120 7.1: a stanza to another entity before binding closes the stream."""
    acct, other = server.account(), server.account()
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    watcher = await login(server, other, resource="w", presence=True, label="recipient")
    try:
        await c.start()
        await c.starttls()
        await c.start()
        res = await c.authenticate(acct.local, acct.password)
        assert res.success, xml_str(res.element)
        await c.start()
        await c.send(f"<message to='{other.jid}/w' id='m2'><body>before bind</body></message>")
        await expect_error(c, "not-authorized")
        leaked = [e for e in await watcher.expect_silence(0.5) if e.tag == q("message")]
        assert not leaked, f"stanza sent before bind was delivered: {[xml_str(e) for e in leaked]}"
    finally:
        await c.close()
        await watcher.close()


# -- restricted XML (RFC 6120 11.1) ------------------------------------------------

BILLION_LAUGHS = (
    "<?xml version='1.0'?>"
    "<!DOCTYPE stream:stream ["
    '<!ENTITY lol "lol">'
    '<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    '<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
    '<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">'
    '<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">'
    '<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">'
    '<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">'
    '<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">'
    "]>"
    + stream_header("localhost", xml_decl=False)
    + "<message to='localhost'><body>&lol9;</body></message>"
)


async def test_billion_laughs_gives_restricted_xml(make_server):
    srv = make_server(accounts=1)
    witness = await login(srv, srv.account(), resource="witness", label="witness")
    c = await XmppClient.connect(srv.c2s_port, cafile=srv.cafile, label="attacker")
    try:
        ev = await c.open_stream(BILLION_LAUGHS)
        assert ev.element.tag == "{http://etherx.jabber.org/streams}stream", c.describe()
        await expect_error(c, "restricted-xml")
        await witness.barrier()
        rss = srv.pid_rss_kib()
        assert rss is not None and rss < 512 * 1024, f"node RSS {rss} KiB after the attack"
    finally:
        await c.close()
        await witness.close()


@pytest.mark.parametrize(
    "payload",
    ["<?evil instruction?>", "<!-- a comment -->"],
    ids=["processing-instruction", "comment"],
)
async def test_restricted_xml_after_bind(server, payload):
    acct = server.account()
    c = await login(server, acct, resource="rx")
    try:
        await c.send(payload)
        await expect_error(c, "restricted-xml")
    finally:
        await c.close()


@pytest.mark.parametrize(
    "payload",
    [
        "<message to='{jid}'><body>&xxe;</body></message>",
        "<!DOCTYPE x [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><message to='{jid}'><body>&xxe;</body></message>",
    ],
    ids=["undeclared-entity", "doctype-mid-stream"],
)
async def test_entity_references_are_refused(server, payload):
    acct = server.account()
    c = await login(server, acct, resource="ent")
    try:
        await c.send(payload.format(jid=c.jid))
        await expect_error(c, "restricted-xml", "not-well-formed")
        leaked = [e for e in c.skipped if e.tag == q("message")]
        assert not leaked, f"a stanza with an entity reference was delivered: {leaked}"
    finally:
        await c.close()


# -- size and depth limits --------------------------------------------------------


async def test_ten_megabyte_stanza_gives_policy_violation_while_others_are_served(make_server):
    srv = make_server(accounts=2)
    sender_acct, witness_acct = srv.account(), srv.account()
    witness = await login(srv, witness_acct, resource="w", presence=True, label="witness")
    # pyOpenSSL over a bare socket: reading goes on after our writes fail (the node
    # resets the connection while we are still sending), so its stream error is not lost.
    sender = await login(srv, sender_acct, resource="big", label="sender", tls_engine="openssl")
    stop = asyncio.Event()
    ping_times = []

    async def keep_pinging():
        while not stop.is_set():
            t0 = time.monotonic()
            resp = await witness.ping(timeout=5)
            assert resp.get("type") == "result", xml_str(resp)
            ping_times.append(time.monotonic() - t0)
            await asyncio.sleep(0.2)

    async def send_big():
        chunk = b"A" * 65536
        await sender.send(f"<message to='{witness.jid}' id='big'><body>")
        sent = 0
        try:
            while sent < 10 * 1024 * 1024 and not stop.is_set():
                await sender.send(chunk, timeout=20)
                sent += len(chunk)
            if not stop.is_set():
                await sender.send("</body></message>")
        except (ConnectionError, OSError):
            pass  # the node closed the connection while we were still writing
        return sent

    pinger = asyncio.create_task(keep_pinging())
    writer = asyncio.create_task(send_big())
    try:
        cond = await sender.expect_stream_error(timeout=30)
        stop.set()
        await asyncio.wait_for(writer, 25)
        assert cond == "policy-violation", (
            f"expected <policy-violation/> for a 10 MB stanza, got <{cond}/>\n{sender.describe()}"
        )
        await asyncio.wait_for(pinger, 10)
        resp = await witness.ping(timeout=5)
        assert resp.get("type") == "result", xml_str(resp)
        assert ping_times, "the witness got no ping reply while the big stanza was sent"
        delivered = [e for e in witness.skipped + await witness.expect_silence(0.3)
                     if e.tag == q("message") and e.get("id") == "big"]
        assert not delivered, "the oversized stanza was delivered"
    finally:
        stop.set()
        for t in (pinger, writer):
            if not t.done():
                t.cancel()
        await asyncio.gather(pinger, writer, return_exceptions=True)
        await sender.close()
        await witness.close()


async def test_excessive_nesting_gives_policy_violation(server):
    acct = server.account()
    c = await login(server, acct, resource="deep")
    try:
        await c.send(f"<message to='{c.jid}'><body>" + "<a>" * 2000)
        await expect_error(c, "policy-violation")
    finally:
        await c.close()


def _server_side_tcp(server_port: int, client_port: int) -> tuple[str, str] | None:
    """State (hex) and `tx_queue:rx_queue` (/proc/net/tcp) of the node's end of one
    loopback connection."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        parts = line.split()
        local, remote, state = parts[1], parts[2], parts[3]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return state, parts[4]
    return None


def _server_side_tcp_state(server_port: int, client_port: int) -> str | None:
    """State (hex, /proc/net/tcp) of the node's end of one loopback connection."""
    found = _server_side_tcp(server_port, client_port)
    return found[0] if found else None


async def test_slow_reader_is_disconnected_and_sender_keeps_going(make_server):
    """A session whose client stops reading must not make the node buffer without bound,
    nor stall the sender: past send_queue_max_bytes it gets a stream error and is cut off,
    while the sender and everyone else keep being served."""
    srv = make_server({"c2s": {"send_queue_max_bytes": 262144}}, accounts=3)
    slow_acct, sender_acct, witness_acct = srv.account(), srv.account(), srv.account()
    slow = await login(srv, slow_acct, resource="slow", rcvbuf=4096, label="slow")
    sender = await login(srv, sender_acct, resource="fast", label="sender")
    witness = await login(srv, witness_acct, resource="w", label="witness")
    client_port = slow.io.sockname()[1]

    async def drain(c):  # the sender reads everything it is sent (e.g. error bounces)
        while True:
            ev = await c.next_event(timeout=120)
            if ev.kind in ("close", "eof"):
                return ev.kind
            if ev.element is not None and ev.element.tag == STREAM_ERROR:
                return f"stream error <{stream_error_condition(ev.element)}/>"

    sender_reader = asyncio.create_task(drain(sender))
    body = "x" * 60000
    sent_bytes, n = 0, 0
    disconnected = False
    t0 = time.monotonic()
    try:
        while sent_bytes < 32 * 1024 * 1024 and time.monotonic() - t0 < 25:
            for _ in range(8):
                n += 1
                # A write that cannot complete means the node stopped reading the sender.
                # headline: once the session is gone, further ones are dropped silently
                # (RFC 6121 8.5.3.2.1) instead of bouncing 60 kB errors to the sender.
                await sender.send(
                    f"<message to='{slow.jid}' type='headline' id='f{n}'><body>{body}</body></message>",
                    timeout=10,
                )
                sent_bytes += len(body)
            if sender_reader.done():
                raise AssertionError(
                    f"the sender's stream ended: {sender_reader.result()}\n{sender.describe()}"
                )
            resp = await witness.ping(timeout=10)
            assert resp.get("type") == "result", xml_str(resp)
            state = _server_side_tcp_state(srv.c2s_port, client_port)
            if state != "01":  # 01 = ESTABLISHED: the node has let go of the socket
                disconnected = True
                elapsed = time.monotonic() - t0
                break
        assert disconnected, (
            f"after {sent_bytes} bytes queued for a client that does not read, the node still "
            f"holds its connection (send_queue_max_bytes = 262144); the node's socket "
            f"(state, tx:rx queue): {_server_side_tcp(srv.c2s_port, client_port)}; "
            f"tcp_wmem: {open('/proc/sys/net/ipv4/tcp_wmem').read().strip()}; "
            f"c2s bytes out: {[l for l in srv.metrics_text().splitlines() if 'c2s_bytes_total' in l]}"
        )
        # Now read what reached the slow client: whole stanzas, then the stream error.
        messages = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        cond = None
        while True:
            ev = await slow.next_event(max(0.1, deadline - loop.time()))
            if ev.kind == "element" and ev.element.tag == STREAM_ERROR:
                cond = stream_error_condition(ev.element)
            elif ev.kind == "element":
                messages += 1
            if ev.kind in ("close", "eof"):
                break
        assert messages < n, "every message reached the slow reader: nothing was cut off"
        assert cond == "policy-violation", (
            f"the slow reader got no <policy-violation/> stream error before being cut off "
            f"(got {cond!r}; it received {messages} of {n} messages; the node let go of the "
            f"connection after {sent_bytes} bytes of bodies in {elapsed:.2f}s)\n{slow.describe()}"
        )
        if sender_reader.done():
            raise AssertionError(
                f"the sender's stream ended: {sender_reader.result()}\n{sender.describe()}"
            )
        await sender.send(f"<message to='{witness.jid}' id='after'><body>still here</body></message>")
        got = await witness.recv_match(
            lambda e: e.tag == q("message") and e.get("id") == "after", what="the sender's message"
        )
        assert got.get("from") == sender.jid, xml_str(got)
    finally:
        sender_reader.cancel()
        await asyncio.gather(sender_reader, return_exceptions=True)
        slow.abort()
        await sender.close()
        await witness.close()


async def test_bursts_faster_than_the_node_reach_a_prompt_reader_whole(make_server):
    """Clients that send faster than the node routes must be slowed down (the node reads
    each a chunk at a time), not make the node cut off a receiver that reads promptly. A
    sender's connection once read on for as long as input kept arriving (up to tokio's
    budget of 128 reads), starving the router and the writers on its thread: the senders'
    backlog then landed in the receiver's send queue at once, past send_queue_max_bytes,
    and the receiver got <policy-violation/> and lost the rest."""
    # One CPU, so one worker thread: the senders, the router and the receiver share it.
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        srv = make_server({"c2s": {"send_queue_max_bytes": 262144}}, accounts=9)
    finally:
        os.sched_setaffinity(0, cpus)
    receiver = await login(srv, srv.account(), resource="r", label="receiver")
    senders = [await login(srv, srv.account(), resource="s", label=f"sender{k}") for k in range(8)]
    per_sender = 4000
    n = per_sender * len(senders)
    body = "y" * 300
    # About 1.3 MiB from each sender, 10 MiB in all: forty times the receiver's limit.
    bursts = [
        "".join(
            f"<message to='{receiver.jid}' type='chat' id='b{k}-{i}'><body>{body}</body></message>"
            for i in range(per_sender)
        )
        for k in range(len(senders))
    ]

    async def count():
        got = 0
        while got < n:
            ev = await receiver.next_event(timeout=30)
            if ev.kind in ("close", "eof"):
                return got, ev.kind
            if ev.kind == "element" and ev.element.tag == STREAM_ERROR:
                return got, f"stream error <{stream_error_condition(ev.element)}/>"
            if ev.kind == "element" and ev.element.tag == q("message"):
                got += 1
        return got, None

    counter = asyncio.create_task(count())
    try:
        await asyncio.gather(*(c.send(b, timeout=60) for c, b in zip(senders, bursts)))
        got, end = await asyncio.wait_for(counter, 90)
        assert end is None and got == n, (
            f"the receiver, which reads promptly, got {got} of {n} messages and then {end}\n"
            f"{receiver.describe()}"
        )
        for c in senders:
            resp = await c.ping(timeout=10)
            assert resp.get("type") == "result", xml_str(resp)
    finally:
        counter.cancel()
        await asyncio.gather(counter, return_exceptions=True)
        for c in senders:
            await c.close()
        await receiver.close()


# -- timeouts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_timeout_server(tmp_path_factory):
    srv = Server(
        tmp_path_factory.mktemp("sb-timeout"), {"c2s": {"auth_timeout_secs": 2}}, name="tmo"
    )
    srv.prepare_accounts(1)
    srv.start()
    yield srv
    srv.stop()


async def test_idle_unauthenticated_stream_gets_connection_timeout(short_timeout_server):
    srv = short_timeout_server
    plain = await plain_client(srv, label="after-header")
    tls = await XmppClient.connect(srv.c2s_port, cafile=srv.cafile, label="after-tls")
    await tls.start()
    await tls.starttls()
    await tls.start()
    t0 = time.monotonic()
    try:
        for c in (plain, tls):
            await expect_error(c, "connection-timeout", timeout=8)
        elapsed = time.monotonic() - t0
        assert elapsed >= 1.0, f"closed after {elapsed:.1f}s, before auth_timeout_secs = 2"
    finally:
        await plain.close()
        await tls.close()


async def test_silent_tcp_connection_is_closed_after_auth_timeout(short_timeout_server):
    srv = short_timeout_server
    c = await XmppClient.connect(srv.c2s_port, cafile=srv.cafile, label="silent")
    try:
        ev = await c.next_event(timeout=8)
        while ev.kind in ("header", "element"):
            if ev.kind == "element":
                assert ev.element.tag == STREAM_ERROR, xml_str(ev.element)
            ev = await c.next_event(timeout=8)
        assert ev.kind in ("close", "eof"), ev.kind
    except XmppTestError as exc:
        raise AssertionError(
            f"a TCP connection that never sent a stream header is still open after 8s "
            f"(auth_timeout_secs = 2): {exc}"
        )
    finally:
        c.abort()


async def test_authenticated_session_is_not_subject_to_auth_timeout(short_timeout_server):
    srv = short_timeout_server
    acct = srv.account()
    c = await login(srv, acct, resource="idle")
    try:
        await asyncio.sleep(3.5)
        resp = await c.ping(timeout=5)
        assert resp.get("type") == "result", xml_str(resp)
    finally:
        await c.close()


async def test_a_peer_that_floods_without_reading_after_its_stream_error_does_not_stall_others(
    make_server,
):
    # The sender never reads: the node's stream error and TLS close_notify stay queued
    # behind a full socket while more input keeps arriving. Lingering on such a connection
    # once spun the thread it shared with other sessions (rustls stops reading records
    # while the socket stays readable), so their pings went unanswered.
    srv = make_server(accounts=4)
    accounts = [srv.account() for _ in range(4)]
    witnesses = [
        await login(srv, a, resource="w", label=f"witness{i}") for i, a in enumerate(accounts[1:])
    ]
    sender = await login(srv, accounts[0], resource="flood", label="sender", tls_engine="openssl")

    async def flood():
        chunk = b"A" * 65536
        try:
            await sender.send(f"<message to='{witnesses[0].jid}' id='big'><body>")
            for _ in range(160):  # 10 MiB at most, never reading
                await sender.send(chunk, timeout=2)
        except (ConnectionError, OSError, asyncio.TimeoutError, XmppTestError):
            pass

    writer = asyncio.create_task(flood())
    try:
        await asyncio.sleep(1.0)  # the node has refused the stanza and is lingering
        for _ in range(3):
            for w in witnesses:
                resp = await w.ping(timeout=3)
                assert resp.get("type") == "result", xml_str(resp)
            await asyncio.sleep(0.2)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        sender.abort()
        for w in witnesses:
            await w.close()
