//! Publish-subscribe (XEP-0060 v1.26), the protocol half that personal eventing (XEP-0163)
//! and a later pubsub service share: node configuration and its XEP-0004 form both ways,
//! `#publish-options` preconditions (§7.1.5), the requests of `<pubsub/>` and
//! `<pubsub xmlns='…#owner'/>` parsed into [`Request`], the answers and event notifications
//! built, and the error conditions of XEP-0060 with their `pubsub#errors` elements
//! ([`PubsubError`]).
//!
//! Nothing here stores a node or knows who may see it: the caller keeps nodes and items,
//! checks access against the roster and sends the notifications.

use serde::{Deserialize, Serialize};

use crate::element::{Element, Node};
use crate::error::{stanza_error_reply, StanzaErrorCondition as Cond};
use crate::jid::Jid;
use crate::ns;

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// Who may subscribe and retrieve items (§4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
        }
    }
    pub fn parse(s: &str) -> Option<AccessModel> {
        Some(match s {
            "open" => AccessModel::Open,
            "presence" => AccessModel::Presence,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            _ => return None,
        })
    }
}

/// `pubsub#max_items` (§16.4.3): a number, or `max`, the most the service allows (XEP-0060
/// 1.15.7 added the value; the caller resolves it against its own cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaxItems {
    Max,
    Count(u32),
}

impl MaxItems {
    pub fn parse(s: &str) -> Option<MaxItems> {
        if s == "max" {
            return Some(MaxItems::Max);
        }
        s.parse().ok().map(MaxItems::Count)
    }
    fn as_string(self) -> String {
        match self {
            MaxItems::Max => "max".into(),
            MaxItems::Count(n) => n.to_string(),
        }
    }
    /// The number of items kept, with the service's cap `cap` (`max` is the cap; a larger
    /// number is refused by [`NodeConfig::apply`] against the same cap).
    pub fn resolve(self, cap: u32) -> u32 {
        match self {
            MaxItems::Max => cap,
            MaxItems::Count(n) => n.min(cap),
        }
    }
}

/// `pubsub#send_last_published_item` (§16.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    pub fn parse(s: &str) -> Option<SendLast> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// A node's configuration: the part of `pubsub#node_config` (§16.4.3) this server keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    /// Roster groups whose members may access a node with the `roster` model (§4.5).
    #[serde(default)]
    pub roster_groups_allowed: Vec<String>,
    pub max_items: MaxItems,
    pub persist_items: bool,
    pub notify_retract: bool,
    #[serde(default = "yes")]
    pub notify_delete: bool,
    pub send_last_published_item: SendLast,
    pub deliver_payloads: bool,
    #[serde(default)]
    pub title: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for NodeConfig {
    /// The defaults of a PEP node (XEP-0163 §4.4 Recommended Defaults: access model
    /// `presence`, the last item sent on subscription and presence, payloads delivered).
    /// One item kept, as Prosody and ejabberd do.
    fn default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            roster_groups_allowed: Vec::new(),
            max_items: MaxItems::Count(1),
            persist_items: true,
            notify_retract: true,
            notify_delete: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            deliver_payloads: true,
            title: None,
        }
    }
}

/// The fields of a submitted form (XEP-0004 §3.3): each `var` with its values, in order,
/// `FORM_TYPE` left out. `None` when the element is not a form of type `submit` (or
/// without a type: lenient) whose `FORM_TYPE`, if present, is `form_type`.
pub type Fields = Vec<(String, Vec<String>)>;

fn form_fields(x: &Element, form_type: &str) -> Result<Fields, PubsubError> {
    if !x.is("x", ns::DATA_FORMS) || !matches!(x.attr("type"), None | Some("submit")) {
        return Err(PubsubError::bad_request(None));
    }
    let mut out = Vec::new();
    for field in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
        let Some(var) = field.attr("var") else {
            continue;
        };
        let values: Vec<String> = field
            .children()
            .filter(|c| c.is("value", ns::DATA_FORMS))
            .map(|v| v.text())
            .collect();
        if var == "FORM_TYPE" {
            if values.first().map(String::as_str) != Some(form_type) {
                return Err(PubsubError::bad_request(Some(App::InvalidOptions)));
            }
            continue;
        }
        out.push((var.to_owned(), values));
    }
    Ok(out)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn single(values: &[String]) -> Option<&str> {
    match values {
        [v] => Some(v.as_str()),
        _ => None,
    }
}

impl NodeConfig {
    /// Apply submitted fields (a configure form, §8.2.4, or the options of a create or
    /// publish-options). `max_items_cap` bounds `pubsub#max_items`. A field this server does
    /// not know, or a value it cannot take, refuses the whole form: `not-acceptable`
    /// (§8.2.5.3 "Form Processing": the form is invalid) and nothing changes.
    pub fn apply(&mut self, fields: &Fields, max_items_cap: u32) -> Result<(), PubsubError> {
        let mut next = self.clone();
        let invalid = || PubsubError::new(Cond::NotAcceptable, None);
        for (var, values) in fields {
            let one = || single(values).ok_or_else(invalid);
            let boolean = || one().and_then(|v| parse_bool(v).ok_or_else(invalid));
            match var.as_str() {
                "pubsub#access_model" => {
                    next.access_model = AccessModel::parse(one()?).ok_or_else(invalid)?
                }
                "pubsub#roster_groups_allowed" => next.roster_groups_allowed = values.clone(),
                "pubsub#max_items" => {
                    let m = MaxItems::parse(one()?).ok_or_else(invalid)?;
                    if matches!(m, MaxItems::Count(n) if n > max_items_cap) {
                        return Err(invalid());
                    }
                    next.max_items = m;
                }
                "pubsub#persist_items" => next.persist_items = boolean()?,
                "pubsub#notify_retract" => next.notify_retract = boolean()?,
                "pubsub#notify_delete" => next.notify_delete = boolean()?,
                "pubsub#deliver_payloads" => next.deliver_payloads = boolean()?,
                "pubsub#send_last_published_item" => {
                    next.send_last_published_item = SendLast::parse(one()?).ok_or_else(invalid)?
                }
                "pubsub#title" => next.title = Some(values.concat()),
                // Fields every client sends along that do not change anything here: PEP
                // nodes are leaves with one publisher (XEP-0163 §4.3) and always notify.
                "pubsub#node_type" if values.iter().all(|v| v == "leaf") => {}
                "pubsub#publish_model" if values.iter().all(|v| v == "publishers") => {}
                "pubsub#notify_config" | "pubsub#notify_sub" | "pubsub#presence_based_delivery" => {
                    boolean()?;
                }
                _ => return Err(invalid()),
            }
        }
        *self = next;
        Ok(())
    }

    /// §7.1.5: each publish-option must equal the node's configuration, else
    /// `conflict` + `precondition-not-met`. An option this server does not know cannot be
    /// met either.
    pub fn check_preconditions(&self, fields: &Fields) -> Result<(), PubsubError> {
        let not_met = || PubsubError::new(Cond::Conflict, Some(App::PreconditionNotMet));
        let mut wanted = self.clone();
        wanted.apply(fields, u32::MAX).map_err(|_| not_met())?;
        if wanted == *self {
            Ok(())
        } else {
            Err(not_met())
        }
    }

    /// The configuration form (§8.2.1), `type='form'` with the current values; the same
    /// fields with `type='submit'` is what [`apply`](NodeConfig::apply) takes back.
    pub fn to_form(&self, node: &str) -> Element {
        let field = |var: &str, kind: &str, label: &str| {
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", var)
                .with_attr("type", kind)
                .with_attr("label", label)
        };
        let value = |v: &str| Element::new("value", ns::DATA_FORMS).with_text(v);
        let option = |v: &str| Element::new("option", ns::DATA_FORMS).with_child(value(v));
        let boolean = |b: bool| value(if b { "1" } else { "0" });
        let mut access = field("pubsub#access_model", "list-single", "Access model")
            .with_child(value(self.access_model.as_str()));
        for m in ["open", "presence", "roster", "whitelist"] {
            access = access.with_child(option(m));
        }
        let mut groups = field(
            "pubsub#roster_groups_allowed",
            "list-multi",
            "Roster groups allowed to access the node",
        );
        for g in &self.roster_groups_allowed {
            groups = groups.with_child(value(g));
        }
        let mut send_last = field(
            "pubsub#send_last_published_item",
            "list-single",
            "When to send the last published item",
        )
        .with_child(value(self.send_last_published_item.as_str()));
        for s in ["never", "on_sub", "on_sub_and_presence"] {
            send_last = send_last.with_child(option(s));
        }
        Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(
                Element::new("field", ns::DATA_FORMS)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(value(NS_NODE_CONFIG)),
            )
            .with_child(
                field(
                    "pubsub#title",
                    "text-single",
                    "A friendly name for the node",
                )
                .with_child(value(self.title.as_deref().unwrap_or(node))),
            )
            .with_child(access)
            .with_child(groups)
            .with_child(
                field(
                    "pubsub#max_items",
                    "text-single",
                    "Max # of items to persist",
                )
                .with_child(value(&self.max_items.as_string())),
            )
            .with_child(
                field(
                    "pubsub#persist_items",
                    "boolean",
                    "Persist items to storage",
                )
                .with_child(boolean(self.persist_items)),
            )
            .with_child(
                field(
                    "pubsub#notify_retract",
                    "boolean",
                    "Notify subscribers when items are removed from the node",
                )
                .with_child(boolean(self.notify_retract)),
            )
            .with_child(
                field(
                    "pubsub#notify_delete",
                    "boolean",
                    "Notify subscribers when the node is deleted",
                )
                .with_child(boolean(self.notify_delete)),
            )
            .with_child(
                field(
                    "pubsub#deliver_payloads",
                    "boolean",
                    "Deliver payloads with event notifications",
                )
                .with_child(boolean(self.deliver_payloads)),
            )
            .with_child(send_last)
    }
}

/// The application-specific conditions of `pubsub#errors` (§14) this server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum App {
    /// `<unsupported feature='…'/>`: the feature named is not implemented.
    Unsupported(&'static str),
    PreconditionNotMet,
    NodeidRequired,
    ItemRequired,
    ItemForbidden,
    InvalidPayload,
    PayloadTooBig,
    InvalidOptions,
    InvalidJid,
    PresenceSubscriptionRequired,
    NotInRosterGroup,
    ClosedNode,
    MaxNodesExceeded,
    MaxItemsExceeded,
}

impl App {
    fn name(&self) -> &'static str {
        match self {
            App::Unsupported(_) => "unsupported",
            App::PreconditionNotMet => "precondition-not-met",
            App::NodeidRequired => "nodeid-required",
            App::ItemRequired => "item-required",
            App::ItemForbidden => "item-forbidden",
            App::InvalidPayload => "invalid-payload",
            App::PayloadTooBig => "payload-too-big",
            App::InvalidOptions => "invalid-options",
            App::InvalidJid => "invalid-jid",
            App::PresenceSubscriptionRequired => "presence-subscription-required",
            App::NotInRosterGroup => "not-in-roster-group",
            App::ClosedNode => "closed-node",
            App::MaxNodesExceeded => "max-nodes-exceeded",
            App::MaxItemsExceeded => "max-items-exceeded",
        }
    }

    pub fn element(&self) -> Element {
        let el = Element::new(self.name(), NS_ERRORS);
        match self {
            App::Unsupported(feature) => el.with_attr("feature", *feature),
            _ => el,
        }
    }
}

/// A refused request: the stanza error condition (its type is RFC 6120's default for it,
/// which is the type XEP-0060's examples give) and the `pubsub#errors` element, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubError {
    pub condition: Cond,
    pub app: Option<App>,
}

impl PubsubError {
    pub fn new(condition: Cond, app: Option<App>) -> Self {
        PubsubError { condition, app }
    }
    pub fn bad_request(app: Option<App>) -> Self {
        PubsubError::new(Cond::BadRequest, app)
    }
    /// `feature-not-implemented` + `<unsupported feature='…'/>`.
    pub fn unsupported(feature: &'static str) -> Self {
        PubsubError::new(Cond::FeatureNotImplemented, Some(App::Unsupported(feature)))
    }
    pub fn item_not_found() -> Self {
        PubsubError::new(Cond::ItemNotFound, None)
    }
    pub fn forbidden() -> Self {
        PubsubError::new(Cond::Forbidden, None)
    }

    /// The error reply to `iq` (RFC 6120 §8.3.1) with the application element after the
    /// condition.
    pub fn reply_to(&self, iq: &Element) -> Element {
        let mut reply = stanza_error_reply(iq, self.condition, None);
        if let Some(app) = &self.app {
            if let Some(err) = reply.get_child_mut("error", &iq.ns) {
                err.children.push(Node::Element(app.element()));
            }
        }
        reply
    }
}

/// One request of `<pubsub/>` or `<pubsub xmlns='…#owner'/>` as PEP serves it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// §7.1: one `<item/>` (id optional) with at most one payload, and the publish-options.
    Publish {
        node: String,
        id: Option<String>,
        payload: Option<Element>,
        options: Option<Fields>,
    },
    /// §6.5: all items, the `max_items` latest, or the ones named.
    Items {
        node: String,
        max_items: Option<u32>,
        ids: Vec<String>,
    },
    /// §7.2.
    Retract {
        node: String,
        ids: Vec<String>,
        notify: Option<bool>,
    },
    /// §8.1: a named node (instant nodes are not supported), with an optional configuration.
    Create {
        node: String,
        config: Option<Fields>,
    },
    /// §8.2: the configuration form.
    ConfigureGet { node: String },
    /// §8.2.4: submit (or `cancel`: `None`).
    ConfigureSet {
        node: String,
        fields: Option<Fields>,
    },
    /// §8.3: the default configuration form.
    Default,
    /// §8.4.
    Delete { node: String },
    /// §8.5.
    Purge { node: String },
    /// §5.6 (entity's subscriptions) and §8.8 (owner's view of a node's subscriptions).
    Subscriptions { node: Option<String>, owner: bool },
    /// §5.7 (entity's affiliations) and §8.9 (owner's view).
    Affiliations { node: Option<String>, owner: bool },
    /// §6.1: an explicit subscription.
    Subscribe { node: String, jid: String },
    /// §6.2.
    Unsubscribe { node: String, jid: String },
}

fn node_attr(el: &Element) -> Result<String, PubsubError> {
    match el.attr("node") {
        Some(n) if !n.is_empty() => Ok(n.to_owned()),
        _ => Err(PubsubError::bad_request(Some(App::NodeidRequired))),
    }
}

/// Parse the `<pubsub/>` child of an IQ of type `set` (`is_set`) or `get`. A pubsub element
/// must hold exactly one request (with `<publish-options/>` or `<options/>` beside it).
pub fn parse(pubsub: &Element, is_set: bool) -> Result<Request, PubsubError> {
    let owner = pubsub.ns.as_str() == NS_OWNER;
    if !owner && pubsub.ns.as_str() != NS_PUBSUB || pubsub.name != "pubsub" {
        return Err(PubsubError::bad_request(None));
    }
    let ns = pubsub.ns.as_str();
    // `<create/>` may come with `<configure/>` (§8.1.3), `<publish/>` with
    // `<publish-options/>`, and `<subscribe/>` with `<options/>`.
    let mut actions = pubsub.children().filter(|c| {
        owner || !matches!(c.name.as_str(), "publish-options" | "options" | "configure")
    });
    let Some(first) = actions.next() else {
        return Err(PubsubError::bad_request(None));
    };
    if actions.next().is_some() {
        return Err(PubsubError::bad_request(None));
    }
    let mode_ok = |want_set: bool| {
        if is_set == want_set {
            Ok(())
        } else {
            Err(PubsubError::bad_request(None))
        }
    };
    match (owner, first.name.as_str()) {
        (false, "publish") => {
            mode_ok(true)?;
            let node = node_attr(first)?;
            let items: Vec<&Element> = first.children().filter(|c| c.is("item", ns)).collect();
            let item = match items.as_slice() {
                [item] => *item,
                // §7.1.3.6: no item (PEP nodes are persistent and carry payloads).
                [] => return Err(PubsubError::bad_request(Some(App::ItemRequired))),
                // XEP-0060 1.15: one item per publish request.
                _ => return Err(PubsubError::bad_request(Some(App::InvalidPayload))),
            };
            let mut payloads = item.children();
            let payload = payloads.next().cloned();
            if payloads.next().is_some() {
                // §7.1.3.5: more than one payload element.
                return Err(PubsubError::bad_request(Some(App::InvalidPayload)));
            }
            let options = match pubsub.get_child("publish-options", ns) {
                None => None,
                Some(po) => match po.children().find(|c| c.is("x", ns::DATA_FORMS)) {
                    Some(x) => Some(
                        form_fields(x, NS_PUBLISH_OPTIONS)
                            .map_err(|_| PubsubError::bad_request(Some(App::InvalidOptions)))?,
                    ),
                    None => None,
                },
            };
            Ok(Request::Publish {
                node,
                id: item.attr("id").filter(|i| !i.is_empty()).map(str::to_owned),
                payload,
                options,
            })
        }
        (false, "items") => {
            mode_ok(false)?;
            let node = node_attr(first)?;
            let max_items = match first.attr("max_items") {
                None => None,
                Some(m) => Some(m.parse().map_err(|_| PubsubError::bad_request(None))?),
            };
            let ids = first
                .children()
                .filter(|c| c.is("item", ns))
                .filter_map(|c| c.attr("id").map(str::to_owned))
                .collect();
            Ok(Request::Items {
                node,
                max_items,
                ids,
            })
        }
        (false, "retract") => {
            mode_ok(true)?;
            let node = node_attr(first)?;
            let ids: Vec<String> = first
                .children()
                .filter(|c| c.is("item", ns))
                .filter_map(|c| c.attr("id").filter(|i| !i.is_empty()).map(str::to_owned))
                .collect();
            if ids.is_empty() {
                // §7.2.3.3: no item id.
                return Err(PubsubError::bad_request(Some(App::ItemRequired)));
            }
            let notify = match first.attr("notify") {
                None => None,
                Some(v) => Some(parse_bool(v).ok_or_else(|| PubsubError::bad_request(None))?),
            };
            Ok(Request::Retract { node, ids, notify })
        }
        (false, "create") => {
            mode_ok(true)?;
            let Ok(node) = node_attr(first) else {
                // §8.1.2: instant nodes are for a pubsub service; PEP nodes are named.
                return Err(PubsubError::new(
                    Cond::NotAcceptable,
                    Some(App::NodeidRequired),
                ));
            };
            let config = match pubsub
                .get_child("configure", ns)
                .and_then(|c| c.children().find(|x| x.is("x", ns::DATA_FORMS)))
            {
                Some(x) => Some(form_fields(x, NS_NODE_CONFIG)?),
                None => None,
            };
            Ok(Request::Create { node, config })
        }
        (false, "subscribe") => {
            mode_ok(true)?;
            Ok(Request::Subscribe {
                node: node_attr(first)?,
                jid: first.attr("jid").unwrap_or_default().to_owned(),
            })
        }
        (false, "unsubscribe") => {
            mode_ok(true)?;
            Ok(Request::Unsubscribe {
                node: node_attr(first)?,
                jid: first.attr("jid").unwrap_or_default().to_owned(),
            })
        }
        (_, "subscriptions") if !is_set || !owner => {
            mode_ok(false)?;
            Ok(Request::Subscriptions {
                node: first.attr("node").map(str::to_owned),
                owner,
            })
        }
        (_, "affiliations") if !is_set || !owner => {
            mode_ok(false)?;
            Ok(Request::Affiliations {
                node: first.attr("node").map(str::to_owned),
                owner,
            })
        }
        (true, "configure") if !is_set => Ok(Request::ConfigureGet {
            node: node_attr(first)?,
        }),
        (true, "configure") => {
            let node = node_attr(first)?;
            let Some(x) = first.children().find(|c| c.is("x", ns::DATA_FORMS)) else {
                return Err(PubsubError::bad_request(None));
            };
            if x.attr("type") == Some("cancel") {
                return Ok(Request::ConfigureSet { node, fields: None });
            }
            Ok(Request::ConfigureSet {
                node,
                fields: Some(form_fields(x, NS_NODE_CONFIG)?),
            })
        }
        (true, "default") => {
            mode_ok(false)?;
            Ok(Request::Default)
        }
        (true, "delete") => {
            mode_ok(true)?;
            Ok(Request::Delete {
                node: node_attr(first)?,
            })
        }
        (true, "purge") => {
            mode_ok(true)?;
            Ok(Request::Purge {
                node: node_attr(first)?,
            })
        }
        (true, "subscriptions" | "affiliations") => {
            // §8.8.2, §8.9.2: a PEP node has one owner and its subscribers are its
            // owner's contacts; neither is changed this way.
            Err(PubsubError::unsupported(if first.name == "subscriptions" {
                "manage-subscriptions"
            } else {
                "modify-affiliations"
            }))
        }
        _ => Err(PubsubError::new(Cond::FeatureNotImplemented, None)),
    }
}

/// One stored item: its id and its payload (`None` for a payload-less item).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub payload: Option<Element>,
}

fn item_element(ns: &str, item: &Item, with_payload: bool) -> Element {
    let mut el = Element::new("item", ns).with_attr("id", item.id.as_str());
    if let (true, Some(p)) = (with_payload, &item.payload) {
        el = el.with_child(p.clone());
    }
    el
}

/// The answer to an items request (§6.5.2): `<pubsub><items node=…><item id=…>…`.
pub fn items_result(node: &str, items: &[Item]) -> Element {
    let mut el = Element::new("items", NS_PUBSUB).with_attr("node", node);
    for i in items {
        el = el.with_child(item_element(NS_PUBSUB, i, true));
    }
    Element::new("pubsub", NS_PUBSUB).with_child(el)
}

/// The answer to a publish (§7.1.2): the item id, which the publisher may not know.
pub fn publish_result(node: &str, id: &str) -> Element {
    Element::new("pubsub", NS_PUBSUB).with_child(
        Element::new("publish", NS_PUBSUB)
            .with_attr("node", node)
            .with_child(Element::new("item", NS_PUBSUB).with_attr("id", id)),
    )
}

/// The owner's configuration form (§8.2.1).
pub fn configure_result(node: &str, config: &NodeConfig) -> Element {
    Element::new("pubsub", NS_OWNER).with_child(
        Element::new("configure", NS_OWNER)
            .with_attr("node", node)
            .with_child(config.to_form(node)),
    )
}

/// The default configuration (§8.3.2).
pub fn default_result(config: &NodeConfig) -> Element {
    Element::new("pubsub", NS_OWNER)
        .with_child(Element::new("default", NS_OWNER).with_child(config.to_form("")))
}

/// The affiliations answer: the owner's own (§5.7.2, `owner` false) or the node's (§8.9.1.2).
pub fn affiliations_result(owner_view: bool, nodes: &[String], owner: &Jid) -> Element {
    let ns = if owner_view { NS_OWNER } else { NS_PUBSUB };
    let mut affs = Element::new("affiliations", ns);
    if owner_view {
        if let Some(node) = nodes.first() {
            affs.set_attr("node", node.as_str());
            affs = affs.with_child(
                Element::new("affiliation", ns)
                    .with_attr("jid", owner.to_string())
                    .with_attr("affiliation", "owner"),
            );
        }
    } else {
        for n in nodes {
            affs = affs.with_child(
                Element::new("affiliation", ns)
                    .with_attr("node", n.as_str())
                    .with_attr("affiliation", "owner"),
            );
        }
    }
    Element::new("pubsub", ns).with_child(affs)
}

/// A notification (§7.1.2.1): `<message type='headline'><event><items node>…`. The
/// caller sets `from` (the PEP service: the account's bare JID) and `to`.
fn event_message(inner: Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("type", "headline")
        .with_child(Element::new("event", NS_EVENT).with_child(inner))
}

/// New or updated items (§7.1.2.1), without payloads when the node says so (§7.1.2.2).
pub fn event_items(node: &str, items: &[Item], with_payload: bool) -> Element {
    let mut el = Element::new("items", NS_EVENT).with_attr("node", node);
    for i in items {
        el = el.with_child(item_element(NS_EVENT, i, with_payload));
    }
    event_message(el)
}

/// Items retracted (§7.2.2.1).
pub fn event_retract(node: &str, ids: &[String]) -> Element {
    let mut el = Element::new("items", NS_EVENT).with_attr("node", node);
    for id in ids {
        el = el.with_child(Element::new("retract", NS_EVENT).with_attr("id", id.as_str()));
    }
    event_message(el)
}

/// The node was deleted (§8.4.2).
pub fn event_delete(node: &str) -> Element {
    event_message(Element::new("delete", NS_EVENT).with_attr("node", node))
}

/// The node was purged (§8.5.2).
pub fn event_purge(node: &str) -> Element {
    event_message(Element::new("purge", NS_EVENT).with_attr("node", node))
}

/// The PEP node a notification is about, if `message` is one (§7.1.2.1, §8.4.2, §8.5.2).
pub fn event_node(message: &Element) -> Option<&str> {
    let event = message.get_child("event", NS_EVENT)?;
    event.children().find_map(|c| c.attr("node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubsub(inner: &str) -> Element {
        Element::parse(&format!("<pubsub xmlns='{NS_PUBSUB}'>{inner}</pubsub>")).unwrap()
    }
    fn owner(inner: &str) -> Element {
        Element::parse(&format!("<pubsub xmlns='{NS_OWNER}'>{inner}</pubsub>")).unwrap()
    }
    fn options(fields: &str) -> String {
        format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{NS_PUBLISH_OPTIONS}</value></field>\
             {fields}</x></publish-options>"
        )
    }

    #[test]
    fn publish_with_and_without_id_and_options() {
        let r = parse(
            &pubsub("<publish node='urn:x'><item id='a'><p xmlns='urn:p'/></item></publish>"),
            true,
        )
        .unwrap();
        let Request::Publish {
            node,
            id,
            payload,
            options: opts,
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!((node.as_str(), id.as_deref()), ("urn:x", Some("a")));
        assert!(payload.unwrap().is("p", "urn:p"));
        assert!(opts.is_none());

        let r = parse(
            &pubsub(&format!(
                "<publish node='n'><item/></publish>{}",
                options(
                    "<field var='pubsub#access_model'><value>open</value></field>\
                     <field var='pubsub#max_items'><value>max</value></field>"
                )
            )),
            true,
        )
        .unwrap();
        let Request::Publish { id, options, .. } = r else {
            panic!()
        };
        assert_eq!(id, None);
        assert_eq!(
            options.unwrap(),
            vec![
                ("pubsub#access_model".to_owned(), vec!["open".to_owned()]),
                ("pubsub#max_items".to_owned(), vec!["max".to_owned()]),
            ]
        );
    }

    #[test]
    fn publish_errors_as_listed() {
        let cases = [
            (
                "<publish><item/></publish>",
                Cond::BadRequest,
                Some(App::NodeidRequired),
            ),
            (
                "<publish node='n'/>",
                Cond::BadRequest,
                Some(App::ItemRequired),
            ),
            (
                "<publish node='n'><item><a xmlns='a'/><b xmlns='b'/></item></publish>",
                Cond::BadRequest,
                Some(App::InvalidPayload),
            ),
            (
                "<publish node='n'><item id='1'/><item id='2'/></publish>",
                Cond::BadRequest,
                Some(App::InvalidPayload),
            ),
        ];
        for (xml, cond, app) in cases {
            assert_eq!(
                parse(&pubsub(xml), true),
                Err(PubsubError::new(cond, app)),
                "{xml}"
            );
        }
        // A publish-options form of another FORM_TYPE.
        let bad = "<publish node='n'><item/></publish><publish-options>\
                   <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>\
                   <value>urn:other</value></field></x></publish-options>";
        assert_eq!(
            parse(&pubsub(bad), true),
            Err(PubsubError::bad_request(Some(App::InvalidOptions)))
        );
        // A publish is a set.
        assert!(parse(&pubsub("<publish node='n'><item/></publish>"), false).is_err());
    }

    #[test]
    fn items_retract_and_owner_requests() {
        assert_eq!(
            parse(&pubsub("<items node='n' max_items='2'/>"), false),
            Ok(Request::Items {
                node: "n".into(),
                max_items: Some(2),
                ids: vec![]
            })
        );
        assert_eq!(
            parse(
                &pubsub("<items node='n'><item id='a'/><item id='b'/></items>"),
                false
            ),
            Ok(Request::Items {
                node: "n".into(),
                max_items: None,
                ids: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            parse(
                &pubsub("<retract node='n' notify='true'><item id='a'/></retract>"),
                true
            ),
            Ok(Request::Retract {
                node: "n".into(),
                ids: vec!["a".into()],
                notify: Some(true)
            })
        );
        assert_eq!(
            parse(&pubsub("<retract node='n'/>"), true),
            Err(PubsubError::bad_request(Some(App::ItemRequired)))
        );
        assert_eq!(
            parse(&owner("<delete node='n'/>"), true),
            Ok(Request::Delete { node: "n".into() })
        );
        assert_eq!(
            parse(&owner("<purge node='n'/>"), true),
            Ok(Request::Purge { node: "n".into() })
        );
        assert_eq!(
            parse(&owner("<configure node='n'/>"), false),
            Ok(Request::ConfigureGet { node: "n".into() })
        );
        assert_eq!(parse(&owner("<default/>"), false), Ok(Request::Default));
        assert_eq!(
            parse(&pubsub("<create/>"), true),
            Err(PubsubError::new(
                Cond::NotAcceptable,
                Some(App::NodeidRequired)
            ))
        );
        assert_eq!(
            parse(&owner("<affiliations node='n'><affiliation jid='a@b' affiliation='owner'/></affiliations>"), true),
            Err(PubsubError::unsupported("modify-affiliations"))
        );
        assert_eq!(
            parse(&pubsub("<unknown-thing/>"), false),
            Err(PubsubError::new(Cond::FeatureNotImplemented, None))
        );
    }

    #[test]
    fn config_form_round_trips() {
        let mut c = NodeConfig {
            access_model: AccessModel::Roster,
            roster_groups_allowed: vec!["Friends".into(), "Family".into()],
            max_items: MaxItems::Max,
            persist_items: false,
            notify_retract: false,
            notify_delete: true,
            send_last_published_item: SendLast::Never,
            deliver_payloads: false,
            title: Some("t".into()),
        };
        let mut form = c.to_form("n");
        form.set_attr("type", "submit");
        let fields = form_fields(&form, NS_NODE_CONFIG).unwrap();
        let mut d = NodeConfig::default();
        d.apply(&fields, 100).unwrap();
        assert_eq!(c, d);
        // A numeric max over the cap is refused, the config unchanged.
        let before = c.clone();
        let over = vec![("pubsub#max_items".to_owned(), vec!["101".to_owned()])];
        assert_eq!(
            c.apply(&over, 100),
            Err(PubsubError::new(Cond::NotAcceptable, None))
        );
        assert_eq!(c, before);
        for bad in [
            ("pubsub#access_model", "authorize"),
            ("pubsub#persist_items", "yes"),
            ("pubsub#unknown", "1"),
            ("pubsub#send_last_published_item", "sometimes"),
        ] {
            let f = vec![(bad.0.to_owned(), vec![bad.1.to_owned()])];
            assert!(c.apply(&f, 100).is_err(), "{bad:?}");
        }
        assert_eq!(MaxItems::Max.resolve(50), 50);
        assert_eq!(MaxItems::Count(7).resolve(50), 7);
    }

    #[test]
    fn preconditions() {
        let c = NodeConfig::default();
        let f = |k: &str, v: &str| vec![(k.to_owned(), vec![v.to_owned()])];
        assert_eq!(
            c.check_preconditions(&f("pubsub#access_model", "presence")),
            Ok(())
        );
        assert_eq!(
            c.check_preconditions(&f("pubsub#persist_items", "true")),
            Ok(())
        );
        let not_met = Err(PubsubError::new(
            Cond::Conflict,
            Some(App::PreconditionNotMet),
        ));
        assert_eq!(
            c.check_preconditions(&f("pubsub#access_model", "open")),
            not_met
        );
        assert_eq!(
            c.check_preconditions(&f("pubsub#max_items", "max")),
            not_met
        );
        assert_eq!(
            c.check_preconditions(&f("pubsub#no_such_option", "1")),
            not_met
        );
    }

    #[test]
    fn error_reply_has_app_element() {
        let iq = Element::parse(
            "<iq xmlns='jabber:client' type='set' id='1' from='a@b/c'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
        )
        .unwrap();
        let r = PubsubError::new(Cond::Conflict, Some(App::PreconditionNotMet)).reply_to(&iq);
        let xml = r.to_xml_string();
        assert!(
            xml.contains("type='cancel'") || xml.contains("type=\"cancel\""),
            "{xml}"
        );
        let err = r.get_child("error", ns::CLIENT).unwrap();
        assert!(err.get_child("conflict", ns::STANZAS_ERRORS).is_some());
        assert!(err.get_child("precondition-not-met", NS_ERRORS).is_some());
        let r = PubsubError::unsupported("purge-nodes").reply_to(&iq);
        let err = r.get_child("error", ns::CLIENT).unwrap();
        assert_eq!(
            err.get_child("unsupported", NS_ERRORS)
                .and_then(|u| u.attr("feature")),
            Some("purge-nodes")
        );
    }

    #[test]
    fn events() {
        let items = [Item {
            id: "1".into(),
            payload: Some(Element::new("p", "urn:p")),
        }];
        let m = event_items("n", &items, true);
        assert_eq!(m.attr("type"), Some("headline"));
        assert_eq!(event_node(&m), Some("n"));
        let ev = m.get_child("event", NS_EVENT).unwrap();
        let it = ev
            .get_child("items", NS_EVENT)
            .unwrap()
            .get_child("item", NS_EVENT)
            .unwrap();
        assert!(it.get_child("p", "urn:p").is_some());
        let m = event_items("n", &items, false);
        let ev = m.get_child("event", NS_EVENT).unwrap();
        let it = ev
            .get_child("items", NS_EVENT)
            .unwrap()
            .get_child("item", NS_EVENT)
            .unwrap();
        assert!(it.children().next().is_none());
        assert_eq!(event_node(&event_delete("d")), Some("d"));
        assert_eq!(event_node(&event_purge("p")), Some("p"));
        assert_eq!(event_node(&event_retract("r", &["x".into()])), Some("r"));
    }
}
