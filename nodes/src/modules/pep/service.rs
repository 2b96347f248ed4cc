//! The PEP service of one account (XEP-0163 §4, on XEP-0060): requests answered from the
//! module store, access checked against the account's roster (XEP-0060 §4.5), limits of
//! `[modules.pep]`, notifications stated in the `AccountCtx` outbox.
//!
//! Store layout (module `pep`, per account): `n:<node>` → the node's [`NodeMeta`] (JSON:
//! configuration and item ids with their sizes, oldest first); `i:<node>\u{1}<id>` → the
//! item's payload XML (empty: no payload). `\u{1}` cannot occur in a node name (XML 1.0).

use std::ops::Bound;

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::im::Subscription;
use proto::jid::Jid;
use proto::ns;
use proto::pubsub::{self, AccessModel, App, Item, NodeConfig, PubsubError, Request, SendLast};
use serde::{Deserialize, Serialize};

use super::{compat, Limits};
use crate::modules::{AccountCtx, AccountIq, IqOutcome};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ItemMeta {
    pub(super) id: String,
    bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct NodeMeta {
    pub(super) config: NodeConfig,
    pub(super) items: Vec<ItemMeta>,
}

fn node_key(node: &str) -> String {
    format!("n:{node}")
}

fn item_key(node: &str, id: &str) -> String {
    format!("i:{node}\u{1}{id}")
}

fn internal(_: impl std::fmt::Debug) -> PubsubError {
    PubsubError::new(Cond::InternalServerError, None)
}

pub(super) fn load(ctx: &AccountCtx<'_>, node: &str) -> Result<Option<NodeMeta>, PubsubError> {
    match ctx
        .get(&node_key(node))
        .map_err(|c| PubsubError::new(c, None))?
    {
        Some(json) => serde_json::from_str(&json).map(Some).map_err(internal),
        None => Ok(None),
    }
}

fn save(ctx: &mut AccountCtx<'_>, node: &str, meta: &NodeMeta) -> Result<(), PubsubError> {
    let json = serde_json::to_string(meta).map_err(internal)?;
    ctx.put(node_key(node), Some(json));
    Ok(())
}

/// Every node of the account with its meta.
fn all_nodes(ctx: &AccountCtx<'_>) -> Result<Vec<(String, NodeMeta)>, PubsubError> {
    let range = ctx
        .module_store()
        .range(
            "pep",
            &ctx.account().to_string(),
            Bound::Included("n:"),
            Bound::Excluded("n;"),
            false,
        )
        .map_err(internal)?;
    let mut out = Vec::new();
    for kv in range {
        let (k, v) = kv.map_err(internal)?;
        let meta: NodeMeta = serde_json::from_str(&v).map_err(internal)?;
        out.push((k["n:".len()..].to_owned(), meta));
    }
    Ok(out)
}

pub(super) fn read_item(
    ctx: &AccountCtx<'_>,
    node: &str,
    id: &str,
) -> Result<Option<Item>, PubsubError> {
    let Some(xml) = ctx
        .get(&item_key(node, id))
        .map_err(|c| PubsubError::new(c, None))?
    else {
        return Ok(None);
    };
    let payload = if xml.is_empty() {
        None
    } else {
        Some(Element::parse(&xml).map_err(internal)?)
    };
    Ok(Some(Item {
        id: id.to_owned(),
        payload,
    }))
}

/// XEP-0060 §4.5 and §6.5.9: whether `from` may retrieve from (and be notified by) a node
/// with `config`; the account itself always may.
fn check_access(ctx: &AccountCtx<'_>, config: &NodeConfig, from: &Jid) -> Result<(), PubsubError> {
    if from.to_bare() == *ctx.account() {
        return Ok(());
    }
    match config.access_model {
        AccessModel::Open => Ok(()),
        AccessModel::Presence => {
            if ctx
                .may_see_presence(from)
                .map_err(|c| PubsubError::new(c, None))?
            {
                Ok(())
            } else {
                Err(PubsubError::new(
                    Cond::NotAuthorized,
                    Some(App::PresenceSubscriptionRequired),
                ))
            }
        }
        AccessModel::Roster => {
            let item = ctx
                .roster_item(from)
                .map_err(|c| PubsubError::new(c, None))?;
            let allowed = item.is_some_and(|i| {
                i.groups
                    .iter()
                    .any(|g| config.roster_groups_allowed.contains(g))
            });
            if allowed {
                Ok(())
            } else {
                Err(PubsubError::new(
                    Cond::NotAuthorized,
                    Some(App::NotInRosterGroup),
                ))
            }
        }
        // No one but the owner is on a PEP node's whitelist (affiliations are not managed).
        AccessModel::Whitelist => Err(PubsubError::new(Cond::NotAllowed, Some(App::ClosedNode))),
    }
}

/// Who is notified (XEP-0163 §4.3): the account's own resources (its bare JID) and the
/// contacts with a `from` or `both` subscription that the access model admits. Each
/// recipient's session keeps the notification only if its client asked for the node
/// (`+notify`).
fn recipients(ctx: &AccountCtx<'_>, config: &NodeConfig) -> Vec<Jid> {
    let mut out = vec![ctx.account().clone()];
    if config.access_model == AccessModel::Whitelist {
        return out;
    }
    let Ok(roster) = ctx.roster() else {
        return out;
    };
    for item in roster {
        if !Subscription::parse(&item.subscription).is_some_and(Subscription::has_from) {
            continue;
        }
        if config.access_model == AccessModel::Roster
            && !item
                .groups
                .iter()
                .any(|g| config.roster_groups_allowed.contains(g))
        {
            continue;
        }
        if let Ok(j) = Jid::parse(&item.jid) {
            out.push(j);
        }
    }
    out
}

fn notify(ctx: &mut AccountCtx<'_>, config: &NodeConfig, message: Element) {
    for to in recipients(ctx, config) {
        let mut m = message.clone();
        m.set_attr("to", to.to_string());
        ctx.send(m);
    }
}

pub(super) fn iq(limits: &Limits, ctx: &mut AccountCtx<'_>, req: &AccountIq<'_>) -> IqOutcome {
    let Some(pubsub) = req.iq.children().next() else {
        return IqOutcome::Error(Cond::BadRequest);
    };
    if pubsub.is("query", ns::DISCO_ITEMS) {
        if req.is_set() {
            return IqOutcome::Error(Cond::BadRequest);
        }
        let result = disco_items(ctx, req.from, pubsub.attr("node")).map(Some);
        return outcome(ctx, result);
    }
    let result = pubsub::parse(pubsub, req.is_set()).and_then(|r| handle(limits, ctx, req, r));
    outcome(ctx, result)
}

/// The IQ's outcome, with XEP-0060's application condition beside the stanza error.
fn outcome(ctx: &mut AccountCtx<'_>, result: Result<Option<Element>, PubsubError>) -> IqOutcome {
    match result {
        Ok(payload) => IqOutcome::Result(payload),
        Err(e) => {
            if let Some(app) = &e.app {
                ctx.app_error(app.element());
            }
            // Profanity 0.13 treats a device list request answered `item-not-found` as "no
            // OMEMO device yet" (and then publishes its own list) only when the error carries
            // XEP-0086's `code='404'`, as ejabberd's do; without it `/omemo gen` never
            // announces the device and its contacts cannot encrypt to it.
            ctx.legacy_error_code();
            IqOutcome::Error(e.condition)
        }
    }
}

/// XEP-0060 §5.2 and §5.5 on an account (XEP-0163 §9): its nodes that `from` may access,
/// or the items of one of them (by id, as `name`).
fn disco_items(
    ctx: &AccountCtx<'_>,
    from: &Jid,
    node: Option<&str>,
) -> Result<Element, PubsubError> {
    let account = ctx.account().to_string();
    let item = |node: &str| {
        Element::new("item", ns::DISCO_ITEMS)
            .with_attr("jid", account.as_str())
            .with_attr("node", node)
    };
    let mut query = Element::new("query", ns::DISCO_ITEMS);
    match node {
        None => {
            for (name, meta) in all_nodes(ctx)? {
                if check_access(ctx, &meta.config, from).is_ok() {
                    query = query.with_child(item(&name));
                }
            }
        }
        Some(name) => {
            let meta = load(ctx, name)?.ok_or_else(PubsubError::item_not_found)?;
            check_access(ctx, &meta.config, from)?;
            query.set_attr("node", name);
            for i in &meta.items {
                query = query.with_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", account.as_str())
                        .with_attr("name", i.id.as_str()),
                );
            }
        }
    }
    Ok(query)
}

fn handle(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    req: &AccountIq<'_>,
    r: Request,
) -> Result<Option<Element>, PubsubError> {
    let owner_only = !matches!(
        r,
        Request::Items { .. } | Request::Subscriptions { .. } | Request::Affiliations { .. }
    );
    if owner_only && !req.own {
        if let Request::Subscribe { .. } | Request::Unsubscribe { .. } = r {
            return Err(PubsubError::unsupported("subscribe"));
        }
        // XEP-0163 §3: only the account publishes to and manages its nodes.
        return Err(PubsubError::forbidden());
    }
    match r {
        Request::Publish {
            node,
            id,
            payload,
            options,
        } => {
            let (result, meta, item) = publish(limits, ctx, &node, id, payload, options)?;
            compat::after_own_publish(limits, ctx, &node, &meta, &item);
            Ok(Some(result))
        }
        Request::Items {
            node,
            max_items,
            ids,
        } => {
            let meta = load(ctx, &node)?.ok_or_else(PubsubError::item_not_found)?;
            check_access(ctx, &meta.config, req.from)?;
            let wanted: Vec<&ItemMeta> = if !ids.is_empty() {
                meta.items.iter().filter(|i| ids.contains(&i.id)).collect()
            } else {
                let skip = max_items.map_or(0, |m| meta.items.len().saturating_sub(m as usize));
                meta.items.iter().skip(skip).collect()
            };
            if !ids.is_empty() && wanted.is_empty() {
                return Err(PubsubError::item_not_found());
            }
            let mut items = Vec::new();
            for i in wanted {
                if let Some(it) = read_item(ctx, &node, &i.id)? {
                    items.push(it);
                }
            }
            Ok(Some(pubsub::items_result(&node, &items)))
        }
        Request::Retract {
            node,
            ids,
            notify: n,
        } => {
            let mut meta = load(ctx, &node)?.ok_or_else(PubsubError::item_not_found)?;
            if !ids.iter().all(|id| meta.items.iter().any(|i| i.id == *id)) {
                return Err(PubsubError::item_not_found());
            }
            meta.items.retain(|i| !ids.contains(&i.id));
            for id in &ids {
                ctx.put(item_key(&node, id), None);
            }
            save(ctx, &node, &meta)?;
            if n.unwrap_or(meta.config.notify_retract) {
                notify(ctx, &meta.config, pubsub::event_retract(&node, &ids));
            }
            compat::after_own_removal(limits, ctx, &node, &meta);
            Ok(None)
        }
        Request::Create { node, config } => {
            if load(ctx, &node)?.is_some() {
                return Err(PubsubError::new(Cond::Conflict, None));
            }
            let mut meta = NodeMeta {
                config: NodeConfig::default(),
                items: Vec::new(),
            };
            if let Some(fields) = config {
                meta.config.apply(&fields, limits.max_items_per_node)?;
            }
            check_node_count(limits, ctx)?;
            save(ctx, &node, &meta)?;
            Ok(None)
        }
        Request::ConfigureGet { node } => {
            let meta = load(ctx, &node)?.ok_or_else(PubsubError::item_not_found)?;
            Ok(Some(pubsub::configure_result(&node, &meta.config)))
        }
        Request::ConfigureSet { node, fields } => {
            let mut meta = load(ctx, &node)?.ok_or_else(PubsubError::item_not_found)?;
            if let Some(fields) = fields {
                meta.config.apply(&fields, limits.max_items_per_node)?;
                trim(limits, ctx, &node, &mut meta);
                save(ctx, &node, &meta)?;
            }
            Ok(None)
        }
        Request::Default => Ok(Some(pubsub::default_result(&NodeConfig::default()))),
        Request::Delete { node } => {
            let meta = load(ctx, &node)?.ok_or_else(PubsubError::item_not_found)?;
            for i in &meta.items {
                ctx.put(item_key(&node, &i.id), None);
            }
            ctx.put(node_key(&node), None);
            if meta.config.notify_delete {
                notify(ctx, &meta.config, pubsub::event_delete(&node));
            }
            let gone = NodeMeta {
                items: Vec::new(),
                ..meta
            };
            compat::after_own_removal(limits, ctx, &node, &gone);
            Ok(None)
        }
        Request::Purge { node } => {
            let mut meta = load(ctx, &node)?.ok_or_else(PubsubError::item_not_found)?;
            for i in &meta.items {
                ctx.put(item_key(&node, &i.id), None);
            }
            meta.items.clear();
            save(ctx, &node, &meta)?;
            notify(ctx, &meta.config, pubsub::event_purge(&node));
            compat::after_own_removal(limits, ctx, &node, &meta);
            Ok(None)
        }
        Request::Subscriptions { node, owner } => {
            // Subscriptions to PEP nodes are implicit (presence and caps, §4.3): none to list.
            let ns = if owner {
                pubsub::NS_OWNER
            } else {
                pubsub::NS_PUBSUB
            };
            let mut el = Element::new("subscriptions", ns);
            if let Some(n) = node {
                el.set_attr("node", n);
            }
            Ok(Some(Element::new("pubsub", ns).with_child(el)))
        }
        Request::Affiliations { node, owner } => {
            let nodes: Vec<String> = if !req.own {
                Vec::new()
            } else if let Some(n) = node {
                load(ctx, &n)?.ok_or_else(PubsubError::item_not_found)?;
                vec![n]
            } else {
                all_nodes(ctx)?.into_iter().map(|(n, _)| n).collect()
            };
            Ok(Some(pubsub::affiliations_result(
                owner,
                &nodes,
                ctx.account(),
            )))
        }
        Request::Subscribe { .. } | Request::Unsubscribe { .. } => {
            Err(PubsubError::unsupported("subscribe"))
        }
    }
}

fn check_node_count(limits: &Limits, ctx: &mut AccountCtx<'_>) -> Result<(), PubsubError> {
    if all_nodes(ctx)?.len() >= limits.max_nodes {
        ctx.over_cap("modules.pep.max_nodes", limits.max_nodes);
        return Err(PubsubError::new(
            Cond::NotAllowed,
            Some(App::MaxNodesExceeded),
        ));
    }
    Ok(())
}

/// Drop the oldest items beyond the node's `max_items` (and all of them when items are not
/// persisted).
fn trim(limits: &Limits, ctx: &mut AccountCtx<'_>, node: &str, meta: &mut NodeMeta) {
    let keep = if meta.config.persist_items {
        meta.config.max_items.resolve(limits.max_items_per_node) as usize
    } else {
        0
    };
    while meta.items.len() > keep {
        let old = meta.items.remove(0);
        ctx.put(item_key(node, &old.id), None);
    }
}

/// Publish one item (XEP-0060 §7.1) and notify; the result's payload, the node as it is
/// now and the item published.
pub(super) fn publish(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    node: &str,
    id: Option<String>,
    payload: Option<Element>,
    options: Option<pubsub::Fields>,
) -> Result<(Element, NodeMeta, Item), PubsubError> {
    let mut meta = match load(ctx, node)? {
        Some(meta) => {
            // XEP-0060 §7.1.5: the node's configuration must be what the publisher needs.
            if let Some(fields) = &options {
                meta.config.check_preconditions(fields)?;
            }
            meta
        }
        None => {
            // XEP-0163 §3: auto-create, with the publish-options as its configuration.
            let mut config = NodeConfig::default();
            if let Some(fields) = &options {
                config
                    .apply(fields, limits.max_items_per_node)
                    .map_err(|_| PubsubError::new(Cond::Conflict, Some(App::PreconditionNotMet)))?;
            }
            check_node_count(limits, ctx)?;
            NodeMeta {
                config,
                items: Vec::new(),
            }
        }
    };
    let xml = payload
        .as_ref()
        .map(|p| p.to_xml_string())
        .unwrap_or_default();
    if xml.len() > limits.max_item_bytes {
        ctx.over_cap("modules.pep.max_item_bytes", limits.max_item_bytes);
        return Err(PubsubError::new(
            Cond::NotAcceptable,
            Some(App::PayloadTooBig),
        ));
    }
    let id = id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    meta.items.retain(|i| i.id != id);
    meta.items.push(ItemMeta {
        id: id.clone(),
        bytes: xml.len(),
    });
    trim(limits, ctx, node, &mut meta);
    // The account's total, counted as it will be after this publish.
    let total: usize = all_nodes(ctx)?
        .iter()
        .filter(|(n, _)| n != node)
        .flat_map(|(_, m)| m.items.iter().map(|i| i.bytes))
        .sum::<usize>()
        + meta.items.iter().map(|i| i.bytes).sum::<usize>();
    if total > limits.max_bytes_per_account {
        ctx.over_cap(
            "modules.pep.max_bytes_per_account",
            limits.max_bytes_per_account,
        );
        return Err(PubsubError::new(Cond::PolicyViolation, None));
    }
    if meta.items.iter().any(|i| i.id == id) {
        ctx.put(item_key(node, &id), Some(xml));
    }
    save(ctx, node, &meta)?;
    let item = Item {
        id: id.clone(),
        payload,
    };
    let event = pubsub::event_items(
        node,
        std::slice::from_ref(&item),
        meta.config.deliver_payloads,
    );
    notify(ctx, &meta.config, event);
    Ok((pubsub::publish_result(node, &id), meta, item))
}

/// Make `node`'s items exactly `desired` (in that order), creating the node with `config`
/// if it does not exist: changed and new items are published, missing ones retracted, each
/// with one notification. For a node whose content another specification's store mirrors
/// (XEP-0402 §3); call it at most once per node in one request (it reads the committed
/// state).
pub(super) fn replace_items(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    node: &str,
    config: NodeConfig,
    desired: Vec<Item>,
) -> Result<(), PubsubError> {
    let mut meta = match load(ctx, node)? {
        Some(meta) => meta,
        None => {
            check_node_count(limits, ctx)?;
            NodeMeta {
                config,
                items: Vec::new(),
            }
        }
    };
    let mut retracted = Vec::new();
    meta.items.retain(|i| {
        let keep = desired.iter().any(|d| d.id == i.id);
        if !keep {
            retracted.push(i.id.clone());
        }
        keep
    });
    for id in &retracted {
        ctx.put(item_key(node, id), None);
    }
    let mut published = Vec::new();
    for item in desired {
        let xml = item
            .payload
            .as_ref()
            .map(|p| p.to_xml_string())
            .unwrap_or_default();
        let stored = ctx.get(&item_key(node, &item.id)).ok().flatten();
        meta.items.retain(|i| i.id != item.id);
        meta.items.push(ItemMeta {
            id: item.id.clone(),
            bytes: xml.len(),
        });
        if stored.as_deref() != Some(xml.as_str()) {
            ctx.put(item_key(node, &item.id), Some(xml));
            published.push(item);
        }
    }
    trim(limits, ctx, node, &mut meta);
    save(ctx, node, &meta)?;
    if !published.is_empty() {
        let event = pubsub::event_items(node, &published, meta.config.deliver_payloads);
        notify(ctx, &meta.config, event);
    }
    if !retracted.is_empty() && meta.config.notify_retract {
        notify(ctx, &meta.config, pubsub::event_retract(node, &retracted));
    }
    Ok(())
}

/// XEP-0163 §4.3.2: the last item of every node that sends it on presence, to `who`, which
/// just came online (its session keeps those its client asked for).
pub(super) fn send_last_items(ctx: &mut AccountCtx<'_>, who: &Jid) {
    let Ok(nodes) = all_nodes(ctx) else {
        return;
    };
    for (node, meta) in nodes {
        if meta.config.send_last_published_item != SendLast::OnSubAndPresence
            || check_access(ctx, &meta.config, who).is_err()
        {
            continue;
        }
        let Some(last) = meta.items.last() else {
            continue;
        };
        let Ok(Some(item)) = read_item(ctx, &node, &last.id) else {
            continue;
        };
        let mut m = pubsub::event_items(&node, &[item], meta.config.deliver_payloads);
        m.set_attr("to", who.to_string());
        ctx.send(m);
    }
}
