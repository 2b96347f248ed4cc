//! NodeLink: the authenticated TCP connections between cluster nodes.
//!
//! Each node dials each peer once and sends its requests and pushes on that connection; the
//! peer answers requests on the same connection. So the frames from A to B keep their order
//! (a stanza for a session on B travels exactly one hop, in order). Frames are a 4-byte
//! big-endian length and JSON.
//!
//! Both ends prove they hold the cluster secret (HMAC-SHA256 over both nonces), so a stray
//! process cannot join the cluster or inject stanzas. The link does not encrypt: run it on a
//! private network (see README, "Cluster").
//!
//! Queues are bounded: a peer that is down or slow gets at most `QUEUE_FRAMES` frames queued;
//! beyond that pushes are dropped (and counted) and requests fail at once, so a dead peer
//! never grows memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::messages::{Frame, Push, Reply, Request};
use super::routing_table::NodeId;

/// Frames queued for one peer.
const QUEUE_FRAMES: usize = 65_536;
/// Largest frame accepted (snapshot chunks are the largest; openraft sends 3 MiB chunks).
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
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
}

#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("handshake timed out")]
    HandshakeTimeout,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Ok(serde_json::from_slice(&buf)?)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let bytes = serde_json::to_vec(frame)?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    w.write_u32(bytes.len() as u32).await?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// The shared secret and the proofs made with it.
#[derive(Clone)]
pub struct LinkSecret(Arc<Vec<u8>>);

impl LinkSecret {
    pub fn new(secret: &str) -> Self {
        LinkSecret(Arc::new(secret.as_bytes().to_vec()))
    }

    fn proof(&self, role: &str, dialer: NodeId, acceptor: NodeId, n1: &str, n2: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; this branch cannot be reached.
            return String::new();
        };
        mac.update(format!("switchboard-nodelink {role} {dialer} {acceptor} {n1} {n2}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    fn verify(
        &self,
        role: &str,
        dialer: NodeId,
        acceptor: NodeId,
        n1: &str,
        n2: &str,
        proof: &str,
    ) -> bool {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return false;
        };
        mac.update(format!("switchboard-nodelink {role} {dialer} {acceptor} {n1} {n2}").as_bytes());
        let Some(bytes) = unhex(proof) else {
            return false;
        };
        mac.verify_slice(&bytes).is_ok()
    }
}

fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
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
        reply: oneshot::Sender<Reply>,
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
}

impl PeerLink {
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
            Ok(Ok(reply)) => Ok(reply),
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

/// Every peer link of this node, and the listener for theirs.
pub struct NodeLinks {
    me: NodeId,
    /// Links leave from this address (the node's advertised IP), so that a firewall sees
    /// which node a connection belongs to.
    source: Option<std::net::IpAddr>,
    secret: LinkSecret,
    peers: Mutex<HashMap<NodeId, Arc<PeerLink>>>,
    runtime: tokio::runtime::Handle,
}

impl NodeLinks {
    /// Must be called inside the tokio runtime that will run the links.
    pub fn new(me: NodeId, advertise: &str, secret: LinkSecret) -> Arc<NodeLinks> {
        let source = advertise
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        Arc::new(NodeLinks {
            me,
            source,
            secret,
            peers: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The link to `node`, dialling `addr` (and redialling it whenever it drops) if there is
    /// none yet. A changed address is taken on the next redial.
    pub fn peer(self: &Arc<Self>, node: NodeId, addr: &str) -> Arc<PeerLink> {
        let Ok(mut peers) = self.peers.lock() else {
            // A poisoned lock means a panic elsewhere; give a link that is never connected.
            return Arc::new(PeerLink {
                node,
                addr: Mutex::new(addr.to_string()),
                queue: mpsc::channel(1).0,
                connected: AtomicBool::new(false),
                last_seen: Mutex::new(None),
                dropped: AtomicU64::new(0),
            });
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
        let link = Arc::new(PeerLink {
            node,
            addr: Mutex::new(addr.to_string()),
            queue: tx,
            connected: AtomicBool::new(false),
            last_seen: Mutex::new(None),
            dropped: AtomicU64::new(0),
        });
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
                    let _ = stream.set_nodelay(true);
                    let (links, service) = (self.clone(), service.clone());
                    tokio::spawn(async move {
                        if let Err(e) = links.accepted(stream, addr, service).await {
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
    ) -> Result<(), WireError> {
        let (r, w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut w = BufWriter::new(w);
        let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let Frame::Hello { node, nonce: n1 } = read_frame(&mut r).await? else {
                return Err(WireError::Handshake("expected Hello"));
            };
            let n2 = nonce();
            let proof = self.secret.proof("acceptor", node, self.me, &n1, &n2);
            write_frame(
                &mut w,
                &Frame::HelloAck {
                    node: self.me,
                    nonce: n2.clone(),
                    proof,
                },
            )
            .await?;
            w.flush().await?;
            let Frame::Proof { proof } = read_frame(&mut r).await? else {
                return Err(WireError::Handshake("expected Proof"));
            };
            if !self
                .secret
                .verify("dialer", node, self.me, &n1, &n2, &proof)
            {
                return Err(WireError::Handshake("wrong cluster secret"));
            }
            Ok(node)
        })
        .await
        .map_err(|_| WireError::HandshakeTimeout)??;
        tracing::info!(peer, %addr, "nodelink: peer connected");

        // Replies can finish out of order (an IM request waits on storage while Raft
        // heartbeats keep coming), so one writer task takes them from a queue.
        let (reply_tx, mut reply_rx) = mpsc::channel::<Frame>(QUEUE_FRAMES);
        let writer = tokio::spawn(async move {
            while let Some(frame) = reply_rx.recv().await {
                if write_frame(&mut w, &frame).await.is_err() {
                    break;
                }
                if reply_rx.is_empty() && w.flush().await.is_err() {
                    break;
                }
            }
        });
        let result = loop {
            let frame = match read_frame(&mut r).await {
                Ok(f) => f,
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
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

type Halves = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    BufWriter<tokio::net::tcp::OwnedWriteHalf>,
);

async fn dial(links: &NodeLinks, node: NodeId, addr: &str) -> Result<Halves, WireError> {
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
        let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
        let n1 = nonce();
        write_frame(
            &mut w,
            &Frame::Hello {
                node: links.me,
                nonce: n1.clone(),
            },
        )
        .await?;
        w.flush().await?;
        let Frame::HelloAck {
            node: peer,
            nonce: n2,
            proof,
        } = read_frame(&mut r).await?
        else {
            return Err(WireError::Handshake("expected HelloAck"));
        };
        if peer != node {
            return Err(WireError::Handshake("peer has another node id"));
        }
        if !links
            .secret
            .verify("acceptor", links.me, peer, &n1, &n2, &proof)
        {
            return Err(WireError::Handshake(
                "peer does not hold the cluster secret",
            ));
        }
        let proof = links.secret.proof("dialer", links.me, peer, &n1, &n2);
        write_frame(&mut w, &Frame::Proof { proof }).await?;
        w.flush().await?;
        Ok((r, w))
    })
    .await
    .map_err(|_| WireError::HandshakeTimeout)?
}

async fn run_link(
    link: &Arc<PeerLink>,
    mut r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut w: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    rx: &mut mpsc::Receiver<Outgoing>,
) {
    let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Arc::default();
    let reader_pending = pending.clone();
    let reader_link = link.clone();
    let mut reader = tokio::spawn(async move {
        while let Ok(frame) = read_frame(&mut r).await {
            if let Ok(mut t) = reader_link.last_seen.lock() {
                *t = Some(Instant::now());
            }
            if let Frame::Reply { id, body } = frame {
                let waiter = reader_pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(body);
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
        let frame = match out {
            Outgoing::Request { body, reply } => {
                next_id += 1;
                if let Ok(mut p) = pending.lock() {
                    p.insert(next_id, reply);
                }
                Frame::Request { id: next_id, body }
            }
            Outgoing::Push(p) => Frame::Push(p),
        };
        if write_frame(&mut w, &frame).await.is_err() {
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
