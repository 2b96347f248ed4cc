//! XEP-0033 on the Router's thread (the `multicast` module): which remote domains take one
//! presence for many contacts, sending it so, and copying a stanza with `<addresses/>` that
//! reaches one of our domains to its addressees.
//!
//! A remote domain's support is learnt from its disco#info (§2.2), asked the first time a
//! presence for several of its contacts goes out, and remembered for [`KNOWN_FOR`]; until it
//! answers, and for a domain that does not support it, one stanza per contact goes as
//! before. At most [`MAX_DOMAINS`] domains are remembered (beyond, the others are sent per
//! contact and not asked), so a peer cannot make the table grow without bound.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::jid::Jid;
use proto::ns;

use super::Router;
use crate::im::messages::MulticastPresence;
use crate::metrics::METRICS;
use crate::modules::multicast::Settings;
use crate::route::to_router::PresenceToDomain;
use crate::route::RoutingView;

/// Remote domains whose support is remembered at most.
const MAX_DOMAINS: usize = 10_000;
/// How long an answer holds before the domain is asked again (a server upgraded or
/// reconfigured is noticed within it).
const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// A question unanswered this long is asked again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);
/// The id prefix of our disco#info questions: the answers are recognised by it.
const QUERY_ID_PREFIX: &str = "sb-multicast-";

enum Domain {
    Asked { id: String, at: Instant },
    Known { supports: bool, at: Instant },
}

/// What to do with a presence for several contacts at one domain.
#[derive(Debug, PartialEq, Eq)]
enum Support {
    Yes,
    No,
    /// Not known: send per contact and ask with this id.
    Ask(String),
}

pub struct RemoteMulticast {
    settings: Settings,
    domains: HashMap<String, Domain>,
    next_id: u64,
}

impl RemoteMulticast {
    pub fn new(settings: Settings) -> RemoteMulticast {
        RemoteMulticast {
            settings,
            domains: HashMap::new(),
            next_id: 1,
        }
    }

    fn support(&mut self, domain: &str, now: Instant) -> Support {
        match self.domains.get(domain) {
            Some(Domain::Known { supports, at }) if now.duration_since(*at) < KNOWN_FOR => {
                return if *supports { Support::Yes } else { Support::No };
            }
            Some(Domain::Asked { at, .. }) if now.duration_since(*at) < ASK_AGAIN_AFTER => {
                return Support::No;
            }
            None if self.domains.len() >= MAX_DOMAINS => {
                // Forget what is out of date before refusing a new domain.
                self.domains.retain(|_, d| match d {
                    Domain::Known { at, .. } => now.duration_since(*at) < KNOWN_FOR,
                    Domain::Asked { at, .. } => now.duration_since(*at) < ASK_AGAIN_AFTER,
                });
                if self.domains.len() >= MAX_DOMAINS {
                    return Support::No;
                }
            }
            _ => {}
        }
        let id = format!("{QUERY_ID_PREFIX}{}", self.next_id);
        self.next_id += 1;
        self.domains.insert(
            domain.to_string(),
            Domain::Asked {
                id: id.clone(),
                at: now,
            },
        );
        Support::Ask(id)
    }

    /// `iq`, a result or error from `from` to one of our domains: whether it answers one of
    /// our questions (then it is taken, not routed).
    fn answered(&mut self, from: &Jid, iq: &Element, now: Instant) -> bool {
        let Some(id) = iq.attr("id").filter(|id| id.starts_with(QUERY_ID_PREFIX)) else {
            return false;
        };
        // Only the domain asked answers for itself (s2s checked its `from`).
        if !from.is_bare() || from.local().is_some() {
            return true;
        }
        let asked =
            matches!(self.domains.get(from.domain()), Some(Domain::Asked { id: a, .. }) if a == id);
        if asked {
            let supports = iq.attr("type") == Some("result")
                && iq.get_child("query", ns::DISCO_INFO).is_some_and(|q| {
                    q.children().any(|f| {
                        f.is("feature", ns::DISCO_INFO) && f.attr("var") == Some(ns::ADDRESS)
                    })
                });
            tracing::debug!(domain = %from.domain(), supports, "XEP-0033 support of a remote domain");
            self.domains.insert(
                from.domain().to_string(),
                Domain::Known { supports, at: now },
            );
        }
        true
    }
}

fn disco_query(from_domain: &str, to_domain: &str, id: &str) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("id", id)
        .with_attr("from", from_domain)
        .with_attr("to", to_domain)
        .with_child(Element::new("query", ns::DISCO_INFO))
}

impl Router {
    /// Enable XEP-0033 (the `multicast` module).
    pub fn with_multicast(mut self, settings: Settings) -> Router {
        self.multicast = Some(RefCell::new(RemoteMulticast::new(settings)));
        self
    }

    /// A stanza to one of our domains that XEP-0033 takes: an answer to our disco#info
    /// question, or a stanza with addresses to copy. Whether it was taken.
    pub(super) fn multicast_takes(
        &self,
        from: &Jid,
        to: &Jid,
        stanza: &Element,
        ctx: &mut Context<Self>,
    ) -> bool {
        let Some(multicast) = &self.multicast else {
            return false;
        };
        if to.local().is_some() || !to.is_bare() || !self.is_local_domain(to.domain()) {
            return false;
        }
        match (stanza.name.as_str(), stanza.attr("type")) {
            ("iq", Some("result" | "error")) => {
                multicast
                    .borrow_mut()
                    .answered(from, stanza, Instant::now())
            }
            ("message" | "presence", _) if proto::address::is_multicast(stanza) => {
                let max = multicast.borrow().settings.max_addresses;
                self.fan_out(from, to, stanza, max, ctx);
                true
            }
            _ => false,
        }
    }

    /// §6: a copy of `stanza` for each addressee. A remote sender reaches only addressees at
    /// the domain it sent to (this server relays nothing between two other domains), and its
    /// presence only those subscribed to it (their shards check); a local sender's copies
    /// are routed as if it had sent each.
    fn fan_out(&self, from: &Jid, to: &Jid, stanza: &Element, max: usize, ctx: &mut Context<Self>) {
        METRICS.multicast.with_label_values(&["received"]).inc();
        let (addressees, copy) = match proto::address::expand(stanza, max) {
            Ok(x) => x,
            Err(e) => {
                METRICS.multicast.with_label_values(&["refused"]).inc();
                tracing::debug!(%from, error = %e, "XEP-0033 stanza refused");
                if stanza.name == "message" {
                    self.bounce(from, stanza, StanzaErrorCondition::NotAcceptable);
                }
                return;
            }
        };
        let local_sender = self.is_local_domain(from.domain());
        let presence_kind = stanza.attr("type");
        for addressee in addressees {
            // The domain itself, or a relay through us to a third domain: nothing to copy.
            if addressee.local().is_none() && self.is_local_domain(addressee.domain()) {
                continue;
            }
            if !local_sender && addressee.domain() != to.domain() {
                continue;
            }
            let mut c = copy.clone();
            c.set_attr("to", addressee.to_string());
            METRICS.multicast.with_label_values(&["copies"]).inc();
            if local_sender || stanza.name == "message" {
                self.route(from, addressee, c, ctx);
            } else if matches!(presence_kind, None | Some("unavailable")) {
                // To the account, as a per-contact presence would have been addressed.
                let user = addressee.to_bare();
                c.set_attr("to", user.to_string());
                self.im.tell(
                    &user,
                    MulticastPresence {
                        user: user.clone(),
                        from: from.clone(),
                        stanza: c,
                    },
                );
            }
            // A remote sender's subscriptions and probes go per contact (RFC 6121 §3, §4.3).
        }
    }
}

impl Handler<PresenceToDomain> for Router {
    type Result = ();

    fn handle(&mut self, msg: PresenceToDomain, _: &mut Context<Self>) {
        let (support, max) = match &self.multicast {
            Some(m) => {
                let mut m = m.borrow_mut();
                // At least min_contacts (2) by the module's configuration.
                let max = m.settings.max_addresses.max(1);
                (m.support(&msg.domain, Instant::now()), max)
            }
            None => (Support::No, 1),
        };
        let from_domain = msg
            .stanza
            .attr("from")
            .and_then(|f| Jid::parse(f).ok())
            .map(|f| f.domain().to_string());
        let domain = Jid::parse(&msg.domain).ok();
        match (support, domain, from_domain) {
            (Support::Yes, Some(domain), Some(_)) => {
                for contacts in msg.contacts.chunks(max) {
                    METRICS.multicast.with_label_values(&["sent"]).inc();
                    METRICS
                        .multicast
                        .with_label_values(&["contacts_sent"])
                        .inc_by(contacts.len() as u64);
                    let s = proto::address::multicast(&msg.stanza, &msg.domain, contacts);
                    self.to_other_domain(&domain, s);
                }
                return;
            }
            (Support::Ask(id), Some(domain), Some(from_domain)) => {
                self.to_other_domain(&domain, disco_query(&from_domain, &msg.domain, &id));
            }
            _ => {}
        }
        for contact in msg.contacts {
            let mut p = msg.stanza.clone();
            p.set_attr("to", contact.to_string());
            self.deliver_to_jid(&contact, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::parse(s).unwrap()
    }

    fn answer(id: &str, features: &[&str]) -> Element {
        let mut q = Element::new("query", ns::DISCO_INFO);
        for f in features {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
        }
        Element::new("iq", ns::CLIENT)
            .with_attr("type", "result")
            .with_attr("id", id)
            .with_child(q)
    }

    #[test]
    fn a_domain_is_asked_once_and_its_answer_remembered() {
        let mut m = RemoteMulticast::new(Settings::default());
        let t = Instant::now();
        let Support::Ask(id) = m.support("y.test", t) else {
            panic!("not asked")
        };
        // Asked: per contact meanwhile, and not asked again at once.
        assert_eq!(m.support("y.test", t), Support::No);
        // An answer from another domain, or with another id, changes nothing.
        assert!(m.answered(&jid("z.test"), &answer(&id, &[ns::ADDRESS]), t));
        assert!(m.answered(
            &jid("y.test"),
            &answer("sb-multicast-999", &[ns::ADDRESS]),
            t
        ));
        assert_eq!(m.support("y.test", t), Support::No);
        assert!(!m.answered(&jid("y.test"), &answer("other", &[ns::ADDRESS]), t));
        assert!(m.answered(&jid("y.test"), &answer(&id, &[ns::PING, ns::ADDRESS]), t));
        assert_eq!(m.support("y.test", t), Support::Yes);
        // Asked again once the answer is old.
        assert!(matches!(
            m.support("y.test", t + KNOWN_FOR),
            Support::Ask(_)
        ));
    }

    #[test]
    fn a_domain_without_the_feature_or_silent_gets_per_contact_stanzas() {
        let mut m = RemoteMulticast::new(Settings::default());
        let t = Instant::now();
        let Support::Ask(id) = m.support("y.test", t) else {
            panic!("not asked")
        };
        m.answered(&jid("y.test"), &answer(&id, &[ns::PING]), t);
        assert_eq!(m.support("y.test", t), Support::No);
        // A silent domain is asked again after a while.
        assert!(matches!(m.support("z.test", t), Support::Ask(_)));
        assert_eq!(m.support("z.test", t + Duration::from_secs(1)), Support::No);
        assert!(matches!(
            m.support("z.test", t + ASK_AGAIN_AFTER),
            Support::Ask(_)
        ));
    }

    #[test]
    fn the_table_of_domains_is_bounded() {
        let mut m = RemoteMulticast::new(Settings::default());
        let t = Instant::now();
        for i in 0..MAX_DOMAINS {
            assert!(matches!(
                m.support(&format!("d{i}.test"), t),
                Support::Ask(_)
            ));
        }
        assert_eq!(m.support("one-more.test", t), Support::No);
        assert_eq!(m.domains.len(), MAX_DOMAINS);
        // Once the questions are old, they make room.
        assert!(matches!(
            m.support("one-more.test", t + ASK_AGAIN_AFTER),
            Support::Ask(_)
        ));
        assert_eq!(m.domains.len(), 1);
    }
}
