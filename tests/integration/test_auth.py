"""SASL over raw sockets with our own SCRAM client (RFC 6120 6, RFC 5802, RFC 7677, RFC 9266)."""

import base64
import os

import pytest

from rawxmpp import NS_BIND, NS_SASL, ScramClient, XmppClient, xml_str

ACCOUNT_POOL = 30


async def tls_client(server, *, engine="stdlib", direct=False, label="client", tls12=False):
    """A connection that has finished TLS and read the SASL features."""
    if direct:
        c = await XmppClient.connect(
            server.tls_port, cafile=server.cafile, direct_tls=True, tls_engine=engine, label=label
        )
    else:
        c = await XmppClient.connect(server.c2s_port, cafile=server.cafile, label=label)
        await c.start()
        await c.starttls(engine, max_tls12=tls12)
    feats = await c.start()
    c.sasl_features = feats
    return c


def offered(c):
    return [m.text for m in c.sasl_features.iter(f"{{{NS_SASL}}}mechanism")]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "SCRAM-SHA-512"])
async def test_login_succeeds_and_scram_server_proves_the_credential(server, mechanism):
    acct = server.account()
    c = await tls_client(server)
    try:
        if mechanism == "SCRAM-SHA-512" and mechanism not in offered(c):
            pytest.skip("SCRAM-SHA-512 is not offered (optional)")
        res = await c.authenticate(acct.local, acct.password, mechanism)
        assert res.success, f"{mechanism} login failed: {xml_str(res.element)}"
        if mechanism.startswith("SCRAM"):
            assert res.server_signature_ok, (
                f"server-final-message did not carry a valid v= signature "
                f"(RFC 5802 mutual authentication): {xml_str(res.element)}"
            )
        feats = await c.start()
        assert feats.find(f"{{{NS_BIND}}}bind") is not None, xml_str(feats)
    finally:
        await c.close()


@pytest.mark.parametrize("direct", [False, True], ids=["starttls", "direct-tls"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-512-PLUS"])
async def test_scram_plus_with_tls_exporter_binding(server, mechanism, direct):
    acct = server.account()
    c = await tls_client(server, engine="openssl", direct=direct)
    try:
        if mechanism == "SCRAM-SHA-512-PLUS" and mechanism not in offered(c):
            pytest.skip("SCRAM-SHA-512-PLUS is not offered (optional)")
        res = await c.sasl_scram(mechanism, acct.local, acct.password)
        assert res.success, (
            f"{mechanism} with p=tls-exporter (RFC 9266) failed: {xml_str(res.element)}\n"
            f"{c.describe()}"
        )
        assert res.server_signature_ok, xml_str(res.element)
    finally:
        await c.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
async def test_scram_without_initial_response(server, mechanism):
    """RFC 6120 §6.4.2: `<auth/>` without an initial response gets an empty challenge and
    client-first follows in `<response/>` (this used to end the connection task in a panic
    inside the SASL library; found by the sasl fuzz target)."""
    acct = server.account()
    c = await tls_client(server, engine="openssl")
    try:
        res = await c.sasl_scram(mechanism, acct.local, acct.password, initial_response=False)
        assert res.success, f"{mechanism}: {xml_str(res.element)}\n{c.describe()}"
        assert res.server_signature_ok
    finally:
        await c.close()


NS_SASL_CB = "urn:xmpp:sasl-cb:0"


def advertised_cb_types(c):
    return [e.get("type") for e in c.sasl_features.iter(f"{{{NS_SASL_CB}}}channel-binding")]


async def test_xep0440_channel_binding_types_include_tls_exporter(server):
    """If the node lists its channel-binding types (XEP-0440), tls-exporter is among them."""
    c = await tls_client(server)
    try:
        if c.sasl_features.find(f"{{{NS_SASL_CB}}}sasl-channel-binding") is None:
            pytest.skip("no XEP-0440 <sasl-channel-binding/> advertised (optional)")
        assert "tls-exporter" in advertised_cb_types(c), xml_str(c.sasl_features)
    finally:
        await c.close()


async def test_scram_plus_with_tls_server_end_point(server):
    """RFC 5929 tls-server-end-point, when advertised (XEP-0440)."""
    acct = server.account()
    c = await tls_client(server)
    try:
        if "tls-server-end-point" not in advertised_cb_types(c):
            pytest.skip("tls-server-end-point not advertised")
        res = await c.sasl_scram(
            "SCRAM-SHA-256-PLUS", acct.local, acct.password, cb_type="tls-server-end-point"
        )
        assert res.success, f"p=tls-server-end-point failed: {xml_str(res.element)}"
        assert res.server_signature_ok, xml_str(res.element)
    finally:
        await c.close()


async def test_scram_plus_with_unknown_channel_binding_type_is_rejected(server):
    acct = server.account()
    c = await tls_client(server)
    try:
        res = await c.sasl_scram(
            "SCRAM-SHA-256-PLUS", acct.local, acct.password, cb_type="tls-unique", cb_data=b"\0" * 12
        )
        assert not res.success, "p=tls-unique accepted (TLS 1.3 has no tls-unique, RFC 9266)"
    finally:
        await c.close()


@pytest.mark.parametrize("cb_type", ["tls-exporter", "tls-server-end-point"])
async def test_scram_plus_over_tls12(server, cb_type):
    """Over TLS 1.2 (with extended master secret, which RFC 9266 requires for
    tls-exporter) the advertised -PLUS mechanisms and binding types must work too."""
    acct = server.account()
    engine = "openssl" if cb_type == "tls-exporter" else "stdlib"
    c = await tls_client(server, engine=engine, tls12=True)
    try:
        assert c.tls_version() == "TLSv1.2", c.tls_version()
        if "SCRAM-SHA-256-PLUS" not in offered(c):
            return  # not advertising -PLUS over TLS 1.2 is fine
        if cb_type not in advertised_cb_types(c):
            pytest.skip(f"{cb_type} not advertised over TLS 1.2")
        res = await c.sasl_scram("SCRAM-SHA-256-PLUS", acct.local, acct.password, cb_type=cb_type)
        assert res.success, f"p={cb_type} over TLS 1.2 failed: {xml_str(res.element)}"
        assert res.server_signature_ok, xml_str(res.element)
    finally:
        await c.close()


async def test_scram_plus_with_wrong_channel_binding_is_rejected(server):
    """A man in the middle terminating TLS would present different exporter bytes."""
    acct = server.account()
    c = await tls_client(server, engine="openssl")
    try:
        res = await c.sasl_scram(
            "SCRAM-SHA-256-PLUS", acct.local, acct.password, cb_data=os.urandom(32)
        )
        assert not res.success, "SCRAM-SHA-256-PLUS accepted channel-binding data of another TLS session"
    finally:
        await c.close()


async def test_scram_y_flag_is_rejected_when_server_offers_plus(server):
    """RFC 5802 6: gs2 flag 'y' (client thinks the server lacks channel binding) while
    the server does advertise -PLUS means a downgrade: the server MUST fail it."""
    acct = server.account()
    c = await tls_client(server)
    try:
        mechs = [m.text for m in c.sasl_features.iter(f"{{{NS_SASL}}}mechanism")]
        assert "SCRAM-SHA-256-PLUS" in mechs, mechs
        res = await c.sasl_scram("SCRAM-SHA-256", acct.local, acct.password, gs2_flag="y")
        assert not res.success, "gs2 flag 'y' accepted although SCRAM-SHA-256-PLUS is advertised"
    finally:
        await c.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1"])
async def test_unknown_user_and_wrong_password_fail_identically(server, mechanism):
    acct = server.account()
    outcomes = {}
    for case, (user, password) in {
        "wrong password": (acct.local, acct.password + "x"),
        "unknown user": ("nosuchuser" + os.urandom(3).hex(), acct.password),
    }.items():
        c = await tls_client(server, label=case)
        try:
            res = await c.authenticate(user, password, mechanism)
            outcomes[case] = res
            assert not res.success, f"{case}: authentication succeeded"
            assert [ch.tag for ch in res.element] == [f"{{{NS_SASL}}}not-authorized"], (
                f"{case}: expected <failure><not-authorized/></failure>, got {xml_str(res.element)}"
            )
        finally:
            await c.close()
    wrong, unknown = outcomes["wrong password"], outcomes["unknown user"]
    assert xml_str(wrong.element) == xml_str(unknown.element), (
        f"failures differ:\n wrong password: {xml_str(wrong.element)}\n"
        f" unknown user:   {xml_str(unknown.element)}"
    )
    # With SCRAM the exchange itself must not reveal the account: an unknown user
    # still gets a server-first-message (RFC 5802 9) and fails at the same step.
    assert wrong.stage == unknown.stage, (
        f"wrong password failed at the {wrong.stage} step, unknown user at the "
        f"{unknown.stage} step: the account's existence is observable"
    )
    if mechanism.startswith("SCRAM"):
        assert len(wrong.challenges) == len(unknown.challenges) == 1


def _salt_and_count(server_first: bytes) -> tuple[bytes, bytes]:
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    return attrs[b"s"], attrs[b"i"]


async def test_scram_unknown_user_looks_like_a_real_one(server):
    """RFC 5802 9: for an unknown user the server answers with a made-up salt. If that salt
    or the iteration count changed between attempts (a real user's does not) or differed
    in form, the account's existence would still be observable."""
    acct = server.account()
    ghost = "ghost" + os.urandom(3).hex()
    seen = {}
    for who, user in (("real", acct.local), ("real", acct.local), ("ghost", ghost), ("ghost", ghost)):
        c = await tls_client(server, label=who)
        try:
            res = await c.sasl_scram("SCRAM-SHA-256", user, "not-the-password")
            assert not res.success
            assert len(res.challenges) == 1, f"{who}: no server-first-message"
            seen.setdefault(who, []).append(_salt_and_count(res.challenges[0]))
        finally:
            await c.close()
    (real_salt, real_i), (real_salt2, real_i2) = seen["real"]
    (ghost_salt, ghost_i), (ghost_salt2, ghost_i2) = seen["ghost"]
    assert (real_salt, real_i) == (real_salt2, real_i2)
    assert (ghost_salt, ghost_i) == (ghost_salt2, ghost_i2), (
        f"the unknown user's salt/iteration count changes between attempts: "
        f"{seen['ghost']} (a real user's stays {seen['real'][0]})"
    )
    assert ghost_i == real_i, f"iteration count {ghost_i!r} for unknown users, {real_i!r} for real ones"
    assert len(base64.b64decode(ghost_salt)) == len(base64.b64decode(real_salt)), "salt lengths differ"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
async def test_scram_iteration_count_is_at_least_4096(server, mechanism):
    """RFC 7677 4 / RFC 5802 5.1: the iteration count SHOULD be at least 4096."""
    acct = server.account()
    c = await tls_client(server)
    try:
        res = await c.sasl_scram(mechanism, acct.local, acct.password)
        assert res.success, xml_str(res.element)
        _, count = _salt_and_count(res.challenges[0])
        assert int(count) >= 4096, f"i={count.decode()}"
    finally:
        await c.close()


async def test_auth_failures_up_to_the_limit_then_policy_violation(server):
    """max_auth_failures = 3 (default): two failures leave the stream open for a retry;
    the third closes it with <policy-violation/>."""
    acct = server.account()
    c = await tls_client(server)
    try:
        for attempt in (1, 2):
            res = await c.sasl_plain(acct.local, "wrong-password")
            assert not res.success
            assert res.condition == "not-authorized", xml_str(res.element)
        payload = base64.b64encode(f"\0{acct.local}\0wrong-again".encode()).decode()
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        cond = await c.expect_stream_error()
        assert cond == "policy-violation", (
            f"after the 3rd failure expected stream error <policy-violation/>, got <{cond}/>\n"
            f"{c.describe()}"
        )
        await c.expect_closed()
    finally:
        await c.close()


async def test_login_after_two_failures_still_succeeds(server):
    acct = server.account()
    c = await tls_client(server)
    try:
        for _ in range(2):
            res = await c.sasl_scram("SCRAM-SHA-256", acct.local, "nope")
            assert not res.success
        res = await c.sasl_scram("SCRAM-SHA-256", acct.local, acct.password)
        assert res.success, xml_str(res.element)
    finally:
        await c.close()


async def test_auth_before_starttls_is_refused(server):
    """STARTTLS is required: PLAIN over the unencrypted stream must never succeed."""
    acct = server.account()
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile)
    try:
        await c.start()
        payload = base64.b64encode(f"\0{acct.local}\0{acct.password}".encode()).decode()
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        ev = await c.next_event()
        if ev.kind == "element":
            assert ev.element.tag != f"{{{NS_SASL}}}success", (
                f"PLAIN succeeded over an unencrypted stream\n{c.describe()}"
            )
            assert ev.element.tag in (
                f"{{{NS_SASL}}}failure",
                "{http://etherx.jabber.org/streams}error",
            ), c.describe()
        else:
            assert ev.kind in ("close", "eof")
    finally:
        await c.close()


async def test_unsupported_mechanism_gives_invalid_mechanism(server):
    c = await tls_client(server)
    try:
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='X-NO-SUCH-MECH'>=</auth>")
        el = await c.recv()
        assert el.tag == f"{{{NS_SASL}}}failure", xml_str(el)
        assert el.find(f"{{{NS_SASL}}}invalid-mechanism") is not None, (
            f"RFC 6120 6.5.7: expected <invalid-mechanism/>, got {xml_str(el)}"
        )
    finally:
        await c.close()


async def test_abort_gives_aborted(server):
    acct = server.account()
    c = await tls_client(server)
    try:
        scram = ScramClient("SCRAM-SHA-256", acct.local, acct.password)
        first = base64.b64encode(scram.client_first()).decode()
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
        el = await c.recv()
        assert el.tag == f"{{{NS_SASL}}}challenge", xml_str(el)
        await c.send(f"<abort xmlns='{NS_SASL}'/>")
        el = await c.recv()
        assert el.tag == f"{{{NS_SASL}}}failure" and el.find(f"{{{NS_SASL}}}aborted") is not None, (
            f"RFC 6120 6.4.4: expected <failure><aborted/></failure>, got {xml_str(el)}"
        )
        # The stream is still usable: a proper login follows.
        res = await c.sasl_scram("SCRAM-SHA-256", acct.local, acct.password)
        assert res.success, xml_str(res.element)
    finally:
        await c.close()


async def test_bad_base64_gives_incorrect_encoding(server):
    c = await tls_client(server)
    try:
        await c.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>!!not*base64!!</auth>")
        el = await c.recv()
        assert el.tag == f"{{{NS_SASL}}}failure", xml_str(el)
        assert el.find(f"{{{NS_SASL}}}incorrect-encoding") is not None, (
            f"RFC 6120 6.5.2: expected <incorrect-encoding/>, got {xml_str(el)}"
        )
    finally:
        await c.close()
