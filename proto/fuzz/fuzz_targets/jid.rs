//! Arbitrary strings through JID parsing and PRECIS preparation (RFC 7622).
//!
//! Checked: no panic; a parsed JID prints to a string that parses back to the same JID
//! (preparation is idempotent), its parts are within RFC 7622's 1023 bytes, the bare JID
//! has no resource, and the prepare_* functions agree with what `Jid::parse` kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::jid::{prepare_domain, prepare_localpart, prepare_resource, Jid};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = prepare_localpart(s);
    let _ = prepare_resource(s);
    let _ = prepare_domain(s);
    let Ok(jid) = Jid::parse(s) else {
        return;
    };
    let printed = jid.to_string();
    let again = match Jid::parse(&printed) {
        Ok(j) => j,
        Err(e) => panic!("{printed:?} (from {s:?}) does not parse again: {e}"),
    };
    assert_eq!(jid, again, "preparation is not idempotent for {s:?}");
    assert!(jid.domain().len() <= 1023);
    assert!(jid.local().map_or(0, str::len) <= 1023);
    assert!(jid.resource().map_or(0, str::len) <= 1023);
    assert!(jid.to_bare().resource().is_none());
    if let Some(local) = jid.local() {
        assert_eq!(prepare_localpart(local).as_deref(), Ok(local));
    }
    if let Some(resource) = jid.resource() {
        assert_eq!(prepare_resource(resource).as_deref(), Ok(resource));
    }
    assert_eq!(prepare_domain(jid.domain()).as_deref(), Ok(jid.domain()));
});
