//! A bound listening socket (TCP, with a deep backlog), shared by every worker's accept loop:
//! the c2s and s2s listeners alike.

const LISTEN_BACKLOG: i32 = 4096;

/// A bound listening socket and whether it speaks TLS from the first byte.
pub struct Listener {
    pub socket: std::net::TcpListener,
    /// Direct TLS (XEP-0368) rather than STARTTLS.
    pub direct_tls: bool,
}

impl Listener {
    pub fn bind(addr: &str, direct_tls: bool) -> std::io::Result<Listener> {
        use socket2::{Domain, Socket, Type};
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}"))
        })?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        // std's default backlog (128) overflows during login storms; the kernel caps this
        // at net.core.somaxconn.
        socket.listen(LISTEN_BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(Listener {
            socket: socket.into(),
            direct_tls,
        })
    }
}
