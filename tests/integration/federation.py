"""Shared pieces of the federation tests: certificates, a Switchboard node serving a
test domain, private Prosody and ejabberd instances, and a slixmpp client.

Every server runs as the current user with its own config and data under the test's
tmp dir, on its own loopback address: Switchboard on 127.0.0.1, Prosody on 127.0.0.2,
ejabberd on 127.0.0.3, each on free ports.  Domains are mapped to those addresses by
static routes: `s2s.routes` in our config, a small plugin for Prosody
(`mod_test_routes`, which short-circuits its SRV resolver), and for ejabberd a stub DNS
server that answers its SRV query for our domain (its Erlang resolver is pointed at the
stub through a private inetrc).  Nothing system-wide (/etc/hosts, services) is touched.

Two certificate modes:
  * "selfsigned": each server has its own self-signed certificate; nobody can verify
    anybody, so Server Dialback (XEP-0220) must authenticate the links.
  * "ca": one test CA signs a certificate for each domain and every server trusts it, so
    SASL EXTERNAL (XEP-0178) must be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
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
    """PEM files for each domain (and the CA in "ca" mode) under `dir`. `names`: further
    DNS names (SANs) a domain's certificate carries, e.g. its group chat service's domain,
    as an operator's certificate for a server with components would."""

    def __init__(self, dir: Path, mode: str, domains: list[str],
                 names: dict[str, list[str]] | None = None):
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
                .add_extension(
                    x509.SubjectAlternativeName(
                        [x509.DNSName(n) for n in (domain, *(names or {}).get(domain, ()))]
                    ),
                    critical=False,
                )
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
    def __init__(self, workdir: Path, certs: Certs, routes: dict[str, tuple[str, int]],
                 modules: tuple[str, ...] = (), muc: bool = False):
        """`modules`: Prosody modules to enable besides the few the federation checks need
        (e.g. "pep" for OMEMO). `muc`: a group chat service (Prosody's `muc` component)
        on `conference.<domain>`, its rooms unlocked at creation (no configuration form
        needed for an instant room)."""
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
        extra_modules = "".join(f'; "{m}"' for m in modules)
        self.muc_domain = f"conference.{self.domain}"
        component = (f"""
Component "{self.muc_domain}" "muc"
	ssl = {{ certificate = "{certs.cert[self.muc_domain]}"; key = "{certs.key[self.muc_domain]}" }}
	muc_room_locking = false
""" if muc else "")
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
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence"; "test_routes"{extra_modules} }}
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
{component}""")

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
            # A round trip to our own server after the presence: the server handles a
            # stream's stanzas in order, so once the pong is here the resource is available
            # and bare-JID messages from the other server reach it instead of offline storage.
            await self.xmpp.plugin["xep_0199"].ping(jid=self.xmpp.boundjid.domain, timeout=timeout)
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


# ---------------------------------------------------------------------------
# a stub DNS server (ejabberd resolves s2s peers through DNS only)
# ---------------------------------------------------------------------------


class StubDns:
    """Answers A and SRV (`_xmpp-server._tcp`) queries for a few names over UDP on
    127.0.0.1; NXDOMAIN for everything else."""

    def __init__(self, a: dict[str, str], srv: dict[str, tuple[str, int]]):
        import threading

        self.a = {k.lower(): v for k, v in a.items()}
        self.srv = {k.lower(): v for k, v in srv.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _name(labels: str) -> bytes:
        out = b""
        for part in labels.rstrip(".").split("."):
            out += bytes([len(part)]) + part.encode()
        return out + b"\0"

    def _answer(self, packet: bytes) -> bytes | None:
        import struct

        if len(packet) < 12:
            return None
        qid, flags, qd = struct.unpack("!HHH", packet[:6])
        if qd != 1:
            return None
        pos, labels = 12, []
        while pos < len(packet) and packet[pos] != 0:
            n = packet[pos]
            labels.append(packet[pos + 1:pos + 1 + n].decode(errors="replace"))
            pos += 1 + n
        pos += 1
        if pos + 4 > len(packet):
            return None
        qtype, _qclass = struct.unpack("!HH", packet[pos:pos + 4])
        question = packet[12:pos + 4]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        answers = []
        known = name in self.a or name in self.srv
        if qtype == 1 and name in self.a:
            rdata = socket.inet_aton(self.a[name])
            answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, len(rdata)) + rdata)
        if qtype == 33 and name in self.srv:
            target, port = self.srv[name]
            rdata = struct.pack("!HHH", 0, 0, port) + self._name(target)
            answers.append(struct.pack("!HHHIH", 0xC00C, 33, 1, 60, len(rdata)) + rdata)
        rcode = 0 if known else 3
        # QR, AA, RA, the query's RD echoed.
        header = struct.pack("!HHHHHH", qid, 0x8480 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)

    def _serve(self) -> None:
        while True:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            reply = self._answer(packet)
            if reply:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------
# ejabberd
# ---------------------------------------------------------------------------


class Ejabberd:
    """A private ejabberd: its own config, spool, logs, Erlang node name and cookie (HOME),
    run as the current user through a copy of ejabberdctl without the `su ejabberd`."""

    def __init__(self, workdir: Path, certs: Certs, sb_domain: str, sb_addr: tuple[str, int]):
        # ejabberd finds our node through DNS, as it would in production: SRV
        # _xmpp-server._tcp.<our domain> → our address and s2s port.
        # Its SRV target is our address literally: ejabberd resolves targets with the
        # system's getaddrinfo, which the stub cannot serve.
        self.dns = StubDns(
            a={sb_domain: sb_addr[0]},
            srv={f"_xmpp-server._tcp.{sb_domain}": (sb_addr[0], sb_addr[1])},
        )
        self.dir = workdir
        self.domain = EJABBERD_DOMAIN
        self.addr = EJABBERD_ADDR
        self.c2s_port, self.s2s_port, self.epmd_port = free_ports(3)
        self.node = f"ejfed{os.getpid()}{self.c2s_port}@localhost"
        self.etc = workdir / "etc"
        self.home = workdir / "home"
        self.spool = workdir / "spool"
        self.logs = workdir / "logs"
        for d in (self.etc, self.home, self.spool, self.logs, self.etc / "modules.d"):
            d.mkdir(parents=True, exist_ok=True)
        self.log_path = self.logs / "ejabberd.log"
        self.ctl_path = workdir / "ejabberdctl"
        script = Path(EJABBERDCTL_BIN).read_text()
        self.ctl_path.write_text(script.replace("INSTALLUSER=ejabberd", "INSTALLUSER="))
        self.ctl_path.chmod(0o755)
        (self.etc / "ejabberdctl.cfg").write_text(
            'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"\n'
            f"EJABBERD_PID_PATH={workdir}/ejabberd.pid\n"
            f"CONTRIB_MODULES_CONF_DIR={self.etc}/modules.d\n"
            "INET_DIST_INTERFACE=127.0.0.1\n"
        )
        # Erlang's resolver asks the stub only.
        (self.etc / "inetrc").write_text(
            '{lookup,["file","dns"]}.\n'
            '{host,{127,0,0,1}, ["localhost"]}.\n'
            '{resolv_conf, ""}.\n'
            f"{{nameserver,{{127,0,0,1}},{self.dns.port}}}.\n"
            "{timeout,1000}.\n"
            "{retry,1}.\n"
        )
        ca = f"ca_file: {certs.ca}\n" if certs.ca else ""
        (self.etc / "ejabberd.yml").write_text(f"""
hosts:
  - {self.domain}
loglevel: debug
certfiles:
  - {certs.cert[self.domain]}
  - {certs.key[self.domain]}
{ca}listen:
  - port: {self.c2s_port}
    ip: "{self.addr}"
    module: ejabberd_c2s
    starttls_required: true
  - port: {self.s2s_port}
    ip: "{self.addr}"
    module: ejabberd_s2s_in
s2s_use_starttls: required
s2s_access: s2s
outgoing_s2s_families:
  - ipv4
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
modules:
  mod_roster: {{}}
  mod_s2s_dialback: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
""")
        self.proc: subprocess.Popen | None = None

    def _cmd(self, *args: str) -> list[str]:
        return [
            str(self.ctl_path),
            "--config-dir", str(self.etc),
            "--ctl-config", str(self.etc / "ejabberdctl.cfg"),
            "--config", str(self.etc / "ejabberd.yml"),
            "--spool", str(self.spool),
            "--logs", str(self.logs),
            "--node", self.node,
            *args,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.home)
        # A private epmd, stopped with the instance (a shared one would outlive the test).
        env["ERL_EPMD_PORT"] = str(self.epmd_port)
        return env

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, env=self._env(), cwd=self.dir,
        )

    def register(self, local: str, password: str) -> None:
        r = self.ctl("register", local, self.domain, password)
        assert r.returncode == 0, f"ejabberdctl register failed: {r.stdout}\n{r.stderr}"

    def start(self, timeout: float = 90.0) -> None:
        self._out = open(self.dir / "ejabberd.stdout", "ab")
        self.proc = subprocess.Popen(
            self._cmd("foreground"), stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, env=self._env(), cwd=self.dir,
        )
        wait_port(self.addr, self.c2s_port, timeout, self.proc, self.log_tail)
        wait_port(self.addr, self.s2s_port, timeout, self.proc, self.log_tail)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.ctl("stop", timeout=30)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc:
            self._out.close()
            epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True,
                           timeout=10, stdin=subprocess.DEVNULL)
        self.dns.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        out = (self.dir / "ejabberd.stdout")
        text = self.log_text().splitlines()
        extra = out.read_text(errors="replace")[-3000:] if out.exists() else ""
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:]) + "\n" + extra


# ---------------------------------------------------------------------------
# the checks both peers go through (each test module wraps them in tests)
# ---------------------------------------------------------------------------

METHOD = {"selfsigned": "dialback", "ca": "SASL EXTERNAL"}


class Fed:
    """Our node and one peer server (Prosody or Ejabberd) federating in `mode`."""

    def __init__(self, mode, sb, peer):
        self.mode, self.sb, self.peer = mode, sb, peer
        self._counter = itertools.count(1)

    def peer_account(self) -> tuple[str, str]:
        local = f"pu{next(self._counter):03d}"
        password = f"pw-{local}"
        self.peer.register(local, password)
        return f"{local}@{self.peer.domain}", password


@contextlib.contextmanager
def sb_and_peer(d: Path, mode: str, accounts: int, peer_domain: str, make_peer,
                peer_subdomains: tuple[str, ...] = (), sb_names: tuple[str, ...] = ()):
    """Our node (sb.fed.test) and a peer server (`make_peer(certs, sb)`, serving
    `peer_domain`, and `peer_subdomains` such as its group chat service) routed to each
    other over s2s, running; both stopped at the end. In "ca" mode our certificate also
    names `sb_names` (our group chat service), and each of `peer_subdomains` has its own."""
    certs = Certs(d / "certs", mode, [SB_DOMAIN, peer_domain, *peer_subdomains],
                  names={SB_DOMAIN: list(sb_names)})
    sb = make_sb(d / "sb", certs, routes={}, accounts=accounts)
    peer = make_peer(certs, sb)
    sb.config["s2s"]["routes"] = {
        dom: f"{peer.addr}:{peer.s2s_port}" for dom in (peer_domain, *peer_subdomains)
    }
    sb.config_path.write_text(render_toml_nested(sb.config))
    peer.start()
    try:
        sb.start()
    except BaseException:
        peer.stop()
        raise
    try:
        yield sb, peer
    finally:
        peer.stop()
        sb.stop()


def sb_and_prosody(d: Path, mode: str, accounts: int, modules: tuple[str, ...] = (),
                   muc: bool = False):
    """`sb_and_peer` with a private Prosody (with `modules` besides the defaults). `muc`:
    Prosody serves conference.pro.fed.test, and both group chat services are routed (ours
    is conference.sb.fed.test, on by default)."""
    routes = lambda sb: {  # noqa: E731
        SB_DOMAIN: sb.s2s_addr,
        **({f"conference.{SB_DOMAIN}": sb.s2s_addr} if muc else {}),
    }
    return sb_and_peer(
        d, mode, accounts, PROSODY_DOMAIN,
        lambda certs, sb: Prosody(d / "prosody", certs, routes=routes(sb), modules=modules, muc=muc),
        peer_subdomains=(f"conference.{PROSODY_DOMAIN}",) if muc else (),
        sb_names=(f"conference.{SB_DOMAIN}",) if muc else (),
    )


def clients_factory(fed):
    """(start_pair, stop_all): a fresh account on each side, both logged in."""
    made = []

    async def _pair(presence=True):
        acc = fed.sb.account()
        a = Client(f"{acc.jid}/sb", acc.password, SB_ADDR, fed.sb.c2s_port)
        jid, password = fed.peer_account()
        b = Client(f"{jid}/peer", password, fed.peer.addr, fed.peer.c2s_port)
        made.extend([a, b])
        await a.start(presence=presence)
        await b.start(presence=presence)
        return a, b

    async def _stop():
        for c in made:
            await c.stop()

    return _pair, _stop


def bare(c: Client) -> str:
    return c.jid.split("/")[0]


async def subscribe_both_ways(a: Client, b: Client) -> None:
    """a subscribes to b, b approves; then b subscribes to a, a approves."""
    for x, y in ((a, b), (b, a)):
        x.xmpp.send_presence(pto=bare(y), ptype="subscribe")
        await wait_until(lambda: presences_from(y, bare(x), "subscribe"), 20,
                         f"{bare(y)} to get {bare(x)}'s subscription request")
        y.xmpp.send_presence(pto=bare(x), ptype="subscribed")
        await wait_until(lambda: x.subscription(bare(y)) in ("to", "both"), 20,
                         f"{bare(x)}'s roster to show a subscription to {bare(y)}")
    await wait_until(lambda: a.subscription(bare(b)) == "both", 20, "both in a's roster")
    await wait_until(lambda: b.subscription(bare(a)) == "both", 20, "both in b's roster")


async def check_messages_both_ways(fed, clients):
    a, b = await clients()
    a.xmpp.send_message(mto=bare(b), mbody="hello peer", mtype="chat")
    await wait_until(lambda: "hello peer" in bodies(b), 30, "the message on the peer")
    got = next(m for m in b.messages if m["body"] == "hello peer")
    assert got["from"] == a.jid
    b.xmpp.send_message(mto=a.jid, mbody="hello switchboard", mtype="chat")
    await wait_until(lambda: "hello switchboard" in bodies(a), 30, "the reply on Switchboard")
    got = next(m for m in a.messages if m["body"] == "hello switchboard")
    assert got["from"] == b.jid
    # Several in a row keep their order.
    for i in range(20):
        a.xmpp.send_message(mto=bare(b), mbody=f"n{i}", mtype="chat")
    await wait_until(lambda: sum(x.startswith("n") for x in bodies(b)) == 20, 30, "20 messages")
    assert [x for x in bodies(b) if x.startswith("n")] == [f"n{i}" for i in range(20)]


async def check_iq_to_a_local_account_is_answered_across(fed, clients):
    """The peer's user asks for our user's vCard (answered by our server on the
    account's behalf): the reply travels back over federation."""
    import xml.etree.ElementTree as ET

    from slixmpp.exceptions import IqError

    a, b = await clients()
    iq = b.xmpp.Iq()
    iq["type"] = "get"
    iq["to"] = bare(a)
    iq.append(ET.Element("{vcard-temp}vCard"))
    try:
        reply = await iq.send(timeout=20)
        assert reply["type"] == "result"
    except IqError as e:
        # No vCard stored is an answer too; what matters is that one came back.
        assert e.iq["from"].bare == bare(a), e.iq


async def check_server_iq_across(fed, clients):
    """The peer's user pings our domain (XEP-0199 §4.3) and asks for its disco#info: our
    server answers over federation."""
    a, b = await clients()
    await b.xmpp.plugin["xep_0199"].ping(jid=fed.sb.domain, timeout=20)
    iq = b.xmpp.Iq()
    iq["type"] = "get"
    iq["to"] = fed.sb.domain
    iq.enable("disco_info")
    reply = await iq.send(timeout=20)
    assert "urn:xmpp:ping" in [f for f in reply["disco_info"]["features"]], reply


async def check_links_use_the_expected_authentication(fed, clients):
    a, b = await clients()
    # Full JIDs: a bare-JID message that overtakes the recipient's initial presence would be
    # stored offline (by either server), which is not what this test is about.
    a.xmpp.send_message(mto=b.xmpp.boundjid.full, mbody="ping", mtype="chat")
    b.xmpp.send_message(mto=a.xmpp.boundjid.full, mbody="pong", mtype="chat")
    await wait_until(lambda: "ping" in bodies(b) and "pong" in bodies(a), 30, "both messages")
    method = METHOD[fed.mode]
    # Our link to the peer, and the peer's link to us, as our log saw them on the stream.
    fed.sb.wait_log(
        rf's2s outbound link authenticated local={SB_DOMAIN} remote={fed.peer.domain} '
        rf'method="{method}" tls=true'
    )
    fed.sb.wait_log(rf'domain={fed.peer.domain} method="{method}" tls=true')
    log = fed.sb.log_text()
    other = METHOD["ca" if fed.mode == "selfsigned" else "selfsigned"]
    assert f'remote={fed.peer.domain} method="{other}"' not in log, log[-3000:]
    assert f'domain={fed.peer.domain} method="{other}"' not in log, log[-3000:]


async def check_subscription_handshake_and_presence(fed, clients):
    a, b = await clients()
    await subscribe_both_ways(a, b)
    # Presence updates flow both ways once subscribed.
    b.xmpp.send_presence(pshow="away", pstatus="lunch")
    await wait_until(
        lambda: any(p["show"] == "away" and p["status"] == "lunch" for p in presences_from(a, bare(b))),
        20, "peer user's away presence on Switchboard",
    )
    a.xmpp.send_presence(pshow="dnd", pstatus="busy")
    await wait_until(
        lambda: any(p["show"] == "dnd" and p["status"] == "busy" for p in presences_from(b, bare(a))),
        20, "Switchboard user's dnd presence on the peer",
    )
    # A new session of a probes b's server at login and gets b's current presence.
    acc_jid = bare(a)
    a2 = Client(f"{acc_jid}/second", a.password, SB_ADDR, fed.sb.c2s_port)
    try:
        await a2.start()
        await wait_until(
            lambda: any(p["show"] == "away" for p in presences_from(a2, bare(b))),
            20, "b's presence in answer to the probe",
        )
        # ...and the new resource's presence reaches the remote subscriber.
        await wait_until(
            lambda: any(str(p["from"]) == f"{acc_jid}/second" and p["type"] == "available"
                        for p in b.presences),
            20, "the second resource's presence on the peer",
        )
    finally:
        await a2.stop()
    await wait_until(
        lambda: any(str(p["from"]) == f"{acc_jid}/second" and p["type"] == "unavailable"
                    for p in b.presences),
        20, "the second resource's unavailable presence on the peer",
    )
    # b goes offline: a learns it.
    await b.stop()
    await wait_until(lambda: presences_from(a, bare(b), "unavailable"), 20, "b's unavailable presence")


def check_unauthenticated_domain_is_refused(fed):
    """A peer that sends a stanza for a domain it has not authenticated gets <invalid-from/>."""
    acc = fed.sb.account()
    raw = RawS2s(fed.sb.s2s_addr, fed.peer.domain, SB_DOMAIN)
    try:
        raw.starttls()
        raw.send(
            f"<message from='mallory@{fed.peer.domain}' to='{acc.jid}' type='chat'>"
            "<body>spoofed</body></message>"
        )
        out = raw.read_until(r"</stream:stream>")
        assert "<invalid-from" in out, out
    finally:
        raw.close()
    fed.sb.wait_log(r"s2s inbound stream closed with an error.*invalid-from")


def check_forged_dialback_key_is_refused(fed):
    """Claiming the peer's domain with a key it never issued: we ask the peer (the
    authoritative server) over our own link, it says invalid, we refuse the claim, and a
    stanza from that domain then gets <invalid-from/>."""
    acc = fed.sb.account()
    raw = RawS2s(fed.sb.s2s_addr, fed.peer.domain, SB_DOMAIN)
    try:
        raw.starttls()
        raw.send(f"<db:result from='{fed.peer.domain}' to='{SB_DOMAIN}'>{'ab' * 32}</db:result>")
        out = raw.read_until(r"<(db:)?result[^>]*type=['\"](invalid|error)['\"]", timeout=30)
        assert "valid'" not in out.replace("invalid'", ""), out
        raw.send(f"<message from='m@{fed.peer.domain}' to='{acc.jid}'><body>x</body></message>")
        out = raw.read_until(r"</stream:stream>")
        assert "<invalid-from" in out, out
    finally:
        raw.close()
