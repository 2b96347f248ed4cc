//! Element: builders, accessors, serialisation (namespaces, prefixes, escaping), round trips.

use proto::element::{Attr, Element, Node};
use proto::ns;
use proto::stream::ReadError;

fn write(el: &Element, parent: &str) -> String {
    let mut out = Vec::new();
    el.write_to(&mut out, parent);
    String::from_utf8(out).expect("utf-8")
}

fn round_trip(el: &Element) {
    let s = el.to_xml_string();
    assert_eq!(
        &Element::parse(&s).unwrap_or_else(|e| panic!("{s}: {e}")),
        el,
        "{s}"
    );
}

#[test]
fn builders_and_accessors() {
    let mut el = Element::new("message", ns::CLIENT)
        .with_attr("to", "a@b")
        .with_attr("to", "c@d")
        .with_attr("type", "chat")
        .with_child(
            Element::new("body", ns::CLIENT)
                .with_text("hello ")
                .with_text("world"),
        )
        .with_child(Element::new(
            "active",
            "http://jabber.org/protocol/chatstates",
        ))
        .with_text("tail");
    assert!(el.is("message", ns::CLIENT));
    assert!(!el.is("message", ns::SERVER));
    assert_eq!(el.attr("to"), Some("c@d"));
    assert_eq!(el.attrs.len(), 2);
    let body = el.get_child("body", ns::CLIENT).expect("body");
    assert_eq!(body.text(), "hello world");
    assert_eq!(body.children.len(), 1, "adjacent text merged");
    assert_eq!(el.children().count(), 2);
    assert_eq!(el.text(), "tail");
    assert!(el.get_child("body", "urn:other").is_none());
    assert_eq!(el.lang(), None);
    el.set_attr_ns(Some(ns::XML), "lang", "en");
    assert_eq!(el.lang(), Some("en"));
    assert_eq!(
        el.attr("lang"),
        None,
        "xml:lang is not the unnamespaced lang"
    );
    el.set_attr("type", "normal");
    assert_eq!(el.attr("type"), Some("normal"));
    assert_eq!(el.remove_attr("type"), Some("normal".into()));
    assert_eq!(el.remove_attr("type"), None);
    assert_eq!(el.remove_attr("lang"), None);
    assert_eq!(el.attr_ns(Some(ns::XML), "lang"), Some("en"));
}

#[test]
fn write_omits_redundant_xmlns() {
    let el = Element::new("message", ns::CLIENT)
        .with_attr("to", "a@b")
        .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
        .with_child(Element::new("x", "urn:x").with_child(Element::new("y", "urn:x")))
        .with_child(Element::new("empty", ""));
    assert_eq!(
        write(&el, ns::CLIENT),
        "<message to='a@b'><body>hi</body><x xmlns='urn:x'><y/></x><empty xmlns=''/></message>"
    );
    assert_eq!(
        write(&el, ns::SERVER),
        "<message xmlns='jabber:client' to='a@b'><body>hi</body><x xmlns='urn:x'><y/></x><empty xmlns=''/></message>"
    );
    assert!(el
        .to_xml_string()
        .starts_with("<message xmlns='jabber:client' "));
    assert_eq!(Element::new("a", "").to_xml_string(), "<a/>");
    round_trip(&el);
}

#[test]
fn write_namespaced_attributes() {
    let mut el = Element::new("data", "urn:d");
    el.set_attr_ns(Some(ns::XML), "lang", "fr");
    el.set_attr_ns(Some("urn:p"), "a", "1");
    el.set_attr("a", "2");
    el.set_attr_ns(Some("urn:q"), "b", "3");
    el.set_attr_ns(Some("urn:p"), "c", "4");
    let s = write(&el, "urn:d");
    assert_eq!(
        s,
        "<data xml:lang='fr' xmlns:ns1='urn:p' ns1:a='1' a='2' xmlns:ns3='urn:q' ns3:b='3' ns1:c='4'/>"
    );
    round_trip(&el);
    let parsed = Element::parse(&s).expect("parse");
    assert_eq!(parsed.attr_ns(Some("urn:p"), "c"), Some("4"));
    assert_eq!(parsed.lang(), Some("fr"));
}

#[test]
fn escaping_text_and_attributes() {
    let nasty = "a<b&c>d'e\"f]]>g\r\n\th";
    let el = Element::new("x", "urn:x")
        .with_attr("v", nasty)
        .with_text(nasty);
    let s = el.to_xml_string();
    assert_eq!(
        s,
        "<x xmlns='urn:x' v='a&lt;b&amp;c&gt;d&apos;e&quot;f]]&gt;g&#13;&#10;&#9;h'>\
         a&lt;b&amp;c&gt;d'e\"f]]&gt;g&#13;\n\th</x>"
    );
    round_trip(&el);
    let mut out = Vec::new();
    Element::new("n", "urn:a'b").write_to(&mut out, "");
    assert_eq!(out, b"<n xmlns='urn:a&apos;b'/>");
}

/// Escaping looks at 32 bytes at a time first: a special character anywhere (first, last, at
/// either side of a 32-byte boundary) in text longer than that is still escaped, and text with
/// none is copied as it is.
#[test]
fn escaping_finds_a_special_character_anywhere_in_long_text() {
    for len in [31, 32, 33, 64, 100] {
        let plain = "x".repeat(len);
        let el = Element::new("x", "urn:x")
            .with_attr("v", &plain)
            .with_text(&plain);
        assert_eq!(
            el.to_xml_string(),
            format!("<x xmlns='urn:x' v='{plain}'>{plain}</x>")
        );
        for at in [0, 30, 31, 32, 33, len - 1] {
            if at >= len {
                continue;
            }
            for (c, text, attr) in [
                ('<', "&lt;", "&lt;"),
                ('&', "&amp;", "&amp;"),
                ('\'', "'", "&apos;"),
                ('\n', "\n", "&#10;"),
            ] {
                let mut s = plain.clone();
                s.replace_range(at..at + 1, &c.to_string());
                let el = Element::new("x", "urn:x").with_attr("v", &s).with_text(&s);
                let (t, a) = (s.replace(c, text), s.replace(c, attr));
                assert_eq!(
                    el.to_xml_string(),
                    format!("<x xmlns='urn:x' v='{a}'>{t}</x>")
                );
                round_trip(&el);
            }
        }
    }
}

#[test]
fn parse_round_trips() {
    for doc in [
        "<message xmlns='jabber:client' to='juliet@example.com' type='chat' xml:lang='en'>\
         <body>Wherefore &amp; &lt;why&gt; &#x41;</body><thread>t</thread>\
         <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<iq xmlns='jabber:client' type='get' id='1'><query xmlns='jabber:iq:roster' ver=''/></iq>",
        "<a xmlns='urn:a' xmlns:b='urn:b'><b:c b:d='1' d='2'><e xmlns=''>text<![CDATA[<cdata>]]>more</e></b:c></a>",
        "<?xml version='1.0' encoding='utf-8'?>\n<root>  mixed <i>content</i> here  </root>\n",
        "<deep><a><b><c><d><e><f>x</f></e></d></c></b></a></deep>",
        "<u xmlns='urn:\u{e9}' attr='\u{1F600}'>\u{4e2d}\u{6587}</u>",
    ] {
        let el = Element::parse(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        round_trip(&el);
        // Serialising a parsed element into a parent of the same namespace also parses back.
        let s = write(&el, &el.ns);
        let wrapped = format!("<w xmlns='{}'>{s}</w>", el.ns);
        let w = Element::parse(&wrapped).expect("wrapped");
        assert_eq!(w.children, vec![Node::Element(el.clone())]);
    }
    let el = Element::parse("<a xmlns:p='urn:p' p:x='1'/>").expect("parse");
    assert_eq!(
        el.attrs,
        vec![Attr {
            ns: Some("urn:p".into()),
            name: "x".into(),
            value: "1".into()
        }]
    );
}

#[test]
fn parse_errors() {
    assert!(matches!(
        Element::parse(""),
        Err(ReadError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse("<a>"),
        Err(ReadError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse("<a/><b/>"),
        Err(ReadError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse("<a></b>"),
        Err(ReadError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse("text"),
        Err(ReadError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse("<p:a/>"),
        Err(ReadError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse("<!DOCTYPE a><a/>"),
        Err(ReadError::RestrictedXml(_))
    ));
    assert!(matches!(
        Element::parse("<?xml-stylesheet x?><a/>"),
        Err(ReadError::RestrictedXml(_))
    ));
    assert!(matches!(
        Element::parse("<a>&foo;</a>"),
        Err(ReadError::RestrictedXml(_))
    ));
    assert!(matches!(
        Element::parse("<a><!--c--></a>"),
        Err(ReadError::RestrictedXml(_))
    ));
}

#[test]
fn display_is_standalone_xml() {
    let el = Element::new("ping", ns::PING);
    assert_eq!(el.to_string(), "<ping xmlns='urn:xmpp:ping'/>");
}

#[test]
fn stream_namespace_elements_use_the_stream_prefix() {
    let features = Element::new("features", ns::STREAM)
        .with_child(Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)))
        .with_child(Element::new("ver", "urn:xmpp:features:rosterver"));
    assert_eq!(
        write(&features, ns::CLIENT),
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
         <ver xmlns='urn:xmpp:features:rosterver'/></stream:features>"
    );
    // Standalone, the namespace is declared instead.
    round_trip(&features);
}

#[test]
fn remove_children_drops_matching_elements_and_merges_text() {
    let mut el = Element::parse(
        "<message xmlns='jabber:client'>a<x xmlns='urn:x'/>b<y xmlns='urn:x'/><x xmlns='urn:x'/>c<body>hi</body></message>",
    )
    .expect("parses");
    assert_eq!(el.remove_children(|c| c.is("x", "urn:x")), 2);
    assert_eq!(
        el.children,
        vec![
            Node::Text("ab".into()),
            Node::Element(Element::new("y", "urn:x")),
            Node::Text("c".into()),
            Node::Element(Element::new("body", ns::CLIENT).with_text("hi")),
        ]
    );
    assert_eq!(el.remove_children(|_| false), 0);
    assert_eq!(el.remove_children(|_| true), 2);
    assert_eq!(el.children, vec![Node::Text("abc".into())]);
}
