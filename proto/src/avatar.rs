//! Avatars in their two forms, converted both ways (XEP-0398): XEP-0084 (PEP nodes
//! `urn:xmpp:avatar:data`, the image base64-encoded in an item whose id is its SHA-1, and
//! `urn:xmpp:avatar:metadata`, an `<info/>` per available image) and XEP-0153 (the image in
//! the vCard's `<PHOTO><TYPE/><BINVAL/></PHOTO>`, XEP-0054). Pure: the PEP module decides
//! when to convert.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::element::Element;

pub const NS_DATA: &str = "urn:xmpp:avatar:data";
pub const NS_METADATA: &str = "urn:xmpp:avatar:metadata";
pub const NS_VCARD: &str = "vcard-temp";
/// XEP-0398 §2: advertised on the account.
pub const FEATURE_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";

/// An image and its MIME type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub mime: String,
    pub bytes: Vec<u8>,
}

impl Image {
    /// XEP-0084 §4.1: the item id is the hex SHA-1 of the image bytes.
    pub fn id(&self) -> String {
        hex_sha1(&self.bytes)
    }

    /// The data item's payload (XEP-0084 §4.1).
    pub fn data_payload(&self) -> Element {
        Element::new("data", NS_DATA).with_text(b64().encode(&self.bytes))
    }

    /// The metadata item's payload with one `<info/>` for the image (XEP-0084 §4.2;
    /// XEP-0398 §3.2: the type is the vCard's).
    pub fn metadata_payload(&self) -> Element {
        Element::new("metadata", NS_METADATA).with_child(
            Element::new("info", NS_METADATA)
                .with_attr("id", self.id())
                .with_attr("type", self.mime.as_str())
                .with_attr("bytes", self.bytes.len().to_string()),
        )
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn hex_sha1(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base64 text as senders wrap it (XEP-0153 BINVAL often carries line breaks).
fn decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    b64().decode(compact).ok().filter(|b| !b.is_empty())
}

/// The vCard's embedded photo (XEP-0153 §3.1), if it has one (an `<EXTVAL/>` is not one).
pub fn vcard_photo(vcard: &Element) -> Option<Image> {
    let photo = vcard.get_child("PHOTO", NS_VCARD)?;
    let bytes = decode(&photo.get_child("BINVAL", NS_VCARD)?.text())?;
    let mime = photo
        .get_child("TYPE", NS_VCARD)
        .map(|t| t.text().trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".to_owned());
    Some(Image { mime, bytes })
}

/// The hex SHA-1 of each embedded photo of `vcard` (XEP-0153 §3.1's hash, XEP-0486 §6.1: a
/// vCard may carry one image in several formats, and every one is advertised), in order;
/// a `<PHOTO/>` without `<BINVAL/>` (an `<EXTVAL/>`) has none. `None` when a `<BINVAL/>` is
/// not base64 (or empty): the vCard is not one to store.
pub fn photo_hashes(vcard: &Element) -> Option<Vec<String>> {
    vcard
        .children()
        .filter(|c| c.is("PHOTO", NS_VCARD))
        .filter_map(|p| p.get_child("BINVAL", NS_VCARD))
        .map(|b| decode(&b.text()).map(|bytes| hex_sha1(&bytes)))
        .collect()
}

/// `vcard` (or an empty one) with its photo replaced by `image` (`None`: removed).
pub fn vcard_with_photo(vcard: Option<Element>, image: Option<&Image>) -> Element {
    let mut vcard = vcard.unwrap_or_else(|| Element::new("vCard", NS_VCARD));
    vcard.remove_children(|c| c.is("PHOTO", NS_VCARD));
    if let Some(img) = image {
        vcard = vcard.with_child(
            Element::new("PHOTO", NS_VCARD)
                .with_child(Element::new("TYPE", NS_VCARD).with_text(img.mime.as_str()))
                .with_child(Element::new("BINVAL", NS_VCARD).with_text(b64().encode(&img.bytes))),
        );
    }
    vcard
}

/// XEP-0398 §3.1: the metadata's `<info/>` that does not point to a URL: (id, type).
/// `Some(None)`: the metadata is empty (XEP-0084 §4.6, the avatar disabled).
pub fn metadata_choice(metadata: &Element) -> Option<Option<(String, String)>> {
    if !metadata.is("metadata", NS_METADATA) {
        return None;
    }
    let infos: Vec<&Element> = metadata
        .children()
        .filter(|c| c.is("info", NS_METADATA))
        .collect();
    if infos.is_empty() {
        return Some(None);
    }
    let info = infos.into_iter().find(|i| i.attr("url").is_none())?;
    Some(Some((
        info.attr("id")?.to_owned(),
        info.attr("type").unwrap_or("image/png").to_owned(),
    )))
}

/// The image of a data item's payload, if its SHA-1 is `id` (XEP-0398 §3.1: services
/// SHOULD verify it).
pub fn data_image(data: &Element, id: &str, mime: &str) -> Option<Image> {
    if !data.is("data", NS_DATA) {
        return None;
    }
    let bytes = decode(&data.text())?;
    (hex_sha1(&bytes) == id.to_ascii_lowercase()).then(|| Image {
        mime: mime.to_owned(),
        bytes,
    })
}

/// XEP-0153's presence element.
pub const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";

/// XEP-0398 §4: put `hash` (the avatar's SHA-1, hex) in an available presence, unless the
/// client says it has no photo or does not know yet (`<photo/>` empty: left alone). An `<x/>`
/// without a photo, or naming another hash, is overwritten.
pub fn stamp_presence(presence: &mut Element, hash: &str) {
    if let Some(x) = presence.get_child("x", NS_VCARD_UPDATE) {
        if x.get_child("photo", NS_VCARD_UPDATE)
            .is_some_and(|p| p.text().trim().is_empty())
        {
            return;
        }
    }
    presence.remove_children(|c| c.is("x", NS_VCARD_UPDATE));
    presence.children.push(crate::element::Node::Element(
        Element::new("x", NS_VCARD_UPDATE)
            .with_child(Element::new("photo", NS_VCARD_UPDATE).with_text(hash)),
    ));
}

/// The photo hash an available presence carries, if any (non-empty).
pub fn presence_photo(presence: &Element) -> Option<String> {
    let photo = presence
        .get_child("x", NS_VCARD_UPDATE)?
        .get_child("photo", NS_VCARD_UPDATE)?
        .text();
    let photo = photo.trim();
    (!photo.is_empty()).then(|| photo.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Image {
        Image {
            mime: "image/png".into(),
            bytes: b"\x89PNG\r\n\x1a\nnot really".to_vec(),
        }
    }

    #[test]
    fn vcard_photo_round_trips_and_keeps_other_fields() {
        let vcard = Element::parse("<vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard>").unwrap();
        let with = vcard_with_photo(Some(vcard), Some(&png()));
        assert_eq!(with.get_child("FN", NS_VCARD).unwrap().text(), "Juliet");
        assert_eq!(vcard_photo(&with), Some(png()));
        let without = vcard_with_photo(Some(with), None);
        assert!(without.get_child("PHOTO", NS_VCARD).is_none());
        assert!(vcard_photo(&without).is_none());
    }

    #[test]
    fn binval_with_line_breaks_decodes() {
        let b = b64().encode(&png().bytes);
        let (a, z) = b.split_at(8);
        let vcard = Element::parse(&format!(
            "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>{a}\n {z}</BINVAL></PHOTO></vCard>"
        ))
        .unwrap();
        assert_eq!(vcard_photo(&vcard), Some(png()));
    }

    #[test]
    fn metadata_points_at_the_data_item_and_the_hash_is_checked() {
        let img = png();
        let meta = img.metadata_payload();
        let (id, mime) = metadata_choice(&meta).unwrap().unwrap();
        assert_eq!(id, img.id());
        assert_eq!(id.len(), 40);
        assert_eq!(
            data_image(&img.data_payload(), &id, &mime),
            Some(img.clone())
        );
        assert_eq!(
            data_image(&img.data_payload(), &"0".repeat(40), &mime),
            None
        );
    }

    #[test]
    fn presence_gets_the_hash_unless_the_client_says_no_photo() {
        let mut p =
            Element::parse("<presence xmlns='jabber:client'><show>away</show></presence>").unwrap();
        stamp_presence(&mut p, "abc");
        assert_eq!(presence_photo(&p).as_deref(), Some("abc"));
        // Another hash, or an <x/> without a photo: overwritten, once.
        stamp_presence(&mut p, "def");
        assert_eq!(presence_photo(&p).as_deref(), Some("def"));
        assert_eq!(
            p.children().filter(|c| c.is("x", NS_VCARD_UPDATE)).count(),
            1
        );
        let mut bare_x = Element::parse(
            "<presence xmlns='jabber:client'><x xmlns='vcard-temp:x:update'/></presence>",
        )
        .unwrap();
        stamp_presence(&mut bare_x, "abc");
        assert_eq!(presence_photo(&bare_x).as_deref(), Some("abc"));
        // An empty <photo/> is the client's to say (XEP-0398 §4).
        let mut none = Element::parse(
            "<presence xmlns='jabber:client'><x xmlns='vcard-temp:x:update'><photo/></x></presence>",
        )
        .unwrap();
        stamp_presence(&mut none, "abc");
        assert_eq!(presence_photo(&none), None);
    }

    #[test]
    fn url_infos_are_skipped_and_empty_metadata_disables() {
        let m = Element::parse(
            "<metadata xmlns='urn:xmpp:avatar:metadata'>\
             <info id='aa' url='https://x/a.png' type='image/png' bytes='1'/>\
             <info id='bb' type='image/jpeg' bytes='1'/></metadata>",
        )
        .unwrap();
        assert_eq!(
            metadata_choice(&m),
            Some(Some(("bb".into(), "image/jpeg".into())))
        );
        let empty = Element::parse("<metadata xmlns='urn:xmpp:avatar:metadata'/>").unwrap();
        assert_eq!(metadata_choice(&empty), Some(None));
    }

    #[test]
    fn photo_hashes_name_every_embedded_photo() {
        let a = b64().encode(b"first image");
        let b = b64().encode(b"second image");
        let v = Element::parse(&format!(
            "<vCard xmlns='vcard-temp'><FN>x</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{a}</BINVAL></PHOTO>\
             <PHOTO><EXTVAL>https://example.com/a.png</EXTVAL></PHOTO>\
             <PHOTO><BINVAL>{b}</BINVAL></PHOTO></vCard>"
        ))
        .unwrap();
        assert_eq!(
            photo_hashes(&v).unwrap(),
            vec![hex_sha1(b"first image"), hex_sha1(b"second image")]
        );
        let none = Element::parse("<vCard xmlns='vcard-temp'><FN>x</FN></vCard>").unwrap();
        assert_eq!(photo_hashes(&none).unwrap(), Vec::<String>::new());
        let bad = Element::parse(
            "<vCard xmlns='vcard-temp'><PHOTO><BINVAL>not base64!</BINVAL></PHOTO></vCard>",
        )
        .unwrap();
        assert_eq!(photo_hashes(&bad), None);
    }
}
