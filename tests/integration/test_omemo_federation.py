"""PEP and end-to-end encryption across federation: an account of our node and an account
of a private Prosody (Debian `prosody`, with its `pep` module) exchange OMEMO messages
(slixmpp with slixmpp-omemo) both ways, and contacts get each other's PEP notifications. Each side fetches the other's device list and bundles from
the other server's PEP service over s2s: ours answers Prosody's pubsub queries for our
account, and routes our client's queries to Prosody's."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp

from federation import PROSODY_BIN, PROSODY_DOMAIN, SB_ADDR, client_ssl_context, sb_and_prosody
from test_omemo import omemo_client_at, send_encrypted

NS_TUNE = "http://jabber.org/protocol/tune"

pytestmark = pytest.mark.skipif(
    PROSODY_BIN is None, reason="prosody is not installed (apt-get install prosody)"
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    with sb_and_prosody(tmp_path_factory.mktemp("fed-omemo"), "selfsigned", accounts=2,
                        modules=("pep",)) as (sb, prosody):
        yield sb, prosody


@pytest.mark.timeout(180)
async def test_omemo_with_a_prosody_account(fed):
    sb, prosody = fed
    prosody.register("omemo", "pw-omemo")
    acc = sb.account()
    a = await omemo_client_at(f"{acc.jid}/omemo", acc.password, SB_ADDR, sb.c2s_port,
                              client_ssl_context())
    b = await omemo_client_at(f"omemo@{PROSODY_DOMAIN}/omemo", "pw-omemo", prosody.addr,
                              prosody.c2s_port, client_ssl_context())
    try:
        await send_encrypted(a, b, "from switchboard to prosody")
        await send_encrypted(b, a, "and back again")
    finally:
        for x in (a, b):
            x.disconnect()
        await asyncio.sleep(0.2)


async def pep_client(jid: str, password: str, host: str, port: int):
    """A slixmpp client whose caps ask for tune notifications (XEP-0163 §4.3.3)."""
    x = slixmpp.ClientXMPP(jid, password)
    x.ssl_context = client_ssl_context()
    x.enable_starttls, x.enable_direct_tls, x.enable_plaintext = True, False, False
    for p in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0118"):
        x.register_plugin(p)
    x.plugin["xep_0163"].add_interest(NS_TUNE)
    started = asyncio.get_running_loop().create_future()
    x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    x.connect(host=host, port=port)
    await asyncio.wait_for(started, 20)
    await x.get_roster()
    x.send_presence()
    return x


async def wait_for(pred, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_pep_notifications_cross_federation_both_ways(fed):
    """Contacts on the two servers (a `both` subscription over s2s) get each other's PEP
    notifications: ours are sent to the Prosody contact; Prosody's reach our client, whose
    caps Prosody asks for across s2s (our node routes the disco#info to the client)."""
    sb, prosody = fed
    acc = sb.account()
    prosody.register("peptune", "pw-peptune")
    a = await pep_client(f"{acc.jid}/tune", acc.password, SB_ADDR, sb.c2s_port)
    b = await pep_client(f"peptune@{PROSODY_DOMAIN}/tune", "pw-peptune", prosody.addr, prosody.c2s_port)
    try:
        got: dict[str, list[str]] = {"a": [], "b": []}
        for name, x in (("a", a), ("b", b)):
            x.add_event_handler(
                "user_tune_publish",
                lambda msg, name=name: got[name].append(msg["pubsub_event"]["items"]["item"]["tune"]["title"]),
            )
        # slixmpp answers subscription requests and subscribes back by default.
        a.send_presence_subscription(pto=b.boundjid.bare)
        await wait_for(
            lambda: a.client_roster[b.boundjid.bare]["subscription"] == "both"
            and b.client_roster[a.boundjid.bare]["subscription"] == "both",
            30, "a mutual subscription across federation")
        await asyncio.sleep(1.0)  # each server's caps query and the clients' answers
        await a.plugin["xep_0118"].publish_tune(title="from switchboard")
        await wait_for(lambda: "from switchboard" in got["b"], 20, "our notification at Prosody's client")
        await b.plugin["xep_0118"].publish_tune(title="from prosody")
        await wait_for(lambda: "from prosody" in got["a"], 20, "Prosody's notification at our client")
    finally:
        for x in (a, b):
            x.disconnect()
        await asyncio.sleep(0.2)
