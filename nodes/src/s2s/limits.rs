//! Bounds on what federation peers (and a flood of stanzas to remote domains) can make the
//! node hold: the bytes queued for one
//! outbound link (with backpressure on the inbound streams of the same peer while it is
//! full), and the table of links that recently failed. Pure bookkeeping with no sockets or
//! tasks, unit-tested here; `inbound`, `outbound`, `manager` and `mod` apply it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::element::{Element, Node};
use tokio::sync::watch;
use tokio::time::Instant;

/// Count one trip of a limit in `switchboard_s2s_limited_total{limit}`.
pub fn count(limit: &'static str) {
    crate::metrics::METRICS
        .s2s_limited
        .with_label_values(&[limit])
        .inc();
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain counters: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Outbound link queues and backpressure
// ---------------------------------------------------------------------------------------

/// Bytes of memory an element tree holds, roughly: its strings plus a fixed overhead per
/// element, attribute and text node (the `String`/`Vec` headers and allocator rounding).
/// What a link queue counts, so that its bound is a bound on memory, not on wire bytes.
pub fn element_weight(el: &Element) -> usize {
    const ELEMENT: usize = 96;
    const ATTR: usize = 80;
    const TEXT: usize = 40;
    let mut n = ELEMENT + el.name.len() + el.ns.len();
    for a in &el.attrs {
        n += ATTR + a.name.len() + a.value.len() + a.ns.as_deref().map_or(0, str::len);
    }
    for c in &el.children {
        n += match c {
            Node::Element(e) => element_weight(e),
            Node::Text(t) => TEXT + t.len(),
        };
    }
    n
}

/// Which remote domains have an outbound link whose queue is full; inbound streams from
/// those domains stop reading until it drains (`changes` wakes them to look again).
pub struct Backpressure {
    congested: Mutex<HashMap<String, usize>>,
    /// How many links are congested, so that the common case reads one atomic.
    count: AtomicUsize,
    changes: watch::Sender<u64>,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            congested: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            changes: watch::channel(0).0,
        }
    }
}

impl Backpressure {
    fn congest(&self, domain: &str) {
        *lock(&self.congested).entry(domain.to_string()).or_insert(0) += 1;
        self.count.fetch_add(1, Ordering::Relaxed);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn relieve(&self, domain: &str) {
        {
            let mut map = lock(&self.congested);
            if let Some(n) = map.get_mut(domain) {
                *n -= 1;
                if *n == 0 {
                    map.remove(domain);
                }
            }
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether an outbound link to one of `domains` is congested.
    pub fn is_congested<'a>(&self, mut domains: impl Iterator<Item = &'a str>) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let map = lock(&self.congested);
        domains.any(|d| map.contains_key(d))
    }

    /// A receiver that wakes at the next change. Subscribe before checking
    /// [`Backpressure::is_congested`], so that a change in between is not missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The bytes all outbound link queues of the node may hold together
/// (`s2s.max_total_queue_bytes`): each link is bounded on its own, but many links (up to
/// `max_connecting_links + max_waiting_links` coming up, plus those up) could otherwise
/// each hold their full bound at once.
pub struct QueueBudget {
    max_bytes: usize,
    used: AtomicUsize,
}

impl QueueBudget {
    pub fn new(max_bytes: usize) -> QueueBudget {
        QueueBudget {
            max_bytes,
            used: AtomicUsize::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= self.max_bytes)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// The outcome of reserving room in a [`LinkQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Accepted,
    /// Over the link's bound; `tripped`: the queue just became congested (log it once).
    Refused {
        tripped: bool,
    },
    /// The link has room but all links together are at `s2s.max_total_queue_bytes`.
    RefusedTotal,
}

/// The byte bound of one outbound link: what the manager has handed the link task and the
/// task has not yet written to the socket (or queued while the link comes up). The manager
/// reserves before it sends, the task releases when a stanza became bytes on their way to
/// the socket. Beyond `max_bytes` the manager bounces; the link is congested from then on
/// until its queue drains below half the bound (the low-water mark), and while it is the
/// inbound streams from the same remote domain are not read.
pub struct LinkQueue {
    remote: String,
    max_bytes: usize,
    low_water: usize,
    bytes: AtomicUsize,
    congested: AtomicBool,
    closed: AtomicBool,
    backpressure: Arc<Backpressure>,
    budget: Arc<QueueBudget>,
}

impl LinkQueue {
    pub fn new(
        remote: &str,
        max_bytes: usize,
        backpressure: Arc<Backpressure>,
        budget: Arc<QueueBudget>,
    ) -> LinkQueue {
        LinkQueue {
            remote: remote.to_string(),
            max_bytes,
            low_water: max_bytes / 2,
            bytes: AtomicUsize::new(0),
            congested: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            backpressure,
            budget,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed)
    }

    /// Reserve `n` bytes, unless that passes the bound. A congested queue refuses until it
    /// drained below the low-water mark, so a full link does not flap stanza by stanza.
    pub fn try_reserve(&self, n: usize) -> Reserve {
        if self.is_congested() {
            return Reserve::Refused { tripped: false };
        }
        let now = self.bytes.load(Ordering::Relaxed);
        // An empty queue takes any one stanza (its size is bounded by the stanza limits),
        // so a stanza larger than the bound cannot congest a link that holds nothing.
        if now > 0 && now.saturating_add(n) > self.max_bytes {
            let tripped = !self.closed.load(Ordering::Relaxed)
                && !self.congested.swap(true, Ordering::Relaxed);
            if tripped {
                self.backpressure.congest(&self.remote);
            }
            return Reserve::Refused { tripped };
        }
        if !self.budget.try_take(n) {
            return Reserve::RefusedTotal;
        }
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Reserve::Accepted
    }

    /// Give back `n` reserved bytes; `true` when this ended the congestion.
    pub fn release(&self, n: usize) -> bool {
        let before = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            })
            .unwrap_or(0);
        let after = before.saturating_sub(n);
        self.budget.give_back(before - after);
        if after < self.low_water && self.congested.swap(false, Ordering::Relaxed) {
            if !self.closed.load(Ordering::Relaxed) {
                self.backpressure.relieve(&self.remote);
            }
            return true;
        }
        false
    }

    /// The link ended: whatever is still queued is bounced or handed on by the task, and
    /// the inbound streams from the peer may read again.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::Relaxed) && self.congested.load(Ordering::Relaxed) {
            self.backpressure.relieve(&self.remote);
        }
        // What is still counted dies with the link (bounced or handed back to the manager,
        // which counts it again on the next link).
        self.budget.give_back(self.bytes.swap(0, Ordering::Relaxed));
    }
}

impl Drop for LinkQueue {
    fn drop(&mut self) {
        self.close();
    }
}

// ---------------------------------------------------------------------------------------
// Failed links
// ---------------------------------------------------------------------------------------

/// Keys (a (local, remote) domain pair) whose last link failed, each until a deadline, at
/// most `max` of them: an expired entry is dropped when met or when the table is full, and
/// a full table of live entries forgets the one that expires first (which costs at worst
/// an early redial of that peer).
pub struct ExpiringSet<K> {
    max: usize,
    until: HashMap<K, Instant>,
}

impl<K: Hash + Eq + Clone> ExpiringSet<K> {
    pub fn new(max: usize) -> ExpiringSet<K> {
        ExpiringSet {
            max,
            until: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    /// Whether `key` is in the set at `now` (an expired entry is removed).
    pub fn contains(&mut self, key: &K, now: Instant) -> bool {
        match self.until.get(key) {
            Some(t) if now < *t => true,
            Some(_) => {
                self.until.remove(key);
                false
            }
            None => false,
        }
    }

    /// Add `key` until `until`; `true` when a live entry had to be evicted for room.
    pub fn insert(&mut self, key: K, until: Instant, now: Instant) -> bool {
        if self.max == 0 {
            return false;
        }
        let mut evicted = false;
        if self.until.len() >= self.max && !self.until.contains_key(&key) {
            self.prune(now);
            if self.until.len() >= self.max {
                let first = self
                    .until
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.until.remove(&k);
                    evicted = true;
                }
            }
        }
        self.until.insert(key, until);
        evicted
    }

    /// Drop every expired entry.
    pub fn prune(&mut self, now: Instant) {
        self.until.retain(|_, t| now < *t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> Element {
        Element::new("message", proto::ns::CLIENT)
            .with_attr("to", "a@b.example")
            .with_child(Element::new("body", proto::ns::CLIENT).with_text(body))
    }

    #[test]
    fn element_weight_grows_with_content_and_is_at_least_the_wire_size() {
        let small = message("x");
        let big = message(&"y".repeat(10_000));
        assert!(element_weight(&big) >= element_weight(&small) + 9_999);
        for el in [&small, &big] {
            let wire = proto::s2s::stanza_bytes(el).len();
            assert!(
                element_weight(el) >= wire,
                "{} < {wire}",
                element_weight(el)
            );
        }
    }

    fn budget(n: usize) -> Arc<QueueBudget> {
        Arc::new(QueueBudget::new(n))
    }

    #[test]
    fn all_link_queues_share_one_budget() {
        let bp = Arc::new(Backpressure::default());
        let total = budget(1000);
        let a = LinkQueue::new("a.example", 800, bp.clone(), total.clone());
        let b = LinkQueue::new("b.example", 800, bp.clone(), total.clone());
        assert_eq!(a.try_reserve(600), Reserve::Accepted);
        assert_eq!(b.try_reserve(300), Reserve::Accepted);
        // b has room of its own (300 + 200 <= 800), the node does not (900 + 200 > 1000):
        // refused without congesting b or pausing its peer.
        assert_eq!(b.try_reserve(200), Reserve::RefusedTotal);
        assert!(!b.is_congested() && !bp.is_congested(["b.example"].into_iter()));
        // Even an empty link cannot pass the node's budget.
        let c = LinkQueue::new("c.example", 800, bp.clone(), total.clone());
        assert_eq!(c.try_reserve(200), Reserve::RefusedTotal);
        assert_eq!(total.used(), 900);
        // Released bytes (never more than were reserved) and a closed link's leftovers
        // go back to the budget.
        a.release(100);
        a.release(10_000);
        assert_eq!(total.used(), 300);
        b.close();
        assert_eq!(total.used(), 0);
        // A reservation on a link that already ended is given back when it is dropped.
        assert_eq!(b.try_reserve(50), Reserve::Accepted);
        assert_eq!(total.used(), 50);
        drop(b);
        assert_eq!(total.used(), 0);
    }

    #[test]
    fn a_full_link_queue_refuses_until_it_drains_below_low_water() {
        let bp = Arc::new(Backpressure::default());
        let q = LinkQueue::new("peer.example", 1000, bp.clone(), budget(1 << 20));
        assert_eq!(q.try_reserve(600), Reserve::Accepted);
        assert_eq!(q.try_reserve(300), Reserve::Accepted);
        assert!(!bp.is_congested(["peer.example"].into_iter()));
        // 900 + 200 passes 1000: refused, and the peer's inbound streams are paused.
        assert_eq!(q.try_reserve(200), Reserve::Refused { tripped: true });
        assert_eq!(q.bytes(), 900);
        assert!(bp.is_congested(["other.example", "peer.example"].into_iter()));
        assert!(!bp.is_congested(["other.example"].into_iter()));
        // Still congested: even a small stanza is refused, and the trip is logged once.
        assert_eq!(q.try_reserve(1), Reserve::Refused { tripped: false });
        // 900 - 300 = 600: above the low-water mark (500), still congested.
        assert!(!q.release(300));
        assert_eq!(q.try_reserve(1), Reserve::Refused { tripped: false });
        let changes = bp.subscribe();
        // 600 - 200 = 400 < 500: relieved, the streams are woken.
        assert!(q.release(200));
        assert!(changes.has_changed().unwrap());
        assert!(!bp.is_congested(["peer.example"].into_iter()));
        assert_eq!(q.try_reserve(100), Reserve::Accepted);
        assert_eq!(q.bytes(), 500);
        // An empty queue takes one stanza larger than the whole bound.
        let empty = LinkQueue::new("x.example", 1000, bp.clone(), budget(1 << 20));
        assert_eq!(empty.try_reserve(5000), Reserve::Accepted);
        assert_eq!(empty.try_reserve(1), Reserve::Refused { tripped: true });
    }

    #[test]
    fn a_link_that_ends_congested_relieves_its_peer() {
        let bp = Arc::new(Backpressure::default());
        let q1 = LinkQueue::new("peer.example", 10, bp.clone(), budget(1 << 20));
        let q2 = LinkQueue::new("peer.example", 10, bp.clone(), budget(1 << 20));
        for q in [&q1, &q2] {
            assert_eq!(q.try_reserve(8), Reserve::Accepted);
            assert_eq!(q.try_reserve(8), Reserve::Refused { tripped: true });
        }
        q1.close();
        // The other link to the same domain is still congested.
        assert!(bp.is_congested(["peer.example"].into_iter()));
        drop(q2);
        assert!(!bp.is_congested(["peer.example"].into_iter()));
        assert_eq!(bp.count.load(Ordering::Relaxed), 0);
        // Closing twice, or releasing after close, does not count twice.
        q1.close();
        q1.release(100);
        assert_eq!(bp.count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failed_entries_expire_and_are_bounded() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + std::time::Duration::from_secs(n);
        let mut set = ExpiringSet::new(3);
        assert!(!set.insert("a", s(10), t0));
        assert!(!set.insert("b", s(20), t0));
        assert!(!set.insert("c", s(30), t0));
        assert!(set.contains(&"a", s(5)));
        // Full of live entries: the one expiring first goes.
        assert!(set.insert("d", s(40), s(5)));
        assert!(!set.contains(&"a", s(5)));
        assert_eq!(set.len(), 3);
        // Expired entries make room without evicting a live one.
        assert!(!set.insert("e", s(50), s(25)));
        assert!(set.contains(&"c", s(25)) && set.contains(&"e", s(25)));
        assert!(!set.contains(&"b", s(25)));
        // An entry met after its deadline is dropped.
        assert!(!set.contains(&"c", s(31)));
        set.prune(s(45));
        assert_eq!(set.len(), 1);
    }
}
