//! XML namespaces used on the wire.

pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
/// Server Dialback (XEP-0220) elements, `db:` on the wire.
pub const DIALBACK: &str = "jabber:server:dialback";
/// The dialback stream feature (XEP-0220 §2.4).
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
pub const STREAMS_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const PING: &str = "urn:xmpp:ping";
pub const VERSION: &str = "jabber:iq:version";
/// XEP-0191: Blocking Command.
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0016: Privacy Lists.
pub const PRIVACY: &str = "jabber:iq:privacy";
/// XEP-0012: Last Activity.
pub const LAST: &str = "jabber:iq:last";
/// XEP-0202: Entity Time.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0280: Message Carbons.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0297: Stanza Forwarding (the wrapper of a carbon copy).
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334: Message Processing Hints (`<no-copy/>`, `<no-store/>`, `<store/>`, ...).
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0352: Client State Indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0004: Data Forms.
pub const DATA_FORMS: &str = "jabber:x:data";
/// Stream management (XEP-0198 v1.6).
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0313: Message Archive Management (v1.x).
pub const MAM: &str = "urn:xmpp:mam:2";
/// XEP-0313 §7: the disco feature of `before-id`/`after-id`/`ids`, flipped pages and the
/// archive metadata query.
pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0059: Result Set Management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0359: Unique and Stable Stanza IDs (`<stanza-id/>`, `<origin-id/>`).
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0203: Delayed Delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0122: Data Forms Validation (the `ids` field of the MAM form is open).
pub const XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
/// XEP-0085: Chat State Notifications.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0384 v0.3 (OMEMO as Conversations deployed it).
pub const OMEMO_LEGACY: &str = "eu.siacs.conversations.axolotl";
/// XEP-0384 v0.8+: OMEMO Encryption.
pub const OMEMO: &str = "urn:xmpp:omemo:2";
/// XEP-0373: OpenPGP for XMPP.
pub const OPENPGP: &str = "urn:xmpp:openpgp:0";
/// XEP-0045: Multi-User Chat (the join element).
pub const MUC: &str = "http://jabber.org/protocol/muc";
/// XEP-0045: occupant presence, status codes, invitations (`<x/>` in presence and messages).
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0045 §8–§9: moderator and admin lists (roles, affiliations).
pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// XEP-0045 §10: owner use cases (configuration, destroy).
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0045 §15.5.3: the FORM_TYPE of the room configuration form.
pub const MUC_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
/// XEP-0045 §15.5.4: the FORM_TYPE of the room information form (disco#info).
pub const MUC_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// XEP-0421: Anonymous unique occupant identifiers.
pub const OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0410: MUC Self-Ping (the disco feature).
pub const MUC_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// XEP-0249: Direct MUC Invitations.
pub const CONFERENCE: &str = "jabber:x:conference";
/// XEP-0033: Extended Stanza Addressing (multicast).
pub const ADDRESS: &str = "http://jabber.org/protocol/address";
