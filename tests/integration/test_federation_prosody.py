"""Federation with Prosody (Debian `prosody`): a private Prosody instance on 127.0.0.2
serving pro.fed.test and our node on 127.0.0.1 serving sb.fed.test exchange messages,
subscriptions and presence both ways, once with self-signed certificates (Server
Dialback carries the links) and once with certificates from a test CA that both trust
(SASL EXTERNAL must be used). Peers that claim a domain they did not authenticate are
refused.
"""

from __future__ import annotations

import itertools

import pytest

from federation import (
    PROSODY_ADDR,
    PROSODY_BIN,
    PROSODY_DOMAIN,
    SB_ADDR,
    SB_DOMAIN,
    Certs,
    Client,
    Prosody,
    RawS2s,
    bodies,
    make_sb,
    presences_from,
    render_toml_nested,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    PROSODY_BIN is None, reason="prosody is not installed (apt-get install prosody)"
)

METHOD = {"selfsigned": "dialback", "ca": "SASL EXTERNAL"}


class Fed:
    def __init__(self, mode, sb, prosody):
        self.mode, self.sb, self.prosody = mode, sb, prosody
        self._counter = itertools.count(1)

    def prosody_account(self) -> tuple[str, str]:
        local = f"pu{next(self._counter):03d}"
        password = f"pw-{local}"
        self.prosody.register(local, password)
        return f"{local}@{PROSODY_DOMAIN}", password


@pytest.fixture(scope="module", params=["selfsigned", "ca"])
def fed(request, tmp_path_factory):
    mode = request.param
    d = tmp_path_factory.mktemp(f"fed-prosody-{mode}")
    certs = Certs(d / "certs", mode, [SB_DOMAIN, PROSODY_DOMAIN])
    sb = make_sb(d / "sb", certs, routes={}, accounts=10)
    prosody = Prosody(d / "prosody", certs, routes={SB_DOMAIN: sb.s2s_addr})
    sb.config["s2s"]["routes"] = {PROSODY_DOMAIN: f"{PROSODY_ADDR}:{prosody.s2s_port}"}
    sb.config_path.write_text(render_toml_nested(sb.config))
    prosody.start()
    try:
        sb.start()
    except BaseException:
        prosody.stop()
        raise
    yield Fed(mode, sb, prosody)
    prosody.stop()
    sb.stop()


@pytest.fixture
async def clients(fed):
    made = []

    async def _pair(presence=True):
        acc = fed.sb.account()
        a = Client(f"{acc.jid}/sb", acc.password, SB_ADDR, fed.sb.c2s_port)
        jid, password = fed.prosody_account()
        b = Client(f"{jid}/pro", password, PROSODY_ADDR, fed.prosody.c2s_port)
        made.extend([a, b])
        await a.start(presence=presence)
        await b.start(presence=presence)
        return a, b

    yield _pair
    for c in made:
        await c.stop()


def bare(c: Client) -> str:
    return c.jid.split("/")[0]


async def subscribe_both_ways(a: Client, b: Client) -> None:
    """a subscribes to b, b approves; then b subscribes to a, a approves."""
    for x, y in ((a, b), (b, a)):
        x.xmpp.send_presence(pto=bare(y), ptype="subscribe")
        await wait_until(lambda: presences_from(y, bare(x), "subscribe"), 20,
                         f"{bare(y)} to get {bare(x)}'s subscription request")
        y.xmpp.send_presence(pto=bare(x), ptype="subscribed")
        await wait_until(lambda: x.subscription(bare(y)) in ("to", "both"), 20,
                         f"{bare(x)}'s roster to show a subscription to {bare(y)}")
    await wait_until(lambda: a.subscription(bare(b)) == "both", 20, "both in a's roster")
    await wait_until(lambda: b.subscription(bare(a)) == "both", 20, "both in b's roster")


async def test_messages_both_ways(fed, clients):
    a, b = await clients()
    a.xmpp.send_message(mto=bare(b), mbody="hello prosody", mtype="chat")
    await wait_until(lambda: "hello prosody" in bodies(b), 30, "the message on Prosody")
    got = next(m for m in b.messages if m["body"] == "hello prosody")
    assert got["from"] == a.jid
    b.xmpp.send_message(mto=a.jid, mbody="hello switchboard", mtype="chat")
    await wait_until(lambda: "hello switchboard" in bodies(a), 30, "the reply on Switchboard")
    got = next(m for m in a.messages if m["body"] == "hello switchboard")
    assert got["from"] == b.jid
    # Several in a row keep their order.
    for i in range(20):
        a.xmpp.send_message(mto=bare(b), mbody=f"n{i}", mtype="chat")
    await wait_until(lambda: sum(x.startswith("n") for x in bodies(b)) == 20, 30, "20 messages")
    assert [x for x in bodies(b) if x.startswith("n")] == [f"n{i}" for i in range(20)]


async def test_links_use_the_expected_authentication(fed, clients):
    a, b = await clients()
    a.xmpp.send_message(mto=bare(b), mbody="ping", mtype="chat")
    b.xmpp.send_message(mto=bare(a), mbody="pong", mtype="chat")
    await wait_until(lambda: "ping" in bodies(b) and "pong" in bodies(a), 30, "both messages")
    method = METHOD[fed.mode]
    # Our link to Prosody, and Prosody's link to us, as our log saw them on the stream.
    fed.sb.wait_log(
        rf's2s outbound link authenticated local={SB_DOMAIN} remote={PROSODY_DOMAIN} '
        rf'method="{method}" tls=true'
    )
    fed.sb.wait_log(rf'domain={PROSODY_DOMAIN} method="{method}" tls=true')
    log = fed.sb.log_text()
    other = METHOD["ca" if fed.mode == "selfsigned" else "selfsigned"]
    assert f'remote={PROSODY_DOMAIN} method="{other}"' not in log, log[-3000:]
    assert f'domain={PROSODY_DOMAIN} method="{other}"' not in log, log[-3000:]


async def test_subscription_handshake_and_presence(fed, clients):
    a, b = await clients()
    await subscribe_both_ways(a, b)
    # Presence updates flow both ways once subscribed.
    b.xmpp.send_presence(pshow="away", pstatus="lunch")
    await wait_until(
        lambda: any(p["show"] == "away" and p["status"] == "lunch" for p in presences_from(a, bare(b))),
        20, "Prosody user's away presence on Switchboard",
    )
    a.xmpp.send_presence(pshow="dnd", pstatus="busy")
    await wait_until(
        lambda: any(p["show"] == "dnd" and p["status"] == "busy" for p in presences_from(b, bare(a))),
        20, "Switchboard user's dnd presence on Prosody",
    )
    # A new session of a probes b's server at login and gets b's current presence.
    acc_jid = bare(a)
    a2 = Client(f"{acc_jid}/second", a.password, SB_ADDR, fed.sb.c2s_port)
    try:
        await a2.start()
        await wait_until(
            lambda: any(p["show"] == "away" for p in presences_from(a2, bare(b))),
            20, "b's presence in answer to the probe",
        )
    finally:
        await a2.stop()
    # b goes offline: a learns it.
    await b.stop()
    await wait_until(lambda: presences_from(a, bare(b), "unavailable"), 20, "b's unavailable presence")


def test_unauthenticated_domain_is_refused(fed):
    """A peer that sends a stanza for a domain it has not authenticated gets <invalid-from/>."""
    acc = fed.sb.account()
    raw = RawS2s(fed.sb.s2s_addr, PROSODY_DOMAIN, SB_DOMAIN)
    try:
        raw.starttls()
        raw.send(
            f"<message from='mallory@{PROSODY_DOMAIN}' to='{acc.jid}' type='chat'>"
            "<body>spoofed</body></message>"
        )
        out = raw.read_until(r"</stream:stream>")
        assert "<invalid-from" in out, out
    finally:
        raw.close()
    fed.sb.wait_log(r"s2s inbound stream closed with an error.*invalid-from")


def test_forged_dialback_key_is_refused(fed):
    """Claiming pro.fed.test with a key Prosody never issued: we ask Prosody (the
    authoritative server) over our own link, it says invalid, we refuse the claim, and a
    stanza from that domain then gets <invalid-from/>."""
    acc = fed.sb.account()
    raw = RawS2s(fed.sb.s2s_addr, PROSODY_DOMAIN, SB_DOMAIN)
    try:
        raw.starttls()
        raw.send(f"<db:result from='{PROSODY_DOMAIN}' to='{SB_DOMAIN}'>{'ab' * 32}</db:result>")
        out = raw.read_until(r"<(db:)?result[^>]*type=['\"](invalid|error)['\"]", timeout=30)
        assert "valid'" not in out.replace("invalid'", ""), out
        raw.send(f"<message from='m@{PROSODY_DOMAIN}' to='{acc.jid}'><body>x</body></message>")
        out = raw.read_until(r"</stream:stream>")
        assert "<invalid-from" in out, out
    finally:
        raw.close()
