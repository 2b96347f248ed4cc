//! Stream management (XEP-0198), the session's half: the queue of stanzas the client has not
//! acknowledged, the resumption id, and the state that moves with a session when the client
//! resumes it on another connection (on this node or another one).
//!
//! The inbound half (counting the client's stanzas, answering its `<r/>`) is in
//! `proto::negotiation`, next to the stream; the connection reports the count when it ends.
//!
//! Resumption ids are `base64url(token ‖ resource)`: the 128-bit random token proves the
//! client's claim, the resource names the session's full JID together with the account the
//! client authenticated as, and the routing table says which node holds that JID now. So
//! the id stays valid when the session moves between nodes (XEP-0198 gives the client no new
//! id on `<resumed/>`), and a guessed id finds nothing without the token.

use base64::Engine;
use proto::element::Element;
use proto::sm::{AckTooHigh, Unacked};
use rand::RngCore;

use crate::modules::stream_management::Settings;

pub use crate::route::session::{HandedOver, Token};

/// A parsed `previd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumptionId {
    pub token: Token,
    pub resource: String,
}

impl ResumptionId {
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(16 + self.resource.len());
        raw.extend_from_slice(&self.token);
        raw.extend_from_slice(self.resource.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything this server did not issue.
    pub fn parse(previd: &str) -> Option<ResumptionId> {
        // A resource is at most 1023 bytes (RFC 7622 §3.4): bound the work on the input.
        if previd.len() > 2048 {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(previd)
            .ok()?;
        if raw.len() <= 16 {
            return None;
        }
        let token: Token = raw[..16].try_into().ok()?;
        let resource = String::from_utf8(raw[16..].to_vec()).ok()?;
        Some(ResumptionId { token, resource })
    }
}

/// Why a session cannot take more stanzas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The session's stream-management state once the client enabled it.
#[derive(Debug)]
pub struct SmSession {
    /// `Some` for a resumable session.
    pub token: Option<Token>,
    /// Seconds a detached session waits for the client.
    pub max_secs: u32,
    unacked: Unacked<Box<[u8]>>,
    max_unacked_bytes: usize,
    /// An `<r/>` is on its way and not answered yet: one at a time.
    request_outstanding: bool,
    /// The client's stanzas handled, as the connection reported it when it ended.
    pub handled_in: u32,
}

impl SmSession {
    /// The client sent `<enable resume max/>` (§3): the session and the `<enabled/>` answer.
    pub fn enable(
        settings: &Settings,
        resume: bool,
        max: Option<u32>,
        resource: &str,
    ) -> (SmSession, Element) {
        let max_secs = proto::sm::granted_max(
            max,
            settings.resume_timeout_secs,
            settings.max_resume_timeout_secs,
        );
        let token = (resume && settings.resume).then(|| {
            let mut t = Token::default();
            rand::thread_rng().fill_bytes(&mut t);
            t
        });
        let id = token.map(|token| {
            ResumptionId {
                token,
                resource: resource.to_string(),
            }
            .encode()
        });
        let enabled = proto::sm::enabled(id.as_deref(), Some(max_secs), None);
        let sm = SmSession {
            token,
            max_secs,
            unacked: Unacked::default(),
            max_unacked_bytes: settings.max_unacked_bytes,
            request_outstanding: false,
            handled_in: 0,
        };
        (sm, enabled)
    }

    /// Continue a session handed over from another connection.
    pub fn restore(settings: &Settings, state: &HandedOver) -> SmSession {
        SmSession {
            token: Some(state.token),
            max_secs: state.max_secs,
            unacked: Unacked::restore(
                state.sent.wrapping_sub(state.unacked.len() as u32),
                std::iter::empty(),
            ),
            max_unacked_bytes: settings.max_unacked_bytes,
            request_outstanding: false,
            handled_in: state.handled_in,
        }
    }

    pub fn is_resumable(&self) -> bool {
        self.token.is_some()
    }

    /// A stanza went to the client (or waits for it while detached), serialised as `bytes`.
    pub fn record(&mut self, bytes: Box<[u8]>) -> Result<(), QueueFull> {
        let len = bytes.len();
        self.unacked.push(bytes, len);
        if self.unacked.bytes() > self.max_unacked_bytes {
            return Err(QueueFull);
        }
        Ok(())
    }

    /// Whether to follow what was just queued with an `<r/>` (§4): one outstanding request
    /// at a time, so a busy stream carries about one per round trip.
    pub fn should_request(&mut self) -> bool {
        !std::mem::replace(&mut self.request_outstanding, true)
    }

    /// The client's `<a h/>` (§4).
    pub fn ack(&mut self, h: u32) -> Result<usize, AckTooHigh> {
        self.request_outstanding = false;
        self.unacked.ack(h).map(|released| released.len())
    }

    /// Stanzas sent to the client, modulo 2^32.
    pub fn sent(&self) -> u32 {
        self.unacked.sent()
    }

    /// The client's handled count as of its last `<a h/>`.
    pub fn acked(&self) -> u32 {
        self.unacked.acked()
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Everything not acknowledged, oldest first (expiry: RFC 6121 §8.5 decides each).
    pub fn drain(&mut self) -> Vec<Box<[u8]>> {
        self.unacked.drain()
    }

    /// The state to hand over once the resuming client's `h` has been applied.
    pub fn hand_over(
        &mut self,
        jid: String,
        session_id: u64,
        directed: Vec<String>,
    ) -> Option<HandedOver> {
        let token = self.token?;
        let sent = self.unacked.sent();
        Some(HandedOver {
            presence: None,
            flags: 0,
            jid,
            session_id,
            token,
            max_secs: self.max_secs,
            handled_in: self.handled_in,
            sent,
            unacked: self.drain().into_iter().map(Vec::from).collect(),
            directed,
        })
    }
}

/// A stanza kept as bytes (written with `jabber:client` as the parent namespace), parsed
/// back to decide where it goes when its session ends unresumed.
pub fn parse_kept(bytes: &[u8]) -> Option<Element> {
    let text = std::str::from_utf8(bytes).ok()?;
    let wrapped = format!("<kept xmlns='jabber:client'>{text}</kept>");
    Element::parse(&wrapped).ok()?.children().next().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumption_ids_round_trip_and_refuse_junk() {
        let id = ResumptionId {
            token: [7; 16],
            resource: "phone/ü".into(),
        };
        assert_eq!(ResumptionId::parse(&id.encode()), Some(id));
        for junk in ["", "!!", "AAAA", &"A".repeat(4000)] {
            assert_eq!(ResumptionId::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn enable_grants_within_the_ceiling_and_only_when_resumption_is_on() {
        let settings = Settings::default();
        let (sm, el) = SmSession::enable(&settings, true, Some(86_400), "r");
        assert!(sm.is_resumable());
        assert_eq!(el.attr("max"), Some("900"));
        assert!(ResumptionId::parse(el.attr("id").unwrap_or_default()).is_some());
        let off = Settings {
            resume: false,
            ..settings
        };
        let (sm, el) = SmSession::enable(&off, true, None, "r");
        assert!(!sm.is_resumable());
        assert_eq!(el.attr("id"), None);
    }

    #[test]
    fn the_queue_is_bounded_and_handed_over_in_order() {
        let settings = Settings {
            max_unacked_bytes: 10,
            ..Settings::default()
        };
        let (mut sm, _) = SmSession::enable(&settings, true, None, "r");
        assert!(sm.should_request());
        assert!(!sm.should_request(), "one <r/> at a time");
        assert_eq!(sm.record(b"<a/>".to_vec().into()), Ok(()));
        assert_eq!(sm.record(b"<b/>".to_vec().into()), Ok(()));
        assert_eq!(sm.ack(1), Ok(1));
        assert!(sm.should_request());
        assert_eq!(sm.record(b"<c/>".to_vec().into()), Ok(()));
        assert_eq!(sm.record(b"<dddd/>".to_vec().into()), Err(QueueFull));
        sm.handled_in = 5;
        let state = sm.hand_over("u@d/r".into(), 1, vec![]).unwrap();
        assert_eq!(state.sent, 4);
        assert_eq!(state.handled_in, 5);
        assert_eq!(state.unacked.len(), 3);
        let mut next = SmSession::restore(&settings, &state);
        // The client acknowledges against the old count.
        assert_eq!(next.unacked_len(), 0);
        for s in &state.unacked {
            next.record(s.clone().into_boxed_slice()).unwrap_or(());
        }
        assert_eq!(next.ack(3), Ok(2));
    }

    #[test]
    fn kept_stanzas_parse_back() {
        let el = parse_kept(b"<message to='a@b'><body>hi</body></message>").unwrap();
        assert_eq!(el.name, "message");
        assert_eq!(el.ns, "jabber:client");
        assert_eq!(el.attr("to"), Some("a@b"));
        assert!(parse_kept(b"<broken").is_none());
    }
}
