//! Stream and stanza error conditions (RFC 6120 §4.9 and §8.3) and their elements.

use crate::element::{Element, Node};
use crate::ns;

/// RFC 6120 §4.9.3 stream error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamErrorCondition {
    BadFormat,
    BadNamespacePrefix,
    Conflict,
    ConnectionTimeout,
    HostGone,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedFeature,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl StreamErrorCondition {
    /// The element name, e.g. `"policy-violation"`.
    pub fn as_str(self) -> &'static str {
        use StreamErrorCondition::*;
        match self {
            BadFormat => "bad-format",
            BadNamespacePrefix => "bad-namespace-prefix",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostGone => "host-gone",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            RemoteConnectionFailed => "remote-connection-failed",
            Reset => "reset",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SeeOtherHost => "see-other-host",
            SystemShutdown => "system-shutdown",
            UndefinedCondition => "undefined-condition",
            UnsupportedEncoding => "unsupported-encoding",
            UnsupportedFeature => "unsupported-feature",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
        }
    }
}

/// A stream error ready to send: `<stream:error><cond xmlns=.../><text>..</text></stream:error>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 §4.9.4), e.g. XEP-0198's
    /// `<handled-count-too-high/>`.
    pub app: Option<crate::element::Element>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> StreamError {
        StreamError {
            condition,
            text: None,
            app: None,
        }
    }
    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> StreamError {
        StreamError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }
    /// Add an application-specific condition element (RFC 6120 §4.9.4).
    pub fn with_app(mut self, app: crate::element::Element) -> StreamError {
        self.app = Some(app);
        self
    }
    /// Serialised `<stream:error>` element (using the `stream:` prefix bound by the header).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"<stream:error><");
        out.extend_from_slice(self.condition.as_str().as_bytes());
        out.extend_from_slice(b" xmlns='");
        out.extend_from_slice(ns::STREAMS_ERRORS.as_bytes());
        out.extend_from_slice(b"'/>");
        if let Some(text) = &self.text {
            out.extend_from_slice(b"<text xmlns='");
            out.extend_from_slice(ns::STREAMS_ERRORS.as_bytes());
            out.extend_from_slice(b"'>");
            crate::element::escape_text(&mut out, text);
            out.extend_from_slice(b"</text>");
        }
        if let Some(app) = &self.app {
            app.write_to(&mut out, ns::STREAM);
        }
        out.extend_from_slice(b"</stream:error>");
        out
    }
}

/// RFC 6120 §8.3.2 error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl StanzaErrorType {
    /// The `type` attribute value, e.g. `"cancel"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaErrorType::Auth => "auth",
            StanzaErrorType::Cancel => "cancel",
            StanzaErrorType::Continue => "continue",
            StanzaErrorType::Modify => "modify",
            StanzaErrorType::Wait => "wait",
        }
    }
}

/// RFC 6120 §8.3.3 stanza error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StanzaErrorCondition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    Redirect,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    SubscriptionRequired,
    UndefinedCondition,
    UnexpectedRequest,
}

impl StanzaErrorCondition {
    pub fn as_str(self) -> &'static str {
        use StanzaErrorCondition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            Redirect => "redirect",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            SubscriptionRequired => "subscription-required",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }
    /// The condition named `name` (its element name), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        use StanzaErrorCondition::*;
        [
            BadRequest,
            Conflict,
            FeatureNotImplemented,
            Forbidden,
            Gone,
            InternalServerError,
            ItemNotFound,
            JidMalformed,
            NotAcceptable,
            NotAllowed,
            NotAuthorized,
            PolicyViolation,
            RecipientUnavailable,
            Redirect,
            RegistrationRequired,
            RemoteServerNotFound,
            RemoteServerTimeout,
            ResourceConstraint,
            ServiceUnavailable,
            SubscriptionRequired,
            UndefinedCondition,
            UnexpectedRequest,
        ]
        .into_iter()
        .find(|c| c.as_str() == name)
    }

    /// The pre-RFC 3920 numeric `code` attribute XEP-0086 §3 maps this condition to, for
    /// clients that still read it instead of the condition element (Profanity 0.13 takes a
    /// missing OMEMO device list for "none yet" only on `code='404'`). `None` for
    /// `policy-violation`, which RFC 6120 added after the mapping was written.
    pub fn legacy_code(self) -> Option<u16> {
        use StanzaErrorCondition::*;
        Some(match self {
            BadRequest | JidMalformed | UnexpectedRequest => 400,
            NotAuthorized => 401,
            Forbidden => 403,
            ItemNotFound | RecipientUnavailable | RemoteServerNotFound => 404,
            NotAllowed => 405,
            NotAcceptable => 406,
            RegistrationRequired | SubscriptionRequired => 407,
            Conflict => 409,
            Gone | Redirect => 302,
            InternalServerError | ResourceConstraint | UndefinedCondition => 500,
            FeatureNotImplemented => 501,
            ServiceUnavailable => 503,
            RemoteServerTimeout => 504,
            PolicyViolation => return None,
        })
    }

    /// The type RFC 6120 §8.3.3 recommends for this condition.
    pub fn default_type(self) -> StanzaErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect
            | UndefinedCondition => StanzaErrorType::Modify,
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => {
                StanzaErrorType::Auth
            }
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                StanzaErrorType::Wait
            }
            Conflict
            | FeatureNotImplemented
            | Gone
            | InternalServerError
            | ItemNotFound
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable => StanzaErrorType::Cancel,
        }
    }
}

/// Build the error reply to `stanza` (RFC 6120 §8.3.1): same name and id, `to`/`from` swapped,
/// `type='error'`, the original payload kept for messages and presence, and an `<error>` child
/// with the condition and optional text. The reply's `from` is the stanza's `to` (absent if it had
/// none) and its `to` the stanza's `from`.
pub fn stanza_error_reply(
    stanza: &Element,
    condition: StanzaErrorCondition,
    text: Option<&str>,
) -> Element {
    let mut reply = Element::new(&stanza.name, &stanza.ns);
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    reply.set_attr("type", "error");
    if let Some(lang) = stanza.lang() {
        reply.set_attr_ns(Some(ns::XML), "lang", lang);
    }
    if stanza.name != "iq" {
        // Keep the payload, but not an <error/> the stanza may already carry.
        reply.children = stanza
            .children
            .iter()
            .filter(|n| !matches!(n, Node::Element(e) if e.is("error", &stanza.ns)))
            .cloned()
            .collect();
    }
    let mut error = Element::new("error", &stanza.ns)
        .with_attr("type", condition.default_type().as_str())
        .with_child(Element::new(condition.as_str(), ns::STANZAS_ERRORS));
    if let Some(text) = text {
        error = error.with_child(Element::new("text", ns::STANZAS_ERRORS).with_text(text));
    }
    reply.children.push(Node::Element(error));
    reply
}
