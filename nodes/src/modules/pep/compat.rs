//! The other specifications' views of what PEP holds, kept in step with it: XEP-0048
//! bookmarks (private XML storage and the `storage:bookmarks` node) with XEP-0402's node
//! ([`bookmarks`](super::bookmarks)), and the vCard photo (XEP-0153) with XEP-0084's avatar
//! nodes ([`avatar`](super::avatar), XEP-0398). Only the account's own requests convert
//! (a conversion's own writes do not convert again). A conversion that cannot be made (a
//! limit, a malformed payload) is logged and leaves the request that caused it as it was.

use proto::pubsub::Item;

use super::service::NodeMeta;
use super::{avatar, bookmarks, Limits};
use crate::modules::{AccountCtx, AccountIq};

/// The account published `item` to `node`, which is now `meta`.
pub(super) fn after_own_publish(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    node: &str,
    meta: &NodeMeta,
    item: &Item,
) {
    bookmarks::after_publish(limits, ctx, node, meta, item);
    avatar::after_publish(ctx, node, item);
}

/// The account retracted, purged or deleted items of `node`, which is now `meta`.
pub(super) fn after_own_removal(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    node: &str,
    meta: &NodeMeta,
) {
    bookmarks::after_removal(limits, ctx, node, meta);
}

/// Another module answered the account's IQ set (`module`: private XML, vcard-temp).
pub(super) fn after_own_set(
    limits: &Limits,
    ctx: &mut AccountCtx<'_>,
    module: &str,
    req: &AccountIq<'_>,
) {
    match module {
        "private" => bookmarks::after_private_set(limits, ctx, req.iq),
        "vcard" => avatar::after_vcard_set(limits, ctx, req.iq),
        _ => {}
    }
}
