//! Which senders a blocklist entry covers (XEP-0191 §3.1 uses the JID matching of XEP-0016
//! §2.1): a full JID matches itself, a bare JID every resource of it, a domain/resource that
//! exact JID, and a domain everything at that domain.

use crate::jid::Jid;

/// Does blocklist `item` cover `sender`?
pub fn covers(item: &Jid, sender: &Jid) -> bool {
    match (item.local(), item.resource()) {
        (Some(_), Some(_)) => item == sender,
        (Some(_), None) => item.local() == sender.local() && item.domain() == sender.domain(),
        (None, Some(_)) => {
            sender.local().is_none()
                && item.domain() == sender.domain()
                && item.resource() == sender.resource()
        }
        (None, None) => item.domain() == sender.domain(),
    }
}

/// Does any entry of `list` cover `sender`?
pub fn is_blocked(list: &[Jid], sender: &Jid) -> bool {
    list.iter().any(|item| covers(item, sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    #[test]
    fn xep_0016_matching() {
        let cases = [
            (
                "romeo@example.net/orchard",
                "romeo@example.net/orchard",
                true,
            ),
            (
                "romeo@example.net/orchard",
                "romeo@example.net/garden",
                false,
            ),
            ("romeo@example.net/orchard", "romeo@example.net", false),
            ("romeo@example.net", "romeo@example.net/orchard", true),
            ("romeo@example.net", "romeo@example.net", true),
            ("romeo@example.net", "juliet@example.net", false),
            ("example.net/res", "example.net/res", true),
            ("example.net/res", "romeo@example.net/res", false),
            ("example.net", "romeo@example.net/orchard", true),
            ("example.net", "example.net", true),
            ("example.net", "romeo@example.org", false),
            // Items are prepared JIDs: case differences in the localpart do not escape them.
            ("Romeo@Example.NET", "romeo@example.net/x", true),
        ];
        for (item, sender, expected) in cases {
            assert_eq!(covers(&j(item), &j(sender)), expected, "{item} vs {sender}");
        }
        assert!(is_blocked(&[j("a@x"), j("y")], &j("b@y/r")));
        assert!(!is_blocked(&[], &j("b@y/r")));
    }
}
