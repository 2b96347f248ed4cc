//! XEP-0352: Client State Indication. While a client says it is `<inactive/>` (a phone in a
//! pocket), what is not urgent waits at the server: presence updates are held and coalesced
//! (the latest per sender), and messages without a body (chat states, receipts) are held, for
//! at most `max_delay_secs` and up to `max_held` stanzas or `max_held_bytes`; anything urgent
//! (a message with a body, also inside a carbon copy; a subscription request; an error)
//! first flushes what is held, in order, then goes out at once. `<active/>` flushes all.
//! The model is Prosody's mod_csi_simple; unlike it, the time a stanza may wait is bounded.

use std::time::{Duration, Instant};

use super::session::{SessionEffects, SessionModule};
use super::{ConfigOption, Module, Section, Support};
use proto::element::Element;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(Csi {
        limits: Limits {
            max_held: 100,
            max_held_bytes: 64 * 1024,
            max_delay: Duration::from_secs(300),
        },
    })
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_held: usize,
    max_held_bytes: usize,
    max_delay: Duration,
}

struct Csi {
    limits: Limits,
}

impl Module for Csi {
    fn name(&self) -> &'static str {
        "csi"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0352",
            title: "Client State Indication",
        }]
    }
    fn options(&self) -> &'static [ConfigOption] {
        &[
            ConfigOption {
                key: "max_held",
                default: "100",
                doc: "stanzas held for an inactive client before all are flushed",
            },
            ConfigOption {
                key: "max_held_bytes",
                default: "65536",
                doc: "bytes (serialised) held for an inactive client before all are flushed",
            },
            ConfigOption {
                key: "max_delay_secs",
                default: "300",
                doc: "longest a held stanza waits",
            },
        ]
    }
    fn configure(&mut self, section: &Section) -> Result<(), String> {
        let max_delay_secs: u64 = section.get("max_delay_secs")?;
        self.limits = Limits {
            max_held: section.get("max_held")?,
            max_held_bytes: section.get("max_held_bytes")?,
            max_delay: Duration::from_secs(max_delay_secs),
        };
        Ok(())
    }
    fn stream_features(&self) -> Vec<Element> {
        // §4: advertised as a stream feature.
        vec![Element::new("csi", ns::CSI)]
    }
    fn nonza_namespaces(&self) -> &'static [&'static str] {
        &[ns::CSI]
    }
    fn session(&self) -> Option<Box<dyn SessionModule>> {
        Some(Box::new(CsiSession {
            limits: self.limits,
            inactive: false,
            held: Vec::new(),
            held_bytes: 0,
            oldest: None,
        }))
    }
}

struct CsiSession {
    limits: Limits,
    inactive: bool,
    /// Held stanzas with their serialised size, oldest first.
    held: Vec<(Element, usize)>,
    held_bytes: usize,
    /// When the oldest held stanza arrived.
    oldest: Option<Instant>,
}

impl CsiSession {
    fn flush(&mut self, fx: &mut SessionEffects<'_>) {
        fx.to_client
            .extend(std::mem::take(&mut self.held).into_iter().map(|(el, _)| el));
        self.held_bytes = 0;
        self.oldest = None;
    }

    fn hold(&mut self, stanza: Element, fx: &mut SessionEffects<'_>) {
        if stanza.name == "presence" {
            // Only the latest presence of each sender matters.
            let from = stanza.attr("from");
            if let Some(i) = self
                .held
                .iter()
                .position(|(h, _)| h.name == "presence" && h.attr("from") == from)
            {
                let (_, size) = self.held.remove(i);
                self.held_bytes -= size;
            }
        }
        let size = stanza.to_xml_string().len();
        self.held.push((stanza, size));
        self.held_bytes += size;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
            fx.wake_after(self.limits.max_delay);
        }
        if self.held.len() >= self.limits.max_held || self.held_bytes >= self.limits.max_held_bytes
        {
            self.flush(fx);
        }
    }
}

/// What may wait while the client is inactive.
fn can_wait(stanza: &Element) -> bool {
    match stanza.name.as_str() {
        // Available and unavailable presence; subscription requests and errors are urgent.
        "presence" => matches!(stanza.attr("type"), None | Some("unavailable")),
        "message" => stanza.attr("type") != Some("error") && !has_body(stanza),
        // IQs are answered by the client: never delayed.
        _ => false,
    }
}

/// A body (or an encrypted payload, which stands for one) in the message or in the message a
/// carbon copy forwards.
fn has_body(message: &Element) -> bool {
    message.children().any(|c| {
        (c.name == "body" && c.ns == ns::CLIENT)
            || c.name == "encrypted"
            || (c.ns == ns::CARBONS
                && c.get_child("forwarded", ns::FORWARD)
                    .and_then(|f| f.get_child("message", ns::CLIENT))
                    .is_some_and(has_body))
    })
}

impl SessionModule for CsiSession {
    fn nonza(&mut self, el: &Element, fx: &mut SessionEffects<'_>) -> bool {
        if el.ns != ns::CSI {
            return false;
        }
        match el.name.as_str() {
            "inactive" => self.inactive = true,
            "active" => {
                self.inactive = false;
                self.flush(fx);
            }
            // §5 defines no other element; nothing to answer a nonza with.
            _ => {}
        }
        true
    }

    fn handing_over(&mut self, fx: &mut SessionEffects<'_>) {
        // What was held moves with the session, in order; the resumed stream starts active.
        self.flush(fx);
    }

    fn inbound(&mut self, stanza: Element, fx: &mut SessionEffects<'_>) -> Option<Element> {
        if !self.inactive {
            return Some(stanza);
        }
        if can_wait(&stanza) {
            self.hold(stanza, fx);
            return None;
        }
        // Urgent: what waited goes first, so the client sees everything in order.
        self.flush(fx);
        Some(stanza)
    }

    fn timer(&mut self, fx: &mut SessionEffects<'_>) {
        match self.oldest {
            Some(t) if t.elapsed() >= self.limits.max_delay => self.flush(fx),
            Some(t) => fx.wake_after(self.limits.max_delay.saturating_sub(t.elapsed())),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::jid::Jid;

    fn el(xml: &str) -> Element {
        Element::parse(xml).expect("xml")
    }

    fn session(max_held: usize) -> CsiSession {
        CsiSession {
            limits: Limits {
                max_held,
                max_held_bytes: 1 << 20,
                max_delay: Duration::from_secs(300),
            },
            inactive: false,
            held: Vec::new(),
            held_bytes: 0,
            oldest: None,
        }
    }

    fn presence(from: &str, show: &str) -> Element {
        el(&format!(
            "<presence xmlns='jabber:client' from='{from}'><show>{show}</show></presence>"
        ))
    }

    #[test]
    fn inactive_holds_presence_coalesced_and_active_flushes() {
        let jid = Jid::parse("juliet@example.com/phone").expect("jid");
        let mut s = session(100);
        let mut fx = SessionEffects::new(&jid, &[]);
        assert!(s.nonza(&el("<inactive xmlns='urn:xmpp:csi:0'/>"), &mut fx));
        assert!(s
            .inbound(presence("romeo@example.net/a", "away"), &mut fx)
            .is_none());
        assert!(s
            .inbound(presence("nurse@example.com/b", "dnd"), &mut fx)
            .is_none());
        assert!(s
            .inbound(presence("romeo@example.net/a", "xa"), &mut fx)
            .is_none());
        let chat_state = el("<message xmlns='jabber:client' from='romeo@example.net/a' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
        assert!(s.inbound(chat_state, &mut fx).is_none());
        assert!(fx.to_client.is_empty());
        assert!(fx.wake.is_some(), "the delay is bounded");
        assert!(s.nonza(&el("<active xmlns='urn:xmpp:csi:0'/>"), &mut fx));
        let shows: Vec<String> = fx
            .to_client
            .iter()
            .filter_map(|p| p.get_child("show", ns::CLIENT).map(|s| s.text()))
            .collect();
        assert_eq!(shows, vec!["dnd", "xa"], "one per sender, the latest");
        assert_eq!(fx.to_client.len(), 3);
    }

    #[test]
    fn a_message_with_a_body_flushes_and_goes_at_once() {
        let jid = Jid::parse("juliet@example.com/phone").expect("jid");
        let mut s = session(100);
        let mut fx = SessionEffects::new(&jid, &[]);
        s.nonza(&el("<inactive xmlns='urn:xmpp:csi:0'/>"), &mut fx);
        assert!(s
            .inbound(presence("romeo@example.net/a", "away"), &mut fx)
            .is_none());
        let body = el("<message xmlns='jabber:client' type='chat'><body>hi</body></message>");
        assert!(s.inbound(body, &mut fx).is_some());
        assert_eq!(fx.to_client.len(), 1, "the held presence goes first");
        let carbon = el("<message xmlns='jabber:client'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>x</body></message></forwarded></received></message>");
        assert!(s.inbound(carbon, &mut fx).is_some());
        let subscribe = el("<presence xmlns='jabber:client' type='subscribe' from='x@y'/>");
        assert!(s.inbound(subscribe, &mut fx).is_some());
    }

    #[test]
    fn the_hold_is_bounded() {
        let jid = Jid::parse("juliet@example.com/phone").expect("jid");
        let mut s = session(3);
        let mut fx = SessionEffects::new(&jid, &[]);
        s.nonza(&el("<inactive xmlns='urn:xmpp:csi:0'/>"), &mut fx);
        for i in 0..3 {
            assert!(s
                .inbound(presence(&format!("c{i}@example.net/a"), "away"), &mut fx)
                .is_none());
        }
        assert_eq!(fx.to_client.len(), 3, "flushed at max_held");
        assert!(s.held.is_empty());
    }
}
