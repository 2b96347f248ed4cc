"""Shared pieces of the federation tests: certificates, a Switchboard node serving a
test domain, private Prosody and ejabberd instances, and a slixmpp client.

Every server runs as the current user with its own config and data under the test's
tmp dir, on its own loopback address: Switchboard on 127.0.0.1, Prosody on 127.0.0.2,
ejabberd on 127.0.0.3, each on free ports.  Domains are mapped to those addresses by
static routes: `s2s.routes` in our config, a small plugin for Prosody
(`mod_test_routes`, which short-circuits its SRV resolver), `/etc/hosts` plus
`outgoing_s2s_port` for ejabberd.

Two certificate modes:
  * "selfsigned": each server has its own self-signed certificate; nobody can verify
    anybody, so Server Dialback (XEP-0220) must authenticate the links.
  * "ca": one test CA signs a certificate for each domain and every server trusts it, so
    SASL EXTERNAL (XEP-0178) must be used.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import slixmpp

from conftest import Server, free_ports

SB_DOMAIN = "sb.fed.test"
PROSODY_DOMAIN = "pro.fed.test"
EJABBERD_DOMAIN = "ej.fed.test"
SB_ADDR = "127.0.0.1"
PROSODY_ADDR = "127.0.0.2"
EJABBERD_ADDR = "127.0.0.3"

PROSODY_BIN = shutil.which("prosody")
PROSODYCTL_BIN = shutil.which("prosodyctl")
EJABBERDCTL_BIN = shutil.which("ejabberdctl") or (
    "/usr/sbin/ejabberdctl" if os.path.exists("/usr/sbin/ejabberdctl") else None
)


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------


class Certs:
    """PEM files for each domain (and the CA in "ca" mode) under `dir`."""

    def __init__(self, dir: Path, mode: str, domains: list[str]):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.dir = dir
        self.mode = mode
        dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

        def key():
            return ec.generate_private_key(ec.SECP256R1())

        def write_key(path: Path, k):
            path.write_bytes(
                k.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)

        ca_key = ca_cert = None
        self.ca: Path | None = None
        if mode == "ca":
            ca_key = key()
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Switchboard federation test CA")])
            ca_cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True, content_commitment=False, key_encipherment=False,
                        data_encipherment=False, key_agreement=False, key_cert_sign=True,
                        crl_sign=True, encipher_only=False, decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            self.ca = dir / "ca.pem"
            self.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

        self.cert: dict[str, Path] = {}
        self.key: dict[str, Path] = {}
        for domain in domains:
            k = key()
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_cert.subject if ca_cert else subject)
                .public_key(k.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False,
                )
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            )
            if ca_cert is not None:
                builder = builder.add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            cert = builder.sign(ca_key if ca_key else k, hashes.SHA256())
            self.cert[domain] = dir / f"{domain}.crt"
            self.key[domain] = dir / f"{domain}.key"
            self.cert[domain].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            write_key(self.key[domain], k)


# ---------------------------------------------------------------------------
# Switchboard
# ---------------------------------------------------------------------------


class FedServer(Server):
    """A Switchboard node serving `domain`, with s2s on its own port and static routes."""

    def __init__(self, workdir: Path, domain: str, overrides: dict | None = None,
                 name: str = "sb", cert: Path | None = None):
        self.domain = domain
        self._cert = cert
        super().__init__(workdir, overrides, name=name)

    @property
    def cafile(self) -> str:
        return str(self._cert) if self._cert else super().cafile

    @property
    def s2s_addr(self) -> tuple[str, int]:
        host, port = self.config["s2s"]["listen"].rsplit(":", 1)
        return host, int(port)

    def log_text(self) -> str:
        try:
            return strip_ansi(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s\n{self.log_tail(60)}")
            time.sleep(0.1)


def render_toml_nested(cfg: dict) -> str:
    """TOML for our config, with one more level of tables than conftest's renderer
    (`[s2s.routes]`), quoting keys that contain dots."""
    from conftest import _toml_value

    def key(k: str) -> str:
        return f'"{k}"' if not re.fullmatch(r"[A-Za-z0-9_-]+", k) else k

    out = "".join(f"{k} = {_toml_value(v)}\n" for k, v in cfg.items() if not isinstance(v, dict))
    for k, v in cfg.items():
        if not isinstance(v, dict):
            continue
        out += f"\n[{k}]\n" + "".join(
            f"{key(kk)} = {_toml_value(vv)}\n" for kk, vv in v.items() if not isinstance(vv, dict)
        )
        for kk, vv in v.items():
            if isinstance(vv, dict):
                out += f"\n[{k}.{kk}]\n" + "".join(f"{key(a)} = {_toml_value(b)}\n" for a, b in vv.items())
    return out


def make_sb(workdir: Path, certs: Certs, routes: dict[str, str], s2s: dict | None = None,
            accounts: int = 6, domain: str = SB_DOMAIN, name: str = "sb") -> FedServer:
    """A node for `domain`, not started. In "ca" mode it presents the CA-signed certificate
    and trusts the test CA; in "selfsigned" mode it generates its own certificate and keeps
    the system CA bundle, which verifies none of the peers (so dialback is used)."""
    (s2s_port,) = free_ports(1)
    s2s_cfg: dict = {"listen": f"{SB_ADDR}:{s2s_port}", "routes": routes}
    overrides: dict = {"s2s": s2s_cfg}
    cert = None
    if certs.mode == "ca":
        s2s_cfg["ca_file"] = str(certs.ca)
        cert = certs.cert[domain]
        overrides["tls"] = {"cert": str(cert), "key": str(certs.key[domain])}
    s2s_cfg.update(s2s or {})
    overrides["log"] = {"level": os.environ.get("SWITCHBOARD_TEST_LOG_LEVEL", "info,nodes::s2s=debug")}
    srv = FedServer(workdir, domain, overrides, name=name, cert=cert)
    srv.config_path.write_text(render_toml_nested(srv.config))
    srv.prepare_accounts(accounts)
    return srv


# ---------------------------------------------------------------------------
# Prosody
# ---------------------------------------------------------------------------

PROSODY_ROUTES_PLUGIN = r"""
-- Test-only: static s2s routes. Prosody has no such option; this replaces its SRV
-- resolver for the configured domains (an IP and port), and says "no service" for
-- their direct-TLS SRV records.
local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";
local manual = require "net.resolvers.manual";
local routes = module:get_option("test_static_routes", {});
if not service._test_routes_original then
	service._test_routes_original = service.new;
end
local original = service._test_routes_original;
service.new = function (hostname, service_name, proto, extra)
	local route = routes[hostname];
	if route then
		if service_name == "xmpp-server" then
			return basic.new(route[1], route[2], proto, extra);
		end
		return manual.new({}, proto, extra);
	end
	return original(hostname, service_name, proto, extra);
end
"""


class Prosody:
    def __init__(self, workdir: Path, certs: Certs, routes: dict[str, tuple[str, int]]):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.domain = PROSODY_DOMAIN
        self.addr = PROSODY_ADDR
        self.c2s_port, self.s2s_port = free_ports(2)
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = self.dir / "prosody.log"
        self.cafile = str(certs.ca or certs.cert[self.domain])
        self.proc: subprocess.Popen | None = None
        (self.dir / "data").mkdir(exist_ok=True)
        (self.dir / "plugins").mkdir(exist_ok=True)
        (self.dir / "plugins" / "mod_test_routes.lua").write_text(PROSODY_ROUTES_PLUGIN)
        routes_lua = ", ".join(f'["{d}"] = {{ "{h}", {p} }}' for d, (h, p) in routes.items())
        ssl_global = f'ssl = {{ cafile = "{certs.ca}" }}\n' if certs.ca else ""
        secure_auth = "true" if certs.mode == "ca" else "false"
        self.config_path.write_text(f"""
run_as_root = true
pidfile = "{self.dir}/prosody.pid"
data_path = "{self.dir}/data"
plugin_paths = {{ "{self.dir}/plugins" }}
interfaces = {{ "{self.addr}" }}
c2s_ports = {{ {self.c2s_port} }}
s2s_ports = {{ {self.s2s_port} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence"; "test_routes" }}
modules_disabled = {{ "s2s_bidi"; "http"; "admin_shell"; "offline" }}
authentication = "internal_hashed"
allow_registration = false
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {secure_auth}
{ssl_global}test_static_routes = {{ {routes_lua} }}
log = {{ debug = "{self.log_path}" }}

VirtualHost "{self.domain}"
	ssl = {{ certificate = "{certs.cert[self.domain]}"; key = "{certs.key[self.domain]}" }}
""")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PROSODYCTL_BIN, "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def register(self, local: str, password: str) -> None:
        r = self.ctl("register", local, self.domain, password)
        assert r.returncode == 0, f"prosodyctl register failed: {r.stdout}\n{r.stderr}"

    def start(self, timeout: float = 30.0) -> None:
        self._out = open(self.dir / "prosody.stdout", "ab")
        self.proc = subprocess.Popen(
            [PROSODY_BIN, "--config", str(self.config_path), "-F"],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        wait_port(self.addr, self.c2s_port, timeout, self.proc, self.log_tail)
        wait_port(self.addr, self.s2s_port, timeout, self.proc, self.log_tail)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc:
            self._out.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_text().splitlines()
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen, tail) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"peer server exited with code {proc.returncode} during start-up\n{tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"peer server did not listen on {host}:{port} within {timeout}s\n{tail()}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------


def client_ssl_context() -> ssl.SSLContext:
    """Clients trust whatever the test servers present: certificates between servers are
    what these tests are about."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """A slixmpp client of any of the servers; `start()` returns once the session is up.
    Subscriptions are answered by the test, not automatically."""

    def __init__(self, jid: str, password: str, host: str, port: int):
        self.xmpp = x = slixmpp.ClientXMPP(jid, password)
        x.ssl_context = client_ssl_context()
        x.enable_plaintext = False
        x.enable_direct_tls = False
        x.enable_starttls = True
        x.auto_authorize = None
        x.auto_subscribe = False
        x.register_plugin("xep_0199")
        self.host, self.port = host, port
        self.jid, self.password = jid, password
        self.started = asyncio.get_running_loop().create_future()
        self.messages: list = []
        self.presences: list = []
        self.roster_changes = 0
        x.add_event_handler("session_start", self._on_start)
        x.add_event_handler("failed_all_auth", lambda *_: self._fail("authentication failed"))
        x.add_event_handler("connection_failed", lambda e: self._fail(f"connection failed: {e}"))
        x.add_event_handler("disconnected", lambda e: self._fail(f"disconnected: {e}"))
        x.add_event_handler("message", self.messages.append)
        x.add_event_handler("presence", self.presences.append)
        x.add_event_handler("roster_update", self._on_roster)

    def _on_roster(self, _):
        self.roster_changes += 1

    def _on_start(self, _event):
        if not self.started.done():
            self.started.set_result(True)

    def _fail(self, why):
        if not self.started.done():
            self.started.set_exception(AssertionError(f"{self.jid}: {why}"))

    async def start(self, presence: bool = True, timeout: float = 30):
        self.xmpp.connect(host=self.host, port=self.port)
        try:
            await asyncio.wait_for(self.started, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.jid}: no session within {timeout}s")
        # Only resources that fetched the roster get roster pushes (RFC 6121 §2.1.6).
        await self.xmpp.get_roster(timeout=timeout)
        if presence:
            self.xmpp.send_presence()
        return self

    def subscription(self, jid: str) -> str:
        roster = self.xmpp.client_roster
        return roster[jid]["subscription"] if jid in roster else "absent"

    async def stop(self):
        x = self.xmpp
        x.cancel_connection_attempt()
        if x.transport:
            try:
                await asyncio.wait_for(x.disconnect(wait=1), 5)
            except (asyncio.TimeoutError, Exception):
                x.abort()


async def wait_until(pred, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def bodies(c: Client) -> list[str]:
    return [m["body"] for m in c.messages if m["type"] != "error"]


def presences_from(c: Client, bare: str, ptype: str | None = None) -> list:
    return [
        p for p in c.presences
        if p["from"].bare == bare and (ptype is None or p["type"] == ptype)
    ]


# ---------------------------------------------------------------------------
# a raw s2s peer, for the negative tests
# ---------------------------------------------------------------------------


class RawS2s:
    """A hand-driven s2s stream to a node: header, STARTTLS, then whatever the test sends."""

    NS = (
        "xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
        "xmlns:db='jabber:server:dialback'"
    )

    def __init__(self, addr: tuple[str, int], from_domain: str, to_domain: str):
        self.sock = socket.create_connection(addr, timeout=10)
        self.from_domain, self.to_domain = from_domain, to_domain
        self.buf = ""

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode())

    def header(self) -> None:
        self.send(
            f"<?xml version='1.0'?><stream:stream {self.NS} from='{self.from_domain}' "
            f"to='{self.to_domain}' version='1.0'>"
        )

    def read_until(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} from the node within {timeout}s; got {self.buf!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                if re.search(pattern, self.buf):
                    break
                raise AssertionError(f"connection closed before {pattern!r}; got {self.buf!r}")
            self.buf += chunk.decode(errors="replace")
        out, self.buf = self.buf, ""
        return out

    def starttls(self) -> None:
        self.header()
        self.read_until(r"</stream:features>")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.read_until(r"<proceed")
        self.sock.settimeout(10)
        self.sock = client_ssl_context().wrap_socket(self.sock, server_hostname=self.to_domain)
        self.header()
        self.read_until(r"</stream:features>")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
