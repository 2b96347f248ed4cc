"""The extension modules as an operator and a client see them: entity time (XEP-0202) reply
shape; contact addresses (XEP-0157) from `[modules.contact_addresses]` in the server's
disco#info; `switchboard modules` and `switchboard features`; an unknown `[modules.x]`
section or key, or disabling a module that cannot be disabled, refused at start with a
clear error; a disabled module's disco feature and IQ gone."""

from __future__ import annotations

import datetime

from rawxmpp import NS_DISCO_INFO, login, q, stanza_error, xml_str

ACCOUNT_POOL = 6

NS_TIME = "urn:xmpp:time"
NS_DATA = "jabber:x:data"
SERVERINFO = "http://jabber.org/network/serverinfo"

ALL_MODULES = ["roster", "offline", "disco", "ping", "version", "last", "time",
               "contact_addresses", "multicast", "blocking", "privacy", "pep", "carbons", "csi", "private", "vcard",
               "mam", "muc", "stream_management"]


async def disco_features(c, to: str) -> tuple[set[str], object]:
    resp = await c.iq(f"<query xmlns='{NS_DISCO_INFO}'/>", to=to)
    assert resp.get("type") == "result", xml_str(resp)
    query = resp.find(f"{{{NS_DISCO_INFO}}}query")
    return {f.get("var") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")}, query


def serverinfo_fields(query) -> dict[str, list[str]]:
    """XEP-0157 §2: the fields of the form whose FORM_TYPE is serverinfo (XEP-0128)."""
    for x in query.findall(f"{{{NS_DATA}}}x"):
        fields = {f.get("var"): [v.text for v in f.findall(f"{{{NS_DATA}}}value")]
                  for f in x.findall(f"{{{NS_DATA}}}field")}
        if fields.get("FORM_TYPE") == [SERVERINFO]:
            return fields
    return {}


async def test_entity_time_reply_shape(server):
    c = await login(server, server.account(), resource="r")
    try:
        before = datetime.datetime.now(datetime.timezone.utc)
        resp = await c.iq(f"<time xmlns='{NS_TIME}'/>", to=server.domain)
        after = datetime.datetime.now(datetime.timezone.utc)
        assert resp.get("type") == "result", xml_str(resp)
        t = resp.find(f"{{{NS_TIME}}}time")
        assert t is not None, xml_str(resp)
        tzo = t.findtext(f"{{{NS_TIME}}}tzo")
        utc = t.findtext(f"{{{NS_TIME}}}utc")
        # §3: tzo is [+-]hh:mm; utc an XEP-0082 DateTime in UTC ('Z').
        assert tzo and len(tzo) == 6 and tzo[0] in "+-" and tzo[3] == ":", xml_str(resp)
        assert utc and utc.endswith("Z"), xml_str(resp)
        stamp = datetime.datetime.fromisoformat(utc.replace("Z", "+00:00"))
        slack = datetime.timedelta(seconds=2)
        assert before - slack <= stamp <= after + slack, (utc, before, after)
        # §4: only get.
        resp = await c.iq(f"<time xmlns='{NS_TIME}'/>", to=server.domain, type_="set")
        assert resp.get("type") == "error", xml_str(resp)
        # Advertised in the server's disco#info.
        features, _ = await disco_features(c, server.domain)
        assert {NS_TIME, "urn:xmpp:carbons:2", "urn:xmpp:ping"} <= features, features
    finally:
        await c.close()


async def test_contact_addresses_from_config_in_disco_info(make_server):
    srv = make_server({"modules.contact_addresses": {
        "abuse": ["mailto:abuse@example.org", "xmpp:abuse@example.org"],
        "support": ["https://example.org/help"],
    }}, accounts=1)
    c = await login(srv, srv.account(), resource="r")
    try:
        _, query = await disco_features(c, srv.domain)
        fields = serverinfo_fields(query)
        assert fields, f"no serverinfo form in disco#info: {xml_str(query)}"
        assert fields.get("abuse-addresses") == ["mailto:abuse@example.org", "xmpp:abuse@example.org"], fields
        assert fields.get("support-addresses") == ["https://example.org/help"], fields
        # Addresses not configured are not invented.
        assert not fields.get("sales-addresses"), fields
    finally:
        await c.close()


async def test_no_contact_addresses_no_form(server):
    c = await login(server, server.account(), resource="r")
    try:
        _, query = await disco_features(c, server.domain)
        fields = serverinfo_fields(query)
        assert not any(v for k, v in fields.items() if k != "FORM_TYPE"), fields
    finally:
        await c.close()


def test_modules_and_features_cli(make_server):
    srv = make_server({"modules.time": {"enabled": False}}, accounts=0, start=False)
    r = srv.cli("modules")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines() if line.strip()}
    assert list(rows) == ALL_MODULES, r.stdout
    assert rows["time"][0] == "disabled", r.stdout
    assert rows["carbons"][0] == "enabled" and "XEP-0280," in rows["carbons"], r.stdout
    assert rows["csi"] == ["enabled", "XEP-0352"], r.stdout
    r = srv.cli("modules", "--markdown")
    assert r.returncode == 0 and "#### `[modules.csi]` — XEP-0352" in r.stdout, r.stdout
    assert "`max_held_bytes` | `65536`" in r.stdout, r.stdout

    r = srv.cli("features")
    assert r.returncode == 0, r.stderr
    specs = {" ".join(line.split()[:2]) if line.startswith("RFC") else line.split()[0]
             for line in r.stdout.splitlines() if line.strip()}
    assert {"RFC 6120", "RFC 6121", "XEP-0280", "XEP-0352", "XEP-0157"} <= specs, r.stdout
    # The disabled module's specification is not claimed.
    assert "XEP-0202" not in specs, r.stdout


def refused(srv, needle: str):
    """`switchboard run` with this configuration exits non-zero at once, naming `needle`."""
    srv.start_failure = srv.cli("run", timeout=20)
    r = srv.start_failure
    assert r.returncode != 0, f"the node started:\n{r.stdout}\n{r.stderr}"
    assert needle in r.stderr, r.stderr
    return r.stderr


def test_unknown_module_section_is_refused_at_start(make_server):
    srv = make_server({"modules.nosuch": {"enabled": True}}, accounts=0, start=False)
    err = refused(srv, "modules.nosuch: no such module")
    assert "csi" in err  # the known modules are listed


def test_unknown_module_key_is_refused_at_start(make_server):
    srv = make_server({"modules.carbons": {"enable": True}}, accounts=0, start=False)
    refused(srv, "enable")


def test_a_module_that_cannot_be_disabled_is_refused(make_server):
    srv = make_server({"modules.roster": {"enabled": False}}, accounts=0, start=False)
    refused(srv, "modules.roster: cannot be disabled")


def test_a_bad_option_value_is_refused(make_server):
    srv = make_server({"modules.csi": {"max_held": "many"}}, accounts=0, start=False)
    refused(srv, "max_held")


async def test_disabling_a_module_removes_its_feature_and_iq(make_server):
    srv = make_server({"modules.time": {"enabled": False}, "modules.carbons": {"enabled": False}},
                      accounts=1)
    c = await login(srv, srv.account(), resource="r")
    try:
        features, _ = await disco_features(c, srv.domain)
        assert NS_TIME not in features, features
        assert "urn:xmpp:carbons:2" not in features, features
        # The others stay.
        assert {"urn:xmpp:ping", "urn:xmpp:blocking"} <= features, features
        resp = await c.iq(f"<time xmlns='{NS_TIME}'/>", to=srv.domain)
        assert resp.get("type") == "error", xml_str(resp)
        assert stanza_error(resp)[1] == "service-unavailable", xml_str(resp)
        resp = await c.iq("<enable xmlns='urn:xmpp:carbons:2'/>", type_="set")
        assert resp.get("type") == "error", xml_str(resp)
    finally:
        await c.close()
