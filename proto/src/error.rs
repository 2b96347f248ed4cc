//! Stream and stanza error conditions (RFC 6120 §4.9 and §8.3) and their elements.

use crate::element::Element;

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
        todo!()
    }
}

/// A stream error ready to send: `<stream:error><cond xmlns=.../><text>..</text></stream:error>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> StreamError {
        StreamError { condition, text: None }
    }
    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> StreamError {
        StreamError { condition, text: Some(text.into()) }
    }
    /// Serialised `<stream:error>` element (using the `stream:` prefix bound by the header).
    pub fn to_bytes(&self) -> Vec<u8> {
        todo!()
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

/// RFC 6120 §8.3.3 stanza error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
        todo!()
    }
    /// The type RFC 6120 §8.3.3 recommends for this condition.
    pub fn default_type(self) -> StanzaErrorType {
        todo!()
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
    todo!()
}
