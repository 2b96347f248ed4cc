#!/usr/bin/env python3
"""Create accounts through ejabberd's mod_http_api ("register"), one keep-alive connection.

usage: ejabberd_register.py HOST:PORT DOMAIN FIRST N PASSWORD
`ejabberdctl register` starts an Erlang VM per call (about 1 s each); this does ~hundreds/s.
"""
import http.client, json, sys

addr, domain, first, n, password = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
h, p = addr.rsplit(":", 1)
conn = http.client.HTTPConnection(h, int(p), timeout=30)
errors = 0
for k in range(first, first + n):
    body = json.dumps({"user": "user%d" % k, "host": domain, "password": password})
    conn.request("POST", "/api/register", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    out = r.read()
    if r.status != 200 and b"already" not in out.lower():
        errors += 1
        if errors <= 3:
            print("register user%d: %d %s" % (k, r.status, out[:200]), file=sys.stderr)
if errors:
    sys.exit("%d registrations failed" % errors)
