//! The I/O task of one c2s connection. It owns the socket (so it can upgrade it to TLS),
//! runs the negotiation state machine, and after bind passes stanzas to the connection's
//! SessionActor and writes what the actor queues.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use proto::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::jid::Jid;
use proto::negotiation::{Action, C2sNegotiation, C2sPolicy};
use proto::sasl::DomainAuthenticators;
use proto::stream::{Limits, StreamEvent, StreamReader};
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use super::messages::{ConnectionClosed, FlushDeliveries, FromClient, FromClientNonza, PingClient};
use super::session::{QueueWork, SendQueue, SessionActor, SessionParts};
use super::stream_management::ResumptionId;
use super::transport::Transport;
use crate::admission::{ConnectionLimiter, ConnectionPermit, ConnectionRefusal};
use crate::config::C2sSettings;
use crate::im::messages::GetFilters;
use crate::metrics::{GaugeGuard, METRICS};
use crate::modules::Registry;
use crate::router::messages::{
    BindRefused, RegisterSession, ResumeSession, TakeOverSession, UnregisterSession,
};
use crate::router::Router;
use crate::tls::TlsContext;

/// A write that makes no progress for this long means the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write in flight may still take once its reader has overflowed its queue.
const OVERFLOW_GRACE: Duration = Duration::from_secs(2);
/// After our closing tag, how long we keep reading (and discarding) before closing the
/// socket: closing with unread input makes the kernel reset the connection, and the peer
/// may lose the stream error it has not read yet.
const LINGER: Duration = Duration::from_millis(500);
/// At a client's closing tag, how long an offline delivery in progress may wait for the
/// client's TCP to acknowledge what was written (`SendQueue::settle`).
const SETTLE: Duration = Duration::from_millis(500);
/// How long a resumption may wait for the session's holder (which first closes the
/// session's old connection, if that still looks alive).
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read and discarded during the linger.
const LINGER_MAX_BYTES: usize = 1 << 20;

/// Everything the c2s connections of a node share.
pub struct C2sContext {
    pub settings: C2sSettings,
    pub policy: Arc<C2sPolicy>,
    pub auth: DomainAuthenticators,
    pub tls: TlsContext,
    pub router: Addr<Router>,
    pub modules: Arc<Registry>,
    pub domains: Arc<Vec<String>>,
    pub im: crate::im::AccountShards,
    pub shutdown: watch::Receiver<bool>,
    pub next_session_id: AtomicU64,
    /// Unauthenticated connections, in total and per address.
    pub admission: Arc<ConnectionLimiter>,
    /// One warning a second for refusals at accept, however many there are.
    pub refused_log: crate::log_throttle::LogThrottle,
}

impl C2sContext {
    /// Limits once the client has authenticated.
    fn limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self.settings.max_stanza_bytes,
            max_depth: self.settings.max_depth,
            ..Limits::default()
        }
    }
    /// Limits before authentication: nothing a client sends then (STARTTLS, SASL) comes
    /// near `c2s.max_unauthenticated_stanza_bytes`, and every byte a stranger can make us
    /// hold multiplies by the connections it can open.
    fn unauthenticated_limits(&self) -> Limits {
        Limits {
            max_stanza_bytes: self
                .settings
                .max_unauthenticated_stanza_bytes
                .min(self.settings.max_stanza_bytes),
            max_depth: self.settings.max_depth.min(8),
            max_attributes: 16,
            ..Limits::default()
        }
    }
}

/// Refuse a connection over an unauthenticated-connection cap: our stream header and a
/// stream error (RFC 6120 §4.9.3.17 `<resource-constraint/>` for the node's cap, §4.9.3.14
/// `<policy-violation/>` for the per-address one) on a plain socket; on a direct-TLS one a
/// close before the handshake (nothing readable could be said in the clear).
pub async fn refuse(
    tcp: TcpStream,
    ctx: Arc<C2sContext>,
    direct_tls: bool,
    refusal: ConnectionRefusal,
) {
    if direct_tls {
        return;
    }
    let error = refusal.stream_error("unauthenticated");
    let domain = ctx.domains.first().map_or("localhost", String::as_str);
    let id: u64 = rand::thread_rng().gen();
    let mut out =
        proto::stream::header_bytes(proto::ns::CLIENT, domain, None, &format!("{id:016x}"), "en");
    out.extend_from_slice(&error.to_bytes());
    out.extend_from_slice(proto::stream::CLOSE);
    crate::admission::refuse(tcp, out).await;
}

/// Why the loop woke up.
enum Wake {
    /// The socket is readable, or may still hold data.
    Input,
    /// The session's queue overflowed.
    Overflow,
    /// The session queued bytes or asked to close.
    Queued,
    Shutdown,
    AuthTimeout,
    /// A bound client has been silent for `c2s.idle_ping_secs`, or did not answer the ping.
    Idle,
}

/// How a connection ended, for the log.
#[derive(Debug)]
enum End {
    Closed,
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

struct Connection {
    ctx: Arc<C2sContext>,
    negotiation: C2sNegotiation,
    reader: StreamReader,
    transport: Transport,
    session: Option<Addr<SessionActor>>,
    /// The bound JID and session id, to unregister before a graceful close.
    bound: Option<(Jid, u64)>,
    queue: Rc<SendQueue>,
    gauge: GaugeGuard,
    accepted: Instant,
    /// Counted against the admission caps until the client authenticates.
    unauthenticated: Option<ConnectionPermit>,
    /// The client closed its stream, or the node is shutting down: a session under stream
    /// management ends rather than waiting to be resumed (XEP-0198 §7).
    closed_cleanly: bool,
}

/// Serve one accepted socket until it closes.
pub async fn serve(
    tcp: TcpStream,
    ctx: Arc<C2sContext>,
    direct_tls: bool,
    _permit: OwnedSemaphorePermit,
    unauthenticated: ConnectionPermit,
) {
    let peer = tcp.peer_addr().ok();
    let _ = tcp.set_nodelay(true);
    if ctx.settings.tcp_keepalive_secs > 0 {
        // A phone that lost its network sends no FIN: keepalive probes let the kernel
        // notice, also while nothing is being written.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(ctx.settings.tcp_keepalive_secs))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "c2s: TCP keepalive not set");
        }
    }
    let accepted = Instant::now();
    let gauge = crate::metrics::c2s_connection(if direct_tls { "direct" } else { "none" });
    let auth_deadline = Instant::now() + Duration::from_secs(ctx.settings.auth_timeout_secs);
    let (transport, cb) = if direct_tls {
        // Boxed, like every rarely-taken await below: an async fn's future is as large as its
        // largest await point, and this one lives as long as the connection.
        match Box::pin(timeout(
            Duration::from_secs(ctx.settings.auth_timeout_secs),
            ctx.tls.acceptor.accept(tcp),
        ))
        .await
        {
            Ok(Ok(tls)) => {
                let cb = ctx.tls.channel_binding(&tls);
                (Transport::Tls(Box::new(tls)), Some(cb))
            }
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                return;
            }
        }
    } else {
        (Transport::Plain(tcp), None)
    };
    let mut conn = Connection {
        negotiation: C2sNegotiation::new(ctx.policy.clone(), cb),
        reader: StreamReader::new(ctx.unauthenticated_limits(), proto::ns::CLIENT),
        transport,
        session: None,
        bound: None,
        queue: SendQueue::new(ctx.settings.send_queue_max_bytes),
        ctx,
        gauge,
        accepted,
        unauthenticated: Some(unauthenticated),
        closed_cleanly: false,
    };
    let end = conn.run(auth_deadline).await;
    // Whoever waits for bytes to be written (an offline batch) learns they will not be.
    conn.queue.abandon();
    if let Some(session) = conn.session.take() {
        session.do_send(ConnectionClosed {
            sm_handled: conn.negotiation.sm_handled(),
            clean: conn.closed_cleanly,
        });
    }
    let _ = timeout(Duration::from_secs(1), conn.transport.shutdown()).await;
    conn.drain_input().await;
    match end {
        End::Closed => tracing::debug!(?peer, "c2s connection closed"),
        End::Io(e) => tracing::debug!(?peer, error = %e, "c2s connection lost"),
    }
}

impl Connection {
    async fn run(&mut self, auth_deadline: Instant) -> End {
        let shutdown = self.ctx.shutdown.clone();
        // The futures the loop waits on every turn live as long as the loop: made anew per
        // turn (several turns per stanza), their timer and waiter registrations cost more
        // than the rest of a turn.
        let mut shutdown_rx = shutdown.clone();
        let shutdown_changed = shutdown_rx.changed();
        tokio::pin!(shutdown_changed);
        let queue = self.queue.clone();
        let queued = queue.wake.notified();
        tokio::pin!(queued);
        let auth_timer = sleep_until(auth_deadline);
        tokio::pin!(auth_timer);
        // After a read that returned data there may be more (in the kernel or decrypted in
        // rustls), so read again before waiting for readiness.
        let mut may_have_input = true;
        // XEP-0199 §4.2: a silent client is pinged; silence after that means it is gone.
        let idle_after = Duration::from_secs(self.ctx.settings.idle_ping_secs);
        let ping_timeout = Duration::from_secs(self.ctx.settings.idle_ping_timeout_secs);
        let mut last_input = Instant::now();
        let mut pinged: Option<Instant> = None;
        // Set to the deadline it had when armed; input moves the deadline without touching
        // the timer, which on firing checks the deadline and sleeps again if it moved.
        let idle_timer = sleep_until(last_input + idle_after);
        tokio::pin!(idle_timer);
        loop {
            if *shutdown.borrow() {
                self.closed_cleanly = true;
                return self
                    .close_boxed(StreamError::new(StreamErrorCondition::SystemShutdown))
                    .await;
            }
            let established = self.negotiation.is_established();
            let watch_idle = established && !idle_after.is_zero();
            let wake = tokio::select! {
                biased;
                _ = &mut shutdown_changed => Wake::Shutdown,
                _ = queue.overflow.notified() => Wake::Overflow,
                _ = &mut queued => Wake::Queued,
                _ = &mut auth_timer, if !established => Wake::AuthTimeout,
                _ = &mut idle_timer, if watch_idle => Wake::Idle,
                _ = std::future::ready(()), if may_have_input => Wake::Input,
                r = self.transport.readable(), if !may_have_input => match r {
                    Ok(()) => Wake::Input,
                    Err(e) => return End::Io(e),
                },
            };
            let result = match wake {
                Wake::Shutdown => {
                    self.closed_cleanly = true;
                    return self
                        .close_boxed(StreamError::new(StreamErrorCondition::SystemShutdown))
                        .await;
                }

                Wake::AuthTimeout => {
                    return self
                        .close_boxed(StreamError::new(StreamErrorCondition::ConnectionTimeout))
                        .await
                }
                Wake::Idle => {
                    let deadline = match pinged {
                        Some(at) => at + ping_timeout,
                        None => last_input + idle_after,
                    };
                    if Instant::now() < deadline {
                        // Input came since the timer was set.
                        idle_timer.as_mut().reset(deadline);
                        Ok(true)
                    } else if pinged.is_some() {
                        // RFC 6120 §4.9.3.4; the session treats it as a lost connection (a
                        // resumable one detaches).
                        return self
                            .close_boxed(StreamError::with_text(
                                StreamErrorCondition::ConnectionTimeout,
                                "no answer to the idle ping",
                            ))
                            .await;
                    } else {
                        let now = Instant::now();
                        pinged = Some(now);
                        idle_timer.as_mut().reset(now + ping_timeout);
                        self.ping_client().await
                    }
                }
                Wake::Overflow => self.write_queued().await,
                Wake::Queued => {
                    queued.set(queue.wake.notified());
                    self.write_queued().await
                }
                Wake::Input => {
                    let reader = &mut self.reader;
                    match self.transport.try_read(|bytes| reader.feed(bytes)) {
                        Ok(Some(0)) => return End::Closed,
                        Ok(Some(n)) => {
                            crate::metrics::HOT.bytes_in.inc_by(n as u64);
                            last_input = Instant::now();
                            pinged = None;
                            let processed = self.process_input().await;
                            // A short plain read emptied the socket: wait for readiness
                            // rather than spend a turn on a read that finds nothing. Asked
                            // after processing: a STARTTLS upgrade in between may have left
                            // the client's first TLS bytes in rustls, which no readiness
                            // event would announce.
                            let drained = self.transport.drained_by(n);
                            may_have_input = !drained;
                            // One chunk per turn: nothing in this loop waits while a client
                            // keeps sending, so without this yield a busy sender would read
                            // on and on while the router, the sessions and the writers on
                            // this thread wait. Under overload their mailboxes then grew by
                            // hundreds of MB in a second, and prompt readers were cut off as
                            // "slow" when the backlog reached their send queues. A drained
                            // socket needs no yield: the next turn waits for readiness.
                            if !drained {
                                tokio::task::yield_now().await;
                            }
                            processed
                        }
                        Ok(None) => {
                            may_have_input = false;
                            Ok(true)
                        }
                        Err(e) => return End::Io(e),
                    }
                }
            };
            match result {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(e) => return e,
            }
            if self.reader.buffered() == 0 {
                self.reader.release_temporaries();
            }
        }
    }

    /// Read and discard until the peer closes, for at most [`LINGER`] and
    /// [`LINGER_MAX_BYTES`]. The raw socket is read (see [`Transport::try_discard_raw`]), and
    /// the task yields after every read: a peer that floods us after its stream error must
    /// not hold the thread that serves other connections.
    async fn drain_input(&mut self) {
        let deadline = Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES && Instant::now() < deadline {
            match self.transport.try_discard_raw() {
                Ok(Some(0)) | Err(_) => return,
                Ok(Some(n)) => {
                    drained += n;
                    tokio::task::yield_now().await;
                }
                Ok(None) => match timeout_at(deadline, self.transport.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return,
                },
            }
        }
    }

    /// Ask a silent client for a sign of life: under stream management an `<r/>` (not a
    /// stanza, so no count changes), else an XEP-0199 ping, sent by the session (a stanza).
    async fn ping_client(&mut self) -> Result<bool, End> {
        if self.negotiation.sm_handled().is_some() {
            let mut out = Vec::new();
            proto::sm::request().write_to(&mut out, proto::ns::CLIENT);
            Box::pin(self.write(&out)).await?;
        } else if let Some(session) = &self.session {
            session.do_send(PingClient);
        }
        Ok(true)
    }

    /// Write what the session queued (everything that accumulated, in one write).
    async fn write_queued(&mut self) -> Result<bool, End> {
        match self.queue.take() {
            QueueWork::Nothing => Ok(true),
            QueueWork::Write(bytes) => {
                Box::pin(self.write(&bytes)).await?;
                self.queue.written(bytes.len());
                Ok(true)
            }
            QueueWork::Close(bytes, err) => {
                Box::pin(self.write(&bytes)).await?;
                self.queue.written(bytes.len());
                self.close_boxed(err).await;
                Ok(false)
            }
            QueueWork::Overflowed => {
                self.close_boxed(SessionActor::overflow_error()).await;
                Ok(false)
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        if bytes.is_empty() {
            return Ok(());
        }
        crate::metrics::HOT.bytes_out.inc_by(bytes.len() as u64);
        let queue = self.queue.clone();
        let transport = &mut self.transport;
        let write = async {
            transport.write_all(bytes).await?;
            transport.flush().await
        };
        tokio::pin!(write);
        let timed_out = || {
            End::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            ))
        };
        tokio::select! {
            r = timeout(WRITE_TIMEOUT, &mut write) => match r {
                Ok(r) => Ok(r?),
                Err(_) => Err(timed_out()),
            },
            // A slow reader's queue overflowed while we were blocked writing to it: give the
            // write in flight a moment to finish, so the stream error that follows lands on
            // a stanza boundary.
            _ = queue.overflow.notified() => {
                match timeout(OVERFLOW_GRACE, &mut write).await {
                    Ok(Ok(())) => {
                        // Re-arm for the main loop, which sends the stream error.
                        queue.overflow.notify_one();
                        Ok(())
                    }
                    Ok(Err(e)) => Err(End::Io(e)),
                    Err(_) => Err(timed_out()),
                }
            }
        }
    }

    async fn close_boxed(&mut self, err: StreamError) -> End {
        Box::pin(self.close_with(err)).await
    }

    /// Send a stream error (and our header first if needed) and end the connection.
    async fn close_with(&mut self, err: StreamError) -> End {
        let actions = self.negotiation.fail(err);
        for a in actions {
            if let Action::Send(bytes) = a {
                let _ = timeout(Duration::from_secs(2), async {
                    let _ = self.transport.write_all(&bytes).await;
                    let _ = self.transport.flush().await;
                })
                .await;
            }
        }
        End::Closed
    }

    /// Drain complete events from the reader. `Ok(false)`: the stream is over.
    async fn process_input(&mut self) -> Result<bool, End> {
        loop {
            let event = match self.reader.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(true),
                Err(e) => {
                    tracing::debug!(error = %e, "c2s stream error");
                    self.close_boxed(e.to_stream_error()).await;
                    return Ok(false);
                }
            };
            let auth: &DomainAuthenticators = &self.ctx.auth;
            let failures = self.negotiation.auth_failures();
            let actions = match event {
                StreamEvent::Header(h) => self.negotiation.on_header(&h, &new_stream_id(), auth),
                StreamEvent::Element(el, _) => self.negotiation.on_element(el, auth),
                StreamEvent::Keepalive => Vec::new(),
                StreamEvent::Close => {
                    self.closed_cleanly = true;
                    // Leave the routing table before answering: once the client sees our
                    // closing tag, messages for it are stored offline, not sent to a stream
                    // that is going away.
                    if let Some((jid, session_id)) = self.bound.take() {
                        let _ =
                            Box::pin(self.ctx.router.send(UnregisterSession { jid, session_id }))
                                .await;
                    }
                    // Stanzas the router handed the session before it left are in the
                    // session's mailbox or queue: they go out before our closing tag, which
                    // the client reads up to (RFC 6120 §4.4), instead of being dropped.
                    if let Some(session) = &self.session {
                        let _ = Box::pin(session.send(FlushDeliveries)).await;
                        if !Box::pin(self.write_queued()).await? {
                            return Ok(false);
                        }
                        // Stored messages it read before closing count as delivered.
                        Box::pin(SendQueue::settle(self.queue.clone(), SETTLE)).await;
                    }
                    self.negotiation.on_close()
                }
            };
            if self.negotiation.auth_failures() > failures {
                let mech = self.negotiation.mechanism().unwrap_or("none");
                let reason = self.negotiation.last_auth_failure().unwrap_or("other");
                METRICS
                    .logins
                    .with_label_values(&["failure", mech, reason])
                    .inc();
            }
            if !self.perform(actions).await? {
                return Ok(false);
            }
        }
    }

    /// Carry out the negotiation's actions. `Ok(false)`: the stream is over.
    async fn perform(&mut self, actions: Vec<Action>) -> Result<bool, End> {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send(bytes) => Box::pin(self.write(&bytes)).await?,
                Action::Close => return Ok(false),
                Action::StartTls => {
                    if self.reader.buffered() > 0 {
                        // Data pipelined before the handshake could have been injected by an
                        // attacker in the clear (RFC 6120 §5.4.3.3 forbids acting on it).
                        return Ok(false);
                    }
                    Box::pin(self.start_tls()).await?;
                }
                Action::Authenticated(user) => {
                    tracing::debug!(%user, "authenticated");
                    let mech = self.negotiation.mechanism().unwrap_or("none");
                    METRICS
                        .logins
                        .with_label_values(&["success", mech, "none"])
                        .inc();
                    self.gauge.set(0, "authenticated");
                    self.unauthenticated = None;
                    self.reader = StreamReader::new(self.ctx.limits(), proto::ns::CLIENT);
                }
                Action::Bind { iq_id, resource } => {
                    queue.extend(Box::pin(self.bind(&iq_id, resource)).await);
                }
                Action::Stanza(el) => match &self.session {
                    Some(s) => {
                        crate::metrics::stanza("in", &el);
                        s.do_send(FromClient(el))
                    }
                    None => return Ok(false),
                },
                Action::Nonza(el) => match &self.session {
                    Some(s) => s.do_send(FromClientNonza(el)),
                    None => return Ok(false),
                },
                Action::Resume { previd, h } => {
                    queue.extend(Box::pin(self.resume(&previd, h)).await);
                }
            }
        }
        Ok(true)
    }

    async fn start_tls(&mut self) -> Result<(), End> {
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Detached)
        else {
            return Err(End::Closed);
        };
        let tls = timeout(
            Duration::from_secs(self.ctx.settings.auth_timeout_secs),
            self.ctx.tls.acceptor.accept(tcp),
        )
        .await
        .map_err(|_| {
            End::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })??;
        let cb = self.ctx.tls.channel_binding(&tls);
        self.gauge.set(1, "starttls");
        self.transport = Transport::Tls(Box::new(tls));
        self.negotiation.tls_established(cb);
        self.reader = StreamReader::new(self.ctx.unauthenticated_limits(), proto::ns::CLIENT);
        Ok(())
    }

    /// XEP-0198 §5: take over the session `previd` names, if it is this account's and the
    /// token matches, wherever on this node it is; else `<failed><item-not-found/>` and the
    /// client may bind instead.
    async fn resume(&mut self, previd: &str, h: u32) -> Vec<Action> {
        let failed = |n: &mut C2sNegotiation| {
            METRICS
                .sm_sessions
                .with_label_values(&["resume_failed"])
                .inc();
            n.resume_failed(StanzaErrorCondition::ItemNotFound, None)
        };
        let (Some(user), Some(domain)) = (self.negotiation.user(), self.negotiation.domain())
        else {
            return failed(&mut self.negotiation);
        };
        let Some(id) = ResumptionId::parse(previd) else {
            return failed(&mut self.negotiation);
        };
        let Ok(jid) = Jid::from_parts(Some(user), domain, Some(&id.resource)) else {
            return failed(&mut self.negotiation);
        };
        let take_over = self.ctx.router.send(TakeOverSession {
            jid: jid.clone(),
            token: id.token,
            client_h: h,
            for_node: None,
        });
        let state = match timeout(RESUME_TIMEOUT, take_over).await {
            Ok(Ok(Ok(state))) => state,
            _ => return failed(&mut self.negotiation),
        };
        let filters = self.filters(&jid).await;
        // The actor's address exists before it runs, so that the route can move to it first
        // and what the router sends meanwhile waits in its mailbox behind the retransmission.
        let session_ctx = actix::Context::<SessionActor>::new();
        let session = session_ctx.address();
        let presence = state
            .presence
            .as_deref()
            .and_then(|p| proto::element::Element::parse(p).ok());
        let new_session_id = self.ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
        let moved = self
            .ctx
            .router
            .send(ResumeSession {
                jid: jid.clone(),
                state_session_id: state.session_id,
                new_session_id,
                presence,
                flags: state.flags,
                session: SessionActor::handle(&session),
            })
            .await;
        let (routed, session_id) = match moved {
            Ok(Ok(id)) => (true, id),
            _ => (false, state.session_id),
        };
        let handled_in = state.handled_in;
        let actor = SessionActor::resumed(
            state,
            jid.clone(),
            session_id,
            routed,
            self.session_parts(),
            filters,
        );
        session_ctx.run(actor);
        if !routed {
            // The session ended meanwhile: the actor hands back what it holds and stops.
            session.do_send(ConnectionClosed::default());
            return failed(&mut self.negotiation);
        }
        // The router gives the new session id only to a session that came over the NodeLink
        // (one resumed here keeps its id). Session ids are per node, so the holder's id
        // may equal ours by chance: compare with the new one.
        let from = if session_id == new_session_id {
            "resumed_remote"
        } else {
            "resumed_local"
        };
        METRICS.sm_sessions.with_label_values(&[from]).inc();
        tracing::info!(%jid, "session resumed");
        self.session = Some(session);
        self.bound = Some((jid, session_id));
        self.queue.set_socket(self.transport.raw_fd());
        self.gauge.set(0, "bound");
        self.negotiation.resumed(previd, handled_in)
    }

    fn session_parts(&self) -> SessionParts {
        SessionParts {
            queue: self.queue.clone(),
            router: self.ctx.router.clone(),
            modules: self.ctx.modules.clone(),
            domains: self.ctx.domains.clone(),
            im: self.ctx.im.clone(),
        }
    }

    /// The account's blocklist and privacy lists, for a session starting.
    async fn filters(&self, jid: &Jid) -> crate::im::messages::Filters {
        self.ctx
            .im
            .ask(
                &jid.to_bare(),
                GetFilters {
                    user: jid.to_bare(),
                },
            )
            .await
            .unwrap_or_default()
    }

    async fn bind(&mut self, iq_id: &str, resource: Option<String>) -> Vec<Action> {
        let (Some(user), Some(domain)) = (self.negotiation.user(), self.negotiation.domain())
        else {
            return self
                .negotiation
                .bind_failed(iq_id, StanzaErrorCondition::NotAuthorized);
        };
        let resource = resource.unwrap_or_else(generated_resource);
        let Ok(jid) = Jid::from_parts(Some(user), domain, Some(&resource)) else {
            // RFC 6120 §7.7.2.2: a resource that cannot be prepared.
            return self
                .negotiation
                .bind_failed(iq_id, StanzaErrorCondition::BadRequest);
        };
        let filters = self.filters(&jid).await;
        let session_id = self.ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
        let session =
            SessionActor::new(jid.clone(), session_id, self.session_parts(), filters).start();
        let registered = self
            .ctx
            .router
            .send(RegisterSession {
                jid: jid.clone(),
                session_id,
                session: SessionActor::handle(&session),
            })
            .await;
        match registered {
            Ok(Ok(())) => {
                self.session = Some(session);
                self.bound = Some((jid.clone(), session_id));
                self.queue.set_socket(self.transport.raw_fd());
                self.gauge.set(0, "bound");
                METRICS
                    .login_duration
                    .observe(self.accepted.elapsed().as_secs_f64());
                tracing::info!(%jid, "session bound");
                self.negotiation.bound(iq_id, &jid.to_string())
            }
            Ok(Err(BindRefused::Conflict)) => {
                session.do_send(ConnectionClosed::default());
                self.negotiation
                    .bind_failed(iq_id, StanzaErrorCondition::Conflict)
            }
            Ok(Err(BindRefused::ClusterUnavailable)) => {
                // RFC 6120 §7.6.2.1: the server cannot bind now; the client may retry.
                session.do_send(ConnectionClosed::default());
                self.negotiation
                    .bind_failed(iq_id, StanzaErrorCondition::ResourceConstraint)
            }
            Err(_) => {
                session.do_send(ConnectionClosed::default());
                self.negotiation
                    .bind_failed(iq_id, StanzaErrorCondition::InternalServerError)
            }
        }
    }
}

fn new_stream_id() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

fn generated_resource() -> String {
    format!(
        "sb-{:012x}",
        rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
    )
}
