//! The socket of a c2s connection: plain TCP until STARTTLS, then TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

thread_local! {
    /// One read buffer per worker thread, shared by its connections: a connection holds no
    /// buffer while it waits, which is most of its life.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The socket is being upgraded (taken out for the TLS handshake).
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is being upgraded")
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
            Transport::Detached => Poll::Ready(Err(detached())),
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
            Transport::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Detached => Poll::Ready(Ok(())),
        }
    }
}

impl Transport {
    /// Wait until the socket has something to read (or an error/EOF to report).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.readable().await,
            Transport::Tls(s) => s.get_ref().0.readable().await,
            Transport::Detached => Err(detached()),
        }
    }

    /// Read and discard what the socket holds, below TLS, without waiting. `Ok(None)`: nothing
    /// now; `Ok(Some(0))`: end of stream. For the linger after our closing tag: once rustls
    /// has queued its close_notify for a peer that is not reading, it stops reading records
    /// while the socket stays readable, so waiting for input through the TLS layer would
    /// wake at once, forever, and hold the thread every other connection on it needs.
    pub fn try_discard_raw(&mut self) -> io::Result<Option<usize>> {
        let tcp = match self {
            Transport::Plain(s) => &*s,
            Transport::Tls(s) => s.get_ref().0,
            Transport::Detached => return Err(detached()),
        };
        READ_BUFFER.with(|cell| match tcp.try_read(&mut cell.borrow_mut()[..]) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Whether a read of `n` bytes left nothing behind to read now: on plain TCP a read
    /// shorter than the buffer took all the kernel held (tokio then waits for the next
    /// readiness event). Under TLS rustls may hold decrypted or undecrypted bytes that no
    /// readiness event would announce, so the caller must read again.
    pub fn drained_by(&self, n: usize) -> bool {
        matches!(self, Transport::Plain(_)) && n < READ_CHUNK
    }

    /// Read what is available without waiting and hand it to `sink`. `Ok(None)`: nothing to
    /// read now (wait for [`Transport::readable`]); `Ok(Some(0))`: end of stream.
    pub fn try_read(&mut self, sink: impl FnOnce(&[u8])) -> io::Result<Option<usize>> {
        READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            let mut read_buf = ReadBuf::new(&mut buf[..]);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut *self).poll_read(&mut cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = read_buf.filled();
                    sink(filled);
                    Ok(Some(filled.len()))
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(None),
            }
        })
    }

    /// The TCP socket's descriptor (for [`unacked_bytes`]).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Transport::Plain(s) => Some(s.as_raw_fd()),
            Transport::Tls(s) => Some(s.get_ref().0.as_raw_fd()),
            Transport::Detached => None,
        }
    }
}

/// Bytes the kernel holds for this socket that the peer's TCP has not acknowledged yet (sent
/// or not): `SIOCOUTQ`. Once it reaches 0, every byte written so far is in the client's
/// kernel; only what the client application has not read from there can still be lost.
/// `Ok(None)`: the connection is no longer established (a reset empties the send queue, so
/// its 0 would mean nothing).
///
/// `fd` must be an open socket for the whole call: callers use the descriptor of a
/// connection that is alive, on the thread that owns it (see `SendQueue::set_socket`).
#[cfg(target_os = "linux")]
pub fn unacked_bytes(fd: std::os::fd::RawFd) -> io::Result<Option<usize>> {
    let mut unacked: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ on a TCP socket) writes one c_int through the pointer,
    // which points to a live c_int; `fd` is open (see above), and an fd that is not a
    // socket only makes ioctl fail, which is reported.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Asked after the count: a reset that came before it shows here as ENOTCONN (the
    // socket is in TCP_CLOSE), a graceful FIN from the client does not.
    // SAFETY: getpeername writes at most `len` bytes into `addr`, a live sockaddr_storage
    // (the largest address type), and the new length into `len`.
    let connected = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) == 0
    };
    if !connected {
        return Ok(None);
    }
    Ok(Some(usize::try_from(unacked).unwrap_or(0)))
}

/// Elsewhere the kernel is not asked: written counts as delivered.
#[cfg(not(target_os = "linux"))]
pub fn unacked_bytes(_fd: std::os::fd::RawFd) -> io::Result<Option<usize>> {
    Ok(Some(0))
}
