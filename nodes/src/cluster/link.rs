//! NodeLink: the authenticated TCP connections between cluster nodes.
//!
//! Each node dials each peer once and sends its requests and pushes on that connection; the
//! peer answers requests on the same connection. So the frames from A to B keep their order
//! (a stanza for a session on B travels exactly one hop, in order). Frames are JSON.
//!
//! Both ends prove they hold the cluster secret (HMAC-SHA256 over both nonces; the acceptor
//! only after the dialer), so a stray process cannot join the cluster or inject stanzas, and
//! every frame after the handshake is sealed with ChaCha20-Poly1305 under keys derived from
//! the secret and both nonces, so nobody on the path reads, alters, replays or reorders them
//! (`wire.rs` has the details). A frame larger than `cluster.max_frame_bytes` is refused by
//! its sender (a request fails with `LinkError::TooLarge`, an answer is replaced by
//! `Reply::TooLarge`, a push is dropped and counted) and the link stays up; large frames
//! travel in sealed records of at most 64 KiB.
//!
//! Queues are bounded: a peer that is down or slow gets at most `QUEUE_FRAMES` frames queued;
//! beyond that pushes are dropped (and counted) and requests fail at once, so a dead peer
//! never grows memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::messages::{Frame, Push, Reply, Request};
use super::routing_table::NodeId;
pub use super::wire::LinkSecret;
use super::wire::{self, FrameReader, FrameWriter, Received, WireError};

/// Frames queued for one peer.
const QUEUE_FRAMES: usize = 65_536;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("node {0} is not connected")]
    NotConnected(NodeId),
    #[error("queue to node {0} is full")]
    QueueFull(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    #[error("connection to node {0} was lost")]
    Lost(NodeId),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// The request, or its answer, is larger than `cluster.max_frame_bytes`; it was not
    /// sent, and the link is still up.
    #[error("a frame to or from node {0} of {1} bytes exceeds cluster.max_frame_bytes")]
    TooLarge(NodeId, usize),
}

/// What a node does with what its peers send it.
pub trait LinkService: Send + Sync + 'static {
    /// Answer a request (Raft RPC, forwarded write, IM operation).
    fn request(
        self: Arc<Self>,
        from: NodeId,
        req: Request,
    ) -> impl std::future::Future<Output = Reply> + Send;
    /// Take a one-way push; called in the order the peer sent them.
    fn push(&self, from: NodeId, push: Push);
}

enum Outgoing {
    Request {
        body: Request,
        reply: oneshot::Sender<Result<Reply, LinkError>>,
    },
    Push(Push),
}

/// The outbound side of the link to one peer.
pub struct PeerLink {
    node: NodeId,
    addr: Mutex<String>,
    queue: mpsc::Sender<Outgoing>,
    connected: AtomicBool,
    /// When the peer last answered anything (for the failure detector).
    last_seen: Mutex<Option<Instant>>,
    dropped: AtomicU64,
    /// Cuts the dial loop's backoff short: the peer just connected to us, so it is back.
    redial: tokio::sync::Notify,
}

impl PeerLink {
    /// A link not connected yet, that has never heard from the peer.
    fn new(node: NodeId, addr: &str, queue: mpsc::Sender<Outgoing>) -> PeerLink {
        PeerLink {
            node,
            addr: Mutex::new(addr.to_string()),
            queue,
            connected: AtomicBool::new(false),
            last_seen: Mutex::new(None),
            dropped: AtomicU64::new(0),
            redial: tokio::sync::Notify::new(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How long since the peer last answered; `None` if it never has.
    pub fn silent_for(&self) -> Option<Duration> {
        self.last_seen
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    /// Frames waiting to be written to the peer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub async fn request(&self, body: Request, timeout: Duration) -> Result<Reply, LinkError> {
        if !self.is_connected() {
            return Err(LinkError::NotConnected(self.node));
        }
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Outgoing::Request { body, reply: tx })
            .map_err(|_| LinkError::QueueFull(self.node))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(LinkError::Lost(self.node)),
            Err(_) => Err(LinkError::Timeout(self.node)),
        }
    }

    /// Queue a one-way push; dropped (and counted) if the peer is down or the queue full.
    pub fn push(&self, push: Push) -> bool {
        if !self.is_connected() || self.queue.try_send(Outgoing::Push(push)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// The NodeLink limits from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    /// `cluster.max_frame_bytes`.
    pub max_frame_bytes: usize,
    /// `cluster.max_pending_handshakes`.
    pub max_pending_handshakes: usize,
}

/// Every peer link of this node, and the listener for theirs.
pub struct NodeLinks {
    me: NodeId,
    /// Links leave from this address (the node's advertised IP), so that a firewall sees
    /// which node a connection belongs to.
    source: Option<std::net::IpAddr>,
    secret: LinkSecret,
    /// `cluster.max_frame_bytes`: the largest frame sent or accepted.
    max_frame: usize,
    /// Inbound connections that have not finished the handshake
    /// (`cluster.max_pending_handshakes`); beyond it new ones are closed at once.
    handshakes: Arc<tokio::sync::Semaphore>,
    peers: Mutex<HashMap<NodeId, Arc<PeerLink>>>,
    runtime: tokio::runtime::Handle,
}

impl NodeLinks {
    /// Must be called inside the tokio runtime that will run the links.
    pub fn new(
        me: NodeId,
        advertise: &str,
        secret: LinkSecret,
        limits: LinkLimits,
    ) -> Arc<NodeLinks> {
        let source = advertise
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        Arc::new(NodeLinks {
            me,
            source,
            secret,
            max_frame: limits.max_frame_bytes,
            handshakes: Arc::new(tokio::sync::Semaphore::new(limits.max_pending_handshakes)),
            peers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// `cluster.max_frame_bytes`.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The link to `node`, dialling `addr` (and redialling it whenever it drops) if there is
    /// none yet. A changed address is taken on the next redial.
    pub fn peer(self: &Arc<Self>, node: NodeId, addr: &str) -> Arc<PeerLink> {
        let Ok(mut peers) = self.peers.lock() else {
            // A poisoned lock means a panic elsewhere; give a link that is never connected.
            return Arc::new(PeerLink::new(node, addr, mpsc::channel(1).0));
        };
        if let Some(p) = peers.get(&node) {
            if let Ok(mut a) = p.addr.lock() {
                if *a != addr {
                    *a = addr.to_string();
                }
            }
            return p.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let link = Arc::new(PeerLink::new(node, addr, tx));
        peers.insert(node, link.clone());
        self.runtime
            .spawn(dial_loop(self.clone(), link.clone(), rx));
        link
    }

    /// The link to `node` if one was made.
    pub fn existing(&self, node: NodeId) -> Option<Arc<PeerLink>> {
        self.peers.lock().ok()?.get(&node).cloned()
    }

    /// Forget a node that left the cluster (its dial loop ends).
    pub fn remove(&self, node: NodeId) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.remove(&node);
        }
    }

    pub fn all(&self) -> Vec<(NodeId, Arc<PeerLink>)> {
        self.peers
            .lock()
            .map(|p| p.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// Accept peers' links until the listener fails.
    pub async fn serve<S: LinkService>(self: Arc<Self>, listener: TcpListener, service: Arc<S>) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    // Connections that have not proven the secret yet are capped, so that
                    // strangers on the port cannot hold an unbounded number of tasks and
                    // buffers (each lives up to HANDSHAKE_TIMEOUT).
                    let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                        tracing::warn!(%addr,
                            "nodelink: too many connections in handshake (cluster.max_pending_handshakes); refused");
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (links, service) = (self.clone(), service.clone());
                    tokio::spawn(async move {
                        if let Err(e) = links.accepted(stream, addr, service, permit).await {
                            tracing::warn!(%addr, error = %e, "nodelink: inbound link closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "nodelink: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn accepted<S: LinkService>(
        self: Arc<Self>,
        stream: TcpStream,
        addr: SocketAddr,
        service: Arc<S>,
        handshake: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), WireError> {
        let (r, w) = stream.into_split();
        let (peer, mut r, mut w) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            wire::accept(
                BufReader::new(r),
                BufWriter::new(w),
                &self.secret,
                self.me,
                self.max_frame,
            ),
        )
        .await
        .map_err(|_| WireError::HandshakeTimeout)??;
        drop(handshake);
        tracing::info!(peer, %addr, "nodelink: peer connected");
        // A peer that connects to us is up: if our link to it is down, dial now rather than
        // at the end of a backoff of up to BACKOFF_MAX, during which what this node routes to
        // the peer's sessions would be dropped (a restarted node binds sessions at once).
        if let Some(link) = self.existing(peer).filter(|l| !l.is_connected()) {
            link.redial.notify_one();
        }

        // Replies can finish out of order (an IM request waits on storage while Raft
        // heartbeats keep coming), so one writer task takes them from a queue.
        let (reply_tx, mut reply_rx) = mpsc::channel::<Frame>(QUEUE_FRAMES);
        let writer = tokio::spawn(async move {
            while let Some(frame) = reply_rx.recv().await {
                if write_or_refuse(&mut w, peer, frame).await.is_err() {
                    break;
                }
                if reply_rx.is_empty() && w.flush().await.is_err() {
                    break;
                }
            }
        });
        let result = loop {
            let frame = match r.read_frame().await {
                Ok(Received::Frame(f)) => f,
                // Logged by the reader; a request skipped this way times out at its sender.
                Ok(Received::Skipped(bytes)) => {
                    tracing::debug!(peer, bytes, "nodelink: inbound frame skipped");
                    continue;
                }
                Err(e) => break Err(e),
            };
            match frame {
                Frame::Request { id, body } => {
                    let (service, tx) = (service.clone(), reply_tx.clone());
                    tokio::spawn(async move {
                        let body = service.request(peer, body).await;
                        let _ = tx.send(Frame::Reply { id, body }).await;
                    });
                }
                Frame::Push(p) => service.push(peer, p),
                _ => break Err(WireError::Handshake("unexpected frame after handshake")),
            }
        };
        writer.abort();
        result
    }
}

/// Write a reply frame; one too large for a frame is answered with `Reply::TooLarge` instead,
/// so the requester learns at once and the link stays up.
async fn write_or_refuse<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    peer: NodeId,
    frame: Frame,
) -> Result<(), WireError> {
    match w.encode(&frame) {
        Ok(bytes) => w.write_message(&bytes).await,
        Err(WireError::TooLarge(bytes)) => {
            let Frame::Reply { id, .. } = frame else {
                return Ok(());
            };
            tracing::warn!(
                peer,
                bytes,
                "nodelink: reply exceeds cluster.max_frame_bytes; answered with an error"
            );
            w.write_frame(&Frame::Reply {
                id,
                body: Reply::TooLarge { bytes },
            })
            .await
        }
        Err(e) => {
            tracing::warn!(peer, error = %e, "nodelink: reply could not be encoded; dropped");
            Ok(())
        }
    }
}

async fn dial_loop(links: Arc<NodeLinks>, link: Arc<PeerLink>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if links
            .existing(link.node)
            .is_none_or(|l| !Arc::ptr_eq(&l, &link))
        {
            return;
        }
        let addr = link.addr.lock().map(|a| a.clone()).unwrap_or_default();
        match dial(&links, link.node, &addr).await {
            Ok((r, w)) => {
                backoff = BACKOFF_MIN;
                tracing::info!(peer = link.node, %addr, "nodelink: connected to peer");
                link.connected.store(true, Ordering::Relaxed);
                if let Ok(mut t) = link.last_seen.lock() {
                    *t = Some(Instant::now());
                }
                run_link(&link, r, w, &mut rx).await;
                link.connected.store(false, Ordering::Relaxed);
                tracing::warn!(peer = link.node, "nodelink: link to peer lost");
            }
            Err(e) => {
                tracing::debug!(peer = link.node, %addr, error = %e, "nodelink: dial failed");
            }
        }
        // Whatever was queued while the link was down is for a connection that no longer
        // exists: requests fail (their senders see `Lost`), pushes are dropped.
        while let Ok(o) = rx.try_recv() {
            if let Outgoing::Push(_) = o {
                link.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(BACKOFF_MAX),
            _ = link.redial.notified() => backoff = BACKOFF_MIN,
        }
    }
}

type LinkReader = FrameReader<BufReader<tokio::net::tcp::OwnedReadHalf>>;
type LinkWriter = FrameWriter<BufWriter<tokio::net::tcp::OwnedWriteHalf>>;

async fn dial(
    links: &NodeLinks,
    node: NodeId,
    addr: &str,
) -> Result<(LinkReader, LinkWriter), WireError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or(WireError::Handshake("address does not resolve"))?;
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = links.source.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(target).await?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        wire::dial(
            BufReader::new(r),
            BufWriter::new(w),
            &links.secret,
            links.me,
            node,
            links.max_frame,
        )
        .await
    })
    .await
    .map_err(|_| WireError::HandshakeTimeout)?
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Reply, LinkError>>>>>;

async fn run_link(
    link: &Arc<PeerLink>,
    mut r: LinkReader,
    mut w: LinkWriter,
    rx: &mut mpsc::Receiver<Outgoing>,
) {
    let pending: Waiters = Arc::default();
    let reader_pending = pending.clone();
    let reader_link = link.clone();
    let mut reader = tokio::spawn(async move {
        while let Ok(received) = r.read_frame().await {
            if let Ok(mut t) = reader_link.last_seen.lock() {
                *t = Some(Instant::now());
            }
            if let Received::Frame(Frame::Reply { id, body }) = received {
                let waiter = reader_pending.lock().ok().and_then(|mut p| p.remove(&id));
                let answer = match body {
                    Reply::TooLarge { bytes } => Err(LinkError::TooLarge(reader_link.node, bytes)),
                    body => Ok(body),
                };
                if let Some(w) = waiter {
                    let _ = w.send(answer);
                }
            }
        }
    });
    let mut next_id = 0u64;
    loop {
        let out = tokio::select! {
            out = rx.recv() => out,
            _ = &mut reader => break,
        };
        let Some(out) = out else { break };
        // Encode before registering the waiter: a frame over the limit is refused here,
        // its requester told at once, and the link goes on.
        let (encoded, waiter) = match out {
            Outgoing::Request { body, reply } => {
                next_id += 1;
                let frame = Frame::Request { id: next_id, body };
                (w.encode(&frame), Some((next_id, reply)))
            }
            Outgoing::Push(p) => (w.encode(&Frame::Push(p)), None),
        };
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(e) => {
                let size = match e {
                    WireError::TooLarge(n) => n,
                    _ => 0,
                };
                tracing::warn!(
                    peer = link.node,
                    bytes = size,
                    error = %e,
                    "nodelink: frame exceeds cluster.max_frame_bytes or does not encode; not sent"
                );
                match waiter {
                    Some((_, reply)) => {
                        let _ = reply.send(Err(LinkError::TooLarge(link.node, size)));
                    }
                    None => {
                        link.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
        };
        if let Some((id, reply)) = waiter {
            if let Ok(mut p) = pending.lock() {
                p.insert(id, reply);
            }
        }
        if w.write_message(&bytes).await.is_err() {
            break;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
    // Dropping the waiters tells their requesters the link was lost.
    let waiters = pending.lock().map(|mut p| std::mem::take(&mut *p));
    drop(waiters);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `Ping` with `Pong`, and `Join` with an error string four times as long as the
    /// address it was given (a large answer on demand).
    struct Service;
    impl LinkService for Service {
        async fn request(self: Arc<Self>, _from: NodeId, req: Request) -> Reply {
            match req {
                Request::Join { addr, .. } => Reply::Done(Err("y".repeat(addr.len() * 4))),
                _ => Reply::Pong,
            }
        }
        fn push(&self, _from: NodeId, _push: Push) {}
    }

    const LIMIT: usize = 100_000;

    fn join(bytes: usize) -> Request {
        Request::Join {
            node: 9,
            addr: "x".repeat(bytes),
        }
    }

    /// Over real TCP: frames over `cluster.max_frame_bytes` fail alone, in either direction,
    /// with `TooLarge`, and the link stays up; frames over one record but under the limit
    /// cross in pieces.
    #[tokio::test]
    async fn oversized_frames_fail_alone_and_the_link_stays_up() {
        let secret = LinkSecret::new("link-test-secret-0123");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let limits = LinkLimits {
            max_frame_bytes: LIMIT,
            max_pending_handshakes: 4,
        };
        let acceptor = NodeLinks::new(2, &addr, secret.clone(), limits);
        tokio::spawn(acceptor.serve(listener, Arc::new(Service)));
        let dialer = NodeLinks::new(1, "127.0.0.1:0", secret, limits);
        let link = dialer.peer(2, &addr);
        for _ in 0..100 {
            if link.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(link.is_connected(), "the link never came up");
        let t = Duration::from_secs(5);
        assert!(matches!(
            link.request(Request::Ping, t).await,
            Ok(Reply::Pong)
        ));
        // A request over the limit: refused by its sender.
        let r = link.request(join(LIMIT + 1), t).await;
        assert!(
            matches!(r, Err(LinkError::TooLarge(2, n)) if n > LIMIT),
            "{r:?}"
        );
        // An answer over the limit: replaced by the acceptor, seen as TooLarge at once.
        let r = link.request(join(LIMIT / 3), t).await;
        assert!(
            matches!(r, Err(LinkError::TooLarge(2, n)) if n > LIMIT),
            "{r:?}"
        );
        // An answer over one record, under the limit: crosses whole, in two records.
        let r = link.request(join(20_000), t).await;
        assert!(
            matches!(&r, Ok(Reply::Done(Err(s))) if s.len() == 80_000 && s.len() > RECORD),
            "{r:?}"
        );
        // A push over the limit is dropped and counted.
        let before = link.dropped();
        assert!(link.push(Push::Deliver {
            to: proto::jid::Jid::parse("a@b/c").unwrap(),
            stanza: "z".repeat(LIMIT + 1),
        }));
        assert!(matches!(
            link.request(Request::Ping, t).await,
            Ok(Reply::Pong)
        ));
        assert_eq!(link.dropped(), before + 1);
        assert!(link.is_connected());
    }

    const RECORD: usize = super::wire::RECORD_BYTES;
}
