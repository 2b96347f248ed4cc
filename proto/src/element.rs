//! A small owned XML element tree: what the stream reader produces and the writer serialises.
//!
//! Routing needs only the top-level attributes of a stanza, so this type keeps them directly
//! accessible and cheap; typed parsing (xmpp-parsers) happens only where a handler needs it.

use std::sync::Arc;

use crate::ns;

/// A namespace URI. Cloning shares one allocation: the stream reader gives every element and
/// attribute in a declaration's scope the same copy, so a parsed tree holds one copy of a URI
/// per `xmlns` declaration, not one per element (a peer's 1 KiB URI on 4,000 children would
/// otherwise cost 4 MB for 16 KB received).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Namespace(Arc<str>);

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Namespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Namespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Namespace {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Namespace {
    fn from(s: &str) -> Namespace {
        Namespace(Arc::from(s))
    }
}

impl From<String> for Namespace {
    fn from(s: String) -> Namespace {
        Namespace(Arc::from(s))
    }
}

impl PartialEq<str> for Namespace {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Namespace {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Namespace {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other.as_str()
    }
}

impl PartialEq<Namespace> for &str {
    fn eq(&self, other: &Namespace) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Namespace> for str {
    fn eq(&self, other: &Namespace) -> bool {
        self == &*other.0
    }
}

/// An attribute. `ns` is `None` for ordinary unprefixed attributes; `xml:lang` has `ns = Some(ns::XML)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ns: Option<Namespace>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    /// The element's namespace URI (resolved; prefixes are not kept).
    pub ns: Namespace,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Element {
        Element {
            name: name.to_owned(),
            ns: Namespace::from(ns),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }
    /// Builder-style: add or replace an unnamespaced attribute.
    pub fn with_attr(mut self, name: &str, value: impl Into<String>) -> Element {
        self.set_attr(name, value);
        self
    }
    /// Builder-style: append a child element.
    pub fn with_child(mut self, child: Element) -> Element {
        self.children.push(Node::Element(child));
        self
    }
    /// Append a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }
    /// Builder-style: append a text node.
    pub fn with_text(mut self, text: impl Into<String>) -> Element {
        self.append_text(text);
        self
    }
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }
    /// Unnamespaced attribute value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attr_ns(None, name)
    }
    /// Attribute value by namespace (`None` for unprefixed attributes) and local name.
    pub fn attr_ns(&self, ns: Option<&str>, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name && attr_ns_eq(a.ns.as_deref(), ns))
            .map(|a| a.value.as_str())
    }
    /// Set (add or replace) an unnamespaced attribute.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        self.set_attr_ns(None, name, value)
    }
    /// Set (add or replace) an attribute in namespace `ns` (`None` for unprefixed attributes;
    /// `Some(ns::XML)` with `"lang"` for `xml:lang`).
    pub fn set_attr_ns(&mut self, ns: Option<&str>, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .attrs
            .iter_mut()
            .find(|a| a.name == name && attr_ns_eq(a.ns.as_deref(), ns))
        {
            Some(a) => a.value = value,
            None => self.attrs.push(Attr {
                ns: ns.filter(|n| !n.is_empty()).map(Namespace::from),
                name: name.to_owned(),
                value,
            }),
        }
    }
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self
            .attrs
            .iter()
            .position(|a| a.name == name && attr_ns_eq(a.ns.as_deref(), None))?;
        Some(self.attrs.remove(pos).value)
    }
    /// `xml:lang`, if present.
    pub fn lang(&self) -> Option<&str> {
        self.attr_ns(Some(ns::XML), "lang")
    }
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }
    pub fn children_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }
    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.is(name, ns) => Some(e),
            _ => None,
        })
    }
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(name, ns))
    }
    /// Remove every child element for which `remove` is true (text nodes stay; two text
    /// nodes the removal makes adjacent are merged, keeping the tree's invariant). Returns
    /// how many were removed.
    pub fn remove_children(&mut self, mut remove: impl FnMut(&Element) -> bool) -> usize {
        let mut removed = 0;
        let mut kept: Vec<Node> = Vec::with_capacity(self.children.len());
        for node in self.children.drain(..) {
            match node {
                Node::Element(e) if remove(&e) => removed += 1,
                Node::Text(t) => match kept.last_mut() {
                    Some(Node::Text(last)) => last.push_str(&t),
                    _ => kept.push(Node::Text(t)),
                },
                other => kept.push(other),
            }
        }
        self.children = kept;
        removed
    }
    /// Append text, merging it into the last child if that is a text node (so that a tree
    /// never holds two adjacent text nodes).
    pub fn append_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.children.last_mut() {
            Some(Node::Text(t)) => t.push_str(&text),
            _ => self.children.push(Node::Text(text)),
        }
    }
    /// Concatenated direct text children.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }
    /// Serialise, declaring `xmlns` only where the namespace differs from `parent_ns`
    /// (pass the stream's default namespace, e.g. `jabber:client`, for top-level stanzas so
    /// that they come out without a redundant xmlns). Text and attribute values are escaped.
    ///
    /// An element in the streams namespace (`features`, `error`) comes out as `stream:NAME`,
    /// using the prefix the stream header binds: clients match on that qualified name; one
    /// in the dialback namespace as `db:NAME`.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        if self.ns == ns::STREAM {
            self.write_qualified(out, Some(parent_ns), Some("stream"))
        } else if self.ns == ns::DIALBACK {
            // Server Dialback elements come out as `db:NAME` (the s2s header binds `db`):
            // some servers (ejabberd) match them by that qualified name.
            self.write_qualified(out, Some(parent_ns), Some("db"))
        } else {
            self.write_inner(out, Some(parent_ns))
        }
    }
    /// Serialise as a standalone document fragment (always declares its namespace).
    pub fn to_xml_string(&self) -> String {
        let mut out = Vec::with_capacity(128);
        self.write_inner(&mut out, None);
        // Only `&str` data and ASCII markup went in, so this cannot fail.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
    /// Parse one complete element from a string (for tests, config and handlers; not the hot path).
    pub fn parse(s: &str) -> Result<Element, crate::stream::ReadError> {
        crate::stream::parse_document(s.as_bytes())
    }

    /// `parent_ns = None`: declare the namespace unconditionally (unless it is empty).
    fn write_inner(&self, out: &mut Vec<u8>, parent_ns: Option<&str>) {
        self.write_qualified(out, parent_ns, None)
    }

    /// With `prefix`, the element is written as `prefix:name` (the prefix is bound by an
    /// ancestor) and its children inherit `parent_ns` as their default namespace.
    fn write_qualified(&self, out: &mut Vec<u8>, parent_ns: Option<&str>, prefix: Option<&str>) {
        out.push(b'<');
        if let Some(p) = prefix {
            out.extend_from_slice(p.as_bytes());
            out.push(b':');
        }
        out.extend_from_slice(self.name.as_bytes());
        let declare = match (prefix, parent_ns) {
            (Some(_), _) => false,
            (None, Some(p)) => self.ns != p,
            (None, None) => !self.ns.is_empty(),
        };
        let children_ns = match (prefix, parent_ns) {
            (Some(_), Some(p)) => p,
            _ => self.ns.as_str(),
        };
        if declare {
            out.extend_from_slice(b" xmlns='");
            escape_attr(out, &self.ns);
            out.push(b'\'');
        }
        for (i, a) in self.attrs.iter().enumerate() {
            out.push(b' ');
            match a.ns.as_deref() {
                None | Some("") => {}
                Some(ns::XML) => out.extend_from_slice(b"xml:"),
                Some(uri) => {
                    // Attributes in the same namespace share the prefix of the first of them.
                    let first = self.attrs[..i]
                        .iter()
                        .position(|b| b.ns.as_deref() == Some(uri))
                        .unwrap_or(i);
                    if first == i {
                        out.extend_from_slice(b"xmlns:");
                        write_prefix(out, i);
                        out.extend_from_slice(b"='");
                        escape_attr(out, uri);
                        out.extend_from_slice(b"' ");
                    }
                    write_prefix(out, first);
                    out.push(b':');
                }
            }
            out.extend_from_slice(a.name.as_bytes());
            out.extend_from_slice(b"='");
            escape_attr(out, &a.value);
            out.push(b'\'');
        }
        if self.children.is_empty() {
            out.extend_from_slice(b"/>");
            return;
        }
        out.push(b'>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_inner(out, Some(children_ns)),
                Node::Text(t) => escape_text(out, t),
            }
        }
        out.extend_from_slice(b"</");
        if let Some(p) = prefix {
            out.extend_from_slice(p.as_bytes());
            out.push(b':');
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(b'>');
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_xml_string())
    }
}

fn attr_ns_eq(have: Option<&str>, want: Option<&str>) -> bool {
    have.filter(|n| !n.is_empty()) == want.filter(|n| !n.is_empty())
}

/// Prefix `ns<i>` for the namespaced attribute at index `i`.
fn write_prefix(out: &mut Vec<u8>, i: usize) {
    out.extend_from_slice(b"ns");
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Escape character data. `\r` is escaped so that it survives line-end normalisation.
pub(crate) fn escape_text(out: &mut Vec<u8>, s: &str) {
    escape(out, s, false)
}

/// Escape an attribute value for a `'`-delimited attribute. Whitespace other than the space is
/// escaped so that it survives attribute-value normalisation.
pub(crate) fn escape_attr(out: &mut Vec<u8>, s: &str) {
    escape(out, s, true)
}

/// Whether `b` is escaped in text (or, with `attr`, in an attribute value).
#[inline(always)]
fn special(b: u8, attr: bool) -> bool {
    matches!(b, b'&' | b'<' | b'>' | b'\r') || (attr && matches!(b, b'\'' | b'"' | b'\n' | b'\t'))
}

#[inline]
fn escape(out: &mut Vec<u8>, s: &str, attr: bool) {
    let bytes = s.as_bytes();
    // Nearly all text and attribute values have nothing to escape: a look at 32 bytes at a
    // time without a branch per byte (the compiler vectorises it) finds that, and the whole
    // string is copied at once. The serialisation of every routed stanza runs through here
    // (issue 22).
    if !bytes
        .chunks(32)
        .any(|chunk| chunk.iter().fold(false, |any, &b| any | special(b, attr)))
    {
        out.extend_from_slice(bytes);
        return;
    }
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#13;",
            b'\'' if attr => b"&apos;",
            b'"' if attr => b"&quot;",
            b'\n' if attr => b"&#10;",
            b'\t' if attr => b"&#9;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&bytes[last..]);
}

/// Elements travel between cluster nodes (IM operations on a NodeLink) as their XML text,
/// parsed again on arrival.
impl serde::Serialize for Element {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_xml_string())
    }
}

impl<'de> serde::Deserialize<'de> for Element {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Element, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Element::parse(&s).map_err(serde::de::Error::custom)
    }
}
