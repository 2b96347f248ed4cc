//! A tiny scanner for the server's half of an XMPP stream.
//!
//! It splits the bytes into the stream header, complete top-level elements and the closing tag,
//! and offers a few lookups on an element's text. It assumes the server sends well-formed XML
//! without comments, CDATA or processing instructions (Switchboard never sends them); anything
//! it does not understand is an error, never a panic.

use std::fmt;

/// One unit of the server's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The opening `<stream:stream ...>` tag.
    Header(String),
    /// A complete top-level element, e.g. `<stream:features>...</stream:features>`.
    Element(String),
    /// The closing `</stream:stream>`.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// More than the scanner's limit is buffered without completing an element.
    TooLarge,
    /// Bytes that are not the XML this scanner understands.
    Malformed(&'static str),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::TooLarge => f.write_str("element too large"),
            ScanError::Malformed(what) => write!(f, "malformed xml: {what}"),
        }
    }
}

/// Buffers what the server sent until a whole unit is available.
#[derive(Debug)]
pub struct Scanner {
    buf: Vec<u8>,
    /// Start of what has not been handed out yet. Consumed bytes are dropped at the next
    /// push, so a read holding many stanzas costs one move, not one per stanza.
    pos: usize,
    max: usize,
}

impl Scanner {
    /// `max` bounds the bytes buffered for one incomplete element.
    pub fn new(max: usize) -> Scanner {
        Scanner {
            buf: Vec::new(),
            pos: 0,
            max,
        }
    }

    pub fn push(&mut self, data: &[u8]) -> Result<(), ScanError> {
        if self.buf.len() - self.pos + data.len() > self.max {
            return Err(ScanError::TooLarge);
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete unit, or `None` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, ScanError> {
        loop {
            let pending = &self.buf[self.pos..];
            let start = pending
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(pending.len());
            if start == pending.len() {
                self.buf.clear();
                self.pos = 0;
                return Ok(None);
            }
            let rest = &pending[start..];
            if rest[0] != b'<' {
                return Err(ScanError::Malformed("text outside an element"));
            }
            let (kind, len) = if rest.starts_with(b"<?") {
                match find(rest, b"?>") {
                    Some(i) => (Kind::Declaration, i + 2),
                    None => return Ok(None),
                }
            } else if rest.starts_with(b"</") {
                match find(rest, b">") {
                    Some(i) => (Kind::End, i + 1),
                    None => return Ok(None),
                }
            } else {
                match tag_end(rest, 0)? {
                    None => return Ok(None),
                    Some((end, self_closing)) => {
                        let name = tag_name(&rest[1..end]);
                        if !self_closing && (name == b"stream" || name.ends_with(b":stream")) {
                            (Kind::Header, end)
                        } else {
                            match element_len(rest)? {
                                Some(len) => (Kind::Element, len),
                                None => return Ok(None),
                            }
                        }
                    }
                }
            };
            let unit = rest[..len].to_vec();
            self.pos += start + len;
            let text =
                |unit| String::from_utf8(unit).map_err(|_| ScanError::Malformed("not UTF-8"));
            return Ok(Some(match kind {
                Kind::Declaration => continue,
                Kind::End => Event::End,
                Kind::Header => Event::Header(text(unit)?),
                Kind::Element => Event::Element(text(unit)?),
            }));
        }
    }

    /// Nothing is buffered: drop the allocation so an idle connection costs no buffer.
    pub fn release(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }
}

enum Kind {
    Declaration,
    Header,
    Element,
    End,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The name of a tag from the bytes after `<`.
fn tag_name(tag: &[u8]) -> &[u8] {
    let end = tag
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>')
        .unwrap_or(tag.len());
    &tag[..end]
}

/// End (exclusive) of the start tag at `start`, and whether it is self-closing; quotes are
/// respected so `>` inside attribute values does not end the tag.
fn tag_end(b: &[u8], start: usize) -> Result<Option<(usize, bool)>, ScanError> {
    let mut quote = None;
    for i in start + 1..b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c @ (b'\'' | b'"')) => quote = Some(c),
            (None, b'<') => return Err(ScanError::Malformed("'<' inside a tag")),
            (None, b'>') => return Ok(Some((i + 1, b[i - 1] == b'/'))),
            (None, _) => {}
        }
    }
    Ok(None)
}

/// Length of the complete element starting at `b[0] == b'<'`, or `None` if incomplete.
fn element_len(b: &[u8]) -> Result<Option<usize>, ScanError> {
    let Some((mut pos, self_closing)) = tag_end(b, 0)? else {
        return Ok(None);
    };
    if self_closing {
        return Ok(Some(pos));
    }
    let mut depth = 1usize;
    while let Some(off) = b[pos..].iter().position(|&c| c == b'<') {
        let i = pos + off;
        match b.get(i + 1) {
            None => return Ok(None),
            Some(b'/') => {
                let Some(close) = b[i..].iter().position(|&c| c == b'>') else {
                    return Ok(None);
                };
                pos = i + close + 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(pos));
                }
            }
            Some(b'!' | b'?') => return Err(ScanError::Malformed("comment, CDATA or PI")),
            Some(_) => {
                let Some((end, self_closing)) = tag_end(b, i)? else {
                    return Ok(None);
                };
                pos = end;
                if !self_closing {
                    depth += 1;
                }
            }
        }
    }
    Ok(None)
}

/// The qualified name of an element or tag, e.g. `stream:features`.
pub fn name(el: &str) -> &str {
    let tag = el.strip_prefix('<').unwrap_or(el);
    let end = tag
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .unwrap_or(tag.len());
    &tag[..end]
}

/// The unescaped value of attribute `key` on the element's start tag.
pub fn attr(el: &str, key: &str) -> Option<String> {
    let tag_len = tag_end(el.as_bytes(), 0).ok().flatten()?.0;
    let mut rest = el.get(1 + name(el).len()..tag_len)?;
    loop {
        rest = rest.trim_start();
        let eq = rest.find('=')?;
        let attr_name = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let close = rest[1..].find(quote)?;
        if attr_name == key {
            return Some(unescape(&rest[1..1 + close]));
        }
        rest = &rest[close + 2..];
    }
}

/// The direct child elements of `el`, in order.
pub fn children(el: &str) -> Vec<&str> {
    let b = el.as_bytes();
    let mut out = Vec::new();
    let Ok(Some((mut pos, false))) = tag_end(b, 0) else {
        return out;
    };
    while let Some(off) = el[pos..].find('<') {
        let i = pos + off;
        if b.get(i + 1) == Some(&b'/') {
            break;
        }
        match element_len(&b[i..]) {
            Ok(Some(len)) => {
                out.push(&el[i..i + len]);
                pos = i + len;
            }
            _ => break,
        }
    }
    out
}

/// The first direct child named `child`.
pub fn child<'a>(el: &'a str, child: &str) -> Option<&'a str> {
    children(el).into_iter().find(|c| name(c) == child)
}

/// The unescaped character data of an element with text content only (e.g. `<success>`).
pub fn text(el: &str) -> String {
    let Ok(Some((start, self_closing))) = tag_end(el.as_bytes(), 0) else {
        return String::new();
    };
    if self_closing {
        return String::new();
    }
    let end = el.rfind("</").filter(|&e| e >= start).unwrap_or(start);
    unescape(&el[start..end])
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `s` escaped for attribute values and character data.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='x1' version='1.0'>\
        <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism>\
        <mechanism>PLAIN</mechanism></mechanisms></stream:features>\n \
        <message from='a@localhost/x' type='chat' id='q&apos;1'><body>1 &lt; 2</body></message>\
        <presence/></stream:stream>";

    fn all(scanner: &mut Scanner) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(ev) = scanner.next_event().expect("scan") {
            out.push(ev);
        }
        out
    }

    #[test]
    fn whole_stream_at_once() {
        let mut s = Scanner::new(1 << 16);
        s.push(SERVER.as_bytes()).unwrap();
        let events = all(&mut s);
        assert_eq!(events.len(), 5);
        assert!(matches!(&events[0], Event::Header(h) if h.starts_with("<stream:stream")));
        assert!(matches!(&events[1], Event::Element(e) if name(e) == "stream:features"));
        assert!(matches!(&events[2], Event::Element(e) if name(e) == "message"));
        assert_eq!(events[3], Event::Element("<presence/>".into()));
        assert_eq!(events[4], Event::End);
    }

    #[test]
    fn split_at_every_byte_gives_the_same_events() {
        let mut whole = Scanner::new(1 << 16);
        whole.push(SERVER.as_bytes()).unwrap();
        let expected = all(&mut whole);
        for split in 0..SERVER.len() {
            let mut s = Scanner::new(1 << 16);
            s.push(&SERVER.as_bytes()[..split]).unwrap();
            let mut got = all(&mut s);
            s.push(&SERVER.as_bytes()[split..]).unwrap();
            got.extend(all(&mut s));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut s = Scanner::new(1 << 16);
        let mut got = Vec::new();
        for b in SERVER.as_bytes() {
            s.push(&[*b]).unwrap();
            got.extend(all(&mut s));
        }
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn lookups() {
        let features = "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>SCRAM-SHA-256</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
            </stream:features>";
        let mechs = child(features, "mechanisms").unwrap();
        let names: Vec<String> = children(mechs).into_iter().map(text).collect();
        assert_eq!(names, ["SCRAM-SHA-256", "PLAIN"]);

        let msg = "<message from=\"a@localhost/x\" type='chat' id='q&apos;1'><body>1 &lt; 2</body></message>";
        assert_eq!(attr(msg, "type").as_deref(), Some("chat"));
        assert_eq!(attr(msg, "id").as_deref(), Some("q'1"));
        assert_eq!(attr(msg, "from").as_deref(), Some("a@localhost/x"));
        assert_eq!(attr(msg, "to"), None);
        assert_eq!(text(child(msg, "body").unwrap()), "1 < 2");
        assert_eq!(
            text("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
            ""
        );
        assert_eq!(text("<success xmlns='x'>dj0=</success>"), "dj0=");
        let err = "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no</text></stream:error>";
        assert_eq!(children(err).first().map(|c| name(c)), Some("host-unknown"));
    }

    #[test]
    fn quoted_angle_bracket_in_attribute() {
        let mut s = Scanner::new(1024);
        s.push(b"<iq id='a>b' type='result'><x/></iq>").unwrap();
        let Some(Event::Element(e)) = s.next_event().unwrap() else {
            panic!("no element");
        };
        assert_eq!(attr(&e, "id").as_deref(), Some("a>b"));
        assert_eq!(children(&e), ["<x/>"]);
    }

    #[test]
    fn limits_and_garbage_are_errors() {
        let mut s = Scanner::new(8);
        assert_eq!(s.push(b"<message>"), Err(ScanError::TooLarge));
        let mut s = Scanner::new(64);
        s.push(b"hello").unwrap();
        assert!(s.next_event().is_err());
        let mut s = Scanner::new(64);
        s.push(b"<a><!-- x --></a>").unwrap();
        assert!(s.next_event().is_err());
    }

    #[test]
    fn the_limit_counts_only_what_was_not_handed_out() {
        // Two 20-byte elements and the start of a third: after the two are taken, the
        // limit applies to the third alone, not to everything read so far.
        let mut s = Scanner::new(48);
        s.push(b"<a>1234567890123</a><a>1234567890123</a><b>")
            .unwrap();
        assert_eq!(all(&mut s).len(), 2);
        let rest = format!("{}</b>", "7".repeat(36));
        s.push(rest.as_bytes()).unwrap();
        assert_eq!(all(&mut s), [Event::Element(format!("<b>{rest}"))]);
        s.release();
        s.push(b"<c>").unwrap();
        assert_eq!(s.push(&[b'x'; 46]), Err(ScanError::TooLarge));
    }

    #[test]
    fn escape_round_trips() {
        let raw = "a<b>&'\"";
        assert_eq!(unescape(&escape(raw)), raw);
    }
}
