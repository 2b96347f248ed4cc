"""Stream negotiation over raw sockets: headers, STARTTLS, features, binding (RFC 6120 4-7)."""

import pytest

from rawxmpp import (
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    NS_SESSION,
    NS_STREAM,
    NS_TLS,
    XmppClient,
    login,
    stream_header,
    xml_str,
)

ACCOUNT_POOL = 10

REQUIRED_MECHANISMS = {"SCRAM-SHA-256", "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "PLAIN"}


def mechanisms(features):
    return [m.text for m in features.iterfind(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")]


def check_response_header(c: XmppClient):
    """RFC 6120 4.7: the response header carries from=<domain>, a fresh id, version 1.0,
    in the streams namespace with jabber:client as content namespace."""
    h = c.header
    assert h.element.tag == f"{{{NS_STREAM}}}stream", c.describe()
    assert h.nsmap.get("") == NS_CLIENT, f"default namespace {h.nsmap!r}\n{c.describe()}"
    assert h.element.get("from") == "localhost", c.describe()
    assert h.element.get("id"), f"response header has no id\n{c.describe()}"
    assert h.element.get("version") == "1.0", c.describe()


async def test_plain_port_requires_starttls_and_offers_nothing_else(server):
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        feats = await c.start()
        check_response_header(c)
        starttls = feats.find(f"{{{NS_TLS}}}starttls")
        assert starttls is not None, f"no <starttls/> in {xml_str(feats)}"
        assert starttls.find(f"{{{NS_TLS}}}required") is not None, (
            f"<starttls/> not flagged <required/>: {xml_str(feats)}"
        )
        assert feats.find(f"{{{NS_SASL}}}mechanisms") is None, (
            f"SASL mechanisms offered before TLS: {xml_str(feats)}"
        )
        assert feats.find(f"{{{NS_BIND}}}bind") is None, xml_str(feats)
    finally:
        await c.close()


async def test_starttls_upgrade_restarts_stream_with_sasl_features(server):
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        await c.start()
        await c.starttls()
        assert c.tls_version() in ("TLSv1.2", "TLSv1.3"), c.tls_version()
        feats = await c.start()
        check_response_header(c)
        assert len(c.stream_ids) == 2 and c.stream_ids[0] != c.stream_ids[1], (
            f"stream id not renewed after STARTTLS (RFC 6120 5.4.3.3): {c.stream_ids}"
        )
        assert feats.find(f"{{{NS_TLS}}}starttls") is None, (
            f"STARTTLS offered again over TLS: {xml_str(feats)}"
        )
        mechs = mechanisms(feats)
        missing = REQUIRED_MECHANISMS - set(mechs)
        assert not missing, f"mechanisms {sorted(missing)} not offered; offered {mechs}"
        assert feats.find(f"{{{NS_BIND}}}bind") is None, f"bind before SASL: {xml_str(feats)}"
    finally:
        await c.close()


async def test_direct_tls_port_offers_sasl_without_starttls(server):
    c = await XmppClient.connect(server.tls_port, cafile=server.cafile, direct_tls=True)
    try:
        assert c.tls_version() in ("TLSv1.2", "TLSv1.3")
        feats = await c.start()
        check_response_header(c)
        assert feats.find(f"{{{NS_TLS}}}starttls") is None, xml_str(feats)
        mechs = mechanisms(feats)
        missing = REQUIRED_MECHANISMS - set(mechs)
        assert not missing, f"mechanisms {sorted(missing)} not offered on direct TLS; offered {mechs}"
    finally:
        await c.close()


async def test_domain_in_header_is_case_insensitive(server):
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        await c.open_stream(stream_header("LocalHost"))
        feats = await c.read_features()
        assert c.header.element.get("from") == "localhost", c.describe()
        assert feats.find(f"{{{NS_TLS}}}starttls") is not None, xml_str(feats)
    finally:
        await c.close()


async def test_stream_ids_differ_between_connections(server):
    ids = []
    for _ in range(3):
        c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
        await c.start()
        ids.append(c.header.element.get("id"))
        await c.close()
    assert len(set(ids)) == 3, f"stream ids repeat: {ids}"


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct-tls"])
async def test_post_auth_features_offer_bind_and_optional_session(server, direct_tls):
    acct = server.account()
    c = await login(server, acct, resource="feat", direct_tls=direct_tls)
    try:
        feats = c.post_auth_features
        assert feats.find(f"{{{NS_BIND}}}bind") is not None, xml_str(feats)
        session = feats.find(f"{{{NS_SESSION}}}session")
        assert session is not None, f"no legacy <session/> feature: {xml_str(feats)}"
        assert session.find(f"{{{NS_SESSION}}}optional") is not None, (
            f"<session/> not flagged <optional/>: {xml_str(feats)}"
        )
        assert feats.find(f"{{{NS_SASL}}}mechanisms") is None, (
            f"SASL offered again after authentication: {xml_str(feats)}"
        )
        assert feats.find(f"{{{NS_TLS}}}starttls") is None, xml_str(feats)
        assert len(set(c.stream_ids)) == len(c.stream_ids), f"stream id reused: {c.stream_ids}"
    finally:
        await c.close()


async def test_bind_client_chosen_resource(server):
    acct = server.account()
    c = await login(server, acct, resource="balcony")
    try:
        assert c.jid == f"{acct.jid}/balcony"
    finally:
        await c.close()


async def test_bind_server_generated_resource(server):
    acct = server.account()
    c1 = await login(server, acct, resource=None, label="gen1")
    c2 = await login(server, acct, resource=None, label="gen2")
    try:
        for c in (c1, c2):
            bare, _, res = c.jid.partition("/")
            assert bare == acct.jid and res, f"server-generated JID {c.jid!r}"
        assert c1.jid != c2.jid, f"two sessions got the same generated resource {c1.jid}"
    finally:
        await c1.close()
        await c2.close()


async def test_legacy_session_request_is_answered(server):
    acct = server.account()
    c = await login(server, acct, resource="sess")
    try:
        resp = await c.iq(f"<session xmlns='{NS_SESSION}'/>", type_="set")
        assert resp.get("type") == "result", xml_str(resp)
    finally:
        await c.close()

