//! The archive's half on the Router's thread: which archives a routed message goes to, its
//! id, and the queue of archive writes per account shard.
//!
//! Group commit: each shard has at most one batch in flight; what arrives meanwhile waits and
//! goes as the next batch, so a busy shard commits many messages per Raft entry and flush,
//! and an idle one commits a message at once. A shard also sends at most one batch per
//! [`LINGER`] unless [`LINGER_MESSAGES`] are waiting: a node's messages are spread over its
//! many shards, and without the pause each got batches of one or two messages, each paying
//! a thread hop there and back, an fsync and a Raft entry (issue 19: at 10,000 messages/s on
//! one node the archive cost 78 µs of CPU per message, most of it per batch). And at most
//! [`MAX_IN_FLIGHT`] batches are in flight at once, node-wide, the fullest queues first:
//! every shard's thread writing a batch at once crowded the threads that deliver messages
//! off the cores (a burst of sixteen runnable writers against one Router), which is what
//! made delivery's p99 pass 100 ms long before the cores were full. A batch that fails (the shard's leader died, an
//! election) is sent again: appending is idempotent (the id is the key). Everything queued is
//! bounded by `max_pending_bytes`: beyond it, messages are still delivered but not archived,
//! and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::element::Element;
use proto::jid::Jid;
use proto::stanza_id::{ArchiveId, ArchiveIdGenerator};
use storage::archive::ArchivedMessage;

use crate::im::messages::ArchiveAppend;
use crate::metrics::METRICS;
use crate::modules::mam::Settings;

/// Most messages in one batch.
const MAX_BATCH_MESSAGES: usize = 1000;
/// Most XML bytes in one batch (well under `cluster.max_frame_bytes`'s 16 MiB default).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The least time between two batches of one shard, while fewer than [`LINGER_MESSAGES`]
/// wait. A message is archived this much later at most (it is delivered at once).
pub const LINGER: Duration = Duration::from_millis(20);
/// Messages that make a shard's batch go without waiting out [`LINGER`].
const LINGER_MESSAGES: usize = 256;
/// Batches in flight at once, over all shards.
pub const MAX_IN_FLIGHT: usize = 2;
/// Tries of one batch before its messages are given up (each try waits up to the IM
/// timeout for a leader).
const MAX_ATTEMPTS: u32 = 5;

type Entry = (Jid, ArchivedMessage);

#[derive(Default)]
struct ShardQueue {
    queued: Vec<Entry>,
    /// The batch being written, kept to send again if it fails.
    in_flight: Option<Arc<Vec<Entry>>>,
    /// Failures in a row of the batch at the head of the queue.
    failures: u32,
    /// When the last batch went.
    last_sent: Option<Instant>,
}

impl ShardQueue {
    /// When the queued messages may go (`None`: nothing to send, or a batch in flight).
    fn due(&self, now: Instant) -> Option<Instant> {
        if self.in_flight.is_some() || self.queued.is_empty() {
            return None;
        }
        match self.last_sent {
            Some(t) if self.queued.len() < LINGER_MESSAGES => Some(t + LINGER),
            _ => Some(now),
        }
    }
}

pub struct Archiver {
    ids: ArchiveIdGenerator,
    archive_chat_states: bool,
    max_pending_bytes: usize,
    pending_bytes: usize,
    shards: HashMap<usize, ShardQueue>,
    /// Whether the Router's timer for [`next_due`](Self::next_due) is set.
    pub timer_set: bool,
}

fn bytes(e: &Entry) -> usize {
    e.1.xml.len() + e.1.with.len() + 64
}

impl Archiver {
    /// `node`: this node's id in the cluster (0 alone), part of every id it assigns.
    pub fn new(node: u64, settings: &Settings) -> Archiver {
        Archiver {
            ids: ArchiveIdGenerator::new((node & 0x3ff) as u16),
            archive_chat_states: settings.archive_chat_states,
            max_pending_bytes: settings.max_pending_bytes,
            pending_bytes: 0,
            shards: HashMap::new(),
            timer_set: false,
        }
    }

    /// Whether `message` is one an archive keeps (XEP-0313 §5.1.1, XEP-0334).
    pub fn archivable(&self, message: &Element) -> bool {
        proto::mam::archivable(message, self.archive_chat_states)
    }

    /// An archive id another node gave (see [`ArchiveIdGenerator::observe`]).
    pub fn observe(&mut self, id: ArchiveId) {
        self.ids.observe(id);
    }

    pub fn next_id(&mut self) -> ArchiveId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.ids.next(now)
    }

    /// Queue `msg` for `user`'s archive (in shard `shard`); false when the node's archive
    /// queue is full and the message is not archived.
    pub fn queue(&mut self, shard: usize, user: Jid, msg: ArchivedMessage) -> bool {
        let entry = (user, msg);
        let n = bytes(&entry);
        if self.pending_bytes + n > self.max_pending_bytes {
            METRICS
                .mam_not_archived
                .with_label_values(&["overload"])
                .inc();
            return false;
        }
        self.pending_bytes += n;
        METRICS.mam_pending_bytes.add(n as i64);
        self.shards.entry(shard).or_default().queued.push(entry);
        true
    }

    /// The batches to send at `now`: of each shard with messages queued, none in flight and
    /// its [`LINGER`] over, up to a batch's bounds. They stay recorded as in flight until
    /// [`done`](Self::done).
    pub fn take_ready(&mut self, now: Instant) -> Vec<(usize, ArchiveAppend)> {
        let mut ready = Vec::new();
        let in_flight = self.in_flight();
        let Some(room) = MAX_IN_FLIGHT.checked_sub(in_flight).filter(|n| *n > 0) else {
            return ready;
        };
        let mut due: Vec<(usize, usize)> = self
            .shards
            .iter()
            .filter(|(_, q)| q.due(now).is_some_and(|due| due <= now))
            .map(|(shard, q)| (*shard, q.queued.len()))
            .collect();
        // The fullest first (ties: the lower shard, so that the order is stable).
        due.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (shard, _) in due.into_iter().take(room) {
            let Some(q) = self.shards.get_mut(&shard) else {
                continue;
            };
            let mut size = 0;
            let mut n = 0;
            for e in &q.queued {
                if n == MAX_BATCH_MESSAGES || (n > 0 && size + bytes(e) > MAX_BATCH_BYTES) {
                    break;
                }
                size += bytes(e);
                n += 1;
            }
            let batch: Arc<Vec<Entry>> = Arc::new(q.queued.drain(..n).collect());
            if let Some(op) = ArchiveAppend::new(batch.clone()) {
                ready.push((shard, op));
                q.in_flight = Some(batch);
                q.last_sent = Some(now);
            }
        }
        ready
    }

    /// Batches in flight now, over all shards.
    fn in_flight(&self) -> usize {
        self.shards
            .values()
            .filter(|q| q.in_flight.is_some())
            .count()
    }

    /// The earliest time a queued message may go, if any waits (for the Router's timer).
    /// `None` also while [`MAX_IN_FLIGHT`] batches are in flight: the next answer sends more.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        let in_flight = self.in_flight();
        if in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        self.shards.values().filter_map(|q| q.due(now)).min()
    }

    /// Shard `shard`'s batch in flight was written (`ok`), or failed: then it is queued again
    /// in front of what came since, unless it failed [`MAX_ATTEMPTS`] times in a row.
    pub fn done(&mut self, shard: usize, ok: bool) {
        let Some(q) = self.shards.get_mut(&shard) else {
            return;
        };
        let Some(batch) = q.in_flight.take() else {
            return;
        };
        if ok {
            q.failures = 0;
        } else {
            q.failures += 1;
            if q.failures < MAX_ATTEMPTS {
                // The shard's copy is gone by now (or soon): the messages are ours again.
                let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
                q.queued.splice(0..0, batch);
                return;
            }
            q.failures = 0;
            tracing::error!(
                shard,
                messages = batch.len(),
                "mam: an archive batch failed {MAX_ATTEMPTS} times in a row, not archived"
            );
            METRICS
                .mam_not_archived
                .with_label_values(&["failed"])
                .inc_by(batch.len() as u64);
        }
        let freed: usize = batch.iter().map(bytes).sum();
        self.pending_bytes = self.pending_bytes.saturating_sub(freed);
        METRICS.mam_pending_bytes.sub(freed as i64);
        // A shard that stays quiet past its linger starts afresh (its next message goes at
        // once); until then its queue is kept, with the time its last batch went.
        if q.queued.is_empty() && q.last_sent.is_none_or(|t| t.elapsed() >= LINGER) {
            self.shards.remove(&shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, id: u64, xml_bytes: usize) -> (Jid, ArchivedMessage) {
        let user = Jid::parse(user).unwrap_or_else(|e| panic!("{user}: {e}"));
        (
            user,
            ArchivedMessage {
                id,
                with: "peer@example.org".into(),
                with_resource: String::new(),
                outgoing: false,
                xml: "x".repeat(xml_bytes).into(),
            },
        )
    }

    fn archiver(max_pending_bytes: usize) -> Archiver {
        Archiver::new(
            1,
            &Settings {
                max_pending_bytes,
                ..Settings::default()
            },
        )
    }

    fn ids(op: &ArchiveAppend) -> Vec<u64> {
        op.entries.iter().map(|(_, m)| m.id).collect()
    }

    #[test]
    fn one_batch_in_flight_per_shard_and_the_rest_goes_next() {
        let t0 = Instant::now();
        let mut a = archiver(1 << 20);
        for id in 1..=3 {
            let (u, m) = entry("a@x", id, 10);
            assert!(a.queue(0, u, m));
        }
        let (u, m) = entry("b@x", 9, 10);
        assert!(a.queue(1, u, m));
        let mut ready = a.take_ready(t0);
        ready.sort_by_key(|(s, _)| *s);
        assert_eq!(ready.len(), 2, "idle shards send at once");
        assert_eq!(ids(&ready[0].1), [1, 2, 3]);
        assert_eq!(ids(&ready[1].1), [9]);
        // While shard 0's batch is in flight, what comes waits.
        let (u, m) = entry("a@x", 4, 10);
        assert!(a.queue(0, u, m));
        assert!(a.take_ready(t0).is_empty());
        a.done(0, true);
        // Then it waits out the linger since the last batch.
        assert!(a.take_ready(t0 + LINGER / 2).is_empty());
        assert_eq!(a.next_due(t0), Some(t0 + LINGER));
        let ready = a.take_ready(t0 + LINGER);
        assert_eq!(ready.len(), 1);
        assert_eq!(ids(&ready[0].1), [4]);
        assert_eq!(a.next_due(t0 + LINGER), None, "nothing waits");
    }

    #[test]
    fn at_most_max_in_flight_batches_the_fullest_first() {
        let t0 = Instant::now();
        let mut a = archiver(1 << 20);
        // Shard s gets s + 1 messages.
        for shard in 0..MAX_IN_FLIGHT + 1 {
            for id in 0..=shard as u64 {
                let (u, m) = entry("a@x", 100 * shard as u64 + id, 10);
                a.queue(shard, u, m);
            }
        }
        let ready = a.take_ready(t0);
        let mut sent: Vec<usize> = ready.iter().map(|(s, _)| *s).collect();
        sent.sort_unstable();
        assert_eq!(sent, (1..=MAX_IN_FLIGHT).collect::<Vec<_>>(), "the fullest");
        assert_eq!(a.next_due(t0), None, "no timer while the cap is reached");
        assert!(a.take_ready(t0).is_empty());
        a.done(MAX_IN_FLIGHT, true);
        let ready = a.take_ready(t0);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0, 0, "the one left waiting goes next");
    }

    #[test]
    fn enough_waiting_messages_go_without_the_linger() {
        let t0 = Instant::now();
        let mut a = archiver(1 << 30);
        let (u, m) = entry("a@x", 0, 10);
        a.queue(0, u, m);
        assert_eq!(a.take_ready(t0).len(), 1);
        a.done(0, true);
        for id in 1..LINGER_MESSAGES as u64 {
            let (u, m) = entry("a@x", id, 10);
            a.queue(0, u, m);
        }
        assert!(a.take_ready(t0).is_empty());
        let (u, m) = entry("a@x", LINGER_MESSAGES as u64, 10);
        a.queue(0, u, m);
        let ready = a.take_ready(t0);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.entries.len(), LINGER_MESSAGES);
    }

    #[test]
    fn a_failed_batch_goes_again_first_and_is_given_up_after_max_attempts() {
        let mut now = Instant::now();
        let mut a = archiver(1 << 20);
        let (u, m) = entry("a@x", 1, 10);
        a.queue(0, u, m);
        let _ = a.take_ready(now);
        let (u, m) = entry("a@x", 2, 10);
        a.queue(0, u, m);
        a.done(0, false);
        now += LINGER;
        let ready = a.take_ready(now);
        assert_eq!(ids(&ready[0].1), [1, 2], "the failed batch first, in order");
        for _ in 2..MAX_ATTEMPTS {
            a.done(0, false);
            now += LINGER;
            assert_eq!(a.take_ready(now).len(), 1, "sent again");
        }
        // The last failure gives the batch up and frees its bytes.
        a.done(0, false);
        assert!(a.take_ready(now + LINGER).is_empty());
        assert_eq!(a.pending_bytes, 0);
    }

    #[test]
    fn the_queue_is_bounded_and_batches_by_bytes() {
        let now = Instant::now();
        let mut a = archiver(3 * (1000 + 64 + 16));
        for id in 0..3 {
            let (u, m) = entry("a@x", id, 1000);
            assert!(a.queue(0, u, m), "within the bound");
        }
        let (u, m) = entry("a@x", 3, 1000);
        assert!(!a.queue(0, u, m), "beyond max_pending_bytes: not archived");
        let mut a = archiver(1 << 30);
        for id in 0..5 {
            let (u, m) = entry("a@x", id, 1024 * 1024);
            a.queue(0, u, m);
        }
        let ready = a.take_ready(now);
        assert_eq!(
            ids(&ready[0].1),
            [0, 1, 2],
            "at most MAX_BATCH_BYTES per batch"
        );
    }
}
