//! XEP-0191: Blocking Command, the session filter. The blocklist itself lives in the
//! account's shard (`im::blocking`: the IQs, storage and pushes); this module keeps the
//! session's copy (pushed by the shard through the Router) and applies it: nothing goes to a
//! blocked entity (§3.6: `<not-acceptable/>` with `<blocked/>`, presence silently dropped),
//! and nothing from one reaches the client (§3.5: messages and IQ requests answered
//! `<service-unavailable/>` as if nobody were there, presence dropped).

use std::any::Any;
use std::sync::Arc;

use super::session::{Outbound, SessionEffects, SessionModule};
use super::{Module, Support};
use proto::element::{Element, Node};
use proto::error::{stanza_error_reply, StanzaErrorCondition};
use proto::jid::Jid;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(Blocking)
}

/// The blocklist a session holds (`Arc`: shared by all sessions of the account).
#[derive(Debug, Clone)]
pub struct BlockList(pub Arc<Vec<Jid>>);

/// §9: `<blocked/>` in the error of a stanza to a blocked contact.
const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

struct Blocking;

impl Module for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0191",
            title: "Blocking Command",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[proto::ns::BLOCKING]
    }
    fn can_disable(&self) -> bool {
        // The blocklist IQs are answered by the account shards, not through this module.
        false
    }
    fn session(&self) -> Option<Box<dyn SessionModule>> {
        Some(Box::new(BlockingSession {
            blocked: empty_list(),
        }))
    }
}

/// Most accounts block nobody: their sessions share one empty list instead of each holding
/// an allocation.
fn empty_list() -> Arc<Vec<Jid>> {
    static EMPTY: std::sync::OnceLock<Arc<Vec<Jid>>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::new(Vec::new())).clone()
}

struct BlockingSession {
    blocked: Arc<Vec<Jid>>,
}

impl BlockingSession {
    fn blocks(&self, peer: &Jid, fx: &SessionEffects<'_>) -> bool {
        !self.blocked.is_empty()
            && !fx.is_exempt(peer)
            && proto::blocklist::is_blocked(&self.blocked, peer)
    }
}

impl SessionModule for BlockingSession {
    fn update(&mut self, update: &dyn Any) {
        if let Some(BlockList(list)) = update.downcast_ref::<BlockList>() {
            self.blocked = if list.is_empty() {
                empty_list()
            } else {
                list.clone()
            };
        }
    }

    fn filter_outbound(&mut self, stanza: &Element, to: &Jid, fx: &SessionEffects<'_>) -> Outbound {
        if !self.blocks(to, fx) {
            return Outbound::Pass;
        }
        if stanza.name == "presence" || stanza.attr("type") == Some("error") {
            return Outbound::Refuse(None);
        }
        let mut reply = stanza_error_reply(stanza, StanzaErrorCondition::NotAcceptable, None);
        if let Some(e) = reply.get_child_mut("error", ns::CLIENT) {
            e.children
                .push(Node::Element(Element::new("blocked", NS_BLOCKING_ERRORS)));
        }
        Outbound::Refuse(Some(reply))
    }

    fn filter_inbound(&mut self, stanza: &Element, fx: &mut SessionEffects<'_>) -> bool {
        let Some(sender) = stanza.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return true;
        };
        if !self.blocks(&sender, fx) {
            return true;
        }
        refuse_inbound(stanza, fx);
        false
    }
}

/// XEP-0191 §3.5, XEP-0016 §2.3: a refused sender's messages and IQ requests are answered
/// `<service-unavailable/>` as if nobody were there; presence, errors and IQ responses are
/// dropped.
pub(super) fn refuse_inbound(stanza: &Element, fx: &mut SessionEffects<'_>) {
    let answer = match (stanza.name.as_str(), stanza.attr("type")) {
        ("message", Some("error")) | ("presence", _) => false,
        ("iq", t) => matches!(t, Some("get") | Some("set")),
        _ => true,
    };
    if answer {
        fx.to_route.push(stanza_error_reply(
            stanza,
            StanzaErrorCondition::ServiceUnavailable,
            None,
        ));
    }
}
