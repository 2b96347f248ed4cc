//! One client connection: the socket (plain or TLS) and the scanner over what the server sent.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use crate::xml::{self, Event, ScanError, Scanner};

/// Bytes read from the socket at a time. The buffer is on the stack of one poll, so a larger
/// one costs an idle session nothing and lets a busy one take several stanzas per read.
const READ_CHUNK: usize = 16 * 1024;
/// Largest element we accept from the server.
const MAX_ELEMENT: usize = 64 * 1024;

/// Why a connection failed or ended; its `Display` is the key failures are grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Connect(io::ErrorKind),
    Io(io::ErrorKind),
    Tls(String),
    /// The server closed the TCP connection.
    Closed,
    /// The server sent `</stream:stream>`.
    StreamClosed,
    /// `<stream:error>` with this condition.
    StreamError(String),
    /// `<failure>` in the SASL namespace with this condition.
    Sasl(String),
    Bind(String),
    /// Something we did not expect, e.g. a missing feature.
    Protocol(String),
    Timeout,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(kind) => write!(f, "connect: {kind}"),
            Failure::Io(kind) => write!(f, "io: {kind}"),
            Failure::Tls(e) => write!(f, "tls: {e}"),
            Failure::Closed => f.write_str("closed by server"),
            Failure::StreamClosed => f.write_str("stream closed by server"),
            Failure::StreamError(c) => write!(f, "stream error: {c}"),
            Failure::Sasl(c) => write!(f, "sasl failure: {c}"),
            Failure::Bind(c) => write!(f, "bind failed: {c}"),
            Failure::Protocol(what) => write!(f, "protocol: {what}"),
            Failure::Timeout => f.write_str("timeout"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e.kind())
    }
}

impl From<ScanError> for Failure {
    fn from(e: ScanError) -> Failure {
        Failure::Protocol(e.to_string())
    }
}

/// Plain TCP or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

async fn handshake(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    domain: &str,
) -> Result<Transport, Failure> {
    let name = ServerName::try_from(domain.to_string()).map_err(|e| Failure::Tls(e.to_string()))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| Failure::Tls(e.to_string()))?;
    Ok(Transport::Tls(Box::new(tls)))
}

pub struct Connection {
    io: Transport,
    scanner: Scanner,
    /// Elements read during the login that were not for it (a message routed to the new
    /// session before the bind result), handed out first by [`Connection::next_event`].
    deferred: Vec<String>,
    /// Bytes of XML read from the server so far (after TLS): what a scenario reports as
    /// bytes received (`presence --csi-inactive-percent`).
    pub received_bytes: u64,
}

impl Connection {
    pub fn plain(tcp: TcpStream) -> Connection {
        Connection {
            io: Transport::Plain(tcp),
            scanner: Scanner::new(MAX_ELEMENT),
            deferred: Vec::new(),
            received_bytes: 0,
        }
    }

    /// Direct TLS (XEP-0368).
    pub async fn direct_tls(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        domain: &str,
    ) -> Result<Connection, Failure> {
        Ok(Connection {
            io: handshake(tcp, config, domain).await?,
            scanner: Scanner::new(MAX_ELEMENT),
            deferred: Vec::new(),
            received_bytes: 0,
        })
    }

    /// After `<proceed/>`: the TLS handshake on the same socket, with a fresh scanner.
    pub async fn start_tls(
        self,
        config: Arc<ClientConfig>,
        domain: &str,
    ) -> Result<Connection, Failure> {
        let Transport::Plain(tcp) = self.io else {
            return Err(Failure::Protocol("STARTTLS on a TLS stream".into()));
        };
        Connection::direct_tls(tcp, config, domain).await
    }

    pub async fn send(&mut self, data: &str) -> Result<(), Failure> {
        self.io.write_all(data.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Hand `elements` out again, in order, before anything read later.
    pub fn defer(&mut self, elements: Vec<String>) {
        self.deferred.splice(0..0, elements);
    }

    /// The next unit from the server. Cancel-safe: bytes already read stay in the scanner.
    pub async fn next_event(&mut self) -> Result<Event, Failure> {
        if !self.deferred.is_empty() {
            return Ok(Event::Element(self.deferred.remove(0)));
        }
        loop {
            if let Some(event) = self.scanner.next_event()? {
                self.scanner.release();
                return Ok(event);
            }
            let (io, scanner) = (&mut self.io, &mut self.scanner);
            // The chunk lives only inside one poll, not in the future: an idle session's task
            // (waiting here for most of its life) holds no read buffer. It is left
            // uninitialised: zeroing 16 KiB for every read was 4 % of a busy generator's CPU.
            let read = std::future::poll_fn(|cx| {
                let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut buf = ReadBuf::uninit(&mut chunk);
                match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(0)),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        Poll::Ready(
                            scanner
                                .push(buf.filled())
                                .map(|()| n)
                                .map_err(Failure::from),
                        )
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Failure::from(e))),
                    Poll::Pending => Poll::Pending,
                }
            });
            let n = read.await?;
            if n == 0 {
                return Err(Failure::Closed);
            }
            self.received_bytes += n as u64;
        }
    }

    /// The next top-level element; a stream error or the end of the stream is a failure.
    pub async fn next_element(&mut self) -> Result<String, Failure> {
        match self.next_event().await? {
            Event::Element(el) if xml::name(&el) == "stream:error" => Err(stream_error(&el)),
            Event::Element(el) => Ok(el),
            Event::End => Err(Failure::StreamClosed),
            Event::Header(_) => Err(Failure::Protocol("unexpected stream header".into())),
        }
    }

    /// Send `</stream:stream>`, wait up to `grace` for the server's own close, then shut the
    /// socket down (TLS close_notify, then FIN). True if the server closed its stream.
    pub async fn close(self, grace: Duration) -> bool {
        self.close_reading(grace, |_| {}).await
    }

    /// [`Connection::close`], handing every element the server still sends before its
    /// `</stream:stream>` to `on_element` (messages in flight to a session that is closing).
    pub async fn close_reading(
        mut self,
        grace: Duration,
        mut on_element: impl FnMut(&str),
    ) -> bool {
        if self.send("</stream:stream>").await.is_err() {
            return false;
        }
        let closed = tokio::time::timeout(grace, async {
            loop {
                match self.next_event().await {
                    Ok(Event::End) => return true,
                    Ok(Event::Element(el)) => on_element(&el),
                    Ok(Event::Header(_)) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        let _ = tokio::time::timeout(grace, self.io.shutdown()).await;
        closed
    }
}

/// The failure for a `<stream:error>` element: its first child names the condition.
pub fn stream_error(el: &str) -> Failure {
    let condition = xml::children(el)
        .first()
        .map(|c| xml::name(c).to_string())
        .unwrap_or_else(|| "undefined-condition".into());
    Failure::StreamError(condition)
}
