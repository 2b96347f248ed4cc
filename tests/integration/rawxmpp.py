"""A small hand-written XMPP client for byte-precise integration tests.

It speaks RFC 6120 c2s by hand over asyncio streams: stream header, STARTTLS
(stdlib ``ssl``, or pyOpenSSL when the test needs the RFC 9266 ``tls-exporter``
value), SASL PLAIN and SCRAM-SHA-1/-256 with or without -PLUS (our own SCRAM
client, so wrong passwords and odd GS2 flags are deterministic), and resource
binding.  Everything it receives is kept as raw bytes so that a failing test can
show exactly what the server sent.

Every wait is bounded: each call takes a ``timeout`` (seconds) and raises
``XmppTestError`` (an ``AssertionError``) with the recent traffic when it runs out.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import itertools
import os
import socket
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable
from xml.sax.saxutils import escape, quoteattr

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_VERSION = "jabber:iq:version"

STREAM_ERROR = f"{{{NS_STREAM}}}error"
FEATURES = f"{{{NS_STREAM}}}features"

DEFAULT_TIMEOUT = 10.0
_LOG_CAP = 64 * 1024  # raw bytes kept per direction for error messages

_ids = itertools.count(1)


def new_id(prefix: str = "t") -> str:
    return f"{prefix}{next(_ids)}"


class XmppTestError(AssertionError):
    """A protocol expectation was not met (reported by pytest as a test failure)."""


class XmppTimeout(XmppTestError):
    """Nothing (or not the awaited thing) arrived in time."""


def q(tag: str, ns: str = NS_CLIENT) -> str:
    """Clark notation: q('message') -> '{jabber:client}message'."""
    return f"{{{ns}}}{tag}"


def xml_str(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


def stream_header(
    to: str | None = "localhost",
    *,
    version: str | None = "1.0",
    stream_ns: str = NS_STREAM,
    default_ns: str = NS_CLIENT,
    lang: str = "en",
    xml_decl: bool = True,
) -> str:
    attrs = []
    if to is not None:
        attrs.append(f"to={quoteattr(to)}")
    if version is not None:
        attrs.append(f"version={quoteattr(version)}")
    attrs.append(f"xml:lang={quoteattr(lang)}")
    attrs.append(f"xmlns={quoteattr(default_ns)}")
    attrs.append(f"xmlns:stream={quoteattr(stream_ns)}")
    decl = "<?xml version='1.0'?>" if xml_decl else ""
    return f"{decl}<stream:stream {' '.join(attrs)}>"


def stream_error_condition(el: ET.Element) -> str | None:
    """The defined condition of a <stream:error/>, e.g. 'not-well-formed'."""
    for child in el:
        if child.tag.startswith(f"{{{NS_STREAM_ERRORS}}}") and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return None


def stanza_error(el: ET.Element) -> tuple[str | None, str | None]:
    """(error type, defined condition) of a stanza of type 'error'."""
    err = el.find(q("error"))
    if err is None:
        return None, None
    cond = None
    for child in err:
        if child.tag.startswith(f"{{{NS_STANZA_ERRORS}}}") and not child.tag.endswith("}text"):
            cond = child.tag.split("}", 1)[1]
            break
    return err.get("type"), cond


# ---------------------------------------------------------------------------
# SCRAM (RFC 5802, RFC 7677), written out so that tests control every byte.
# ---------------------------------------------------------------------------

_SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _scram_attrs(data: bytes) -> dict[str, bytes]:
    out = {}
    for part in data.split(b","):
        if b"=" in part:
            k, v = part.split(b"=", 1)
            out[k.decode()] = v
    return out


class ScramClient:
    """Client side of one SCRAM exchange.

    ``gs2_flag``: None picks 'p=<cb_type>' for -PLUS mechanisms and 'n' otherwise;
    tests pass 'y' to check the server's downgrade protection.
    """

    def __init__(
        self,
        mechanism: str,
        username: str,
        password: str,
        *,
        cb_type: str = "tls-exporter",
        cb_data: bytes = b"",
        gs2_flag: str | None = None,
    ):
        self.mechanism = mechanism
        self.plus = mechanism.endswith("-PLUS")
        self.hash_name = _SCRAM_HASHES[mechanism.removesuffix("-PLUS")]
        if gs2_flag is None:
            gs2_flag = f"p={cb_type}" if self.plus else "n"
        self.gs2_flag = gs2_flag
        self.gs2_header = f"{gs2_flag},,".encode()
        self.cb_data = cb_data
        self.password = password
        self.cnonce = base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n={_saslname(username)},r={self.cnonce}".encode()
        self.server_signature: bytes | None = None

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash_name).digest()

    def client_first(self) -> bytes:
        return self.gs2_header + self.client_first_bare

    def client_final(self, server_first: bytes) -> bytes:
        attrs = _scram_attrs(server_first)
        for key in ("r", "s", "i"):
            if key not in attrs:
                raise XmppTestError(f"SCRAM server-first-message lacks '{key}=': {server_first!r}")
        nonce = attrs["r"]
        if not nonce.startswith(self.cnonce.encode()) or len(nonce) <= len(self.cnonce):
            raise XmppTestError(
                f"SCRAM server nonce does not extend the client nonce: {server_first!r}"
            )
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        cbind_input = self.gs2_header + (self.cb_data if self.gs2_flag.startswith("p=") else b"")
        without_proof = b"c=" + base64.b64encode(cbind_input) + b",r=" + nonce
        salted = hashlib.pbkdf2_hmac(self.hash_name, self.password.encode(), salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        auth_message = self.client_first_bare + b"," + server_first + b"," + without_proof
        signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def server_final_ok(self, server_final: bytes) -> bool:
        attrs = _scram_attrs(server_final)
        if "v" not in attrs or self.server_signature is None:
            return False
        return hmac.compare_digest(base64.b64decode(attrs["v"]), self.server_signature)


@dataclass
class SaslResult:
    success: bool
    element: ET.Element  # the <success/> or <failure/>
    stage: str  # 'initial' (failed on <auth/>) or 'final'
    challenges: list[bytes] = field(default_factory=list)
    server_signature_ok: bool | None = None  # SCRAM: did v= verify?

    @property
    def condition(self) -> str | None:
        if self.success:
            return None
        for child in self.element:
            if child.tag.startswith(f"{{{NS_SASL}}}") and not child.tag.endswith("}text"):
                return child.tag.split("}", 1)[1]
        return None


# ---------------------------------------------------------------------------
# Transports
# ---------------------------------------------------------------------------


class _StreamIO:
    """Plain TCP, or TLS from the stdlib (direct or upgraded with start_tls)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.error: BaseException | None = None

    async def recv(self) -> bytes:
        try:
            return await self.reader.read(65536)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            # A failed write (the peer reset the connection) makes StreamReader.read()
            # raise even though bytes that arrived before are still buffered: return them.
            self.error = exc
            buffered = getattr(self.reader, "_buffer", None)
            if buffered:
                data = bytes(buffered)
                buffered.clear()
                return data
            return b""

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        await self.writer.start_tls(ctx, server_hostname=server_hostname)

    def sockname(self):
        return self.writer.get_extra_info("sockname")

    def ssl_object(self):
        return self.writer.get_extra_info("ssl_object")

    def tls_version(self) -> str | None:
        obj = self.ssl_object()
        return obj.version() if obj is not None else None

    def tls_exporter(self) -> bytes:
        raise XmppTestError(
            "the stdlib ssl module (Python < 3.14) cannot export keying material; "
            "connect with tls_engine='openssl' for tls-exporter channel binding"
        )

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (Exception, asyncio.TimeoutError):
            pass


class _SockIO:
    """Plain TCP through loop.sock_* on a bare socket.

    Unlike asyncio streams, a failed write (the peer reset the connection while we were
    still sending) does not discard what the kernel had already received: recv() keeps
    returning it.  Tests that flood the node until it closes the stream use this.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.error: BaseException | None = None

    @classmethod
    async def open(cls, host: str, port: int, rcvbuf: int | None = None) -> "_SockIO":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def recv(self) -> bytes:
        try:
            return await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        except (ConnectionError, OSError) as exc:
            self.error = exc
            return b""

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def sockname(self):
        return self.sock.getsockname()

    def ssl_object(self):
        return None

    def tls_version(self) -> str | None:
        return None

    def tls_exporter(self) -> bytes:
        raise XmppTestError("no TLS on this connection")

    def abort(self) -> None:
        self.sock.close()

    async def close(self) -> None:
        self.sock.close()


class _OpenSSLIO:
    """TLS through pyOpenSSL in memory-BIO mode on top of a raw transport (_SockIO or
    _StreamIO: anything with async recv() and send()).

    Used where the test needs the RFC 9266 tls-exporter value, which the stdlib ``ssl``
    module of Python 3.11 cannot produce, and with _SockIO where a test must keep
    reading after its writes fail.
    """

    def __init__(self, raw, conn):
        self.raw = raw
        self.conn = conn
        self.error: BaseException | None = None
        self._wlock = asyncio.Lock()

    @classmethod
    async def handshake(cls, raw, cafile: str, server_hostname: str, max_tls12=False):
        from OpenSSL import SSL, crypto

        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(cafile)
        # The trust anchor is the server's own (self-signed) certificate.
        ctx.get_cert_store().set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
        if max_tls12:
            ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        conn = SSL.Connection(ctx, None)
        conn.set_tlsext_host_name(server_hostname.encode())
        conn.set_connect_state()
        io = cls(raw, conn)
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                await io._flush()
                data = await raw.recv()
                if not data:
                    raise XmppTestError("connection closed during the TLS handshake")
                conn.bio_write(data)
        await io._flush()
        # Pin: the peer certificate must be the server's cert.pem.
        with open(cafile, "rb") as fh:
            expected = ssl.PEM_cert_to_DER_cert(fh.read().decode())
        peer = conn.get_peer_certificate()
        if peer is None or crypto.dump_certificate(crypto.FILETYPE_ASN1, peer) != expected:
            raise XmppTestError("server presented a certificate other than <data_dir>/tls/cert.pem")
        return io

    async def _flush(self) -> None:
        from OpenSSL import SSL

        async with self._wlock:  # keeps TLS records in order across concurrent tasks
            while True:
                try:
                    data = self.conn.bio_read(65536)
                except SSL.WantReadError:
                    break
                if not data:
                    break
                await self.raw.send(data)

    async def recv(self) -> bytes:
        from OpenSSL import SSL

        while True:
            try:
                return self.conn.recv(65536)
            except SSL.WantReadError:
                try:
                    await self._flush()
                except (ConnectionError, OSError):
                    pass  # cannot write any more; what was received is still readable
                data = await self.raw.recv()
                if not data:
                    self.error = self.raw.error
                    return b""
                self.conn.bio_write(data)
            except SSL.ZeroReturnError:
                return b""
            except SSL.Error as exc:
                self.error = exc
                return b""

    async def send(self, data: bytes) -> None:
        self.conn.sendall(data)
        await self._flush()

    def sockname(self):
        return self.raw.sockname()

    def ssl_object(self):
        return None

    def tls_version(self) -> str | None:
        return self.conn.get_protocol_version_name()

    def tls_exporter(self) -> bytes:
        # RFC 9266: label "EXPORTER-Channel-Binding", no context, 32 bytes.
        return self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)

    def abort(self) -> None:
        self.raw.abort()

    async def close(self) -> None:
        await self.raw.close()


# ---------------------------------------------------------------------------
# Incremental stream parser
# ---------------------------------------------------------------------------


@dataclass
class Event:
    kind: str  # 'header' | 'element' | 'close' (</stream:stream>) | 'eof'
    element: ET.Element | None = None
    nsmap: dict[str, str] | None = None


class _StreamParser:
    def __init__(self):
        self.parser = ET.XMLPullParser(events=("start-ns", "start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.root_ns: dict[str, str] = {}

    def feed(self, data: bytes) -> list[Event]:
        self.parser.feed(data)
        out = []
        for kind, obj in self.parser.read_events():
            if kind == "start-ns":
                if self.depth == 0:
                    prefix, uri = obj
                    self.root_ns[prefix] = uri
            elif kind == "start":
                self.depth += 1
                if self.depth == 1:
                    self.root = obj
                    out.append(Event("header", element=obj, nsmap=dict(self.root_ns)))
            else:
                self.depth -= 1
                if self.depth == 1:
                    out.append(Event("element", element=obj))
                    self.root.remove(obj)
                elif self.depth == 0:
                    out.append(Event("close"))
        return out


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class XmppClient:
    def __init__(self, io: _StreamIO, *, domain: str, cafile: str | None, label: str):
        self.io = io
        self.domain = domain
        self.cafile = cafile
        self.label = label
        self.parser = _StreamParser()
        self.pending: collections.deque[Event] = collections.deque()
        self.rx = bytearray()
        self.tx = bytearray()
        self.rx_total = 0
        self.header: Event | None = None
        self.eof = False
        self.skipped: list[ET.Element] = []  # elements passed over by recv_match
        self.jid: str | None = None
        self.stream_ids: list[str] = []

    # -- connection ---------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        host: str = "127.0.0.1",
        domain: str = "localhost",
        cafile: str | None = None,
        direct_tls: bool = False,
        tls_engine: str = "stdlib",
        rcvbuf: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        label: str = "client",
    ) -> "XmppClient":
        async def _open():
            if tls_engine == "openssl":
                io = await _SockIO.open(host, port, rcvbuf)
                if direct_tls:
                    io = await _OpenSSLIO.handshake(io, cafile, domain)
                return io
            kwargs = {}
            if direct_tls:
                kwargs = {"ssl": make_ssl_context(cafile), "server_hostname": domain}
            if rcvbuf is not None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
                reader, writer = await asyncio.open_connection(sock=sock, **kwargs)
            else:
                reader, writer = await asyncio.open_connection(host, port, **kwargs)
            return _StreamIO(reader, writer)

        try:
            io = await asyncio.wait_for(_open(), timeout)
        except asyncio.TimeoutError:
            raise XmppTestError(f"{label}: connecting to {host}:{port} timed out after {timeout}s")
        return cls(io, domain=domain, cafile=cafile, label=label)

    def describe(self) -> str:
        rx = bytes(self.rx[-4000:])
        tx = bytes(self.tx[-2000:])
        err = f"\n  transport error: {self.io.error!r}" if self.io.error else ""
        return (
            f"[{self.label}] last bytes sent: {tx!r}\n"
            f"[{self.label}] last bytes received: {rx!r}{err}"
        )

    def _fail(self, msg: str) -> XmppTestError:
        return XmppTestError(f"{self.label}: {msg}\n{self.describe()}")

    # -- raw I/O ------------------------------------------------------------

    async def send(self, data: str | bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.tx += data[:_LOG_CAP]
        del self.tx[:-_LOG_CAP]
        try:
            await asyncio.wait_for(self.io.send(data), timeout)
        except asyncio.TimeoutError:
            raise self._fail(f"sending {len(data)} bytes did not complete within {timeout}s")

    async def next_event(self, timeout: float = DEFAULT_TIMEOUT) -> Event:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.pending:
            if self.eof:
                return Event("eof")
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(self.io.recv(), remaining)
            except asyncio.TimeoutError:
                raise XmppTimeout(
                    f"{self.label}: nothing arrived within {timeout}s\n{self.describe()}"
                )
            if not data:
                self.eof = True
                self.pending.append(Event("eof"))
                break
            self.rx_total += len(data)
            self.rx += data
            del self.rx[:-_LOG_CAP]
            try:
                self.pending.extend(self.parser.feed(data))
            except ET.ParseError as exc:
                raise self._fail(f"the server sent XML that does not parse: {exc}")
        return self.pending.popleft()

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> ET.Element:
        ev = await self.next_event(timeout)
        if ev.kind != "element":
            raise self._fail(f"expected an element, got {ev.kind}")
        return ev.element

    async def recv_match(
        self,
        pred: Callable[[ET.Element], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "a matching element",
    ) -> ET.Element:
        """Next element satisfying pred; others are kept in self.skipped.

        A stream error or the end of the stream fails the wait (unless pred accepts it).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._fail(f"did not receive {what} within {timeout}s")
            try:
                ev = await self.next_event(remaining)
            except XmppTimeout:
                raise self._fail(f"did not receive {what} within {timeout}s")
            if ev.kind != "element":
                raise self._fail(f"stream ended ({ev.kind}) while waiting for {what}")
            if pred(ev.element):
                return ev.element
            if ev.element.tag == STREAM_ERROR:
                raise self._fail(
                    f"stream error <{stream_error_condition(ev.element)}/> while waiting for {what}"
                )
            self.skipped.append(ev.element)

    async def expect_silence(self, seconds: float) -> list[ET.Element]:
        """Everything that arrives within `seconds` (for 'must not receive' checks)."""
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return got
            try:
                ev = await self.next_event(remaining)
            except XmppTimeout:
                return got
            if ev.kind == "element":
                got.append(ev.element)
            else:
                return got

    # -- streams --------------------------------------------------------------

    async def open_stream(self, header: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Event:
        """Send a stream header (default: a correct one) and wait for the server's."""
        self.parser = _StreamParser()
        self.pending.clear()
        await self.send(header if header is not None else stream_header(self.domain))
        ev = await self.next_event(timeout)
        if ev.kind != "header":
            raise self._fail(f"expected the server's stream header, got {ev.kind}")
        self.header = ev
        sid = ev.element.get("id")
        if sid:
            self.stream_ids.append(sid)
        return ev

    async def read_features(self, timeout: float = DEFAULT_TIMEOUT) -> ET.Element:
        el = await self.recv(timeout)
        if el.tag != FEATURES:
            raise self._fail(f"expected <stream:features/>, got {xml_str(el)}")
        return el

    async def start(self, timeout: float = DEFAULT_TIMEOUT) -> ET.Element:
        """Open a stream and return its features."""
        await self.open_stream(timeout=timeout)
        return await self.read_features(timeout)

    async def expect_stream_error(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Read until a <stream:error/>; return its condition ('' if it has none).

        Elements that arrive before it are kept in self.skipped.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._fail(f"no stream error within {timeout}s")
            try:
                ev = await self.next_event(remaining)
            except XmppTimeout:
                raise self._fail(f"no stream error within {timeout}s")
            if ev.kind == "element":
                if ev.element.tag == STREAM_ERROR:
                    return stream_error_condition(ev.element) or ""
                self.skipped.append(ev.element)
            elif ev.kind == "header":
                continue
            else:
                raise self._fail(f"the stream ended ({ev.kind}) without a stream error")

    async def expect_closed(self, timeout: float = 5.0) -> None:
        """After a stream error: the server must send </stream:stream> (RFC 6120 4.9.1.1,
        4.4) and then the TCP connection must end (we answer with our own close tag)."""
        ev = await self.next_event(timeout)
        while ev.kind == "element":
            self.skipped.append(ev.element)
            ev = await self.next_event(timeout)
        if ev.kind != "close":
            raise self._fail(f"expected the closing </stream:stream> tag, got {ev.kind}")
        try:
            await self.send("</stream:stream>", timeout=2)
        except (ConnectionError, OSError):
            pass
        ev = await self.next_event(timeout)
        if ev.kind != "eof":
            raise self._fail(f"expected the server to close the TCP connection, got {ev.kind}")

    async def expect_stream_error_and_close(self, condition: str, timeout: float = DEFAULT_TIMEOUT):
        got = await self.expect_stream_error(timeout)
        if got != condition:
            raise self._fail(f"expected stream error <{condition}/>, got <{got}/>")
        await self.expect_closed()

    # -- TLS ----------------------------------------------------------------

    async def starttls(
        self, tls_engine: str = "stdlib", timeout: float = DEFAULT_TIMEOUT, max_tls12: bool = False
    ) -> None:
        """Send <starttls/>, expect <proceed/>, upgrade; the caller restarts the stream."""
        await self.send(f"<starttls xmlns='{NS_TLS}'/>")
        el = await self.recv(timeout)
        if el.tag != f"{{{NS_TLS}}}proceed":
            raise self._fail(f"expected <proceed/>, got {xml_str(el)}")
        if self.pending:
            raise self._fail("the server sent data after <proceed/> before the TLS handshake")
        try:
            if tls_engine == "openssl":
                self.io = await asyncio.wait_for(
                    _OpenSSLIO.handshake(self.io, self.cafile, self.domain, max_tls12), timeout
                )
            else:
                ctx = make_ssl_context(self.cafile)
                if max_tls12:
                    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                await asyncio.wait_for(self.io.starttls(ctx, self.domain), timeout)
        except asyncio.TimeoutError:
            raise self._fail(f"TLS handshake did not finish within {timeout}s")

    def tls_version(self) -> str | None:
        return self.io.tls_version()

    def tls_server_end_point(self) -> bytes:
        """RFC 5929 4.1: hash of the server certificate, with its signature's hash
        algorithm (SHA-256 when that is MD5 or SHA-1)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        obj = self.io.ssl_object()
        if obj is None:
            raise XmppTestError("tls-server-end-point needs a stdlib TLS connection")
        der = obj.getpeercert(binary_form=True)
        algo = x509.load_der_x509_certificate(der).signature_hash_algorithm
        if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
            algo = hashes.SHA256()
        h = hashes.Hash(algo)
        h.update(der)
        return h.finalize()

    # -- SASL ---------------------------------------------------------------

    async def sasl_plain(
        self, username: str, password: str, timeout: float = DEFAULT_TIMEOUT
    ) -> SaslResult:
        payload = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        await self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
        el = await self.recv(timeout)
        return self._sasl_outcome(el, "initial", [])

    async def sasl_scram(
        self,
        mechanism: str,
        username: str,
        password: str,
        *,
        gs2_flag: str | None = None,
        cb_type: str = "tls-exporter",
        cb_data: bytes | None = None,
        initial_response: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> SaslResult:
        """SCRAM; with initial_response=False, `<auth/>` is sent empty, the server must answer
        with an empty challenge, and client-first goes in a `<response/>` (RFC 6120 §6.4.2)."""
        if cb_data is None and mechanism.endswith("-PLUS"):
            if cb_type == "tls-exporter":
                cb_data = self.io.tls_exporter()
            elif cb_type == "tls-server-end-point":
                cb_data = self.tls_server_end_point()
            else:
                raise ValueError(cb_type)
        scram = ScramClient(
            mechanism, username, password, cb_type=cb_type, cb_data=cb_data or b"", gs2_flag=gs2_flag
        )
        first = base64.b64encode(scram.client_first()).decode()
        if initial_response:
            await self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{first}</auth>")
        else:
            await self.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'/>")
            el = await self.recv(timeout)
            if el.tag != f"{{{NS_SASL}}}challenge" or (el.text or "").strip() not in ("", "="):
                return self._sasl_outcome(el, "empty-auth", [])
            await self.send(f"<response xmlns='{NS_SASL}'>{first}</response>")
        el = await self.recv(timeout)
        challenges: list[bytes] = []
        if el.tag != f"{{{NS_SASL}}}challenge":
            return self._sasl_outcome(el, "initial", challenges)
        server_first = base64.b64decode(el.text or "")
        challenges.append(server_first)
        final = base64.b64encode(scram.client_final(server_first)).decode()
        await self.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
        el = await self.recv(timeout)
        if el.tag == f"{{{NS_SASL}}}challenge":
            # Server-final in a challenge (allowed, though <success/> with data is preferred).
            server_final = base64.b64decode(el.text or "")
            challenges.append(server_final)
            await self.send(f"<response xmlns='{NS_SASL}'/>")
            el = await self.recv(timeout)
        else:
            text = (el.text or "").strip()
            server_final = base64.b64decode(text) if text and text != "=" else b""
        result = self._sasl_outcome(el, "final", challenges)
        if result.success:
            result.server_signature_ok = scram.server_final_ok(server_final)
        return result

    def _sasl_outcome(self, el: ET.Element, stage: str, challenges) -> SaslResult:
        if el.tag == f"{{{NS_SASL}}}success":
            return SaslResult(True, el, stage, challenges)
        if el.tag == f"{{{NS_SASL}}}failure":
            return SaslResult(False, el, stage, challenges)
        if el.tag == STREAM_ERROR:
            raise self._fail(f"stream error <{stream_error_condition(el)}/> during SASL")
        raise self._fail(f"unexpected element during SASL: {xml_str(el)}")

    async def authenticate(
        self, username: str, password: str, mechanism: str = "SCRAM-SHA-256", **kw
    ) -> SaslResult:
        if mechanism == "PLAIN":
            return await self.sasl_plain(username, password, **kw)
        return await self.sasl_scram(mechanism, username, password, **kw)

    # -- stanzas ------------------------------------------------------------

    async def bind(self, resource: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ET.Element:
        """Send a bind request; return the response <iq/> (result or error)."""
        iq_id = new_id("bind")
        inner = f"<resource>{escape(resource)}</resource>" if resource is not None else ""
        await self.send(f"<iq type='set' id='{iq_id}'><bind xmlns='{NS_BIND}'>{inner}</bind></iq>")
        return await self.recv_match(
            lambda e: e.tag == q("iq") and e.get("id") == iq_id, timeout, "the bind response"
        )

    async def iq(self, body: str, *, type_: str = "get", to: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, iq_id: str | None = None,
                 extra_attrs: str = "") -> ET.Element:
        """Send an IQ and wait for the response with the same id."""
        iq_id = iq_id or new_id("iq")
        to_attr = f" to={quoteattr(to)}" if to else ""
        type_attr = f" type={quoteattr(type_)}" if type_ is not None else ""
        await self.send(f"<iq{type_attr} id='{iq_id}'{to_attr}{extra_attrs}>{body}</iq>")
        return await self.recv_match(
            lambda e: e.tag == q("iq") and e.get("id") == iq_id,
            timeout,
            f"the response to iq id={iq_id}",
        )

    async def ping(self, to: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ET.Element:
        return await self.iq(f"<ping xmlns='{NS_PING}'/>", to=to or self.domain, timeout=timeout)

    async def barrier(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Round-trip a ping to the server: everything the server queued for us before
        the ping was handled has then arrived (collected in self.skipped)."""
        resp = await self.ping(timeout=timeout)
        if resp.get("type") != "result":
            raise self._fail(f"ping to the server was not answered with a result: {xml_str(resp)}")

    async def send_presence(self, priority: int | None = None, extra: str = "") -> None:
        prio = f"<priority>{priority}</priority>" if priority is not None else ""
        await self.send(f"<presence>{prio}{extra}</presence>")

    async def close(self, timeout: float = 3.0) -> None:
        """Close the stream politely (</stream:stream>, wait for the server's) and the socket."""
        try:
            if not self.eof:
                await self.send("</stream:stream>", timeout=timeout)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while not self.eof and loop.time() < deadline:
                    try:
                        await self.next_event(deadline - loop.time())
                    except XmppTestError:
                        break
        except (ConnectionError, OSError, XmppTestError):
            pass
        await self.io.close()

    def abort(self) -> None:
        """Drop the TCP connection without closing the stream."""
        self.io.abort()

    # -- waiting for what may already have been passed over ---------------------

    async def expect(
        self,
        pred: Callable[[ET.Element], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "a matching element",
    ) -> ET.Element:
        """Like recv_match, but first takes the oldest match out of self.skipped (elements
        an earlier wait passed over), so that the order in which unrelated stanzas arrive
        does not matter."""
        for i, el in enumerate(self.skipped):
            if pred(el):
                del self.skipped[i]
                return el
        return await self.recv_match(pred, timeout, what)

    async def drain(self, seconds: float) -> list[ET.Element]:
        """Everything passed over so far plus everything arriving within `seconds`, in
        arrival order; self.skipped is emptied."""
        got = self.skipped + await self.expect_silence(seconds)
        self.skipped = []
        return got

    # -- rosters (RFC 6121 2) ---------------------------------------------------

    async def roster_get(
        self, ver: str | None = None, *, to: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> ET.Element:
        ver_attr = "" if ver is None else f" ver={quoteattr(ver)}"
        return await self.iq(
            f"<query xmlns='{NS_ROSTER}'{ver_attr}/>", type_="get", to=to, timeout=timeout
        )

    async def roster_set(
        self, items_xml: str, *, to: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> ET.Element:
        return await self.iq(
            f"<query xmlns='{NS_ROSTER}'>{items_xml}</query>", type_="set", to=to, timeout=timeout
        )

    async def roster(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[str | None, dict]:
        """(ver, {jid: item summary}) from a full roster get (ver='' asks for everything)."""
        resp = await self.roster_get("", timeout=timeout)
        query = resp.find(ROSTER_QUERY)
        if resp.get("type") != "result" or query is None:
            raise self._fail(f"roster get with ver='' did not return the roster: {xml_str(resp)}")
        return query.get("ver"), {j: item_summary(i) for j, i in roster_items(query).items()}


def make_ssl_context(cafile: str | None) -> ssl.SSLContext:
    """Verify the server against <data_dir>/tls/cert.pem (a self-signed leaf used as the
    trust anchor; PARTIAL_CHAIN lets OpenSSL accept a non-CA anchor). Hostname checked."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def authenticated(
    server,
    account,
    *,
    mechanism: str = "SCRAM-SHA-256",
    direct_tls: bool = False,
    tls_engine: str = "stdlib",
    label: str | None = None,
    rcvbuf: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> XmppClient:
    """Connect, STARTTLS (or direct TLS), authenticate and restart the stream: the
    returned client has read the post-authentication features and is ready to bind.

    `server` needs .c2s_port, .tls_port, .domain, .cafile; `account` needs .local and
    .password.  Raises XmppTestError (with the traffic) if any step fails.
    """
    c = await XmppClient.connect(
        server.tls_port if direct_tls else server.c2s_port,
        domain=server.domain,
        cafile=server.cafile,
        direct_tls=direct_tls,
        tls_engine=tls_engine,
        rcvbuf=rcvbuf,
        label=label or account.local,
        timeout=timeout,
    )
    feats = await c.start(timeout)
    if not direct_tls:
        if feats.find(f"{{{NS_TLS}}}starttls") is None:
            raise c._fail(f"no <starttls/> offered: {xml_str(feats)}")
        await c.starttls(tls_engine, timeout)
        feats = await c.start(timeout)
    mechs = [m.text for m in feats.iterfind(f"{{{NS_SASL}}}mechanisms/{{{NS_SASL}}}mechanism")]
    if mechanism not in mechs:
        raise c._fail(f"mechanism {mechanism} not offered; offered: {mechs}")
    res = await c.authenticate(account.local, account.password, mechanism, timeout=timeout)
    if not res.success:
        raise c._fail(f"authentication with {mechanism} failed: {xml_str(res.element)}")
    feats = await c.start(timeout)
    if feats.find(f"{{{NS_BIND}}}bind") is None:
        raise c._fail(f"no <bind/> offered after authentication: {xml_str(feats)}")
    c.post_auth_features = feats
    return c


def bound_jid(resp: ET.Element) -> str | None:
    """The JID from a successful bind response, else None."""
    jid_el = resp.find(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
    if resp.get("type") != "result" or jid_el is None or not jid_el.text:
        return None
    return jid_el.text


async def login(
    server,
    account,
    *,
    resource: str | None = None,
    presence: bool = False,
    priority: int | None = None,
    label: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **kw,
) -> XmppClient:
    """authenticated() + bind (+ initial presence when presence/priority is given)."""
    c = await authenticated(
        server, account, label=label or f"{account.local}/{resource or '*'}", timeout=timeout, **kw
    )
    resp = await c.bind(resource, timeout)
    c.jid = bound_jid(resp)
    if c.jid is None:
        raise c._fail(f"bind failed: {xml_str(resp)}")
    if presence or priority is not None:
        await c.send_presence(priority)
    return c


# ---------------------------------------------------------------------------
# Instant messaging (RFC 6121 rosters, subscriptions and presence; XEP-0203)
# ---------------------------------------------------------------------------

NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
NS_DELAY = "urn:xmpp:delay"
ROSTER_QUERY = f"{{{NS_ROSTER}}}query"
ROSTER_ITEM = f"{{{NS_ROSTER}}}item"
ROSTER_GROUP = f"{{{NS_ROSTER}}}group"

ANY = object()  # "any value" in the predicates below; None there means "attribute absent"


def bare(jid: str) -> str:
    return jid.split("/", 1)[0]


def roster_item_xml(
    jid: str,
    *,
    name: str | None = None,
    groups=(),
    subscription: str | None = None,
    extra_attrs: str = "",
) -> str:
    attrs = f"jid={quoteattr(jid)}"
    if name is not None:
        attrs += f" name={quoteattr(name)}"
    if subscription is not None:
        attrs += f" subscription={quoteattr(subscription)}"
    inner = "".join(f"<group>{escape(g)}</group>" for g in groups)
    return f"<item {attrs}{extra_attrs}>{inner}</item>"


def roster_items(el: ET.Element) -> dict[str, ET.Element]:
    """{jid: <item/>} of a roster <query/>, or of the <query/> inside an <iq/>."""
    query = el if el.tag == ROSTER_QUERY else el.find(ROSTER_QUERY)
    if query is None:
        return {}
    return {i.get("jid"): i for i in query.findall(ROSTER_ITEM)}


def item_summary(item: ET.Element) -> dict:
    """The meaning of a roster item (RFC 6121 2.1.2: no 'subscription' means 'none', no
    'approved' means false)."""
    return {
        "name": item.get("name"),
        "subscription": item.get("subscription", "none"),
        "ask": item.get("ask"),
        "approved": item.get("approved") in ("true", "1"),
        "groups": sorted(g.text or "" for g in item.findall(ROSTER_GROUP)),
    }


def _attr_ok(value, wanted) -> bool:
    if wanted is ANY:
        return True
    if isinstance(wanted, (tuple, set, frozenset, list)):
        return value in wanted
    return value == wanted


def is_roster_push(jid: str, *, subscription=ANY, ask=ANY, approved=ANY, name=ANY):
    """An <iq type='set'/> roster push carrying an item for `jid` with these attributes
    (subscription 'none' also matches an absent attribute; approved True/False)."""

    def pred(e: ET.Element) -> bool:
        if e.tag != q("iq") or e.get("type") != "set":
            return False
        item = roster_items(e).get(jid)
        if item is None:
            return False
        s = item_summary(item)
        sub = item.get("subscription", "none")
        return (
            _attr_ok(sub, subscription)
            and _attr_ok(s["ask"], ask)
            and _attr_ok(s["approved"], approved)
            and _attr_ok(s["name"], name)
        )

    return pred


def is_presence(from_: str, type_: str | None = None):
    """Presence from exactly `from_` (bare or full) with this type (None: available)."""
    return lambda e: e.tag == q("presence") and e.get("from") == from_ and e.get("type") == type_


def is_message(id_: str):
    return lambda e: e.tag == q("message") and e.get("id") == id_


async def online(
    server,
    account,
    resource: str,
    *,
    priority: int | None = None,
    status: str | None = None,
    roster: bool = True,
    label: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> XmppClient:
    """login() + roster get (an "interested resource", RFC 6121 2.2) + initial presence,
    and wait until the server reflected that presence to the resource itself (4.2.2)."""
    c = await login(server, account, resource=resource, label=label, timeout=timeout)
    if roster:
        resp = await c.roster_get(timeout=timeout)
        if resp.get("type") != "result":
            raise c._fail(f"roster get failed: {xml_str(resp)}")
    extra = f"<status>{escape(status)}</status>" if status is not None else ""
    await c.send_presence(priority, extra)
    await c.expect(is_presence(c.jid), timeout, "its own initial presence, reflected")
    return c


def is_sub(from_bare: str, type_: str):
    """A subscription stanza of this type from exactly this bare JID (RFC 6121 3.1.2: the
    server stamps the user's bare JID)."""
    return lambda e: e.tag == q("presence") and e.get("type") == type_ and e.get("from") == from_bare


async def subscribe(ca: XmppClient, cb: XmppClient) -> None:
    """ca subscribes to cb's presence and cb approves; waits for both roster pushes.
    Both must be interested and available (see online())."""
    a, b = bare(ca.jid), bare(cb.jid)
    await ca.send(f"<presence to='{b}' type='subscribe'/>")
    await cb.expect(is_sub(a, "subscribe"), what=f"the subscription request from {a}")
    await cb.send(f"<presence to='{a}' type='subscribed'/>")
    await ca.expect(is_roster_push(b, subscription=("to", "both"), ask=None),
                    what=f"the push of {b} with subscription to/both")
    await cb.expect(is_roster_push(a, subscription=("from", "both")),
                    what=f"the push of {a} with subscription from/both")


# ---------------------------------------------------------------------------
# Message archive (XEP-0313 with XEP-0059 RSM and XEP-0359 stanza ids)
# ---------------------------------------------------------------------------

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_DATA = "jabber:x:data"


def mam_form(**fields) -> str:
    """A submitted XEP-0313 §4.1 form; `before_id=` becomes var='before-id'. A list value
    gives one <value/> each (the list-multi `ids`)."""
    out = [f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"]
    for name, value in fields.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        inner = "".join(f"<value>{escape(str(v))}</value>" for v in values)
        out.append(f"<field var={quoteattr(name.replace('_', '-'))}>{inner}</field>")
    return f"<x xmlns='{NS_DATA}' type='submit'>{''.join(out)}</x>"


def rsm_set(max: int | None = None, after: str | None = None, before: str | None = None) -> str:
    """An XEP-0059 request <set/>; before='' is the empty <before/> (the last page, §2.5)."""
    inner = "" if max is None else f"<max>{max}</max>"
    if after is not None:
        inner += f"<after>{escape(after)}</after>"
    if before is not None:
        inner += f"<before>{escape(before)}</before>" if before else "<before/>"
    return f"<set xmlns='{NS_RSM}'>{inner}</set>"


@dataclass
class MamPage:
    """What one archive query brought: the result <message/>s (in arrival order) and the
    IQ that ended it (result with <fin/>, or error)."""

    iq: ET.Element
    results: list[ET.Element]

    @property
    def error(self) -> str | None:
        return stanza_error(self.iq)[1] if self.iq.get("type") == "error" else None

    @property
    def fin(self) -> ET.Element | None:
        return self.iq.find(f"{{{NS_MAM}}}fin")

    @property
    def complete(self) -> bool:
        fin = self.fin
        return fin is not None and fin.get("complete") in ("true", "1")

    def _rsm(self, tag: str) -> ET.Element | None:
        fin = self.fin
        return None if fin is None else fin.find(f"{{{NS_RSM}}}set/{{{NS_RSM}}}{tag}")

    @property
    def first(self) -> str | None:
        el = self._rsm("first")
        return None if el is None else el.text

    @property
    def first_index(self) -> int | None:
        el = self._rsm("first")
        return None if el is None or el.get("index") is None else int(el.get("index"))

    @property
    def last(self) -> str | None:
        el = self._rsm("last")
        return None if el is None else el.text

    @property
    def count(self) -> int | None:
        el = self._rsm("count")
        return None if el is None else int((el.text or "").strip())

    @property
    def ids(self) -> list[str]:
        return [r.find(f"{{{NS_MAM}}}result").get("id") for r in self.results]

    @property
    def messages(self) -> list[ET.Element]:
        """The archived messages (inside <result><forwarded/>)."""
        return [mam_forwarded(r) for r in self.results]

    @property
    def bodies(self) -> list[str | None]:
        return [m.findtext(q("body")) if m is not None else None for m in self.messages]

    def describe(self) -> str:
        return f"iq: {xml_str(self.iq)}\nresults:\n" + "\n".join(xml_str(r) for r in self.results)


def mam_forwarded(result_msg: ET.Element) -> ET.Element | None:
    """The original message inside <message><result><forwarded/></result></message>."""
    return result_msg.find(f"{{{NS_MAM}}}result/{{{NS_FORWARD}}}forwarded/{q('message')}")


async def mam_query(
    c: XmppClient,
    form: str = "",
    rsm: str = "",
    *,
    queryid: str | None = None,
    to: str | None = None,
    extra: str = "",
    timeout: float = DEFAULT_TIMEOUT,
) -> MamPage:
    """Send an archive query (XEP-0313 §4) and collect the result messages carrying its
    queryid until the IQ response. `extra` goes after the form and the set (<flip-page/>)."""
    queryid = queryid or new_id("mq")
    iq_id = new_id("mam")
    to_attr = f" to={quoteattr(to)}" if to else ""
    await c.send(
        f"<iq type='set' id='{iq_id}'{to_attr}><query xmlns='{NS_MAM}' queryid='{queryid}'>"
        f"{form}{rsm}{extra}</query></iq>"
    )
    results: list[ET.Element] = []

    def ours(e: ET.Element) -> bool:
        if e.tag == q("iq") and e.get("id") == iq_id:
            return True
        r = e.find(f"{{{NS_MAM}}}result") if e.tag == q("message") else None
        return r is not None and r.get("queryid") == queryid

    while True:
        e = await c.recv_match(ours, timeout, f"the results of archive query {queryid}")
        if e.tag == q("iq"):
            return MamPage(e, results)
        results.append(e)
