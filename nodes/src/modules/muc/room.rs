//! One room's state machine (XEP-0045): given the room's stored state and a stanza from a
//! real JID, it states the writes to make (module store entries of the room) and the
//! stanzas to send. No actor, storage or clock: the account shard that owns the room
//! (`im::muc`) loads the state, passes the time, commits the writes (one batch, through the
//! shard's Raft log in a cluster) and routes the stanzas.
//!
//! Stored entries (module `muc`, user = the room's bare JID):
//! - `room`: [`Meta`] (configuration, lock, subject, occupant-id secret);
//! - `seq`: the sequence number of the next history entry;
//! - `aff`: the affiliations (bare JID → affiliation);
//! - `o:<nick>`: an [`Occupant`] (its sessions' real full JIDs, role, last presence): occupants are
//!   persisted so that a new leader of the shard serves the room with them at once;
//! - `h:<seq, 16 hex>`: a [`HistoryEntry`], the last `max_history` groupchat messages that
//!   are not in the room's archive (all of them when [`Room::archive`] is off): the host
//!   adds the archive's newest to [`Room::history`];
//! - `vcard`: the room's vcard-temp, its avatar (XEP-0486, in `avatar`).

mod avatar;
pub use avatar::{KEY_VCARD, NS_VCARD};

use std::collections::BTreeMap;

use base64::Engine as _;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition as Cond};
use proto::jid::Jid;
use proto::muc::{self, status, Affiliation, HistoryRequest, ItemView, Role, RoomConfig, Whois};
use proto::ns;
use proto::stanza_id::ArchiveId;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::Settings;

/// The room's own record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub config: RoomConfig,
    /// §10.1.1: created and not yet configured (only the owner may enter).
    pub locked: bool,
    /// Salt of the occupant ids (XEP-0421 §4: stable per room and real JID, unlinkable
    /// across rooms).
    pub secret: String,
    pub subject: Option<Subject>,
    /// The SHA-1 of each photo in the room's vCard (XEP-0486 §3.3, `avatar`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avatar: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subject {
    pub text: String,
    /// The nick that set it (§8.1: the subject message comes from it).
    pub nick: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Occupant {
    /// The real full JID.
    pub jid: String,
    pub role: Role,
    /// The occupant's last presence (show, status, caps), without addresses or MUC
    /// elements, as XML.
    pub presence: String,
    /// Other sessions of the same account under this nick (XEP-0045 allows one user
    /// several sessions as one occupant): they get everything the occupant gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
}

impl Occupant {
    /// Every real full JID of the occupant, the first session first.
    pub fn sessions(&self) -> Vec<String> {
        std::iter::once(self.jid.clone())
            .chain(self.more.iter().cloned())
            .collect()
    }

    pub fn has(&self, jid: &str) -> bool {
        self.jid == jid || self.more.iter().any(|m| m == jid)
    }

    /// Take session `jid` away; false when it was the last one.
    fn remove_session(&mut self, jid: &str) -> bool {
        if self.jid == jid {
            if self.more.is_empty() {
                return false;
            }
            self.jid = self.more.remove(0);
        } else {
            self.more.retain(|m| m != jid);
        }
        true
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the room received it (ms since the epoch).
    pub ms: u64,
    /// The message as reflected, without `to`.
    pub xml: String,
}

pub const KEY_META: &str = "room";
pub const KEY_AFF: &str = "aff";
/// The sequence number of the next history entry.
pub const KEY_SEQ: &str = "seq";
pub const OCCUPANT_PREFIX: &str = "o:";
pub const HISTORY_PREFIX: &str = "h:";

pub fn history_key(seq: u64) -> String {
    format!("{HISTORY_PREFIX}{seq:016x}")
}

/// What the room asks its host to do.
#[derive(Debug, Default)]
pub struct Effects {
    /// (key, payload) to store (`None`: remove), in order.
    pub writes: Vec<(String, Option<String>)>,
    /// Stanzas to route, `from` and `to` set.
    pub out: Vec<Element>,
    /// Remove every entry of the room (destroyed, or a temporary room left empty).
    pub destroy: bool,
    /// Groupchat messages reflected (metrics).
    pub reflected: usize,
    /// The room was created (metrics).
    pub created: bool,
    /// The room's entry in the service's directory: `Some(Some(entry))` to write it,
    /// `Some(None)` to take it out, `None` unchanged (destroying a room also takes it out).
    pub directory: Option<Option<DirectoryEntry>>,
    /// Groupchat messages for the room's archive (XEP-0313 §5), when [`Room::archive`].
    pub archive: Vec<ArchiveEntry>,
}

/// A groupchat message for the room's own archive (owner: the room's bare JID).
#[derive(Debug, Clone)]
pub struct ArchiveEntry {
    /// Its archive id, also the `<stanza-id by=room>` its receivers saw (XEP-0359).
    pub id: ArchiveId,
    /// The sender's nick: the archive's `with` is its occupant JID (room/nick).
    pub nick: String,
    /// The message as reflected, without `to`.
    pub xml: String,
}

/// A room as the service's directory knows it: every room has one from its creation (the
/// operator's `switchboard muc list`); disco#items lists the public ones (XEP-0045 §6.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub name: String,
    /// Listed in disco#items (configured, and `muc#roomconfig_publicroom`).
    pub public: bool,
}

/// A room as loaded by its shard.
pub struct Room<'a> {
    jid: Jid,
    settings: &'a Settings,
    pub meta: Option<Meta>,
    pub affs: BTreeMap<String, Affiliation>,
    pub occupants: BTreeMap<String, Occupant>,
    /// The kept history, oldest first (loaded for presence only: joins need it).
    pub history: Vec<HistoryEntry>,
    /// The sequence number of the next history entry (`seq`).
    pub next_seq: u64,
    /// Whether the room keeps an archive (XEP-0313 §5: advertised in its disco#info, its
    /// groupchat messages with a body go to [`Effects::archive`]).
    pub archive: bool,
    /// The id the host assigned to the stanza being handled (an archive id, so the
    /// `<stanza-id/>` a client sees live is the MAM id); `None`: an id from the clock.
    pub message_id: Option<ArchiveId>,
    /// The stored vCard (`vcard`), loaded for vcard-temp requests only.
    pub vcard: Option<String>,
    /// The largest vCard an owner may store (`im.max_vcard_bytes`, as for accounts).
    pub max_vcard_bytes: usize,
    now_ms: u64,
    fx: Effects,
}

/// What a stanza from `from` is to the room.
pub struct Input<'a> {
    /// The real full JID of the sender (stamped by its server).
    pub from: &'a Jid,
    /// The room's bare JID or an occupant JID (room/nick).
    pub to: &'a Jid,
    pub stanza: Element,
    /// Whether the sender may create a room (the service's creation policy).
    pub may_create: bool,
}

impl<'a> Room<'a> {
    pub fn new(jid: Jid, settings: &'a Settings, now_ms: u64) -> Self {
        Room {
            jid,
            settings,
            meta: None,
            affs: BTreeMap::new(),
            occupants: BTreeMap::new(),
            history: Vec::new(),
            next_seq: 0,
            archive: false,
            message_id: None,
            vcard: None,
            max_vcard_bytes: crate::config::ImLimits::default().max_vcard_bytes,
            now_ms,
            fx: Effects::default(),
        }
    }

    pub fn finish(self) -> Effects {
        self.fx
    }

    /// Handle one stanza; `secret` makes the occupant-id salt of a room this stanza creates.
    pub fn handle(&mut self, input: Input<'_>, secret: impl FnOnce() -> String) {
        let Input {
            from,
            to,
            stanza,
            may_create,
        } = input;
        let nick = to.resource().map(str::to_owned);
        if stanza.attr("type") == Some("error") && stanza.name != "iq" {
            return self.error_from(from, &stanza);
        }
        match stanza.name.as_str() {
            "presence" => match (nick, stanza.attr("type")) {
                (Some(nick), None) => self.presence(from, &nick, stanza, may_create, secret),
                (Some(_), Some("unavailable")) => {
                    if let Some(nick) = self.nick_of(from) {
                        self.leave(&nick, from, &stanza);
                    }
                }
                // §7.2.1: a join needs a nick.
                (None, None) => self.reply_error(&stanza, from, to, Cond::JidMalformed),
                _ => {}
            },
            "message" => self.message(from, to, nick.as_deref(), stanza),
            "iq" => self.iq(from, to, nick.as_deref(), &stanza),
            _ => {}
        }
    }

    fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    fn config(&self) -> RoomConfig {
        self.meta().map(|m| m.config.clone()).unwrap_or_default()
    }

    fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    fn affiliation(&self, real: &Jid) -> Affiliation {
        self.affs
            .get(&real.to_bare().to_string())
            .copied()
            .unwrap_or(Affiliation::None)
    }

    fn affiliation_of(&self, occ: &Occupant) -> Affiliation {
        Jid::parse(&occ.jid)
            .map(|j| self.affiliation(&j))
            .unwrap_or(Affiliation::None)
    }

    /// The nick of the occupant whose real JID is `from`.
    fn nick_of(&self, from: &Jid) -> Option<String> {
        let f = from.to_string();
        self.occupants
            .iter()
            .find(|(_, o)| o.has(&f))
            .map(|(n, _)| n.clone())
    }

    /// XEP-0421 §4: the occupant id of real JID `real`.
    fn occupant_id(&self, real: &str) -> String {
        let bare = Jid::parse(real)
            .map(|j| j.to_bare().to_string())
            .unwrap_or_else(|_| real.to_owned());
        let secret = self.meta().map(|m| m.secret.as_str()).unwrap_or("");
        let mut h = sha2::Sha256::new();
        h.update(secret.as_bytes());
        h.update([0]);
        h.update(bare.as_bytes());
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&h.finalize()[..16])
    }

    fn put_meta(&mut self) {
        if let Some(m) = &self.meta {
            let v = serde_json::to_string(m).ok();
            self.fx.writes.push((KEY_META.into(), v));
        }
    }

    fn put_affs(&mut self) {
        let v = serde_json::to_string(&self.affs).ok();
        self.fx.writes.push((KEY_AFF.into(), v));
    }

    fn put_occupant(&mut self, nick: &str) {
        let v = self
            .occupants
            .get(nick)
            .and_then(|o| serde_json::to_string(o).ok());
        self.fx.writes.push((format!("{OCCUPANT_PREFIX}{nick}"), v));
    }

    fn send(&mut self, mut stanza: Element, from: &str, to: &str) {
        stanza.set_attr("from", from);
        stanza.set_attr("to", to);
        self.fx.out.push(stanza);
    }

    /// A copy of `stanza` from `from` to each of `to` (an occupant's sessions, a set of
    /// recipients).
    fn send_each<S: AsRef<str>>(
        &mut self,
        stanza: &Element,
        from: &str,
        to: impl IntoIterator<Item = S>,
    ) {
        for jid in to {
            self.send(stanza.clone(), from, jid.as_ref());
        }
    }

    fn reply_error(&mut self, stanza: &Element, from: &Jid, to: &Jid, cond: Cond) {
        let mut s = stanza.clone();
        s.set_attr("from", from.to_string());
        s.set_attr("to", to.to_string());
        self.fx.out.push(stanza_error_reply(&s, cond, None));
    }

    /// Whether `receiver` (an occupant's role) sees real JIDs.
    fn sees_jids(&self, receiver_role: Role) -> bool {
        self.config().whois == Whois::Anyone || receiver_role == Role::Moderator
    }

    /// An occupant's presence as an occupant with `receiver_role` sees it (real JIDs per
    /// `muc#roomconfig_whois`, §7.2.3/§7.2.4), with `statuses`; `from` and `to` are the
    /// caller's.
    fn presence_of(
        &self,
        occ: &Occupant,
        receiver_role: Role,
        item: ItemView,
        statuses: &[u16],
    ) -> Element {
        let mut p =
            Element::parse(&occ.presence).unwrap_or_else(|_| Element::new("presence", ns::CLIENT));
        let mut item = item;
        if item.affiliation.is_none() {
            item.affiliation = Some(self.affiliation_of(occ));
        }
        if item.role.is_none() {
            item.role = Some(occ.role);
        }
        if self.sees_jids(receiver_role) {
            item.jid = Some(occ.jid.clone());
        }
        p.push_child(muc::user_x(&item, statuses));
        p.push_child(
            Element::new("occupant-id", ns::OCCUPANT_ID)
                .with_attr("id", self.occupant_id(&occ.jid)),
        );
        p
    }

    /// Send occupant `nick`'s presence (`unavailable`: marked so) to every session of every
    /// occupant, with `statuses`; the occupant itself gets 110 last (and 100 first in a
    /// non-anonymous room), also when it is already out of the list.
    fn broadcast_presence(
        &mut self,
        nick: &str,
        occ: &Occupant,
        item: ItemView,
        statuses: &[u16],
        unavailable: bool,
    ) {
        let from = self.occupant_jid(nick);
        let receivers: Vec<Occupant> = self.occupants.values().cloned().collect();
        let mut to_self = true;
        for o in &receivers {
            let own = o.jid == occ.jid;
            to_self &= !own;
            let mut codes = statuses.to_vec();
            if self.config().whois == Whois::Anyone && own && !unavailable {
                codes.insert(0, status::NON_ANONYMOUS);
            }
            if own {
                codes.push(status::SELF);
            }
            let mut p = self.presence_of(occ, o.role, item.clone(), &codes);
            if unavailable {
                p.set_attr("type", "unavailable");
            }
            self.send_each(&p, &from, o.sessions());
        }
        if to_self {
            // The occupant is already out of the list (it left or was removed).
            let mut codes = statuses.to_vec();
            codes.push(status::SELF);
            let mut p = self.presence_of(occ, occ.role, item, &codes);
            if unavailable {
                p.set_attr("type", "unavailable");
            }
            self.send_each(&p, &from, occ.sessions());
        }
    }

    /// The presence as stored for an occupant: the client's children without MUC ones.
    fn stored_presence(stanza: &Element) -> String {
        let mut p = Element::new("presence", ns::CLIENT);
        for c in stanza.children() {
            if c.ns == ns::MUC || c.ns == ns::MUC_USER || c.ns == ns::OCCUPANT_ID {
                continue;
            }
            p.push_child(c.clone());
        }
        p.to_xml_string()
    }

    // ---- presence -------------------------------------------------------------------

    fn presence(
        &mut self,
        from: &Jid,
        nick: &str,
        stanza: Element,
        may_create: bool,
        secret: impl FnOnce() -> String,
    ) {
        let to = self.jid.with_resource(nick);
        let Ok(to) = to else {
            return;
        };
        match self.nick_of(from) {
            Some(current) if current == nick => {
                // §7.7: a change of availability, shown to everyone.
                if let Some(o) = self.occupants.get_mut(nick) {
                    o.presence = Self::stored_presence(&stanza);
                }
                self.put_occupant(nick);
                let Some(occ) = self.occupants.get(nick).cloned() else {
                    return;
                };
                match muc::parse_join(&stanza) {
                    // A join from an occupant (its client lost track, e.g. after its server
                    // restarted): the others see a presence update, the occupant gets the
                    // whole join sequence again (§7.2.3–§7.2.16).
                    Some(join) => {
                        self.presence_to_others(nick, &occ);
                        self.join_sequence(nick, &occ, &from.to_string(), &join.history, false);
                    }
                    None => self.broadcast_presence(nick, &occ, ItemView::default(), &[], false),
                }
            }
            Some(current) => self.change_nick(from, &current, nick, &stanza, &to),
            None => self.join(from, nick, stanza, &to, may_create, secret),
        }
    }

    /// Occupant `nick`'s presence to every other occupant.
    fn presence_to_others(&mut self, nick: &str, occ: &Occupant) {
        let from = self.occupant_jid(nick);
        let others: Vec<(Role, Vec<String>)> = self
            .occupants
            .values()
            .filter(|o| o.jid != occ.jid)
            .map(|o| (o.role, o.sessions()))
            .collect();
        for (role, sessions) in others {
            let p = self.presence_of(occ, role, ItemView::default(), &[]);
            self.send_each(&p, &from, sessions);
        }
    }

    /// What an entering occupant gets (§7.2.3): the others' presence, its own last (100 in
    /// a non-anonymous room, 201 when it created the room, 110), the history it asked for
    /// (§7.2.15), then the subject (§7.2.16).
    fn join_sequence(
        &mut self,
        nick: &str,
        occ: &Occupant,
        to: &str,
        history: &HistoryRequest,
        created: bool,
    ) {
        let others: Vec<(String, Occupant)> = self
            .occupants
            .iter()
            .filter(|(_, o)| o.jid != occ.jid)
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        for (n, o) in &others {
            let p = self.presence_of(o, occ.role, ItemView::default(), &[]);
            let f = self.occupant_jid(n);
            self.send(p, &f, to);
        }
        let mut codes = Vec::new();
        if self.config().whois == Whois::Anyone {
            codes.push(status::NON_ANONYMOUS);
        }
        if created {
            codes.push(status::CREATED);
        }
        codes.push(status::SELF);
        let p = self.presence_of(occ, occ.role, ItemView::default(), &codes);
        let from_nick = self.occupant_jid(nick);
        self.send(p, &from_nick, to);
        self.send_history(to, history);
        let (subject_from, text) = match self.meta().and_then(|m| m.subject.clone()) {
            Some(s) => (self.occupant_jid(&s.nick), s.text),
            None => (self.jid.to_string(), String::new()),
        };
        let subject = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("id", format!("subject-{}", self.now_ms))
            .with_child(Element::new("subject", ns::CLIENT).with_text(text));
        self.send(subject, &subject_from, to);
    }

    fn join(
        &mut self,
        from: &Jid,
        nick: &str,
        stanza: Element,
        to: &Jid,
        may_create: bool,
        secret: impl FnOnce() -> String,
    ) {
        let request = muc::parse_join(&stanza);
        let mut created = false;
        if self.meta.is_none() {
            // §10.1.1: the first to enter creates the room, if the service lets it.
            if !may_create {
                return self.reply_error(&stanza, from, to, Cond::NotAllowed);
            }
            self.meta = Some(Meta {
                config: RoomConfig::default(),
                // §10.1.1: locked until configured; a client that does not speak MUC (no
                // `<x/>`) gets an instant room at once (§7.2.1).
                locked: request.is_some(),
                secret: secret(),
                subject: None,
                avatar: Vec::new(),
            });
            self.affs.clear();
            self.affs
                .insert(from.to_bare().to_string(), Affiliation::Owner);
            self.put_meta();
            self.put_affs();
            created = true;
            self.fx.created = true;
            // Known to the operator at once; listed once configured.
            self.fx.directory = Some(Some(DirectoryEntry {
                name: self.jid.local().unwrap_or_default().to_owned(),
                public: false,
            }));
        }
        let config = self.config();
        let affiliation = self.affiliation(from);
        let locked = self.meta().is_some_and(|m| m.locked);
        if locked && affiliation != Affiliation::Owner {
            // §10.1.1: nobody else enters a room that is still being configured.
            return self.reply_error(&stanza, from, to, Cond::ItemNotFound);
        }
        if let Some(o) = self.occupants.get(nick) {
            if Jid::parse(&o.jid).map(|j| j.to_bare()) != Ok(from.to_bare()) {
                // §7.2.9.
                return self.reply_error(&stanza, from, to, Cond::Conflict);
            }
            // Another session of the same user joins as the same occupant (several
            // devices, or a client that reconnected before the room noticed its old
            // session was gone): it gets the join sequence, the others see nothing new.
            let mut occ = o.clone();
            occ.more.push(from.to_string());
            self.occupants.insert(nick.to_owned(), occ.clone());
            self.put_occupant(nick);
            let history = request.map(|r| r.history).unwrap_or_default();
            self.join_sequence(nick, &occ, &from.to_string(), &history, false);
            return self.avatar_to(&from.to_string());
        }
        if affiliation == Affiliation::Outcast {
            // §7.2.8.
            return self.reply_error(&stanza, from, to, Cond::Forbidden);
        }
        if config.members_only && affiliation < Affiliation::Member {
            // §7.2.7.
            return self.reply_error(&stanza, from, to, Cond::RegistrationRequired);
        }
        let password = request.as_ref().and_then(|r| r.password.as_deref());
        if !config.password.is_empty()
            && affiliation < Affiliation::Owner
            && password != Some(config.password.as_str())
        {
            // §7.2.6.
            return self.reply_error(&stanza, from, to, Cond::NotAuthorized);
        }
        let max = match config.max_users {
            0 => self.settings.max_occupants,
            n => n.min(self.settings.max_occupants),
        };
        if self.occupants.len() >= max && affiliation < Affiliation::Admin {
            // §7.2.10.
            return self.reply_error(&stanza, from, to, Cond::ServiceUnavailable);
        }
        let occ = Occupant {
            jid: from.to_string(),
            role: affiliation.default_role(config.moderated),
            presence: Self::stored_presence(&stanza),
            more: Vec::new(),
        };
        self.occupants.insert(nick.to_owned(), occ.clone());
        self.put_occupant(nick);
        self.presence_to_others(nick, &occ);
        let history = request.map(|r| r.history).unwrap_or_default();
        self.join_sequence(nick, &occ, &occ.jid, &history, created);
        self.avatar_to(&occ.jid);
    }

    fn send_history(&mut self, to: &str, wanted: &HistoryRequest) {
        let items: Vec<(u64, usize)> = self.history.iter().map(|h| (h.ms, h.xml.len())).collect();
        let first = wanted.first(&items, self.now_ms);
        let room = self.jid.to_string();
        let entries: Vec<HistoryEntry> = self.history[first..].to_vec();
        for h in entries {
            let Ok(mut m) = Element::parse(&h.xml) else {
                continue;
            };
            let from = m.attr("from").unwrap_or_default().to_owned();
            // XEP-0203: when the room received it.
            m.push_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", room.clone())
                    .with_attr("stamp", proto::datetime::utc_stamp_ms(h.ms)),
            );
            self.send(m, &from, to);
        }
    }

    fn change_nick(&mut self, from: &Jid, old: &str, new: &str, stanza: &Element, to: &Jid) {
        if self.occupants.contains_key(new) {
            // §7.6.3.
            return self.reply_error(stanza, from, to, Cond::Conflict);
        }
        let Some(mut occ) = self.occupants.remove(old) else {
            return;
        };
        // §7.6.2: unavailable from the old nick with 303 and the new nick, then the new
        // presence; the occupant itself gets 110 in both.
        self.occupants.insert(old.to_owned(), occ.clone());
        self.broadcast_presence(
            old,
            &occ,
            ItemView {
                nick: Some(new.to_owned()),
                ..Default::default()
            },
            &[status::NICK_CHANGED],
            true,
        );
        self.occupants.remove(old);
        self.put_occupant(old);
        occ.presence = Self::stored_presence(stanza);
        self.occupants.insert(new.to_owned(), occ.clone());
        self.put_occupant(new);
        self.broadcast_presence(new, &occ, ItemView::default(), &[], false);
    }

    fn leave(&mut self, nick: &str, from: &Jid, stanza: &Element) {
        let Some(occ) = self.occupants.get(nick).cloned() else {
            return;
        };
        if self.drop_session(nick, from) {
            // One of several sessions left: only it hears so (110), the occupant stays.
            let mut gone = occ.clone();
            gone.presence = Self::stored_presence(stanza);
            let item = ItemView {
                role: Some(Role::None),
                ..Default::default()
            };
            let mut p = self.presence_of(&gone, occ.role, item, &[status::SELF]);
            p.set_attr("type", "unavailable");
            let f = self.occupant_jid(nick);
            return self.send(p, &f, &from.to_string());
        }
        let mut gone = occ.clone();
        gone.presence = Self::stored_presence(stanza);
        // §7.14: everyone, the occupant included (110), hears it leave.
        self.broadcast_presence(
            nick,
            &gone,
            ItemView {
                role: Some(Role::None),
                ..Default::default()
            },
            &[],
            true,
        );
        self.remove_occupant(nick);
    }

    /// Take session `from` of occupant `nick` away if the occupant has others (stored);
    /// false when it is the occupant's only session (the caller removes the occupant).
    fn drop_session(&mut self, nick: &str, from: &Jid) -> bool {
        let Some(o) = self.occupants.get_mut(nick) else {
            return false;
        };
        if !o.remove_session(&from.to_string()) {
            return false;
        }
        self.put_occupant(nick);
        true
    }

    /// Take `nick` out of the room; a temporary room left empty goes (§10.1.3
    /// `persistentroom` false).
    fn remove_occupant(&mut self, nick: &str) {
        self.occupants.remove(nick);
        self.put_occupant(nick);
        let persistent = self
            .meta()
            .is_some_and(|m| m.config.persistent && !m.locked);
        if self.occupants.is_empty() && !persistent {
            self.fx.destroy = true;
        }
    }

    /// Remove an occupant with an unavailable presence carrying `item` and `statuses`
    /// (kick 307, ban 301, affiliation 321, members-only 322, error 333).
    fn expel(&mut self, nick: &str, item: ItemView, statuses: &[u16]) {
        let Some(occ) = self.occupants.get(nick).cloned() else {
            return;
        };
        let item = ItemView {
            role: Some(Role::None),
            ..item
        };
        self.broadcast_presence(nick, &occ, item, statuses, true);
        self.remove_occupant(nick);
    }

    /// A message or presence error from an occupant's real JID (a bounce: its session or
    /// server is gone) takes it out of the room with status 333 (XEP-0045 §15.6: removed
    /// because of an error reply); other errors are dropped (a room never answers an
    /// error). IQ errors are answers, passed on like results.
    fn error_from(&mut self, from: &Jid, stanza: &Element) {
        let Some(nick) = self.nick_of(from) else {
            return;
        };
        let fatal = stanza
            .get_child("error", ns::CLIENT)
            .map(|e| {
                e.children().any(|c| {
                    matches!(
                        c.name.as_str(),
                        "service-unavailable"
                            | "recipient-unavailable"
                            | "item-not-found"
                            | "remote-server-not-found"
                            | "remote-server-timeout"
                            | "gone"
                            | "redirect"
                    ) && c.ns == ns::STANZAS_ERRORS
                })
            })
            .unwrap_or(false);
        if fatal && !self.drop_session(&nick, from) {
            self.expel(&nick, ItemView::default(), &[status::ERROR_REMOVED]);
        }
    }

    // ---- messages -------------------------------------------------------------------

    fn message(&mut self, from: &Jid, to: &Jid, nick: Option<&str>, stanza: Element) {
        if self.meta.is_none() {
            return self.reply_error(&stanza, from, to, Cond::ItemNotFound);
        }
        let sender = self.nick_of(from);
        if stanza.attr("type") == Some("groupchat") {
            if nick.is_some() {
                // §7.5: groupchat goes to the room, never to one occupant.
                return self.reply_error(&stanza, from, to, Cond::BadRequest);
            }
            let Some(sender) = sender else {
                // §7.4: only occupants speak.
                return self.reply_error(&stanza, from, to, Cond::NotAcceptable);
            };
            return self.groupchat(from, to, &sender, stanza);
        }
        if let Some(target) = nick {
            return self.private_message(from, to, sender, target, stanza);
        }
        if let Some(form) = muc::parse_voice_form(&stanza) {
            return self.voice_form(from, to, sender, form, &stanza);
        }
        let invites = muc::parse_invites(&stanza);
        if !invites.is_empty() {
            return self.invite(from, to, sender, &invites, &stanza);
        }
        if let Some(decline) = muc::parse_decline(&stanza) {
            // §7.8.2: the invitee declines; the room tells the inviter, from the room.
            let Ok(inviter) = Jid::parse(&decline.to) else {
                return self.reply_error(&stanza, from, to, Cond::JidMalformed);
            };
            let m = muc::declined(&from.to_bare().to_string(), decline.reason.as_deref());
            let room = self.jid.to_string();
            return self.send(m, &room, &inviter.to_string());
        }
        // Anything else to the bare room (registration, ...) is not handled.
        self.reply_error(&stanza, from, to, Cond::FeatureNotImplemented);
    }

    /// §7.13: a visitor's voice request goes to every moderator as a form; §8.6: a
    /// moderator's approval grants the voice.
    fn voice_form(
        &mut self,
        from: &Jid,
        to: &Jid,
        sender: Option<String>,
        form: muc::VoiceForm,
        stanza: &Element,
    ) {
        let Some(sender) = sender else {
            return self.reply_error(stanza, from, to, Cond::NotAcceptable);
        };
        let role = self.occupants.get(&sender).map_or(Role::None, |o| o.role);
        match form {
            muc::VoiceForm::Request => {
                if role != Role::Visitor {
                    // Only visitors lack voice.
                    return;
                }
                let jid = from.to_string();
                let moderators: Vec<String> = self
                    .occupants
                    .values()
                    .filter(|o| o.role == Role::Moderator)
                    .flat_map(|o| o.sessions())
                    .collect();
                let room = self.jid.to_string();
                for m in moderators {
                    let mut f = muc::voice_request_form(&jid, &sender);
                    f.set_attr("id", format!("voice-{}", self.now_ms));
                    self.send(f, &room, &m);
                }
            }
            muc::VoiceForm::Decision { nick, allow } => {
                if role != Role::Moderator {
                    return self.reply_error(stanza, from, to, Cond::Forbidden);
                }
                let is_visitor = self.occupants.get(&nick).map(|o| o.role) == Some(Role::Visitor);
                if allow && is_visitor {
                    self.set_role(&nick, Role::Participant, Some(sender), None);
                }
            }
        }
    }

    fn too_big(&self, stanza: &Element) -> bool {
        stanza.to_xml_string().len() > self.settings.max_message_bytes
    }

    fn groupchat(&mut self, from: &Jid, to: &Jid, sender: &str, mut stanza: Element) {
        let Some(occ) = self.occupants.get(sender).cloned() else {
            return;
        };
        if self.too_big(&stanza) {
            // Before anything is stored (a subject too).
            return self.reply_error(&stanza, from, to, Cond::PolicyViolation);
        }
        let config = self.config();
        let subject = stanza.get_child("subject", ns::CLIENT).map(|s| s.text());
        let has_body = stanza.get_child("body", ns::CLIENT).is_some();
        if let (Some(text), false) = (&subject, has_body) {
            // §8.1: moderators change the subject; others only if the room lets them.
            let allowed =
                occ.role == Role::Moderator || (config.change_subject && occ.role.has_voice());
            if !allowed {
                return self.reply_error(&stanza, from, to, Cond::Forbidden);
            }
            if let Some(m) = self.meta.as_mut() {
                m.subject = Some(Subject {
                    text: text.clone(),
                    nick: sender.to_owned(),
                });
            }
            self.put_meta();
        } else if config.moderated && !occ.role.has_voice() {
            // §7.4 / §8.3: visitors in a moderated room have no voice.
            return self.reply_error(&stanza, from, to, Cond::Forbidden);
        }
        let room = self.jid.to_string();
        let from_nick = self.occupant_jid(sender);
        // XEP-0359 §3 and XEP-0421 §4: forged ids go; the room stamps its own.
        proto::stanza_id::strip_forged(&mut stanza, &room);
        stanza.remove_children(|c| c.is("occupant-id", ns::OCCUPANT_ID));
        let seq = self.next_seq;
        let id = match self.message_id {
            Some(id) => id.to_string(),
            None => format!("{}-{seq}", self.now_ms),
        };
        proto::stanza_id::add(&mut stanza, &room, &id);
        stanza.push_child(
            Element::new("occupant-id", ns::OCCUPANT_ID)
                .with_attr("id", self.occupant_id(&occ.jid)),
        );
        stanza.set_attr("from", from_nick.clone());
        stanza.remove_attr("to");
        // History: the last `max_history` messages with a body (§7.2.15); chat states and
        // subject changes are not history. An archived message is history from the archive
        // (the host reads the room's newest); the others are kept here.
        if has_body && !self.archive_message(sender, &stanza) {
            // The counter has a key of its own: a message rewrites a number, not the room.
            self.next_seq += 1;
            self.fx
                .writes
                .push((KEY_SEQ.into(), Some(self.next_seq.to_string())));
            if self.settings.max_history > 0 {
                let entry = HistoryEntry {
                    ms: self.now_ms,
                    xml: stanza.to_xml_string(),
                };
                self.fx
                    .writes
                    .push((history_key(seq), serde_json::to_string(&entry).ok()));
            }
            if let Some(old) = seq.checked_sub(self.settings.max_history as u64) {
                self.fx.writes.push((history_key(old), None));
            }
        }
        // §7.4: to every occupant, the sender included, with the same id.
        let receivers: Vec<String> = self.occupants.values().flat_map(|o| o.sessions()).collect();
        self.send_each(&stanza, &from_nick, receivers);
        self.fx.reflected += 1;
    }

    /// XEP-0313 §5: a reflected groupchat message goes to the room's archive under the id
    /// its receivers saw, unless it asks not to be stored (XEP-0334). Whether it went.
    fn archive_message(&mut self, sender: &str, stanza: &Element) -> bool {
        let Some(id) = self.message_id.filter(|_| self.archive) else {
            return false;
        };
        if proto::mam::forbids_storage(stanza) {
            return false;
        }
        self.fx.archive.push(ArchiveEntry {
            id,
            nick: sender.to_owned(),
            xml: stanza.to_xml_string(),
        });
        true
    }

    /// Who may read the room's archive (XEP-0313 §5 leaves it to the room; this is Prosody's
    /// mod_muc_mam rule, tightened for passwords and locks): an outcast never; an occupant
    /// always; members, admins and owners even when absent; anyone else only in a room that
    /// is open (not members-only, without a password, configured), as they could join it.
    pub fn may_read_archive(&self, who: &Jid) -> Result<(), Cond> {
        let Some(meta) = self.meta() else {
            return Err(Cond::ItemNotFound);
        };
        let affiliation = self.affiliation(who);
        if affiliation == Affiliation::Outcast {
            return Err(Cond::Forbidden);
        }
        let affiliated = matches!(
            affiliation,
            Affiliation::Member | Affiliation::Admin | Affiliation::Owner
        );
        if affiliated || self.nick_of(who).is_some() {
            return Ok(());
        }
        let config = &meta.config;
        if config.members_only || !config.password.is_empty() || meta.locked {
            return Err(Cond::Forbidden);
        }
        Ok(())
    }

    fn private_message(
        &mut self,
        from: &Jid,
        to: &Jid,
        sender: Option<String>,
        target: &str,
        mut stanza: Element,
    ) {
        let Some(sender) = sender else {
            // §7.5: only occupants send private messages.
            return self.reply_error(&stanza, from, to, Cond::NotAcceptable);
        };
        let Some(recipients) = self.occupants.get(target).map(|o| o.sessions()) else {
            // §7.5.
            return self.reply_error(&stanza, from, to, Cond::ItemNotFound);
        };
        let role = self.occupants.get(&sender).map_or(Role::None, |o| o.role);
        if !self.config().allow_pm.allows(role) {
            return self.reply_error(&stanza, from, to, Cond::Forbidden);
        }
        if self.too_big(&stanza) {
            return self.reply_error(&stanza, from, to, Cond::PolicyViolation);
        }
        // §7.5: from the sender's occupant JID, marked with an empty `#user` `<x/>`.
        if stanza.get_child("x", ns::MUC_USER).is_none() {
            stanza.push_child(Element::new("x", ns::MUC_USER));
        }
        let f = self.occupant_jid(&sender);
        self.send_each(&stanza, &f, recipients);
    }

    fn invite(
        &mut self,
        from: &Jid,
        to: &Jid,
        sender: Option<String>,
        invites: &[muc::Invite],
        stanza: &Element,
    ) {
        let config = self.config();
        let affiliation = self.affiliation(from);
        let Some(sender) = sender else {
            return self.reply_error(stanza, from, to, Cond::NotAcceptable);
        };
        let role = self.occupants.get(&sender).map_or(Role::None, |o| o.role);
        // §7.8.2: in a members-only room only admins and owners invite unless the room lets
        // occupants do it.
        let may = if config.members_only {
            affiliation >= Affiliation::Admin || config.allow_invites
        } else {
            role >= Role::Participant || config.allow_invites
        };
        if !may {
            return self.reply_error(stanza, from, to, Cond::Forbidden);
        }
        let mut invited = Vec::new();
        for inv in invites {
            let Ok(invitee) = Jid::parse(&inv.to) else {
                return self.reply_error(stanza, from, to, Cond::JidMalformed);
            };
            invited.push((invitee, inv.reason.clone()));
        }
        let mut affs_changed = false;
        for (invitee, reason) in invited {
            let bare = invitee.to_bare().to_string();
            if config.members_only
                && self
                    .affs
                    .get(&bare)
                    .is_none_or(|a| *a < Affiliation::Member)
            {
                // §7.8.2: the invitee of a members-only room becomes a member.
                if self.affs.get(&bare) != Some(&Affiliation::Outcast) {
                    self.affs.insert(bare, Affiliation::Member);
                    affs_changed = true;
                }
            }
            let password = (!config.password.is_empty()).then_some(config.password.as_str());
            let mut msg = muc::invitation(&from.to_string(), reason.as_deref(), password);
            msg.push_child(Element::new("body", ns::CLIENT).with_text(format!(
                "{} invites you to the room {}",
                from.to_bare(),
                self.jid
            )));
            let room = self.jid.to_string();
            self.send(msg, &room, &invitee.to_string());
        }
        if affs_changed {
            self.put_affs();
        }
    }

    // ---- IQs ------------------------------------------------------------------------

    fn iq(&mut self, from: &Jid, to: &Jid, nick: Option<&str>, stanza: &Element) {
        let kind = stanza.attr("type");
        if !matches!(kind, Some("get") | Some("set")) {
            if let Some(nick) = nick {
                self.iq_response(from, nick, stanza);
            }
            return;
        }
        let Some(payload) = stanza.children().next().cloned() else {
            return self.reply_error(stanza, from, to, Cond::BadRequest);
        };
        let is_set = kind == Some("set");
        let result = match (nick, payload.ns.as_str(), is_set) {
            (Some(nick), ns::PING, false) if self.is_own_nick(from, nick) => Ok(None),
            (Some(nick), _, _) => return self.forward_iq(from, to, nick, stanza, &payload),
            (None, _, _) if self.meta.is_none() => Err(Cond::ItemNotFound),
            (None, ns::DISCO_INFO, false) => Ok(Some(self.disco_info(&payload))),
            (None, ns::DISCO_ITEMS, false) => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
            (None, ns::PING, false) => Ok(None),
            (None, ns::MUC_OWNER, false) => self.owner_get(from),
            (None, ns::MUC_OWNER, true) => self.owner_set(from, &payload),
            (None, ns::MUC_ADMIN, false) => self.admin_get(from, &payload),
            (None, ns::MUC_ADMIN, true) => self.admin_set(from, &payload),
            (None, avatar::NS_VCARD, _) => self.vcard_iq(from, &payload, is_set),
            _ => Err(Cond::ServiceUnavailable),
        };
        match result {
            Ok(payload) => {
                let mut reply = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", stanza.attr("id").unwrap_or_default());
                if let Some(p) = payload {
                    reply.push_child(p);
                }
                self.send(reply, &to.to_string(), &from.to_string());
            }
            Err(cond) => self.reply_error(stanza, from, to, cond),
        }
    }

    /// XEP-0410 §4: a ping to one's own occupant JID is answered by the room.
    fn is_own_nick(&self, from: &Jid, nick: &str) -> bool {
        self.occupants
            .get(nick)
            .is_some_and(|o| o.has(&from.to_string()))
    }

    /// IQs to an occupant JID (XEP-0045 §7.5's private traffic, XEP-0410 §4's pings): from an
    /// occupant, passed on to the occupant's real JID
    /// (a vCard request to its bare JID, XEP-0054 being the account's), `from` the sender's
    /// occupant JID; the answer comes back through [`Room::iq_response`]. A non-occupant
    /// gets `not-acceptable` (XEP-0410 §4: the client learns it is not joined).
    fn forward_iq(
        &mut self,
        from: &Jid,
        to: &Jid,
        nick: &str,
        stanza: &Element,
        payload: &Element,
    ) {
        let Some(sender) = self.nick_of(from) else {
            return self.reply_error(stanza, from, to, Cond::NotAcceptable);
        };
        let Some(target) = self.occupants.get(nick).map(|o| o.jid.clone()) else {
            return self.reply_error(stanza, from, to, Cond::ItemNotFound);
        };
        let target = if payload.ns == "vcard-temp" {
            Jid::parse(&target).map_or(target, |j| j.to_bare().to_string())
        } else {
            target
        };
        let f = self.occupant_jid(&sender);
        self.send(stanza.clone(), &f, &target);
    }

    /// The answer to a forwarded IQ, from an occupant's real JID (or its account's bare
    /// JID) to the occupant JID of the requester: passed on to the requester's real JID,
    /// `from` the answerer's occupant JID.
    fn iq_response(&mut self, from: &Jid, nick: &str, stanza: &Element) {
        // The answer goes to each session of the requester (the one that asked knows the
        // id; the others ignore an answer they did not ask for).
        let Some(requesters) = self.occupants.get(nick).map(|o| o.sessions()) else {
            return;
        };
        let responder = self.nick_of(from).or_else(|| {
            let bare = from.to_bare().to_string();
            self.occupants
                .iter()
                .find(|(_, o)| Jid::parse(&o.jid).is_ok_and(|j| j.to_bare().to_string() == bare))
                .map(|(n, _)| n.clone())
        });
        let Some(responder) = responder else {
            return;
        };
        let f = self.occupant_jid(&responder);
        self.send_each(stanza, &f, requesters);
    }

    fn disco_info(&self, payload: &Element) -> Element {
        let config = self.config();
        let name = if config.name.is_empty() {
            self.jid.local().unwrap_or_default().to_owned()
        } else {
            config.name.clone()
        };
        let mut q = Element::new("query", ns::DISCO_INFO);
        if let Some(node) = payload.attr("node") {
            q.set_attr("node", node);
        }
        q.push_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", name),
        );
        let mut features = config.features();
        features.push(ns::DISCO_INFO);
        if self.archive {
            // XEP-0313 §7: the room's archive is queried at its JID.
            features.extend([ns::MAM, ns::MAM_EXTENDED]);
        }
        features.push(avatar::NS_VCARD);
        features.sort_unstable();
        features.dedup();
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        // §15.5.4: the room information form.
        let field = |var: &str, v: String| {
            Element::new("field", ns::DATA_FORMS)
                .with_attr("var", var)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(v))
        };
        q.push_child(
            Element::new("x", ns::DATA_FORMS)
                .with_attr("type", "result")
                .with_child(field("FORM_TYPE", ns::MUC_ROOMINFO.into()).with_attr("type", "hidden"))
                .with_child(field(
                    "muc#roominfo_description",
                    config.description.clone(),
                ))
                .with_child(field(
                    "muc#roominfo_occupants",
                    self.occupants.len().to_string(),
                ))
                .with_child(field(
                    "muc#roominfo_subject",
                    self.meta()
                        .and_then(|m| m.subject.as_ref().map(|s| s.text.clone()))
                        .unwrap_or_default(),
                )),
        );
        self.add_avatar_field(&mut q);
        q
    }

    fn owner_get(&self, from: &Jid) -> Result<Option<Element>, Cond> {
        if self.affiliation(from) != Affiliation::Owner {
            return Err(Cond::Forbidden);
        }
        Ok(Some(
            Element::new("query", ns::MUC_OWNER).with_child(self.config().to_form()),
        ))
    }

    fn owner_set(&mut self, from: &Jid, query: &Element) -> Result<Option<Element>, Cond> {
        if self.affiliation(from) != Affiliation::Owner {
            return Err(Cond::Forbidden);
        }
        if let Some(d) = query.get_child("destroy", ns::MUC_OWNER) {
            self.destroy(d);
            return Ok(None);
        }
        let Some(x) = query.get_child("x", ns::DATA_FORMS) else {
            return Err(Cond::BadRequest);
        };
        let locked = self.meta().is_some_and(|m| m.locked);
        if x.attr("type") == Some("cancel") {
            // §10.1.3: cancelling the initial configuration destroys the room.
            if locked {
                self.destroy(&Element::new("destroy", ns::MUC_OWNER));
            }
            return Ok(None);
        }
        let before = self.config();
        let mut config = before.clone();
        config.apply(x).map_err(|_| Cond::NotAcceptable)?;
        if let Some(m) = self.meta.as_mut() {
            m.config = config.clone();
            m.locked = false;
        }
        self.put_meta();
        // §6.3: public rooms are listed in the service's disco#items, hidden ones are not.
        let name = if config.name.is_empty() {
            self.jid.local().unwrap_or_default().to_owned()
        } else {
            config.name.clone()
        };
        self.fx.directory = Some(Some(DirectoryEntry {
            name,
            public: config.public,
        }));
        // §10.2.1: occupants hear of the change (104; 172/173 when the JIDs' visibility
        // changed).
        let mut codes = vec![status::CONFIG_CHANGED];
        if before.whois != config.whois {
            codes.push(match config.whois {
                Whois::Anyone => status::NOW_NON_ANONYMOUS,
                Whois::Moderators => status::NOW_SEMI_ANONYMOUS,
            });
        }
        if !locked {
            let room = self.jid.to_string();
            let receivers: Vec<String> =
                self.occupants.values().flat_map(|o| o.sessions()).collect();
            for r in receivers {
                let m = Element::new("message", ns::CLIENT)
                    .with_attr("type", "groupchat")
                    .with_attr("id", format!("config-{}", self.now_ms))
                    .with_child(muc::status_x(&codes));
                self.send(m, &room, &r);
            }
        }
        if config.members_only && !before.members_only {
            // §9.4 / §10.2: non-members leave a room that became members-only (322).
            let out: Vec<String> = self
                .occupants
                .iter()
                .filter(|(_, o)| self.affiliation_of(o) < Affiliation::Member)
                .map(|(n, _)| n.clone())
                .collect();
            for n in out {
                self.expel(&n, ItemView::default(), &[status::MEMBERS_ONLY_REMOVED]);
            }
        }
        Ok(None)
    }

    /// The operator destroys the room (`switchboard muc destroy`), as an owner would.
    pub fn destroy_by_operator(&mut self, reason: Option<&str>) {
        let mut d = Element::new("destroy", ns::MUC_OWNER);
        if let Some(r) = reason {
            d.push_child(Element::new("reason", ns::MUC_OWNER).with_text(r));
        }
        self.destroy(&d);
    }

    /// §10.9: every occupant gets unavailable with `<destroy/>` (alternate venue, reason),
    /// then the room goes.
    fn destroy(&mut self, d: &Element) {
        let mut destroy = Element::new("destroy", ns::MUC_USER);
        if let Some(j) = d.attr("jid") {
            destroy.set_attr("jid", j);
        }
        if let Some(r) = d.get_child("reason", ns::MUC_OWNER) {
            destroy.push_child(Element::new("reason", ns::MUC_USER).with_text(r.text()));
        }
        let occupants: Vec<(String, Occupant)> = self
            .occupants
            .iter()
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        for (n, o) in occupants {
            let item = ItemView {
                affiliation: Some(Affiliation::None),
                role: Some(Role::None),
                ..Default::default()
            };
            let mut x = muc::user_x(&item, &[status::SELF]);
            x.push_child(destroy.clone());
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_child(x);
            let f = self.occupant_jid(&n);
            self.send_each(&p, &f, o.sessions());
        }
        self.occupants.clear();
        self.fx.destroy = true;
    }

    fn admin_get(&self, from: &Jid, query: &Element) -> Result<Option<Element>, Cond> {
        let items = muc::parse_admin_items(query).ok_or(Cond::BadRequest)?;
        let item = &items[0];
        let affiliation = self.affiliation(from);
        let role = self
            .nick_of(from)
            .and_then(|n| self.occupants.get(&n).map(|o| o.role))
            .unwrap_or(Role::None);
        if let Some(wanted) = item.affiliation {
            // §9.5, §10.5, §10.8: admins and owners read the affiliation lists.
            if affiliation < Affiliation::Admin {
                return Err(Cond::Forbidden);
            }
            let list: Vec<(String, Affiliation)> = self
                .affs
                .iter()
                .filter(|(_, a)| **a == wanted)
                .map(|(j, a)| (j.clone(), *a))
                .collect();
            return Ok(Some(muc::affiliation_list(&list)));
        }
        // §8.5 voice list, §9.8 moderator list: by role, for moderators.
        let wanted = item.role.ok_or(Cond::BadRequest)?;
        if role != Role::Moderator {
            return Err(Cond::Forbidden);
        }
        let mut q = Element::new("query", ns::MUC_ADMIN);
        for (n, o) in self.occupants.iter().filter(|(_, o)| o.role == wanted) {
            let view = ItemView {
                affiliation: Some(self.affiliation_of(o)),
                role: Some(o.role),
                jid: Some(o.jid.clone()),
                nick: Some(n.clone()),
                ..Default::default()
            };
            q.push_child(view.element(ns::MUC_ADMIN));
        }
        Ok(Some(q))
    }

    /// §8–§10 changes of roles and affiliations; all items or none (§9.1: a list of changes
    /// is atomic).
    fn admin_set(&mut self, from: &Jid, query: &Element) -> Result<Option<Element>, Cond> {
        let items = muc::parse_admin_items(query).ok_or(Cond::BadRequest)?;
        let actor_aff = self.affiliation(from);
        let actor_nick = self.nick_of(from);
        let actor_role = actor_nick
            .as_ref()
            .and_then(|n| self.occupants.get(n).map(|o| o.role))
            .unwrap_or(Role::None);
        // Check every item first.
        for item in &items {
            if let Some(new) = item.affiliation {
                let target = item
                    .jid
                    .as_deref()
                    .and_then(|j| Jid::parse(j).ok())
                    .or_else(|| {
                        let n = item.nick.as_deref()?;
                        Jid::parse(&self.occupants.get(n)?.jid).ok()
                    })
                    .ok_or(Cond::BadRequest)?;
                let current = self.affiliation(&target);
                if !muc::may_set_affiliation(actor_aff, current, new) {
                    return Err(Cond::NotAllowed);
                }
            } else if let Some(new) = item.role {
                let nick = item.nick.as_deref().ok_or(Cond::BadRequest)?;
                let target = self.occupants.get(nick).ok_or(Cond::ItemNotFound)?;
                let target_aff = self.affiliation_of(target);
                if !muc::may_set_role(actor_role, actor_aff, target.role, target_aff, new) {
                    return Err(if actor_role == Role::Moderator {
                        Cond::NotAllowed
                    } else {
                        Cond::Forbidden
                    });
                }
            }
        }
        // §10.6 / §10.7: the room keeps at least one owner.
        let mut next = self.affs.clone();
        for item in items.iter().filter(|i| i.affiliation.is_some()) {
            if let Some(jid) = item.jid.as_deref().and_then(|j| Jid::parse(j).ok()) {
                let bare = jid.to_bare().to_string();
                match item.affiliation {
                    Some(Affiliation::None) => next.remove(&bare),
                    Some(a) => next.insert(bare, a),
                    None => None,
                };
            }
        }
        if !next.values().any(|a| *a == Affiliation::Owner) {
            return Err(Cond::Conflict);
        }
        let actor = actor_nick.clone();
        for item in items {
            if let Some(new) = item.affiliation {
                self.set_affiliation(&item, new, actor.clone());
            } else if let (Some(new), Some(nick)) = (item.role, item.nick.as_deref()) {
                self.set_role(nick, new, actor.clone(), item.reason.clone());
            }
        }
        Ok(None)
    }

    fn set_role(&mut self, nick: &str, new: Role, actor: Option<String>, reason: Option<String>) {
        if new == Role::None {
            // §8.2: kicked (307).
            return self.expel(
                nick,
                ItemView {
                    actor,
                    reason,
                    ..Default::default()
                },
                &[status::KICKED],
            );
        }
        let Some(occ) = self.occupants.get_mut(nick) else {
            return;
        };
        occ.role = new;
        let occ = occ.clone();
        self.put_occupant(nick);
        // §8.3/§8.4/§9.6: the new role, shown to all.
        self.broadcast_presence(
            nick,
            &occ,
            ItemView {
                actor,
                reason,
                ..Default::default()
            },
            &[],
            false,
        );
    }

    fn set_affiliation(&mut self, item: &muc::AdminItem, new: Affiliation, actor: Option<String>) {
        let target = item
            .jid
            .as_deref()
            .and_then(|j| Jid::parse(j).ok())
            .or_else(|| {
                let n = item.nick.as_deref()?;
                Jid::parse(&self.occupants.get(n)?.jid).ok()
            });
        let Some(target) = target else {
            return;
        };
        let bare = target.to_bare().to_string();
        if new == Affiliation::None {
            self.affs.remove(&bare);
        } else {
            self.affs.insert(bare.clone(), new);
        }
        self.put_affs();
        let config = self.config();
        let present: Vec<String> = self
            .occupants
            .iter()
            .filter(|(_, o)| Jid::parse(&o.jid).is_ok_and(|j| j.to_bare().to_string() == bare))
            .map(|(n, _)| n.clone())
            .collect();
        for nick in present {
            let item_view = ItemView {
                affiliation: Some(new),
                actor: actor.clone(),
                reason: item.reason.clone(),
                ..Default::default()
            };
            if new == Affiliation::Outcast {
                // §9.1: banned (301).
                self.expel(&nick, item_view, &[status::BANNED]);
            } else if config.members_only && new < Affiliation::Member {
                // §9.4: no longer a member of a members-only room (321).
                self.expel(&nick, item_view, &[status::AFFILIATION_REMOVED]);
            } else if let Some(occ) = self.occupants.get_mut(&nick) {
                occ.role = new.default_role(config.moderated);
                let occ = occ.clone();
                self.put_occupant(&nick);
                self.broadcast_presence(&nick, &occ, item_view, &[], false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    fn el(s: &str) -> Element {
        Element::parse(s).unwrap()
    }

    /// Apply a room's writes to a stored map, as the shard would.
    struct Host {
        entries: BTreeMap<String, String>,
        settings: Settings,
        now: u64,
        /// What the last stanza archived (the room archives when [`Host::archive`]).
        archived: Vec<ArchiveEntry>,
        archive: bool,
    }

    impl Host {
        fn new() -> Host {
            Host {
                entries: BTreeMap::new(),
                settings: Settings::default(),
                now: 1_000_000,
                archived: Vec::new(),
                archive: false,
            }
        }

        fn run(&mut self, from: &str, to: &str, xml: &str) -> Vec<Element> {
            self.now += 1000;
            let to = jid(to);
            let mut room = Room::new(to.to_bare(), &self.settings, self.now);
            room.meta = self
                .entries
                .get(KEY_META)
                .and_then(|m| serde_json::from_str(m).ok());
            room.next_seq = self
                .entries
                .get(KEY_SEQ)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            room.affs = self
                .entries
                .get(KEY_AFF)
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_default();
            for (k, v) in &self.entries {
                if let Some(n) = k.strip_prefix(OCCUPANT_PREFIX) {
                    room.occupants
                        .insert(n.to_owned(), serde_json::from_str(v).unwrap());
                }
                if k.starts_with(HISTORY_PREFIX) {
                    room.history.push(serde_json::from_str(v).unwrap());
                }
            }
            let mut stanza = el(xml);
            stanza.set_attr("from", from);
            stanza.set_attr("to", to.to_string());
            room.archive = self.archive;
            room.message_id = Some(ArchiveId::new(self.now, 1, 0));
            room.handle(
                Input {
                    from: &jid(from),
                    to: &to,
                    stanza,
                    may_create: true,
                },
                || "secret".into(),
            );
            let mut fx = room.finish();
            self.archived = std::mem::take(&mut fx.archive);
            if fx.destroy {
                self.entries.clear();
            } else {
                for (k, v) in fx.writes {
                    match v {
                        Some(v) => self.entries.insert(k, v),
                        None => self.entries.remove(&k),
                    };
                }
            }
            fx.out
        }
    }

    const JOIN: &str =
        "<presence xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'/></presence>";
    const INSTANT: &str = "<iq xmlns='jabber:client' type='set' id='c'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>";

    fn codes(p: &Element) -> Vec<String> {
        p.get_child("x", ns::MUC_USER)
            .map(|x| {
                x.children()
                    .filter(|c| c.name == "status")
                    .filter_map(|c| c.attr("code").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn room_with_owner(h: &mut Host) {
        let out = h.run("owner@x/a", "r@conf.x/boss", JOIN);
        assert_eq!(codes(&out[0]), ["201", "110"]);
        let out = h.run("owner@x/a", "r@conf.x", INSTANT);
        assert_eq!(out[0].attr("type"), Some("result"));
    }

    #[test]
    fn create_join_speak_leave() {
        let mut h = Host::new();
        // Locked until configured: others get item-not-found.
        let out = h.run("owner@x/a", "r@conf.x/boss", JOIN);
        assert_eq!(codes(&out[0]), ["201", "110"]);
        let out = h.run("u@x/b", "r@conf.x/u", JOIN);
        assert_eq!(out[0].attr("type"), Some("error"));
        h.run("owner@x/a", "r@conf.x", INSTANT);
        let out = h.run("u@x/b", "r@conf.x/u", JOIN);
        // Existing occupant first, then the new one to the owner and itself (110 last),
        // then the subject.
        assert_eq!(out[0].attr("from"), Some("r@conf.x/u"));
        assert_eq!(out[0].attr("to"), Some("owner@x/a"));
        assert_eq!(out[1].attr("from"), Some("r@conf.x/boss"));
        assert_eq!(out[1].attr("to"), Some("u@x/b"));
        assert_eq!(codes(&out[2]), ["110"]);
        assert!(out[3].get_child("subject", ns::CLIENT).is_some());
        // The same client joining again gets the join sequence again; the owner sees an
        // update; another session of the same user joins as the same occupant.
        let out = h.run("u@x/b", "r@conf.x/u", JOIN);
        assert_eq!(out.len(), 4);
        assert_eq!(codes(&out[2]), ["110"]);
        let out = h.run("u@x/other", "r@conf.x/u", JOIN);
        assert!(out.iter().all(|p| p.attr("to") == Some("u@x/other")));
        assert!(out.iter().any(|p| codes(p) == ["110"]));
        assert!(h.entries["o:u"].contains("u@x/other"));
        // Both sessions get what the occupant gets; one leaving leaves the other in.
        let out = h.run(
            "u@x/other",
            "r@conf.x",
            "<message xmlns='jabber:client' type='groupchat'><body>2</body></message>",
        );
        assert_eq!(out.len(), 3);
        let out = h.run(
            "u@x/other",
            "r@conf.x/u",
            "<presence xmlns='jabber:client' type='unavailable'/>",
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].attr("to"), Some("u@x/other"));
        assert!(!h.entries["o:u"].contains("u@x/other"));
        // Nick conflict.
        let out = h.run("v@x/c", "r@conf.x/u", JOIN);
        assert!(out[0].to_xml_string().contains("conflict"));
        // Groupchat reflected to both, the sender included, with the same id.
        let out = h.run(
            "u@x/b",
            "r@conf.x",
            "<message xmlns='jabber:client' type='groupchat' id='m1'><body>hi</body></message>",
        );
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|m| m.attr("id") == Some("m1")
            && m.attr("from") == Some("r@conf.x/u")
            && m.get_child("stanza-id", ns::SID).is_some()));
        // An oversized subject is refused and not stored.
        let big = format!(
            "<message xmlns='jabber:client' type='groupchat'><subject>{}</subject></message>",
            "s".repeat(20_000)
        );
        let out = h.run("owner@x/a", "r@conf.x", &big);
        assert!(out[0].to_xml_string().contains("policy-violation"));
        assert!(!h.entries[KEY_META].contains("sss"));
        // A chat state is reflected but kept out of the history.
        let out = h.run(
            "u@x/b",
            "r@conf.x",
            "<message xmlns='jabber:client' type='groupchat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        assert_eq!(out.len(), 2);
        // History on join, with maxstanzas.
        let out = h.run("w@x/d", "r@conf.x/w", JOIN);
        assert_eq!(
            out.iter()
                .filter(|m| m.get_child("delay", ns::DELAY).is_some())
                .count(),
            2
        );
        assert!(out
            .iter()
            .any(|m| m.get_child("delay", ns::DELAY).is_some()));
        let out = h.run(
            "w@x/d",
            "r@conf.x/w",
            "<presence xmlns='jabber:client' type='unavailable'/>",
        );
        assert_eq!(out.len(), 3);
        let out = h.run(
            "w@x/d",
            "r@conf.x/w",
            "<presence xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
        );
        assert!(!out
            .iter()
            .any(|m| m.get_child("delay", ns::DELAY).is_some()));
        // A temporary room goes with its last occupant.
        for (who, nick) in [("w@x/d", "w"), ("u@x/b", "u"), ("owner@x/a", "boss")] {
            h.run(
                who,
                &format!("r@conf.x/{nick}"),
                "<presence xmlns='jabber:client' type='unavailable'/>",
            );
        }
        assert!(h.entries.is_empty());
    }

    #[test]
    fn kick_ban_and_bounce() {
        let mut h = Host::new();
        room_with_owner(&mut h);
        h.run("u@x/b", "r@conf.x/u", JOIN);
        let out = h.run(
            "owner@x/a",
            "r@conf.x",
            "<iq xmlns='jabber:client' type='set' id='k'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='u' role='none'/></query></iq>",
        );
        assert!(out
            .iter()
            .any(|p| p.attr("to") == Some("u@x/b") && codes(p) == ["307", "110"]));
        h.run("u@x/b", "r@conf.x/u", JOIN);
        h.run(
            "owner@x/a",
            "r@conf.x",
            "<iq xmlns='jabber:client' type='set' id='b'><query xmlns='http://jabber.org/protocol/muc#admin'><item jid='u@x' affiliation='outcast'/></query></iq>",
        );
        let out = h.run("u@x/b", "r@conf.x/u", JOIN);
        assert!(out[0].to_xml_string().contains("forbidden"));
        // An occupant whose session is gone is removed on the bounce (333).
        h.run("v@x/c", "r@conf.x/v", JOIN);
        let out = h.run(
            "v@x/c",
            "r@conf.x/boss",
            "<message xmlns='jabber:client' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        assert!(out
            .iter()
            .any(|p| p.attr("to") == Some("owner@x/a") && codes(p) == ["333"]));
        assert!(!h.entries.contains_key("o:v"));
    }

    #[test]
    fn the_archive_gets_each_groupchat_under_its_live_stanza_id() {
        let mut h = Host::new();
        h.archive = true;
        room_with_owner(&mut h);
        h.run("u@x/b", "r@conf.x/u", JOIN);
        // What u says to the room.
        let say = |h: &mut Host, xml: &str| h.run("u@x/b", "r@conf.x", xml);
        let out = say(
            &mut h,
            "<message xmlns='jabber:client' type='groupchat'><body>hi</body></message>",
        );
        assert_eq!(h.archived.len(), 1);
        let entry = &h.archived[0];
        assert_eq!(entry.nick, "u");
        for m in &out {
            let sid = m.get_child("stanza-id", ns::SID).and_then(|s| s.attr("id"));
            assert_eq!(sid, Some(entry.id.to_string().as_str()));
        }
        let stored = el(&entry.xml);
        assert_eq!(stored.attr("from"), Some("r@conf.x/u"));
        assert_eq!(stored.attr("to"), None);
        // Chat states and <no-store/> are reflected, not archived.
        say(
            &mut h,
            "<message xmlns='jabber:client' type='groupchat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        assert!(h.archived.is_empty());
        say(
            &mut h,
            "<message xmlns='jabber:client' type='groupchat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>",
        );
        assert!(h.archived.is_empty());
        // disco#info advertises it.
        let out = say(
            &mut h,
            "<iq xmlns='jabber:client' type='get' id='d'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let xml = out[0].to_xml_string();
        assert!(
            xml.contains(ns::MAM) && xml.contains(ns::MAM_EXTENDED),
            "{xml}"
        );
    }

    #[test]
    fn who_may_read_the_archive() {
        let mut h = Host::new();
        room_with_owner(&mut h);
        let load = |h: &Host| {
            let meta: Meta = serde_json::from_str(&h.entries[KEY_META]).unwrap();
            let affs = h
                .entries
                .get(KEY_AFF)
                .map(|a| serde_json::from_str(a).unwrap())
                .unwrap_or_default();
            (meta, affs)
        };
        let settings = Settings::default();
        let check = |h: &Host, who: &str| {
            let (meta, affs) = load(h);
            let mut room = Room::new(jid("r@conf.x"), &settings, 0);
            room.meta = Some(meta);
            room.affs = affs;
            room.may_read_archive(&jid(who))
        };
        assert_eq!(check(&h, "stranger@y/z"), Ok(()));
        assert_eq!(check(&h, "owner@x/other"), Ok(()));
        let (mut meta, mut affs) = load(&h);
        meta.config.members_only = true;
        affs.insert("member@x".to_string(), Affiliation::Member);
        affs.insert("bad@x".to_string(), Affiliation::Outcast);
        h.entries
            .insert(KEY_META.into(), serde_json::to_string(&meta).unwrap());
        h.entries
            .insert(KEY_AFF.into(), serde_json::to_string(&affs).unwrap());
        assert_eq!(check(&h, "stranger@y/z"), Err(Cond::Forbidden));
        assert_eq!(check(&h, "member@x/any"), Ok(()));
        assert_eq!(check(&h, "bad@x/any"), Err(Cond::Forbidden));
        let room = Room::new(jid("none@conf.x"), &settings, 0);
        assert_eq!(
            room.may_read_archive(&jid("a@x/b")),
            Err(Cond::ItemNotFound)
        );
    }
}
