//! JID preparation per RFC 7622 (PRECIS).

use proto::jid::{prepare_domain, prepare_localpart, prepare_resource, Jid, JidError};

fn ok(s: &str) -> String {
    Jid::parse(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .to_string()
}

fn err(s: &str) -> JidError {
    match Jid::parse(s) {
        Ok(j) => panic!("{s:?} parsed as {j}"),
        Err(e) => e,
    }
}

#[test]
fn rfc7622_valid_examples() {
    // RFC 7622 §3.5 examples.
    assert_eq!(ok("juliet@example.com"), "juliet@example.com");
    assert_eq!(ok("juliet@example.com/foo"), "juliet@example.com/foo");
    assert_eq!(
        ok("juliet@example.com/foo bar"),
        "juliet@example.com/foo bar"
    );
    assert_eq!(
        ok("juliet@example.com/foo@bar"),
        "juliet@example.com/foo@bar"
    );
    assert_eq!(ok("foo\\20bar@example.com"), "foo\\20bar@example.com");
    assert_eq!(ok("fussball@example.com"), "fussball@example.com");
    assert_eq!(ok("fu\u{df}ball@example.com"), "fu\u{df}ball@example.com");
    assert_eq!(ok("\u{3c0}@example.com"), "\u{3c0}@example.com");
    assert_eq!(ok("\u{3a3}@example.com/foo"), "\u{3c3}@example.com/foo");
    assert_eq!(ok("\u{3c3}@example.com/foo"), "\u{3c3}@example.com/foo");
    assert_eq!(ok("\u{3c2}@example.com/foo"), "\u{3c2}@example.com/foo");
    assert_eq!(ok("king@example.com/\u{265a}"), "king@example.com/\u{265a}");
    assert_eq!(ok("example.com"), "example.com");
    assert_eq!(ok("example.com/foobar"), "example.com/foobar");
    assert_eq!(
        ok("a.example.com/b@example.net"),
        "a.example.com/b@example.net"
    );
}

#[test]
fn rfc7622_invalid_examples() {
    assert_eq!(err("\"juliet\"@example.com"), JidError::InvalidLocal);
    assert_eq!(err("foo bar@example.com"), JidError::InvalidLocal);
    assert_eq!(err("juliet@example.com/"), JidError::InvalidResource);
    assert_eq!(err("@example.com/"), JidError::InvalidLocal);
    assert_eq!(err("henry\u{2163}@example.com"), JidError::InvalidLocal);
    assert_eq!(err("\u{265a}@example.com"), JidError::InvalidLocal);
    assert_eq!(err("juliet@"), JidError::InvalidDomain);
    assert_eq!(err("/foobar"), JidError::InvalidDomain);
    assert_eq!(err(""), JidError::Empty);
}

#[test]
fn localpart_case_folding_and_width_mapping() {
    assert_eq!(
        ok("JuLiEt@Example.COM/Balcony"),
        "juliet@example.com/Balcony"
    );
    assert_eq!(
        ok("\u{ff2a}\u{ff35}\u{ff2c}\u{ff29}\u{ff25}\u{ff34}@example.com"),
        "juliet@example.com"
    );
    assert_eq!(
        Jid::parse("ROMEO@example.net"),
        Jid::parse("romeo@EXAMPLE.net")
    );
    assert_ne!(
        Jid::parse("romeo@example.net/A"),
        Jid::parse("romeo@example.net/a")
    );
    // U+01C5 (titlecase digraph) is disallowed by PRECIS.
    assert_eq!(err("\u{1c5}ungla@example.com"), JidError::InvalidLocal);
    // Characters RFC 7622 excludes from localparts.
    for c in ['&', '\'', ':', '<', '>'] {
        assert_eq!(
            err(&format!("a{c}b@example.com")),
            JidError::InvalidLocal,
            "{c}"
        );
    }
}

#[test]
fn domain_preparation() {
    assert_eq!(ok("juliet@example.com."), "juliet@example.com");
    assert_eq!(Jid::parse("example.com."), Jid::parse("EXAMPLE.com"));
    assert_eq!(err("juliet@example.com.."), JidError::InvalidDomain);
    assert_eq!(err("juliet@.example.com"), JidError::InvalidDomain);
    assert_eq!(err("juliet@example..com"), JidError::InvalidDomain);
    assert_eq!(err("."), JidError::InvalidDomain);
    assert_eq!(err("a@b@example.com"), JidError::InvalidDomain);
    assert_eq!(err("juliet@exa mple.com"), JidError::InvalidDomain);
    assert_eq!(err("juliet@example.com:5222"), JidError::InvalidDomain);
    assert_eq!(
        err("juliet@exam\u{ff20}ple.com"),
        JidError::InvalidDomain,
        "fullwidth @"
    );
    // Fullwidth letters and full stop map to ASCII; non-ASCII labels are case-mapped.
    assert_eq!(
        prepare_domain("\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}\u{ff0e}com"),
        Ok("example.com".into())
    );
    assert_eq!(
        prepare_domain("M\u{dc}NCHEN.example"),
        Ok("m\u{fc}nchen.example".into())
    );
    assert_eq!(
        prepare_domain("\u{2603}.example"),
        Err(JidError::InvalidDomain)
    );
    assert_eq!(
        prepare_domain("_xmpp-client.example"),
        Ok("_xmpp-client.example".into())
    );
}

#[test]
fn ip_literals() {
    assert_eq!(ok("juliet@127.0.0.1/r"), "juliet@127.0.0.1/r");
    assert_eq!(ok("[::1]"), "[::1]");
    assert_eq!(ok("juliet@[0:0:0:0:0:0:0:1]/x"), "juliet@[::1]/x");
    assert_eq!(ok("[2001:DB8::1]"), "[2001:db8::1]");
    assert_eq!(err("[::g]"), JidError::InvalidDomain);
    assert_eq!(err("[127.0.0.1]"), JidError::InvalidDomain);
    assert_eq!(err("256.1.1.1"), JidError::InvalidDomain);
    assert_eq!(err("::1"), JidError::InvalidDomain);
}

#[test]
fn resource_is_opaque_and_preserved() {
    let j = Jid::parse("a@example.com/Foo/Bar@Baz").expect("jid");
    assert_eq!(j.local(), Some("a"));
    assert_eq!(j.domain(), "example.com");
    assert_eq!(j.resource(), Some("Foo/Bar@Baz"));
    // Non-ASCII spaces map to ASCII space; NFC is applied.
    assert_eq!(prepare_resource("a\u{a0}b"), Ok("a b".into()));
    assert_eq!(prepare_resource("e\u{301}"), Ok("\u{e9}".into()));
    assert_eq!(prepare_resource(""), Err(JidError::InvalidResource));
    assert_eq!(prepare_resource("a\u{7}b"), Err(JidError::InvalidResource));
}

#[test]
fn length_limits() {
    let a1023 = "a".repeat(1023);
    let a1024 = "a".repeat(1024);
    assert!(Jid::parse(&format!("{a1023}@example.com/{a1023}")).is_ok());
    assert_eq!(err(&format!("{a1024}@example.com")), JidError::TooLong);
    assert_eq!(err(&format!("a@example.com/{a1024}")), JidError::TooLong);
    let long_domain = vec!["a".repeat(63); 17].join("."); // 1087 bytes
    assert_eq!(err(&long_domain), JidError::TooLong);
    assert_eq!(
        prepare_localpart(&"x".repeat(100_000)),
        Err(JidError::TooLong)
    );
    // 1023 fullwidth characters (3069 bytes) prepare to 1023 bytes.
    let wide = "\u{ff41}".repeat(1023);
    assert_eq!(prepare_localpart(&wide).map(|s| s.len()), Ok(1023));
}

#[test]
fn parts_bare_and_display() {
    let j = Jid::from_parts(Some("Juliet"), "Example.com", Some("balcony")).expect("jid");
    assert_eq!(j.to_string(), "juliet@example.com/balcony");
    assert!(!j.is_bare());
    let bare = j.to_bare();
    assert!(bare.is_bare());
    assert_eq!(bare.to_string(), "juliet@example.com");
    assert_eq!(
        bare.with_resource("Orchard").map(|j| j.to_string()),
        Ok("juliet@example.com/Orchard".into())
    );
    assert_eq!(
        j.with_resource("x").map(|j| j.to_string()),
        Ok("juliet@example.com/x".into())
    );
    assert_eq!(bare.with_resource(""), Err(JidError::InvalidResource));
    let parsed: Jid = "example.com".parse().expect("domain jid");
    assert_eq!(parsed.local(), None);
    assert_eq!(parsed.resource(), None);
    assert_eq!(
        Jid::from_parts(None, "", None),
        Err(JidError::InvalidDomain)
    );
    // Display output parses back to the same JID.
    for s in ["x@y.example/r/s@t", "\u{3c3}@example.com", "[::1]/a b"] {
        let j = Jid::parse(s).expect("jid");
        assert_eq!(Jid::parse(&j.to_string()), Ok(j));
    }
}

/// The ASCII fast paths give exactly what the PRECIS profiles give.
#[test]
fn ascii_fast_path_matches_precis() {
    use precis_core::profile::Profile;
    for b in 0x20u8..=0x7e {
        let s = format!("a{}Z", b as char);
        let slow_local = precis_profiles::UsernameCaseMapped::new()
            .enforce(s.as_str())
            .ok()
            .map(|p| p.into_owned())
            .filter(|p| !p.contains(['"', '&', '\'', '/', ':', '<', '>', '@']));
        assert_eq!(proto::jid::prepare_localpart(&s).ok(), slow_local, "{s:?}");
        let slow_resource = precis_profiles::OpaqueString::new()
            .enforce(s.as_str())
            .ok()
            .map(|p| p.into_owned());
        assert_eq!(
            proto::jid::prepare_resource(&s).ok(),
            slow_resource,
            "{s:?}"
        );
    }
}

/// Found by the `jid` fuzz target: NFC turns `=` + U+0338 into `≠`, a symbol PRECIS does not
/// allow, so the prepared JID did not parse again. Preparation must be stable (RFC 8264 §7).
#[test]
fn preparation_that_is_not_stable_is_refused() {
    for s in [
        "=\u{303}\u{338}",
        "a=\u{338}\u{303}@example.com",
        "x@=\u{338}\u{303}.example",
        // A fullwidth digit maps to an ASCII one: the all-digit name is no IPv4 address.
        "\u{ff14}",
        "a@\u{ff11}\u{ff12}",
    ] {
        assert!(Jid::parse(s).is_err(), "{s:?}");
    }
    // Every JID that parses prints to one that parses back to itself.
    for s in [
        "élise@example.com/Bär",
        "ＲＯＭＥＯ@example.com",
        "juliet@ÉXAMPLE.com/Ω",
    ] {
        let j = Jid::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(Jid::parse(&j.to_string()).as_ref(), Ok(&j), "{s:?}");
    }
}

#[test]
fn text_is_the_display_form_at_its_length() {
    for s in [
        "juliet@example.com/balcony",
        "juliet@example.com",
        "example.com",
        "example.com/service",
        "élise@example.com/Bär",
    ] {
        let j = Jid::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        let text = j.text();
        assert_eq!(text, j.to_string(), "{s:?}");
        assert_eq!(text.capacity(), text.len(), "{s:?}");
    }
}
