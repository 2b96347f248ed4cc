//! Presence broadcast to contacts (RFC 6121 §4): to subscribers on every change; on initial
//! presence also the contacts' presence (answering the probes locally), pending subscription
//! requests and stored offline messages.

use std::collections::HashMap;

use proto::element::Element;
use proto::jid::Jid;
use proto::privacy::StanzaKind;

use super::messages::PresenceBroadcast;
use super::subscription::{is_subscriber, is_subscription};
use super::AccountShard;
use crate::route::to_router::{
    DeliverToAvailable, DeliverToResource, PresenceToDomain, SendPresenceOf,
};

impl AccountShard {
    pub(super) fn presence_broadcast(&mut self, msg: PresenceBroadcast) {
        let user = msg.from.to_bare();
        let key = user.to_string();
        self.note_availability(&user, &msg.presence, msg.account_available);
        let items = match self.rosters.get(&key) {
            Ok((_, items)) => items,
            Err(e) => {
                tracing::error!(error = %e, "loading a roster for presence broadcast failed");
                return;
            }
        };
        let blocked = self.blocklist(&user);
        // XEP-0016 presence-out: the rules in force for the resource that broadcasts.
        let rules = self.privacy_rules(&user, Some(&msg.from));
        // XEP-0033: contacts on remote domains gathered per domain, for one stanza each.
        let multicast =
            crate::modules::multicast::get(&self.modules).map(|m| m.settings().min_contacts);
        let mut remote: HashMap<String, Vec<Jid>> = HashMap::new();
        for item in items.iter().filter(|i| is_subscriber(i)) {
            let Ok(contact) = Jid::parse(&item.jid) else {
                continue;
            };
            if proto::blocklist::is_blocked(&blocked, &contact)
                || !rules
                    .as_ref()
                    .is_none_or(|r| r.allows(StanzaKind::PresenceOut, &contact))
            {
                continue;
            }
            if multicast.is_some() && !self.is_local_jid(&contact) {
                remote
                    .entry(contact.domain().to_string())
                    .or_default()
                    .push(contact);
                continue;
            }
            self.send_presence_to(&msg.presence, contact);
        }
        for (domain, contacts) in remote {
            if multicast.is_some_and(|min| contacts.len() >= min) {
                self.router.do_send(PresenceToDomain {
                    domain,
                    contacts,
                    stanza: msg.presence.clone(),
                });
            } else {
                for contact in contacts {
                    self.send_presence_to(&msg.presence, contact);
                }
            }
        }
        // Stored messages are fetched by the node holding the session (Router,
        // `fetch_offline`), which alone knows for sure that the session is still there.
        if !msg.initial {
            return;
        }
        // Modules that answer a contact's arrival (PEP's last items, XEP-0163 §4.3.2): the
        // account's own new resource first, then each local contact it is subscribed to.
        let contact_hooks = self
            .modules
            .account_states()
            .any(|(_, s)| s.wants_contact_available());
        if contact_hooks {
            self.contact_available(&user, &msg.from);
        }
        // RFC 6121 §4.2.2: probe the contacts the user is subscribed to. Local contacts'
        // presence is known here, so the probe is answered directly.
        for item in items.iter().filter(|i| is_subscription(i)) {
            let Ok(contact) = Jid::parse(&item.jid) else {
                continue;
            };
            if self.is_local_jid(&contact) {
                if contact_hooks {
                    if let Some(shards) = &self.shards {
                        shards.tell(
                            &contact,
                            super::messages::ContactAvailable {
                                user: contact.clone(),
                                who: msg.from.clone(),
                            },
                        );
                    }
                }
                self.router.do_send(SendPresenceOf {
                    contact,
                    to: msg.from.clone(),
                });
            } else {
                // A remote contact's server answers a probe (RFC 6121 §4.3.1).
                let probe = Element::new("presence", proto::ns::CLIENT)
                    .with_attr("type", "probe")
                    .with_attr("from", user.to_string())
                    .with_attr("to", contact.to_string());
                self.router.do_send(DeliverToAvailable {
                    to: contact,
                    stanza: probe,
                });
            }
        }
        // RFC 6121 §3.1.3: requests received while offline are delivered at every login
        // until answered.
        // What is stored is the sender and the status text; the stanza is built again.
        if let Ok(pending) = self.rosters.pending_in(&key) {
            for request in pending {
                let mut stanza = Element::new("presence", proto::ns::CLIENT)
                    .with_attr("type", "subscribe")
                    .with_attr("from", request.contact)
                    .with_attr("to", key.as_str());
                if let Some(status) = request.status {
                    stanza = stanza
                        .with_child(Element::new("status", proto::ns::CLIENT).with_text(status));
                }
                self.router.do_send(DeliverToResource {
                    to: msg.from.clone(),
                    stanza,
                });
            }
        }
    }

    fn send_presence_to(&self, presence: &Element, contact: Jid) {
        let mut p = presence.clone();
        p.set_attr("to", contact.to_string());
        self.router.do_send(DeliverToAvailable {
            to: contact,
            stanza: p,
        });
    }

    /// XEP-0033 from a remote domain: `msg.user` gets the presence only if it is subscribed
    /// to the sender (RFC 6121 §4.4.2 would have had it sent to it alone), and has not
    /// blocked it.
    pub(super) fn multicast_presence(&mut self, msg: super::messages::MulticastPresence) {
        let contact = msg.from.to_bare();
        let subscribed = !self.blocks(&msg.user, &contact)
            && self
                .rosters
                .item(&msg.user.to_string(), &contact.to_string())
                .ok()
                .flatten()
                .as_ref()
                .is_some_and(is_subscription);
        if !subscribed {
            crate::metrics::METRICS
                .multicast
                .with_label_values(&["not_subscribed"])
                .inc();
            return;
        }
        self.router.do_send(DeliverToAvailable {
            to: msg.user,
            stanza: msg.stanza,
        });
    }

    /// RFC 6121 §4.3.2: a remote entity probes `user`; only a subscriber learns its presence
    /// (unavailable when no resource is available).
    pub(super) fn remote_probe(&mut self, msg: super::messages::RemoteProbe) {
        let contact = msg.from.to_bare();
        if self.blocks(&msg.user, &contact) {
            return;
        }
        let item = self
            .rosters
            .item(&msg.user.to_string(), &contact.to_string())
            .ok()
            .flatten();
        if !item.as_ref().is_some_and(is_subscriber) {
            return;
        }
        if self.online.contains(&msg.user) {
            self.router.do_send(SendPresenceOf {
                contact: msg.user,
                to: msg.from,
            });
        } else {
            // No available resource: the subscriber learns that the account is offline.
            let unavailable = Element::new("presence", proto::ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", msg.user.to_string())
                .with_attr("to", msg.from.to_string());
            self.router.do_send(DeliverToAvailable {
                to: msg.from,
                stanza: unavailable,
            });
        }
    }

    fn is_local_jid(&self, jid: &Jid) -> bool {
        self.domains.iter().any(|d| d == jid.domain())
    }
}
