//! XEP-0016: Privacy Lists, the session filter. The lists live in the account's shard
//! (`im::privacy`: IQs, storage, compiled rules pushed through the Router); this module
//! keeps the session's copy and the list it made active (§2.4: per resource, for the
//! session's life), and applies the rules in force (the active list, else the default) to
//! what the client sends (refused `<not-acceptable/>`) and what reaches it (handled as
//! blocking does).

use std::any::Any;
use std::sync::Arc;

use super::session::{Outbound, SessionEffects, SessionModule};
use super::{Module, Support};
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition};
use proto::jid::Jid;
use proto::ns::PRIVACY as NS_PRIVACY;
use proto::privacy::{PrivacyLists, StanzaKind};

pub fn module() -> Box<dyn Module> {
    Box::new(Privacy)
}

/// The privacy lists a session holds (pushed by the shard).
#[derive(Debug, Clone)]
pub struct Lists(pub Arc<PrivacyLists>);

struct Privacy;

impl Module for Privacy {
    fn name(&self) -> &'static str {
        "privacy"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0016",
            title: "Privacy Lists",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[NS_PRIVACY]
    }
    fn can_disable(&self) -> bool {
        // The list IQs are answered by the account shards, not through this module.
        false
    }
    fn session(&self) -> Option<Box<dyn SessionModule>> {
        Some(Box::new(PrivacySession {
            lists: Arc::new(PrivacyLists::default()),
            active: None,
        }))
    }
}

struct PrivacySession {
    lists: Arc<PrivacyLists>,
    /// The list this session made active (§2.4); without one the default applies.
    active: Option<String>,
}

impl PrivacySession {
    fn allows(&self, kind: StanzaKind, peer: &Jid, fx: &SessionEffects<'_>) -> bool {
        let Some(rules) = self.lists.effective(self.active.as_deref()) else {
            return true;
        };
        fx.is_exempt(peer) || rules.allows(kind, peer)
    }
}

/// What a successful privacy IQ set changes in the session's own state.
enum Effect {
    Activate(Option<String>),
    Removed(String),
}

impl Effect {
    fn of(iq: &Element) -> Option<Effect> {
        if iq.attr("type") != Some("set") {
            return None;
        }
        let query = iq.get_child("query", NS_PRIVACY)?;
        let mut children = query.children();
        let (Some(one), None) = (children.next(), children.next()) else {
            return None;
        };
        if one.is("active", NS_PRIVACY) {
            Some(Effect::Activate(one.attr("name").map(str::to_string)))
        } else if one.is("list", NS_PRIVACY) && one.children().next().is_none() {
            Some(Effect::Removed(one.attr("name")?.to_string()))
        } else {
            None
        }
    }
}

impl SessionModule for PrivacySession {
    fn update(&mut self, update: &dyn Any) {
        if let Some(Lists(lists)) = update.downcast_ref::<Lists>() {
            self.lists = lists.clone();
        }
    }

    fn account_iq_answered(&mut self, request: &Element, reply: &Element) {
        if reply.attr("type") != Some("result") {
            return;
        }
        match Effect::of(request) {
            Some(Effect::Activate(name)) => self.active = name,
            Some(Effect::Removed(name)) if self.active.as_deref() == Some(name.as_str()) => {
                self.active = None
            }
            _ => {}
        }
    }

    fn filter_outbound(&mut self, stanza: &Element, to: &Jid, fx: &SessionEffects<'_>) -> Outbound {
        let kind = match (stanza.name.as_str(), stanza.attr("type")) {
            ("presence", None | Some("unavailable")) => StanzaKind::PresenceOut,
            _ => StanzaKind::Other,
        };
        if self.allows(kind, to, fx) {
            return Outbound::Pass;
        }
        // A stanza the user's own list denies is refused with not-acceptable.
        if stanza.attr("type") == Some("error") {
            return Outbound::Refuse(None);
        }
        Outbound::Refuse(Some(stanza_error_reply(
            stanza,
            StanzaErrorCondition::NotAcceptable,
            None,
        )))
    }

    fn filter_inbound(&mut self, stanza: &Element, fx: &mut SessionEffects<'_>) -> bool {
        let Some(sender) = stanza.attr("from").and_then(|f| Jid::parse(f).ok()) else {
            return true;
        };
        let kind = match (stanza.name.as_str(), stanza.attr("type")) {
            ("message", _) => StanzaKind::Message,
            ("iq", _) => StanzaKind::Iq,
            ("presence", None | Some("unavailable")) => StanzaKind::PresenceIn,
            _ => StanzaKind::Other,
        };
        if self.allows(kind, &sender, fx) {
            return true;
        }
        super::blocking::refuse_inbound(stanza, fx);
        false
    }
}
