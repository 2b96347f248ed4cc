//! Bookmarks in their two forms, converted both ways: XEP-0402 (PEP Native Bookmarks, one
//! item per room in the node `urn:xmpp:bookmarks:1`, the item id being the room's JID) and
//! XEP-0048 (one `<storage xmlns='storage:bookmarks'/>` holding every conference, kept in
//! private XML storage, XEP-0049, or in the PEP node `storage:bookmarks`). XEP-0402 §3 asks
//! a server that advertises `#compat` to keep the two in step; this module is the pure
//! conversion, the PEP module does the keeping.

use crate::element::Element;
use crate::pubsub::{AccessModel, MaxItems, NodeConfig, SendLast};

/// XEP-0402's node and payload namespace.
pub const NS_BOOKMARKS2: &str = "urn:xmpp:bookmarks:1";
/// XEP-0048's storage namespace (also its PEP node).
pub const NS_LEGACY: &str = "storage:bookmarks";
/// XEP-0402 §3: the server keeps XEP-0048 bookmarks in private XML storage in step.
pub const FEATURE_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
/// XEP-0402 §3: and XEP-0048 bookmarks in the PEP node `storage:bookmarks`.
pub const FEATURE_COMPAT_PEP: &str = "urn:xmpp:bookmarks:1#compat-pep";
/// XEP-0048 §3.2 (PEP storage): the one item's id.
pub const LEGACY_ITEM_ID: &str = "current";

/// The configuration XEP-0402 §5 prescribes for its node (and XEP-0048 §3.2 for its own):
/// private to the account, every item kept, nothing sent at presence.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        access_model: AccessModel::Whitelist,
        max_items: MaxItems::Max,
        persist_items: true,
        send_last_published_item: SendLast::Never,
        ..NodeConfig::default()
    }
}

/// One room: its JID (the XEP-0402 item id) and its `<conference/>` in XEP-0402's form.
#[derive(Debug, Clone, PartialEq)]
pub struct Bookmark {
    pub jid: String,
    pub conference: Element,
}

fn text_child(name: &str, ns: &str, text: &str) -> Element {
    Element::new(name, ns).with_text(text)
}

/// XEP-0048 §3 → XEP-0402 §2: each `<conference jid=...>` of a `<storage/>` as a bookmark
/// (conferences without a JID are dropped; a room listed twice keeps its last entry). URLs
/// have no XEP-0402 form and stay only in the legacy storage.
pub fn from_legacy(storage: &Element) -> Vec<Bookmark> {
    let mut out: Vec<Bookmark> = Vec::new();
    for c in storage.children().filter(|c| c.is("conference", NS_LEGACY)) {
        let Some(jid) = c.attr("jid").filter(|j| !j.is_empty()) else {
            continue;
        };
        let mut conf = Element::new("conference", NS_BOOKMARKS2);
        if let Some(name) = c.attr("name") {
            conf.set_attr("name", name);
        }
        if matches!(c.attr("autojoin"), Some("true" | "1")) {
            conf.set_attr("autojoin", "true");
        }
        for field in ["nick", "password"] {
            if let Some(v) = c.get_child(field, NS_LEGACY) {
                conf = conf.with_child(text_child(field, NS_BOOKMARKS2, &v.text()));
            }
        }
        out.retain(|b| b.jid != jid);
        out.push(Bookmark {
            jid: jid.to_owned(),
            conference: conf,
        });
    }
    out
}

/// XEP-0402 → XEP-0048: one `<storage/>` with a `<conference/>` per bookmark, then the
/// `urls` kept from the legacy storage it replaces. `<extensions/>` have no legacy form.
pub fn to_legacy(bookmarks: &[Bookmark], urls: &[Element]) -> Element {
    let mut storage = Element::new("storage", NS_LEGACY);
    for b in bookmarks {
        let c = &b.conference;
        let mut conf = Element::new("conference", NS_LEGACY).with_attr("jid", b.jid.as_str());
        if let Some(name) = c.attr("name") {
            conf.set_attr("name", name);
        }
        let autojoin = matches!(c.attr("autojoin"), Some("true" | "1"));
        conf.set_attr("autojoin", if autojoin { "true" } else { "false" });
        for field in ["nick", "password"] {
            if let Some(v) = c.get_child(field, NS_BOOKMARKS2) {
                conf = conf.with_child(text_child(field, NS_LEGACY, &v.text()));
            }
        }
        storage = storage.with_child(conf);
    }
    for u in urls {
        storage = storage.with_child(u.clone());
    }
    storage
}

/// The `<url/>` entries of a legacy storage.
pub fn legacy_urls(storage: &Element) -> Vec<Element> {
    storage
        .children()
        .filter(|c| c.is("url", NS_LEGACY))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: &str = "<storage xmlns='storage:bookmarks'>\
        <conference name='Council' autojoin='1' jid='council@conference.example.org'>\
        <nick>JC</nick><password>pw</password></conference>\
        <conference jid='lobby@conference.example.org'/>\
        <conference name='no jid'/>\
        <url name='site' url='https://example.org'/></storage>";

    #[test]
    fn legacy_becomes_one_bookmark_per_room() {
        let storage = Element::parse(LEGACY).unwrap();
        let b = from_legacy(&storage);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].jid, "council@conference.example.org");
        assert_eq!(b[0].conference.attr("name"), Some("Council"));
        assert_eq!(b[0].conference.attr("autojoin"), Some("true"));
        assert_eq!(
            b[0].conference
                .get_child("nick", NS_BOOKMARKS2)
                .unwrap()
                .text(),
            "JC"
        );
        assert_eq!(b[1].conference.attr("autojoin"), None);
    }

    #[test]
    fn round_trip_keeps_rooms_and_urls() {
        let storage = Element::parse(LEGACY).unwrap();
        let back = to_legacy(&from_legacy(&storage), &legacy_urls(&storage));
        let again = from_legacy(&back);
        assert_eq!(again, from_legacy(&storage));
        assert_eq!(legacy_urls(&back).len(), 1);
        let council = back.children().next().unwrap();
        assert_eq!(council.attr("autojoin"), Some("true"));
        assert_eq!(
            council.get_child("password", NS_LEGACY).unwrap().text(),
            "pw"
        );
    }

    #[test]
    fn a_room_listed_twice_keeps_its_last_entry() {
        let storage = Element::parse(
            "<storage xmlns='storage:bookmarks'><conference jid='a@c' name='1'/>\
             <conference jid='a@c' name='2'/></storage>",
        )
        .unwrap();
        let b = from_legacy(&storage);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].conference.attr("name"), Some("2"));
    }
}
