//! The s2s manager: one per node, on the main arbiter. It owns the table of outbound links
//! (one per local domain and remote domain), starts a link task when a stanza or a dialback
//! verification needs one, and forgets it when the task ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use proto::error::StanzaErrorCondition;
use proto::s2s::DialbackOutcome;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::messages::{LinkClosed, SendRemote, VerifyDialback};
use super::outbound::{self, LinkCmd};
use super::S2sShared;

/// How long an inbound stream waits for the authoritative server's answer.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// After a link failed to come up, stanzas for that peer bounce at once for this long
/// instead of each presence update dialling a dead server again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

struct Link {
    tx: mpsc::UnboundedSender<LinkCmd>,
    generation: u64,
}

pub struct S2sManager {
    shared: Arc<S2sShared>,
    links: HashMap<(String, String), Link>,
    /// Pairs whose last link failed, until when they are not retried.
    failed: HashMap<(String, String), Instant>,
    next_generation: u64,
}

impl S2sManager {
    pub fn new(shared: Arc<S2sShared>) -> S2sManager {
        S2sManager {
            shared,
            links: HashMap::new(),
            failed: HashMap::new(),
            next_generation: 1,
        }
    }

    /// Hand `cmd` to the link for (`local`, `remote`), starting one if there is none (or
    /// the one we know has just ended).
    fn send(&mut self, local: &str, remote: &str, cmd: LinkCmd, ctx: &mut Context<Self>) {
        let key = (local.to_string(), remote.to_string());
        let cmd = match self.links.get(&key) {
            Some(link) => match link.tx.send(cmd) {
                Ok(()) => return,
                Err(mpsc::error::SendError(cmd)) => cmd,
            },
            None => cmd,
        };
        if let Some(until) = self.failed.get(&key) {
            if Instant::now() < *until {
                match cmd {
                    LinkCmd::Stanza(stanza) => outbound::bounce(
                        &self.shared,
                        &stanza,
                        StanzaErrorCondition::RemoteServerNotFound,
                    ),
                    LinkCmd::Verify { reply, .. } => {
                        let _ = reply.send(DialbackOutcome::Error(
                            StanzaErrorCondition::RemoteServerNotFound,
                        ));
                    }
                }
                return;
            }
            self.failed.remove(&key);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = self.next_generation;
        self.next_generation += 1;
        // A fresh channel's receiver is alive: this send cannot fail.
        let _ = tx.send(cmd);
        tracing::debug!(local, remote, generation, "opening s2s link");
        actix_rt::spawn(outbound::run(
            self.shared.clone(),
            local.to_string(),
            remote.to_string(),
            rx,
            ctx.address(),
            generation,
        ));
        self.links.insert(key, Link { tx, generation });
    }
}

impl Actor for S2sManager {
    type Context = Context<Self>;
}

impl Handler<SendRemote> for S2sManager {
    type Result = ();

    fn handle(&mut self, msg: SendRemote, ctx: &mut Context<Self>) {
        let local = msg.from.domain().to_string();
        if !self.shared.policy.domains.contains(&local) {
            // Only our own users' stanzas leave through us.
            tracing::debug!(from = %msg.from, to = %msg.to, "not relaying a stanza between remote domains");
            return;
        }
        let remote = msg.to.domain().to_string();
        self.send(&local, &remote, LinkCmd::Stanza(msg.stanza), ctx);
    }
}

impl Handler<VerifyDialback> for S2sManager {
    type Result = ResponseFuture<DialbackOutcome>;

    fn handle(&mut self, msg: VerifyDialback, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.send(
            &msg.receiving,
            &msg.originating,
            LinkCmd::Verify {
                id: msg.stream_id,
                key: msg.key,
                reply,
            },
            ctx,
        );
        Box::pin(async move {
            match tokio::time::timeout(VERIFY_TIMEOUT, answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => DialbackOutcome::Error(StanzaErrorCondition::RemoteServerNotFound),
                Err(_) => DialbackOutcome::Error(StanzaErrorCondition::RemoteServerTimeout),
            }
        })
    }
}

impl Handler<LinkClosed> for S2sManager {
    type Result = ();

    fn handle(&mut self, msg: LinkClosed, _: &mut Context<Self>) {
        let key = (msg.local, msg.remote);
        if self
            .links
            .get(&key)
            .is_some_and(|l| l.generation == msg.generation)
        {
            self.links.remove(&key);
            if msg.failed {
                self.failed
                    .insert(key, Instant::now() + RETRY_AFTER_FAILURE);
            }
        }
    }
}
