//! XEP-0045 Multi-User Chat vocabulary, pure: roles and affiliations with the privilege rules
//! of §5 (who may kick, ban, grant voice or moderation, change affiliations), the join
//! element (`<x xmlns='…muc'>` with password and history request, §7.2) and the history
//! selection it asks for (§7.2.15), the `#user` `<x/>` of occupant presence with its status
//! codes (§15.6), the `#admin` items (§8–§9), the room configuration form (XEP-0004,
//! §15.5.3) and the mediated invitation (§7.8.2). No clock: callers pass the time.

use serde::{Deserialize, Serialize};

use crate::element::Element;
use crate::ns;

/// XEP-0045 §5.1: an occupant's role in the room, for the length of its visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
    /// §5.1.1: visitors may not speak in a moderated room.
    pub fn has_voice(self) -> bool {
        self >= Role::Participant
    }
}

/// XEP-0045 §5.2: a user's long-lived standing with the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
    /// §5.1.2: the role an occupant with this affiliation gets on entering (`moderated`:
    /// whether the room is moderated; `None` for an outcast, who may not enter).
    pub fn default_role(self, moderated: bool) -> Role {
        match self {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }
}

/// §5.2.1 and §9–§10: whether a user with affiliation `actor` may change the affiliation of
/// a user who has `current` to `new`. Owners may change anything (the last-owner rule is the
/// room's); admins may grant and take membership and ban, but only below admin.
pub fn may_set_affiliation(actor: Affiliation, current: Affiliation, new: Affiliation) -> bool {
    match actor {
        Affiliation::Owner => true,
        Affiliation::Admin => current < Affiliation::Admin && new < Affiliation::Admin,
        _ => false,
    }
}

/// §5.1.2 and §8–§9: whether an occupant with `actor_role`/`actor_aff` may change the role of
/// an occupant with `target_role`/`target_aff` to `new` (`Role::None` is a kick).
pub fn may_set_role(
    actor_role: Role,
    actor_aff: Affiliation,
    target_role: Role,
    target_aff: Affiliation,
    new: Role,
) -> bool {
    if actor_role != Role::Moderator {
        return false;
    }
    match new {
        // §8.2: a moderator cannot kick an admin or owner; an owner may kick an admin (the
        // room then demotes nobody's affiliation).
        Role::None => target_aff < Affiliation::Admin || actor_aff > target_aff,
        // §9.6: only admins and owners grant moderation.
        Role::Moderator => actor_aff >= Affiliation::Admin,
        // §8.3/§8.4 voice; §9.7 revoking moderation: admins and owners, never from an admin
        // or owner (they are moderators by affiliation).
        Role::Participant | Role::Visitor => {
            if target_aff >= Affiliation::Admin {
                false
            } else if target_role == Role::Moderator {
                actor_aff >= Affiliation::Admin
            } else {
                true
            }
        }
    }
}

/// What a join asked for (§7.2.1 `<x xmlns='…muc'>`, §7.2.6 password, §7.2.15 history).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Join {
    pub password: Option<String>,
    pub history: HistoryRequest,
}

/// §7.2.15: how much discussion history the joining occupant wants; all `None` means the
/// room's default (all it keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    pub max_chars: Option<usize>,
    pub max_stanzas: Option<usize>,
    pub seconds: Option<u64>,
    /// `since`, as milliseconds since the epoch.
    pub since_ms: Option<i64>,
}

impl HistoryRequest {
    /// Which of the kept messages to send: `items` are (time in ms, serialised length) of
    /// the kept messages, oldest first; the answer is the index of the first to send (all
    /// from there on). Every limit given applies (§7.2.15: "the room MUST send the smallest
    /// amount of traffic that meets any combination of the above criteria").
    pub fn first(&self, items: &[(u64, usize)], now_ms: u64) -> usize {
        let mut first = 0;
        if let Some(n) = self.max_stanzas {
            first = first.max(items.len().saturating_sub(n));
        }
        if let Some(secs) = self.seconds {
            let from = now_ms.saturating_sub(secs.saturating_mul(1000));
            first = first.max(items.iter().take_while(|(t, _)| *t < from).count());
        }
        if let Some(since) = self.since_ms {
            first = first.max(
                items
                    .iter()
                    .take_while(|(t, _)| (*t as i64) < since)
                    .count(),
            );
        }
        if let Some(max) = self.max_chars {
            // From the newest backwards, as many whole messages as fit.
            let mut total = 0usize;
            let mut keep = 0;
            for (_, len) in items.iter().rev() {
                total = total.saturating_add(*len);
                if total > max {
                    break;
                }
                keep += 1;
            }
            first = first.max(items.len() - keep);
        }
        first.min(items.len())
    }
}

/// The `<x xmlns='http://jabber.org/protocol/muc'>` of a presence, if it has one: a join
/// request (§7.2.1). Unparseable history attributes are ignored (the default applies).
pub fn parse_join(presence: &Element) -> Option<Join> {
    let x = presence.get_child("x", ns::MUC)?;
    let password = x.get_child("password", ns::MUC).map(|p| p.text());
    let history = x
        .get_child("history", ns::MUC)
        .map(|h| HistoryRequest {
            max_chars: h.attr("maxchars").and_then(|v| v.parse().ok()),
            max_stanzas: h.attr("maxstanzas").and_then(|v| v.parse().ok()),
            seconds: h.attr("seconds").and_then(|v| v.parse().ok()),
            since_ms: h.attr("since").and_then(crate::datetime::parse_ms),
        })
        .unwrap_or_default();
    Some(Join { password, history })
}

/// Status codes of §15.6 (the ones this implementation sends).
pub mod status {
    /// Non-anonymous room: every occupant sees real JIDs.
    pub const NON_ANONYMOUS: u16 = 100;
    /// Presence or message concerns the receiving occupant itself.
    pub const SELF: u16 = 110;
    /// Configuration changed: the room is now non-anonymous.
    pub const NOW_NON_ANONYMOUS: u16 = 172;
    /// Configuration changed: the room is now semi-anonymous.
    pub const NOW_SEMI_ANONYMOUS: u16 = 173;
    /// Configuration changed (not privacy related).
    pub const CONFIG_CHANGED: u16 = 104;
    /// A new room was created.
    pub const CREATED: u16 = 201;
    /// The service changed the occupant's nick.
    pub const NICK_ASSIGNED: u16 = 210;
    /// Banned.
    pub const BANNED: u16 = 301;
    /// New nickname (in the unavailable presence of a nick change).
    pub const NICK_CHANGED: u16 = 303;
    /// Kicked.
    pub const KICKED: u16 = 307;
    /// Removed because of an affiliation change.
    pub const AFFILIATION_REMOVED: u16 = 321;
    /// Removed because the room became members-only.
    pub const MEMBERS_ONLY_REMOVED: u16 = 322;
    /// Removed because the service shuts down.
    pub const SHUTDOWN: u16 = 332;
    /// Removed because of an error reply (the occupant's server or client failed).
    pub const ERROR_REMOVED: u16 = 333;
}

/// An occupant as `<item/>` shows it in presence (§7.2.3): affiliation and role always,
/// the real JID where the receiver may see it, the new nick in a nick change, the actor
/// and reason of a kick or ban.
#[derive(Debug, Clone, Default)]
pub struct ItemView {
    pub affiliation: Option<Affiliation>,
    pub role: Option<Role>,
    pub jid: Option<String>,
    pub nick: Option<String>,
    pub actor: Option<String>,
    pub reason: Option<String>,
}

impl ItemView {
    pub fn element(&self, ns_: &str) -> Element {
        let mut item = Element::new("item", ns_);
        if let Some(a) = self.affiliation {
            item.set_attr("affiliation", a.as_str());
        }
        if let Some(r) = self.role {
            item.set_attr("role", r.as_str());
        }
        if let Some(j) = &self.jid {
            item.set_attr("jid", j.clone());
        }
        if let Some(n) = &self.nick {
            item.set_attr("nick", n.clone());
        }
        if let Some(a) = &self.actor {
            item.push_child(Element::new("actor", ns_).with_attr("nick", a.clone()));
        }
        if let Some(r) = &self.reason {
            item.push_child(Element::new("reason", ns_).with_text(r.clone()));
        }
        item
    }
}

/// The `<x xmlns='…muc#user'>` of occupant presence: the item, then the status codes in the
/// order given (callers put 110 last, §7.2.3).
pub fn user_x(item: &ItemView, statuses: &[u16]) -> Element {
    let mut x = Element::new("x", ns::MUC_USER).with_child(item.element(ns::MUC_USER));
    for code in statuses {
        x.push_child(Element::new("status", ns::MUC_USER).with_attr("code", code.to_string()));
    }
    x
}

/// `<x xmlns='…muc#user'>` with status codes only (room messages: §10.2.1 config change).
pub fn status_x(statuses: &[u16]) -> Element {
    let mut x = Element::new("x", ns::MUC_USER);
    for code in statuses {
        x.push_child(Element::new("status", ns::MUC_USER).with_attr("code", code.to_string()));
    }
    x
}

/// One `<item/>` of an `#admin` request (§8–§9): who (a nick or a bare JID), the new role or
/// affiliation, the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminItem {
    pub nick: Option<String>,
    pub jid: Option<String>,
    pub role: Option<Role>,
    pub affiliation: Option<Affiliation>,
    pub reason: Option<String>,
}

/// The items of an `#admin` query. `None` when an item has an unknown role or affiliation,
/// or neither nor a target (bad-request).
pub fn parse_admin_items(query: &Element) -> Option<Vec<AdminItem>> {
    let mut out = Vec::new();
    for item in query.children().filter(|c| c.is("item", ns::MUC_ADMIN)) {
        let role = match item.attr("role") {
            Some(r) => Some(Role::parse(r)?),
            None => None,
        };
        let affiliation = match item.attr("affiliation") {
            Some(a) => Some(Affiliation::parse(a)?),
            None => None,
        };
        if role.is_none() && affiliation.is_none() {
            return None;
        }
        out.push(AdminItem {
            nick: item.attr("nick").map(str::to_owned),
            jid: item.attr("jid").map(str::to_owned),
            role,
            affiliation,
            reason: item
                .get_child("reason", ns::MUC_ADMIN)
                .map(|r| r.text())
                .filter(|r| !r.is_empty()),
        });
    }
    if out.is_empty() {
        return None;
    }
    Some(out)
}

/// `<query xmlns='…muc#admin'>` listing (bare JID, affiliation) (§9.5 member list, §10.5
/// owner list, ...).
pub fn affiliation_list(items: &[(String, Affiliation)]) -> Element {
    let mut q = Element::new("query", ns::MUC_ADMIN);
    for (jid, aff) in items {
        q.push_child(
            Element::new("item", ns::MUC_ADMIN)
                .with_attr("affiliation", aff.as_str())
                .with_attr("jid", jid.clone()),
        );
    }
    q
}

/// §15.5.3 `muc#roomconfig_whois`: who may see occupants' real JIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    Moderators,
    Anyone,
}

/// `muc#roomconfig_allowpm`: who may send private messages through the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }
    fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::None,
            _ => return None,
        })
    }
    /// Whether an occupant with `role` may send a private message.
    pub fn allows(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => true,
            AllowPm::Participants => role >= Role::Participant,
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::None => false,
        }
    }
}

/// A room's configuration (§15.5.3), as the owner's form sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// Empty: no password.
    pub password: String,
    pub whois: Whois,
    /// 0: the service's limit only.
    pub max_users: usize,
    pub change_subject: bool,
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: String::new(),
            whois: Whois::Moderators,
            max_users: 0,
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
        }
    }
}

/// A form field (XEP-0004 §3.2).
fn field(var: &str, kind: &str, label: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    for v in values {
        f.push_child(Element::new("value", ns::DATA_FORMS).with_text(*v));
    }
    f
}

fn option(f: &mut Element, value: &str) {
    f.push_child(
        Element::new("option", ns::DATA_FORMS)
            .with_attr("label", value)
            .with_child(Element::new("value", ns::DATA_FORMS).with_text(value)),
    );
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Why a submitted configuration form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("not a submitted muc#roomconfig form")]
    NotAForm,
    #[error("bad value for {0}")]
    BadValue(String),
}

impl RoomConfig {
    /// The configuration form (§10.1.3, `type='form'`).
    pub fn to_form(&self) -> Element {
        let max = self.max_users.to_string();
        let mut whois = field(
            "muc#roomconfig_whois",
            "list-single",
            "Who may discover real JIDs",
            &[match self.whois {
                Whois::Moderators => "moderators",
                Whois::Anyone => "anyone",
            }],
        );
        option(&mut whois, "moderators");
        option(&mut whois, "anyone");
        let mut pm = field(
            "muc#roomconfig_allowpm",
            "list-single",
            "Who may send private messages",
            &[self.allow_pm.as_str()],
        );
        for v in ["anyone", "participants", "moderators", "none"] {
            option(&mut pm, v);
        }
        Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(
                Element::new("title", ns::DATA_FORMS).with_text("Configuration of the room"),
            )
            .with_child(field("FORM_TYPE", "hidden", "", &[ns::MUC_ROOMCONFIG]))
            .with_child(field(
                "muc#roomconfig_roomname",
                "text-single",
                "Name",
                &[&self.name],
            ))
            .with_child(field(
                "muc#roomconfig_roomdesc",
                "text-single",
                "Description",
                &[&self.description],
            ))
            .with_child(field(
                "muc#roomconfig_persistentroom",
                "boolean",
                "Persistent (kept when the last occupant leaves)",
                &[flag(self.persistent)],
            ))
            .with_child(field(
                "muc#roomconfig_publicroom",
                "boolean",
                "Listed in the room directory",
                &[flag(self.public)],
            ))
            .with_child(field(
                "muc#roomconfig_membersonly",
                "boolean",
                "Members only",
                &[flag(self.members_only)],
            ))
            .with_child(field(
                "muc#roomconfig_moderatedroom",
                "boolean",
                "Moderated (only participants speak)",
                &[flag(self.moderated)],
            ))
            .with_child(field(
                "muc#roomconfig_passwordprotectedroom",
                "boolean",
                "Password required to enter",
                &[flag(!self.password.is_empty())],
            ))
            .with_child(field(
                "muc#roomconfig_roomsecret",
                "text-private",
                "Password",
                &[&self.password],
            ))
            .with_child(whois)
            .with_child(field(
                "muc#roomconfig_maxusers",
                "text-single",
                "Most occupants (0: the service's limit)",
                &[&max],
            ))
            .with_child(field(
                "muc#roomconfig_changesubject",
                "boolean",
                "Occupants may change the subject",
                &[flag(self.change_subject)],
            ))
            .with_child(field(
                "muc#roomconfig_allowinvites",
                "boolean",
                "Occupants may invite others",
                &[flag(self.allow_invites)],
            ))
            .with_child(pm)
    }

    /// Apply a submitted form (§10.1.4). Fields not in the form keep their value; unknown
    /// fields are ignored (XEP-0004 lets a service ignore what it does not know). A
    /// `type='cancel'` form is the caller's to recognise.
    pub fn apply(&mut self, x: &Element) -> Result<(), ConfigError> {
        if !x.is("x", ns::DATA_FORMS) || !matches!(x.attr("type"), None | Some("submit")) {
            return Err(ConfigError::NotAForm);
        }
        let mut next = self.clone();
        let mut protected: Option<bool> = None;
        for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
            let Some(var) = f.attr("var") else {
                continue;
            };
            let values: Vec<String> = f
                .children()
                .filter(|c| c.is("value", ns::DATA_FORMS))
                .map(|v| v.text())
                .collect();
            let one = values.first().map(String::as_str).unwrap_or("");
            let boolean = || match one {
                "1" | "true" => Ok(true),
                "0" | "false" | "" => Ok(false),
                _ => Err(ConfigError::BadValue(var.to_owned())),
            };
            match var {
                "FORM_TYPE" if one != ns::MUC_ROOMCONFIG => return Err(ConfigError::NotAForm),
                "muc#roomconfig_roomname" => next.name = one.to_owned(),
                "muc#roomconfig_roomdesc" => next.description = one.to_owned(),
                "muc#roomconfig_persistentroom" => next.persistent = boolean()?,
                "muc#roomconfig_publicroom" => next.public = boolean()?,
                "muc#roomconfig_membersonly" => next.members_only = boolean()?,
                "muc#roomconfig_moderatedroom" => next.moderated = boolean()?,
                "muc#roomconfig_passwordprotectedroom" => protected = Some(boolean()?),
                "muc#roomconfig_roomsecret" => next.password = one.to_owned(),
                "muc#roomconfig_whois" => {
                    next.whois = match one {
                        "moderators" => Whois::Moderators,
                        "anyone" => Whois::Anyone,
                        _ => return Err(ConfigError::BadValue(var.to_owned())),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    next.max_users = match one {
                        "" | "none" => 0,
                        n => n
                            .parse()
                            .map_err(|_| ConfigError::BadValue(var.to_owned()))?,
                    }
                }
                "muc#roomconfig_changesubject" => next.change_subject = boolean()?,
                "muc#roomconfig_allowinvites" => next.allow_invites = boolean()?,
                "muc#roomconfig_allowpm" => {
                    next.allow_pm =
                        AllowPm::parse(one).ok_or_else(|| ConfigError::BadValue(var.to_owned()))?
                }
                _ => {}
            }
        }
        if protected == Some(false) {
            next.password.clear();
        }
        *self = next;
        Ok(())
    }

    /// The disco#info features of a room with this configuration (§6.4, §15.2.2).
    pub fn features(&self) -> Vec<&'static str> {
        vec![
            ns::MUC,
            if self.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if self.public {
                "muc_public"
            } else {
                "muc_hidden"
            },
            if self.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if self.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if self.password.is_empty() {
                "muc_unsecured"
            } else {
                "muc_passwordprotected"
            },
            match self.whois {
                Whois::Anyone => "muc_nonanonymous",
                Whois::Moderators => "muc_semianonymous",
            },
            ns::OCCUPANT_ID,
            ns::MUC_SELF_PING,
            ns::SID,
        ]
    }
}

/// A mediated invitation an occupant sends through the room (§7.8.2): the invitee and the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub to: String,
    pub reason: Option<String>,
}

/// The invitations in a message's `<x xmlns='…muc#user'>`.
pub fn parse_invites(message: &Element) -> Vec<Invite> {
    let Some(x) = message.get_child("x", ns::MUC_USER) else {
        return Vec::new();
    };
    x.children()
        .filter(|c| c.is("invite", ns::MUC_USER))
        .filter_map(|i| {
            Some(Invite {
                to: i.attr("to")?.to_owned(),
                reason: i.get_child("reason", ns::MUC_USER).map(|r| r.text()),
            })
        })
        .collect()
}

/// The room's message to the invitee (§7.8.2): `<invite from=inviter>` with the reason and
/// the room's password, if any.
pub fn invitation(inviter: &str, reason: Option<&str>, password: Option<&str>) -> Element {
    let mut invite = Element::new("invite", ns::MUC_USER).with_attr("from", inviter);
    if let Some(r) = reason {
        invite.push_child(Element::new("reason", ns::MUC_USER).with_text(r));
    }
    let mut x = Element::new("x", ns::MUC_USER).with_child(invite);
    if let Some(p) = password {
        x.push_child(Element::new("password", ns::MUC_USER).with_text(p));
    }
    Element::new("message", ns::CLIENT).with_child(x)
}

/// A declined invitation (§7.8.2 "decline"): to whom the decline goes (the inviter) and
/// the reason.
pub fn parse_decline(message: &Element) -> Option<Invite> {
    let d = message
        .get_child("x", ns::MUC_USER)?
        .get_child("decline", ns::MUC_USER)?;
    Some(Invite {
        to: d.attr("to")?.to_owned(),
        reason: d.get_child("reason", ns::MUC_USER).map(|r| r.text()),
    })
}

/// The room's message to the inviter (§7.8.2): `<decline from=invitee>` with the reason.
pub fn declined(invitee: &str, reason: Option<&str>) -> Element {
    let mut decline = Element::new("decline", ns::MUC_USER).with_attr("from", invitee);
    if let Some(r) = reason {
        decline.push_child(Element::new("reason", ns::MUC_USER).with_text(r));
    }
    Element::new("message", ns::CLIENT)
        .with_child(Element::new("x", ns::MUC_USER).with_child(decline))
}

/// XEP-0045 §7.13 / §8.6: the FORM_TYPE of voice requests and their approval.
pub const NS_REQUEST: &str = "http://jabber.org/protocol/muc#request";

/// A `muc#request` form in a message to the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceForm {
    /// §7.13: an occupant asks for voice.
    Request,
    /// §8.6: a moderator answers a request: grant voice to `nick` or not.
    Decision { nick: String, allow: bool },
}

/// The voice request or decision in a message, if it carries a submitted `muc#request` form.
/// A form with `muc#request_allow` is a decision (it needs `muc#roomnick`).
pub fn parse_voice_form(message: &Element) -> Option<VoiceForm> {
    let x = message
        .children()
        .find(|c| c.is("x", ns::DATA_FORMS) && matches!(c.attr("type"), None | Some("submit")))?;
    let value = |var: &str| {
        x.children()
            .filter(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some(var))
            .find_map(|f| f.get_child("value", ns::DATA_FORMS).map(|v| v.text()))
    };
    if value("FORM_TYPE").as_deref() != Some(NS_REQUEST) {
        return None;
    }
    match value("muc#request_allow") {
        Some(allow) => Some(VoiceForm::Decision {
            nick: value("muc#roomnick")?,
            allow: matches!(allow.as_str(), "1" | "true"),
        }),
        None => Some(VoiceForm::Request),
    }
}

/// §8.6: the approval form a moderator gets for `nick` (real JID `jid`, shown only where
/// the moderator may see it: a moderator always may).
pub fn voice_request_form(jid: &str, nick: &str) -> Element {
    Element::new("message", ns::CLIENT).with_child(
        Element::new("x", ns::DATA_FORMS)
            .with_attr("type", "form")
            .with_child(Element::new("title", ns::DATA_FORMS).with_text("Voice request"))
            .with_child(Element::new("instructions", ns::DATA_FORMS).with_text(
                "To approve this request for voice, select the \"Grant voice to this person?\" \
                 checkbox and click OK. To skip this request, click the cancel button.",
            ))
            .with_child(field("FORM_TYPE", "hidden", "", &[NS_REQUEST]))
            .with_child(field(
                "muc#role",
                "list-single",
                "Requested role",
                &["participant"],
            ))
            .with_child(field("muc#jid", "jid-single", "User ID", &[jid]))
            .with_child(field(
                "muc#roomnick",
                "text-single",
                "Room Nickname",
                &[nick],
            ))
            .with_child(field(
                "muc#request_allow",
                "boolean",
                "Grant voice to this person?",
                &["false"],
            )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        Element::parse(s).unwrap()
    }

    #[test]
    fn default_roles_follow_affiliation_and_moderation() {
        assert_eq!(Affiliation::Owner.default_role(false), Role::Moderator);
        assert_eq!(Affiliation::Admin.default_role(true), Role::Moderator);
        assert_eq!(Affiliation::Member.default_role(true), Role::Participant);
        assert_eq!(Affiliation::None.default_role(false), Role::Participant);
        assert_eq!(Affiliation::None.default_role(true), Role::Visitor);
        assert_eq!(Affiliation::Outcast.default_role(false), Role::None);
        assert!(!Role::Visitor.has_voice() && Role::Participant.has_voice());
    }

    #[test]
    fn affiliation_changes_follow_section_5_2() {
        use Affiliation::*;
        assert!(may_set_affiliation(Owner, Admin, None));
        assert!(may_set_affiliation(Owner, None, Owner));
        assert!(may_set_affiliation(Admin, None, Member));
        assert!(may_set_affiliation(Admin, Member, Outcast));
        assert!(!may_set_affiliation(Admin, Admin, None));
        assert!(!may_set_affiliation(Admin, None, Admin));
        assert!(!may_set_affiliation(Member, None, Member));
        assert!(!may_set_affiliation(None, None, Outcast));
    }

    #[test]
    fn role_changes_follow_sections_8_and_9() {
        use Affiliation as A;
        use Role as R;
        // A moderator kicks a participant, not an admin.
        assert!(may_set_role(
            R::Moderator,
            A::None,
            R::Participant,
            A::None,
            R::None
        ));
        assert!(!may_set_role(
            R::Moderator,
            A::Member,
            R::Moderator,
            A::Admin,
            R::None
        ));
        // An owner kicks an admin.
        assert!(may_set_role(
            R::Moderator,
            A::Owner,
            R::Moderator,
            A::Admin,
            R::None
        ));
        // Voice.
        assert!(may_set_role(
            R::Moderator,
            A::None,
            R::Visitor,
            A::None,
            R::Participant
        ));
        assert!(may_set_role(
            R::Moderator,
            A::None,
            R::Participant,
            A::Member,
            R::Visitor
        ));
        assert!(!may_set_role(
            R::Participant,
            A::Member,
            R::Visitor,
            A::None,
            R::Participant
        ));
        // Moderation: granted by admins and owners only; never taken from an admin.
        assert!(!may_set_role(
            R::Moderator,
            A::None,
            R::Participant,
            A::None,
            R::Moderator
        ));
        assert!(may_set_role(
            R::Moderator,
            A::Admin,
            R::Participant,
            A::None,
            R::Moderator
        ));
        assert!(!may_set_role(
            R::Moderator,
            A::Owner,
            R::Moderator,
            A::Admin,
            R::Participant
        ));
        assert!(!may_set_role(
            R::Moderator,
            A::None,
            R::Moderator,
            A::None,
            R::Participant
        ));
        assert!(may_set_role(
            R::Moderator,
            A::Admin,
            R::Moderator,
            A::None,
            R::Participant
        ));
    }

    #[test]
    fn join_parses_password_and_history() {
        let p = el(
            "<presence xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'>\
             <password>pw</password><history maxstanzas='5' seconds='60' maxchars='x' \
             since='1970-01-01T00:00:10Z'/></x></presence>",
        );
        let j = parse_join(&p).unwrap();
        assert_eq!(j.password.as_deref(), Some("pw"));
        assert_eq!(j.history.max_stanzas, Some(5));
        assert_eq!(j.history.seconds, Some(60));
        assert_eq!(j.history.max_chars, None);
        assert_eq!(j.history.since_ms, Some(10_000));
        assert!(parse_join(&el("<presence xmlns='jabber:client'/>")).is_none());
    }

    #[test]
    fn history_selection_meets_every_limit() {
        let items = [(1_000, 10), (2_000, 10), (3_000, 10), (4_000, 10)];
        let all = HistoryRequest::default();
        assert_eq!(all.first(&items, 5_000), 0);
        let two = HistoryRequest {
            max_stanzas: Some(2),
            ..Default::default()
        };
        assert_eq!(two.first(&items, 5_000), 2);
        let none = HistoryRequest {
            max_stanzas: Some(0),
            ..Default::default()
        };
        assert_eq!(none.first(&items, 5_000), 4);
        let recent = HistoryRequest {
            seconds: Some(2),
            ..Default::default()
        };
        assert_eq!(recent.first(&items, 5_000), 2);
        let since = HistoryRequest {
            since_ms: Some(2_500),
            max_stanzas: Some(3),
            ..Default::default()
        };
        assert_eq!(since.first(&items, 5_000), 2);
        let chars = HistoryRequest {
            max_chars: Some(25),
            ..Default::default()
        };
        assert_eq!(chars.first(&items, 5_000), 2);
        let zero = HistoryRequest {
            max_chars: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.first(&items, 5_000), 4);
    }

    #[test]
    fn user_x_has_item_then_statuses() {
        let x = user_x(
            &ItemView {
                affiliation: Some(Affiliation::Owner),
                role: Some(Role::Moderator),
                jid: Some("a@b/c".into()),
                ..Default::default()
            },
            &[status::CREATED, status::SELF],
        );
        assert_eq!(
            x.to_xml_string(),
            "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='owner' \
             role='moderator' jid='a@b/c'/><status code='201'/><status code='110'/></x>"
        );
    }

    #[test]
    fn admin_items_parse() {
        let q = el("<query xmlns='http://jabber.org/protocol/muc#admin'>\
             <item nick='x' role='none'><reason>bye</reason></item>\
             <item jid='a@b' affiliation='outcast'/></query>");
        let items = parse_admin_items(&q).unwrap();
        assert_eq!(items[0].role, Some(Role::None));
        assert_eq!(items[0].reason.as_deref(), Some("bye"));
        assert_eq!(items[1].affiliation, Some(Affiliation::Outcast));
        let bad = el("<query xmlns='http://jabber.org/protocol/muc#admin'>\
             <item nick='x' role='king'/></query>");
        assert!(parse_admin_items(&bad).is_none());
        let empty = el("<query xmlns='http://jabber.org/protocol/muc#admin'/>");
        assert!(parse_admin_items(&empty).is_none());
    }

    #[test]
    fn config_form_round_trips_and_refuses_bad_values() {
        let mut c = RoomConfig {
            name: "Room".into(),
            members_only: true,
            password: "s".into(),
            whois: Whois::Anyone,
            max_users: 7,
            ..Default::default()
        };
        let mut form = c.to_form();
        form.set_attr("type", "submit");
        let mut d = RoomConfig::default();
        d.apply(&form).unwrap();
        assert_eq!(c, d);
        let unprotect = el("<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_passwordprotectedroom'><value>0</value></field>\
             <field var='muc#roomconfig_persistentroom'><value>true</value></field></x>");
        c.apply(&unprotect).unwrap();
        assert!(c.password.is_empty() && c.persistent);
        let bad = el("<x xmlns='jabber:x:data' type='submit'>\
             <field var='muc#roomconfig_maxusers'><value>many</value></field></x>");
        assert!(c.apply(&bad).is_err());
        let other = el("<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:other</value></field></x>");
        assert_eq!(c.apply(&other), Err(ConfigError::NotAForm));
        assert!(c.features().contains(&"muc_persistent"));
        assert!(c.features().contains(&"muc_nonanonymous"));
    }

    #[test]
    fn voice_requests_and_decisions_parse() {
        let req = el(
            "<message xmlns='jabber:client'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#request</value></field>\
             <field var='muc#role'><value>participant</value></field></x></message>",
        );
        assert_eq!(parse_voice_form(&req), Some(VoiceForm::Request));
        let mut form = voice_request_form("a@b/c", "nick");
        let x = form.get_child_mut("x", ns::DATA_FORMS).unwrap();
        x.set_attr("type", "submit");
        for f in x.children.iter_mut() {
            if let crate::element::Node::Element(f) = f {
                if f.attr("var") == Some("muc#request_allow") {
                    f.children.clear();
                    f.push_child(Element::new("value", ns::DATA_FORMS).with_text("true"));
                }
            }
        }
        assert_eq!(
            parse_voice_form(&form),
            Some(VoiceForm::Decision {
                nick: "nick".into(),
                allow: true
            })
        );
        assert_eq!(
            parse_voice_form(&el("<message xmlns='jabber:client'/>")),
            None
        );
    }

    #[test]
    fn invitations_parse_and_build() {
        let m = el(
            "<message xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite to='h@x'><reason>come</reason></invite></x></message>",
        );
        assert_eq!(
            parse_invites(&m),
            vec![Invite {
                to: "h@x".into(),
                reason: Some("come".into())
            }]
        );
        let d = el(
            "<message xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <decline to='c@x'><reason>busy</reason></decline></x></message>",
        );
        assert_eq!(
            parse_decline(&d),
            Some(Invite {
                to: "c@x".into(),
                reason: Some("busy".into())
            })
        );
        let back = declined("h@x", Some("busy"));
        let dec = back
            .get_child("x", ns::MUC_USER)
            .and_then(|x| x.get_child("decline", ns::MUC_USER))
            .unwrap();
        assert_eq!(dec.attr("from"), Some("h@x"));
        let out = invitation("c@x/r", Some("come"), Some("pw"));
        let x = out.get_child("x", ns::MUC_USER).unwrap();
        assert_eq!(
            x.get_child("invite", ns::MUC_USER).unwrap().attr("from"),
            Some("c@x/r")
        );
        assert_eq!(x.get_child("password", ns::MUC_USER).unwrap().text(), "pw");
    }
}
