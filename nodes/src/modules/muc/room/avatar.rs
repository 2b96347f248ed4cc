//! A room's vCard and avatar (XEP-0486 "MUC Avatars", XEP-0054 vcard-temp on the room's bare
//! JID): an owner sets it, anyone gets it, and the SHA-1 of each photo (XEP-0153's hash) is
//! advertised in the room's `muc#roominfo` form as `muc#roominfo_avatarhash`. The vCard is
//! the room's `vcard` entry (so destroying the room removes it, and it is replicated with
//! the room's shard); the hashes are in [`Meta`], which every stanza loads anyway, so
//! disco#info costs no extra read.
//!
//! A session that joins a room with an avatar gets that presence after its join sequence.
//! When the avatar changes the occupants hear it twice: the §3.2 status 104 message (the
//! configuration changed; clients then read disco#info again), and a presence from the
//! room's bare JID with `<x xmlns='vcard-temp:x:update'><photo>hash</photo></x>` (XEP-0486
//! §6.2, the older way some clients still expect, which Prosody's room vCards send).

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::jid::Jid;
use proto::muc::{self, status, Affiliation};
use proto::ns;

use super::{Meta, Room};

pub use proto::avatar::NS_VCARD;
use proto::avatar::NS_VCARD_UPDATE;

/// Where the room's vCard is stored.
pub const KEY_VCARD: &str = "vcard";

impl Room<'_> {
    /// An IQ with a `vcard-temp` payload to the room's bare JID (the room exists).
    pub(super) fn vcard_iq(
        &mut self,
        from: &Jid,
        vcard: &Element,
        is_set: bool,
    ) -> Result<Option<Element>, Cond> {
        if vcard.name != "vCard" {
            return Err(Cond::BadRequest);
        }
        if !is_set {
            // §3.4: anyone may read it; a room without one has an empty vCard.
            return match &self.vcard {
                Some(xml) => Element::parse(xml)
                    .map(Some)
                    .map_err(|_| Cond::InternalServerError),
                None => Ok(Some(Element::new("vCard", NS_VCARD))),
            };
        }
        // §3.2 and §7: only the owners.
        if self.affiliation(from) != Affiliation::Owner {
            return Err(Cond::Forbidden);
        }
        let hashes = proto::avatar::photo_hashes(vcard).ok_or(Cond::BadRequest)?;
        let xml = vcard.to_xml_string();
        // The accounts' cap (XEP-0054 §3.2 in `modules::vcard`): not-acceptable, the stored
        // vCard kept (RFC 6120 §8.3.3.11).
        if xml.len() > self.max_vcard_bytes {
            return Err(Cond::NotAcceptable);
        }
        // §3.2: an empty vCard unpublishes the avatar (and is nothing to keep).
        let payload = (vcard.children().next().is_some()).then_some(xml);
        self.fx.writes.push((KEY_VCARD.into(), payload));
        let Some(meta) = self.meta.as_mut() else {
            return Ok(None);
        };
        if meta.avatar != hashes {
            meta.avatar = hashes;
            self.put_meta();
            self.announce_avatar();
        }
        Ok(None)
    }

    /// Tell every occupant's sessions the avatar changed (see the module's header).
    fn announce_avatar(&mut self) {
        let room = self.jid.to_string();
        let receivers: Vec<String> = self.occupants.values().flat_map(|o| o.sessions()).collect();
        let m = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("id", format!("avatar-{}", self.now_ms))
            .with_child(muc::status_x(&[status::CONFIG_CHANGED]));
        let p = self.avatar_presence();
        for r in receivers {
            self.send(m.clone(), &room, &r);
            self.send(p.clone(), &room, &r);
        }
    }

    /// A session that just joined learns the room's avatar, if it has one (as Prosody
    /// does on `muc-occupant-joined`).
    pub(super) fn avatar_to(&mut self, session: &str) {
        if self.meta.as_ref().is_some_and(|m| !m.avatar.is_empty()) {
            let (p, room) = (self.avatar_presence(), self.jid.to_string());
            self.send(p, &room, session);
        }
    }

    /// The room's presence with its (first) photo's hash; XEP-0153 §4.1: an empty
    /// `<photo/>` says there is none.
    fn avatar_presence(&self) -> Element {
        let photo = self
            .meta
            .as_ref()
            .and_then(|m: &Meta| m.avatar.first().cloned())
            .unwrap_or_default();
        Element::new("presence", ns::CLIENT).with_child(
            Element::new("x", NS_VCARD_UPDATE)
                .with_child(Element::new("photo", NS_VCARD_UPDATE).with_text(photo.as_str())),
        )
    }

    /// §3.3: the `muc#roominfo_avatarhash` field of the room's disco#info form, when the
    /// room has an avatar (§4: absent otherwise).
    pub(super) fn add_avatar_field(&self, info: &mut Element) {
        let hashes = self
            .meta
            .as_ref()
            .map(|m| m.avatar.as_slice())
            .unwrap_or(&[]);
        if hashes.is_empty() {
            return;
        }
        let Some(form) = info.get_child_mut("x", ns::DATA_FORMS) else {
            return;
        };
        let mut field = Element::new("field", ns::DATA_FORMS)
            .with_attr("var", "muc#roominfo_avatarhash")
            .with_attr("type", "text-multi");
        for h in hashes {
            field.push_child(Element::new("value", ns::DATA_FORMS).with_text(h.as_str()));
        }
        form.push_child(field);
    }
}
