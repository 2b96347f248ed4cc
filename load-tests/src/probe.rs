//! The text a generator puts in a message body or presence status so the receiver can tell
//! who sent it, which one it was, and when: `lg FROM SEQ SENT_US`, optionally padded with
//! ` xxx...` to a fixed body length.

use std::fmt::Write;

use crate::xml;

/// The marker's first field in `chat` and `presence`.
pub const TAG: &str = "lg";
/// Shortest padded body: room for the longest marker (`lg` and three numbers at their
/// widest is 45 bytes) and a separator.
pub const MIN_BODY: usize = 48;
/// Longest padded body (the scanner takes elements of up to 64 KiB).
pub const MAX_BODY: usize = 60_000;

/// `MAX_BODY` bytes of padding, built at compile time: padding a body is one copy.
static PAD_BYTES: [u8; MAX_BODY] = [b'x'; MAX_BODY];
static PAD: &str = match std::str::from_utf8(&PAD_BYTES) {
    Ok(pad) => pad,
    Err(_) => panic!("padding is ASCII"),
};

/// The marker for message `seq` of user `from`, sent `sent_us` µs after the run's epoch.
pub fn format(from: u32, seq: u32, sent_us: u64) -> String {
    format!("{TAG} {from} {seq} {sent_us}")
}

/// A marker tag of its own for one run: `prefix` and 8 random hex digits. A message that a
/// server stored offline in an earlier run and delivers at a login of this one carries
/// another tag, so it is not counted as this run's delivery (nor as a duplicate of one).
pub fn run_tag(prefix: char) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// `(from, seq, sent_us)` if `text` is a marker, padded or not.
pub fn parse(text: &str) -> Option<(u32, u32, u64)> {
    parse_tagged(text, TAG)
}

/// Append `x` to `out` until it is `len` bytes long (nothing if it is already).
pub fn pad(out: &mut String, len: usize) {
    let missing = len.saturating_sub(out.len()).min(PAD.len());
    out.push_str(&PAD[..missing]);
}

/// Append the marker `TAG FROM SEQ SENT_US` to `out`, then, if that is shorter than `len`
/// bytes, a space and `x` up to exactly `len` bytes.
pub fn push_marker(out: &mut String, tag: &str, from: u32, seq: u32, sent_us: u64, len: usize) {
    let start = out.len();
    let _ = write!(out, "{tag} {from} {seq} {sent_us}");
    let used = out.len() - start;
    if len > used {
        out.push(' ');
        let missing = (len - used - 1).min(PAD.len());
        out.push_str(&PAD[..missing]);
    }
}

/// `(from, seq, sent_us)` if `text` is a marker with first field `tag`, followed by nothing
/// or by one field of padding (`x` only).
pub fn parse_tagged(text: &str, tag: &str) -> Option<(u32, u32, u64)> {
    let mut fields = text.split_whitespace();
    if fields.next()? != tag {
        return None;
    }
    let from = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let sent_us = fields.next()?.parse().ok()?;
    let padding = fields.next().is_none_or(|p| p.bytes().all(|b| b == b'x'));
    (padding && fields.next().is_none()).then_some((from, seq, sent_us))
}

/// The `seq` of the [`ChatMessage`] that the bounce `el` answers, from the id it carries,
/// if it was sent with `id_prefix` and `tag`: a bounce of an earlier run's message (the
/// server may answer it after that run ended, to a session that now has the same full JID)
/// is not this run's.
pub fn bounced_seq(el: &str, id_prefix: char, tag: &str) -> Option<u32> {
    let id = xml::attr(el, "id")?;
    let (seq, run) = id.strip_prefix(id_prefix)?.split_once('.')?;
    (run == tag).then(|| seq.parse().ok()).flatten()
}

/// A chat message to `to` (a full JID) with id `ID_PREFIX SEQ . TAG` and a body of exactly
/// `body_len` bytes carrying the marker (`body_len` at least [`MIN_BODY`]).
pub struct ChatMessage<'a> {
    pub to: &'a str,
    pub id_prefix: char,
    pub tag: &'a str,
    pub from: u32,
    pub seq: u32,
    pub sent_us: u64,
    pub body_len: usize,
}

impl ChatMessage<'_> {
    /// The stanza, built in one allocation (the padding is a slice of a static string).
    pub fn stanza(&self) -> String {
        let to = xml::escape(self.to);
        let mut m = String::with_capacity(self.body_len + to.len() + 80);
        let _ = write!(
            m,
            "<message to='{to}' type='chat' id='{}{}.{}'><body>",
            self.id_prefix, self.seq, self.tag
        );
        push_marker(
            &mut m,
            self.tag,
            self.from,
            self.seq,
            self.sent_us,
            self.body_len,
        );
        m.push_str("</body></message>");
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(parse(&format(3, 17, 123456)), Some((3, 17, 123456)));
        assert_eq!(parse("lg 3 17"), None);
        assert_eq!(parse("lg 3 17 1 extra"), None);
        assert_eq!(parse("lg 3 17 1 xxx yyy"), None);
        assert_eq!(parse("lg 3 17 1 xxx xxx"), None);
        assert_eq!(parse("hello 3 17 1"), None);
        assert_eq!(parse("lg x 17 1"), None);
    }

    #[test]
    fn padded_markers_have_the_exact_length_and_parse() {
        for len in [0, 10, MIN_BODY, 100, 1000, MAX_BODY] {
            let mut body = String::new();
            push_marker(&mut body, TAG, u32::MAX, u32::MAX, u64::MAX, len);
            assert_eq!(body.len(), len.max(45), "len {len}");
            assert_eq!(
                parse(&body),
                Some((u32::MAX, u32::MAX, u64::MAX)),
                "len {len}"
            );
        }
        // One byte over the marker: just the separator.
        let mut body = String::new();
        push_marker(&mut body, TAG, 1, 2, 3, 9);
        assert_eq!(body, "lg 1 2 3 ");
        assert_eq!(parse(&body), Some((1, 2, 3)));
        let mut body = String::new();
        push_marker(&mut body, "m1f", 1, 2, 3, 14);
        assert_eq!(body, "m1f 1 2 3 xxxx");
        assert_eq!(parse(&body), None);
        assert_eq!(parse_tagged(&body, "m1f"), Some((1, 2, 3)));
        let mut s = String::from("ab");
        pad(&mut s, 5);
        assert_eq!(s, "abxxx");
        pad(&mut s, 2);
        assert_eq!(s, "abxxx");
    }

    #[test]
    fn chat_stanza() {
        let m = ChatMessage {
            to: "u'2@localhost/lg",
            id_prefix: 'm',
            tag: TAG,
            from: 1,
            seq: 7,
            sent_us: 99,
            body_len: MIN_BODY,
        }
        .stanza();
        let body = xml::text(xml::child(&m, "body").unwrap());
        assert_eq!(body.len(), MIN_BODY);
        assert_eq!(parse(&body), Some((1, 7, 99)));
        assert_eq!(xml::attr(&m, "to").as_deref(), Some("u'2@localhost/lg"));
        assert_eq!(xml::attr(&m, "id").as_deref(), Some("m7.lg"));
        let bounce = |id: &str| format!("<message type='error' id='{id}'/>");
        assert_eq!(bounced_seq(&bounce("m7.lg"), 'm', TAG), Some(7));
        assert_eq!(bounced_seq(&bounce("m7.c0000abcd"), 'm', TAG), None);
        assert_eq!(bounced_seq(&bounce("s7.lg"), 'm', TAG), None);
        assert_eq!(bounced_seq(&bounce("m7"), 'm', TAG), None);
        assert_eq!(bounced_seq(&bounce("mx.lg"), 'm', TAG), None);
        assert_eq!(bounced_seq("<message type='error'/>", 'm', TAG), None);
        assert_eq!(xml::attr(&m, "type").as_deref(), Some("chat"));
    }
}
