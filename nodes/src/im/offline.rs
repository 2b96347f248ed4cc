//! Offline messages (XEP-0160): stored with an XEP-0203 delay stamp when no resource can take
//! them, delivered at the next available presence with non-negative priority, and removed
//! only after they were handed to the session (a crash in between redelivers, never loses).

use std::time::{SystemTime, UNIX_EPOCH};

use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::jid::Jid;
use storage::StorageError;

use super::RosterActor;

const NS_DELAY: &str = "urn:xmpp:delay";

impl RosterActor {
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
                .with_attr("stamp", utc_stamp(SystemTime::now()))
                .with_text("Offline Storage"),
        );
        match self.offline_push(
            &user.to_string(),
            &stanza.to_xml_string(),
            self.limits.max_offline_messages,
        ) {
            Ok(_) => Ok(()),
            // XEP-0160 §3: the sender learns the recipient's storage is full.
            Err(StorageError::QuotaExceeded { .. }) => {
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

    /// The stored messages a fetch may take: those after what an earlier fetch still holds.
    pub(super) fn fetch_offline(&mut self, user: &Jid) -> Vec<(u64, String)> {
        let held = self
            .offline_claims
            .get(user)
            .filter(|(_, at)| at.elapsed() < CLAIM_TIMEOUT)
            .map(|(seq, _)| *seq)
            .unwrap_or(0);
        let stored = match self.offline.peek(&user.to_string()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "reading offline messages failed");
                return Vec::new();
            }
        };
        let fresh: Vec<(u64, String)> = stored.into_iter().filter(|(seq, _)| *seq > held).collect();
        if let Some((last, _)) = fresh.last() {
            self.offline_claims
                .insert(user.clone(), (*last, std::time::Instant::now()));
        }
        fresh
    }

    pub(super) fn remove_offline(&mut self, user: &Jid, upto: u64) -> Result<(), String> {
        if self
            .offline_claims
            .get(user)
            .is_some_and(|(seq, _)| *seq <= upto)
        {
            self.offline_claims.remove(user);
        }
        self.offline_remove_upto(&user.to_string(), upto)
            .map_err(|e| e.to_string())
    }
}

/// How long a fetch holds the messages it took before another fetch may take them again
/// (its node died before removing them: they are delivered again, never lost).
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// XEP-0082 UTC timestamp, e.g. `2026-11-22T03:04:05Z`.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_are_xep_0082_utc() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(utc_stamp(t), "2026-11-18T11:06:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "2000-02-29T00:00:00Z");
    }
}
