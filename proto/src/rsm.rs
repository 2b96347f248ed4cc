//! Result Set Management (XEP-0059): the `<set xmlns='http://jabber.org/protocol/rsm'/>` a
//! requester pages with, and the one a responder describes its page with.
//!
//! Only the syntax lives here. What the UIDs mean, how `max` is capped and whether paging by
//! index is offered are the using protocol's business (XEP-0313 §4.3 for the archive).

use crate::element::Element;
use crate::ns;

/// Why a request `<set/>` was refused. All of them are `bad-request` to the using protocol
/// (RFC 6120 §8.3.3.1): the requester sent a `<set/>` XEP-0059 gives no meaning to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsmError {
    /// `<max/>` is not a non-negative integer (XEP-0059 §2.1).
    #[error("RSM <max/> is not a non-negative integer: {0:?}")]
    BadMax(String),
    /// `<index/>` is not a non-negative integer (XEP-0059 §2.6).
    #[error("RSM <index/> is not a non-negative integer: {0:?}")]
    BadIndex(String),
    /// `<after/>` without a UID: XEP-0059 §2.2 pages forward from a UID; only `<before/>`
    /// has an empty form (§2.5).
    #[error("RSM <after/> without a UID")]
    EmptyAfter,
}

/// `<before/>` of a request (XEP-0059 §2.3 and §2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RsmBefore {
    /// An empty `<before/>`: the last page of the result set (§2.5).
    Last,
    /// The page that ends just before this UID (§2.3).
    Id(String),
}

/// A request `<set/>` (XEP-0059 §2): every element is optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RsmRequest {
    /// `<max/>`: at most this many items (§2.1); `Some(0)` asks for the count only (§2.7).
    pub max: Option<usize>,
    /// `<after/>`: the page that starts just after this UID (§2.2).
    pub after: Option<String>,
    /// `<before/>` (§2.3, §2.5).
    pub before: Option<RsmBefore>,
    /// `<index/>`: the page that starts at this position of the result set (§2.6).
    pub index: Option<usize>,
}

impl RsmRequest {
    /// Parse a request `<set/>` (the caller found it by name and namespace). Elements the
    /// request form does not have (`<first/>`, `<count/>`, ...) are ignored, as are repeats
    /// of one (the first counts): XEP-0059 defines no error for them.
    pub fn parse(set: &Element) -> Result<RsmRequest, RsmError> {
        let mut request = RsmRequest::default();
        if let Some(max) = set.get_child("max", ns::RSM) {
            let text = max.text();
            request.max = Some(non_negative(&text).ok_or(RsmError::BadMax(text))?);
        }
        if let Some(after) = set.get_child("after", ns::RSM) {
            let uid = after.text();
            if uid.is_empty() {
                return Err(RsmError::EmptyAfter);
            }
            request.after = Some(uid);
        }
        if let Some(before) = set.get_child("before", ns::RSM) {
            let uid = before.text();
            request.before = Some(if uid.is_empty() {
                RsmBefore::Last
            } else {
                RsmBefore::Id(uid)
            });
        }
        if let Some(index) = set.get_child("index", ns::RSM) {
            let text = index.text();
            request.index = Some(non_negative(&text).ok_or(RsmError::BadIndex(text))?);
        }
        Ok(request)
    }
}

/// A non-negative integer (`xs:int` in §8's schema, but no sign and no limit: a `<max/>`
/// beyond what fits saturates, since every responder caps it anyway). Surrounding
/// whitespace is allowed, as XML Schema's whitespace facet for integers collapses it.
fn non_negative(text: &str) -> Option<usize> {
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(usize::MAX))
}

/// The `<set/>` that describes a returned page (XEP-0059 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RsmResponse {
    /// The UID of the page's first item and, if known, its position in the full result set
    /// (the `index` attribute).
    pub first: Option<(String, Option<usize>)>,
    /// The UID of the page's last item.
    pub last: Option<String>,
    /// The size of the full result set (§2.2 allows it to be approximate or omitted).
    pub count: Option<u64>,
}

impl RsmResponse {
    /// `<set xmlns='http://jabber.org/protocol/rsm'><first index='i'>uid</first><last>uid</last>
    /// <count>n</count></set>`, each part only when known. An empty page has neither
    /// `<first/>` nor `<last/>` (§2.2: they "MUST NOT be included"), so only `<count/>`.
    pub fn to_element(&self) -> Element {
        let mut set = Element::new("set", ns::RSM);
        if let Some((uid, index)) = &self.first {
            let mut first = Element::new("first", ns::RSM).with_text(uid.as_str());
            if let Some(index) = index {
                first.set_attr("index", index.to_string());
            }
            set = set.with_child(first);
        }
        if let Some(uid) = &self.last {
            set = set.with_child(Element::new("last", ns::RSM).with_text(uid.as_str()));
        }
        if let Some(count) = self.count {
            set = set.with_child(Element::new("count", ns::RSM).with_text(count.to_string()));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(inner: &str) -> Element {
        Element::parse(&format!(
            "<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>"
        ))
        .expect("test XML parses")
    }

    #[test]
    fn parses_requests() {
        let cases: Vec<(&str, RsmRequest)> = vec![
            ("", RsmRequest::default()),
            (
                "<max>10</max>",
                RsmRequest {
                    max: Some(10),
                    ..Default::default()
                },
            ),
            (
                "<max> 0 </max>",
                RsmRequest {
                    max: Some(0),
                    ..Default::default()
                },
            ),
            (
                "<max>99999999999999999999999</max>",
                RsmRequest {
                    max: Some(usize::MAX),
                    ..Default::default()
                },
            ),
            (
                "<max>10</max><after>09af3-cc343-b409f</after>",
                RsmRequest {
                    max: Some(10),
                    after: Some("09af3-cc343-b409f".into()),
                    ..Default::default()
                },
            ),
            (
                "<max>10</max><before/>",
                RsmRequest {
                    max: Some(10),
                    before: Some(RsmBefore::Last),
                    ..Default::default()
                },
            ),
            (
                "<before>peter@pixyland.org</before>",
                RsmRequest {
                    before: Some(RsmBefore::Id("peter@pixyland.org".into())),
                    ..Default::default()
                },
            ),
            (
                "<max>10</max><index>371</index>",
                RsmRequest {
                    max: Some(10),
                    index: Some(371),
                    ..Default::default()
                },
            ),
            // Response-only elements and elements of other namespaces are ignored.
            (
                "<first>x</first><count>3</count><max xmlns='urn:other'>x</max>",
                RsmRequest::default(),
            ),
        ];
        for (inner, expected) in cases {
            assert_eq!(RsmRequest::parse(&set(inner)), Ok(expected), "{inner}");
        }
    }

    #[test]
    fn refuses_malformed_requests() {
        let cases = [
            ("<max>ten</max>", RsmError::BadMax("ten".into())),
            ("<max>-1</max>", RsmError::BadMax("-1".into())),
            ("<max>+1</max>", RsmError::BadMax("+1".into())),
            ("<max/>", RsmError::BadMax(String::new())),
            ("<max>1.5</max>", RsmError::BadMax("1.5".into())),
            ("<index>x</index>", RsmError::BadIndex("x".into())),
            ("<index>-3</index>", RsmError::BadIndex("-3".into())),
            ("<after/>", RsmError::EmptyAfter),
        ];
        for (inner, expected) in cases {
            assert_eq!(RsmRequest::parse(&set(inner)), Err(expected), "{inner}");
        }
    }

    #[test]
    fn builds_responses() {
        let full = RsmResponse {
            first: Some(("28482-98726-73623".into(), Some(0))),
            last: Some("09af3-cc343-b409f".into()),
            count: Some(20),
        };
        assert_eq!(
            full.to_element().to_xml_string(),
            "<set xmlns='http://jabber.org/protocol/rsm'><first index='0'>28482-98726-73623</first>\
             <last>09af3-cc343-b409f</last><count>20</count></set>"
        );
        let no_index = RsmResponse {
            first: Some(("a".into(), None)),
            last: Some("a".into()),
            count: None,
        };
        assert_eq!(
            no_index.to_element().to_xml_string(),
            "<set xmlns='http://jabber.org/protocol/rsm'><first>a</first><last>a</last></set>"
        );
        let empty_page = RsmResponse {
            count: Some(790),
            ..Default::default()
        };
        assert_eq!(
            empty_page.to_element().to_xml_string(),
            "<set xmlns='http://jabber.org/protocol/rsm'><count>790</count></set>"
        );
        assert_eq!(
            RsmResponse::default().to_element().to_xml_string(),
            "<set xmlns='http://jabber.org/protocol/rsm'/>"
        );
    }
}
