//! The socket of an s2s stream: plain TCP until STARTTLS, then TLS as server (inbound) or
//! client (outbound).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum S2sIo {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Taken out for the TLS handshake.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is being upgraded")
}

impl AsyncRead for S2sIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            S2sIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            S2sIo::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            S2sIo::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            S2sIo::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for S2sIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            S2sIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            S2sIo::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            S2sIo::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            S2sIo::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            S2sIo::Plain(s) => Pin::new(s).poll_flush(cx),
            S2sIo::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            S2sIo::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            S2sIo::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            S2sIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            S2sIo::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            S2sIo::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            S2sIo::Detached => Poll::Ready(Ok(())),
        }
    }
}
