"""The message archive (XEP-0313) on its PostgreSQL backend (`[modules.mam] backend =
"postgres"`): a private PostgreSQL server (scripts/pg-instance.sh: its own data directory in
/tmp, loopback, a free port) and a node whose archive is there. The node creates the schema
on an empty database; a conversation reads back from both archives with the stanza-ids seen on
delivery, pages forward and backward to the end, survives a restart and a kill -9 of the node,
and `switchboard mam purge` and `switchboard user del` (the node running or stopped) empty
one archive.

Skipped only when PostgreSQL is not installed and SWITCHBOARD_REQUIRE_POSTGRES is unset; with
it set (CI), a missing PostgreSQL fails the tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import REPO_ROOT, free_ports
from rawxmpp import bare, login, mam_form, mam_query, rsm_set
from test_mam import (archive, archive_of, archived_conversation, check_results, conversation,
                      deliver, inner_ids, restart_then_kill9, settled, sid, snapshot)

PG_SCRIPT = REPO_ROOT / "scripts" / "pg-instance.sh"


@pytest.fixture(scope="module")
def pg_url():
    """A PostgreSQL server for this module's tests (each test uses accounts of its own)."""
    required = os.environ.get("SWITCHBOARD_REQUIRE_POSTGRES", "") not in ("", "0")
    # Not under pytest's tmp_path: that is private to root (0700), and as root the script
    # runs the server as the `postgres` user, who must reach its directory.
    d = tempfile.mkdtemp(prefix="sb-mam-pg-")
    port = free_ports(1)[0]
    try:
        r = subprocess.run(["bash", str(PG_SCRIPT), "start", d, str(port)],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail("scripts/pg-instance.sh start did not finish within 120 s")
    if r.returncode == 3:
        shutil.rmtree(d, ignore_errors=True)
        if required:
            pytest.fail(f"SWITCHBOARD_REQUIRE_POSTGRES is set but PostgreSQL is missing: {r.stderr}")
        pytest.skip(f"PostgreSQL is not installed: {r.stderr.strip()}")
    if r.returncode != 0:
        subprocess.run(["bash", str(PG_SCRIPT), "stop", d], capture_output=True, timeout=90)
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"scripts/pg-instance.sh start failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    url = r.stdout.strip().splitlines()[-1]
    yield url
    subprocess.run(["bash", str(PG_SCRIPT), "stop", d], capture_output=True, timeout=90)
    shutil.rmtree(d, ignore_errors=True)


def pg_node(make_server, url: str, prefix: str):
    """A node on the PostgreSQL archive with two accounts named after the test (the database
    is shared by the module's tests)."""
    srv = make_server({"modules.mam": {"backend": "postgres", "postgres_url": url, "postgres_pool": 4}},
                      accounts=0)
    return srv, srv.add_user(f"{prefix}alice"), srv.add_user(f"{prefix}bob")


async def test_postgres_conversation_and_paging(make_server, pg_url):
    """A conversation of 10 (alternating) on the PostgreSQL archive reads back from both
    archives in order, each received message with the archive id equal to the stanza-id it
    was delivered with; RSM pages of 3 forward and backward cover it exactly once with
    complete='true' only at the end; `with` and <count/> work as on the embedded archive."""
    srv, alice, bob = pg_node(make_server, pg_url, "conv")
    a = await login(srv, alice, resource="a")
    b = await login(srv, bob, resource="b")
    try:
        sent = await conversation(a, b, 10, "pgc")
        mids = [m for m, _, _ in sent]
        for me, other in ((a, bob), (b, alice)):
            await settled(me, mids[-1])
            page = await archive(me)
            assert inner_ids(page) == mids, page.describe()
            for (mid, body, got), rid, m in zip(sent, page.ids, page.messages):
                assert m.findtext("{jabber:client}body") == body, page.describe()
                if got.get("to") == me.jid:
                    assert rid == sid(got, bare(me.jid)), f"{mid}: {page.describe()}"
            assert inner_ids(await archive(me, mam_form(**{"with": other.jid}))) == mids
        ids = (await archive(a)).ids
        forward, after = [], None
        for _ in range(6):
            page = await mam_query(a, "", rsm_set(max=3, after=after))
            forward.append(check_results(page, a, alice.jid))
            assert page.count in (None, 10), page.describe()
            if page.complete:
                break
            after = page.last
        assert forward == [ids[0:3], ids[3:6], ids[6:9], ids[9:]], forward
        backward, before = [], ""
        for _ in range(6):
            page = await mam_query(a, "", rsm_set(max=3, before=before))
            backward.append(check_results(page, a, alice.jid))
            if page.complete:
                break
            before = page.first
        assert backward == [ids[7:10], ids[4:7], ids[1:4], ids[0:1]], backward
        page = await mam_query(a, "", rsm_set(max=0))
        assert page.count == 10 and not page.results, page.describe()
        page = await mam_query(a, "", rsm_set(max=3, after="0000000000000001"))
        assert page.error == "item-not-found", page.describe()
    finally:
        await a.close()
        await b.close()


async def test_postgres_archive_survives_restart_purge_and_deletion(make_server, pg_url):
    """The PostgreSQL archive outlives the node: identical after SIGTERM and a start, and
    after a kill -9 (messages delivered 0.5 s before it all there). `switchboard mam purge`
    empties alice's archive only; `switchboard user del` then empties bob's."""
    srv, alice, bob = pg_node(make_server, pg_url, "dur")
    await archived_conversation(srv, alice, bob, 4, "pgr")
    expected = await restart_then_kill9(srv, alice, bob, 4, 2, "pgk")

    r = srv.cli("mam", "purge", alice.jid)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert await snapshot(srv, alice) == [], "alice's archive after `mam purge`"
    assert await snapshot(srv, bob) == expected[bob.jid], "bob's archive changed by alice's purge"
    a = await login(srv, alice, resource="a3")
    b = await login(srv, bob, resource="b3")
    try:
        await deliver(b, a, "pgp", "after the purge")
        await settled(a, "pgp")
        assert inner_ids(await archive(a)) == ["pgp"]
    finally:
        await a.close()
        await b.close()
    r = srv.cli("user", "del", bob.jid)
    assert r.returncode == 0, r.stdout + r.stderr
    r = srv.cli("user", "add", bob.jid, "--password", bob.password)
    assert r.returncode == 0, r.stdout + r.stderr
    assert await snapshot(srv, bob) == [], "the deleted account's archive is still in PostgreSQL"
    assert inner_ids(await archive_of(srv, alice)) == ["pgp"], "alice's archive changed by bob's deletion"


async def test_postgres_archive_goes_with_an_account_deleted_while_the_node_is_stopped(
        make_server, pg_url):
    """`switchboard user del` with the node stopped opens the database directly; the
    archive in PostgreSQL is not in it, so the command deletes the account's rows there too
    (before, they outlived the account and a new account of that name inherited them)."""
    srv, alice, bob = pg_node(make_server, pg_url, "offdel")
    await archived_conversation(srv, alice, bob, 3, "pgo")
    srv.stop()
    r = srv.cli("user", "del", bob.jid)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 archived messages deleted" in r.stderr, r.stderr
    r = srv.cli("user", "add", bob.jid, "--password", bob.password)
    assert r.returncode == 0, r.stdout + r.stderr
    srv.start()
    assert await snapshot(srv, bob) == [], "the deleted account's archive is still in PostgreSQL"
    assert inner_ids(await archive_of(srv, alice)) == ["pgo0", "pgo1", "pgo2"], (
        "alice's archive changed by bob's deletion")
