//! XEP-0280: Message Carbons. A resource that sent `<enable/>` gets a copy of the chat
//! messages its account sends from its other resources (`<sent/>`, §6) and of those the
//! account receives that went to another resource (`<received/>`, §7), on any node of the
//! cluster and for messages from federated senders alike.
//!
//! The session part answers enable/disable, keeps the resource's carbons flag in its routing
//! entry ([`FLAG`]) and wraps what its client sends; the Router wraps what the account
//! receives ([`received_copy`]) once it knows which resources got the original, and both
//! go to the flagged resources of the account that did not have the original.

use super::session::{ResourceFlag, SessionEffects, SessionModule};
use super::{IqOutcome, Module, Support};
use proto::element::{Element, Node};
use proto::error::StanzaErrorCondition;
use proto::jid::Jid;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(Carbons)
}

/// The routing-entry flag of a resource that enabled carbons.
pub const FLAG: ResourceFlag = ResourceFlag(1 << 0);

struct Carbons;

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }
    fn specs(&self) -> &'static [Support] {
        &[
            Support {
                spec: "XEP-0280",
                title: "Message Carbons",
            },
            Support {
                spec: "XEP-0297",
                title: "Stanza Forwarding (carbon copies)",
            },
            Support {
                spec: "XEP-0334",
                title: "Message Processing Hints: no-copy",
            },
        ]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::CARBONS]
    }
    fn session(&self) -> Option<Box<dyn SessionModule>> {
        Some(Box::new(CarbonsSession { enabled: false }))
    }
}

struct CarbonsSession {
    enabled: bool,
}

impl SessionModule for CarbonsSession {
    fn iq(&mut self, iq: &Element, fx: &mut SessionEffects<'_>) -> Option<IqOutcome> {
        let payload = iq.children().next()?;
        if payload.ns != ns::CARBONS {
            return None;
        }
        // §4/§5: `<enable/>` and `<disable/>` in an IQ set to the user's own server.
        let enable = match (iq.attr("type"), payload.name.as_str()) {
            (Some("set"), "enable") => true,
            (Some("set"), "disable") => false,
            _ => return Some(IqOutcome::Error(StanzaErrorCondition::BadRequest)),
        };
        if enable != self.enabled {
            self.enabled = enable;
            fx.flags.push((FLAG, enable));
        }
        Some(IqOutcome::Result(None))
    }
}

/// §6: the `<sent/>` copy of what `account` sent, for its other resources that enabled
/// carbons (whether or not the sending one did). The Router makes it once routing decided
/// (`Router::after_route`), and only if such a resource exists, so a message costs nothing
/// more for an account with one resource.
pub fn sent_copy(account: &Jid, stanza: &Element) -> Option<Element> {
    is_copied(stanza).then(|| wrap("sent", account, stanza))
}

/// §6 (rules of v1.0 of the XEP): which messages are copied. A `chat` message, or a `normal`
/// one with a body; not one marked `<private/>` (§8) or `<no-copy/>` (XEP-0334 §4.3), not
/// a carbon copy itself, not one of a group chat (XEP-0045's private messages carry
/// `<x xmlns='…muc#user'/>`; other resources of the user are not in that room).
/// Whether `stanza` is a carbon copy (§6-§7): `<received/>` or `<sent/>` wrapping a message.
pub fn is_carbon(stanza: &Element) -> bool {
    stanza.get_child("received", ns::CARBONS).is_some()
        || stanza.get_child("sent", ns::CARBONS).is_some()
}

pub fn is_copied(stanza: &Element) -> bool {
    if stanza.name != "message" {
        return false;
    }
    let eligible = match stanza.attr("type") {
        Some("chat") => true,
        None | Some("normal") => stanza.get_child("body", ns::CLIENT).is_some(),
        _ => false,
    };
    eligible
        && !stanza.children().any(|c| {
            c.ns == ns::CARBONS
                || (c.ns == ns::HINTS && c.name == "no-copy")
                || c.ns == "http://jabber.org/protocol/muc#user"
        })
}

/// §7: the copy of a message `account` received, for its resources that did not get it.
/// `None`: the message is not one that is copied.
pub fn received_copy(account: &Jid, stanza: &Element) -> Option<Element> {
    is_copied(stanza).then(|| wrap("received", account, stanza))
}

/// `<message from='account' type='…'><sent|received xmlns='urn:xmpp:carbons:2'><forwarded
/// xmlns='urn:xmpp:forward:0'>original</forwarded></…></message>` (§6, §7: from the bare
/// JID, so a client can tell a carbon from a spoofed one; `to` is set per resource).
fn wrap(kind: &str, account: &Jid, original: &Element) -> Element {
    let mut copy = Element::new("message", ns::CLIENT).with_attr("from", account.text());
    if let Some(t) = original.attr("type") {
        copy.set_attr("type", t);
    }
    let mut forwarded = Element::new("forwarded", ns::FORWARD);
    forwarded.children.push(Node::Element(original.clone()));
    copy.with_child(Element::new(kind, ns::CARBONS).with_child(forwarded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        Element::parse(xml).expect("xml")
    }

    #[test]
    fn which_messages_are_copied() {
        let c = "xmlns='jabber:client'";
        assert!(is_copied(&msg(&format!("<message {c} type='chat'/>"))));
        assert!(is_copied(&msg(&format!(
            "<message {c}><body>hi</body></message>"
        ))));
        assert!(is_copied(&msg(&format!(
            "<message {c} type='normal'><body>hi</body></message>"
        ))));
        assert!(!is_copied(&msg(&format!("<message {c} type='normal'/>"))));
        assert!(!is_copied(&msg(&format!(
            "<message {c} type='headline'><body>x</body></message>"
        ))));
        assert!(!is_copied(&msg(&format!(
            "<message {c} type='groupchat'><body>x</body></message>"
        ))));
        assert!(!is_copied(&msg(&format!(
            "<message {c} type='error'><body>x</body></message>"
        ))));
        assert!(!is_copied(&msg(&format!(
            "<message {c} type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>"
        ))));
        assert!(!is_copied(&msg(&format!(
            "<message {c} type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>"
        ))));
        assert!(!is_copied(&msg(&format!(
            "<message {c} type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>"
        ))));
        assert!(!is_copied(&msg(&format!("<presence {c}/>"))));
    }

    #[test]
    fn copies_come_from_the_bare_jid_and_wrap_the_original() {
        let account = Jid::parse("juliet@example.com").expect("jid");
        let original = msg("<message xmlns='jabber:client' from='romeo@example.net/orchard' to='juliet@example.com/balcony' type='chat'><body>hi</body></message>");
        let copy = received_copy(&account, &original).expect("copied");
        assert_eq!(copy.attr("from"), Some("juliet@example.com"));
        assert_eq!(copy.attr("type"), Some("chat"));
        let inner = copy
            .get_child("received", ns::CARBONS)
            .and_then(|r| r.get_child("forwarded", ns::FORWARD))
            .and_then(|f| f.get_child("message", ns::CLIENT))
            .expect("wrapped");
        assert_eq!(inner.attr("to"), Some("juliet@example.com/balcony"));
    }

    #[test]
    fn enable_sets_the_flag_once() {
        let jid = Jid::parse("juliet@example.com/balcony").expect("jid");
        let mut s = CarbonsSession { enabled: false };
        let mut fx = SessionEffects::new(&jid, &[]);
        let enable = msg(
            "<iq xmlns='jabber:client' type='set' id='1'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        assert!(matches!(
            s.iq(&enable, &mut fx),
            Some(IqOutcome::Result(None))
        ));
        assert!(matches!(
            s.iq(&enable, &mut fx),
            Some(IqOutcome::Result(None))
        ));
        assert_eq!(fx.flags, vec![(FLAG, true)]);
        let get = msg(
            "<iq xmlns='jabber:client' type='get' id='2'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        assert!(matches!(
            s.iq(&get, &mut fx),
            Some(IqOutcome::Error(StanzaErrorCondition::BadRequest))
        ));
        let other =
            msg("<iq xmlns='jabber:client' type='get' id='3'><ping xmlns='urn:xmpp:ping'/></iq>");
        assert!(s.iq(&other, &mut fx).is_none());
    }
}
