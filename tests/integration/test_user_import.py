"""Bulk account import (`switchboard user import FILE`), against a running node (through its
admin socket) and a stopped one (directly on the database)."""

from conftest import Account
from rawxmpp import login


def write_users(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_import_while_running_then_login(make_server, tmp_path):
    srv = make_server(accounts=1)
    existing = srv.account()
    users = [Account(f"imp{i}", srv.domain, f"pass word {i}") for i in range(3)]
    f = write_users(
        tmp_path / "users.txt",
        ["# accounts for the test", ""]
        + [f"{u.jid} {u.password}" for u in users]
        + [f"{existing.jid} whatever"],
    )
    r = srv.cli("user", "import", f)
    assert r.returncode == 0, r.stderr
    assert "3 created, 1 already existed" in r.stderr, r.stderr
    # The password may contain spaces; the existing account keeps its own.
    c = await login(srv, users[2])
    await c.close()
    c = await login(srv, existing)
    await c.close()
    listed = srv.cli("user", "list").stdout.split()
    assert all(u.jid in listed for u in users), listed


async def test_import_offline_and_malformed_files(make_server, tmp_path):
    srv = make_server(accounts=0, start=False)
    u = Account("offimp", srv.domain, "secret")
    r = srv.cli("user", "import", write_users(tmp_path / "a.txt", [f"{u.jid} {u.password}"]))
    assert r.returncode == 0, r.stderr
    assert "1 created" in r.stderr, r.stderr
    r = srv.cli("user", "import", write_users(tmp_path / "b.txt", ["nopassword@localhost"]))
    assert r.returncode == 1 and "expected `JID PASSWORD`" in r.stderr, r.stderr
    r = srv.cli("user", "import", write_users(tmp_path / "c.txt", ["x@elsewhere.example pw"]))
    assert r.returncode == 1 and "not served" in r.stderr, r.stderr
    srv.start()
    c = await login(srv, u)
    await c.close()


async def test_shared_salt_import_for_load_test_populations(make_server, tmp_path):
    """--shared-salt derives each distinct password once: the accounts still log in with
    SCRAM and PLAIN, and a wrong password is still refused."""
    srv = make_server(accounts=0, start=False)
    users = [Account(f"pop{i}", srv.domain, "same secret") for i in range(50)]
    odd = Account("popodd", srv.domain, "another")
    f = write_users(tmp_path / "pop.txt", [f"{u.jid} {u.password}" for u in users + [odd]])
    r = srv.cli("user", "import", "--shared-salt", f)
    assert r.returncode == 0 and "51 created" in r.stderr, r.stderr
    srv.start()
    for u in (users[0], users[49], odd):
        c = await login(srv, u, mechanism="SCRAM-SHA-256")
        await c.close()
    c = await login(srv, users[7])
    await c.close()
    try:
        await login(srv, Account("pop3", srv.domain, "another"))
    except AssertionError:
        pass
    else:
        raise AssertionError("pop3 logged in with another account's password")
