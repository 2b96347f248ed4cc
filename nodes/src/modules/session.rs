//! Session hooks: the part of a module that lives with one bound resource (its
//! `SessionActor`). A module's [`SessionModule`] sees the IQs the client addresses to its own
//! account or server, the nonzas in the module's namespaces, every stanza the client sends
//! (after `from` is stamped) and every stanza on its way to the client (after the blocking
//! and privacy filters). It answers through [`SessionEffects`], which the SessionActor
//! carries out, so modules hold no actor addresses and are testable alone.

use std::time::Duration;

use std::any::Any;

use proto::element::Element;
use proto::jid::Jid;

use super::IqOutcome;

/// A per-resource flag a module keeps in the routing entry of its session, so that the
/// Router can deliver to "those of an account's resources that have X" (carbons enabled)
/// on any node. One bit per module that needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceFlag(pub u8);

impl ResourceFlag {
    pub fn bit(self) -> u8 {
        self.0
    }
}

/// What an outbound filter decides about a stanza the client sent.
#[derive(Debug)]
pub enum Outbound {
    Pass,
    /// Refused; the client gets this error reply (nothing for presence or errors).
    Refuse(Option<Element>),
}

/// One module's state and hooks for one bound resource. Every hook has a default that lets
/// the stanza pass untouched.
pub trait SessionModule {
    /// A stanza the client addresses to `to` (`from` stamped), before anything else looks
    /// at it: a filter may refuse it (XEP-0191 §3.6, XEP-0016). Also asked for the presence
    /// a session sends on the user's behalf (probes answered).
    fn filter_outbound(
        &mut self,
        _stanza: &Element,
        _to: &Jid,
        _fx: &SessionEffects<'_>,
    ) -> Outbound {
        Outbound::Pass
    }
    /// State the account's shard pushed for this module (a new blocklist, new privacy
    /// lists); each module takes the types it knows.
    fn update(&mut self, _update: &dyn Any) {}
    /// The account's shard answered an IQ this session sent to its own account (e.g. a
    /// privacy list made active, XEP-0016 §2.4).
    fn account_iq_answered(&mut self, _request: &Element, _reply: &Element) {}
    /// An IQ get/set from the client to its own bare JID or its server (or without `to`);
    /// `Some`: this module answers it, and it goes nowhere else.
    fn iq(&mut self, _iq: &Element, _fx: &mut SessionEffects<'_>) -> Option<IqOutcome> {
        None
    }
    /// A top-level element in one of the module's nonza namespaces; true: handled.
    fn nonza(&mut self, _el: &Element, _fx: &mut SessionEffects<'_>) -> bool {
        false
    }
    /// A stanza the client sent, `from` stamped, before it is routed; also its broadcast
    /// presence (no `to`) and its answers to IQs the server sent it.
    fn outbound(&mut self, _stanza: &Element, _fx: &mut SessionEffects<'_>) {}
    /// A stanza on its way to the client, before [`inbound`](SessionModule::inbound): a
    /// filter may refuse it (false), answering the sender through `fx.to_route`. Stored
    /// (offline) messages pass the filters too, but not `inbound`.
    fn filter_inbound(&mut self, _stanza: &Element, _fx: &mut SessionEffects<'_>) -> bool {
        true
    }
    /// A stanza on its way to the client. `Some`: pass it on (possibly changed); `None`: the
    /// module holds or drops it. Whatever the module puts in `fx.to_client` is written
    /// before the stanza it passes on.
    fn inbound(&mut self, stanza: Element, _fx: &mut SessionEffects<'_>) -> Option<Element> {
        Some(stanza)
    }
    /// The delay the module asked for with [`SessionEffects::wake_after`] ran out.
    fn timer(&mut self, _fx: &mut SessionEffects<'_>) {}
    /// The session hands itself over to a client resuming it on another connection
    /// (XEP-0198 §5): anything held for the client must go out now, into the queue that
    /// moves with the session (a fresh session's modules start from their defaults).
    fn handing_over(&mut self, _fx: &mut SessionEffects<'_>) {}
    /// The session continues one a client resumed (XEP-0198 §5), whose last available
    /// presence was `presence`: a module that learns from the client's presence (PEP, its
    /// entity capabilities) learns it again, as the handed-over state does not carry it.
    fn resumed(&mut self, _presence: &Element, _fx: &mut SessionEffects<'_>) {}
    /// The client's available presence (broadcast or directed) before it leaves the session,
    /// for a module that adds to it on the account's behalf (XEP-0398 §4: the avatar hash).
    fn stamp_presence(&mut self, _presence: &mut Element) {}
}

/// What the account's modules seed a newly bound session's hooks with (module name,
/// payload), through [`SessionModule::update`]; from `AccountState::session_seed`.
pub struct AccountSeeds(pub Vec<(String, String)>);

impl AccountSeeds {
    /// The payload `module` gave, if any.
    pub fn of(&self, module: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(m, _)| m == module)
            .map(|(_, p)| p.as_str())
    }
}

/// What hooks ask the session to do; the SessionActor carries it out after each hook.
pub struct SessionEffects<'a> {
    /// The session's full JID.
    pub jid: &'a Jid,
    /// The domains this node serves (the server itself is never filtered).
    pub served: &'a [String],
    /// Stanzas to route on the session's behalf (`from` = the session), e.g. the error a
    /// filtered sender gets.
    pub to_route: Vec<Element>,
    /// Written to the client, in order, before the stanza the hook passes on (if any).
    pub to_client: Vec<Element>,
    /// Set or clear a flag in this resource's routing entry.
    pub flags: Vec<(ResourceFlag, bool)>,
    /// Stanzas for those other resources of the same account that have the flag set, on
    /// any node (`to` is set per resource by the Router).
    pub to_flagged: Vec<(ResourceFlag, Element)>,
    /// Call [`SessionModule::timer`] after this long (the earliest request wins).
    pub wake: Option<Duration>,
}

/// What the hooks asked for, without the borrowed context: the SessionActor carries it out.
pub struct Effects {
    pub to_route: Vec<Element>,
    pub to_client: Vec<Element>,
    pub flags: Vec<(ResourceFlag, bool)>,
    pub to_flagged: Vec<(ResourceFlag, Element)>,
    pub wake: Option<Duration>,
}

impl<'a> SessionEffects<'a> {
    /// Let go of the session's JID and domains (borrowed, so that a hook costs no copy of
    /// them) and keep what the hooks asked for.
    pub fn finish(self) -> Effects {
        Effects {
            to_route: self.to_route,
            to_client: self.to_client,
            flags: self.flags,
            to_flagged: self.to_flagged,
            wake: self.wake,
        }
    }

    pub fn new(jid: &'a Jid, served: &'a [String]) -> Self {
        SessionEffects {
            jid,
            served,
            to_route: Vec::new(),
            to_client: Vec::new(),
            flags: Vec::new(),
            to_flagged: Vec::new(),
            wake: None,
        }
    }

    pub fn wake_after(&mut self, d: Duration) {
        self.wake = Some(self.wake.map_or(d, |w| w.min(d)));
    }

    /// The user's own account and the servers this node serves, which filters never apply
    /// to: a blocklist entry for the home domain must not cut off its IQs.
    pub fn is_exempt(&self, peer: &Jid) -> bool {
        peer.to_bare() == self.jid.to_bare()
            || (peer.local().is_none() && self.served.iter().any(|d| d == peer.domain()))
    }
}

/// The session hooks of every module that has some, in registry order.
pub struct Hooks {
    modules: Vec<Box<dyn SessionModule>>,
}

impl Hooks {
    pub(super) fn new(modules: Vec<Box<dyn SessionModule>>) -> Hooks {
        Hooks { modules }
    }

    pub fn filter_outbound(
        &mut self,
        stanza: &Element,
        to: &Jid,
        fx: &SessionEffects<'_>,
    ) -> Outbound {
        for m in &mut self.modules {
            if let Outbound::Refuse(reply) = m.filter_outbound(stanza, to, fx) {
                return Outbound::Refuse(reply);
            }
        }
        Outbound::Pass
    }

    pub fn update(&mut self, update: &dyn Any) {
        for m in &mut self.modules {
            m.update(update);
        }
    }

    pub fn account_iq_answered(&mut self, request: &Element, reply: &Element) {
        for m in &mut self.modules {
            m.account_iq_answered(request, reply);
        }
    }

    pub fn iq(&mut self, iq: &Element, fx: &mut SessionEffects<'_>) -> Option<IqOutcome> {
        self.modules.iter_mut().find_map(|m| m.iq(iq, fx))
    }

    pub fn nonza(&mut self, el: &Element, fx: &mut SessionEffects<'_>) -> bool {
        self.modules.iter_mut().any(|m| m.nonza(el, fx))
    }

    pub fn outbound(&mut self, stanza: &Element, fx: &mut SessionEffects<'_>) {
        for m in &mut self.modules {
            m.outbound(stanza, fx);
        }
    }

    pub fn filter_inbound(&mut self, stanza: &Element, fx: &mut SessionEffects<'_>) -> bool {
        self.modules
            .iter_mut()
            .all(|m| m.filter_inbound(stanza, fx))
    }

    pub fn inbound(&mut self, stanza: Element, fx: &mut SessionEffects<'_>) -> Option<Element> {
        let mut stanza = stanza;
        for m in &mut self.modules {
            stanza = m.inbound(stanza, fx)?;
        }
        Some(stanza)
    }

    pub fn stamp_presence(&mut self, presence: &mut Element) {
        for m in &mut self.modules {
            m.stamp_presence(presence);
        }
    }

    pub fn resumed(&mut self, presence: &Element, fx: &mut SessionEffects<'_>) {
        for m in &mut self.modules {
            m.resumed(presence, fx);
        }
    }

    pub fn timer(&mut self, fx: &mut SessionEffects<'_>) {
        for m in &mut self.modules {
            m.timer(fx);
        }
    }

    pub fn handing_over(&mut self, fx: &mut SessionEffects<'_>) {
        for m in &mut self.modules {
            m.handing_over(fx);
        }
    }
}
