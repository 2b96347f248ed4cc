//! Entity capabilities (XEP-0115 v1.6): the `<c/>` a client puts in its presence, and the
//! verification string (§5.1) that proves a disco#info answer is the one the `ver` hash
//! stands for, so that one answer can be cached for every client that announces the same
//! hash (§5.4 "Processing Method").

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::element::Element;
use crate::ns;

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

/// A presence's `<c xmlns='http://jabber.org/protocol/caps' hash= node= ver=/>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caps {
    pub hash: String,
    pub node: String,
    pub ver: String,
}

impl Caps {
    /// The caps of a presence, if it carries a well-formed `<c/>` (§4: `hash`, `node` and
    /// `ver` required; the legacy format without `hash` is not cacheable and is ignored).
    pub fn of_presence(presence: &Element) -> Option<Caps> {
        let c = presence.get_child("c", NS_CAPS)?;
        let get = |a: &str| c.attr(a).filter(|v| !v.is_empty()).map(str::to_owned);
        Some(Caps {
            hash: get("hash")?,
            node: get("node")?,
            ver: get("ver")?,
        })
    }

    /// The `node` attribute of the disco#info query that asks for these caps (§6.2).
    pub fn query_node(&self) -> String {
        format!("{}#{}", self.node, self.ver)
    }
}

/// The disco#info query (§6.2) for `caps`.
pub fn disco_query(caps: &Caps) -> Element {
    Element::new("query", ns::DISCO_INFO).with_attr("node", caps.query_node())
}

/// The features a disco#info `<query/>` lists.
pub fn features(query: &Element) -> Vec<String> {
    query
        .children()
        .filter(|c| c.is("feature", ns::DISCO_INFO))
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect()
}

/// The verification string of a disco#info `<query/>` (§5.1), or `None` when §5.4 says the
/// answer must not be trusted: duplicate identities, duplicate features, or two extended
/// forms with one FORM_TYPE.
pub fn verification_string(query: &Element) -> Option<String> {
    let mut identities: Vec<String> = query
        .children()
        .filter(|c| c.is("identity", ns::DISCO_INFO))
        .map(|i| {
            format!(
                "{}/{}/{}/{}",
                i.attr("category").unwrap_or_default(),
                i.attr("type").unwrap_or_default(),
                i.lang().unwrap_or_default(),
                i.attr("name").unwrap_or_default()
            )
        })
        .collect();
    let mut feats = features(query);
    identities.sort();
    feats.sort();
    if has_duplicates(&identities) || has_duplicates(&feats) {
        return None;
    }
    // §5.1 step 7: forms with a hidden FORM_TYPE, sorted by it; fields by var, values
    // sorted.
    let mut forms: Vec<(String, FormFields)> = Vec::new();
    for x in query.children().filter(|c| c.is("x", ns::DATA_FORMS)) {
        let mut form_type = None;
        let mut fields = Vec::new();
        for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let var = f.attr("var").unwrap_or_default().to_owned();
            let mut values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", ns::DATA_FORMS))
                .map(|v| v.text())
                .collect();
            if var == "FORM_TYPE" {
                form_type = values.first().cloned();
                continue;
            }
            values.sort();
            fields.push((var, values));
        }
        // §5.4 3.6: a form without FORM_TYPE is ignored.
        if let Some(t) = form_type {
            fields.sort();
            forms.push((t, fields));
        }
    }
    forms.sort_by(|a, b| a.0.cmp(&b.0));
    if forms.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let mut s = String::new();
    for i in identities {
        s.push_str(&i);
        s.push('<');
    }
    for f in feats {
        s.push_str(&f);
        s.push('<');
    }
    for (t, fields) in forms {
        s.push_str(&t);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    Some(s)
}

/// An extended form's fields (var, sorted values), FORM_TYPE left out.
type FormFields = Vec<(String, Vec<String>)>;

fn has_duplicates(sorted: &[String]) -> bool {
    sorted.windows(2).any(|w| w[0] == w[1])
}

/// Whether `query` is what `caps` announced: the `sha-1` hash of its verification string,
/// base64, equals `ver` (§5.4). Other hash functions are not verified (false).
pub fn verify(caps: &Caps, query: &Element) -> bool {
    if !caps.hash.eq_ignore_ascii_case("sha-1") {
        return false;
    }
    let Some(s) = verification_string(query) else {
        return false;
    };
    let digest = Sha1::digest(s.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest) == caps.ver
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(ver: &str) -> Caps {
        Caps {
            hash: "sha-1".into(),
            node: "http://psi-im.org".into(),
            ver: ver.into(),
        }
    }

    /// XEP-0115 §5.2, the simple example.
    #[test]
    fn simple_example() {
        let q = Element::parse(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        )
        .unwrap();
        assert_eq!(
            verification_string(&q).unwrap(),
            "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<"
        );
        assert!(verify(&caps("QgayPKawpkPSDYmwT/WM94uAlu0="), &q));
        assert!(!verify(&caps("QgayPKawpkPSDYmwT/WM94uAlu1="), &q));
    }

    /// XEP-0115 §5.3, the complex example (identities with xml:lang, an extended form).
    #[test]
    fn complex_example() {
        let q = Element::parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field>\
             </x></query>",
        )
        .unwrap();
        assert!(verify(&caps("q07IKJEyjvHSyhy//CH0CxmKi8w="), &q));
        let p = Element::parse(
            "<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' \
             hash='sha-1' node='http://psi-im.org' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>",
        )
        .unwrap();
        let c = Caps::of_presence(&p).unwrap();
        assert_eq!(
            c.query_node(),
            "http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w="
        );
    }

    #[test]
    fn duplicates_are_not_trusted() {
        let q = Element::parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <feature var='a'/><feature var='a'/></query>",
        )
        .unwrap();
        assert_eq!(verification_string(&q), None);
    }
}
