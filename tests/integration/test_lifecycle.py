"""Process lifecycle (SIGTERM) and the `switchboard user ...` CLI, offline and online."""

import asyncio

from rawxmpp import XmppClient, login, xml_str

ACCOUNT_POOL = 8


async def try_login(server, local, password, mechanism="SCRAM-SHA-256"):
    """SaslResult of one authentication attempt on a fresh TLS stream."""
    c = await XmppClient.connect(server.c2s_port, cafile=server.cafile, label=f"{local}-login")
    try:
        await c.start()
        await c.starttls()
        await c.start()
        return await c.authenticate(local, password, mechanism)
    finally:
        await c.close()


def listed_jids(result) -> set[str]:
    return set(result.stdout.split())


# -- SIGTERM -------------------------------------------------------------------------


async def test_sigterm_sends_system_shutdown_to_every_client_and_exits_zero(make_server):
    srv = make_server(accounts=2)
    a, b = srv.account(), srv.account()
    bound = await login(srv, a, resource="r", presence=True, label="bound")
    direct = await login(srv, b, resource="r", direct_tls=True, label="bound-direct-tls")
    pre_auth = await XmppClient.connect(srv.c2s_port, cafile=srv.cafile, label="pre-auth")
    await pre_auth.start()
    await pre_auth.starttls()
    await pre_auth.start()
    plain = await XmppClient.connect(srv.c2s_port, cafile=srv.cafile, label="plain")
    await plain.start()
    clients = [bound, direct, pre_auth, plain]
    try:
        srv.signal_term()

        async def check(c):
            cond = await c.expect_stream_error(timeout=10)
            assert cond == "system-shutdown", (
                f"{c.label}: expected <system-shutdown/>, got <{cond}/>\n{c.describe()}"
            )
            await c.expect_closed()

        results = await asyncio.gather(*(check(c) for c in clients), return_exceptions=True)
        code = await asyncio.to_thread(srv.wait_exit, 10)
        failures = [str(r) for r in results if isinstance(r, BaseException)]
        assert not failures, "\n\n".join(failures)
        assert code == 0, f"exit code after SIGTERM: {code} (None = still running after 10 s)\n{srv.log_tail()}"
    finally:
        for c in clients:
            c.abort()


# -- CLI -----------------------------------------------------------------------------

BAD_JIDS = ["not a jid", "@localhost", "alice@", "alice@@localhost", "localhost", ""]


def check_bad_input(srv):
    existing = srv.account()
    cases = [(jid, "malformed JID") for jid in BAD_JIDS]
    cases.append(("alice@unknown.example", "unknown domain"))
    cases.append((existing.jid, "existing user"))
    problems = []
    for jid, why in cases:
        r = srv.cli("user", "add", jid, "--password", "whatever")
        msg = (r.stderr + r.stdout).strip()
        if r.returncode == 0:
            problems.append(f"`user add {jid!r}` ({why}) exited 0; output: {msg!r}")
        elif not msg:
            problems.append(f"`user add {jid!r}` ({why}) failed without any message")
    r = srv.cli("user", "del", "ghost@localhost")
    if r.returncode == 0 or not (r.stderr + r.stdout).strip():
        problems.append(f"`user del ghost@localhost` (no such user): exit {r.returncode}, {r.stderr!r}")
    r = srv.cli("user", "list")
    assert r.returncode == 0, r.stderr
    listed = listed_jids(r)
    leaked = {"alice@unknown.example", "alice@localhost"} & listed
    if leaked:
        problems.append(f"rejected input still created accounts: {sorted(leaked)}")
    assert not problems, "\n".join(problems)
    return existing


def test_cli_rejects_bad_input_offline(make_server):
    srv = make_server(accounts=1, start=False)
    check_bad_input(srv)


async def test_cli_rejects_bad_input_while_running(server):
    existing = await asyncio.to_thread(check_bad_input, server)
    # The failed re-add must not have touched the existing account's password.
    res = await try_login(server, existing.local, existing.password)
    assert res.success, f"existing user can no longer log in: {xml_str(res.element)}"


async def test_cli_user_list_offline_and_while_running(make_server):
    srv = make_server(accounts=0, start=False)
    users = [srv.add_user(name) for name in ("listalice", "listbob", "listcarol")]
    r = srv.cli("user", "list")
    assert r.returncode == 0, r.stderr
    assert {u.jid for u in users} <= listed_jids(r), f"offline `user list`: {r.stdout!r}"
    srv.start()
    r = await asyncio.to_thread(srv.cli, "user", "list")
    assert r.returncode == 0, r.stderr
    assert {u.jid for u in users} <= listed_jids(r), f"online `user list`: {r.stdout!r}"


async def test_cli_add_while_running_then_login(server):
    acct = await asyncio.to_thread(server.add_user, "addedlive", "s3cret-live")
    r = await asyncio.to_thread(server.cli, "user", "list")
    assert acct.jid in listed_jids(r), r.stdout
    c = await login(server, acct, resource="new")
    try:
        assert c.jid == f"{acct.jid}/new"
    finally:
        await c.close()


async def test_cli_add_reads_password_from_stdin(server):
    r = await asyncio.to_thread(
        server.cli, "user", "add", "stdinuser@localhost", input="from-stdin-pw\n"
    )
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    res = await try_login(server, "stdinuser", "from-stdin-pw")
    assert res.success, f"password given on stdin does not work: {xml_str(res.element)}"


async def test_cli_del_while_running_prevents_login(server):
    acct = server.account()
    res = await try_login(server, acct.local, acct.password)
    assert res.success, xml_str(res.element)
    r = await asyncio.to_thread(server.cli, "user", "del", acct.jid)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    for mech in ("SCRAM-SHA-256", "PLAIN"):
        res = await try_login(server, acct.local, acct.password, mech)
        assert not res.success, f"deleted user still logs in with {mech}"
        assert res.condition == "not-authorized", xml_str(res.element)
    r = await asyncio.to_thread(server.cli, "user", "list")
    assert acct.jid not in listed_jids(r), r.stdout


async def test_cli_passwd_while_running(server):
    acct = server.account()
    r = await asyncio.to_thread(server.cli, "user", "passwd", acct.jid, "--password", "brand-new-pw")
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    old = await try_login(server, acct.local, acct.password)
    assert not old.success, "the old password still works after `user passwd`"
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        new = await try_login(server, acct.local, "brand-new-pw", mech)
        assert new.success, f"new password rejected with {mech}: {xml_str(new.element)}"



async def test_cli_normalizes_jids(server):
    """RFC 7622: the localpart is case-mapped and the domain compared case-insensitively."""
    r = await asyncio.to_thread(
        server.cli, "user", "add", "CaseUser@LocalHost", "--password", "case-pw"
    )
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    r = await asyncio.to_thread(server.cli, "user", "list")
    assert "caseuser@localhost" in listed_jids(r), r.stdout
    res = await try_login(server, "caseuser", "case-pw")
    assert res.success, xml_str(res.element)
    r = await asyncio.to_thread(server.cli, "user", "add", "caseuser@localhost", "--password", "x")
    assert r.returncode != 0, "the same account was created twice under different spellings"


async def test_cli_del_disconnects_online_sessions(server):
    """`user del` is documented to disconnect the account's sessions: with a stream error,
    and the session's resource is gone afterwards."""
    acct, other = server.account(), server.account()
    victim = await login(server, acct, resource="online", presence=True, label="victim")
    peer = await login(server, other, resource="peer", label="peer")
    try:
        r = await asyncio.to_thread(server.cli, "user", "del", acct.jid)
        assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
        cond = await victim.expect_stream_error(timeout=10)
        assert cond, f"stream error without a condition\n{victim.describe()}"
        await victim.expect_closed()
        resp = await peer.iq("<ping xmlns='urn:xmpp:ping'/>", to=victim.jid)
        assert resp.get("type") == "error", f"the deleted account's session still answers: {xml_str(resp)}"
    finally:
        victim.abort()
        await peer.close()
