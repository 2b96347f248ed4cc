//! Private XML storage (XEP-0049): per-account, per-namespace XML only the account can read
//! (others get `forbidden`, which §2.3 prefers). Each stored element is one entry of the
//! module's store, keyed by its namespace and name.

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::ns;
use storage::module_store::private_key;

use super::account::{AccountCtx, AccountIq, AccountState};
use super::{IqOutcome, Module, Support};

pub const NS_PRIVATE: &str = "jabber:iq:private";
/// Largest single element stored, serialised (the account's total is `im.max_private_bytes`).
const MAX_PRIVATE_BYTES: usize = 64 * 1024;

pub fn module() -> Box<dyn Module> {
    Box::new(Private)
}

struct Private;

impl Module for Private {
    fn name(&self) -> &'static str {
        "private"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0049",
            title: "Private XML Storage",
        }]
    }
    fn account(&self) -> Option<&dyn AccountState> {
        Some(self)
    }
}

/// §2.3: the stored fragment must be in a namespace of its own; these are not.
fn is_storable_namespace(n: &str) -> bool {
    !n.is_empty() && ![ns::CLIENT, ns::SERVER, NS_PRIVATE].contains(&n)
}

impl AccountState for Private {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS_PRIVATE]
    }

    fn iq(&self, ctx: &mut AccountCtx<'_>, req: &AccountIq<'_>) -> IqOutcome {
        if !req.own {
            return IqOutcome::Error(Cond::Forbidden);
        }
        let Some(query) = req.iq.get_child("query", NS_PRIVATE) else {
            return IqOutcome::Error(Cond::BadRequest);
        };
        let outcome = match req.iq.attr("type") {
            Some("get") => get(ctx, query).map(Some),
            Some("set") => set(ctx, query).map(|()| None),
            _ => Err(Cond::BadRequest),
        };
        match outcome {
            Ok(payload) => IqOutcome::Result(payload),
            Err(cond) => IqOutcome::Error(cond),
        }
    }
}

/// The children of the query, which must be at least one and all storable (§2.3, "Not
/// Acceptable").
fn fragments(query: &Element) -> Result<Vec<&Element>, Cond> {
    let children: Vec<&Element> = query.children().collect();
    if children.is_empty() || !children.iter().all(|c| is_storable_namespace(&c.ns)) {
        return Err(Cond::NotAcceptable);
    }
    Ok(children)
}

/// Each requested element as stored, or as sent (empty) when nothing is stored.
fn get(ctx: &AccountCtx<'_>, query: &Element) -> Result<Element, Cond> {
    let wanted = fragments(query)?;
    // §2.3: a get asks about one namespace.
    if wanted.iter().any(|w| w.ns != wanted[0].ns) {
        return Err(Cond::BadRequest);
    }
    let mut reply = Element::new("query", NS_PRIVATE);
    for w in wanted {
        let el = match ctx.get(&private_key(&w.ns, &w.name))? {
            Some(xml) => Element::parse(&xml).map_err(|_| Cond::InternalServerError)?,
            None => Element::new(&w.name, &w.ns),
        };
        reply = reply.with_child(el);
    }
    Ok(reply)
}

/// Each child replaces what was stored under its name and namespace. The account's elements
/// and their bytes, counted as they will be after the set, stay within
/// `im.max_private_entries` and `im.max_private_bytes`, or nothing is stored.
fn set(ctx: &mut AccountCtx<'_>, query: &Element) -> Result<(), Cond> {
    let fragments = fragments(query)?;
    let xml: Vec<String> = fragments.iter().map(|f| f.to_xml_string()).collect();
    if xml.iter().any(|x| x.len() > MAX_PRIVATE_BYTES) {
        return Err(Cond::NotAcceptable);
    }
    let stored = ctx.entries()?;
    let mut count = stored.len();
    let mut bytes: usize = stored.iter().map(|(_, v)| v.len()).sum();
    // The same element twice in one set: the last one is what is stored.
    let mut seen: Vec<String> = Vec::new();
    for (f, x) in fragments.iter().zip(&xml).rev() {
        let key = private_key(&f.ns, &f.name);
        if seen.contains(&key) {
            continue;
        }
        match stored.iter().find(|(k, _)| *k == key) {
            Some((_, old)) => bytes = bytes.saturating_sub(old.len()),
            None => count += 1,
        }
        seen.push(key);
        bytes += x.len();
    }
    let limits = *ctx.limits();
    if count > limits.max_private_entries {
        // XEP-0049 sets no limit; the configured one is a local service policy
        // (RFC 6120 §8.3.3.12).
        ctx.over_cap("max_private_entries", limits.max_private_entries);
        return Err(Cond::PolicyViolation);
    }
    if bytes > limits.max_private_bytes {
        ctx.over_cap("max_private_bytes", limits.max_private_bytes);
        return Err(Cond::PolicyViolation);
    }
    for (f, x) in fragments.iter().zip(xml) {
        ctx.put(private_key(&f.ns, &f.name), Some(x));
    }
    Ok(())
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
            assert_eq!(fragments(&q), Err(Cond::NotAcceptable), "{bad}");
        }
        let q = query("<a xmlns='urn:a'/>text<b xmlns='urn:b'/>");
        let names: Vec<_> = fragments(&q)
            .unwrap()
            .iter()
            .map(|f| (f.name.as_str(), f.ns.as_str()))
            .collect();
        assert_eq!(names, [("a", "urn:a"), ("b", "urn:b")]);
    }
}
