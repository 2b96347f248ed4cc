//! StreamReader: chunking invariance, limits, restricted XML, malformed input, namespaces.

use proto::element::{Attr, Element, Node};
use proto::error::StreamErrorCondition;
use proto::ns;
use proto::stream::{
    header_bytes, Limits, ReadError, StreamEvent, StreamHeader, StreamReader, CLOSE,
};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0' xml:lang='en'>";

/// A recorded client session: nonzas, stanzas with nested children, namespaced attributes,
/// xml:lang, entity and character references, CDATA, keepalive whitespace, close.
const SESSION_BODY: &[&str] = &[
    "\n",
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    " \n ",
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldAByMG0zMG15cjBtMzA=</auth>",
    "<iq type='set' id='bind_1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony</resource></bind></iq>",
    "\r\n\t",
    "<message to='romeo@example.net' from='juliet@example.com/balcony' type='chat' id='m1' xml:lang='en'>\
     <body>Wherefore art thou &amp; &lt;Romeo&gt; &#x41;&#65;&apos;&quot; \u{2019}\u{1F600}</body>\
     <thread>e0ffe42b</thread><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    "<presence><show>away</show><status xml:lang='fr'>  <![CDATA[<b>absent</b> & co]]> ici</status>\
     <c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://n.example' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
    "<iq type='get' id='x'><query xmlns='jabber:iq:private' xmlns:p='urn:example:p'>\
     <p:data p:attr='1' attr='2'><p:x/><y xmlns=''/></p:data></query></iq>",
    "  ",
    "</stream:stream>",
];

fn session() -> Vec<u8> {
    let mut v = HEADER.as_bytes().to_vec();
    for part in SESSION_BODY {
        v.extend_from_slice(part.as_bytes());
    }
    v
}

fn reader() -> StreamReader {
    StreamReader::new(Limits::default(), ns::CLIENT)
}

/// Drain all available events; stop at the first error (which is pushed as `Err`).
fn drain(r: &mut StreamReader, out: &mut Vec<Result<StreamEvent, ReadError>>) {
    loop {
        match r.next_event() {
            Ok(Some(ev)) => out.push(Ok(ev)),
            Ok(None) => return,
            Err(e) => {
                out.push(Err(e));
                return;
            }
        }
    }
}

/// Feed `chunks` one by one, draining after each; return everything seen up to the first error.
fn run_chunks<'a>(
    mut r: StreamReader,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<StreamEvent, ReadError>> {
    let mut out = Vec::new();
    for c in chunks {
        r.feed(c);
        drain(&mut r, &mut out);
        if matches!(out.last(), Some(Err(_))) {
            break;
        }
    }
    out
}

fn run(input: &[u8]) -> Vec<Result<StreamEvent, ReadError>> {
    run_chunks(reader(), [input])
}

fn run_with(limits: Limits, input: &[u8]) -> Vec<Result<StreamEvent, ReadError>> {
    run_chunks(StreamReader::new(limits, ns::CLIENT), [input])
}

/// The first error, or panic.
fn error_of(events: &[Result<StreamEvent, ReadError>]) -> ReadError {
    match events.last() {
        Some(Err(e)) => e.clone(),
        other => panic!("expected an error, got {other:?} after {events:?}"),
    }
}

fn elements(events: &[Result<StreamEvent, ReadError>]) -> Vec<Element> {
    events
        .iter()
        .filter_map(|e| match e {
            Ok(StreamEvent::Element(el, _)) => Some(el.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn session_events() {
    let events = run(&session());
    let ok: Vec<StreamEvent> = events.into_iter().map(|e| e.expect("no error")).collect();
    assert_eq!(
        ok[0],
        StreamEvent::Header(StreamHeader {
            to: Some("example.com".into()),
            from: None,
            id: None,
            version: Some("1.0".into()),
            lang: Some("en".into()),
            default_ns: Some(ns::CLIENT.into()),
        })
    );
    let kinds: Vec<&str> = ok
        .iter()
        .map(|e| match e {
            StreamEvent::Header(_) => "H",
            StreamEvent::Element(..) => "E",
            StreamEvent::Keepalive => "K",
            StreamEvent::Close => "C",
        })
        .collect();
    assert_eq!(kinds.join(""), "HKEKEEKEEEKC");

    // Wire sizes are exactly the bytes of each top-level element.
    let sizes: Vec<usize> = ok
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Element(_, n) => Some(*n),
            _ => None,
        })
        .collect();
    let expected: Vec<usize> = SESSION_BODY
        .iter()
        .filter(|s| s.starts_with('<') && !s.starts_with("</"))
        .map(|s| s.len())
        .collect();
    assert_eq!(sizes, expected);

    let els = elements(&ok.iter().cloned().map(Ok).collect::<Vec<_>>());
    assert!(els[0].is("starttls", ns::TLS));
    assert_eq!(els[1].text(), "AGp1bGlldAByMG0zMG15cjBtMzA=");
    assert_eq!(els[1].attr("mechanism"), Some("PLAIN"));
    let bind = els[2].get_child("bind", ns::BIND).expect("bind");
    assert_eq!(
        bind.get_child("resource", ns::BIND)
            .map(Element::text)
            .as_deref(),
        Some("balcony")
    );

    let msg = &els[3];
    assert!(msg.is("message", ns::CLIENT));
    assert_eq!(msg.attr("to"), Some("romeo@example.net"));
    assert_eq!(msg.lang(), Some("en"));
    assert_eq!(
        msg.get_child("body", ns::CLIENT)
            .map(Element::text)
            .as_deref(),
        Some("Wherefore art thou & <Romeo> AA'\" \u{2019}\u{1F600}")
    );
    assert!(msg
        .get_child("active", "http://jabber.org/protocol/chatstates")
        .is_some());

    let status = els[4].get_child("status", ns::CLIENT).expect("status");
    assert_eq!(status.text(), "  <b>absent</b> & co ici");
    assert_eq!(
        status.children.len(),
        1,
        "adjacent text is merged into one node"
    );
    assert_eq!(status.lang(), Some("fr"));

    let data = els[5]
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("data", "urn:example:p"));
    let data = data.expect("p:data");
    assert_eq!(
        data.attrs,
        vec![
            Attr {
                ns: Some("urn:example:p".into()),
                name: "attr".into(),
                value: "1".into()
            },
            Attr {
                ns: None,
                name: "attr".into(),
                value: "2".into()
            },
        ]
    );
    assert!(data.get_child("x", "urn:example:p").is_some());
    assert!(data.get_child("y", "").is_some());
}

#[test]
fn session_split_at_every_byte_position() {
    let input = session();
    let whole = run(&input);
    assert!(whole.iter().all(Result::is_ok));
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(run_chunks(reader(), [a, b]), whole, "split at {i}");
    }
    // One byte at a time, and every pair of split positions in a shorter prefix.
    assert_eq!(run_chunks(reader(), input.chunks(1)), whole);
    for size in [2, 3, 7, 64] {
        assert_eq!(
            run_chunks(reader(), input.chunks(size)),
            whole,
            "chunks of {size}"
        );
    }
}

#[test]
fn session_survives_release_temporaries_between_chunks() {
    let input = session();
    let whole = run(&input);
    let mut r = reader();
    let mut out = Vec::new();
    for c in input.chunks(5) {
        r.feed(c);
        drain(&mut r, &mut out);
        r.release_temporaries();
    }
    assert_eq!(out, whole);
}

#[test]
fn idle_reader_is_small() {
    let mut r = reader();
    r.feed(HEADER.as_bytes());
    r.feed(b"<message to='a@b'><body>hi</body></message>");
    let mut out = Vec::new();
    drain(&mut r, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(r.buffered(), 0);
    r.release_temporaries();
    let size = std::mem::size_of::<StreamReader>();
    assert!(size <= 640, "StreamReader is {size} bytes");
}

#[test]
fn keepalive_once_per_whitespace_run() {
    let mut r = reader();
    let mut out = Vec::new();
    r.feed(HEADER.as_bytes());
    drain(&mut r, &mut out);
    for ws in [" ", "\n", "\t", " "] {
        r.feed(ws.as_bytes());
        drain(&mut r, &mut out);
    }
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[1],
        Ok(StreamEvent::Keepalive),
        "delivered as soon as it arrives"
    );
    r.feed(b"<presence/> ");
    drain(&mut r, &mut out);
    assert!(matches!(out[2], Ok(StreamEvent::Element(..))));
    assert_eq!(out[3], Ok(StreamEvent::Keepalive));
}

#[test]
fn nothing_after_close_and_errors_are_sticky() {
    let mut r = reader();
    r.feed(format!("{HEADER}</stream:stream><junk").as_bytes());
    let mut out = Vec::new();
    drain(&mut r, &mut out);
    assert_eq!(out.last(), Some(&Ok(StreamEvent::Close)));
    assert_eq!(r.next_event(), Ok(None));

    let mut r = reader();
    r.feed(format!("{HEADER}<a></b>").as_bytes());
    let first = r.next_event().and_then(|_| r.next_event());
    assert!(
        matches!(first, Err(ReadError::NotWellFormed(_))),
        "{first:?}"
    );
    r.feed(b"<presence/>");
    assert_eq!(r.next_event(), first);
}

#[test]
fn pipelined_bytes_after_starttls_stay_buffered() {
    let mut r = reader();
    r.feed(format!("{HEADER}<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><iq/>").as_bytes());
    assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Header(_)))));
    match r.next_event() {
        Ok(Some(StreamEvent::Element(el, _))) => assert!(el.is("starttls", ns::TLS)),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.buffered(), "<iq/>".len());
}

// ---- limits ----

fn policy(events: &[Result<StreamEvent, ReadError>]) {
    let e = error_of(events);
    assert!(matches!(e, ReadError::PolicyViolation(_)), "{e:?}");
    assert_eq!(
        e.to_stream_error().condition,
        StreamErrorCondition::PolicyViolation
    );
}

#[test]
fn limit_stanza_bytes_exact_boundary() {
    let stanza = "<message to='a@b'><body>0123456789</body><x xmlns='urn:x' a='1'/></message>";
    let input = format!("{HEADER}{stanza}");
    let limits = |max| Limits {
        max_stanza_bytes: max,
        ..Limits::default()
    };
    let ok = run_with(limits(stanza.len()), input.as_bytes());
    assert!(
        matches!(ok.last(), Some(Ok(StreamEvent::Element(_, n))) if *n == stanza.len()),
        "{ok:?}"
    );
    policy(&run_with(limits(stanza.len() - 1), input.as_bytes()));
}

#[test]
fn limit_stanza_bytes_refuses_10mb_body_early() {
    let limits = Limits::default();
    let mut r = StreamReader::new(limits, ns::CLIENT);
    let mut out = Vec::new();
    r.feed(HEADER.as_bytes());
    r.feed(b"<message to='a@b'><body>");
    drain(&mut r, &mut out);
    let chunk = vec![b'a'; 4096];
    let mut fed = 0usize;
    while fed < 10 * 1024 * 1024 {
        r.feed(&chunk);
        fed += chunk.len();
        drain(&mut r, &mut out);
        if matches!(out.last(), Some(Err(_))) {
            break;
        }
    }
    policy(&out);
    // Refused within one token of the limit, never holding more than that.
    assert!(
        fed <= limits.max_stanza_bytes + limits.max_token_bytes + chunk.len(),
        "fed {fed}"
    );
    assert!(r.buffered() <= chunk.len());
}

#[test]
fn limit_stanza_bytes_counts_whitespace_inside_tags() {
    let limits = Limits {
        max_stanza_bytes: 1000,
        ..Limits::default()
    };
    let input = format!("{HEADER}<message{} to='x'/>", " ".repeat(2000));
    policy(&run_with(limits, input.as_bytes()));
}

#[test]
fn limit_depth() {
    let limits = Limits {
        max_depth: 4,
        ..Limits::default()
    };
    let ok = format!("{HEADER}<a><b><c><d/></c></b></a>");
    assert!(run_with(limits, ok.as_bytes()).iter().all(Result::is_ok));
    let deep = format!("{HEADER}<a><b><c><d><e/></d></c></b></a>");
    policy(&run_with(limits, deep.as_bytes()));
    // An unbounded nesting attack is cut off at the limit.
    let attack = format!("{HEADER}{}", "<a>".repeat(100_000));
    policy(&run_with(Limits::default(), attack.as_bytes()));
}

#[test]
fn limit_attributes() {
    // The header has 5 attributes (namespace declarations count).
    let limits = Limits {
        max_attributes: 5,
        ..Limits::default()
    };
    let ok = format!("{HEADER}<a v='0' w='1' x='2' y='3' z='4'/>");
    assert!(run_with(limits, ok.as_bytes()).iter().all(Result::is_ok));
    policy(&run_with(
        limits,
        format!("{HEADER}<a u='' v='0' w='1' x='2' y='3' z='4'/>").as_bytes(),
    ));
    policy(&run_with(
        limits,
        format!("{HEADER}<a v='0' w='1' x='2' y='3' z='4' xmlns='urn:a'/>").as_bytes(),
    ));
    // And the header is limited as well.
    let limits = Limits {
        max_attributes: 4,
        ..Limits::default()
    };
    policy(&run_with(limits, HEADER.as_bytes()));
}

#[test]
fn limit_elements_per_stanza() {
    let limits = Limits {
        max_elements: 10,
        ..Limits::default()
    };
    let nine = "<b/>".repeat(9);
    let events = run_with(
        limits,
        format!("{HEADER}<a xmlns='urn:a'>{nine}</a>").as_bytes(),
    );
    assert_eq!(elements(&events).len(), 1);
    // The count restarts with each stanza.
    let two = format!("<a xmlns='urn:a'>{nine}</a>").repeat(2);
    let events = run_with(limits, format!("{HEADER}{two}").as_bytes());
    assert_eq!(elements(&events).len(), 2);
    let ten = "<b/>".repeat(10);
    policy(&run_with(
        limits,
        format!("{HEADER}<a xmlns='urn:a'>{ten}</a>").as_bytes(),
    ));
}

#[test]
fn limit_token_length() {
    let limits = Limits {
        max_token_bytes: 64,
        ..Limits::default()
    };
    let long = "v".repeat(65);
    policy(&run_with(
        limits,
        format!("{HEADER}<a x='{long}'/>").as_bytes(),
    ));
    policy(&run_with(limits, format!("{HEADER}<{long}/>").as_bytes()));
    policy(&run_with(
        limits,
        format!("{HEADER}<a {long}='1'/>").as_bytes(),
    ));
    // Text is not a single token: it is split, and the element still comes out whole.
    let text = "t".repeat(1000);
    let events = run_with(limits, format!("{HEADER}<a>{text}</a>").as_bytes());
    assert_eq!(elements(&events)[0].children, vec![Node::Text(text)]);
}

// ---- restricted XML ----

fn restricted(input: &str) {
    let events = run(input.as_bytes());
    let e = error_of(&events);
    assert!(matches!(e, ReadError::RestrictedXml(_)), "{input:?}: {e:?}");
    assert_eq!(
        e.to_stream_error().condition,
        StreamErrorCondition::RestrictedXml
    );
}

#[test]
fn restricted_xml() {
    restricted("<!DOCTYPE stream>");
    restricted("<?xml version='1.0'?><!DOCTYPE stream:stream SYSTEM 'http://evil.example/x.dtd'>");
    restricted(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">\
         <!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">]>\
         <stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>&lol2;",
    );
    restricted(&format!(
        "{HEADER}<!ENTITY xxe SYSTEM 'file:///etc/passwd'>"
    ));
    restricted(&format!("{HEADER}<message><body>&xxe;</body></message>"));
    restricted(&format!("{HEADER}<message><body>&lol2;</body></message>"));
    restricted(&format!("{HEADER}<?evil pi?>"));
    restricted(&format!("{HEADER}<message><?evil pi?></message>"));
    restricted(&format!("{HEADER}<?xml version='1.0'?>"));
    restricted("<?xml-stylesheet href='x'?>");
    restricted(&format!("{HEADER}<!-- comment -->"));
    restricted(&format!("{HEADER}<message><!-- comment --></message>"));
    restricted("<!-- comment --><stream:stream/>");
}

// ---- malformed ----

fn malformed(input: &[u8]) {
    let events = run(input);
    let e = error_of(&events);
    assert!(
        matches!(e, ReadError::NotWellFormed(_)),
        "{:?}: {e:?}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        e.to_stream_error().condition,
        StreamErrorCondition::NotWellFormed
    );
}

#[test]
fn malformed_xml() {
    for s in [
        "<a></b>",
        "<a><b></a>",
        "<a b=1/>",
        "<a b='1' b='2'/>",
        "<a xmlns:p='urn:p' xmlns:q='urn:p' p:b='1' q:b='2'/>",
        "<a xmlns='urn:a' xmlns='urn:b'/>",
        "<p:a/>",
        "<a p:b='1'/>",
        "<xmlns:a/>",
        "<a xmlns:p='http://www.w3.org/2000/xmlns/'/>",
        "<a>&#0;</a>",
        "<a>&#xD800;</a>",
        "<a>\u{1}</a>",
        "<>",
        "< a/>",
        "<a/ >",
        "<a b='<'/>",
        "<a><![CDATX[x]]></a>",
        "hello",
        "<a>&amp</a>",
        // Found by fuzzing: an element in the XML namespace cannot be written back.
        "<xml:a xmlns='urn:a'/>",
        "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
    ] {
        malformed(format!("{HEADER}{s}").as_bytes());
    }
    malformed(b"junk");
    malformed(b"<?xml version='1.0'?>junk");
}

#[test]
fn unsupported_encoding() {
    for input in [
        b"\xfe\xff\x00<\x00s".to_vec(),
        b"\xff\xfe<\x00s\x00".to_vec(),
        b"<\x00s\x00".to_vec(),
        b"<?xml version='1.0' encoding='ISO-8859-1'?>".to_vec(),
        [HEADER.as_bytes(), b"<a>\xe9t\xe9</a>"].concat(),
        [HEADER.as_bytes(), b"<a b='\xc3\x28'/>"].concat(),
    ] {
        let e = error_of(&run(&input));
        assert_eq!(e, ReadError::UnsupportedEncoding, "{input:?}");
        assert_eq!(
            e.to_stream_error().condition,
            StreamErrorCondition::UnsupportedEncoding
        );
    }
}

// ---- namespaces ----

fn invalid_namespace(reader: StreamReader, input: &str) {
    let events = run_chunks(reader, [input.as_bytes()]);
    let e = error_of(&events);
    assert_eq!(e, ReadError::InvalidNamespace, "{input}");
    assert_eq!(
        e.to_stream_error().condition,
        StreamErrorCondition::InvalidNamespace
    );
}

#[test]
fn wrong_stream_namespace() {
    invalid_namespace(
        reader(),
        "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>",
    );
    invalid_namespace(reader(), "<stream xmlns='jabber:client'>");
    invalid_namespace(
        reader(),
        "<stream:features xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
}

#[test]
fn wrong_default_namespace() {
    let header = |default: &str| {
        format!("<stream:stream {default} xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    };
    invalid_namespace(reader(), &header("xmlns='jabber:server'"));
    invalid_namespace(reader(), &header(""));
    invalid_namespace(reader(), &header("xmlns='jabber:clientx'"));
    invalid_namespace(
        StreamReader::new(Limits::default(), ns::SERVER),
        &header("xmlns='jabber:client'"),
    );
    // A jabber:server reader accepts jabber:server, and stanzas land in that namespace.
    let events = run_chunks(
        StreamReader::new(Limits::default(), ns::SERVER),
        [header("xmlns='jabber:server'").as_bytes(), b"<message/>"],
    );
    assert!(elements(&events)[0].is("message", ns::SERVER));
}

#[test]
fn header_attributes_and_self_closing_header() {
    let events = run(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
        from='juliet@im.example.com' to='im.example.com' id='abc' version='1.0' xml:lang='de'/>",
    );
    assert_eq!(
        events,
        vec![
            Ok(StreamEvent::Header(StreamHeader {
                to: Some("im.example.com".into()),
                from: Some("juliet@im.example.com".into()),
                id: Some("abc".into()),
                version: Some("1.0".into()),
                lang: Some("de".into()),
                default_ns: Some("jabber:client".into()),
            })),
            Ok(StreamEvent::Close),
        ]
    );
}

#[test]
fn header_bytes_format_and_escaping() {
    let h = header_bytes(
        ns::CLIENT,
        "example.com",
        Some("juliet@example.com"),
        "a'b<c",
        "en",
    );
    assert_eq!(
        String::from_utf8(h.clone()).unwrap(),
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='a&apos;b&lt;c' from='example.com' \
         to='juliet@example.com' version='1.0' xml:lang='en'>"
    );
    let h2 = header_bytes(ns::CLIENT, "example.com", None, "id", "en");
    assert!(!String::from_utf8_lossy(&h2).contains("to="));
    // Our own header parses as a valid stream header.
    let events = run_chunks(
        StreamReader::new(Limits::default(), ns::CLIENT),
        [&h[..], CLOSE],
    );
    match &events[0] {
        Ok(StreamEvent::Header(hd)) => {
            assert_eq!(hd.id.as_deref(), Some("a'b<c"));
            assert_eq!(hd.to.as_deref(), Some("juliet@example.com"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events[1], Ok(StreamEvent::Close));
}
