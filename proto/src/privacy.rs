//! Privacy lists (XEP-0016) compiled for enforcement: an ordered rule set evaluated per
//! stanza. Group and subscription items are resolved against the roster by the caller, so
//! evaluation needs nothing but the peer's JID.

use std::collections::HashMap;
use std::sync::Arc;

use crate::blocklist::covers;
use crate::jid::Jid;

/// What kind of stanza is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    /// An incoming message.
    Message,
    /// An incoming IQ.
    Iq,
    /// An incoming presence notification (no type, or `unavailable`).
    PresenceIn,
    /// An outgoing presence notification (broadcast or directed).
    PresenceOut,
    /// Anything else (outgoing messages and IQs, subscription stanzas): only items that
    /// apply to every stanza cover it (XEP-0016: an item with no child elements blocks all
    /// communication, both ways).
    Other,
}

/// The stanza kinds an item names; all `false` means every stanza.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StanzaKinds {
    pub message: bool,
    pub iq: bool,
    pub presence_in: bool,
    pub presence_out: bool,
}

impl StanzaKinds {
    pub fn is_all(&self) -> bool {
        !(self.message || self.iq || self.presence_in || self.presence_out)
    }

    pub fn includes(&self, kind: StanzaKind) -> bool {
        self.is_all()
            || match kind {
                StanzaKind::Message => self.message,
                StanzaKind::Iq => self.iq,
                StanzaKind::PresenceIn => self.presence_in,
                StanzaKind::PresenceOut => self.presence_out,
                StanzaKind::Other => false,
            }
    }
}

/// Which peers an item covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Matcher {
    /// A `type='jid'` item, matched as XEP-0016 §2.1 says.
    Jid(Jid),
    /// A group or subscription item: these roster contacts (bare JIDs).
    AnyOf(Vec<Jid>),
    /// `subscription='none'` also covers everyone not on the roster: these are the roster
    /// contacts it does not cover (bare JIDs).
    NotIn(Vec<Jid>),
    /// The fall-through item (no type).
    All,
}

impl Matcher {
    pub fn matches(&self, peer: &Jid) -> bool {
        match self {
            Matcher::Jid(item) => covers(item, peer),
            Matcher::AnyOf(contacts) => contacts.iter().any(|c| is_bare_of(c, peer)),
            Matcher::NotIn(contacts) => !contacts.iter().any(|c| is_bare_of(c, peer)),
            Matcher::All => true,
        }
    }
}

fn is_bare_of(contact: &Jid, peer: &Jid) -> bool {
    contact.local() == peer.local() && contact.domain() == peer.domain()
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub matcher: Matcher,
    pub allow: bool,
    pub kinds: StanzaKinds,
}

/// One privacy list, its rules sorted by `order`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrivacyRules {
    pub items: Vec<Rule>,
}

impl PrivacyRules {
    /// XEP-0016 §2.2: the first rule (by order) that matches the peer and the stanza kind
    /// decides; when none does, the stanza is allowed.
    pub fn allows(&self, kind: StanzaKind, peer: &Jid) -> bool {
        self.items
            .iter()
            .find(|r| r.kinds.includes(kind) && r.matcher.matches(peer))
            .is_none_or(|r| r.allow)
    }
}

/// An account's privacy lists, compiled, and the name of its default list: what the account's
/// shard pushes to its sessions, which apply the list in force.
#[derive(Debug, Default)]
pub struct PrivacyLists {
    pub default: Option<String>,
    pub lists: HashMap<String, Arc<PrivacyRules>>,
}

impl PrivacyLists {
    /// The rules in force for a resource: its active list (XEP-0016 §2.4), else the
    /// account's default (§2.3).
    pub fn effective(&self, active: Option<&str>) -> Option<&PrivacyRules> {
        active
            .or(self.default.as_deref())
            .and_then(|name| self.lists.get(name))
            .map(Arc::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    fn rule(matcher: Matcher, allow: bool, kinds: StanzaKinds) -> Rule {
        Rule {
            matcher,
            allow,
            kinds,
        }
    }

    const ALL: StanzaKinds = StanzaKinds {
        message: false,
        iq: false,
        presence_in: false,
        presence_out: false,
    };
    const MESSAGE: StanzaKinds = StanzaKinds {
        message: true,
        iq: false,
        presence_in: false,
        presence_out: false,
    };

    #[test]
    fn no_rule_allows() {
        let rules = PrivacyRules::default();
        assert!(rules.allows(StanzaKind::Message, &j("a@x/r")));
    }

    #[test]
    fn first_match_decides() {
        let rules = PrivacyRules {
            items: vec![
                rule(Matcher::Jid(j("a@x")), true, ALL),
                rule(Matcher::All, false, ALL),
            ],
        };
        assert!(rules.allows(StanzaKind::Message, &j("a@x/r")));
        assert!(!rules.allows(StanzaKind::Message, &j("b@x/r")));
        assert!(!rules.allows(StanzaKind::Other, &j("b@x")));
    }

    #[test]
    fn kinds_restrict_an_item() {
        let rules = PrivacyRules {
            items: vec![rule(Matcher::Jid(j("x")), false, MESSAGE)],
        };
        assert!(!rules.allows(StanzaKind::Message, &j("a@x/r")));
        assert!(rules.allows(StanzaKind::Iq, &j("a@x/r")));
        assert!(rules.allows(StanzaKind::PresenceIn, &j("a@x/r")));
        // Outgoing messages are only covered by items for every stanza.
        assert!(rules.allows(StanzaKind::Other, &j("a@x/r")));
        let presence_out = StanzaKinds {
            presence_out: true,
            ..ALL
        };
        let rules = PrivacyRules {
            items: vec![rule(Matcher::All, false, presence_out)],
        };
        assert!(!rules.allows(StanzaKind::PresenceOut, &j("a@x")));
        assert!(rules.allows(StanzaKind::PresenceIn, &j("a@x")));
    }

    #[test]
    fn roster_matchers() {
        let contacts = vec![j("a@x"), j("b@x")];
        let group = Matcher::AnyOf(contacts.clone());
        assert!(group.matches(&j("a@x/phone")));
        assert!(!group.matches(&j("c@x")));
        let strangers = Matcher::NotIn(vec![j("a@x")]);
        assert!(!strangers.matches(&j("a@x/r")));
        assert!(strangers.matches(&j("c@y/r")));
    }

    #[test]
    fn skipped_kinds_fall_through_to_later_items() {
        let rules = PrivacyRules {
            items: vec![
                rule(Matcher::Jid(j("a@x")), true, MESSAGE),
                rule(Matcher::Jid(j("a@x")), false, ALL),
            ],
        };
        assert!(rules.allows(StanzaKind::Message, &j("a@x/r")));
        assert!(!rules.allows(StanzaKind::Iq, &j("a@x/r")));
    }
}
