//! Stream management (XEP-0198 v1.6): its nonzas, the handled-stanza counters and the queue of
//! stanzas the peer has not acknowledged yet.
//!
//! Pure: the node picks resumption ids, runs the timers and decides where a detached
//! session's queue goes; this module only parses, counts and serialises. Counters are
//! 32-bit and wrap around (XEP-0198 §5: "h ... MUST wrap around to 0 after 2^32 - 1").

use std::collections::VecDeque;

use crate::element::Element;
use crate::error::{StanzaErrorCondition, StreamError, StreamErrorCondition};
use crate::ns;

/// A stream-management element from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nonza {
    /// `<enable/>` (§3): `resume` asks for a resumable session, `max` is the client's
    /// preferred resumption timeout in seconds.
    Enable { resume: bool, max: Option<u32> },
    /// `<resume previd h/>` (§5): continue session `previd`; the client handled `h` stanzas.
    Resume { previd: String, h: u32 },
    /// `<r/>` (§4): the peer asks for our handled count.
    Request,
    /// `<a h/>` (§4): the peer has handled `h` stanzas of ours.
    Ack { h: u32 },
}

/// Why a stream-management element could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("unknown stream-management element <{0}/>")]
    UnknownElement(String),
    #[error("missing or invalid attribute {0:?} (an unsigned 32-bit integer or id expected)")]
    Attribute(&'static str),
}

/// Read a top-level element in the `urn:xmpp:sm:3` namespace.
pub fn parse(el: &Element) -> Result<Nonza, Malformed> {
    match el.name.as_str() {
        "enable" => Ok(Nonza::Enable {
            // XML Schema booleans (§3): "true" or "1".
            resume: matches!(el.attr("resume"), Some("true" | "1")),
            max: match el.attr("max") {
                None => None,
                Some(m) => Some(m.parse().map_err(|_| Malformed::Attribute("max"))?),
            },
        }),
        "resume" => Ok(Nonza::Resume {
            previd: el
                .attr("previd")
                .filter(|p| !p.is_empty())
                .ok_or(Malformed::Attribute("previd"))?
                .to_string(),
            h: handled_attr(el)?,
        }),
        "r" => Ok(Nonza::Request),
        "a" => Ok(Nonza::Ack {
            h: handled_attr(el)?,
        }),
        other => Err(Malformed::UnknownElement(other.to_string())),
    }
}

fn handled_attr(el: &Element) -> Result<u32, Malformed> {
    el.attr("h")
        .and_then(|h| h.parse().ok())
        .ok_or(Malformed::Attribute("h"))
}

/// The stream feature (§2), offered after authentication.
pub fn feature() -> Element {
    Element::new("sm", ns::SM)
}

/// `<enabled/>` (§3). `id` is present for a resumable session, with the `max` seconds the
/// server will wait and the `location` (host:port) the client should reconnect to, if any.
pub fn enabled(id: Option<&str>, max: Option<u32>, location: Option<&str>) -> Element {
    let mut el = Element::new("enabled", ns::SM);
    if let Some(id) = id {
        el.set_attr("id", id);
        el.set_attr("resume", "true");
        if let Some(max) = max {
            el.set_attr("max", max.to_string());
        }
        if let Some(location) = location {
            el.set_attr("location", location);
        }
    }
    el
}

/// `<resumed previd h/>` (§5): `h` is how many of the client's stanzas the server handled.
pub fn resumed(previd: &str, h: u32) -> Element {
    Element::new("resumed", ns::SM)
        .with_attr("previd", previd)
        .with_attr("h", h.to_string())
}

/// `<failed/>` with a stanza error condition (§3, §5), and the server's handled count when a
/// session was found (v1.6: lets the client know which of its stanzas arrived).
pub fn failed(condition: StanzaErrorCondition, h: Option<u32>) -> Element {
    let mut el = Element::new("failed", ns::SM)
        .with_child(Element::new(condition.as_str(), ns::STANZAS_ERRORS));
    if let Some(h) = h {
        el.set_attr("h", h.to_string());
    }
    el
}

/// `<a h/>` (§4).
pub fn ack(h: u32) -> Element {
    Element::new("a", ns::SM).with_attr("h", h.to_string())
}

/// `<r/>` (§4).
pub fn request() -> Element {
    Element::new("r", ns::SM)
}

/// The stream error for an `<a/>` that acknowledges more than was sent (§4: "undefined-condition
/// ... with an application-specific <handled-count-too-high/>").
pub fn handled_count_too_high(h: u32, send_count: u32) -> StreamError {
    StreamError::with_text(
        StreamErrorCondition::UndefinedCondition,
        "You acknowledged more stanzas than were sent",
    )
    .with_app(
        Element::new("handled-count-too-high", ns::SM)
            .with_attr("h", h.to_string())
            .with_attr("send-count", send_count.to_string()),
    )
}

/// The resumption timeout to grant (§3): the client's wish, else the default, never above
/// the ceiling.
pub fn granted_max(requested: Option<u32>, default: u32, ceiling: u32) -> u32 {
    requested.unwrap_or(default).min(ceiling)
}

/// A handled-stanza counter, modulo 2^32 (§4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter(pub u32);

impl Counter {
    /// One more stanza handled.
    pub fn bump(&mut self) {
        self.0 = self.0.wrapping_add(1);
    }
}

/// The acknowledgement was for more stanzas than were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("acknowledged h={h} but only {send_count} stanzas were sent")]
pub struct AckTooHigh {
    pub h: u32,
    pub send_count: u32,
}

/// Stanzas sent to the peer and not yet acknowledged, oldest first, with their bytes
/// counted so that the caller can bound the queue.
#[derive(Debug, Clone)]
pub struct Unacked<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// Stanzas sent since enable (mod 2^32): the count the peer's `h` is measured against.
    sent: Counter,
}

impl<T> Default for Unacked<T> {
    fn default() -> Self {
        Unacked {
            items: VecDeque::new(),
            bytes: 0,
            sent: Counter::default(),
        }
    }
}

impl<T> Unacked<T> {
    /// Continue a queue whose `sent` count and items are known (a session handed over).
    pub fn restore(sent: u32, items: impl IntoIterator<Item = (T, usize)>) -> Unacked<T> {
        let items: VecDeque<(T, usize)> = items.into_iter().collect();
        Unacked {
            bytes: items.iter().map(|(_, b)| *b).sum(),
            items,
            sent: Counter(sent),
        }
    }

    /// A stanza of `bytes` bytes was sent.
    pub fn push(&mut self, item: T, bytes: usize) {
        self.sent.bump();
        self.bytes += bytes;
        self.items.push_back((item, bytes));
    }

    /// The peer handled `h` stanzas: drop those it acknowledged and return them, oldest
    /// first. An `h` behind an earlier one (a replayed ack) is, modulo 2^32, a count larger
    /// than the queue, and is refused like any other count too high.
    pub fn ack(&mut self, h: u32) -> Result<Vec<T>, AckTooHigh> {
        let acked = self.acked();
        let newly = h.wrapping_sub(acked) as usize;
        if newly > self.items.len() {
            return Err(AckTooHigh {
                h,
                send_count: self.sent.0,
            });
        }
        let mut released = Vec::with_capacity(newly);
        for _ in 0..newly {
            if let Some((item, bytes)) = self.items.pop_front() {
                self.bytes -= bytes;
                released.push(item);
            }
        }
        Ok(released)
    }

    /// The peer's handled count as of its last acknowledgement.
    pub fn acked(&self) -> u32 {
        self.sent.0.wrapping_sub(self.items.len() as u32)
    }

    /// Stanzas sent since enable, modulo 2^32.
    pub fn sent(&self) -> u32 {
        self.sent.0
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of the stanzas waiting for an acknowledgement.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The unacknowledged stanzas, oldest first (to retransmit after `<resumed/>`, §5).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(t, _)| t)
    }

    /// Take every unacknowledged stanza (the session ends: §4 and RFC 6121 §8.5 decide
    /// where each goes).
    pub fn drain(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.items.drain(..).map(|(t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        Element::parse(xml).unwrap()
    }

    #[test]
    fn parses_the_four_nonzas() {
        assert_eq!(
            parse(&el(
                "<enable xmlns='urn:xmpp:sm:3' resume='true' max='300'/>"
            )),
            Ok(Nonza::Enable {
                resume: true,
                max: Some(300)
            })
        );
        assert_eq!(
            parse(&el("<enable xmlns='urn:xmpp:sm:3'/>")),
            Ok(Nonza::Enable {
                resume: false,
                max: None
            })
        );
        assert_eq!(
            parse(&el("<enable xmlns='urn:xmpp:sm:3' resume='1'/>")),
            Ok(Nonza::Enable {
                resume: true,
                max: None
            })
        );
        assert_eq!(
            parse(&el(
                "<resume xmlns='urn:xmpp:sm:3' previd='abc' h='4294967295'/>"
            )),
            Ok(Nonza::Resume {
                previd: "abc".into(),
                h: u32::MAX
            })
        );
        assert_eq!(parse(&el("<r xmlns='urn:xmpp:sm:3'/>")), Ok(Nonza::Request));
        assert_eq!(
            parse(&el("<a xmlns='urn:xmpp:sm:3' h='7'/>")),
            Ok(Nonza::Ack { h: 7 })
        );
    }

    #[test]
    fn refuses_bad_counts_and_unknown_elements() {
        for bad in [
            "<a xmlns='urn:xmpp:sm:3'/>",
            "<a xmlns='urn:xmpp:sm:3' h='-1'/>",
            "<a xmlns='urn:xmpp:sm:3' h='4294967296'/>",
            "<resume xmlns='urn:xmpp:sm:3' h='1'/>",
            "<resume xmlns='urn:xmpp:sm:3' previd='' h='1'/>",
            "<enable xmlns='urn:xmpp:sm:3' max='soon'/>",
        ] {
            assert!(
                matches!(parse(&el(bad)), Err(Malformed::Attribute(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse(&el("<enabled xmlns='urn:xmpp:sm:3'/>")),
            Err(Malformed::UnknownElement("enabled".into()))
        );
    }

    #[test]
    fn serialises_exact_bytes() {
        assert_eq!(
            enabled(Some("x1"), Some(300), None).to_xml_string(),
            "<enabled xmlns='urn:xmpp:sm:3' id='x1' resume='true' max='300'/>"
        );
        assert_eq!(
            enabled(None, Some(300), None).to_xml_string(),
            "<enabled xmlns='urn:xmpp:sm:3'/>"
        );
        assert_eq!(
            resumed("x1", 5).to_xml_string(),
            "<resumed xmlns='urn:xmpp:sm:3' previd='x1' h='5'/>"
        );
        assert_eq!(
            failed(StanzaErrorCondition::ItemNotFound, Some(3)).to_xml_string(),
            "<failed xmlns='urn:xmpp:sm:3' h='3'><item-not-found \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        );
        assert_eq!(ack(9).to_xml_string(), "<a xmlns='urn:xmpp:sm:3' h='9'/>");
        let err = String::from_utf8(handled_count_too_high(10, 8).to_bytes()).unwrap();
        assert!(err.contains("<undefined-condition"), "{err}");
        assert!(
            err.contains("<handled-count-too-high xmlns='urn:xmpp:sm:3' h='10' send-count='8'/>"),
            "{err}"
        );
    }

    #[test]
    fn acks_release_oldest_first_and_repeat_acks_are_harmless() {
        let mut q = Unacked::default();
        for (i, s) in ["a", "bb", "ccc"].into_iter().enumerate() {
            q.push(i, s.len());
        }
        assert_eq!((q.len(), q.bytes(), q.sent(), q.acked()), (3, 6, 3, 0));
        assert_eq!(q.ack(2), Ok(vec![0, 1]));
        assert_eq!((q.len(), q.bytes(), q.acked()), (1, 3, 2));
        assert_eq!(q.ack(2), Ok(vec![]));
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            q.ack(4),
            Err(AckTooHigh {
                h: 4,
                send_count: 3
            })
        );
        // An h behind the last one is a huge count modulo 2^32.
        assert!(q.ack(1).is_err());
        assert_eq!(q.drain(), vec![2]);
        assert_eq!((q.len(), q.bytes()), (0, 0));
    }

    #[test]
    fn counters_wrap_around_at_two_to_the_32() {
        let mut q = Unacked::restore(u32::MAX - 1, Vec::<(u8, usize)>::new());
        assert_eq!(q.acked(), u32::MAX - 1);
        q.push(1, 1);
        q.push(2, 1);
        q.push(3, 1);
        assert_eq!(q.sent(), 1);
        assert_eq!(q.acked(), u32::MAX - 1);
        assert_eq!(q.ack(0), Ok(vec![1, 2]));
        assert_eq!(q.ack(1), Ok(vec![3]));
        let mut h = Counter(u32::MAX);
        h.bump();
        assert_eq!(h, Counter(0));
    }

    #[test]
    fn granted_timeout_respects_the_ceiling() {
        assert_eq!(granted_max(None, 300, 600), 300);
        assert_eq!(granted_max(Some(60), 300, 600), 60);
        assert_eq!(granted_max(Some(86_400), 300, 600), 600);
    }
}
