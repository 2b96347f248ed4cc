"""End-to-end encryption over PEP: two accounts using slixmpp with slixmpp-omemo (XEP-0384,
both `urn:xmpp:omemo:2` and `eu.siacs.conversations.axolotl`) publish their device lists
and bundles through the node's PEP service (XEP-0163, with `#publish-options`), fetch each
other's, and exchange an OMEMO-encrypted message that the recipient decrypts. One node here;
test_pep_cluster.py runs the same exchange between two cluster nodes, and
test_omemo_federation.py with a Prosody account."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, FrozenSet, Optional

import omemo
import slixmpp
from omemo.storage import Just, Maybe, Nothing
from slixmpp import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384

from rawxmpp import make_ssl_context
from test_pep import mutual_contacts

ACCOUNT_POOL = 4


class MemoryStorage(omemo.Storage):
    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, Any] = {}

    async def _load(self, key: str) -> Maybe[Any]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: Any) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class SwitchboardOmemo(XEP_0384):
    """slixmpp-omemo with in-memory storage and blind trust before verification (BTBV)."""

    default_config = {"fallback_message": "This message is OMEMO encrypted.", "storage": None}

    @property
    def storage(self) -> omemo.Storage:
        return self._storage

    def plugin_init(self) -> None:
        self._storage = MemoryStorage()
        super().plugin_init()

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted: FrozenSet[omemo.DeviceInformation],
                                       identifier: Optional[str]) -> None:
        pass

    async def _prompt_manual_trust(self, manually_trusted: FrozenSet[omemo.DeviceInformation],
                                   identifier: Optional[str]) -> None:
        raise AssertionError("BTBV trusts the first device of each account")


register_plugin(SwitchboardOmemo)


async def omemo_client(server, account, resource: str):
    """An OMEMO client of one of our nodes."""
    return await omemo_client_at(f"{account.jid}/{resource}", account.password, "127.0.0.1",
                                 server.c2s_port, make_ssl_context(server.cafile))


async def omemo_client_at(jid: str, password: str, host: str, port: int, ssl_context):
    """An OMEMO client of any server (ours, or Prosody across federation)."""
    x = slixmpp.ClientXMPP(jid, password)
    x.ssl_context = ssl_context
    x.enable_starttls, x.enable_direct_tls, x.enable_plaintext = True, False, False
    for p in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0280", "xep_0334"):
        x.register_plugin(p)
    x.register_plugin("xep_0384", module=__name__)
    started = asyncio.get_running_loop().create_future()
    initialized = asyncio.get_running_loop().create_future()
    x.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    x.add_event_handler("omemo_initialized", lambda *_: initialized.done() or initialized.set_result(True))
    x.connect(host=host, port=port)
    await asyncio.wait_for(started, 20)
    x.send_presence()
    await x.get_roster()
    await asyncio.wait_for(initialized, 60)
    return x


async def test_omemo_message_between_two_accounts(server):
    await exchange(server)


async def test_without_pep_omemo_cannot_encrypt(make_server):
    """The same exchange against a node with the pep module disabled fails: the exchange
    above stands on PEP."""
    srv = make_server({"modules.pep": {"enabled": False}}, accounts=2)
    try:
        await asyncio.wait_for(exchange(srv), 15)
    except (AssertionError, asyncio.TimeoutError, Exception):  # noqa: BLE001
        return
    raise AssertionError("an OMEMO message was exchanged without PEP")


async def exchange(server, other=None, pair=None):
    """alice (on `server`) sends bob (on `other`, default the same node) an OMEMO message;
    `pair`: the two accounts, already contacts (default: two new ones of `server`)."""
    alice, bob = pair or await mutual_contacts(server)
    a = await omemo_client(server, alice, "omemo")
    b = await omemo_client(other or server, bob, "omemo")
    try:
        await send_encrypted(a, b, "attack at dawn")
    finally:
        for x in (a, b):
            x.disconnect()
        await asyncio.sleep(0.2)


async def send_encrypted(a, b, text: str) -> None:
    """`a` encrypts `text` for `b`'s account (its device list and bundles fetched from its
    PEP service) and `b` decrypts it."""
    to = JID(b.boundjid.bare)
    received = asyncio.get_running_loop().create_future()

    async def on_message(msg):
        xep = b.plugin["xep_0384"]
        if msg["type"] in ("chat", "normal") and xep.is_encrypted(msg) and not received.done():
            try:
                received.set_result(await xep.decrypt_message(msg))
            except Exception as e:  # noqa: BLE001 - the test reports it
                received.set_exception(e)

    b.add_event_handler("message", on_message)
    try:
        await a.plugin["xep_0384"].refresh_device_lists({to}, force_download=True)
        msg = a.make_message(mto=to, mbody=text, mtype="chat")
        encrypted, errors = await a.plugin["xep_0384"].encrypt_message(msg, to)
        assert encrypted is not None, errors
        assert not errors, errors
        # What goes over the wire carries no plaintext.
        assert text not in str(encrypted)
        encrypted.send()
        plain, device = await asyncio.wait_for(received, 30)
        assert plain["body"] == text
        assert device.bare_jid == a.boundjid.bare
    finally:
        b.del_event_handler("message", on_message)
