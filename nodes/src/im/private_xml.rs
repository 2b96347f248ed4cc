//! Private XML storage (XEP-0049): per-account, per-namespace XML only the account can read.
//! The dispatcher refuses other users (`forbidden`, which §2.3 prefers).

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use proto::ns;

use super::roster::{error_for, result_for};
use super::writes::write_error;
use super::RosterActor;

pub const NS_PRIVATE: &str = "jabber:iq:private";
/// Largest single element stored, serialised (the account's total is `im.max_private_bytes`).
const MAX_PRIVATE_BYTES: usize = 64 * 1024;

/// §2.3: the stored fragment must be in a namespace of its own; these are not.
fn is_storable_namespace(n: &str) -> bool {
    !n.is_empty() && ![ns::CLIENT, ns::SERVER, NS_PRIVATE].contains(&n)
}

impl RosterActor {
    pub(super) fn private_iq(&mut self, from: &Jid, iq: &Element) -> Vec<Element> {
        let bare = from.to_bare();
        let user = bare.to_string();
        let Some(query) = iq.get_child("query", NS_PRIVATE) else {
            return vec![error_for(iq, Cond::BadRequest)];
        };
        let outcome = match iq.attr("type") {
            Some("get") => self
                .private_get(&user, query)
                .map(|q| result_for(iq, Some(q))),
            Some("set") => self
                .private_set(&bare, query)
                .map(|()| result_for(iq, None)),
            _ => Err(Cond::BadRequest),
        };
        vec![outcome.unwrap_or_else(|cond| error_for(iq, cond))]
    }

    /// The children of the query, which must be at least one and all storable (§2.3,
    /// "Not Acceptable").
    fn fragments(query: &Element) -> Result<Vec<&Element>, Cond> {
        let children: Vec<&Element> = query.children().collect();
        if children.is_empty() || !children.iter().all(|c| is_storable_namespace(&c.ns)) {
            return Err(Cond::NotAcceptable);
        }
        Ok(children)
    }

    /// Each requested element as stored, or as sent (empty) when nothing is stored.
    fn private_get(&self, user: &str, query: &Element) -> Result<Element, Cond> {
        let wanted = Self::fragments(query)?;
        // §2.3: a get asks about one namespace.
        if wanted.iter().any(|w| w.ns != wanted[0].ns) {
            return Err(Cond::BadRequest);
        }
        let mut reply = Element::new("query", NS_PRIVATE);
        for w in wanted {
            let stored = self
                .private
                .get(user, &w.name, &w.ns)
                .map_err(|_| Cond::InternalServerError)?;
            let el = match stored {
                Some(xml) => Element::parse(&xml).map_err(|_| Cond::InternalServerError)?,
                None => Element::new(&w.name, &w.ns),
            };
            reply = reply.with_child(el);
        }
        Ok(reply)
    }

    /// Each child replaces what was stored under its name and namespace. The account's
    /// elements and their bytes, counted as they will be after the set, stay within
    /// `im.max_private_entries` and `im.max_private_bytes`, or nothing is stored.
    fn private_set(&mut self, bare: &Jid, query: &Element) -> Result<(), Cond> {
        let user = bare.to_string();
        let fragments = Self::fragments(query)?;
        let xml: Vec<String> = fragments.iter().map(|f| f.to_xml_string()).collect();
        if xml.iter().any(|x| x.len() > MAX_PRIVATE_BYTES) {
            return Err(Cond::NotAcceptable);
        }
        let (mut count, mut bytes) = self
            .private
            .usage(&user)
            .map_err(|_| Cond::InternalServerError)?;
        // The same element twice in one set: the last one is what is stored.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (f, x) in fragments.iter().zip(&xml).rev() {
            if seen.contains(&(f.name.as_str(), f.ns.as_str())) {
                continue;
            }
            seen.push((&f.name, &f.ns));
            match self
                .private
                .get(&user, &f.name, &f.ns)
                .map_err(|_| Cond::InternalServerError)?
            {
                Some(old) => bytes = bytes.saturating_sub(old.len()),
                None => count += 1,
            }
            bytes += x.len();
        }
        let limits = self.limits;
        if count > limits.max_private_entries {
            // XEP-0049 sets no limit; the configured one is a local service policy
            // (RFC 6120 §8.3.3.12).
            self.refuse_over_cap(bare, "max_private_entries", limits.max_private_entries);
            return Err(Cond::PolicyViolation);
        }
        if bytes > limits.max_private_bytes {
            self.refuse_over_cap(bare, "max_private_bytes", limits.max_private_bytes);
            return Err(Cond::PolicyViolation);
        }
        for (f, x) in fragments.iter().zip(&xml) {
            self.private_put(&user, &f.name, &f.ns, x)
                .map_err(write_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(inner: &str) -> Element {
        Element::parse(&format!("<query xmlns='{NS_PRIVATE}'>{inner}</query>")).unwrap()
    }

    #[test]
    fn fragments_need_a_namespace_of_their_own() {
        for bad in [
            "",
            "<exodus/>",
            "<x xmlns='jabber:client'/>",
            "<x xmlns='jabber:server'/>",
            "<a xmlns='urn:a'/><b/>",
        ] {
            let q = query(bad);
            assert_eq!(
                RosterActor::fragments(&q),
                Err(Cond::NotAcceptable),
                "{bad}"
            );
        }
        let q = query("<a xmlns='urn:a'/>text<b xmlns='urn:b'/>");
        let names: Vec<_> = RosterActor::fragments(&q)
            .unwrap()
            .iter()
            .map(|f| (f.name.as_str(), f.ns.as_str()))
            .collect();
        assert_eq!(names, [("a", "urn:a"), ("b", "urn:b")]);
    }
}
