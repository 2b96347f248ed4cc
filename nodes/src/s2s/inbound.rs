//! One inbound s2s connection: the task that owns the socket a peer opened to us. It runs
//! the receiving side of the negotiation (STARTTLS, SASL EXTERNAL, dialback with the
//! verification sent through our outbound link to the peer's authoritative server), answers
//! `<db:verify/>` for keys we issued, and passes stanzas from authenticated domains to the
//! Router.
//!
//! Each stream holds a place counted by `s2s.max_inbound_connections` (in total and per
//! source address); a connection beyond it gets a stream error and is closed ([`refuse`]).
//! While our outbound link to a domain this stream speaks for is full, the stream is not
//! read (`limits::Backpressure`): the peer is slowed down by TCP instead of making us queue
//! the answers to what it sends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::jid::Jid;
use proto::s2s::{Action, CertCheck, DialbackOutcome, S2sInbound};
use proto::stream::{StreamEvent, StreamReader};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};

use super::io::S2sIo;
use super::limits;
use super::manager::S2sManager;
use super::messages::VerifyDialback;
use super::outbound::describe;
use super::S2sShared;
use crate::admission::{ConnectionPermit, ConnectionRefusal};
use crate::modules::{IqOutcome, IqRequest};
use crate::router::messages::{RouteStanza, SendRemote};

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// While paused by backpressure, look again at least this often.
const PAUSE_RECHECK: Duration = Duration::from_secs(1);

/// Answer a connection beyond the inbound caps with a stream error (RFC 6120 §4.9.3.18
/// `<resource-constraint/>` for the total, §4.9.3.14 `<policy-violation/>` for one
/// address) and close it. Our header goes first, as the stream error needs one (§4.9.1.1);
/// on the direct-TLS listener the connection is just closed (a TLS handshake would cost
/// more than the peer's connection). `admission::refuse` writes it, bounded in time and in
/// refusals at once.
pub async fn refuse(
    tcp: TcpStream,
    shared: Arc<S2sShared>,
    direct_tls: bool,
    refusal: ConnectionRefusal,
) {
    if direct_tls {
        return;
    }
    let error = refusal.stream_error("server-to-server");
    let from = shared
        .policy
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or("");
    let id = format!("{:016x}", rand::thread_rng().gen::<u64>());
    let mut out = proto::s2s::header_bytes(from, None, Some(&id));
    out.extend_from_slice(&error.to_bytes());
    out.extend_from_slice(proto::stream::CLOSE);
    crate::admission::refuse(tcp, out).await;
}

/// A dialback verification that came back: (originating, receiving, outcome).
type Verified = (String, String, DialbackOutcome);

fn cert_check<IO>(shared: &Arc<S2sShared>, tls: &tokio_rustls::server::TlsStream<IO>) -> CertCheck {
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let shared = shared.clone();
    Box::new(move |domain: &str| shared.identity.verifies(&chain, domain))
}

/// Serve one accepted connection until it closes.
pub async fn serve(
    tcp: TcpStream,
    shared: Arc<S2sShared>,
    manager: Addr<S2sManager>,
    direct_tls: bool,
    permit: ConnectionPermit,
) {
    // Held until the connection is gone.
    let _permit = permit;
    let peer = tcp.peer_addr().ok();
    let _ = tcp.set_nodelay(true);
    let auth_timeout = Duration::from_secs(shared.settings.auth_timeout_secs);
    let (io, check) = if direct_tls {
        match timeout(auth_timeout, shared.direct_acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let check = cert_check(&shared, &tls);
                (S2sIo::Server(Box::new(tls)), Some(check))
            }
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "s2s TLS handshake failed");
                return;
            }
            Err(_) => return,
        }
    } else {
        (S2sIo::Plain(tcp), None)
    };
    let mut conn = Inbound {
        neg: S2sInbound::new(shared.policy.clone(), check),
        reader: StreamReader::new(shared.limits(), proto::ns::SERVER),
        io,
        shared,
        manager,
        peer,
        gauge: crate::metrics::s2s_link("inbound"),
        dialback_refused: 0,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let end = conn.run(auth_timeout, &tx, &mut rx).await;
    let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    match end {
        Some(e) => tracing::warn!(
            ?peer,
            condition = e.condition.as_str(),
            reason = %describe(&e),
            "s2s inbound stream closed with an error"
        ),
        None => tracing::debug!(?peer, "s2s inbound stream closed"),
    }
}

struct Inbound {
    shared: Arc<S2sShared>,
    manager: Addr<S2sManager>,
    neg: S2sInbound,
    reader: StreamReader,
    io: S2sIo,
    peer: Option<std::net::SocketAddr>,
    gauge: crate::metrics::GaugeGuard,
    /// `<db:result/>` requests refused for too many pending verifications.
    dialback_refused: u64,
}

impl Inbound {
    /// An IQ request from a remote entity to one of our domains (XEP-0199 s2s ping, disco,
    /// version): answered by the same handlers as a client's, the reply sent over our
    /// outbound link to the requester's domain.
    fn server_iq(&self, from: Jid, to: Jid, iq: &Element) {
        let reply = match iq.children().next() {
            None => stanza_error_reply(iq, StanzaErrorCondition::BadRequest, None),
            Some(payload) => {
                let req = IqRequest {
                    to: &to,
                    is_set: iq.attr("type") == Some("set"),
                    payload,
                };
                match self.shared.modules.handle_iq(&req) {
                    Some(IqOutcome::Result(payload)) => {
                        let mut reply = Element::new("iq", proto::ns::CLIENT)
                            .with_attr("type", "result")
                            .with_attr("id", iq.attr("id").unwrap_or_default())
                            .with_attr("from", to.to_string())
                            .with_attr("to", from.to_string());
                        if let Some(p) = payload {
                            reply = reply.with_child(p);
                        }
                        reply
                    }
                    Some(IqOutcome::Error(cond)) => stanza_error_reply(iq, cond, None),
                    // Stateless server IQs answer with a result alone.
                    Some(IqOutcome::ResultAfter { .. }) | None => {
                        stanza_error_reply(iq, StanzaErrorCondition::ServiceUnavailable, None)
                    }
                }
            }
        };
        self.manager.do_send(SendRemote {
            from: to,
            to: from,
            stanza: reply,
        });
    }

    /// `Some(error)`: the stream ended with this stream error (ours or the peer's).
    async fn run(
        &mut self,
        auth_timeout: Duration,
        tx: &mpsc::UnboundedSender<Verified>,
        rx: &mut mpsc::UnboundedReceiver<Verified>,
    ) -> Option<StreamError> {
        let auth_deadline = Instant::now() + auth_timeout;
        // Twice the outbound idle time: the initiating side normally closes first, so a
        // stanza it sends never meets a stream we are closing under it.
        let idle = Duration::from_secs(self.shared.settings.idle_timeout_secs.saturating_mul(2));
        let mut last_activity = Instant::now();
        let mut shutdown = self.shared.shutdown.clone();
        let mut buf = vec![0u8; 16 * 1024];
        let mut was_paused = false;
        loop {
            let wake_at = if self.neg.is_authenticated() {
                last_activity + idle
            } else {
                auth_deadline
            };
            // Subscribe before looking, so that a relief in between wakes us.
            let mut pressure = self.shared.backpressure.subscribe();
            let paused = self
                .shared
                .backpressure
                .is_congested(self.neg.peer_domains());
            if paused != was_paused {
                was_paused = paused;
                tracing::info!(
                    peer = ?self.peer,
                    domains = ?self.neg.peer_domains().collect::<Vec<_>>(),
                    "s2s inbound stream {}",
                    if paused {
                        "paused: our outbound link to the peer is full"
                    } else {
                        "resumed: our outbound link to the peer drained"
                    }
                );
            }
            let actions: Vec<Action> = tokio::select! {
                // A change may pause or resume this stream: look again (reads are
                // cancel-safe).
                _ = pressure.changed() => continue,
                _ = tokio::time::sleep(PAUSE_RECHECK), if paused => continue,
                r = self.io.read(&mut buf), if !paused => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => {
                        last_activity = Instant::now();
                        self.reader.feed(&buf[..n]);
                        match self.read_events(tx).await {
                            Ok(()) => continue,
                            Err(end) => return end,
                        }
                    }
                },
                Some((originating, receiving, outcome)) = rx.recv() => {
                    self.neg.dialback_verified(&originating, &receiving, outcome)
                }
                _ = sleep_until(wake_at) => {
                    if self.neg.is_authenticated() {
                        tracing::debug!(peer = ?self.peer, "s2s inbound stream idle");
                        let mut a = vec![Action::Send(proto::stream::CLOSE.to_vec())];
                        a.push(Action::Close { error: None });
                        a
                    } else {
                        self.neg.fail(StreamError::with_text(
                            StreamErrorCondition::ConnectionTimeout,
                            "not authenticated in time",
                        ))
                    }
                }
                _ = shutdown.changed() => {
                    self.neg.fail(StreamError::new(StreamErrorCondition::SystemShutdown))
                }
            };
            if let Err(end) = self.perform_all(actions, tx).await {
                return end;
            }
        }
    }

    async fn read_events(
        &mut self,
        tx: &mpsc::UnboundedSender<Verified>,
    ) -> Result<(), Option<StreamError>> {
        loop {
            let event = match self.reader.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let actions = self.neg.fail(e.to_stream_error());
                    return self.perform_all(actions, tx).await;
                }
            };
            let actions = match event {
                StreamEvent::Header(h) => {
                    let id = format!("{:016x}", rand::thread_rng().gen::<u64>());
                    self.neg.on_header(&h, &id)
                }
                StreamEvent::Element(el, _) => self.neg.on_element(el),
                StreamEvent::Keepalive => Vec::new(),
                StreamEvent::Close => self.neg.on_close(),
            };
            self.perform_all(actions, tx).await?;
        }
    }

    async fn perform_all(
        &mut self,
        actions: Vec<Action>,
        tx: &mpsc::UnboundedSender<Verified>,
    ) -> Result<(), Option<StreamError>> {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(bytes) => {
                    let w = timeout(WRITE_TIMEOUT, async {
                        self.io.write_all(&bytes).await?;
                        self.io.flush().await
                    })
                    .await;
                    if !matches!(w, Ok(Ok(()))) {
                        return Err(None);
                    }
                }
                Action::StartTls => {
                    if self.reader.buffered() > 0 {
                        // Data pipelined before the handshake (RFC 6120 §5.4.3.3).
                        return Err(None);
                    }
                    let S2sIo::Plain(tcp) = std::mem::replace(&mut self.io, S2sIo::Detached) else {
                        return Err(None);
                    };
                    let accept = timeout(
                        Duration::from_secs(self.shared.settings.auth_timeout_secs),
                        self.shared.acceptor.accept(tcp),
                    );
                    let tls = match accept.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = ?self.peer, error = %e, "s2s TLS handshake failed");
                            return Err(None);
                        }
                        Err(_) => return Err(None),
                    };
                    let check = cert_check(&self.shared, &tls);
                    self.io = S2sIo::Server(Box::new(tls));
                    self.neg.tls_established(check);
                    self.reader = StreamReader::new(self.shared.limits(), proto::ns::SERVER);
                }
                Action::Restart => {
                    self.reader = StreamReader::new(self.shared.limits(), proto::ns::SERVER);
                }
                Action::Authenticated { domain, method } => {
                    self.gauge.set(1, "authenticated");
                    crate::metrics::METRICS
                        .s2s_authentications
                        .with_label_values(&["inbound", method.as_str()])
                        .inc();
                    tracing::info!(
                        peer = ?self.peer,
                        %domain,
                        method = method.as_str(),
                        tls = self.neg.is_secured(),
                        local = %self.neg.local().unwrap_or_default(),
                        "s2s inbound peer authenticated"
                    );
                }
                Action::VerifyDialback {
                    originating,
                    receiving,
                    stream_id,
                    key,
                } => {
                    let request = self.manager.send(VerifyDialback {
                        receiving: receiving.clone(),
                        originating: originating.clone(),
                        stream_id,
                        key,
                    });
                    let tx = tx.clone();
                    actix_rt::spawn(async move {
                        let outcome = request.await.unwrap_or(DialbackOutcome::Error(
                            StanzaErrorCondition::InternalServerError,
                        ));
                        let _ = tx.send((originating, receiving, outcome));
                    });
                }
                Action::Stanza { from, to, stanza } => {
                    // A component's own domain answers its IQs itself (the MUC service's
                    // disco#info, XEP-0045 §6.2), through the Router.
                    let to_server = to.local().is_none()
                        && to.resource().is_none()
                        && !self.shared.components.iter().any(|c| c == to.domain());
                    let request = matches!(stanza.attr("type"), Some("get" | "set"));
                    if stanza.name == "iq" && to_server && request {
                        self.server_iq(from, to, &stanza);
                    } else {
                        self.shared.router.do_send(RouteStanza { from, to, stanza });
                    }
                }
                Action::DialbackRefused {
                    originating,
                    receiving,
                } => {
                    limits::count("pending_dialback");
                    self.dialback_refused += 1;
                    // Once per stream at warn; a flood would otherwise log per request.
                    if self.dialback_refused == 1 {
                        tracing::warn!(
                            peer = ?self.peer,
                            %originating,
                            %receiving,
                            pending = self.neg.pending_dialback(),
                            max = self.shared.settings.max_pending_dialback,
                            "s2s: dialback request refused with resource-constraint: too many \
                             verifications pending on this stream (s2s.max_pending_dialback)"
                        );
                    } else {
                        tracing::debug!(peer = ?self.peer, %originating, %receiving, "s2s: dialback request refused (pending cap)");
                    }
                }
                Action::Close { error } => return Err(error),
                Action::Ready | Action::VerifyResult { .. } => {}
            }
        }
        Ok(())
    }
}
