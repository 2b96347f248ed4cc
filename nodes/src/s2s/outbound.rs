//! One outbound s2s link: the task that owns the socket to a remote domain for one of our
//! domains. It resolves and connects, negotiates (STARTTLS, then SASL EXTERNAL or dialback)
//! while queueing the stanzas that arrive, sends them in order once authenticated, carries
//! dialback verifications for inbound streams, and closes when idle. If the link cannot be
//! established, the queued stanzas bounce.
//!
//! What the manager hands the task is counted in the link's [`LinkQueue`] (bytes of the
//! element trees) until it has become bytes on their way to the socket: while the task is
//! blocked writing to a peer that reads slowly, the commands pile up in its channel, and
//! the manager bounces beyond `s2s.max_queue_bytes` instead of buffering without end.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition, StreamError};
use proto::jid::Jid;
use proto::s2s::{Action, DialbackOutcome, S2sOutbound};
use proto::stream::{StreamEvent, StreamReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::rustls::pki_types::ServerName;

use super::dns::{self, Target};
use super::io::S2sIo;
use super::limits::{self, element_weight, LinkQueue};
use super::manager::S2sManager;
use super::messages::{LinkClosed, LinkUp};
use super::S2sShared;
use crate::router::messages::{RouteStanza, SendRemote};

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the manager hands a link.
pub enum LinkCmd {
    Stanza(Element),
    Verify {
        id: String,
        key: String,
        reply: oneshot::Sender<DialbackOutcome>,
    },
}

impl LinkCmd {
    /// What the command is counted as in the link's queue.
    pub fn weight(&self) -> usize {
        match self {
            LinkCmd::Stanza(stanza) => element_weight(stanza),
            LinkCmd::Verify { id, key, .. } => verify_weight(id, key),
        }
    }
}

fn verify_weight(id: &str, key: &str) -> usize {
    128 + id.len() + key.len()
}

/// Why a link ended.
#[derive(Debug)]
enum End {
    /// Closed cleanly (idle, shutdown, or the peer closed an established link).
    Closed,
    /// Could not reach or authenticate with the peer.
    Failed(String),
    /// The peer did not get through negotiation in time.
    TimedOut,
}

struct Link {
    gauge: crate::metrics::GaugeGuard,
    shared: Arc<S2sShared>,
    local: String,
    remote: String,
    /// Stanzas waiting for authentication, with their weight in `bytes`.
    queue: VecDeque<(Element, usize)>,
    /// Everything the manager handed this link and it has not written yet.
    bytes: Arc<LinkQueue>,
    manager: Addr<S2sManager>,
    generation: u64,
    /// Dialback verifications before the stream exists: (id, key).
    early_verifies: Vec<(String, String)>,
    waiters: HashMap<String, Vec<oneshot::Sender<DialbackOutcome>>>,
    ready: bool,
    last_activity: Instant,
}

/// Run the link for (`local`, `remote`) until it ends, then tell the manager.
pub async fn run(
    shared: Arc<S2sShared>,
    local: String,
    remote: String,
    mut rx: mpsc::UnboundedReceiver<LinkCmd>,
    bytes: Arc<LinkQueue>,
    manager: Addr<S2sManager>,
    generation: u64,
) {
    let mut link = Link {
        gauge: crate::metrics::s2s_link("outbound"),
        shared,
        local,
        remote,
        queue: VecDeque::new(),
        bytes,
        manager: manager.clone(),
        generation,
        early_verifies: Vec::new(),
        waiters: HashMap::new(),
        ready: false,
        last_activity: Instant::now(),
    };
    let end = link.drive(&mut rx).await;
    let was_ready = link.ready;
    match &end {
        End::Closed => {
            tracing::info!(local = %link.local, remote = %link.remote, "s2s link closed")
        }
        End::Failed(why) => {
            tracing::warn!(local = %link.local, remote = %link.remote, reason = %why, "s2s link failed")
        }
        End::TimedOut => {
            tracing::warn!(local = %link.local, remote = %link.remote, "s2s link timed out during negotiation")
        }
    }
    let cond = match end {
        End::TimedOut => StanzaErrorCondition::RemoteServerTimeout,
        _ => StanzaErrorCondition::RemoteServerNotFound,
    };
    // Nothing more is carried on this link: the peer's inbound streams may read again.
    link.bytes.close();
    for (stanza, _) in link.queue.drain(..) {
        bounce(&link.shared, &stanza, cond);
    }
    manager.do_send(LinkClosed {
        local: link.local.clone(),
        remote: link.remote.clone(),
        generation,
        failed: !was_ready,
    });
    // Stanzas that raced with the end: after an established link closed they get a new
    // link (the manager has forgotten this one by the time it reads them); otherwise the
    // peer is unreachable and they bounce.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let LinkCmd::Stanza(stanza) = cmd {
            let addrs = (
                stanza.attr("from").and_then(|f| Jid::parse(f).ok()),
                stanza.attr("to").and_then(|t| Jid::parse(t).ok()),
            );
            match addrs {
                (Some(from), Some(to)) if was_ready => {
                    manager.do_send(SendRemote { from, to, stanza })
                }
                _ => bounce(&link.shared, &stanza, cond),
            }
        }
    }
}

/// Send the sender an error for `stanza` (messages and IQ requests; presence to an
/// unreachable server is dropped, RFC 6121 §4.4.3).
pub(super) fn bounce(shared: &S2sShared, stanza: &Element, cond: StanzaErrorCondition) {
    let bounces = match stanza.name.as_str() {
        "message" => stanza.attr("type") != Some("error"),
        "iq" => matches!(stanza.attr("type"), Some("get" | "set")),
        _ => false,
    };
    if !bounces {
        return;
    }
    let reply = stanza_error_reply(stanza, cond, None);
    let from = reply.attr("from").and_then(|f| Jid::parse(f).ok());
    let to = reply.attr("to").and_then(|t| Jid::parse(t).ok());
    if let (Some(from), Some(to)) = (from, to) {
        shared.router.do_send(RouteStanza {
            from,
            to,
            stanza: reply,
        });
    }
}

/// A connected socket, and whether it is TLS already with a verified certificate.
struct Connected {
    io: S2sIo,
    /// `Some(cert_ok)` for direct TLS.
    direct_tls: Option<bool>,
}

async fn connect(shared: Arc<S2sShared>, remote: String) -> Result<Connected, End> {
    let targets = dns::resolve(&remote, &shared.settings.routes, shared.resolver.as_ref()).await;
    let mut last_error = format!("no address for {remote}");
    let mut timed_out = false;
    let per_target = Duration::from_secs(shared.settings.connect_timeout_secs);
    for target in targets {
        match timeout(per_target, connect_one(&shared, &remote, &target)).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => {
                tracing::debug!(%remote, host = %target.host, port = target.port, error = %e, "s2s connect failed");
                last_error = format!("{}:{}: {e}", target.host, target.port);
            }
            Err(_) => {
                timed_out = true;
                last_error = format!("{}:{}: connect timed out", target.host, target.port);
            }
        }
    }
    if timed_out {
        tracing::warn!(%remote, reason = %last_error, "s2s connect timed out");
        return Err(End::TimedOut);
    }
    Err(End::Failed(last_error))
}

async fn connect_one(
    shared: &S2sShared,
    remote: &str,
    target: &Target,
) -> std::io::Result<Connected> {
    let mut addrs = dns::addresses(&target.host, target.port, shared.resolver.as_ref()).await;
    if addrs.is_empty() && !target.static_route {
        // The system's resolver (it also reads /etc/hosts): its answers are checked too.
        addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await?
            .collect();
    }
    let tcp = if addrs.is_empty() {
        TcpStream::connect((target.host.as_str(), target.port)).await?
    } else {
        match dns::permitted(target, addrs, shared.settings.allow_private_targets) {
            Ok(addrs) => TcpStream::connect(&addrs[..]).await?,
            Err(refused) => {
                limits::count("private_target");
                tracing::warn!(
                    %remote,
                    host = %target.host,
                    addresses = ?refused,
                    "s2s: refusing to connect to non-global addresses learned from DNS \
                     (s2s.allow_private_targets is off; a static route would be allowed)"
                );
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{} resolves only to non-global addresses {refused:?}, refused by policy",
                        target.host
                    ),
                ));
            }
        }
    };
    let _ = tcp.set_nodelay(true);
    if !target.direct_tls {
        return Ok(Connected {
            io: S2sIo::Plain(tcp),
            direct_tls: None,
        });
    }
    let (tls, cert_ok) = client_handshake(shared, remote, tcp, true).await?;
    Ok(Connected {
        io: S2sIo::Client(Box::new(tls)),
        direct_tls: Some(cert_ok),
    })
}

/// TLS as client towards `remote`; the certificate is checked afterwards (`cert_ok`).
async fn client_handshake(
    shared: &S2sShared,
    remote: &str,
    tcp: TcpStream,
    direct: bool,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, bool)> {
    let name = ServerName::try_from(remote.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let connector = if direct {
        &shared.direct_connector
    } else {
        &shared.connector
    };
    let tls = connector.connect(name, tcp).await?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let cert_ok = shared.identity.verifies(&certs, remote);
    tracing::debug!(remote, cert_ok, "s2s TLS established (client)");
    Ok((tls, cert_ok))
}

impl Link {
    async fn drive(&mut self, rx: &mut mpsc::UnboundedReceiver<LinkCmd>) -> End {
        let deadline = Instant::now() + Duration::from_secs(self.shared.settings.auth_timeout_secs);
        let mut shutdown = self.shared.shutdown.clone();
        // 1. Resolve and connect, queueing what arrives meanwhile.
        let connecting = connect(self.shared.clone(), self.remote.clone());
        tokio::pin!(connecting);
        let connected = loop {
            tokio::select! {
                r = &mut connecting => break r,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.early_cmd(cmd),
                    None => return End::Closed,
                },
                _ = sleep_until(deadline) => return End::TimedOut,
                _ = shutdown.changed() => return End::Closed,
            }
        };
        let Connected { io, direct_tls } = match connected {
            Ok(c) => c,
            Err(end) => return end,
        };
        let mut stream = Stream {
            io,
            reader: StreamReader::new(self.shared.limits(), proto::ns::SERVER),
            neg: S2sOutbound::new(
                self.shared.policy.clone(),
                &self.local,
                &self.remote,
                direct_tls,
            ),
        };
        let mut actions: VecDeque<Action> = stream.neg.start().into();
        for (id, key) in std::mem::take(&mut self.early_verifies) {
            actions.extend(stream.neg.verify(&id, &key));
        }
        // 2. Negotiate, then carry stanzas until idle, closed or shut down.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(action) = actions.pop_front() {
                match self.perform(&mut stream, action).await {
                    Ok(more) => {
                        for a in more.into_iter().rev() {
                            actions.push_front(a);
                        }
                    }
                    Err(end) => {
                        let _ = timeout(Duration::from_secs(1), stream.io.shutdown()).await;
                        return end;
                    }
                }
            }
            let wake_at = if self.ready {
                self.last_activity + Duration::from_secs(self.shared.settings.idle_timeout_secs)
            } else {
                deadline
            };
            tokio::select! {
                r = stream.io.read(&mut buf) => match r {
                    Ok(0) => {
                        return if self.ready {
                            End::Closed
                        } else {
                            End::Failed("the peer closed the connection during negotiation".into())
                        };
                    }
                    Ok(n) => {
                        stream.reader.feed(&buf[..n]);
                        match self.read_events(&mut stream).await {
                            Ok(()) => {}
                            Err(end) => return end,
                        }
                    }
                    Err(e) => {
                        return if self.ready {
                            tracing::debug!(remote = %self.remote, error = %e, "s2s link lost");
                            End::Closed
                        } else {
                            End::Failed(e.to_string())
                        };
                    }
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => actions.extend(self.cmd(&mut stream, cmd)),
                    None => actions.extend(stream.neg.close()),
                },
                _ = sleep_until(wake_at) => {
                    if !self.ready {
                        return End::TimedOut;
                    }
                    tracing::debug!(local = %self.local, remote = %self.remote, "s2s link idle");
                    actions.extend(stream.neg.close());
                }
                _ = shutdown.changed() => {
                    actions.extend(stream.neg.close());
                }
            }
        }
    }

    /// Feed complete events to the negotiation, performing actions as they come (a STARTTLS
    /// or SASL restart replaces the reader).
    async fn read_events(&mut self, stream: &mut Stream) -> Result<(), End> {
        loop {
            let event = match stream.reader.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let mut actions: VecDeque<Action> = stream.neg.fail(e.to_stream_error()).into();
                    while let Some(a) = actions.pop_front() {
                        self.perform(stream, a).await?;
                    }
                    return Err(End::Failed(format!("stream from peer: {e}")));
                }
            };
            let mut actions: VecDeque<Action> = match event {
                StreamEvent::Header(h) => stream.neg.on_header(&h),
                StreamEvent::Element(el, _) => stream.neg.on_element(el),
                StreamEvent::Keepalive => Vec::new(),
                StreamEvent::Close => stream.neg.on_close(),
            }
            .into();
            while let Some(action) = actions.pop_front() {
                let more = self.perform(stream, action).await?;
                for a in more.into_iter().rev() {
                    actions.push_front(a);
                }
            }
        }
    }

    fn early_cmd(&mut self, cmd: LinkCmd) {
        match cmd {
            LinkCmd::Stanza(stanza) => self.enqueue(stanza),
            LinkCmd::Verify { id, key, reply } => {
                self.bytes.release(verify_weight(&id, &key));
                self.waiters.entry(id.clone()).or_default().push(reply);
                self.early_verifies.push((id, key));
            }
        }
    }

    /// Keep `stanza` (its weight stays reserved) until the link is authenticated.
    fn enqueue(&mut self, stanza: Element) {
        let weight = element_weight(&stanza);
        if self.queue.len() >= self.shared.settings.max_queue {
            self.bytes.release(weight);
            limits::count("link_queue_stanzas");
            bounce(
                &self.shared,
                &stanza,
                StanzaErrorCondition::ResourceConstraint,
            );
            return;
        }
        self.queue.push_back((stanza, weight));
    }

    fn cmd(&mut self, stream: &mut Stream, cmd: LinkCmd) -> Vec<Action> {
        match cmd {
            LinkCmd::Stanza(stanza) => {
                if self.ready {
                    self.last_activity = Instant::now();
                    let bytes = stream.neg.stanza(&stanza);
                    // From here it is one write in progress, no longer a queued stanza.
                    self.bytes.release(element_weight(&stanza));
                    vec![Action::Send(bytes)]
                } else {
                    self.enqueue(stanza);
                    Vec::new()
                }
            }
            LinkCmd::Verify { id, key, reply } => {
                self.bytes.release(verify_weight(&id, &key));
                self.waiters.entry(id.clone()).or_default().push(reply);
                stream.neg.verify(&id, &key)
            }
        }
    }

    /// Carry out one action; `Ok` holds follow-up actions to perform first.
    async fn perform(&mut self, stream: &mut Stream, action: Action) -> Result<Vec<Action>, End> {
        match action {
            Action::Send(bytes) => {
                write(&mut stream.io, &bytes).await?;
                Ok(Vec::new())
            }
            Action::StartTls => {
                let S2sIo::Plain(tcp) = std::mem::replace(&mut stream.io, S2sIo::Detached) else {
                    return Err(End::Failed("STARTTLS on a TLS stream".into()));
                };
                let handshake = timeout(
                    Duration::from_secs(self.shared.settings.connect_timeout_secs),
                    client_handshake(&self.shared, &self.remote, tcp, false),
                );
                let (tls, cert_ok) = match handshake.await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(End::Failed(format!("TLS handshake: {e}"))),
                    Err(_) => return Err(End::TimedOut),
                };
                stream.io = S2sIo::Client(Box::new(tls));
                stream.reader = StreamReader::new(self.shared.limits(), proto::ns::SERVER);
                Ok(stream.neg.tls_established(cert_ok))
            }
            Action::Restart => {
                stream.reader = StreamReader::new(self.shared.limits(), proto::ns::SERVER);
                Ok(Vec::new())
            }
            Action::Authenticated { method, .. } => {
                self.gauge.set(1, "authenticated");
                crate::metrics::METRICS
                    .s2s_authentications
                    .with_label_values(&["outbound", method.as_str()])
                    .inc();
                tracing::info!(
                    local = %self.local,
                    remote = %self.remote,
                    method = method.as_str(),
                    tls = stream.neg.is_secured(),
                    "s2s outbound link authenticated"
                );
                Ok(Vec::new())
            }
            Action::Ready => {
                self.ready = true;
                self.last_activity = Instant::now();
                self.manager.do_send(LinkUp {
                    generation: self.generation,
                });
                let mut out = Vec::new();
                let mut weight = 0;
                for (stanza, w) in self.queue.drain(..) {
                    out.extend(stream.neg.stanza(&stanza));
                    weight += w;
                }
                self.bytes.release(weight);
                if !out.is_empty() {
                    write(&mut stream.io, &out).await?;
                }
                Ok(Vec::new())
            }
            Action::VerifyResult { id, valid } => {
                let outcome = if valid {
                    DialbackOutcome::Valid
                } else {
                    DialbackOutcome::Invalid
                };
                for reply in self.waiters.remove(&id).unwrap_or_default() {
                    let _ = reply.send(outcome);
                }
                Ok(Vec::new())
            }
            Action::Close { error } => Err(match error {
                None => End::Closed,
                Some(e) => End::Failed(describe(&e)),
            }),
            // Inbound-only actions.
            Action::Stanza { .. }
            | Action::VerifyDialback { .. }
            | Action::DialbackRefused { .. } => Ok(Vec::new()),
        }
    }
}

struct Stream {
    io: S2sIo,
    reader: StreamReader,
    neg: S2sOutbound,
}

async fn write(io: &mut S2sIo, bytes: &[u8]) -> Result<(), End> {
    let r = timeout(WRITE_TIMEOUT, async {
        io.write_all(bytes).await?;
        io.flush().await
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Failed(format!("write: {e}"))),
        Err(_) => Err(End::Failed("write timed out".into())),
    }
}

pub(super) fn describe(e: &StreamError) -> String {
    match &e.text {
        Some(t) => format!("{}: {t}", e.condition.as_str()),
        None => e.condition.as_str().to_string(),
    }
}
