//! XEP-0402 §3 compatibility (`#compat`, `#compat-pep`): the account's bookmarks are one
//! list with three views, kept equal whichever a client writes: XEP-0402's node
//! `urn:xmpp:bookmarks:1` (an item per room), XEP-0048's `<storage/>` in private XML
//! storage (XEP-0049, the `private` module's entries) and XEP-0048's PEP node
//! `storage:bookmarks` (one item, `current`). Legacy `<url/>` entries, which XEP-0402 has no
//! form for, stay in the legacy views.

use proto::bookmarks::{self as bm, Bookmark, LEGACY_ITEM_ID, NS_BOOKMARKS2, NS_LEGACY};
use proto::element::Element;
use proto::pubsub::Item;
use storage::module_store::private_key;

use super::service::{self, NodeMeta};
use super::Limits;
use crate::modules::AccountCtx;

/// The private module's name and its key for XEP-0048's `<storage/>`.
const PRIVATE: &str = "private";

fn legacy_key() -> String {
    private_key(NS_LEGACY, "storage")
}

fn warn(what: &str, e: impl std::fmt::Debug) {
    tracing::warn!(error = ?e, "bookmarks (XEP-0402 §3): {what} failed");
}

/// The account published to one of the PEP views.
pub(super) fn after_publish(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    node: &str,
    meta: &NodeMeta,
    item: &Item,
) {
    match node {
        NS_BOOKMARKS2 => from_bookmarks2(limits, ctx, meta, Some(item)),
        NS_LEGACY => {
            let Some(storage) = item.payload.as_ref().filter(|p| p.is("storage", NS_LEGACY)) else {
                return;
            };
            if let Err(e) = replace_bookmarks2(limits, ctx, bm::from_legacy(storage)) {
                warn("updating urn:xmpp:bookmarks:1", e);
            }
            put_private(ctx, storage);
        }
        _ => {}
    }
}

/// The account retracted from, purged or deleted one of the PEP views.
pub(super) fn after_removal(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    node: &str,
    meta: &NodeMeta,
) {
    if node == NS_BOOKMARKS2 {
        from_bookmarks2(limits, ctx, meta, None);
    }
}

/// The account stored elements in private XML storage: its `<storage
/// xmlns='storage:bookmarks'/>`, if it is one of them, becomes the PEP views.
pub(super) fn after_private_set(limits: &Limits, ctx: &mut AccountCtx<'_>, iq: &Element) {
    let Some(storage) = iq
        .children()
        .flat_map(|q| q.children())
        .filter(|c| c.is("storage", NS_LEGACY))
        .last()
    else {
        return;
    };
    if let Err(e) = replace_bookmarks2(limits, ctx, bm::from_legacy(storage)) {
        warn("updating urn:xmpp:bookmarks:1", e);
    }
    put_legacy_pep(limits, ctx, storage);
}

/// XEP-0402's node changed (now `meta`, with `published` not yet readable from the store):
/// the legacy views follow.
fn from_bookmarks2(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    meta: &NodeMeta,
    published: Option<&Item>,
) {
    let mut list = Vec::new();
    for i in &meta.items {
        let payload = match published.filter(|p| p.id == i.id) {
            Some(p) => p.payload.clone(),
            None => match service::read_item(ctx, NS_BOOKMARKS2, &i.id) {
                Ok(item) => item.and_then(|it| it.payload),
                Err(e) => return warn("reading urn:xmpp:bookmarks:1", e),
            },
        };
        if let Some(conference) = payload.filter(|p| p.is("conference", NS_BOOKMARKS2)) {
            list.push(Bookmark {
                jid: i.id.clone(),
                conference,
            });
        }
    }
    let urls = match ctx.get_in(PRIVATE, &legacy_key()) {
        Ok(Some(xml)) => Element::parse(&xml)
            .map(|s| bm::legacy_urls(&s))
            .unwrap_or_default(),
        Ok(None) => Vec::new(),
        Err(e) => return warn("reading private storage", e),
    };
    let storage = bm::to_legacy(&list, &urls);
    put_private(ctx, &storage);
    put_legacy_pep(limits, ctx, &storage);
}

fn replace_bookmarks2(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    list: Vec<Bookmark>,
) -> Result<(), proto::pubsub::PubsubError> {
    let items = list
        .into_iter()
        .map(|b| Item {
            id: b.jid,
            payload: Some(b.conference),
        })
        .collect();
    service::replace_items(limits, ctx, NS_BOOKMARKS2, bm::node_config(), items)
}

/// XEP-0048 in private XML storage, within the private module's size cap.
fn put_private(ctx: &mut AccountCtx<'_>, storage: &Element) {
    let xml = storage.to_xml_string();
    if xml.len() > ctx.limits().max_private_bytes {
        return warn(
            "copying to private storage",
            "larger than im.max_private_bytes",
        );
    }
    ctx.put_in(PRIVATE, legacy_key(), Some(xml));
}

/// XEP-0048 in its PEP node (`#compat-pep`).
fn put_legacy_pep(limits: &Limits, ctx: &mut AccountCtx<'_>, storage: &Element) {
    let item = Item {
        id: LEGACY_ITEM_ID.to_owned(),
        payload: Some(storage.clone()),
    };
    if let Err(e) = service::replace_items(limits, ctx, NS_LEGACY, bm::node_config(), vec![item]) {
        warn("updating storage:bookmarks", e);
    }
}
