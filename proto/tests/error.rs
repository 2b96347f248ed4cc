//! Stream errors and stanza error replies.

use proto::element::{Element, Node};
use proto::error::{
    stanza_error_reply, StanzaErrorCondition as S, StanzaErrorType as T, StreamError,
    StreamErrorCondition as C,
};
use proto::ns;

#[test]
fn stream_error_bytes() {
    assert_eq!(
        StreamError::new(C::PolicyViolation).to_bytes(),
        b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    );
    assert_eq!(
        String::from_utf8(StreamError::with_text(C::HostUnknown, "no <such> host & co").to_bytes()).unwrap(),
        "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no &lt;such&gt; host &amp; co</text></stream:error>"
    );
}

#[test]
fn stream_error_names_are_well_formed_and_distinct() {
    let all = [
        C::BadFormat,
        C::BadNamespacePrefix,
        C::Conflict,
        C::ConnectionTimeout,
        C::HostGone,
        C::HostUnknown,
        C::ImproperAddressing,
        C::InternalServerError,
        C::InvalidFrom,
        C::InvalidNamespace,
        C::InvalidXml,
        C::NotAuthorized,
        C::NotWellFormed,
        C::PolicyViolation,
        C::RemoteConnectionFailed,
        C::Reset,
        C::ResourceConstraint,
        C::RestrictedXml,
        C::SeeOtherHost,
        C::SystemShutdown,
        C::UndefinedCondition,
        C::UnsupportedEncoding,
        C::UnsupportedFeature,
        C::UnsupportedStanzaType,
        C::UnsupportedVersion,
    ];
    let names: std::collections::HashSet<&str> = all.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), all.len());
    for c in all {
        // Wrapping in a stream declaring the prefix yields a parsable document.
        let doc = format!(
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>{}</stream:stream>",
            String::from_utf8(StreamError::new(c).to_bytes()).unwrap()
        );
        let root = Element::parse(&doc).expect("parse");
        let err = root.get_child("error", ns::STREAM).expect("stream:error");
        assert!(err.get_child(c.as_str(), ns::STREAMS_ERRORS).is_some());
    }
    assert_eq!(C::SeeOtherHost.as_str(), "see-other-host");
}

#[test]
fn stanza_error_conditions() {
    use S::*;
    let cases = [
        (BadRequest, "bad-request", T::Modify),
        (Conflict, "conflict", T::Cancel),
        (FeatureNotImplemented, "feature-not-implemented", T::Cancel),
        (Forbidden, "forbidden", T::Auth),
        (Gone, "gone", T::Cancel),
        (InternalServerError, "internal-server-error", T::Cancel),
        (ItemNotFound, "item-not-found", T::Cancel),
        (JidMalformed, "jid-malformed", T::Modify),
        (NotAcceptable, "not-acceptable", T::Modify),
        (NotAllowed, "not-allowed", T::Cancel),
        (NotAuthorized, "not-authorized", T::Auth),
        (PolicyViolation, "policy-violation", T::Modify),
        (RecipientUnavailable, "recipient-unavailable", T::Wait),
        (Redirect, "redirect", T::Modify),
        (RegistrationRequired, "registration-required", T::Auth),
        (RemoteServerNotFound, "remote-server-not-found", T::Cancel),
        (RemoteServerTimeout, "remote-server-timeout", T::Wait),
        (ResourceConstraint, "resource-constraint", T::Wait),
        (ServiceUnavailable, "service-unavailable", T::Cancel),
        (SubscriptionRequired, "subscription-required", T::Auth),
        (UndefinedCondition, "undefined-condition", T::Modify),
        (UnexpectedRequest, "unexpected-request", T::Wait),
    ];
    for (c, name, ty) in cases {
        assert_eq!(c.as_str(), name);
        assert_eq!(c.default_type(), ty, "{name}");
    }
    assert_eq!(T::Continue.as_str(), "continue");
}

#[test]
fn legacy_codes_follow_xep_0086() {
    use S::*;
    let cases = [
        (BadRequest, Some(400)),
        (Conflict, Some(409)),
        (FeatureNotImplemented, Some(501)),
        (Forbidden, Some(403)),
        (Gone, Some(302)),
        (InternalServerError, Some(500)),
        (ItemNotFound, Some(404)),
        (JidMalformed, Some(400)),
        (NotAcceptable, Some(406)),
        (NotAllowed, Some(405)),
        (NotAuthorized, Some(401)),
        (PolicyViolation, None),
        (RecipientUnavailable, Some(404)),
        (Redirect, Some(302)),
        (RegistrationRequired, Some(407)),
        (RemoteServerNotFound, Some(404)),
        (RemoteServerTimeout, Some(504)),
        (ResourceConstraint, Some(500)),
        (ServiceUnavailable, Some(503)),
        (SubscriptionRequired, Some(407)),
        (UndefinedCondition, Some(500)),
        (UnexpectedRequest, Some(400)),
    ];
    for (c, code) in cases {
        assert_eq!(c.legacy_code(), code, "{}", c.as_str());
    }
}

#[test]
fn error_reply_to_message_keeps_payload() {
    let msg = Element::parse(
        "<message xmlns='jabber:client' from='juliet@example.com/balcony' to='romeo@example.net' \
         id='m1' type='chat' xml:lang='en'><body>hi</body></message>",
    )
    .unwrap();
    let reply = stanza_error_reply(&msg, S::ServiceUnavailable, Some("gone fishing"));
    assert_eq!(
        reply.to_xml_string(),
        "<message xmlns='jabber:client' id='m1' from='romeo@example.net' to='juliet@example.com/balcony' \
         type='error' xml:lang='en'><body>hi</body><error type='cancel'>\
         <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
         <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone fishing</text></error></message>"
    );
}

#[test]
fn error_reply_to_iq_drops_payload_and_handles_missing_addresses() {
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", "q1")
        .with_attr("from", "juliet@example.com/balcony")
        .with_child(Element::new("query", "jabber:iq:version"));
    let reply = stanza_error_reply(&iq, S::FeatureNotImplemented, None);
    assert_eq!(reply.attr("to"), Some("juliet@example.com/balcony"));
    assert_eq!(reply.attr("from"), None);
    assert_eq!(reply.attr("type"), Some("error"));
    assert_eq!(reply.attr("id"), Some("q1"));
    assert_eq!(reply.children.len(), 1);
    let Node::Element(err) = &reply.children[0] else {
        panic!()
    };
    assert!(err.is("error", ns::CLIENT));
    assert_eq!(err.attr("type"), Some("cancel"));
    assert!(err
        .get_child("feature-not-implemented", ns::STANZAS_ERRORS)
        .is_some());
    assert!(err.get_child("text", ns::STANZAS_ERRORS).is_none());
}

#[test]
fn error_reply_to_presence_in_server_namespace() {
    let p = Element::new("presence", ns::SERVER)
        .with_attr("to", "a@b")
        .with_child(Element::new("show", ns::SERVER));
    let reply = stanza_error_reply(&p, S::RemoteServerTimeout, None);
    assert!(reply.is("presence", ns::SERVER));
    assert_eq!(reply.attr("from"), Some("a@b"));
    assert!(reply.get_child("show", ns::SERVER).is_some());
    let err = reply.get_child("error", ns::SERVER).expect("error");
    assert_eq!(err.attr("type"), Some("wait"));
}
