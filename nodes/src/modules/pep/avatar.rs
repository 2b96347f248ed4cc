//! XEP-0398: the account's avatar in both forms. A publish to `urn:xmpp:avatar:metadata`
//! (XEP-0084) puts the image its `<info/>` names, read from `urn:xmpp:avatar:data` and
//! checked against its SHA-1, in the vCard's PHOTO (§3.1, the vcard module's entry); a vCard
//! set with a photo publishes the data and metadata items (§3.2), which notifies the
//! contacts as any publish does.

use proto::avatar::{self, Image, NS_DATA, NS_METADATA};
use proto::element::Element;
use proto::pubsub::Item;

use super::service;
use super::Limits;
use crate::modules::AccountCtx;

/// The vcard module's name and its one key per account.
const VCARD: &str = "vcard";
const VCARD_KEY: &str = "";

fn warn(what: &str, e: impl std::fmt::Debug) {
    tracing::warn!(error = ?e, "avatar conversion (XEP-0398): {what} failed");
}

/// The account published `item` to `node`: a metadata item changes the vCard's photo.
pub(super) fn after_publish(ctx: &mut AccountCtx<'_>, node: &str, item: &Item) {
    if node != NS_METADATA {
        return;
    }
    let Some(choice) = item.payload.as_ref().and_then(avatar::metadata_choice) else {
        return;
    };
    let image = match choice {
        None => None,
        Some((id, mime)) => {
            let data = match service::read_item(ctx, NS_DATA, &id) {
                Ok(Some(Item {
                    payload: Some(p), ..
                })) => p,
                Ok(_) => return warn("finding the data item", id),
                Err(e) => return warn("reading the data item", e),
            };
            match avatar::data_image(&data, &id, &mime) {
                Some(img) => Some(img),
                None => return warn("checking the data item's SHA-1", id),
            }
        }
    };
    let current = match ctx.get_in(VCARD, VCARD_KEY) {
        Ok(xml) => xml.and_then(|x| Element::parse(&x).ok()),
        Err(e) => return warn("reading the vCard", e),
    };
    if current.is_none() && image.is_none() {
        return;
    }
    let xml = avatar::vcard_with_photo(current, image.as_ref()).to_xml_string();
    if xml.len() > ctx.limits().max_vcard_bytes {
        return warn(
            "storing the photo",
            "the vCard would exceed im.max_vcard_bytes",
        );
    }
    ctx.put_in(VCARD, VCARD_KEY, Some(xml));
}

/// The account set its vCard (`iq`): its photo becomes the avatar, unless it already is.
pub(super) fn after_vcard_set(limits: &Limits, ctx: &mut AccountCtx<'_>, iq: &Element) {
    let Some(vcard) = iq.get_child("vCard", avatar::NS_VCARD) else {
        return;
    };
    let current = current_avatar_id(ctx);
    match avatar::vcard_photo(vcard) {
        Some(img) if current.as_deref() != Some(img.id().as_str()) => publish(limits, ctx, &img),
        Some(_) => {}
        // The photo removed: XEP-0084 §4.6, an empty metadata item disables the avatar.
        None if current.is_some() => {
            let empty = Element::new("metadata", NS_METADATA);
            if let Err(e) = service::publish(limits, ctx, NS_METADATA, None, Some(empty), None) {
                warn("disabling the avatar", e);
            }
        }
        None => {}
    }
}

/// The SHA-1 (hex) of the vCard's photo, if it has one: the hash XEP-0153 presence carries.
pub(super) fn vcard_photo_id(ctx: &AccountCtx<'_>) -> Option<String> {
    let xml = ctx.get_in(VCARD, VCARD_KEY).ok()??;
    let vcard = Element::parse(&xml).ok()?;
    avatar::vcard_photo(&vcard).map(|img| img.id())
}

/// The id of the image the metadata node's last item names, if any.
fn current_avatar_id(ctx: &AccountCtx<'_>) -> Option<String> {
    let meta = service::load(ctx, NS_METADATA).ok()??;
    let last = meta.items.last()?;
    let item = service::read_item(ctx, NS_METADATA, &last.id).ok()??;
    avatar::metadata_choice(item.payload.as_ref()?)?.map(|(id, _)| id)
}

fn publish(limits: &Limits, ctx: &mut AccountCtx<'_>, img: &Image) {
    let id = img.id();
    let done = service::publish(
        limits,
        ctx,
        NS_DATA,
        Some(id.clone()),
        Some(img.data_payload()),
        None,
    )
    .and_then(|_| {
        service::publish(
            limits,
            ctx,
            NS_METADATA,
            Some(id),
            Some(img.metadata_payload()),
            None,
        )
    });
    if let Err(e) = done {
        warn("publishing the vCard's photo", e);
    }
}
