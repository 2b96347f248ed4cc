//! SessionActor: one per bound c2s connection. It owns the session's state (JID, presence),
//! stamps `from` on what the client sends, answers IQs addressed to the server, hands
//! everything else to the Router, and queues what the router delivers for the I/O task.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition, StreamError, StreamErrorCondition};
use proto::jid::Jid;
use proto::ns;
use tokio::sync::{mpsc, Notify};

use super::messages::{ConnectionClosed, Deliver, FromClient, Kick, Outbound};
use crate::ext::{Extensions, IqOutcome, IqRequest};
use crate::router::messages::{BroadcastPresence, RouteStanza, UnregisterSession};
use crate::router::Router;

/// The bytes queued for the client but not yet written, shared by the actor (which adds)
/// and the I/O task (which subtracts). Past the limit the client is too slow: the task is
/// told to drop it.
pub struct SendQueue {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    pub overflow: Notify,
}

impl SendQueue {
    pub fn new(limit: usize) -> Arc<SendQueue> {
        Arc::new(SendQueue {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        })
    }

    /// Account for `n` more bytes; false (and the task notified) when over the limit.
    fn reserve(&self, n: usize) -> bool {
        let now = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        if now > self.limit {
            if !self.overflowed.swap(true, Ordering::AcqRel) {
                self.overflow.notify_one();
            }
            return false;
        }
        true
    }

    /// The task wrote `n` bytes.
    pub fn written(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

pub struct SessionActor {
    jid: Jid,
    session_id: u64,
    out: mpsc::UnboundedSender<Outbound>,
    queue: Arc<SendQueue>,
    router: Addr<Router>,
    ext: Arc<Extensions>,
    domains: Arc<Vec<String>>,
}

impl SessionActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        jid: Jid,
        session_id: u64,
        out: mpsc::UnboundedSender<Outbound>,
        queue: Arc<SendQueue>,
        router: Addr<Router>,
        ext: Arc<Extensions>,
        domains: Arc<Vec<String>>,
    ) -> SessionActor {
        SessionActor {
            jid,
            session_id,
            out,
            queue,
            router,
            ext,
            domains,
        }
    }

    fn send_to_client(&mut self, el: &Element, ctx: &mut Context<Self>) {
        let mut bytes = Vec::with_capacity(256);
        el.write_to(&mut bytes, ns::CLIENT);
        if !self.queue.reserve(bytes.len()) {
            // The I/O task has been notified and closes the stream; stop queueing.
            ctx.stop();
            return;
        }
        if self.out.send(Outbound::Bytes(bytes)).is_err() {
            ctx.stop();
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
        let req = IqRequest {
            to,
            is_set,
            payload,
        };
        match self.ext.handle(&req) {
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
            None => self.reply_error(iq, StanzaErrorCondition::ServiceUnavailable, ctx),
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.router.do_send(UnregisterSession {
            jid: self.jid.clone(),
            session_id: self.session_id,
        });
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
        stanza.set_attr("from", self.jid.to_string());
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
                    }
                    return;
                }
            }
            "presence" if to.is_none() => {
                match stanza.attr("type") {
                    None | Some("unavailable") => self.router.do_send(BroadcastPresence {
                        from: self.jid.clone(),
                        session_id: self.session_id,
                        presence: stanza,
                    }),
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
        self.router.do_send(RouteStanza {
            from: self.jid.clone(),
            to,
            stanza,
        });
    }
}

impl SessionActor {
    fn is_served(&self, domain: &Jid) -> bool {
        self.domains.iter().any(|d| d == domain.domain())
    }
}

impl Handler<Deliver> for SessionActor {
    type Result = ();
    fn handle(&mut self, Deliver(el): Deliver, ctx: &mut Context<Self>) {
        self.send_to_client(&el, ctx);
    }
}

impl Handler<Kick> for SessionActor {
    type Result = ();
    fn handle(&mut self, Kick(err): Kick, ctx: &mut Context<Self>) {
        let _ = self.out.send(Outbound::Close(err));
        ctx.stop();
    }
}

impl Handler<ConnectionClosed> for SessionActor {
    type Result = ();
    fn handle(&mut self, _: ConnectionClosed, ctx: &mut Context<Self>) {
        ctx.stop();
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
