//! Arbitrary client bytes through the stream reader and the c2s negotiation state machine,
//! as the connection task drives them: TLS "upgrades", SASL (PLAIN and SCRAM against a real
//! account), bind, stanzas. Invariants: no panic; nothing is sent after `Close`; a stanza is
//! only ever passed on after bind.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use proto::negotiation::{Action, C2sNegotiation, C2sPolicy};
use proto::sasl::{
    Authenticator, ChannelBinding, CredentialLookup, DomainAuthenticators, StoredCredentials,
};
use proto::stream::{Limits, StreamEvent, StreamReader};

struct Accounts(HashMap<String, StoredCredentials>);
impl CredentialLookup for Accounts {
    fn credentials(&self, username: &str) -> Option<StoredCredentials> {
        self.0.get(username).cloned()
    }
}

fn auth() -> &'static DomainAuthenticators {
    static AUTH: OnceLock<DomainAuthenticators> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut m = HashMap::new();
        // Few PBKDF2 rounds keep PLAIN cheap enough to fuzz.
        if let Ok(c) = StoredCredentials::derive("secret", 2) {
            m.insert("juliet".to_string(), c);
        }
        let mut d = DomainAuthenticators::default();
        if let Ok(a) = Authenticator::new(Arc::new(Accounts(m)), [3; 32]) {
            d.insert("localhost", a);
        }
        d
    })
}

fn cb() -> ChannelBinding {
    ChannelBinding {
        tls_exporter: Some(vec![1; 32]),
        tls_server_end_point: Some(vec![2; 32]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let policy = Arc::new(C2sPolicy {
        domains: vec!["localhost".into()],
        tls_available: true,
        tls_required: flags & 1 == 0,
        max_auth_failures: 3,
        bound_features: Vec::new(),
        nonza_namespaces: Vec::new(),
    });
    let direct = (flags & 2 != 0).then(cb);
    let mut n = C2sNegotiation::new(policy, direct);
    let limits = Limits {
        max_stanza_bytes: 4096,
        max_depth: 8,
        max_attributes: 16,
        max_token_bytes: 1024,
        max_elements: 4096,
        max_namespace_bytes: 1024,
    };
    let mut reader = StreamReader::new(limits, "jabber:client");
    let chunk = usize::from(flags >> 4) + 1;
    let mut closed = false;
    for piece in rest.chunks(chunk) {
        reader.feed(piece);
        loop {
            let actions = match reader.next_event() {
                Ok(None) => break,
                Ok(Some(StreamEvent::Header(h))) => n.on_header(&h, "id", auth()),
                Ok(Some(StreamEvent::Element(el, _))) => {
                    let established = n.is_established();
                    let acts = n.on_element(el, auth());
                    if acts.iter().any(|a| matches!(a, Action::Stanza(_))) {
                        assert!(established, "stanza passed on before bind");
                    }
                    acts
                }
                Ok(Some(StreamEvent::Keepalive)) => Vec::new(),
                Ok(Some(StreamEvent::Close)) => n.on_close(),
                Err(e) => n.fail(e.to_stream_error()),
            };
            let mut pending = std::collections::VecDeque::from(actions);
            while let Some(a) = pending.pop_front() {
                assert!(!closed, "action after close: {a:?}");
                match a {
                    Action::Close => closed = true,
                    Action::StartTls => {
                        n.tls_established(cb());
                        reader = StreamReader::new(limits, "jabber:client");
                    }
                    Action::Authenticated(_) => {
                        reader = StreamReader::new(limits, "jabber:client");
                    }
                    Action::Bind { iq_id, resource } => {
                        let jid = format!("juliet@localhost/{}", resource.unwrap_or_default());
                        pending.extend(n.bound(&iq_id, &jid));
                    }
                    Action::Send(_) | Action::Stanza(_) | Action::Nonza(_) => {}
                }
            }
            if closed {
                return;
            }
        }
    }
});
