//! A small owned XML element tree: what the stream reader produces and the writer serialises.
//!
//! Routing needs only the top-level attributes of a stanza, so this type keeps them directly
//! accessible and cheap; typed parsing (xmpp-parsers) happens only where a handler needs it.

/// An attribute. `ns` is `None` for ordinary unprefixed attributes; `xml:lang` has `ns = Some(ns::XML)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ns: Option<String>,
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
    pub ns: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str, ns: &str) -> Element {
        todo!()
    }
    /// Builder-style: add or replace an unnamespaced attribute.
    pub fn with_attr(self, name: &str, value: impl Into<String>) -> Element {
        todo!()
    }
    /// Builder-style: append a child element.
    pub fn with_child(self, child: Element) -> Element {
        todo!()
    }
    /// Builder-style: append a text node.
    pub fn with_text(self, text: impl Into<String>) -> Element {
        todo!()
    }
    pub fn is(&self, name: &str, ns: &str) -> bool {
        todo!()
    }
    /// Unnamespaced attribute value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        todo!()
    }
    /// Set (add or replace) an unnamespaced attribute.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        todo!()
    }
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        todo!()
    }
    /// `xml:lang`, if present.
    pub fn lang(&self) -> Option<&str> {
        todo!()
    }
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        std::iter::empty()
    }
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        todo!()
    }
    /// Concatenated direct text children.
    pub fn text(&self) -> String {
        todo!()
    }
    /// Serialise, declaring `xmlns` only where the namespace differs from `parent_ns`
    /// (pass the stream's default namespace, e.g. `jabber:client`, for top-level stanzas so
    /// that they come out without a redundant xmlns). Text and attribute values are escaped.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        todo!()
    }
    /// Serialise as a standalone document fragment (always declares its namespace).
    pub fn to_xml_string(&self) -> String {
        todo!()
    }
    /// Parse one complete element from a string (for tests, config and handlers; not the hot path).
    pub fn parse(s: &str) -> Result<Element, crate::stream::ReadError> {
        todo!()
    }
}
