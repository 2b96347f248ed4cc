//! Arbitrary client messages straight into a SASL exchange (every mechanism the server
//! offers, with and without TLS and channel binding), against a known and an unknown
//! account. rsasl's SCRAM parsers had a panic on short fields (see
//! `scram_fields_are_sound`); this target keeps the whole exchange under the fuzzer.
//!
//! Input layout: byte 0 picks the mechanism and the stream's security, then messages
//! separated by 0xFF bytes (the first is the initial response, absent when empty and bit
//! 0x80 of byte 0 is set). Checked: no panic; a step after `Success` or `Failure` is never
//! needed (the exchange ends); a success is only ever for the known account with its
//! password, which the fuzzer cannot produce except through PLAIN with "secret".
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use proto::sasl::{Authenticator, ChannelBinding, CredentialLookup, SaslStep, StoredCredentials};

struct Accounts(HashMap<String, StoredCredentials>);
impl CredentialLookup for Accounts {
    fn credentials(&self, username: &str) -> Option<StoredCredentials> {
        self.0.get(username).cloned()
    }
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut m = HashMap::new();
        // Few PBKDF2 rounds keep every step cheap enough to fuzz.
        if let Ok(c) = StoredCredentials::derive("secret", 2) {
            m.insert("juliet".to_string(), c);
        }
        match Authenticator::new(Arc::new(Accounts(m)), [7; 32]) {
            Ok(a) => a,
            Err(e) => panic!("authenticator: {e}"),
        }
    })
}

const MECHANISMS: &[&str] = &[
    "PLAIN",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-512-PLUS",
    "DIGEST-MD5",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let secured = flags & 0x40 != 0;
    let cb = if secured {
        ChannelBinding {
            tls_exporter: (flags & 0x20 != 0).then(|| vec![1; 32]),
            tls_server_end_point: (flags & 0x10 != 0).then(|| vec![2; 32]),
        }
    } else {
        ChannelBinding::default()
    };
    let mechanism = MECHANISMS[usize::from(flags & 0x0f) % MECHANISMS.len()];
    let Ok(mut exchange) = authenticator().start(mechanism, secured, cb) else {
        return;
    };
    let mut messages = rest.split(|b| *b == 0xff);
    let first = messages.next().unwrap_or_default();
    let mut input = if first.is_empty() && flags & 0x80 != 0 {
        None
    } else {
        Some(first)
    };
    for _ in 0..8 {
        match exchange.step(input) {
            SaslStep::Challenge(_) => {}
            SaslStep::Success { username, .. } => {
                assert_eq!(username, "juliet", "authenticated someone who has no account");
                return;
            }
            SaslStep::Failure(_) => return,
        }
        input = Some(messages.next().unwrap_or_default());
    }
});
