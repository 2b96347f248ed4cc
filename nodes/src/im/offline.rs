//! Offline messages (XEP-0160): stored with an XEP-0203 delay stamp when no resource can take
//! them (within `im.max_offline_messages` and `im.max_offline_bytes` per account), delivered
//! at the next available presence with non-negative priority in bounded batches, and each
//! batch removed only after the session wrote it to the client's socket (a crash or a cut
//! connection in between redelivers that batch, never loses it). The delivery loop is the
//! Router's (`Router::offline_batch`); this side serves batches and removals.

use std::time::{SystemTime, UNIX_EPOCH};

use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::jid::Jid;
use storage::StorageError;

use super::AccountShard;

const NS_DELAY: &str = "urn:xmpp:delay";

impl AccountShard {
    pub(super) fn store_offline(
        &mut self,
        user: &Jid,
        mut stanza: Element,
    ) -> Result<(), StanzaErrorCondition> {
        let sender = stanza.attr("from").and_then(|f| Jid::parse(f).ok());
        let refused = sender.is_some_and(|s| {
            self.blocks(user, &s)
                || !self.privacy_allows(user, None, proto::privacy::StanzaKind::Message, &s)
        });
        if refused {
            // XEP-0191 §3.5, XEP-0016 (the default list applies while offline):
            // refused as if the account could not take messages.
            return Err(StanzaErrorCondition::ServiceUnavailable);
        }
        stanza = stanza.with_child(
            Element::new("delay", NS_DELAY)
                .with_attr("from", user.domain())
                .with_attr(
                    "stamp",
                    proto::datetime::utc_stamp(
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                    ),
                )
                .with_text("Offline Storage"),
        );
        match self.offline_push(
            &user.to_string(),
            &stanza.to_xml_string(),
            self.limits.max_offline_messages,
            self.limits.max_offline_bytes,
        ) {
            Ok(_) => Ok(()),
            // XEP-0160 §3, RFC 6121 §8.5.2.1.1 / §8.5.2.2.1: the sender learns the recipient's
            // storage is full (either quota): the same answer as for an account that cannot
            // take messages at all.
            Err(StorageError::QuotaExceeded { quota, .. }) => {
                tracing::info!(%user, quota, "offline message quota reached: message refused");
                Err(StanzaErrorCondition::ServiceUnavailable)
            }
            Err(StorageError::ByteQuotaExceeded { quota, .. }) => {
                tracing::info!(%user, quota, "offline byte quota (im.max_offline_bytes) reached: message refused");
                Err(StanzaErrorCondition::ServiceUnavailable)
            }
            // The recipient's shard is changing leaders: the sender may retry.
            Err(StorageError::Unavailable(e)) => {
                tracing::warn!(error = %e, "storing an offline message failed for now");
                Err(StanzaErrorCondition::ResourceConstraint)
            }
            Err(e) => {
                tracing::error!(error = %e, "storing an offline message failed");
                Err(StanzaErrorCondition::InternalServerError)
            }
        }
    }

    /// The next batch of stored messages for `holder` (a resource of `user`): those after
    /// sequence number `after`, at least one if there is one, within the byte and count
    /// bounds (clamped to [`MAX_FETCH_BYTES`] and [`MAX_FETCH_MESSAGES`] whatever the
    /// requester asks, so the reply is a bounded NodeLink frame in a cluster).
    ///
    /// While one resource is being served a backlog, it holds a claim on the account's stored
    /// messages, refreshed by each of its fetches: another resource's fetch gets nothing
    /// until the holder's delivery ends (an empty batch, or [`release_offline`]) or the claim
    /// runs out ([`CLAIM_TIMEOUT`] without a fetch: its node died). So two resources becoming
    /// available at once do not both get the backlog.
    ///
    /// [`release_offline`]: Self::release_offline
    pub(super) fn fetch_offline(
        &mut self,
        user: &Jid,
        holder: &Jid,
        after: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> Vec<(u64, String)> {
        let held_by_other = self
            .offline_claims
            .get(user)
            .is_some_and(|(h, at)| h != holder && at.elapsed() < CLAIM_TIMEOUT);
        if held_by_other {
            return Vec::new();
        }
        let batch = match self.offline.peek_batch(
            &user.to_string(),
            after,
            max_bytes.min(MAX_FETCH_BYTES),
            max_messages.min(MAX_FETCH_MESSAGES),
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading offline messages failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            self.offline_claims.remove(user);
        } else {
            self.offline_claims
                .insert(user.clone(), (holder.clone(), std::time::Instant::now()));
        }
        batch
    }

    /// `holder` stopped being served (its connection ended mid-delivery, or a removal
    /// failed): another resource may take the stored messages at once.
    pub(super) fn release_offline(&mut self, user: &Jid, holder: &Jid) {
        if self
            .offline_claims
            .get(user)
            .is_some_and(|(h, _)| h == holder)
        {
            self.offline_claims.remove(user);
        }
    }

    /// Exactly these stored messages were delivered: remove them.
    pub(super) fn remove_offline(&mut self, user: &Jid, seqs: &[u64]) -> Result<(), String> {
        self.offline_remove(&user.to_string(), seqs)
            .map_err(|e| e.to_string())
    }
}

/// How long a delivering resource's claim on the stored messages lasts after its last fetch
/// (its node died, or never came back for the next batch): then another resource may take
/// them, and a batch the first one delivered but did not remove comes again (never lost).
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most bytes (stored XML) one batch may hold, whatever the requester asks: a batch is one
/// reply frame on the NodeLink in a cluster, and one send queue's worth at the session.
pub const MAX_FETCH_BYTES: usize = 4 << 20;
/// Most messages one batch may hold.
pub const MAX_FETCH_MESSAGES: usize = 1000;
