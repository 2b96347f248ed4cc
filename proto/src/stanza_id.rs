//! Unique and Stable Stanza IDs (XEP-0359): the ids the server gives the messages it
//! archives. An [`ArchiveId`] is a 64-bit number whose order is the order of time across the
//! cluster: the milliseconds since the Unix epoch in the top 42 bits (until the year 2109),
//! the node that assigned it in the next 10, and a per-node sequence in the last 12. Ids
//! assigned by one node are strictly increasing; ids of two nodes are ordered by their
//! millisecond and, within one, by node. Written out it is 16 lower-case hex digits, so the
//! text sorts as the number does.
//!
//! Because the time is the top of the id, a time bound of a MAM query (XEP-0313 §4.1.2
//! `start`/`end`) is an id bound too ([`ArchiveId::floor`], [`ArchiveId::ceiling`]): the
//! archive answers both with one range of its index.
//!
//! [`strip_forged`], [`add`] and [`origin_id`] handle the XEP-0359 elements on a message:
//! the server removes `<stanza-id/>`s that claim to be its own before adding the real one.

use std::fmt;

use crate::element::Element;
use crate::jid::Jid;
use crate::ns;

/// Bits of the node number.
const NODE_BITS: u32 = 10;
/// Bits of the per-node sequence within one millisecond.
const SEQ_BITS: u32 = 12;
const LOW_BITS: u32 = NODE_BITS + SEQ_BITS;
/// The largest millisecond an id can carry.
pub const MAX_MS: u64 = (1 << (64 - LOW_BITS)) - 1;

/// A server-assigned, time-ordered message id (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchiveId(pub u64);

impl ArchiveId {
    /// The id for millisecond `ms`, node `node` (its low 10 bits) and sequence `seq` (its
    /// low 12 bits).
    pub fn new(ms: u64, node: u16, seq: u16) -> ArchiveId {
        let node = u64::from(node) & ((1 << NODE_BITS) - 1);
        let seq = u64::from(seq) & ((1 << SEQ_BITS) - 1);
        ArchiveId((ms.min(MAX_MS) << LOW_BITS) | (node << SEQ_BITS) | seq)
    }

    /// The millisecond (since the Unix epoch) the id was assigned in.
    pub fn millis(self) -> u64 {
        self.0 >> LOW_BITS
    }

    /// The node (of the cluster) that assigned the id.
    pub fn node(self) -> u16 {
        ((self.0 >> SEQ_BITS) & ((1 << NODE_BITS) - 1)) as u16
    }

    /// The smallest id of millisecond `ms`: every id assigned at or after `ms` is ≥ it.
    pub fn floor(ms: u64) -> ArchiveId {
        ArchiveId(ms.min(MAX_MS) << LOW_BITS)
    }

    /// The largest id of millisecond `ms`: every id assigned at or before `ms` is ≤ it.
    pub fn ceiling(ms: u64) -> ArchiveId {
        ArchiveId((ms.min(MAX_MS) << LOW_BITS) | ((1 << LOW_BITS) - 1))
    }

    /// The id written as 16 hex digits, or `None` for anything else (an id a client made
    /// up: XEP-0313 §4.1.3 answers it with `item-not-found`).
    pub fn parse(text: &str) -> Option<ArchiveId> {
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(ArchiveId)
    }
}

impl fmt::Display for ArchiveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Assigns the ids of one node: strictly increasing even when the clock steps back or more
/// than 4096 ids are asked for in one millisecond (the id then borrows the next
/// millisecond; it stays within a few milliseconds of the clock under any real load).
#[derive(Debug, Clone)]
pub struct ArchiveIdGenerator {
    node: u16,
    last: Option<ArchiveId>,
    /// The highest id of another node seen since (see [`ArchiveIdGenerator::observe`]).
    floor: Option<ArchiveId>,
}

impl ArchiveIdGenerator {
    pub fn new(node: u16) -> ArchiveIdGenerator {
        ArchiveIdGenerator {
            node,
            last: None,
            floor: None,
        }
    }

    /// The next id, the clock reading `now_ms`: above every id this generator gave and
    /// every id it [observed](ArchiveIdGenerator::observe).
    pub fn next(&mut self, now_ms: u64) -> ArchiveId {
        let mut id = ArchiveId::new(now_ms, self.node, 0);
        if let Some(last) = self.last.filter(|last| id <= *last) {
            let seq = last.0 & ((1 << SEQ_BITS) - 1);
            id = if seq + 1 < (1 << SEQ_BITS) {
                ArchiveId(last.0 + 1)
            } else {
                ArchiveId::new(last.millis() + 1, self.node, 0)
            };
        }
        if let Some(floor) = self.floor.take().filter(|floor| id <= *floor) {
            // Our first id above it: in its millisecond if our node sorts after its node,
            // else in the next.
            let same_ms = ArchiveId::new(floor.millis(), self.node, 0);
            id = if same_ms > floor {
                same_ms
            } else {
                ArchiveId::new(floor.millis() + 1, self.node, 0)
            };
        }
        self.last = Some(id);
        id
    }

    /// An id another node of the cluster gave, seen here (on a message it routed to a
    /// session of this node): this generator's next id is above it. Within one
    /// millisecond, ids of two nodes sort by node, not by what happened first; a reply
    /// routed here to a message just delivered here must still sort after it (a hybrid
    /// logical clock: the clock reading, raised to what was seen).
    pub fn observe(&mut self, id: ArchiveId) {
        if id.node() == self.node {
            return;
        }
        if self.floor.is_none_or(|f| id > f) && self.last.is_none_or(|l| id > l) {
            self.floor = Some(id);
        }
    }
}

/// Remove from `message` every `<stanza-id xmlns='urn:xmpp:sid:0'/>` whose `by` is `by`
/// (compared as JIDs, so a case variant of the address is caught too; as text when either
/// is not a JID), and return how many. XEP-0359 §3 (Business Rules): an entity that assigns
/// stanza ids "MUST delete" any such element claiming its address, "even if they are not
/// adding their own stanza ID": otherwise a sender could forge the archive id a recipient's
/// client trusts (XEP-0313 §3.5). Elements `by` other entities (a MUC, a remote server)
/// stay; routers MUST NOT strip those.
pub fn strip_forged(message: &mut Element, by: &str) -> usize {
    let ours = Jid::parse(by).ok();
    message.remove_children(|c| {
        c.is("stanza-id", ns::SID)
            && c.attr("by")
                .is_some_and(|claimed| match (&ours, Jid::parse(claimed)) {
                    (Some(ours), Ok(claimed)) => *ours == claimed,
                    _ => claimed == by,
                })
    })
}

/// Append `<stanza-id xmlns='urn:xmpp:sid:0' by=.. id=../>` to `message` (XEP-0359 §2.1;
/// XEP-0313 §3.5: `by` is the archive's address, the account's bare JID). Call
/// [`strip_forged`] first: §3 allows one `<stanza-id/>` per `by`.
pub fn add(message: &mut Element, by: &str, id: &str) {
    message.children.push(crate::element::Node::Element(
        Element::new("stanza-id", ns::SID)
            .with_attr("by", by)
            .with_attr("id", id),
    ));
}

/// The `id` of the message's `<origin-id xmlns='urn:xmpp:sid:0'/>` (XEP-0359 §2.2), the id
/// its sender chose; the server preserves it.
pub fn origin_id(message: &Element) -> Option<&str> {
    message.get_child("origin-id", ns::SID)?.attr("id")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        Element::parse(xml).unwrap_or_else(|e| panic!("test XML {xml}: {e}"))
    }

    #[test]
    fn forged_stanza_ids_are_stripped() {
        let mut msg = el(
            "<message xmlns='jabber:client' to='juliet@capulet.lit'><body>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='juliet@capulet.lit' id='forged'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='Juliet@CAPULET.lit' id='forged-too'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example.org' id='muc'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' id='no-by'/>\
             <stanza-id xmlns='urn:other' by='juliet@capulet.lit' id='other-ns'/>\
             <origin-id xmlns='urn:xmpp:sid:0' id='de305d54'/></message>",
        );
        assert_eq!(strip_forged(&mut msg, "juliet@capulet.lit"), 2);
        assert_eq!(strip_forged(&mut msg, "juliet@capulet.lit"), 0);
        let ids: Vec<_> = msg.children().filter_map(|c| c.attr("id")).collect();
        assert_eq!(ids, ["muc", "no-by", "other-ns", "de305d54"]);
        // A `by` that is not a JID is compared as text.
        let mut msg = el("<message xmlns='jabber:client'><stanza-id xmlns='urn:xmpp:sid:0' by='@bad' id='x'/></message>");
        assert_eq!(strip_forged(&mut msg, "juliet@capulet.lit"), 0);
        assert_eq!(strip_forged(&mut msg, "@bad"), 1);
    }

    #[test]
    fn adds_stanza_ids_and_reads_origin_ids() {
        let mut msg = el("<message xmlns='jabber:client'><body>hi</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='de305d54'/></message>");
        assert_eq!(origin_id(&msg), Some("de305d54"));
        add(&mut msg, "juliet@capulet.lit", "0000018b2e6c4000");
        let mut wire = Vec::new();
        msg.write_to(&mut wire, ns::CLIENT);
        assert_eq!(
            String::from_utf8(wire).expect("utf-8"),
            "<message><body>hi</body><origin-id xmlns='urn:xmpp:sid:0' id='de305d54'/>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='juliet@capulet.lit' id='0000018b2e6c4000'/></message>"
        );
        assert_eq!(origin_id(&el("<message xmlns='jabber:client'/>")), None);
        assert_eq!(
            origin_id(&el(
                "<message xmlns='jabber:client'><origin-id xmlns='urn:xmpp:sid:0'/></message>"
            )),
            None
        );
    }

    #[test]
    fn ids_order_as_time_and_text_orders_as_ids() {
        let a = ArchiveId::new(1_700_000_000_000, 3, 7);
        let b = ArchiveId::new(1_700_000_000_001, 1, 0);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.millis(), 1_700_000_000_000);
        assert_eq!(ArchiveId::parse(&a.to_string()), Some(a));
        assert!(ArchiveId::floor(a.millis()) <= a && a <= ArchiveId::ceiling(a.millis()));
        assert!(ArchiveId::ceiling(a.millis()) < ArchiveId::floor(b.millis()));
    }

    #[test]
    fn made_up_ids_do_not_parse() {
        for bad in [
            "",
            "123",
            "zzzzzzzzzzzzzzzz",
            "00000000000000000",
            "+000000000000001",
        ] {
            assert_eq!(ArchiveId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_generator_never_repeats_or_goes_back() {
        let mut g = ArchiveIdGenerator::new(5);
        let mut last = g.next(1000);
        // The clock stands still for more ids than a millisecond holds, then steps back.
        for now in std::iter::repeat_n(1000, 5000).chain([999, 998, 1002]) {
            let id = g.next(now);
            assert!(id > last, "{id} after {last}");
            last = id;
        }
        assert!(last.millis() <= 1003);
    }

    #[test]
    fn an_id_after_one_observed_from_another_node_sorts_after_it() {
        for (mine, theirs) in [(2u16, 7u16), (7, 2)] {
            let mut g = ArchiveIdGenerator::new(mine);
            let seen = ArchiveId::new(1000, theirs, 3);
            g.observe(seen);
            // The same millisecond on this node's clock (or an earlier one).
            for now in [1000, 999] {
                let mut g = g.clone();
                let id = g.next(now);
                assert!(id > seen, "{id} after {seen} observed");
                assert_eq!(id.node(), mine, "an id of this node's");
            }
            let first = g.next(1000);
            let second = g.next(1000);
            assert!(second > first, "and strictly increasing after it");
            // Its own ids and older ones are no floor.
            g.observe(ArchiveId::new(5, theirs, 0));
            assert!(g.next(1000) > second);
        }
        let mut g = ArchiveIdGenerator::new(3);
        g.observe(ArchiveId::new(2000, 3, 9));
        assert_eq!(
            g.next(1000),
            ArchiveId::new(1000, 3, 0),
            "its own ids are not observed"
        );
    }
}
