//! Arbitrary peer bytes through the stream reader and the receiving side of the s2s
//! negotiation, as the inbound connection task drives them: STARTTLS "upgrades", SASL
//! EXTERNAL (the certificate verifies for one domain only), dialback with the
//! authoritative server's answer taken from the input. Invariants: no panic; nothing is
//! sent after `Close`; a stanza is passed on only from a domain authenticated on the stream.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use proto::s2s::{Action, DialbackOutcome, S2sInbound, S2sPolicy};
use proto::stream::{Limits, StreamEvent, StreamReader};

fuzz_target!(|data: &[u8]| {
    let policy = Arc::new(S2sPolicy {
        domains: vec!["localhost".into(), "other.localhost".into()],
        tls_required: data.first().is_some_and(|b| b & 1 == 0),
        dialback: true,
        sasl_external: true,
        secret: [7; 32],
        max_pending_dialback: 4,
    });
    let mut neg = S2sInbound::new(policy, None);
    let mut reader = StreamReader::new(Limits::default(), "jabber:server");
    let mut closed = false;
    let mut verdicts = data.iter().copied().cycle();
    // Feed in chunks whose sizes come from the input itself.
    let mut rest = data;
    while !rest.is_empty() {
        let n = usize::from(rest[0] % 64) + 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        reader.feed(chunk);
        loop {
            let actions = match reader.next_event() {
                Ok(Some(StreamEvent::Header(h))) => neg.on_header(&h, "fuzz-id"),
                Ok(Some(StreamEvent::Element(el, _))) => neg.on_element(el),
                Ok(Some(StreamEvent::Keepalive)) => Vec::new(),
                Ok(Some(StreamEvent::Close)) => neg.on_close(),
                Ok(None) => break,
                Err(e) => neg.fail(e.to_stream_error()),
            };
            let mut queue = std::collections::VecDeque::from(actions);
            while let Some(a) = queue.pop_front() {
                match a {
                    Action::Send(_) => assert!(!closed, "bytes sent after Close"),
                    Action::Close { .. } => closed = true,
                    Action::StartTls => {
                        reader = StreamReader::new(Limits::default(), "jabber:server");
                        neg.tls_established(Box::new(|d| d == "trusted.example"));
                    }
                    Action::Restart => {
                        reader = StreamReader::new(Limits::default(), "jabber:server")
                    }
                    Action::VerifyDialback {
                        originating,
                        receiving,
                        ..
                    } => {
                        let outcome = match verdicts.next().unwrap_or(0) % 3 {
                            0 => DialbackOutcome::Valid,
                            1 => DialbackOutcome::Invalid,
                            _ => DialbackOutcome::Error(
                                proto::error::StanzaErrorCondition::RemoteServerTimeout,
                            ),
                        };
                        queue.extend(neg.dialback_verified(&originating, &receiving, outcome));
                    }
                    Action::Stanza { from, to, .. } => {
                        assert!(!closed, "stanza after Close");
                        assert!(
                            neg.authorised(from.domain(), to.domain()),
                            "stanza from an unauthenticated domain"
                        );
                    }
                    Action::Authenticated { .. }
                    | Action::Ready
                    | Action::VerifyResult { .. }
                    | Action::DialbackRefused { .. } => {}
                }
            }
            if closed {
                return;
            }
        }
    }
});
