//! Message Archive Management (XEP-0313 v1.1, `urn:xmpp:mam:2`), the protocol half: parsing
//! a query (its data form, RSM `<set/>` and `<flip-page/>`), the elements of the answer (the
//! form of query fields, result messages, `<fin/>`, archive metadata), the archiving
//! preferences of XEP-0441, and which messages a user archive keeps.
//!
//! Nothing here reads a clock, the roster or the archive: the caller gives the time, whether
//! a peer is in the roster, and the ids the archive holds. Ids are strings on the wire (the
//! archive's [`crate::stanza_id::ArchiveId`] in its text form); telling an unknown id from a
//! known one (`item-not-found`, §4.1.3, §4.3.2) is the caller's job.

use crate::datetime;
use crate::element::{Element, Node};
use crate::error::StanzaErrorCondition;
use crate::jid::Jid;
use crate::ns;
use crate::rsm::{RsmError, RsmRequest, RsmResponse};

/// Why a query or a preferences set was refused; [`MamError::condition`] is the stanza
/// error to answer with and the `Display` text its `<text/>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MamError {
    /// The element is not what was asked for, or its data form is malformed (XEP-0004 §3).
    #[error("malformed query: {0}")]
    Malformed(String),
    /// A form field this server does not know: XEP-0313 §4.1.5 "the server MUST respond
    /// with a 'feature-not-implemented' error".
    #[error("unsupported query field {0:?}")]
    UnknownField(String),
    /// `start`/`end` is not an XEP-0082 DateTime (XEP-0313 §4.1.2).
    #[error("field {field:?} is not an XEP-0082 DateTime: {value:?}")]
    BadDate { field: &'static str, value: String },
    /// `with` is not a JID (XEP-0313 §4.1.1).
    #[error("field 'with' is not a JID: {0:?}")]
    BadJid(String),
    /// The RSM `<set/>` is malformed (XEP-0059).
    #[error(transparent)]
    Rsm(#[from] RsmError),
    /// RSM `<index/>`: XEP-0059 §2.6 lets a responder refuse paging by position with
    /// `feature-not-implemented`; the archive pages by id only.
    #[error("paging by RSM <index/> is not supported; page with <after/> or <before/>")]
    IndexPaging,
    /// RSM `<before/>` and `<after/>` together: XEP-0313 §4.3.2 leaves this undefined and
    /// points to the `before-id`/`after-id` fields instead.
    #[error("RSM <before/> with <after/> is undefined; use the before-id and after-id fields")]
    BeforeAndAfter,
    /// A `<prefs/>` that XEP-0441 §2.1 does not allow.
    #[error("malformed archiving preferences: {0}")]
    BadPrefs(String),
    /// More JIDs in one preferences list than [`MAX_PREFS_JIDS`].
    #[error("at most {MAX_PREFS_JIDS} JIDs per preferences list")]
    TooManyPrefs,
}

impl MamError {
    /// The RFC 6120 §8.3.3 condition to answer with.
    pub fn condition(&self) -> StanzaErrorCondition {
        match self {
            MamError::UnknownField(_) | MamError::IndexPaging => {
                StanzaErrorCondition::FeatureNotImplemented
            }
            // A stored preference list is a module payload; a larger one is refused by
            // policy, not because the request was malformed.
            MamError::TooManyPrefs => StanzaErrorCondition::PolicyViolation,
            MamError::Malformed(_)
            | MamError::BadDate { .. }
            | MamError::BadJid(_)
            | MamError::Rsm(_)
            | MamError::BeforeAndAfter
            | MamError::BadPrefs(_) => StanzaErrorCondition::BadRequest,
        }
    }
}

/// A parsed archive query (XEP-0313 §4): the filters of its data form, the RSM paging and
/// the flip. Absent filters match everything (§4.1: "By default all messages match").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MamQuery {
    /// `queryid`, echoed in every result (§4.2).
    pub query_id: Option<String>,
    /// `node`: reserved for pubsub archives (§6.1.3, XEP-0442); a user archive has none.
    pub node: Option<String>,
    /// `with` (§4.1.1): messages to or from this JID; a bare JID also matches its full JIDs.
    pub with: Option<Jid>,
    /// `start` (§4.1.2): messages at or after this millisecond. A time before 1970 is 0.
    pub start_ms: Option<u64>,
    /// `end` (§4.1.2): messages at or before this millisecond. A time before 1970 is 0
    /// (which no message has, so the result is empty, as the client asked).
    pub end_ms: Option<u64>,
    /// `after-id` (§4.1.3, extended): messages after this id.
    pub after_id: Option<String>,
    /// `before-id` (§4.1.3, extended): messages before this id. Unlike RSM `<before/>` it
    /// does not page backwards (§9).
    pub before_id: Option<String>,
    /// `ids` (§4.1.3, extended): only these messages; empty = no such filter.
    pub ids: Vec<String>,
    /// The RSM `<set/>` (§4.3); never with `index`, never with both `after` and `before`.
    pub rsm: RsmRequest,
    /// `<flip-page/>` (§4.3.4, extended): send the page newest first. It changes the order of
    /// transmission only, never which messages are in the page.
    pub flip_page: bool,
}

impl MamQuery {
    /// Parse `<query xmlns='urn:xmpp:mam:2'>` of an IQ set (XEP-0313 §4). A query without a
    /// form is valid and matches the whole archive. `start` after `end` is not an error:
    /// §4.1.2 defines both as filters, and no message passes both, so the result is empty.
    ///
    /// Form handling (XEP-0004 §3.3, XEP-0068): the form is the first `<x xmlns='jabber:x:data'>`;
    /// its `type` is `submit` (or absent: lenient); `FORM_TYPE`, when present, must be
    /// `urn:xmpp:mam:2`; a field given twice is malformed; a field with no value, or an empty
    /// one, is as if absent; a single-valued field with several values is malformed.
    pub fn parse(query: &Element) -> Result<MamQuery, MamError> {
        if !query.is("query", ns::MAM) {
            return Err(MamError::Malformed(format!(
                "expected <query xmlns='{}'/>, got <{}/>",
                ns::MAM,
                query.name
            )));
        }
        let mut q = MamQuery {
            query_id: query.attr("queryid").map(str::to_owned),
            node: query.attr("node").map(str::to_owned),
            ..MamQuery::default()
        };
        if let Some(form) = query.get_child("x", ns::DATA_FORMS) {
            q.apply_form(form)?;
        }
        if let Some(set) = query.get_child("set", ns::RSM) {
            q.rsm = RsmRequest::parse(set)?;
            if q.rsm.index.is_some() {
                return Err(MamError::IndexPaging);
            }
            if q.rsm.after.is_some() && q.rsm.before.is_some() {
                return Err(MamError::BeforeAndAfter);
            }
        }
        q.flip_page = query.get_child("flip-page", ns::MAM).is_some();
        Ok(q)
    }

    fn apply_form(&mut self, form: &Element) -> Result<(), MamError> {
        match form.attr("type") {
            None | Some("submit") => {}
            Some(other) => {
                return Err(MamError::Malformed(format!(
                    "the form's type is {other:?}, not 'submit'"
                )))
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for field in form.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let Some(var) = field.attr("var") else {
                return Err(MamError::Malformed("a form field has no 'var'".into()));
            };
            if seen.contains(&var) {
                return Err(MamError::Malformed(format!("field {var:?} given twice")));
            }
            seen.push(var);
            let values: Vec<String> = field
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .filter(|v| !v.is_empty())
                .collect();
            match var {
                "FORM_TYPE" => {
                    if single(var, &values)?.is_some_and(|v| v != ns::MAM) {
                        return Err(MamError::Malformed(format!("FORM_TYPE is not {}", ns::MAM)));
                    }
                }
                "with" => {
                    if let Some(v) = single(var, &values)? {
                        self.with = Some(Jid::parse(v).map_err(|_| MamError::BadJid(v.into()))?);
                    }
                }
                "start" => {
                    self.start_ms = single(var, &values)?
                        .map(|v| time("start", v))
                        .transpose()?
                }
                "end" => self.end_ms = single(var, &values)?.map(|v| time("end", v)).transpose()?,
                "after-id" => self.after_id = single(var, &values)?.map(str::to_owned),
                "before-id" => self.before_id = single(var, &values)?.map(str::to_owned),
                "ids" => self.ids = values,
                // Includes `include-groupchat` (§4.1.4): a server that does not advertise
                // `urn:xmpp:mam:2#groupchat-field` rejects a form with it (§4.1.4, §7).
                other => return Err(MamError::UnknownField(other.to_owned())),
            }
        }
        Ok(())
    }
}

/// The one value of a single-valued field, if any.
fn single<'a>(var: &str, values: &'a [String]) -> Result<Option<&'a str>, MamError> {
    match values {
        [] => Ok(None),
        [v] => Ok(Some(v.as_str())),
        _ => Err(MamError::Malformed(format!(
            "field {var:?} has more than one value"
        ))),
    }
}

/// A `start`/`end` value in milliseconds since the epoch; before 1970 is 0.
fn time(field: &'static str, value: &str) -> Result<u64, MamError> {
    let ms = datetime::parse_ms(value).ok_or_else(|| MamError::BadDate {
        field,
        value: value.to_owned(),
    })?;
    Ok(u64::try_from(ms).unwrap_or(0))
}

/// The answer to `<iq type='get'><query xmlns='urn:xmpp:mam:2'/></iq>` (XEP-0313 §4.1.5
/// "Retrieving form fields"): `<query>` holding the form of every field this server
/// supports: the mandatory `with` (jid-single), `start`, `end` (text-single), and the
/// extended `before-id`, `after-id` (text-single) and `ids` (list-multi with an open
/// XEP-0122 `<validate/>`, since the list of all ids MUST NOT be sent). No field is
/// `<required/>` (§4.1: "Servers MUST NOT mark any fields ... as being required").
pub fn query_fields_form() -> Element {
    let field = |var: &str, kind: &str| {
        Element::new("field", ns::DATA_FORMS)
            .with_attr("type", kind)
            .with_attr("var", var)
    };
    let form = Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(ns::MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(
            field("ids", "list-multi").with_child(
                Element::new("validate", ns::XDATA_VALIDATE)
                    .with_attr("datatype", "xs:string")
                    .with_child(Element::new("open", ns::XDATA_VALIDATE)),
            ),
        );
    Element::new("query", ns::MAM).with_child(form)
}

/// One result of a query (XEP-0313 §4.2): `<message to=..><result xmlns='urn:xmpp:mam:2'
/// queryid=.. id=..><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay'
/// stamp=../>original</forwarded></result></message>`.
///
/// `id` is the archive id of the message, `stamp_ms` the time it was archived (§4.2: "the
/// time the message was originally received by the forwarding entity", as an XEP-0203 stamp). The
/// original keeps an explicit namespace (XEP-0297 §3.2: it "MUST be preserved", else it
/// would inherit `urn:xmpp:forward:0`), and that namespace is `jabber:client`: the archive
/// is read over a client stream, so a copy stored from a server-to-server stream is put in
/// the client namespace, content unchanged. The message has no `from` (the archive's
/// address, which the caller sets or leaves to the user's server,
/// RFC 6120 §8.1.2.1) and no `id` (none is needed).
pub fn result_message(
    to: &str,
    query_id: Option<&str>,
    id: &str,
    stamp_ms: u64,
    original: &Element,
) -> Element {
    let mut result = Element::new("result", ns::MAM);
    if let Some(query_id) = query_id {
        result.set_attr("queryid", query_id);
    }
    result.set_attr("id", id);
    let forwarded = Element::new("forwarded", ns::FORWARD)
        .with_child(
            Element::new("delay", ns::DELAY).with_attr("stamp", datetime::utc_stamp_ms(stamp_ms)),
        )
        .with_child(in_client_namespace(original));
    Element::new("message", ns::CLIENT)
        .with_attr("to", to)
        .with_child(result.with_child(forwarded))
}

/// A copy of `el` with every element in `jabber:server` moved to `jabber:client`.
fn in_client_namespace(el: &Element) -> Element {
    let mut copy = el.clone();
    fn fix(el: &mut Element) {
        if el.ns == ns::SERVER {
            el.ns = ns::CLIENT.into();
        }
        for child in &mut el.children {
            if let Node::Element(e) = child {
                fix(e);
            }
        }
    }
    fix(&mut copy);
    copy
}

/// The payload of the IQ result that ends a query (XEP-0313 §4.3): `<fin
/// xmlns='urn:xmpp:mam:2'>` with the RSM `<set/>` of the page, and `complete='true'` when
/// the page reaches the end of the results in its paging direction (§4.3.2: otherwise the
/// attribute is omitted).
pub fn fin(rsm: &RsmResponse, complete: bool) -> Element {
    let mut fin = Element::new("fin", ns::MAM);
    if complete {
        fin.set_attr("complete", "true");
    }
    fin.with_child(rsm.to_element())
}

/// The answer to `<iq type='get'><metadata xmlns='urn:xmpp:mam:2'/></iq>` (XEP-0313 §5
/// "Archive metadata", extended): `<metadata>` with `<start id=.. timestamp=../>` and
/// `<end id=.. timestamp=../>`, the (id, milliseconds) of the first and last messages of the
/// archive; an empty archive gives an empty `<metadata/>`.
pub fn metadata(first: Option<(&str, u64)>, last: Option<(&str, u64)>) -> Element {
    let mut metadata = Element::new("metadata", ns::MAM);
    for (name, entry) in [("start", first), ("end", last)] {
        if let Some((id, ms)) = entry {
            metadata = metadata.with_child(
                Element::new(name, ns::MAM)
                    .with_attr("id", id)
                    .with_attr("timestamp", datetime::utc_stamp_ms(ms)),
            );
        }
    }
    metadata
}

/// The most JIDs one preferences list may hold (the list is stored whole, as one value).
pub const MAX_PREFS_JIDS: usize = 1000;

/// XEP-0441 §2.1.1: what happens to messages with a JID in neither list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DefaultPref {
    /// Archive all messages.
    #[default]
    Always,
    /// Archive none.
    Never,
    /// Archive only messages with a contact whose bare JID is in the user's roster.
    Roster,
}

impl DefaultPref {
    /// The `default` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPref::Always => "always",
            DefaultPref::Never => "never",
            DefaultPref::Roster => "roster",
        }
    }

    /// Parse a `default` attribute value (only the three of §2.1.1).
    pub fn parse(value: &str) -> Option<DefaultPref> {
        match value {
            "always" => Some(DefaultPref::Always),
            "never" => Some(DefaultPref::Never),
            "roster" => Some(DefaultPref::Roster),
            _ => None,
        }
    }
}

/// A user's archiving preferences (XEP-0441 §2.1, `<prefs xmlns='urn:xmpp:mam:2'/>`). The
/// default value archives everything. Stored as a module payload, hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MamPrefs {
    pub default: DefaultPref,
    /// Always archive messages with these JIDs (§2.1.2).
    pub always: Vec<Jid>,
    /// Never archive messages with these JIDs (§2.1.3).
    pub never: Vec<Jid>,
}

impl MamPrefs {
    /// Parse the `<prefs/>` of an IQ set. `default` is required and one of §2.1.1's values;
    /// a missing `<always/>` or `<never/>` is an empty list (§2.1.2, §2.1.3). The result is
    /// what will be applied (§2.1: the server replies with "the applied preferences", which
    /// MAY differ): each list without duplicates, and a JID in both lists only in `never`,
    /// which wins anyway ([`MamPrefs::archives`]).
    pub fn parse(prefs: &Element) -> Result<MamPrefs, MamError> {
        if !prefs.is("prefs", ns::MAM) {
            return Err(MamError::BadPrefs(format!(
                "expected <prefs/>, got <{}/>",
                prefs.name
            )));
        }
        let default = match prefs.attr("default") {
            None => return Err(MamError::BadPrefs("no 'default' attribute".into())),
            Some(v) => DefaultPref::parse(v)
                .ok_or_else(|| MamError::BadPrefs(format!("'default' is {v:?}")))?,
        };
        let never = jid_list(prefs, "never")?;
        let mut always = jid_list(prefs, "always")?;
        always.retain(|j| !never.contains(j));
        Ok(MamPrefs {
            default,
            always,
            never,
        })
    }

    /// `<prefs xmlns='urn:xmpp:mam:2' default=..><always><jid/>..</always><never>..</never>
    /// </prefs>`: both lists present even when empty (§2.1: they "MUST also be present").
    pub fn to_element(&self) -> Element {
        let list = |name: &str, jids: &[Jid]| {
            jids.iter().fold(Element::new(name, ns::MAM), |el, jid| {
                el.with_child(Element::new("jid", ns::MAM).with_text(jid.to_string()))
            })
        };
        Element::new("prefs", ns::MAM)
            .with_attr("default", self.default.as_str())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }

    /// Whether a message with `peer` goes into the archive (XEP-0441 §2.3). `peer` is the
    /// message's `to` for an outgoing message, its `from` for an incoming one (§2.3.2,
    /// §2.3.3), full or bare; `in_roster` whether its bare JID is in the user's roster.
    ///
    /// A listed JID with a resource matches that full JID only; a bare one matches the bare
    /// JID and all its resources (§2.3.1). The `never` list wins over `always` (XEP-0441 does
    /// not order them; the safer reading is that a "never" is never overridden), and the
    /// default decides for JIDs in neither.
    pub fn archives(&self, peer: &Jid, in_roster: bool) -> bool {
        let listed = |list: &[Jid]| {
            list.iter().any(|item| match item.resource() {
                Some(_) => item == peer,
                None => item.local() == peer.local() && item.domain() == peer.domain(),
            })
        };
        if listed(&self.never) {
            return false;
        }
        if listed(&self.always) {
            return true;
        }
        self.archives_by_default(in_roster)
    }

    /// Whether the preferences keep a message with a peer on no list, by `default` alone
    /// (§2.1.1).
    pub fn archives_by_default(&self, in_roster: bool) -> bool {
        match self.default {
            DefaultPref::Always => true,
            DefaultPref::Never => false,
            DefaultPref::Roster => in_roster,
        }
    }
}

/// The JIDs of `<name><jid>..</jid>..</name>` in `prefs`, without duplicates.
fn jid_list(prefs: &Element, name: &str) -> Result<Vec<Jid>, MamError> {
    let mut jids: Vec<Jid> = Vec::new();
    let Some(list) = prefs.get_child(name, ns::MAM) else {
        return Ok(jids);
    };
    for item in list.children().filter(|c| c.is("jid", ns::MAM)) {
        let text = item.text();
        let jid = Jid::parse(text.trim())
            .map_err(|_| MamError::BadPrefs(format!("<{name}/> holds {text:?}, not a JID")))?;
        if !jids.contains(&jid) {
            if jids.len() == MAX_PREFS_JIDS {
                return Err(MamError::TooManyPrefs);
            }
            jids.push(jid);
        }
    }
    Ok(jids)
}

/// Whether `message` asks not to be archived (XEP-0334 §4: `<no-store/>`,
/// `<no-permanent-store/>`): an account's archive and a room's both honour it.
pub fn forbids_storage(message: &Element) -> bool {
    let hint = |name: &str| message.get_child(name, ns::HINTS).is_some();
    hint("no-store") || hint("no-permanent-store")
}

/// Whether the server keeps `message` in a user archive (of sender or recipient), before
/// preferences are applied. The rules, in order:
///
/// 1. Only `<message/>`s.
/// 2. Not `type='error'` (XEP-0313 §6.1.1 keeps conversations; XEP-0334 §4.4 excludes errors
///    even from `<store/>`), not `groupchat` (§6.1.1 leaves them to the room's own archive,
///    §3.3.2), not `headline` (§6.1.1: "MAY include ... but this is not generally
///    suggested": headlines are notifications such as pubsub events). Any other type is a
///    chat or normal message (RFC 6121 §5.2.2: an unknown type is `normal`).
/// 3. Not with `<no-store/>` (XEP-0334 §4.2) or `<no-permanent-store/>` (§4.1); they win
///    over `<store/>`, the privacy-preserving reading of a contradiction.
/// 4. With a `<body/>` (XEP-0313 §6.1.1: "all of the messages a user sends or receives of
///    type 'normal' or 'chat' that contain a `<body>` element").
/// 5. With the `<store/>` hint (XEP-0334 §4.4: "SHOULD be stored").
/// 6. Encrypted: an OMEMO `<encrypted/>` (XEP-0384, both namespaces) with a `<payload/>`,
///    or an XEP-0373 `<openpgp/>` — the content is there, only hidden (most also carry a
///    fallback body, see 4). An OMEMO key-transport message (no payload) is not kept.
/// 7. A chat state alone (XEP-0085) only if `archive_chat_states`: §3 of XEP-0313 expects
///    state changes not to be archived.
pub fn archivable(message: &Element, archive_chat_states: bool) -> bool {
    if message.name != "message" {
        return false;
    }
    if matches!(
        message.attr("type"),
        Some("error" | "groupchat" | "headline")
    ) {
        return false;
    }
    if forbids_storage(message) {
        return false;
    }
    if message.get_child("body", &message.ns).is_some()
        || message.get_child("store", ns::HINTS).is_some()
    {
        return true;
    }
    let encrypted = message.children().any(|c| {
        let omemo = c.is("encrypted", ns::OMEMO) || c.is("encrypted", ns::OMEMO_LEGACY);
        (omemo && c.get_child("payload", &c.ns).is_some()) || c.is("openpgp", ns::OPENPGP)
    });
    if encrypted {
        return true;
    }
    archive_chat_states && message.children().any(|c| c.ns == ns::CHATSTATES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        Element::parse(xml).unwrap_or_else(|e| panic!("test XML {xml}: {e}"))
    }

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap_or_else(|e| panic!("test JID {s}: {e}"))
    }

    /// `<query>` with a form holding `fields` (already XML) and `extra` after it.
    fn query_with(fields: &str, extra: &str) -> Element {
        el(&format!(
            "<query xmlns='urn:xmpp:mam:2' queryid='f27'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             {fields}</x>{extra}</query>"
        ))
    }

    #[test]
    fn a_query_without_a_form_matches_everything() {
        let q = MamQuery::parse(&el("<query xmlns='urn:xmpp:mam:2'/>")).expect("valid");
        assert_eq!(q, MamQuery::default());
        let q = MamQuery::parse(&el(
            "<query xmlns='urn:xmpp:mam:2' queryid='f27' node='n'/>",
        ))
        .expect("valid");
        assert_eq!(q.query_id.as_deref(), Some("f27"));
        assert_eq!(q.node.as_deref(), Some("n"));
    }

    #[test]
    fn parses_every_field() {
        let q = MamQuery::parse(&query_with(
            "<field var='with'><value>juliet@capulet.lit</value></field>\
             <field var='start'><value>2010-06-07T00:00:00Z</value></field>\
             <field var='end'><value>2010-07-07T13:23:54.5Z</value></field>\
             <field var='after-id'><value>28482-98726-73623</value></field>\
             <field var='before-id'><value>09af3-cc343-b409f</value></field>\
             <field var='ids' type='list-multi'><value>a</value><value>b</value></field>",
            "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><before/></set><flip-page/>",
        ))
        .expect("valid");
        assert_eq!(
            q,
            MamQuery {
                query_id: Some("f27".into()),
                node: None,
                with: Some(jid("juliet@capulet.lit")),
                start_ms: Some(1_275_868_800_000),
                end_ms: Some(1_278_509_034_500),
                after_id: Some("28482-98726-73623".into()),
                before_id: Some("09af3-cc343-b409f".into()),
                ids: vec!["a".into(), "b".into()],
                rsm: RsmRequest {
                    max: Some(10),
                    before: Some(crate::rsm::RsmBefore::Last),
                    ..Default::default()
                },
                flip_page: true,
            }
        );
    }

    #[test]
    fn lenient_where_nothing_is_lost() {
        // No FORM_TYPE, no form type, empty values: all accepted; `start` after `end` is an
        // empty result, not an error; a time before 1970 is the epoch.
        let q = MamQuery::parse(&el(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'>\
             <field var='with'/><field var='after-id'><value></value></field>\
             <field var='start'><value>2011-01-01T00:00:00Z</value></field>\
             <field var='end'><value>1960-01-01T00:00:00Z</value></field></x></query>",
        ))
        .expect("valid");
        assert_eq!(q.with, None);
        assert_eq!(q.after_id, None);
        assert_eq!(q.start_ms, Some(1_293_840_000_000));
        assert_eq!(q.end_ms, Some(0));
        // A full JID stays full (§4.1.1 matches it exactly).
        let q = MamQuery::parse(&query_with(
            "<field var='with'><value>Juliet@Capulet.lit/balcony</value></field>",
            "",
        ))
        .expect("valid");
        assert_eq!(q.with, Some(jid("juliet@capulet.lit/balcony")));
    }

    #[test]
    fn refuses_malformed_queries() {
        use StanzaErrorCondition::*;
        let q = |fields: &str, extra: &str| MamQuery::parse(&query_with(fields, extra));
        let cases: Vec<(Result<MamQuery, MamError>, StanzaErrorCondition)> = vec![
            (MamQuery::parse(&el("<query xmlns='urn:xmpp:mam:1'/>")), BadRequest),
            (
                MamQuery::parse(&el(
                    "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'/></query>",
                )),
                BadRequest,
            ),
            (
                MamQuery::parse(&el(
                    "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'>\
                     <field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x></query>",
                )),
                BadRequest,
            ),
            (q("<field><value>x</value></field>", ""), BadRequest),
            (
                q("<field var='with'><value>a@b</value></field><field var='with'><value>c@d</value></field>", ""),
                BadRequest,
            ),
            (q("<field var='with'><value>a@b</value><value>c@d</value></field>", ""), BadRequest),
            (q("<field var='with'><value>@b</value></field>", ""), BadRequest),
            (q("<field var='start'><value>yesterday</value></field>", ""), BadRequest),
            (q("<field var='end'><value>2010-07-07</value></field>", ""), BadRequest),
            (q("<field var='after-id'><value>a</value><value>b</value></field>", ""), BadRequest),
            (q("", "<set xmlns='http://jabber.org/protocol/rsm'><max>x</max></set>"), BadRequest),
            (
                q("", "<set xmlns='http://jabber.org/protocol/rsm'><after>a</after><before>b</before></set>"),
                BadRequest,
            ),
            (
                q("", "<set xmlns='http://jabber.org/protocol/rsm'><after>a</after><before/></set>"),
                BadRequest,
            ),
            (
                q("", "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><index>3</index></set>"),
                FeatureNotImplemented,
            ),
            (
                q("<field var='{http://example.com/}free-text-search'><value>x</value></field>", ""),
                FeatureNotImplemented,
            ),
            (q("<field var='include-groupchat'><value>true</value></field>", ""), FeatureNotImplemented),
        ];
        for (i, (result, condition)) in cases.into_iter().enumerate() {
            match result {
                Ok(q) => panic!("case {i} accepted: {q:?}"),
                Err(e) => {
                    assert_eq!(e.condition(), condition, "case {i}: {e}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        assert_eq!(
            q("<field var='start'><value>x</value></field>", ""),
            Err(MamError::BadDate {
                field: "start",
                value: "x".into()
            })
        );
    }

    #[test]
    fn the_query_fields_form() {
        assert_eq!(
            query_fields_form().to_xml_string(),
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='form'>\
             <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
             <field type='jid-single' var='with'/>\
             <field type='text-single' var='start'/>\
             <field type='text-single' var='end'/>\
             <field type='text-single' var='before-id'/>\
             <field type='text-single' var='after-id'/>\
             <field type='list-multi' var='ids'>\
             <validate xmlns='http://jabber.org/protocol/xdata-validate' datatype='xs:string'><open/></validate>\
             </field></x></query>"
        );
    }

    #[test]
    fn result_messages() {
        let original = el(
            "<message xmlns='jabber:server' from='romeo@montague.lit/orchard' \
             to='juliet@capulet.lit/balcony' type='chat' id='8a54s'><body>Call me but love</body>\
             <x xmlns='urn:other'><y/></x></message>",
        );
        let msg = result_message(
            "juliet@capulet.lit/chamber",
            Some("f27"),
            "0000018b2e6c4000",
            1_278_803_305_000,
            &original,
        );
        let mut wire = Vec::new();
        msg.write_to(&mut wire, ns::CLIENT);
        assert_eq!(
            String::from_utf8(wire).expect("utf-8"),
            "<message to='juliet@capulet.lit/chamber'>\
             <result xmlns='urn:xmpp:mam:2' queryid='f27' id='0000018b2e6c4000'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25Z'/>\
             <message xmlns='jabber:client' from='romeo@montague.lit/orchard' \
             to='juliet@capulet.lit/balcony' type='chat' id='8a54s'><body>Call me but love</body>\
             <x xmlns='urn:other'><y/></x></message></forwarded></result></message>"
        );
        // Without a queryid, and with milliseconds.
        let msg = result_message(
            "a@b/c",
            None,
            "1",
            1_278_803_305_042,
            &el("<message xmlns='jabber:client'/>"),
        );
        assert_eq!(
            msg.to_xml_string(),
            "<message xmlns='jabber:client' to='a@b/c'><result xmlns='urn:xmpp:mam:2' id='1'>\
             <forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2010-07-10T23:08:25.042Z'/>\
             <message xmlns='jabber:client'/></forwarded></result></message>"
        );
    }

    #[test]
    fn fin_elements() {
        let rsm = RsmResponse {
            first: Some(("a".into(), Some(0))),
            last: Some("b".into()),
            count: Some(16),
        };
        assert_eq!(
            fin(&rsm, true).to_xml_string(),
            "<fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='http://jabber.org/protocol/rsm'>\
             <first index='0'>a</first><last>b</last><count>16</count></set></fin>"
        );
        assert_eq!(
            fin(&RsmResponse::default(), false).to_xml_string(),
            "<fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'/></fin>"
        );
    }

    #[test]
    fn metadata_elements() {
        assert_eq!(
            metadata(Some(("YWxwaGEg", 1_219_439_344_000)), Some(("b21lZ2Eg", 1_587_393_261_000)))
                .to_xml_string(),
            "<metadata xmlns='urn:xmpp:mam:2'><start id='YWxwaGEg' timestamp='2008-08-22T21:09:04Z'/>\
             <end id='b21lZ2Eg' timestamp='2020-04-20T14:34:21Z'/></metadata>"
        );
        assert_eq!(
            metadata(None, None).to_xml_string(),
            "<metadata xmlns='urn:xmpp:mam:2'/>"
        );
    }

    #[test]
    fn preferences_parse_and_serialise() {
        let prefs = MamPrefs::parse(&el(
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'>\
             <always><jid>romeo@montague.lit</jid><jid>Romeo@Montague.lit</jid><jid>both@x</jid></always>\
             <never><jid> montague@montague.lit </jid><jid>both@x</jid></never></prefs>",
        ))
        .expect("valid");
        assert_eq!(
            prefs,
            MamPrefs {
                default: DefaultPref::Roster,
                always: vec![jid("romeo@montague.lit")],
                never: vec![jid("montague@montague.lit"), jid("both@x")],
            }
        );
        assert_eq!(
            prefs.to_element().to_xml_string(),
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'><always><jid>romeo@montague.lit</jid></always>\
             <never><jid>montague@montague.lit</jid><jid>both@x</jid></never></prefs>"
        );
        assert_eq!(MamPrefs::parse(&prefs.to_element()), Ok(prefs));
        // Missing lists are empty; the default value archives everything.
        let prefs = MamPrefs::parse(&el("<prefs xmlns='urn:xmpp:mam:2' default='always'/>"));
        assert_eq!(prefs, Ok(MamPrefs::default()));
        assert_eq!(
            MamPrefs::default().to_element().to_xml_string(),
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never/></prefs>"
        );
    }

    #[test]
    fn refuses_malformed_preferences() {
        let many: String = (0..=MAX_PREFS_JIDS)
            .map(|i| format!("<jid>u{i}@x</jid>"))
            .collect();
        let cases = [
            ("<prefs xmlns='urn:xmpp:mam:2'/>".to_owned(), StanzaErrorCondition::BadRequest),
            ("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>".into(), StanzaErrorCondition::BadRequest),
            ("<prefs xmlns='urn:xmpp:mam:1' default='always'/>".into(), StanzaErrorCondition::BadRequest),
            (
                "<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>@x</jid></never></prefs>".into(),
                StanzaErrorCondition::BadRequest,
            ),
            (
                format!("<prefs xmlns='urn:xmpp:mam:2' default='always'><always>{many}</always></prefs>"),
                StanzaErrorCondition::PolicyViolation,
            ),
        ];
        for (xml, condition) in cases {
            match MamPrefs::parse(&el(&xml)) {
                Ok(p) => panic!("accepted {p:?}"),
                Err(e) => assert_eq!(e.condition(), condition, "{e}"),
            }
        }
    }

    #[test]
    fn preferences_decide_per_peer() {
        let prefs = |default| MamPrefs {
            default,
            always: vec![jid("friend@x"), jid("other@x/phone"), jid("both@x")],
            never: vec![jid("foe@x"), jid("both@x"), jid("other@x/laptop")],
        };
        // (default, peer, in roster, archived)
        let cases = [
            (DefaultPref::Always, "stranger@y", false, true),
            (DefaultPref::Never, "stranger@y", true, false),
            (DefaultPref::Roster, "stranger@y", false, false),
            (DefaultPref::Roster, "contact@y", true, true),
            (DefaultPref::Roster, "contact@y/res", true, true),
            // Lists win over the default; a bare entry covers every resource.
            (DefaultPref::Never, "friend@x", false, true),
            (DefaultPref::Never, "friend@x/any", false, true),
            (DefaultPref::Always, "foe@x", true, false),
            (DefaultPref::Always, "foe@x/any", true, false),
            // never wins over always.
            (DefaultPref::Always, "both@x", true, false),
            // A full entry covers that resource only.
            (DefaultPref::Never, "other@x/phone", false, true),
            (DefaultPref::Never, "other@x", false, false),
            (DefaultPref::Always, "other@x/laptop", true, false),
            (DefaultPref::Always, "other@x", true, true),
            // Domains are not parents of their users.
            (DefaultPref::Never, "x", false, false),
        ];
        for (default, peer, in_roster, expected) in cases {
            assert_eq!(
                prefs(default).archives(&jid(peer), in_roster),
                expected,
                "{default:?} {peer} roster={in_roster}"
            );
        }
    }

    #[test]
    fn what_is_archived() {
        const M: &str = "<message xmlns='jabber:client' from='a@x/r' to='b@y'";
        let body = "<body>hi</body>";
        let state = "<composing xmlns='http://jabber.org/protocol/chatstates'/>";
        let omemo_payload = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'/><payload>AAAA</payload></encrypted>";
        let omemo_key_transport = "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2'>k</key></header></encrypted>";
        let omemo2 = "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/><payload>AAAA</payload></encrypted>";
        let omemo2_key_transport =
            "<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/></encrypted>";
        let ox = "<openpgp xmlns='urn:xmpp:openpgp:0'>BASE64</openpgp>";
        let store = "<store xmlns='urn:xmpp:hints'/>";
        let no_store = "<no-store xmlns='urn:xmpp:hints'/>";
        let no_perm = "<no-permanent-store xmlns='urn:xmpp:hints'/>";
        // (type attribute, payload, archive chat states, archived)
        let cases: &[(&str, String, bool, bool)] = &[
            // XEP-0313 §6.1.1: chat and normal with a body.
            ("", body.into(), false, true),
            (" type='chat'", body.into(), false, true),
            (" type='normal'", body.into(), false, true),
            (" type='unknown'", body.into(), false, true),
            (" type='chat'", "<body/>".into(), false, true),
            // Not errors, groupchat, headlines.
            (" type='error'", body.into(), false, false),
            (" type='groupchat'", body.into(), false, false),
            (" type='headline'", body.into(), false, false),
            (" type='headline'", store.into(), false, false),
            (" type='error'", store.into(), false, false),
            // No body, nothing else: not archived.
            (" type='chat'", String::new(), true, false),
            (
                " type='chat'",
                "<x xmlns='urn:other'/>".into(),
                false,
                false,
            ),
            // A body in another namespace is not a body.
            (
                " type='chat'",
                "<body xmlns='urn:other'>hi</body>".into(),
                false,
                false,
            ),
            // XEP-0334 hints.
            (" type='chat'", format!("{body}{no_store}"), false, false),
            (" type='chat'", format!("{body}{no_perm}"), false, false),
            (" type='chat'", format!("{store}{no_store}"), false, false),
            (" type='chat'", store.into(), false, true),
            ("", format!("{state}{store}"), false, true),
            // Chat states alone only when configured.
            (" type='chat'", state.into(), false, false),
            (" type='chat'", state.into(), true, true),
            (" type='chat'", format!("{state}{no_store}"), true, false),
            (" type='chat'", format!("{state}{body}"), false, true),
            // Encrypted content, with or without a fallback body; not key transport.
            (" type='chat'", omemo_payload.into(), false, true),
            (
                " type='chat'",
                format!("{omemo_payload}{body}"),
                false,
                true,
            ),
            (" type='chat'", omemo2.into(), false, true),
            (" type='chat'", ox.into(), false, true),
            (" type='chat'", omemo_key_transport.into(), false, false),
            (" type='chat'", omemo2_key_transport.into(), false, false),
            (
                " type='chat'",
                format!("{omemo_payload}{no_store}"),
                false,
                false,
            ),
        ];
        for (kind, payload, states, expected) in cases {
            let xml = format!("{M}{kind}>{payload}</message>");
            assert_eq!(
                archivable(&el(&xml), *states),
                *expected,
                "{xml} states={states}"
            );
        }
        // Messages from a server-to-server stream count the same.
        assert!(archivable(
            &el("<message xmlns='jabber:server' type='chat'><body>hi</body></message>"),
            false
        ));
        // Only messages.
        assert!(!archivable(
            &el("<presence xmlns='jabber:client'><body>x</body></presence>"),
            false
        ));
    }
}
