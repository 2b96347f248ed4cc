"""Bulk roster import by the operator (`switchboard roster import FILE`,
`POST /api/rosters/import`): items land in the owners' rosters without the subscription
handshake, online owners get roster pushes, presence then flows as for a negotiated
subscription, re-running an import changes nothing, and bad input is refused clearly."""

import json
import urllib.error
import urllib.request

from rawxmpp import is_presence, is_roster_push, login

TOKEN = "roster-import-token-0123456789"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def api(server, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        method="POST",
        data=json.dumps(body).encode(),
    )
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_imported_mutual_contacts_see_each_other(make_server, tmp_path):
    srv = make_server({"http": {"token": TOKEN}}, accounts=4)
    a, b, c, d = (srv.account() for _ in range(4))
    # d is online before the import: it must be told of its new items.
    cd = await login(srv, d, resource="d", presence=True)
    assert (await cd.roster_get()).get("type") == "result"
    lines = ["# a group of three mutual contacts, and one one-way item for d"]
    for x in (a, b, c):
        lines += [f"{x.jid} {y.jid}" for y in (a, b, c) if y is not x]
    lines.append(f"{d.jid} {a.jid} to Alice Liddell")
    r = srv.cli("roster", "import", write_lines(tmp_path / "r.txt", lines))
    assert r.returncode == 0, r.stderr
    assert "7 roster items for 4 accounts imported, 7 of them new or changed" in r.stderr, r.stderr

    push = await cd.expect(is_roster_push(a.jid, subscription="to", name="Alice Liddell"))
    assert push.get("to") == cd.jid

    cb = await login(srv, b, resource="b", presence=True)
    ca = await login(srv, a, resource="a")
    _, roster = await ca.roster()
    assert {j: i["subscription"] for j, i in roster.items()} == {b.jid: "both", c.jid: "both"}
    assert all(not i["ask"] for i in roster.values()), roster
    # a's initial presence goes to its contacts (b online, subscription both), and a gets b's
    # presence from the probe; d (subscription 'to' only on d's side) gets nothing from a.
    await ca.send_presence()
    await cb.expect(is_presence(ca.jid))
    await ca.expect(is_presence(cb.jid))

    # Re-running the same import writes nothing and pushes nothing.
    r = srv.cli("roster", "import", str(tmp_path / "r.txt"))
    assert r.returncode == 0, r.stderr
    assert "7 of them" not in r.stderr and "0 of them new or changed" in r.stderr, r.stderr
    quiet = await cd.expect_silence(1.0)
    assert not [e for e in quiet if is_roster_push(a.jid)(e)], quiet
    for cl in (ca, cb, cd):
        await cl.close()


async def test_the_api_imports_and_bad_items_are_refused(make_server, tmp_path):
    srv = make_server({"http": {"token": TOKEN}}, accounts=2)
    a, b = srv.account(), srv.account()
    status, body = api(srv, "/api/rosters/import", {"items": [
        {"owner": a.jid, "contact": b.jid, "groups": ["Team"], "name": "Bob"},
        {"owner": a.jid, "contact": "someone@remote.example", "subscription": "none"},
    ]})
    assert status == 200, body
    assert body["result"] == {"accounts": 1, "items": 2, "changed": 2}, body
    ca = await login(srv, a, resource="a")
    _, roster = await ca.roster()
    assert roster[b.jid]["groups"] == ["Team"] and roster[b.jid]["name"] == "Bob", roster
    assert roster[b.jid]["subscription"] == "both", roster
    assert roster["someone@remote.example"]["subscription"] == "none", roster
    await ca.close()

    refused = [
        ({"owner": "nobody@localhost", "contact": b.jid}, "no such account"),
        ({"owner": "x@elsewhere.example", "contact": b.jid}, "not served"),
        ({"owner": a.jid, "contact": "b@localhost/res"}, "not a bare JID"),
        ({"owner": a.jid, "contact": b.jid, "subscription": "sideways"}, "not none, to, from or both"),
    ]
    for item, why in refused:
        status, body = api(srv, "/api/rosters/import", {"items": [item]})
        assert status == 400 and why in body["error"], (item, status, body)

    r = srv.cli("roster", "import", write_lines(tmp_path / "bad.txt", [a.jid]))
    assert r.returncode == 1 and "expected `OWNER CONTACT [SUBSCRIPTION [NAME]]`" in r.stderr, r.stderr
    srv.stop()
    r = srv.cli("roster", "import", write_lines(tmp_path / "ok.txt", [f"{a.jid} {b.jid}"]))
    assert r.returncode == 1 and "needs a running node" in r.stderr, r.stderr


async def test_the_roster_size_limit_holds_for_imports(make_server, tmp_path):
    srv = make_server({"im": {"max_roster_items": 3}}, accounts=1)
    a = srv.account()
    lines = [f"{a.jid} c{i}@remote.example" for i in range(4)]
    r = srv.cli("roster", "import", write_lines(tmp_path / "big.txt", lines))
    assert r.returncode == 1 and "im.max_roster_items (3)" in r.stderr, r.stderr
    r = srv.cli("roster", "import", write_lines(tmp_path / "fits.txt", lines[:3]))
    assert r.returncode == 0, r.stderr
    ca = await login(srv, a, resource="a")
    _, roster = await ca.roster()
    assert len(roster) == 3, roster
    await ca.close()
