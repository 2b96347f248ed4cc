#!/usr/bin/env python3
"""Write Prosody internal_hashed account files directly (much faster than prosodyctl register).

usage: prosody_accounts.py DATA_PATH HOST FIRST N PASSWORD ITERATIONS
Writes DATA_PATH/<host>/accounts/userK.dat in mod_storage_internal's format with the
SCRAM-SHA-1 keys mod_auth_internal_hashed (0.12) stores: stored_key, server_key (hex), salt,
iteration_count.
"""
import hashlib, hmac, os, sys, uuid

data, host, first, n, password, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
enc = lambda s: "".join(c if c.isalnum() else "%%%02x" % ord(c) for c in s)
d = os.path.join(data, enc(host), "accounts")
os.makedirs(d, exist_ok=True)
for k in range(first, first + n):
    salt = str(uuid.uuid4())
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), iters)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
    stored_key = hashlib.sha1(client_key).hexdigest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha1).hexdigest()
    with open(os.path.join(d, enc("user%d" % k) + ".dat"), "w") as f:
        f.write('return {\n\t["iteration_count"] = %d;\n\t["salt"] = "%s";\n\t["server_key"] = "%s";\n\t["stored_key"] = "%s";\n};\n'
                % (iters, salt, server_key, stored_key))
