//! SessionActor: one per bound c2s connection. It owns the session's state (JID, presence),
//! stamps `from` on what the client sends, answers IQs addressed to the server, hands
//! everything else to the Router, and queues what the router delivers for the I/O task.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::jid::Jid;
use proto::ns;
use tokio::sync::Notify;

use super::messages::{ConnectionClosed, FlushDeliveries, FromClient, FromClientNonza, PingClient};
use super::stream_management::{parse_kept, HandedOver, SmSession, Token};
use crate::im::messages::{AccountIq, Filters, OutboundSubscription};
use crate::im::AccountShards;
use crate::metrics::METRICS;
use crate::modules::stream_management::Settings as SmSettings;
use crate::modules::{Effects, Hooks, IqOutcome, IqRequest, Outbound, Registry, SessionEffects};
use crate::route::session::{HandOverReply, SessionHandle, ToSession};
use crate::router::messages::ResumeRefused;
use crate::router::messages::{
    BroadcastPresence, DeliverToAvailable, DeliverToResource, RouteStanza, SetResourceFlag,
    ToFlaggedResources, UnregisterSession,
};
use crate::router::Router;
use proto::im::SubscriptionKind;

/// What a queue allocates when a push finds it empty (bytes).
const FIRST_PUSH_CAPACITY: usize = 1024;

/// What the SessionActor has for its client and the I/O task has yet to write: one byte
/// buffer shared by the two (they run on the same worker thread). Stanzas are serialised
/// straight into it, the task takes the whole buffer per write, and an idle session holds no
/// allocation. Past `limit` unwritten bytes the client is too slow and is disconnected.
///
/// It also counts the bytes ever queued and ever written (flushed to the socket), so a
/// sender can learn when what it queued has left the node ([`SendQueue::when_written`]):
/// stored messages are removed only then (XEP-0160 without loss).
pub struct SendQueue {
    state: RefCell<QueueState>,
    limit: usize,
    /// The connection's socket while it is open (set at bind, cleared before it closes), to
    /// ask the kernel what the client has acknowledged (`unacked_bytes`).
    socket: std::cell::Cell<Option<std::os::fd::RawFd>>,
    /// The connection is over: nothing more will be written or acknowledged.
    abandoned: std::cell::Cell<bool>,
    /// Queue bytes (counted like `QueueState::written`) the client's TCP is known to have
    /// acknowledged, and how many `delivered` calls wait for that.
    acked_through: std::cell::Cell<u64>,
    awaiting_ack: std::cell::Cell<u32>,
    /// Signals the task: bytes to write or a close requested.
    pub wake: Notify,
    /// Signals the task that the client fell too far behind (also while it is blocked
    /// writing to that client).
    pub overflow: Notify,
}

#[derive(Default)]
struct QueueState {
    bytes: Vec<u8>,
    close: Option<StreamError>,
    overflowed: bool,
    /// Bytes ever queued, and ever written to the socket: the queue is FIFO, so once
    /// `written` reaches the value `queued` had after some push, that push is on the wire.
    queued: u64,
    written: u64,
    /// Who waits for `written` to reach a mark (an offline batch being delivered). Empty,
    /// hence no allocation, nearly always; dropped (the receivers see an error) when the
    /// queue overflows or its connection ends.
    waiters: Vec<(u64, tokio::sync::oneshot::Sender<()>)>,
}

/// What the task should do next, taken from the queue.
pub enum QueueWork {
    Write(Vec<u8>),
    /// Write these bytes, then close the stream with the error.
    Close(Vec<u8>, StreamError),
    /// The client fell too far behind.
    Overflowed,
    Nothing,
}

impl SendQueue {
    pub fn new(limit: usize) -> Rc<SendQueue> {
        Rc::new(SendQueue {
            state: RefCell::new(QueueState::default()),
            limit,
            socket: std::cell::Cell::new(None),
            abandoned: std::cell::Cell::new(false),
            acked_through: std::cell::Cell::new(0),
            awaiting_ack: std::cell::Cell::new(0),
            wake: Notify::new(),
            overflow: Notify::new(),
        })
    }

    /// Serialise `el` into the queue; false once the queue has overflowed.
    fn push(&self, el: &Element) -> bool {
        self.push_with(|out| el.write_to(out, ns::CLIENT))
    }

    /// Queue bytes already serialised (a stanza stream management keeps a copy of);
    /// false once the queue has overflowed.
    fn push_raw(&self, bytes: &[u8]) -> bool {
        self.push_with(|out| out.extend_from_slice(bytes))
    }

    fn push_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut st = self.state.borrow_mut();
        if st.overflowed || st.close.is_some() {
            return false;
        }
        let was_empty = st.bytes.is_empty();
        if st.bytes.capacity() == 0 {
            // The writer takes the whole buffer each time, so a push usually starts from
            // nothing: one allocation that fits a typical stanza instead of a string of
            // reallocations as the serialiser grows it (seven for a 500-byte message).
            st.bytes.reserve(FIRST_PUSH_CAPACITY);
        }
        let before = st.bytes.len();
        write(&mut st.bytes);
        let added = st.bytes.len() - before;
        QUEUED.add(added as i64);
        st.queued += added as u64;
        if st.bytes.len() > self.limit {
            st.overflowed = true;
            QUEUED.sub(st.bytes.len() as i64);
            st.bytes = Vec::new();
            st.waiters = Vec::new();
            self.overflow.notify_one();
            return false;
        }
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    fn close(&self, err: StreamError) {
        self.state.borrow_mut().close.get_or_insert(err);
        self.wake.notify_one();
    }

    /// Resolves to `true` once everything queued so far has been written to the client's
    /// socket and acknowledged by the client's TCP (the kernel holds none of it unacked);
    /// `false` if the queue overflows, the connection ends first (closed or reset), or the
    /// acknowledgement takes longer than [`ACK_WAIT`] (a client that stopped reading).
    ///
    /// What this cannot know: bytes the client's TCP acknowledged but its application never
    /// read (its receive buffer, lost if it drops the connection). Stream management
    /// (XEP-0198) closes that gap with the client's own `<a h/>`.
    pub async fn delivered(queue: Rc<SendQueue>) -> bool {
        let (mark, written) = {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let mut st = queue.state.borrow_mut();
            if st.overflowed {
                return false;
            }
            let mark = st.queued;
            if st.written >= mark {
                let _ = tx.send(());
            } else {
                st.waiters.push((mark, tx));
            }
            (mark, rx)
        };
        queue.awaiting_ack.set(queue.awaiting_ack.get() + 1);
        let delivered = async {
            if written.await.is_err() {
                return false;
            }
            let deadline = tokio::time::Instant::now() + ACK_WAIT;
            loop {
                if queue.acked_through.get() >= mark {
                    return true;
                }
                if queue.abandoned.get() {
                    return false;
                }
                match queue.observe_acks() {
                    Acks::Unknown => return true,
                    Acks::Reset => return false,
                    Acks::Unacked(0) => return true,
                    Acks::Unacked(unacked) => {
                        // Bytes written after the mark may still be unacknowledged; ours no
                        // longer are once the kernel holds fewer than those, less one TLS
                        // record (the one that may carry our last bytes together with later
                        // ones: the client cannot decrypt it until all of it arrived).
                        // Counted as plaintext, which TLS only makes larger on the wire, so
                        // the test errs towards waiting.
                        let written_after = queue.state.borrow().written.saturating_sub(mark);
                        if unacked.saturating_add(TLS_RECORD_MAX) <= written_after {
                            return true;
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(ACK_POLL).await;
            }
        };
        let outcome = delivered.await;
        queue
            .awaiting_ack
            .set(queue.awaiting_ack.get().saturating_sub(1));
        outcome
    }

    /// Ask the kernel what the client has acknowledged; all of it (0 unacked) moves
    /// `acked_through` up to everything written.
    fn observe_acks(&self) -> Acks {
        let Some(fd) = self.socket.get() else {
            return Acks::Unknown;
        };
        match super::transport::unacked_bytes(fd) {
            Ok(Some(0)) => {
                self.acked_through.set(self.state.borrow().written);
                Acks::Unacked(0)
            }
            Ok(Some(n)) => Acks::Unacked(n as u64),
            Ok(None) => Acks::Reset,
            Err(e) => {
                tracing::debug!(error = %e, "SIOCOUTQ failed: counting written as delivered");
                Acks::Unknown
            }
        }
    }

    /// The client closed its stream while a [`delivered`](Self::delivered) waits: give its
    /// TCP up to `max` to acknowledge what was written (it normally has, having read it
    /// before closing), so that what it received is not delivered again at its next login.
    /// Called before our closing tag is written.
    pub async fn settle(queue: Rc<SendQueue>, max: std::time::Duration) {
        if queue.awaiting_ack.get() == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + max;
        while !matches!(
            queue.observe_acks(),
            Acks::Unacked(0) | Acks::Unknown | Acks::Reset
        ) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// The connection's socket, once bound (see [`delivered`](Self::delivered)).
    pub fn set_socket(&self, fd: Option<std::os::fd::RawFd>) {
        self.socket.set(fd);
    }

    /// The task wrote `n` bytes it took from the queue (all of them, flushed).
    pub fn written(&self, n: usize) {
        let mut st = self.state.borrow_mut();
        st.written += n as u64;
        if st.waiters.is_empty() {
            return;
        }
        let written = st.written;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|(mark, _)| *mark <= written);
        st.waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// The connection is over (called before its socket closes): nothing more will be
    /// written or acknowledged.
    pub fn abandon(&self) {
        self.abandoned.set(true);
        self.socket.set(None);
        self.state.borrow_mut().waiters = Vec::new();
    }

    /// Take everything pending.
    pub fn take(&self) -> QueueWork {
        let mut st = self.state.borrow_mut();
        if st.overflowed {
            return QueueWork::Overflowed;
        }
        let bytes = std::mem::take(&mut st.bytes);
        QUEUED.sub(bytes.len() as i64);
        match st.close.take() {
            Some(err) => QueueWork::Close(bytes, err),
            None if bytes.is_empty() => QueueWork::Nothing,
            None => QueueWork::Write(bytes),
        }
    }
}

/// What the kernel says about the client's acknowledgements.
enum Acks {
    /// Bytes written and not acknowledged yet.
    Unacked(u64),
    /// The connection was reset.
    Reset,
    /// No socket known, or the kernel cannot tell: written is all there is to know.
    Unknown,
}

/// How long [`SendQueue::delivered`] waits for the client's TCP to acknowledge a batch.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Plaintext bytes one TLS record carries at most (RFC 8446 §5.1).
const TLS_RECORD_MAX: u64 = 16 * 1024;
/// How often it asks the kernel meanwhile (nothing signals an acknowledgement).
const ACK_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Bytes queued for clients on this node (`switchboard_c2s_queued_bytes`).
static QUEUED: std::sync::LazyLock<&'static prometheus::IntGauge> =
    std::sync::LazyLock::new(|| &crate::metrics::METRICS.c2s_queued_bytes);

impl Drop for SendQueue {
    fn drop(&mut self) {
        QUEUED.sub(self.state.get_mut().bytes.len() as i64);
    }
}

/// What a session works with besides its own state: its connection's send queue and the
/// node's shared parts.
pub struct SessionParts {
    pub queue: Rc<SendQueue>,
    pub router: Addr<Router>,
    pub modules: Arc<Registry>,
    pub domains: Arc<Vec<String>>,
    pub im: AccountShards,
}

pub struct SessionActor {
    jid: Jid,
    session_id: u64,
    queue: Rc<SendQueue>,
    router: Addr<Router>,
    modules: Arc<Registry>,
    /// The modules' per-session state and hooks (carbons, CSI, ...).
    hooks: Hooks,
    domains: Arc<Vec<String>>,
    im: AccountShards,
    /// Entities this session sent directed available presence to (RFC 6121 §4.6).
    directed: Vec<Jid>,
    /// Account IQs sent to a shard and not answered yet (bounded by `im.max_iqs_in_flight`).
    iqs_in_flight: usize,
    /// Account IQs sent to other local users' accounts (answered by their shards through
    /// the router): (bare JID, id, when sent), bounded by `im.max_iqs_in_flight`.
    foreign_iqs: std::collections::VecDeque<(Jid, String, std::time::Instant)>,
    /// Stream management (XEP-0198): its settings (`None`: the module is disabled) and its
    /// state once the client enabled it.
    sm_settings: Option<SmSettings>,
    sm: Option<SmSession>,
    /// The connection is gone and the session waits to be resumed (XEP-0198 §5); counts
    /// detachments, so that an expiry timer knows whether it is still the current one.
    detached: bool,
    detachments: u32,
    /// Offline batches delivered under stream management, answered once the client
    /// acknowledged them (`<a h/>` reaching the mark, the `sent` count after the batch).
    stored_waiters: Vec<(u32, tokio::sync::oneshot::Sender<bool>)>,
    /// Where the session is in a resumption by another connection (XEP-0198 §5).
    handover: Handover,
    /// The router's entry for `jid` is this actor's (false for a resumed session whose
    /// route could not be moved: it only hands back what it holds, then stops).
    routed: bool,
    /// Stanzas kept to send right after `<resumed/>` (a session made by a resumption).
    retransmit: Vec<Vec<u8>>,
    /// A resumed session's last available presence, shown to the modules once it starts.
    resumed_presence: Option<Element>,
}

/// A session's part in a resumption by another connection (XEP-0198 §5).
enum Handover {
    None,
    /// The state is promised; the old connection is being closed, and its final count of
    /// the client's stanzas is awaited.
    Pending(HandOverReply),
    /// The state is gone to the resuming connection; what arrives until the route moves
    /// (`Retire`) is passed on then.
    Done(Vec<Element>),
}

/// How long a session that handed its state over waits for its route to move; past it the
/// resumption failed on the other side and the session ends here.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most stanzas a handed-over session keeps for its successor before passing them to the
/// account instead (the wait is normally a few milliseconds).
const MAX_HANDOVER_BUFFER: usize = 1024;

/// A request to another user's account not answered in this long no longer counts against
/// `im.max_iqs_in_flight` (the router answers within the IM timeout; this only keeps a lost
/// answer from blocking the session for good).
const FOREIGN_IQ_EXPIRY: std::time::Duration = std::time::Duration::from_secs(30);

impl SessionActor {
    pub fn new(jid: Jid, session_id: u64, parts: SessionParts, filters: Filters) -> SessionActor {
        let SessionParts {
            queue,
            router,
            modules,
            domains,
            im,
        } = parts;
        let mut session = SessionActor {
            jid,
            session_id,
            queue,
            router,
            hooks: modules.session_hooks(),
            modules: modules.clone(),
            domains,
            im,
            directed: Vec::new(),
            iqs_in_flight: 0,
            foreign_iqs: std::collections::VecDeque::new(),
            sm_settings: crate::modules::stream_management::settings(&modules),
            sm: None,
            detached: false,
            detachments: 0,
            stored_waiters: Vec::new(),
            handover: Handover::None,
            routed: true,
            retransmit: Vec::new(),
            resumed_presence: None,
        };
        session.set_filters(filters);
        session
    }

    /// The session a client resumed on this connection (XEP-0198 §5), from the state its
    /// previous holder handed over. `routed`: the router's entry now points here.
    pub fn resumed(
        state: HandedOver,
        jid: Jid,
        session_id: u64,
        routed: bool,
        parts: SessionParts,
        filters: Filters,
    ) -> SessionActor {
        let mut session = SessionActor::new(jid, session_id, parts, filters);
        let settings = session.sm_settings.unwrap_or_default();
        session.sm = Some(SmSession::restore(&settings, &state));
        session.directed = state
            .directed
            .iter()
            .filter_map(|d| Jid::parse(d).ok())
            .collect();
        session.routed = routed;
        session.retransmit = state.unacked;
        session.resumed_presence = state
            .presence
            .as_deref()
            .and_then(|p| Element::parse(p).ok())
            // What the modules see of a client's presence: its own, as sent (no `to`).
            .map(|mut p| {
                p.remove_attr("to");
                p
            });
        session
    }

    /// The account's blocklist and privacy lists, for the filter modules.
    fn set_filters(&mut self, filters: Filters) {
        self.hooks
            .update(&crate::modules::blocking::BlockList(Arc::new(
                filters.blocked,
            )));
        self.hooks
            .update(&crate::modules::privacy::Lists(filters.privacy));
        self.hooks
            .update(&crate::modules::AccountSeeds(filters.seeds));
    }

    /// Refuse an account IQ beyond `im.max_iqs_in_flight` (RFC 6120 §8.3.3.18:
    /// resource-constraint, type wait), with a log line.
    fn refuse_iq_in_flight(&mut self, iq: &Element, ctx: &mut Context<Self>) {
        tracing::debug!(
            jid = %self.jid,
            limit = self.im.max_iqs_in_flight,
            "c2s: account IQ refused, too many in flight (im.max_iqs_in_flight)"
        );
        crate::metrics::METRICS
            .bounces
            .with_label_values(&[StanzaErrorCondition::ResourceConstraint.as_str()])
            .inc();
        let reply = stanza_error_reply(
            iq,
            StanzaErrorCondition::ResourceConstraint,
            Some("too many requests in flight (im.max_iqs_in_flight)"),
        );
        self.send_to_client(&reply, ctx);
    }

    /// Whether `iq` is a request another local user's shard answers (routed through the
    /// router); if so and there is room, it is counted until its answer comes back (see
    /// `Deliver`). `Err(())`: no room.
    fn count_foreign_iq(&mut self, iq: &Element, to: &Jid) -> Result<(), ()> {
        let request = matches!(iq.attr("type"), Some("get") | Some("set"));
        let payload_ns = iq
            .children()
            .next()
            .map(|p| p.ns.as_str())
            .unwrap_or_default();
        if !request
            || !to.is_bare()
            || to.local().is_none()
            || !self.is_served(to)
            || !crate::im::handles(payload_ns)
        {
            return Ok(());
        }
        let now = std::time::Instant::now();
        while self
            .foreign_iqs
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) > FOREIGN_IQ_EXPIRY)
        {
            self.foreign_iqs.pop_front();
        }
        if self.foreign_iqs.len() >= self.im.max_iqs_in_flight {
            return Err(());
        }
        let id = iq.attr("id").unwrap_or_default().to_string();
        self.foreign_iqs.push_back((to.clone(), id, now));
        Ok(())
    }

    fn send_to_client(&mut self, el: &Element, ctx: &mut Context<Self>) {
        if let Handover::Done(buffered) = &mut self.handover {
            if buffered.len() < MAX_HANDOVER_BUFFER {
                buffered.push(el.clone());
            } else {
                self.reroute_undelivered(vec![el.clone()]);
            }
            return;
        }
        crate::metrics::stanza("out", el);
        if self.sm.is_none() {
            if !self.queue.push(el) {
                // The I/O task closes the stream; nothing more goes to this client.
                ctx.stop();
            }
            return;
        }
        let mut bytes = Vec::with_capacity(256);
        el.write_to(&mut bytes, ns::CLIENT);
        self.send_kept(bytes.into_boxed_slice(), ctx);
    }

    /// Under stream management a copy stays until the client acknowledges it (XEP-0198
    /// §4). A queue that overflows ends the connection, not the session: what it could not
    /// write is kept here for the resumption.
    fn send_kept(&mut self, bytes: Box<[u8]>, ctx: &mut Context<Self>) {
        let Some(sm) = &mut self.sm else { return };
        let written = !self.detached && self.queue.push_raw(&bytes);
        let request = written && sm.should_request();
        if sm.record(bytes).is_err() {
            tracing::info!(jid = %self.jid, "c2s: too many unacknowledged stanzas, session ends");
            self.queue.close(StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many unacknowledged stanzas (modules.stream_management.max_unacked_bytes)",
            ));
            ctx.stop();
            return;
        }
        if request {
            self.queue.push(&proto::sm::request());
        }
    }

    fn reply_error(
        &mut self,
        stanza: &Element,
        cond: StanzaErrorCondition,
        ctx: &mut Context<Self>,
    ) {
        if stanza.attr("type") == Some("error") {
            return;
        }
        let reply = stanza_error_reply(stanza, cond, None);
        self.send_to_client(&reply, ctx);
    }

    /// RFC 6120 §8.2.3: an IQ needs an id, a known type, and exactly one payload for get/set.
    fn iq_is_well_formed(iq: &Element) -> bool {
        let payloads = iq.children().count();
        iq.attr("id").is_some_and(|id| !id.is_empty())
            && match iq.attr("type") {
                Some("get") | Some("set") => payloads == 1,
                Some("result") => payloads <= 1,
                Some("error") => true,
                _ => false,
            }
    }

    /// An IQ get/set to the server, to no one, or to the user's own bare JID is the
    /// server's to answer.
    fn handle_server_iq(&mut self, iq: &Element, to: &Jid, ctx: &mut Context<Self>) {
        let is_set = iq.attr("type") == Some("set");
        let Some(payload) = iq.children().next() else {
            return self.reply_error(iq, StanzaErrorCondition::BadRequest, ctx);
        };
        let mut fx = SessionEffects::new(&self.jid, &self.domains);
        if let Some(outcome) = self.hooks.iq(iq, &mut fx) {
            let effects = fx.finish();
            self.apply_effects(effects, ctx);
            return self.reply_iq(iq, to, Some(outcome), ctx);
        }
        if to.local().is_some() && crate::im::handles(&payload.ns) {
            if self.iqs_in_flight >= self.im.max_iqs_in_flight {
                // A client that sends faster than its account's shard answers (or never
                // reads) would queue unbounded work there: beyond the cap it is told to
                // wait.
                return self.refuse_iq_in_flight(iq, ctx);
            }
            self.iqs_in_flight += 1;
            let request = self.im.ask(
                to,
                AccountIq {
                    from: self.jid.clone(),
                    to: to.clone(),
                    iq: iq.clone(),
                    exists: true,
                },
            );
            let iq = iq.clone();
            ctx.spawn(request.into_actor(self).map(move |replies, session, ctx| {
                session.iqs_in_flight = session.iqs_in_flight.saturating_sub(1);
                match replies {
                    Ok(replies) => {
                        for mut reply in replies {
                            if reply.attr("id") == iq.attr("id") {
                                session.hooks.account_iq_answered(&iq, &reply);
                            }
                            reply.set_attr("to", session.jid.to_string());
                            session.send_to_client(&reply, ctx);
                        }
                    }
                    // The account's shard did not answer (its leader died or an
                    // election is under way): the client may retry.
                    Err(e) => {
                        tracing::warn!(error = %e, "im: account IQ not answered");
                        session.reply_error(&iq, StanzaErrorCondition::ResourceConstraint, ctx);
                    }
                }
            }));
            return;
        }
        let req = IqRequest {
            to,
            is_set,
            payload,
        };
        let outcome = self.modules.handle_iq(&req);
        self.reply_iq(iq, to, outcome, ctx);
    }

    /// Answer the client's IQ `iq` to `to` with a module's outcome (`None`: no module
    /// answers its namespace, RFC 6120 §8.4: service-unavailable).
    fn reply_iq(
        &mut self,
        iq: &Element,
        to: &Jid,
        outcome: Option<IqOutcome>,
        ctx: &mut Context<Self>,
    ) {
        let outcome = match outcome {
            Some(IqOutcome::ResultAfter { stanzas, payload }) => {
                for s in &stanzas {
                    self.send_to_client(s, ctx);
                }
                Some(IqOutcome::Result(payload))
            }
            other => other,
        };
        match outcome {
            Some(IqOutcome::Result(payload)) => {
                let mut reply = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", iq.attr("id").unwrap_or_default());
                if iq.attr("to").is_some() {
                    reply.set_attr("from", to.to_string());
                }
                reply.set_attr("to", self.jid.to_string());
                if let Some(p) = payload {
                    reply = reply.with_child(p);
                }
                self.send_to_client(&reply, ctx);
            }
            Some(IqOutcome::Error(cond)) => self.reply_error(iq, cond, ctx),
            Some(IqOutcome::ResultAfter { .. }) | None => {
                self.reply_error(iq, StanzaErrorCondition::ServiceUnavailable, ctx)
            }
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // A resumed session first sends again what the client had not acknowledged, right
        // after `<resumed/>` (XEP-0198 §5), before anything routed to it since.
        let retransmit = std::mem::take(&mut self.retransmit);
        if !retransmit.is_empty() {
            METRICS
                .sm_stanzas
                .with_label_values(&["retransmitted"])
                .inc_by(retransmit.len() as u64);
        }
        for bytes in retransmit {
            self.send_kept(bytes.into_boxed_slice(), ctx);
        }
        if let Some(presence) = self.resumed_presence.take() {
            let mut fx = SessionEffects::new(&self.jid, &self.domains);
            self.hooks.resumed(&presence, &mut fx);
            let effects = fx.finish();
            self.apply_effects(effects, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if !self.routed {
            // The route is the resumed session's (`Retire`), or was never this one's: only
            // what this actor still holds is handed back to the account.
            return self.end_unresumed();
        }
        self.end_directed_presence();
        self.router.do_send(UnregisterSession {
            jid: self.jid.clone(),
            session_id: self.session_id,
        });
        // After the unregistration (the router handles our messages in order), so that
        // what is rerouted to the account does not come back here.
        self.end_unresumed();
    }
}

impl Handler<FromClient> for SessionActor {
    type Result = ();

    fn handle(&mut self, FromClient(mut stanza): FromClient, ctx: &mut Context<Self>) {
        let to = match stanza.attr("to").map(Jid::parse) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(_)) => {
                return self.reply_error(&stanza, StanzaErrorCondition::JidMalformed, ctx)
            }
        };
        // RFC 6120 §8.1.2.1: the server stamps the full JID, whatever the client wrote.
        stanza.set_attr("from", self.jid.text());
        if let Some(t) = &to {
            // Filters first (XEP-0191 §3.6, XEP-0016): a refused stanza goes nowhere.
            let fx = SessionEffects::new(&self.jid, &self.domains);
            if let Outbound::Refuse(reply) = self.hooks.filter_outbound(&stanza, t, &fx) {
                if let Some(reply) = reply {
                    self.send_to_client(&reply, ctx);
                }
                return;
            }
        }
        match stanza.name.as_str() {
            "iq" => {
                if !Self::iq_is_well_formed(&stanza) {
                    return self.reply_error(&stanza, StanzaErrorCondition::BadRequest, ctx);
                }
                let for_server = match &to {
                    None => Some(self.jid.to_bare()),
                    Some(t)
                        if t.local().is_none() && t.resource().is_none() && self.is_served(t) =>
                    {
                        Some(t.clone())
                    }
                    Some(t) if *t == self.jid.to_bare() => Some(t.clone()),
                    _ => None,
                };
                if let Some(target) = for_server {
                    if matches!(stanza.attr("type"), Some("get") | Some("set")) {
                        self.handle_server_iq(&stanza, &target, ctx);
                    } else {
                        // The answer to a query the server sent the client (PEP's caps
                        // disco#info, XEP-0115 §6.2): the module that asked takes it.
                        let mut fx = SessionEffects::new(&self.jid, &self.domains);
                        self.hooks.outbound(&stanza, &mut fx);
                        let effects = fx.finish();
                        self.apply_effects(effects, ctx);
                    }
                    return;
                }
                if let Some(t) = &to {
                    if self.count_foreign_iq(&stanza, t).is_err() {
                        return self.refuse_iq_in_flight(&stanza, ctx);
                    }
                }
            }
            "presence"
                if stanza
                    .attr("type")
                    .and_then(SubscriptionKind::parse)
                    .is_some() =>
            {
                let (Some(kind), Some(contact)) =
                    (stanza.attr("type").and_then(SubscriptionKind::parse), &to)
                else {
                    return self.reply_error(&stanza, StanzaErrorCondition::BadRequest, ctx);
                };
                let contact = contact.to_bare();
                if contact == self.jid.to_bare() {
                    // A subscription to oneself means nothing (the account always sees its
                    // own presence).
                    return self.reply_error(&stanza, StanzaErrorCondition::BadRequest, ctx);
                }
                let user = self.jid.to_bare();
                self.im.tell(
                    &user.clone(),
                    OutboundSubscription {
                        user,
                        contact,
                        kind,
                        stanza,
                    },
                );
                return;
            }
            "presence" if to.is_none() => {
                match stanza.attr("type") {
                    None | Some("unavailable") => {
                        let unavailable = stanza.attr("type").is_some();
                        if !unavailable {
                            self.hooks.stamp_presence(&mut stanza);
                        }
                        // Modules see the client's own presence first (PEP learns its
                        // entity capabilities, XEP-0163 §4.3.3).
                        let mut fx = SessionEffects::new(&self.jid, &self.domains);
                        self.hooks.outbound(&stanza, &mut fx);
                        let effects = fx.finish();
                        self.apply_effects(effects, ctx);
                        self.router.do_send(BroadcastPresence {
                            from: self.jid.clone(),
                            session_id: self.session_id,
                            presence: stanza,
                        });
                        if unavailable {
                            self.end_directed_presence();
                        }
                    }
                    Some("error") => {}
                    Some(_) => self.reply_error(&stanza, StanzaErrorCondition::BadRequest, ctx),
                }
                return;
            }
            _ => {}
        }
        let to = match to {
            Some(to) => to,
            None => {
                // RFC 6120 §10.3: no `to` means the sender's own bare JID.
                let bare = self.jid.to_bare();
                stanza.set_attr("to", bare.to_string());
                bare
            }
        };
        if stanza.name == "presence" && stanza.attr("type").is_none() {
            // Directed available presence (RFC 6121 §4.6), a MUC join among them.
            self.hooks.stamp_presence(&mut stanza);
        }
        if stanza.name == "presence" && to.to_bare() != self.jid.to_bare() {
            // RFC 6121 §4.6: remember who got directed presence, to tell them when we go.
            match stanza.attr("type") {
                None if !self.directed.contains(&to) => self.directed.push(to.clone()),
                Some("unavailable") => self.directed.retain(|d| *d != to),
                _ => {}
            }
        }
        let mut fx = SessionEffects::new(&self.jid, &self.domains);
        self.hooks.outbound(&stanza, &mut fx);
        self.router.do_send(RouteStanza {
            from: self.jid.clone(),
            to,
            stanza,
        });
        let effects = fx.finish();
        self.apply_effects(effects, ctx);
    }
}

impl Handler<FromClientNonza> for SessionActor {
    type Result = ();

    fn handle(&mut self, FromClientNonza(el): FromClientNonza, ctx: &mut Context<Self>) {
        if el.ns == ns::SM {
            return self.stream_management(&el, ctx);
        }
        let mut fx = SessionEffects::new(&self.jid, &self.domains);
        if !self.hooks.nonza(&el, &mut fx) {
            tracing::debug!(jid = %self.jid, ns = %el.ns, name = %el.name, "nonza no module took");
        }
        let effects = fx.finish();
        self.apply_effects(effects, ctx);
    }
}

impl SessionActor {
    /// Carry out what the modules' hooks asked for.
    fn apply_effects(&mut self, effects: Effects, ctx: &mut Context<Self>) {
        let Effects {
            to_client,
            to_route,
            flags,
            to_flagged,
            wake,
        } = effects;
        for el in to_client {
            self.send_to_client(&el, ctx);
        }
        for stanza in to_route {
            let Some(to) = stanza.attr("to").and_then(|t| Jid::parse(t).ok()) else {
                continue;
            };
            self.router.do_send(RouteStanza {
                from: self.jid.clone(),
                to,
                stanza,
            });
        }
        for (flag, on) in flags {
            self.router.do_send(SetResourceFlag {
                jid: self.jid.clone(),
                session_id: self.session_id,
                flag,
                on,
            });
        }
        for (flag, stanza) in to_flagged {
            self.router.do_send(ToFlaggedResources {
                user: self.jid.to_bare(),
                flag,
                except: vec![self.jid.clone()],
                stanza,
            });
        }
        if let Some(delay) = wake {
            ctx.run_later(delay, |session, ctx| {
                let mut fx = SessionEffects::new(&session.jid, &session.domains);
                session.hooks.timer(&mut fx);
                let effects = fx.finish();
                session.apply_effects(effects, ctx);
            });
        }
    }
}

impl SessionActor {
    /// RFC 6121 §4.6.3: entities that received directed presence learn that the session
    /// went unavailable (subscribers also get the broadcast; a second unavailable is harmless).
    fn end_directed_presence(&mut self) {
        for to in std::mem::take(&mut self.directed) {
            let unavailable = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", self.jid.to_string())
                .with_attr("to", to.to_string());
            self.router.do_send(RouteStanza {
                from: self.jid.clone(),
                to,
                stanza: unavailable,
            });
        }
    }

    fn is_served(&self, domain: &Jid) -> bool {
        self.domains.iter().any(|d| d == domain.domain())
    }
}

impl Handler<ToSession> for SessionActor {
    type Result = ();
    fn handle(&mut self, msg: ToSession, ctx: &mut Context<Self>) {
        match msg {
            ToSession::Deliver(el) => self.deliver(el, true, ctx),
            ToSession::DeliverStored { batch, written } => {
                // Stored messages are removed once written: no module may hold them back
                // (the batch is confirmed by what reached the socket).
                for el in batch {
                    self.deliver(el, false, ctx);
                }
                if let Some(sm) = &self.sm {
                    // Under stream management the client's own acknowledgement confirms the
                    // batch (XEP-0198 §4), which TCP's cannot: bytes in its receive buffer
                    // are lost when the connection drops. Until then the batch stays
                    // stored; if the session ends unresumed, what was not acknowledged is
                    // rerouted (stored again) first.
                    self.stored_waiters.push((sm.sent(), written));
                    return self.release_acknowledged();
                }
                // Not tied to the actor: the answer comes when the bytes are written or the
                // connection is over, even after the session stopped.
                let queue = self.queue.clone();
                actix_rt::spawn(async move {
                    let _ = written.send(SendQueue::delivered(queue).await);
                });
            }
            ToSession::Kick(err) => {
                self.queue.close(err);
                ctx.stop();
            }
            ToSession::HandOver {
                token,
                client_h,
                reply,
            } => self.hand_over(token, client_h, reply, ctx),
            ToSession::Retire => self.retire(ctx),
            ToSession::SendOwnPresence { to, presence } => self.send_own_presence(to, presence),
            ToSession::SetBlockList(list) => {
                self.hooks
                    .update(&crate::modules::blocking::BlockList(list));
            }
            ToSession::SetPrivacy(lists) => {
                self.hooks.update(&crate::modules::privacy::Lists(lists));
            }
        }
    }
}

impl SessionActor {
    /// A stanza for the client, unless the blocklist or the privacy list in force refuses it;
    /// then the modules' inbound hooks (`hooks`: false skips them, e.g. CSI's holding).
    fn deliver(&mut self, el: Element, hooks: bool, ctx: &mut Context<Self>) {
        let sender = el.attr("from").and_then(|f| Jid::parse(f).ok());
        if el.name == "iq" && !self.foreign_iqs.is_empty() {
            if let (Some(s), Some("result" | "error")) = (&sender, el.attr("type")) {
                let id = el.attr("id").unwrap_or_default();
                if let Some(i) = self
                    .foreign_iqs
                    .iter()
                    .position(|(to, sent, _)| to == s && sent == id)
                {
                    self.foreign_iqs.remove(i);
                }
            }
        }
        let mut fx = SessionEffects::new(&self.jid, &self.domains);
        let passed = if self.hooks.filter_inbound(&el, &mut fx) {
            if hooks {
                self.hooks.inbound(el, &mut fx)
            } else {
                Some(el)
            }
        } else {
            None
        };
        let effects = fx.finish();
        self.apply_effects(effects, ctx);
        if let Some(el) = passed {
            self.send_to_client(&el, ctx);
        }
    }
}

impl SessionActor {
    /// The router's handle on this session, for `RegisterSession`.
    pub fn handle(addr: &Addr<SessionActor>) -> SessionHandle {
        SessionHandle::new(addr.clone().recipient())
    }

    /// The session's current presence to `to`, as if the client sent it: the same filters.
    fn send_own_presence(&mut self, to: Jid, presence: Element) {
        let fx = SessionEffects::new(&self.jid, &self.domains);
        if let Outbound::Refuse(_) = self.hooks.filter_outbound(&presence, &to, &fx) {
            return;
        }
        if to.is_bare() {
            self.router.do_send(DeliverToAvailable {
                to,
                stanza: presence,
            });
        } else {
            self.router.do_send(DeliverToResource {
                to,
                stanza: presence,
            });
        }
    }
}

impl Handler<PingClient> for SessionActor {
    type Result = ();
    fn handle(&mut self, _: PingClient, ctx: &mut Context<Self>) {
        // XEP-0199 §4.2: server-to-client ping; the answer (or anything else) is input,
        // which is all the connection waits for.
        let ping = Element::new("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", "sb-idle-ping")
            .with_attr("from", self.jid.domain())
            .with_attr("to", self.jid.to_string())
            .with_child(Element::new("ping", ns::PING));
        self.send_to_client(&ping, ctx);
    }
}

impl Handler<FlushDeliveries> for SessionActor {
    type Result = ();
    fn handle(&mut self, _: FlushDeliveries, _: &mut Context<Self>) {}
}

impl Handler<ConnectionClosed> for SessionActor {
    type Result = ();
    fn handle(&mut self, closed: ConnectionClosed, ctx: &mut Context<Self>) {
        let Some(sm) = &mut self.sm else {
            return ctx.stop();
        };
        if let Some(h) = closed.sm_handled {
            sm.handled_in = h;
        }
        if matches!(self.handover, Handover::Pending(_)) {
            // The connection a resumption replaced is gone: its count is final now.
            self.detached = true;
            return self.complete_handover(ctx);
        }
        if matches!(self.handover, Handover::Done(_)) {
            return;
        }
        if !sm.is_resumable() || closed.clean {
            // XEP-0198 §7: a closed stream ends the session.
            return ctx.stop();
        }
        // §5: the session stays bound (presence unchanged, stanzas still routed to it and
        // kept) until the client resumes it or `max` seconds pass.
        self.detached = true;
        self.detachments = self.detachments.wrapping_add(1);
        let detachment = self.detachments;
        METRICS.sm_sessions.with_label_values(&["detached"]).inc();
        tracing::debug!(jid = %self.jid, max_secs = sm.max_secs, "c2s: session detached");
        let max = std::time::Duration::from_secs(u64::from(sm.max_secs));
        ctx.run_later(max, move |session, ctx| {
            if session.detached && session.detachments == detachment {
                METRICS.sm_sessions.with_label_values(&["expired"]).inc();
                tracing::debug!(jid = %session.jid, "c2s: detached session expired");
                ctx.stop();
            }
        });
    }
}

impl SessionActor {
    /// A client resumes this session on another connection (XEP-0198 §5).
    fn hand_over(
        &mut self,
        token: Token,
        client_h: u32,
        reply: HandOverReply,
        ctx: &mut Context<Self>,
    ) {
        let refuse = |reply: HandOverReply| {
            let _ = reply.send(Err(ResumeRefused::NotFound));
        };
        if !matches!(self.handover, Handover::None) {
            return refuse(reply);
        }
        let Some(sm) = &mut self.sm else {
            return refuse(reply);
        };
        if !sm.token.is_some_and(|t| tokens_equal(&t, &token)) {
            return refuse(reply);
        }
        // What the client says it handled is acknowledged (§5); a count above what was
        // sent cannot come from the session's real client.
        if sm.ack(client_h).is_err() {
            return refuse(reply);
        }
        self.release_acknowledged();
        self.handover = Handover::Pending(reply);
        if self.detached {
            self.complete_handover(ctx);
        } else {
            // The old connection may still look alive (its peer is gone but TCP has not
            // noticed): close it, and hand over once it reported its final count.
            self.queue.close(StreamError::with_text(
                StreamErrorCondition::Conflict,
                "the session was resumed on another stream",
            ));
        }
    }

    /// The route moved to the resumed session: what arrived here meanwhile follows it.
    fn retire(&mut self, ctx: &mut Context<Self>) {
        self.routed = false;
        if let Handover::Done(buffered) = &mut self.handover {
            for stanza in std::mem::take(buffered) {
                self.router.do_send(DeliverToResource {
                    to: self.jid.clone(),
                    stanza,
                });
            }
        }
        ctx.stop();
    }
}

/// Compare resumption tokens in constant time: how long a refusal takes says nothing about
/// how much of a guess was right.
fn tokens_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SessionActor {
    /// Give the state to the resuming connection; then wait for the route to move.
    fn complete_handover(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.handover, Handover::Pending(_)) {
            return;
        }
        // What modules hold for the client (CSI) joins the queue that moves.
        let mut fx = SessionEffects::new(&self.jid, &self.domains);
        self.hooks.handing_over(&mut fx);
        let effects = fx.finish();
        self.apply_effects(effects, ctx);
        let Handover::Pending(tx) =
            std::mem::replace(&mut self.handover, Handover::Done(Vec::new()))
        else {
            return;
        };
        let directed = std::mem::take(&mut self.directed)
            .iter()
            .map(Jid::to_string)
            .collect();
        let state = self
            .sm
            .as_mut()
            .and_then(|sm| sm.hand_over(self.jid.to_string(), self.session_id, directed));
        let Some(state) = state else {
            self.handover = Handover::None;
            let _ = tx.send(Err(ResumeRefused::NotFound));
            return ctx.stop();
        };
        // Offline batches waiting for an acknowledgement moved with the queue: the resumed
        // session is responsible for them now (it reroutes them if it ends unresumed).
        for (_, waiter) in std::mem::take(&mut self.stored_waiters) {
            let _ = waiter.send(true);
        }
        if let Err(Ok(state)) = tx.send(Ok(state)) {
            // The resuming connection gave up: the state is still ours, and this session
            // ends with it.
            self.handover = Handover::None;
            let stanzas = state.unacked.iter().filter_map(|b| parse_kept(b)).collect();
            self.reroute_undelivered(stanzas);
            return ctx.stop();
        }
        ctx.run_later(RETIRE_WAIT, |session, ctx| {
            if matches!(session.handover, Handover::Done(_)) && session.routed {
                // The route never moved: the resumption failed on the other side, which
                // handed back what it held. This session ends as any other: it leaves the
                // routing table, then hands back what reached it meanwhile.
                ctx.stop();
            }
        });
    }

    /// A stream-management nonza the negotiation passed on (XEP-0198 §3-§4): `<enable/>`
    /// (the negotiation lets one through per stream) or `<a h/>`.
    fn stream_management(&mut self, el: &Element, ctx: &mut Context<Self>) {
        match (proto::sm::parse(el), self.sm_settings) {
            (Ok(proto::sm::Nonza::Enable { resume, max }), Some(settings)) => {
                let resource = self.jid.resource().unwrap_or_default().to_string();
                let (sm, enabled) = SmSession::enable(&settings, resume, max, &resource);
                self.sm = Some(sm);
                METRICS.sm_sessions.with_label_values(&["enabled"]).inc();
                if !self.queue.push(&enabled) {
                    ctx.stop();
                }
            }
            (Ok(proto::sm::Nonza::Ack { h }), _) => {
                let Some(sm) = &mut self.sm else { return };
                if let Err(e) = sm.ack(h) {
                    // §4: acknowledging more than was sent is a stream error.
                    self.queue
                        .close(proto::sm::handled_count_too_high(e.h, e.send_count));
                    return ctx.stop();
                }
                self.release_acknowledged();
            }
            _ => {}
        }
    }

    /// Answer the offline batches the client has now acknowledged.
    fn release_acknowledged(&mut self) {
        let Some(sm) = &self.sm else { return };
        let acked = sm.acked();
        // `mark` is reached when it is at most `acked`, modulo 2^32: within half the range.
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stored_waiters)
            .into_iter()
            .partition(|(mark, _)| acked.wrapping_sub(*mark) < 1 << 31);
        self.stored_waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(true);
        }
    }

    /// The session ends without being resumed: what the client did not acknowledge is
    /// handled as stanzas to a resource that went away (XEP-0198 §4, RFC 6121 §8.5.3.2.1):
    /// messages go to the account (another resource or offline storage), IQ requests get
    /// `service-unavailable`, presence and the rest are dropped. Offline batches waiting
    /// for an acknowledgement are then confirmed: what of them was not acknowledged was
    /// just rerouted, so removing the stored copies loses nothing.
    fn end_unresumed(&mut self) {
        let kept = self.sm.as_mut().map(SmSession::drain).unwrap_or_default();
        let mut stanzas: Vec<Element> = kept.iter().filter_map(|b| parse_kept(b)).collect();
        if let Handover::Done(buffered) = &mut self.handover {
            stanzas.append(buffered);
        }
        if !stanzas.is_empty() {
            METRICS
                .sm_sessions
                .with_label_values(&["ended_unresumed"])
                .inc();
            self.reroute_undelivered(stanzas);
        }
        for (_, tx) in std::mem::take(&mut self.stored_waiters) {
            let _ = tx.send(true);
        }
    }

    /// Stanzas this session will not deliver, handled as to a resource that went away.
    fn reroute_undelivered(&self, stanzas: Vec<Element>) {
        let bare = self.jid.to_bare();
        for mut stanza in stanzas {
            let from = stanza.attr("from").and_then(|f| Jid::parse(f).ok());
            let outcome = match (stanza.name.as_str(), stanza.attr("type"), from) {
                ("message", Some("error" | "groupchat"), _) | ("message", _, None) => "dropped",
                // A carbon copy: the original went where it was addressed.
                ("message", _, Some(_)) if crate::modules::carbons::is_carbon(&stanza) => "dropped",
                ("message", _, Some(from)) => {
                    stanza.set_attr("to", bare.to_string());
                    // Carbons of it went out when it was first routed (XEP-0334 §4.3).
                    if stanza.get_child("no-copy", ns::HINTS).is_none() {
                        stanza
                            .children
                            .push(proto::element::Node::Element(Element::new(
                                "no-copy",
                                ns::HINTS,
                            )));
                    }
                    self.router.do_send(crate::route::to_router::RerouteStanza {
                        from,
                        to: bare.clone(),
                        stanza,
                    });
                    "rerouted"
                }
                ("iq", Some("get" | "set"), Some(from)) => {
                    let reply =
                        stanza_error_reply(&stanza, StanzaErrorCondition::ServiceUnavailable, None);
                    self.router.do_send(RouteStanza {
                        from: self.jid.clone(),
                        to: from,
                        stanza: reply,
                    });
                    "bounced"
                }
                _ => "dropped",
            };
            METRICS.sm_stanzas.with_label_values(&[outcome]).inc();
        }
    }
}

impl SessionActor {
    pub fn overflow_error() -> StreamError {
        StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too much data queued for a slow reader",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn message(body: &str) -> Element {
        Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text(body))
    }

    /// Taken and written: what `Connection::write_queued` does.
    fn write_all(q: &SendQueue) -> usize {
        match q.take() {
            QueueWork::Write(bytes) => {
                q.written(bytes.len());
                bytes.len()
            }
            _ => 0,
        }
    }

    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn delivered_waits_until_the_bytes_are_written() {
        run(async {
            let q = SendQueue::new(1 << 20);
            // Nothing queued: delivered at once (no socket known: written is enough).
            assert!(SendQueue::delivered(q.clone()).await);
            assert!(q.push(&message("one")));
            let mut first = std::pin::pin!(SendQueue::delivered(q.clone()));
            assert!(poll_once(first.as_mut()).is_pending(), "not written yet");
            // Queued after the first batch: the first does not wait for it.
            assert!(q.push(&message("two")));
            let mut second = std::pin::pin!(SendQueue::delivered(q.clone()));
            assert!(poll_once(second.as_mut()).is_pending());
            assert!(write_all(&q) > 0);
            assert!(first.await);
            assert!(second.await);
        });
    }

    #[test]
    fn delivered_fails_when_the_connection_ends_or_overflows() {
        run(async {
            let q = SendQueue::new(1 << 20);
            assert!(q.push(&message("lost")));
            let mut pending = std::pin::pin!(SendQueue::delivered(q.clone()));
            assert!(poll_once(pending.as_mut()).is_pending());
            q.abandon();
            assert!(!pending.await, "the connection ended before writing it");

            let small = SendQueue::new(64);
            assert!(small.push(&message("a")));
            let mut pending = std::pin::pin!(SendQueue::delivered(small.clone()));
            assert!(poll_once(pending.as_mut()).is_pending());
            assert!(!small.push(&message(&"x".repeat(100))), "overflows");
            assert!(!pending.await, "an overflowed queue writes nothing more");
            assert!(!SendQueue::delivered(small).await);
        });
    }
}
