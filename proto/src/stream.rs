//! Incremental XML stream reader with limits, and the stream writer.
//!
//! The reader is fed arbitrary chunks of bytes and yields stream-level events: the stream
//! header, each complete top-level element (stanza or nonza), whitespace keepalives and the
//! stream close. It enforces the limits a peer could otherwise grow without bound.

use crate::element::Element;
use crate::error::StreamError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum bytes of one top-level element (stanza), counted as received. Default 256 KiB.
    pub max_stanza_bytes: usize,
    /// Maximum element nesting inside a stanza (the stanza itself is depth 1). Default 32.
    pub max_depth: usize,
    /// Maximum attributes on one element. Default 64.
    pub max_attributes: usize,
    /// Maximum bytes of one name or attribute value (rxml token). Default 8 KiB.
    pub max_token_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_bytes: 256 * 1024, max_depth: 32, max_attributes: 64, max_token_bytes: 8192 }
    }
}

/// The attributes of an opening `<stream:stream>` tag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace declared on the header (`jabber:client`, `jabber:server`, ...).
    pub default_ns: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Header(StreamHeader),
    /// A complete top-level child of the stream, plus the number of bytes it took on the wire.
    Element(Element, usize),
    /// Whitespace between top-level elements (keepalive).
    Keepalive,
    /// `</stream:stream>`.
    Close,
}

/// Why reading failed; maps to a stream error condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    RestrictedXml(String),
    #[error("wrong stream namespace")]
    InvalidNamespace,
    #[error("limit exceeded: {0}")]
    PolicyViolation(String),
    #[error("unsupported encoding")]
    UnsupportedEncoding,
}

impl ReadError {
    pub fn to_stream_error(&self) -> StreamError {
        todo!()
    }
}

/// Feeds bytes in, events out. After an `Err`, the reader is finished: the stream must be closed.
pub struct StreamReader {
}

impl StreamReader {
    /// `default_ns` is the content namespace the stream must declare (`jabber:client` for c2s).
    pub fn new(limits: Limits, default_ns: &'static str) -> StreamReader {
        todo!()
    }
    /// Append received bytes to the internal buffer.
    pub fn feed(&mut self, bytes: &[u8]) {
        todo!()
    }
    /// Next complete event, `Ok(None)` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, ReadError> {
        todo!()
    }
    /// Bytes buffered but not yet consumed (non-zero after `<starttls/>` means the peer pipelined
    /// data before the TLS handshake, which must be treated as an error).
    pub fn buffered(&self) -> usize {
        todo!()
    }
    /// Free parser scratch buffers while the connection is idle (call when `buffered() == 0`).
    pub fn release_temporaries(&mut self) {
        todo!()
    }
}

/// The server's opening stream header (response header), with `stream` prefix bound and the
/// content namespace as default namespace.
pub fn header_bytes(default_ns: &str, from: &str, to: Option<&str>, id: &str, lang: &str) -> Vec<u8> {
    todo!()
}

/// `</stream:stream>`.
pub const CLOSE: &[u8] = b"</stream:stream>";
