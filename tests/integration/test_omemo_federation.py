"""End-to-end encryption across federation: an account of our node and an account of a
private Prosody (Debian `prosody`, with its `pep` module) exchange OMEMO messages (slixmpp
with slixmpp-omemo) both ways. Each side fetches the other's device list and bundles from
the other server's PEP service over s2s: ours answers Prosody's pubsub queries for our
account, and routes our client's queries to Prosody's."""

from __future__ import annotations

import asyncio

import pytest

from federation import (
    PROSODY_ADDR,
    PROSODY_BIN,
    PROSODY_DOMAIN,
    SB_ADDR,
    SB_DOMAIN,
    Certs,
    Prosody,
    client_ssl_context,
    make_sb,
    render_toml_nested,
)
from test_omemo import omemo_client_at, send_encrypted

pytestmark = pytest.mark.skipif(
    PROSODY_BIN is None, reason="prosody is not installed (apt-get install prosody)"
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    d = tmp_path_factory.mktemp("fed-omemo")
    certs = Certs(d / "certs", "selfsigned", [SB_DOMAIN, PROSODY_DOMAIN])
    sb = make_sb(d / "sb", certs, routes={}, accounts=2)
    prosody = Prosody(d / "prosody", certs, routes={SB_DOMAIN: sb.s2s_addr}, modules=("pep",))
    sb.config["s2s"]["routes"] = {PROSODY_DOMAIN: f"{PROSODY_ADDR}:{prosody.s2s_port}"}
    sb.config_path.write_text(render_toml_nested(sb.config))
    prosody.register("omemo", "pw-omemo")
    prosody.start()
    try:
        sb.start()
    except BaseException:
        prosody.stop()
        raise
    yield sb, prosody
    prosody.stop()
    sb.stop()


@pytest.mark.timeout(180)
async def test_omemo_with_a_prosody_account(fed):
    sb, prosody = fed
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
