//! XEP-0033 Extended Stanza Addressing: one stanza for many addressees, the `<addresses/>`
//! a multicast sender adds and the copies a multicast service makes of it.
//!
//! Switchboard uses it for per-domain presence over federation (issue 22; the carriers'
//! "presence packets should be per domain instead of per contact"): a presence change for
//! many contacts on one remote domain goes to that domain once, its contacts as `bcc`
//! addresses, and the receiving server makes the copies.

use crate::element::Element;
use crate::jid::Jid;
use crate::ns;

/// The address types a copy is made for (§4.6: `replyto`, `replyroom`, `noreply` and
/// `ofrom` only describe the stanza).
const DELIVERED_TYPES: [&str; 3] = ["to", "cc", "bcc"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// More addressees than the service takes (§8: a service MAY limit them; the sender
    /// hears `not-acceptable`).
    #[error("more than {0} addresses")]
    TooMany(usize),
    /// An address to deliver to with no usable `jid` (§4.2: `uri` and `node` addresses are
    /// not for an XMPP service to deliver).
    #[error("an address has no valid jid")]
    BadAddress,
}

/// The stanza `stanza` (its `from` set) sent once to `domain` for `addressees`, each a
/// `bcc` address (§4.6: no addressee learns the others).
pub fn multicast(stanza: &Element, domain: &str, addressees: &[Jid]) -> Element {
    let mut out = stanza.clone();
    out.remove_children(|c| c.is("addresses", ns::ADDRESS));
    out.set_attr("to", domain);
    let mut addresses = Element::new("addresses", ns::ADDRESS);
    for jid in addressees {
        addresses.push_child(
            Element::new("address", ns::ADDRESS)
                .with_attr("type", "bcc")
                .with_attr("jid", jid.to_string()),
        );
    }
    out.with_child(addresses)
}

/// Whether `stanza` asks for multicast (carries `<addresses/>`).
pub fn is_multicast(stanza: &Element) -> bool {
    stanza.get_child("addresses", ns::ADDRESS).is_some()
}

/// What a multicast service delivers for `stanza`: the addressees not yet delivered to
/// (`to`, `cc`, `bcc` without `delivered='true'`, at most `max`), and the copy each gets
/// (§6: every address marked `delivered='true'`, the `bcc` ones removed; its `to` is set
/// per addressee by the caller). Duplicate addressees get one copy.
pub fn expand(stanza: &Element, max: usize) -> Result<(Vec<Jid>, Element), AddressError> {
    let mut copy = stanza.clone();
    let mut addressees: Vec<Jid> = Vec::new();
    if let Some(addresses) = copy.get_child_mut("addresses", ns::ADDRESS) {
        for a in addresses.children() {
            if !a.is("address", ns::ADDRESS)
                || !a.attr("type").is_some_and(|t| DELIVERED_TYPES.contains(&t))
                || a.attr("delivered") == Some("true")
            {
                continue;
            }
            let jid = a
                .attr("jid")
                .and_then(|j| Jid::parse(j).ok())
                .ok_or(AddressError::BadAddress)?;
            if !addressees.contains(&jid) {
                if addressees.len() == max {
                    return Err(AddressError::TooMany(max));
                }
                addressees.push(jid);
            }
        }
        addresses.remove_children(|a| a.attr("type") == Some("bcc"));
        for a in addresses.children_mut() {
            if a.attr("type").is_some_and(|t| DELIVERED_TYPES.contains(&t)) {
                a.set_attr("delivered", "true");
            }
        }
    }
    // With no address left (all were bcc) the element says nothing (§6).
    copy.remove_children(|c| c.is("addresses", ns::ADDRESS) && c.children().next().is_none());
    Ok((addressees, copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    #[test]
    fn a_presence_goes_once_to_the_domain_with_bcc_addresses() {
        let p = Element::new("presence", ns::CLIENT).with_attr("from", "a@x.test/r");
        let out = multicast(&p, "y.test", &[jid("b@y.test"), jid("c@y.test")]);
        assert_eq!(
            out.to_xml_string(),
            "<presence xmlns='jabber:client' from='a@x.test/r' to='y.test'>\
             <addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='bcc' jid='b@y.test'/><address type='bcc' jid='c@y.test'/>\
             </addresses></presence>"
        );
        let (to, copy) = expand(&out, 10).unwrap();
        assert_eq!(to, vec![jid("b@y.test"), jid("c@y.test")]);
        // Nobody learns the other bcc addressees: the element goes with them.
        assert!(!is_multicast(&copy));
        assert_eq!(copy.attr("from"), Some("a@x.test/r"));
    }

    #[test]
    fn copies_mark_visible_addresses_delivered_and_skip_delivered_ones() {
        let m = Element::parse(
            "<message xmlns='jabber:client' from='a@x.test/r' to='y.test'>\
             <addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='to' jid='b@y.test'/><address type='cc' jid='c@y.test'/>\
             <address type='bcc' jid='d@y.test'/><address type='to' jid='e@y.test' delivered='true'/>\
             <address type='replyto' jid='f@y.test'/><address type='to' jid='b@y.test'/>\
             </addresses><body>hi</body></message>",
        )
        .unwrap();
        let (to, copy) = expand(&m, 10).unwrap();
        assert_eq!(to, vec![jid("b@y.test"), jid("c@y.test"), jid("d@y.test")]);
        let addresses = copy.get_child("addresses", ns::ADDRESS).unwrap();
        let seen: Vec<(Option<&str>, Option<&str>, Option<&str>)> = addresses
            .children()
            .map(|a| (a.attr("type"), a.attr("jid"), a.attr("delivered")))
            .collect();
        assert_eq!(
            seen,
            vec![
                (Some("to"), Some("b@y.test"), Some("true")),
                (Some("cc"), Some("c@y.test"), Some("true")),
                (Some("to"), Some("e@y.test"), Some("true")),
                (Some("replyto"), Some("f@y.test"), None),
                (Some("to"), Some("b@y.test"), Some("true")),
            ]
        );
        assert_eq!(
            copy.get_child("body", ns::CLIENT).map(|b| b.text()),
            Some("hi".into())
        );
    }

    #[test]
    fn too_many_or_unusable_addresses_are_refused() {
        let p = Element::new("presence", ns::CLIENT);
        let three = multicast(
            &p,
            "y.test",
            &[jid("a@y.test"), jid("b@y.test"), jid("c@y.test")],
        );
        assert_eq!(expand(&three, 2).unwrap_err(), AddressError::TooMany(2));
        assert_eq!(expand(&three, 3).unwrap().0.len(), 3);
        let bad = Element::parse(
            "<presence xmlns='jabber:client'><addresses xmlns='http://jabber.org/protocol/address'>\
             <address type='to' uri='mailto:x@example.com'/></addresses></presence>",
        )
        .unwrap();
        assert_eq!(expand(&bad, 10).unwrap_err(), AddressError::BadAddress);
    }
}
