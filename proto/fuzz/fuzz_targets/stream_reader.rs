//! Arbitrary bytes, in arbitrary chunks, through `StreamReader`.
//!
//! Input layout: byte 0 selects options, byte 1 seeds the chunk sizes, the rest is the stream.
//! - bit 0x80 of byte 0: small limits (exercise the limit paths) instead of the defaults;
//! - bit 0x40: prepend a valid stream header (spend the time on stanzas, not on the header);
//! - bit 0x20: call `release_temporaries` after every chunk.
//!
//! Checked: no panic; chunked reading yields the same events (and the same kind of error) as
//! reading everything at once; every element is within the limits, and survives
//! `to_xml_string` + `Element::parse` and `write_to` + `StreamReader` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::element::{Element, Node};
use proto::stream::{Limits, ReadError, StreamEvent, StreamReader};

const NS: &str = "jabber:client";
const HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

const HEADER_WITH_DB: &[u8] = b"<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>";

type Events = Vec<Result<StreamEvent, ReadError>>;

fn drain(r: &mut StreamReader, out: &mut Events) -> bool {
    loop {
        match r.next_event() {
            Ok(Some(ev)) => out.push(Ok(ev)),
            Ok(None) => return true,
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        }
    }
}

fn read(limits: Limits, chunks: &[&[u8]], release: bool) -> Events {
    let mut r = StreamReader::new(limits, NS);
    let mut out = Vec::new();
    for c in chunks {
        r.feed(c);
        if !drain(&mut r, &mut out) {
            break;
        }
        if release {
            r.release_temporaries();
        }
    }
    out
}

/// Whether chunked reading gave the same result as reading everything at once.
///
/// rxml checks the UTF-8 of pending text when it flushes it, which it does at chunk boundaries
/// for stream-level text (delivered eagerly, for keepalives). So for invalid input the error may
/// surface earlier when chunked, while the other run still waits for the end of the text; a
/// keepalive may or may not come out just before it; and input that is both badly encoded and
/// malformed may be reported as either. Anything else must match exactly (messages aside).
fn same(a: &Events, b: &Events) -> bool {
    use ReadError::{NotWellFormed, UnsupportedEncoding};
    let data_error = |e: &ReadError| matches!(e, NotWellFormed(_) | UnsupportedEncoding);
    let (a, a_err) = split_error(a);
    let (b, b_err) = split_error(b);
    if a != b {
        return false;
    }
    match (a_err, b_err) {
        (None, None) => true,
        (Some(x), None) | (None, Some(x)) => data_error(x),
        (Some(x), Some(y)) => {
            (data_error(x) && data_error(y))
                || std::mem::discriminant(x) == std::mem::discriminant(y)
        }
    }
}

/// The events before the error (without keepalives right before it or at the end), and the error.
fn split_error(events: &Events) -> (Vec<&StreamEvent>, Option<&ReadError>) {
    let mut ok: Vec<&StreamEvent> = Vec::new();
    let mut err = None;
    for e in events {
        match e {
            Ok(ev) => ok.push(ev),
            Err(e) => err = Some(e),
        }
    }
    while ok.last() == Some(&&StreamEvent::Keepalive) {
        ok.pop();
    }
    (ok, err)
}

fn depth(el: &Element) -> usize {
    1 + el
        .children
        .iter()
        .map(|n| match n {
            Node::Element(c) => depth(c),
            Node::Text(_) => 0,
        })
        .max()
        .unwrap_or(0)
}

fn check_element(el: &Element, wire: usize, limits: &Limits) {
    assert!(
        wire <= limits.max_stanza_bytes,
        "wire size {wire} over the limit"
    );
    assert!(depth(el) <= limits.max_depth, "depth over the limit");

    let standalone = el.to_xml_string();
    match Element::parse(&standalone) {
        Ok(back) => assert_eq!(&back, el, "to_xml_string round trip: {standalone}"),
        Err(e) => panic!("to_xml_string output does not parse: {e}: {standalone}"),
    }

    // `write_to` writes dialback elements as `db:NAME`, relying on the stream header to bind
    // `db` (as the s2s header does), so the header read back here binds it too.
    let mut doc = HEADER_WITH_DB.to_vec();
    el.write_to(&mut doc, NS);
    // Serialising adds namespace declarations and escapes, so allow for that (but not for longer
    // tokens: limits apply to decoded values, which do not change).
    let generous = Limits {
        max_stanza_bytes: usize::MAX,
        max_attributes: 2 * limits.max_attributes + 1,
        ..*limits
    };
    let events = read(generous, &[&doc], false);
    match events.as_slice() {
        [Ok(StreamEvent::Header(_)), Ok(StreamEvent::Element(back, _))] => {
            assert_eq!(
                back,
                el,
                "write_to round trip: {}",
                String::from_utf8_lossy(&doc)
            )
        }
        other => panic!(
            "write_to output does not read back: {other:?}: {}",
            String::from_utf8_lossy(&doc)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, rest @ ..] = data else {
        return;
    };
    let limits = if flags & 0x80 != 0 {
        Limits {
            max_stanza_bytes: 2048,
            max_depth: 8,
            max_attributes: 8,
            max_token_bytes: 128,
            max_elements: 4096,
            max_namespace_bytes: 64,
        }
    } else {
        Limits::default()
    };
    let input: Vec<u8> = if flags & 0x40 != 0 {
        [HEADER, rest].concat()
    } else {
        rest.to_vec()
    };

    // Chunk sizes 1..=32 from a small xorshift generator seeded by `seed`.
    let mut state = u32::from(*seed) | 0x100;
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < input.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 32 + 1) as usize;
        let end = (at + n).min(input.len());
        chunks.push(&input[at..end]);
        at = end;
    }

    let chunked = read(limits, &chunks, flags & 0x20 != 0);
    let whole = read(limits, &[&input], false);
    assert!(
        same(&chunked, &whole),
        "chunking changed the events:\n{chunked:?}\n{whole:?}"
    );

    for ev in &whole {
        if let Ok(StreamEvent::Element(el, wire)) = ev {
            check_element(el, *wire, &limits);
        }
    }
});
