"""Federation with Prosody (Debian `prosody`): a private Prosody instance on 127.0.0.2
serving pro.fed.test and our node on 127.0.0.1 serving sb.fed.test exchange messages,
subscriptions and presence both ways, once with self-signed certificates (Server
Dialback carries the links) and once with certificates from a test CA that both trust
(SASL EXTERNAL must be used). Peers that claim a domain they did not authenticate are
refused. The checks themselves are in federation.py, shared with ejabberd's.
"""

from __future__ import annotations

import pytest

import federation as f
from federation import PROSODY_BIN, Fed, sb_and_prosody

pytestmark = pytest.mark.skipif(
    PROSODY_BIN is None, reason="prosody is not installed (apt-get install prosody)"
)


@pytest.fixture(scope="module", params=["selfsigned", "ca"])
def fed(request, tmp_path_factory):
    mode = request.param
    with sb_and_prosody(tmp_path_factory.mktemp(f"fed-prosody-{mode}"), mode, accounts=10) as (sb, prosody):
        yield Fed(mode, sb, prosody)


@pytest.fixture
async def clients(fed):
    start, stop = f.clients_factory(fed)
    yield start
    await stop()


async def test_messages_both_ways(fed, clients):
    await f.check_messages_both_ways(fed, clients)


async def test_iq_to_a_local_account_is_answered_across(fed, clients):
    await f.check_iq_to_a_local_account_is_answered_across(fed, clients)


async def test_server_iq_across(fed, clients):
    await f.check_server_iq_across(fed, clients)


async def test_links_use_the_expected_authentication(fed, clients):
    await f.check_links_use_the_expected_authentication(fed, clients)


async def test_subscription_handshake_and_presence(fed, clients):
    await f.check_subscription_handshake_and_presence(fed, clients)


def test_unauthenticated_domain_is_refused(fed):
    f.check_unauthenticated_domain_is_refused(fed)


def test_forged_dialback_key_is_refused(fed):
    f.check_forged_dialback_key_is_refused(fed)
