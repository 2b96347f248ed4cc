//! The recipient's half of PEP's filtered notifications (XEP-0163 §4.3.3, XEP-0115): each
//! session learns its client's entity capabilities from its presence, asks the client for
//! the disco#info the `ver` stands for (XEP-0115 §6.2) unless a verified answer is cached,
//! and keeps only the PEP notifications whose node the client lists as `<node>+notify`.
//! Notifications that arrive while the answer is awaited are held (bounded) and judged when
//! it comes. Filtering where the recipient is, rather than at the publisher's shard, makes
//! the caps known on whichever node holds the session.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::avatar;
use proto::caps::{self, Caps};
use proto::element::Element;
use proto::ns;
use proto::pubsub::{self, NS_EVENT};

use crate::modules::session::{AccountSeeds, SessionEffects, SessionModule};

/// Notifications held while the caps are asked for.
const MAX_HELD: usize = 64;
/// How long the client has to answer the caps query.
const CAPS_TIMEOUT: Duration = Duration::from_secs(10);
/// Features remembered per caps entry.
const MAX_FEATURES: usize = 512;

type Interests = Arc<HashSet<String>>;
/// (hash, ver) → interests, and the keys oldest first.
type CacheInner = (
    HashMap<(String, String), Interests>,
    VecDeque<(String, String)>,
);

/// Verified caps (`hash`, `ver`) → the nodes with `+notify`, node-wide, bounded: the oldest
/// entry goes first.
pub struct CapsCache {
    capacity: usize,
    inner: Mutex<CacheInner>,
}

impl CapsCache {
    pub fn new(capacity: usize) -> Self {
        CapsCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    fn get(&self, c: &Caps) -> Option<Interests> {
        let inner = self.inner.lock().ok()?;
        inner.0.get(&(c.hash.clone(), c.ver.clone())).cloned()
    }

    fn put(&self, c: &Caps, interests: Interests) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (c.hash.clone(), c.ver.clone());
        if inner.0.insert(key.clone(), interests).is_none() {
            inner.1.push_back(key);
        }
        while inner.1.len() > self.capacity {
            if let Some(old) = inner.1.pop_front() {
                inner.0.remove(&old);
            }
        }
    }
}

fn interests_of(query: &Element) -> Interests {
    Arc::new(
        caps::features(query)
            .into_iter()
            .filter_map(|f| f.strip_suffix("+notify").map(str::to_owned))
            .take(MAX_FEATURES)
            .collect(),
    )
}

pub struct PepSession {
    cache: Arc<CapsCache>,
    caps: Option<Caps>,
    /// What the client asked for; `None` while its caps are being asked for.
    interests: Option<Interests>,
    /// The id of the caps query in flight and when the client's time to answer runs out.
    pending: Option<String>,
    deadline: Option<Instant>,
    held: VecDeque<Element>,
    seq: u64,
    /// The account's avatar (XEP-0084 id, the image's SHA-1), put in the client's presence
    /// (XEP-0398 §4): seeded at bind, followed through the account's own metadata events.
    avatar: Option<String>,
}

impl PepSession {
    pub fn new(cache: Arc<CapsCache>) -> Self {
        PepSession {
            cache,
            caps: None,
            interests: Some(Arc::new(HashSet::new())),
            pending: None,
            deadline: None,
            held: VecDeque::new(),
            seq: 0,
            avatar: None,
        }
    }

    fn wanted(&self, node: &str) -> bool {
        self.interests.as_ref().is_some_and(|i| i.contains(node))
    }

    /// The caps are known (or given up on): judge what was held.
    fn release(&mut self, fx: &mut SessionEffects<'_>) {
        for m in std::mem::take(&mut self.held) {
            if pubsub::event_node(&m).is_some_and(|n| self.wanted(n)) {
                fx.to_client.push(m);
            }
        }
    }
}

/// The avatar a metadata event of the account's own names: `Some(None)` when it disables
/// the avatar (XEP-0084 §4.6), `None` when the event says nothing (a retraction).
fn own_avatar_choice(event: &Element) -> Option<Option<String>> {
    let metadata = event
        .get_child("event", NS_EVENT)?
        .get_child("items", NS_EVENT)?
        .children()
        .filter(|i| i.is("item", NS_EVENT))
        .last()?
        .get_child("metadata", avatar::NS_METADATA)?;
    avatar::metadata_choice(metadata).map(|c| c.map(|(id, _)| id))
}

/// A PEP notification: a headline with `<event/>` from an account's bare JID.
fn is_pep_event(stanza: &Element) -> bool {
    stanza.name == "message"
        && stanza.get_child("event", NS_EVENT).is_some()
        && stanza
            .attr("from")
            .and_then(|f| proto::jid::Jid::parse(f).ok())
            .is_some_and(|j| j.local().is_some() && j.resource().is_none())
}

impl SessionModule for PepSession {
    fn outbound(&mut self, stanza: &Element, fx: &mut SessionEffects<'_>) {
        match (stanza.name.as_str(), stanza.attr("type")) {
            ("presence", None) if stanza.attr("to").is_none() => {
                let c = Caps::of_presence(stanza);
                if c == self.caps {
                    return;
                }
                self.caps = c.clone();
                let Some(c) = c else {
                    // No caps: no filtered notifications (XEP-0163 §4.3.3).
                    self.interests = Some(Arc::new(HashSet::new()));
                    self.pending = None;
                    return self.release(fx);
                };
                if let Some(i) = self.cache.get(&c) {
                    self.interests = Some(i);
                    self.pending = None;
                    return self.release(fx);
                }
                self.seq += 1;
                let id = format!("pep-caps-{}", self.seq);
                let domain = fx.jid.domain().to_owned();
                fx.to_client.push(
                    Element::new("iq", ns::CLIENT)
                        .with_attr("type", "get")
                        .with_attr("id", id.as_str())
                        .with_attr("from", domain)
                        .with_attr("to", fx.jid.to_string())
                        .with_child(caps::disco_query(&c)),
                );
                self.pending = Some(id);
                self.deadline = Some(Instant::now() + CAPS_TIMEOUT);
                self.interests = None;
                fx.wake_after(CAPS_TIMEOUT);
            }
            ("iq", Some(t @ ("result" | "error")))
                if self.pending.is_some() && stanza.attr("id") == self.pending.as_deref() =>
            {
                self.pending = None;
                let query = stanza
                    .get_child("query", ns::DISCO_INFO)
                    .filter(|_| t == "result");
                let interests = match (query, &self.caps) {
                    (Some(q), Some(c)) => {
                        let i = interests_of(q);
                        // Shared only when the answer is the one the hash stands for.
                        if caps::verify(c, q) {
                            self.cache.put(c, i.clone());
                        }
                        i
                    }
                    _ => Arc::new(HashSet::new()),
                };
                self.interests = Some(interests);
                self.release(fx);
            }
            _ => {}
        }
    }

    fn inbound(&mut self, stanza: Element, fx: &mut SessionEffects<'_>) -> Option<Element> {
        if !is_pep_event(&stanza) {
            return Some(stanza);
        }
        let node = pubsub::event_node(&stanza)?.to_owned();
        if node == avatar::NS_METADATA
            && stanza.attr("from") == Some(&*fx.jid.to_bare().to_string())
        {
            if let Some(choice) = own_avatar_choice(&stanza) {
                self.avatar = choice;
            }
        }
        if self.interests.is_none() {
            if self.held.len() >= MAX_HELD {
                self.held.pop_front();
            }
            self.held.push_back(stanza);
            return None;
        }
        self.wanted(&node).then_some(stanza)
    }

    fn timer(&mut self, fx: &mut SessionEffects<'_>) {
        if self.pending.is_none() {
            return;
        }
        // The wake may be another module's (csi): give up only once the client's time ran out.
        let left = self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if !left.is_zero() {
            return fx.wake_after(left);
        }
        // No answer: no notifications for this client (XEP-0163 §4.3.3) until its next caps.
        self.pending = None;
        self.caps = None;
        self.interests = Some(Arc::new(HashSet::new()));
        self.release(fx);
    }

    fn update(&mut self, update: &dyn std::any::Any) {
        if let Some(seeds) = update.downcast_ref::<AccountSeeds>() {
            self.avatar = seeds.of("pep").map(str::to_owned);
        }
    }

    fn stamp_presence(&mut self, presence: &mut Element) {
        if let Some(hash) = &self.avatar {
            avatar::stamp_presence(presence, hash);
        }
    }

    fn handing_over(&mut self, fx: &mut SessionEffects<'_>) {
        self.release(fx);
    }

    fn resumed(&mut self, presence: &Element, fx: &mut SessionEffects<'_>) {
        // The caps of the presence the client last broadcast (cached, or asked for again).
        self.outbound(presence, fx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(ver: &str) -> Caps {
        Caps {
            hash: "sha-1".into(),
            node: "n".into(),
            ver: ver.into(),
        }
    }

    #[test]
    fn cache_is_bounded_oldest_first() {
        let cache = CapsCache::new(2);
        let i: Interests = Arc::new(["urn:x".to_owned()].into());
        cache.put(&caps("a"), i.clone());
        cache.put(&caps("b"), i.clone());
        cache.put(&caps("a"), i.clone());
        cache.put(&caps("c"), i.clone());
        assert!(cache.get(&caps("a")).is_none());
        assert!(cache.get(&caps("b")).is_some());
        assert!(cache.get(&caps("c")).is_some());
    }

    #[test]
    fn interests_are_the_notify_features() {
        let q = Element::parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <feature var='urn:a+notify'/><feature var='urn:b'/></query>",
        )
        .unwrap();
        let i = interests_of(&q);
        assert!(i.contains("urn:a") && !i.contains("urn:b") && i.len() == 1);
    }
}
