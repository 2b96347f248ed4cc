//! Incremental XML stream reader with limits, and the stream writer.
//!
//! The reader is fed arbitrary chunks of bytes and yields stream-level events: the stream
//! header, each complete top-level element (stanza or nonza), whitespace keepalives and the
//! stream close. It enforces the limits a peer could otherwise grow without bound.

use rxml::error::EndOrError;
use rxml::{NcName, Parse, RawEvent, RawParser, WithOptions};

use crate::element::{Attr, Element, Namespace, Node};
use crate::error::{StreamError, StreamErrorCondition};
use crate::ns;

/// What one stream may make the reader hold.
///
/// # Memory per byte received
///
/// The reader holds, per stream: the unparsed rest of the last read (at most one read
/// chunk), rxml's token scratch (at most `max_token_bytes`), the namespace declarations in
/// scope (each URI at most `max_namespace_bytes`, counted against the stanza as received)
/// and the tree of the stanza being read. The tree is charged by what it occupies on the
/// heap, not by its wire size: every node's slot in its parent's child vector (by capacity,
/// so growth by doubling is included), every attribute, name and text buffer, each
/// allocation rounded up as the allocator does ([`heap_cost`]). Namespaces are shared
/// ([`Namespace`]), so a URI costs once per declaration however many elements use it.
/// A stanza is refused with `<policy-violation/>` as soon as its wire bytes exceed
/// `max_stanza_bytes` or its tree exceeds [`Limits::max_tree_bytes`] (twice that, at least
/// 64 KiB).
///
/// Worst case, the densest input: empty elements separated by one character of text
/// (`<a/>x`, 5 bytes) make two nodes of 88 bytes in a vector that may be half empty, a
/// 1-byte name and a 1-byte text allocation: 416 bytes of tree per 5 bytes received, about
/// **84 bytes of memory per byte received**, and never more than `max_tree_bytes` plus
/// `max_token_bytes` plus one read chunk in absolute terms, whatever the shape (about 600 KiB
/// with the defaults; c2s streams before authentication use a 16 KiB stanza limit, so about
/// 100 KiB). Text-heavy stanzas cost 1-2 bytes per byte. `proto/tests/memory_bound.rs`
/// measures every hostile shape we know with a counting allocator (at most 36 bytes per byte
/// measured, 2 for the 8 KB-namespace input of issue 16 that used to cost 1,350).
///
/// [`Namespace`]: crate::element::Namespace
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
    /// Maximum elements in one stanza, the stanza included. Default 4096.
    pub max_elements: usize,
    /// Maximum bytes of a namespace URI in a declaration. Default 1 KiB: the longest URI any
    /// XEP registers is under 100 bytes.
    pub max_namespace_bytes: usize,
}

/// The tree of one stanza may occupy this many times `max_stanza_bytes` on the heap...
pub const TREE_BYTES_PER_STANZA_BYTE: usize = 2;
/// ...and at least this much, so that small stanza limits still admit the usual small stanzas
/// (a 100-byte message is a tree of about 1 KiB).
pub const MIN_TREE_BYTES: usize = 64 * 1024;

impl Limits {
    /// Heap bytes the tree of one stanza may occupy ([`heap_cost`] accounting).
    pub fn max_tree_bytes(&self) -> usize {
        self.max_stanza_bytes
            .saturating_mul(TREE_BYTES_PER_STANZA_BYTE)
            .max(MIN_TREE_BYTES)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_token_bytes: 8192,
            max_elements: 4096,
            max_namespace_bytes: 1024,
        }
    }
}

/// The longest stream header accepted. A real one is under 300 bytes.
pub const MAX_HEADER_BYTES: usize = 8192;

/// What an allocation of `bytes` occupies on the heap: glibc's malloc rounds a request plus
/// its 8-byte header up to 16 bytes, and the smallest chunk is 32 bytes.
pub fn heap_cost(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes.saturating_add(8).saturating_add(15) & !15).max(32)
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
        use StreamErrorCondition as C;
        match self {
            ReadError::NotWellFormed(text) => {
                StreamError::with_text(C::NotWellFormed, text.clone())
            }
            ReadError::RestrictedXml(text) => {
                StreamError::with_text(C::RestrictedXml, text.clone())
            }
            ReadError::InvalidNamespace => StreamError::new(C::InvalidNamespace),
            ReadError::PolicyViolation(text) => {
                StreamError::with_text(C::PolicyViolation, text.clone())
            }
            ReadError::UnsupportedEncoding => StreamError::new(C::UnsupportedEncoding),
        }
    }
}

/// Feeds bytes in, events out. After an `Err`, the reader is finished: the stream must be closed.
pub struct StreamReader {
    parser: RawParser,
    /// Received bytes; `buf[pos..]` is not yet consumed by the parser.
    buf: Vec<u8>,
    pos: usize,
    builder: TreeBuilder,
    state: ReaderState,
    /// The first bytes of the stream, to classify errors in its first token.
    start: [u8; START_LEN],
    start_len: u8,
}

const START_LEN: usize = 6;

enum ReaderState {
    Open,
    /// `</stream:stream>` was read; nothing more is parsed.
    Closed,
    Failed(ReadError),
}

impl StreamReader {
    /// `default_ns` is the content namespace the stream must declare (`jabber:client` for c2s).
    pub fn new(limits: Limits, default_ns: &'static str) -> StreamReader {
        let mut parser = RawParser::with_options(parser_options(&limits));
        // Stream-level whitespace (keepalives) must surface as soon as it arrives.
        parser.set_text_buffering(false);
        StreamReader {
            parser,
            buf: Vec::new(),
            pos: 0,
            builder: TreeBuilder::new(limits, Mode::Stream(default_ns)),
            state: ReaderState::Open,
            start: [0; START_LEN],
            start_len: 0,
        }
    }
    /// Append received bytes to the internal buffer.
    pub fn feed(&mut self, bytes: &[u8]) {
        let have = usize::from(self.start_len);
        if have < START_LEN {
            let take = bytes.len().min(START_LEN - have);
            self.start[have..have + take].copy_from_slice(&bytes[..take]);
            self.start_len += take as u8;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }
    /// Next complete event, `Ok(None)` if more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, ReadError> {
        match &self.state {
            ReaderState::Open => {}
            ReaderState::Closed => return Ok(None),
            ReaderState::Failed(e) => return Err(e.clone()),
        }
        match self.next_inner() {
            Ok(Some(StreamEvent::Close)) => {
                self.state = ReaderState::Closed;
                Ok(Some(StreamEvent::Close))
            }
            Err(e) => {
                self.state = ReaderState::Failed(e.clone());
                Err(e)
            }
            other => other,
        }
    }

    fn next_inner(&mut self) -> Result<Option<StreamEvent>, ReadError> {
        loop {
            let mut slice = &self.buf[self.pos..];
            let before = slice.len();
            let result = self.parser.parse(&mut slice, false);
            self.pos += before - slice.len();
            match result {
                Ok(Some(ev)) => {
                    let out = self.builder.handle(ev)?;
                    if out.is_some() {
                        // Buffer text inside stanzas (fewer, larger text events); deliver
                        // stream-level whitespace eagerly.
                        self.parser.set_text_buffering(self.builder.in_element());
                        return Ok(out);
                    }
                    if self.builder.level == self.builder.base + 1 {
                        self.parser.set_text_buffering(true);
                    }
                }
                Ok(None) => return Ok(None),
                Err(EndOrError::NeedMoreData) => {
                    if self.pos == self.buf.len() {
                        self.buf.clear();
                        self.pos = 0;
                    }
                    return Ok(None);
                }
                Err(EndOrError::Error(e)) => {
                    let start = &self.start[..usize::from(self.start_len)];
                    return Err(match self.builder.level {
                        0 => classify_start(start).unwrap_or_else(|| map_rxml_error(e)),
                        _ => map_rxml_error(e),
                    });
                }
            }
        }
    }
    /// Bytes buffered but not yet consumed (non-zero after `<starttls/>` means the peer pipelined
    /// data before the TLS handshake, which must be treated as an error).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Free parser scratch buffers while the connection is idle (call when `buffered() == 0`).
    pub fn release_temporaries(&mut self) {
        self.parser.release_temporaries();
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.shrink_to_fit();
        self.builder.release_temporaries();
    }
}

/// The server's opening stream header (response header), with `stream` prefix bound and the
/// content namespace as default namespace.
pub fn header_bytes(
    default_ns: &str,
    from: &str,
    to: Option<&str>,
    id: &str,
    lang: &str,
) -> Vec<u8> {
    use crate::element::escape_attr;
    let mut out = Vec::with_capacity(200);
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    escape_attr(&mut out, default_ns);
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.extend_from_slice(b"' id='");
    escape_attr(&mut out, id);
    out.extend_from_slice(b"' from='");
    escape_attr(&mut out, from);
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        escape_attr(&mut out, to);
    }
    out.extend_from_slice(b"' version='1.0' xml:lang='");
    escape_attr(&mut out, lang);
    out.extend_from_slice(b"'>");
    out
}

/// `</stream:stream>`.
pub const CLOSE: &[u8] = b"</stream:stream>";

/// Parse a complete document into its root element (the engine behind [`Element::parse`]).
pub(crate) fn parse_document(input: &[u8]) -> Result<Element, ReadError> {
    let limits = Limits {
        max_stanza_bytes: usize::MAX,
        max_depth: 256,
        max_attributes: 1024,
        // A token cannot be longer than the input; rxml reserves this much scratch space.
        max_token_bytes: input.len().clamp(64, 1 << 20),
        max_elements: usize::MAX,
        max_namespace_bytes: usize::MAX,
    };
    let mut parser = RawParser::with_options(parser_options(&limits));
    let mut builder = TreeBuilder::new(limits, Mode::Document);
    let mut slice = input;
    let mut root = None;
    loop {
        match parser.parse(&mut slice, true) {
            Ok(Some(ev)) => {
                if let Some(StreamEvent::Element(el, _)) = builder.handle(ev)? {
                    root = Some(el);
                }
            }
            Ok(None) => break,
            Err(EndOrError::NeedMoreData) => {
                return Err(ReadError::NotWellFormed("unexpected end of input".into()))
            }
            Err(EndOrError::Error(e)) => {
                return Err(match builder.level {
                    0 => classify_start(&input[..input.len().min(START_LEN)])
                        .unwrap_or_else(|| map_rxml_error(e)),
                    _ => map_rxml_error(e),
                })
            }
        }
    }
    root.ok_or_else(|| ReadError::NotWellFormed("no element".into()))
}

fn parser_options(limits: &Limits) -> rxml::Options {
    rxml::Options {
        max_token_length: limits.max_token_bytes.max(1),
        ..rxml::Options::default()
    }
}

/// Classify an error that happened before the first element, from the first bytes of the input:
/// UTF-16/UTF-32 (byte order mark or NUL bytes), and processing instructions whose target merely
/// starts with `xml` (`<?xml-stylesheet`), which rxml reports as a malformed XML declaration.
fn classify_start(start: &[u8]) -> Option<ReadError> {
    match start {
        [0x00 | 0xfe | 0xff, ..] | [_, 0x00, ..] => Some(ReadError::UnsupportedEncoding),
        [b'<', b'?', b'x', b'm', b'l', b' ' | b'\t' | b'\r' | b'\n'] => None,
        [b'<', b'?', b'x', b'm', b'l', _] => {
            Some(ReadError::RestrictedXml("processing instructions".into()))
        }
        _ => None,
    }
}

/// Classify an rxml error. rxml reports DTDs and entity declarations as a malformed `<!` section,
/// so that case is recognised by its message.
fn map_rxml_error(e: rxml::Error) -> ReadError {
    use rxml::Error as E;
    match e {
        E::RestrictedXml("long name or reference") => {
            ReadError::PolicyViolation("name or attribute value too long".into())
        }
        E::RestrictedXml("event too long") => ReadError::PolicyViolation("event too long".into()),
        E::RestrictedXml("only utf-8 encoding is allowed") => ReadError::UnsupportedEncoding,
        E::RestrictedXml(what) => ReadError::RestrictedXml(what.into()),
        E::UndeclaredEntity => ReadError::RestrictedXml("undeclared entity".into()),
        E::InvalidSyntax("malformed cdata or comment section start") => {
            ReadError::RestrictedXml("DTD or markup declaration".into())
        }
        E::InvalidUtf8Byte(_) => ReadError::UnsupportedEncoding,
        other => ReadError::NotWellFormed(other.to_string()),
    }
}

#[derive(Clone, Copy)]
enum Mode {
    /// An XMPP stream: level 1 is `<stream:stream>`, whose children are the output.
    Stream(&'static str),
    /// A standalone document: the root element is the output.
    Document,
}

/// A namespace declaration in scope. `prefix == None` is the default namespace.
struct Binding {
    prefix: Option<NcName>,
    uri: Namespace,
    level: u32,
}

/// Turns rxml's raw (prefix-level) events into elements: resolves namespaces, enforces
/// namespace well-formedness and the limits, and assembles the tree.
struct TreeBuilder {
    limits: Limits,
    mode: Mode,
    /// Number of enclosing levels that are not part of an output element (1 for streams).
    base: u32,
    /// Number of currently open elements (the one whose head is being read included).
    level: u32,
    /// Wire bytes of the current top-level element so far.
    stanza_bytes: usize,
    /// Heap bytes its tree occupies so far ([`heap_cost`] accounting; see [`Limits`]).
    tree_bytes: usize,
    stanza_elements: usize,
    /// Whether the last stream-level event was whitespace (one keepalive per run).
    in_whitespace: bool,
    /// Name of the element whose head is being read, and its raw attributes.
    head: Option<(Option<NcName>, NcName)>,
    head_attrs: Vec<(Option<NcName>, NcName, String)>,
    /// Open elements of the current top-level element, outermost first.
    open: Vec<Element>,
    bindings: Vec<Binding>,
}

impl TreeBuilder {
    fn new(limits: Limits, mode: Mode) -> TreeBuilder {
        TreeBuilder {
            limits,
            mode,
            base: match mode {
                Mode::Stream(_) => 1,
                Mode::Document => 0,
            },
            level: 0,
            stanza_bytes: 0,
            tree_bytes: 0,
            stanza_elements: 0,
            in_whitespace: false,
            head: None,
            head_attrs: Vec::new(),
            open: Vec::new(),
            bindings: Vec::new(),
        }
    }

    fn in_element(&self) -> bool {
        self.level > self.base
    }

    fn release_temporaries(&mut self) {
        self.head_attrs.shrink_to_fit();
        self.open.shrink_to_fit();
        self.bindings.shrink_to_fit();
    }

    #[inline]
    fn count(&mut self, len: usize) -> Result<(), ReadError> {
        self.stanza_bytes = self.stanza_bytes.saturating_add(len);
        if self.stanza_bytes > self.limits.max_stanza_bytes {
            return Err(ReadError::PolicyViolation(format!(
                "stanza larger than {} bytes",
                self.limits.max_stanza_bytes
            )));
        }
        Ok(())
    }

    /// Charge `bytes` of heap to the tree of the current stanza.
    #[inline]
    fn charge(&mut self, bytes: usize) -> Result<(), ReadError> {
        self.tree_bytes = self.tree_bytes.saturating_add(bytes);
        if self.tree_bytes > self.limits.max_tree_bytes() {
            return Err(ReadError::PolicyViolation(format!(
                "stanza tree larger than {} bytes in memory",
                self.limits.max_tree_bytes()
            )));
        }
        Ok(())
    }

    /// Append `node` to the innermost open element. The child vector's growth is charged
    /// before it is allocated, so a refused stanza never allocates past its budget.
    fn push_child(&mut self, node: Node) -> Result<(), ReadError> {
        let Some((len, capacity)) = self
            .open
            .last()
            .map(|p| (p.children.len(), p.children.capacity()))
        else {
            return Ok(());
        };
        // Doubling from one, not from std's four: most elements have a single child (a
        // body's text, a resource), and four 88-byte slots for it would quadruple the
        // memory a peer gets per byte of `<b>x</b>`.
        let grow = if len == capacity { capacity.max(1) } else { 0 };
        if grow > 0 {
            self.charge(heap_cost(grow * std::mem::size_of::<Node>()))?;
        }
        if let Some(parent) = self.open.last_mut() {
            parent.children.reserve_exact(grow);
            parent.children.push(node);
        }
        Ok(())
    }

    /// Append `text` to the innermost open element, merged into its last text node if any.
    fn push_text(&mut self, text: String) -> Result<(), ReadError> {
        let Some(top) = self.open.last() else {
            return Ok(());
        };
        let Some(Node::Text(t)) = top.children.last() else {
            self.charge(heap_cost(text.capacity()))?;
            return self.push_child(Node::Text(text));
        };
        let (len, capacity) = (t.len(), t.capacity());
        let needed = len.saturating_add(text.len());
        let grow = if needed > capacity {
            needed.max(capacity.saturating_mul(2)) - capacity
        } else {
            0
        };
        if grow > 0 {
            self.charge(heap_cost(capacity + grow).saturating_sub(heap_cost(capacity)))?;
        }
        if let Some(Node::Text(t)) = self.open.last_mut().and_then(|p| p.children.last_mut()) {
            t.reserve_exact((capacity + grow).max(needed) - len);
            t.push_str(&text);
        }
        Ok(())
    }

    fn handle(&mut self, ev: RawEvent) -> Result<Option<StreamEvent>, ReadError> {
        match ev {
            RawEvent::XmlDeclaration(..) => Ok(None),
            RawEvent::ElementHeadOpen(m, qname) => {
                self.level = self.level.saturating_add(1);
                self.in_whitespace = false;
                if self.level > self.base {
                    let depth = (self.level - self.base) as usize;
                    if depth > self.limits.max_depth {
                        return Err(ReadError::PolicyViolation(format!(
                            "elements nested deeper than {}",
                            self.limits.max_depth
                        )));
                    }
                    if depth == 1 {
                        self.stanza_bytes = 0;
                        self.tree_bytes = 0;
                        self.stanza_elements = 0;
                    }
                    self.stanza_elements += 1;
                    if self.stanza_elements > self.limits.max_elements {
                        return Err(ReadError::PolicyViolation(format!(
                            "more than {} elements in one stanza",
                            self.limits.max_elements
                        )));
                    }
                    self.count(m.len())?;
                } else {
                    self.stanza_bytes = m.len();
                }
                self.head = Some(qname);
                Ok(None)
            }
            RawEvent::Attribute(m, (prefix, local), value) => {
                if self.level > self.base {
                    self.count(m.len())?;
                } else {
                    // The stream header is held until it is complete: bound it on its own.
                    self.stanza_bytes = self.stanza_bytes.saturating_add(m.len());
                    if self.stanza_bytes > MAX_HEADER_BYTES {
                        return Err(ReadError::PolicyViolation(format!(
                            "stream header larger than {MAX_HEADER_BYTES} bytes"
                        )));
                    }
                }
                if self.head_attrs.len() >= self.limits.max_attributes {
                    return Err(ReadError::PolicyViolation(format!(
                        "more than {} attributes",
                        self.limits.max_attributes
                    )));
                }
                self.head_attrs.push((prefix, local, value));
                Ok(None)
            }
            RawEvent::ElementHeadClose(m) => {
                let Some((prefix, local)) = self.head.take() else {
                    return Err(ReadError::NotWellFormed(
                        "element head without a name".into(),
                    ));
                };
                if self.level > self.base {
                    self.count(m.len())?;
                    let el = self.resolve_head(prefix, local)?;
                    // The element's own slot is charged when it joins its parent; the
                    // stanza itself is charged here.
                    let mut cost = heap_cost(el.name.capacity())
                        + heap_cost(el.attrs.capacity() * std::mem::size_of::<Attr>());
                    for a in &el.attrs {
                        cost += heap_cost(a.name.capacity()) + heap_cost(a.value.capacity());
                    }
                    if self.open.is_empty() {
                        cost += std::mem::size_of::<Element>();
                    }
                    self.charge(cost)?;
                    self.open.push(el);
                    Ok(None)
                } else {
                    let el = self.resolve_head(prefix, local)?;
                    self.stream_header(el).map(Some)
                }
            }
            RawEvent::ElementFoot(m) => {
                while self.bindings.last().is_some_and(|b| b.level == self.level) {
                    self.bindings.pop();
                }
                if self.level <= self.base {
                    self.level = self.level.saturating_sub(1);
                    return Ok(Some(StreamEvent::Close));
                }
                self.count(m.len())?;
                self.level -= 1;
                let Some(el) = self.open.pop() else {
                    return Err(ReadError::NotWellFormed("unbalanced end tag".into()));
                };
                if self.open.is_empty() {
                    return Ok(Some(StreamEvent::Element(el, self.stanza_bytes)));
                }
                self.push_child(Node::Element(el))?;
                Ok(None)
            }
            RawEvent::Text(m, text) => {
                if self.level > self.base {
                    self.count(m.len())?;
                    self.push_text(text)?;
                    Ok(None)
                } else if !text
                    .bytes()
                    .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                {
                    Err(ReadError::NotWellFormed(
                        "character data at stream level".into(),
                    ))
                } else if self.in_whitespace {
                    Ok(None)
                } else {
                    self.in_whitespace = true;
                    Ok(Some(StreamEvent::Keepalive))
                }
            }
        }
    }

    /// Apply the namespace declarations of the element just read and build it.
    fn resolve_head(
        &mut self,
        prefix: Option<NcName>,
        local: NcName,
    ) -> Result<Element, ReadError> {
        let level = self.level;
        let first_new = self.bindings.len();
        let mut i = 0;
        while i < self.head_attrs.len() {
            let (p, l, _) = &self.head_attrs[i];
            let is_decl = match p {
                None => l.as_str() == "xmlns",
                Some(p) => p.as_str() == "xmlns",
            };
            if !is_decl {
                i += 1;
                continue;
            }
            let (p, l, uri) = self.head_attrs.remove(i);
            let prefix = p.map(|_| l);
            if uri.len() > self.limits.max_namespace_bytes {
                return Err(ReadError::PolicyViolation(format!(
                    "namespace name longer than {} bytes",
                    self.limits.max_namespace_bytes
                )));
            }
            if self.bindings[first_new..]
                .iter()
                .any(|b| b.prefix == prefix)
            {
                return Err(ReadError::NotWellFormed(
                    "duplicate namespace declaration".into(),
                ));
            }
            // Namespaces in XML §3: only `xml` may name the XML namespace, and nothing may
            // name the xmlns namespace.
            let binds_xml = uri == rxml::XMLNS_XML;
            let is_xml_prefix = prefix.as_ref().is_some_and(|p| p.as_str() == "xml");
            if uri == rxml::XMLNS_XMLNS || binds_xml != is_xml_prefix {
                return Err(ReadError::NotWellFormed("reserved namespace name".into()));
            }
            if self.level > self.base {
                // Inside a stanza a declaration lives as long as the element declaring it.
                self.charge(heap_cost(uri.len()) + std::mem::size_of::<Binding>())?;
            }
            let uri = Namespace::from(uri);
            self.bindings.push(Binding { prefix, uri, level });
        }

        let ns = lookup(&self.bindings, prefix.as_ref().map(NcName::as_str))?;
        if ns == ns::XML {
            // Legal XML but meaningless in XMPP, and no serialiser could write it back
            // without the prefix: refuse it rather than carry it.
            return Err(ReadError::NotWellFormed(
                "element in the reserved xml namespace".into(),
            ));
        }
        let mut attrs: Vec<Attr> = Vec::with_capacity(self.head_attrs.len());
        for (p, l, value) in self.head_attrs.drain(..) {
            let ans = match p {
                None => None,
                Some(p) => Some(lookup(&self.bindings, Some(p.as_str()))?),
            };
            if attrs.iter().any(|a| a.ns == ans && a.name == l.as_str()) {
                return Err(ReadError::NotWellFormed("duplicate attribute".into()));
            }
            attrs.push(Attr {
                ns: ans,
                name: String::from(l),
                value,
            });
        }
        Ok(Element {
            name: String::from(local),
            ns,
            attrs,
            children: Vec::new(),
        })
    }

    /// Check the stream header and extract its attributes.
    fn stream_header(&mut self, el: Element) -> Result<StreamEvent, ReadError> {
        let Mode::Stream(default_ns) = self.mode else {
            return Err(ReadError::NotWellFormed("unexpected element".into()));
        };
        if !el.is("stream", ns::STREAM) {
            return Err(ReadError::InvalidNamespace);
        }
        let declared = self
            .bindings
            .iter()
            .rev()
            .find(|b| b.prefix.is_none())
            .map(|b| b.uri.as_str());
        if declared != Some(default_ns) {
            return Err(ReadError::InvalidNamespace);
        }
        let get = |name: &str| el.attr(name).map(str::to_owned);
        Ok(StreamEvent::Header(StreamHeader {
            to: get("to"),
            from: get("from"),
            id: get("id"),
            version: get("version"),
            lang: el.lang().map(str::to_owned),
            default_ns: Some(default_ns.to_owned()),
        }))
    }
}

/// The namespace URI bound to `prefix` (`None`: the default namespace, `""` if none), shared
/// with its declaration.
fn lookup(bindings: &[Binding], prefix: Option<&str>) -> Result<Namespace, ReadError> {
    match prefix {
        None => Ok(bindings
            .iter()
            .rev()
            .find(|b| b.prefix.is_none())
            .map_or_else(no_namespace, |b| b.uri.clone())),
        Some("xml") => Ok(xml_namespace()),
        Some(p) => bindings
            .iter()
            .rev()
            .find(|b| b.prefix.as_ref().is_some_and(|bp| bp.as_str() == p))
            .map(|b| b.uri.clone())
            .ok_or_else(|| ReadError::NotWellFormed(format!("undeclared namespace prefix {p:?}"))),
    }
}

thread_local! {
    static NO_NAMESPACE: Namespace = Namespace::from("");
    static XML_NAMESPACE: Namespace = Namespace::from(ns::XML);
}

/// The empty namespace (no default declared), one shared copy per thread.
fn no_namespace() -> Namespace {
    NO_NAMESPACE.with(Namespace::clone)
}

/// The `xml` prefix's namespace (`xml:lang`), one shared copy per thread.
fn xml_namespace() -> Namespace {
    XML_NAMESPACE.with(Namespace::clone)
}
