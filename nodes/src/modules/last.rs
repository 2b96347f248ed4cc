//! Last Activity (XEP-0012), in one place: the server's uptime (§5) for queries to a served
//! domain, and an account's last logout (§3) for queries to its bare JID, answered by the
//! account's shard from the module's store. The shard tells the module when the account's
//! last resource goes unavailable; the time and status of that presence are stored (one
//! entry per account, [`storage::LastActivity`] as JSON).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::ns;
use storage::LastActivity;

use super::account::{AccountCtx, AccountIq, AccountState};
use super::{IqOutcome, IqRequest, IqScope, Module, Registry, Support};

pub fn module() -> Box<dyn Module> {
    Box::new(Last {
        started: Instant::now(),
    })
}

struct Last {
    started: Instant,
}

impl Module for Last {
    fn name(&self) -> &'static str {
        "last"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0012",
            title: "Last Activity",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::LAST]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::LAST]
    }
    fn iq_scope(&self) -> IqScope {
        IqScope::ServerAndAccount
    }
    fn iq(&self, req: &IqRequest<'_>, _: &Registry) -> IqOutcome {
        if req.is_set {
            return IqOutcome::Error(Cond::NotAllowed);
        }
        if req.payload.name != "query" {
            return IqOutcome::Error(Cond::BadRequest);
        }
        if req.to.local().is_some() {
            // Accounts are answered by their shard (`AccountState` below), never here.
            return IqOutcome::Error(Cond::ServiceUnavailable);
        }
        // §5: the seconds the server has been up, and no character data.
        let seconds = self.started.elapsed().as_secs();
        IqOutcome::Result(Some(
            Element::new("query", ns::LAST).with_attr("seconds", seconds.to_string()),
        ))
    }
    fn account(&self) -> Option<&dyn AccountState> {
        Some(self)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status text of a presence (the first `<status/>`), if not empty.
fn status_of(presence: &Element) -> Option<String> {
    presence
        .get_child("status", ns::CLIENT)
        .map(Element::text)
        .filter(|t| !t.is_empty())
}

impl AccountState for Last {
    fn namespaces(&self) -> &'static [&'static str] {
        &[ns::LAST]
    }

    fn iq(&self, ctx: &mut AccountCtx<'_>, req: &AccountIq<'_>) -> IqOutcome {
        if req.iq.get_child("query", ns::LAST).is_none() {
            return IqOutcome::Error(Cond::BadRequest);
        }
        let outcome = match req.iq.attr("type") {
            Some("get") => get(ctx, req),
            _ => Err(Cond::NotAllowed),
        };
        match outcome {
            Ok(q) => IqOutcome::Result(Some(q)),
            Err(cond) => IqOutcome::Error(cond),
        }
    }

    /// §3's "last logout": when the last resource goes, the unavailable presence that took
    /// it away gives the time and the status message.
    fn availability(&self, ctx: &mut AccountCtx<'_>, presence: &Element, available: bool) {
        if available {
            return;
        }
        let last = LastActivity {
            secs: unix_now(),
            status: status_of(presence),
        };
        ctx.put("", Some(last.payload()));
    }
}

fn get(ctx: &AccountCtx<'_>, req: &AccountIq<'_>) -> Result<Element, Cond> {
    if !ctx.may_see_presence(req.from)? {
        // §3: only those authorised to see the account's presence, else forbidden.
        return Err(Cond::Forbidden);
    }
    let query = Element::new("query", ns::LAST);
    if ctx.online() {
        // §3: an account with an available resource answers 0 seconds.
        return Ok(query.with_attr("seconds", "0"));
    }
    let stored = ctx.get("")?.ok_or(Cond::ItemNotFound)?;
    let last: LastActivity =
        serde_json::from_str(&stored).map_err(|_| Cond::InternalServerError)?;
    let query = query.with_attr("seconds", unix_now().saturating_sub(last.secs).to_string());
    Ok(match last.status {
        Some(s) => query.with_text(s),
        None => query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_first_non_empty_status() {
        let p = |xml: &str| Element::parse(xml).unwrap();
        assert_eq!(
            status_of(&p(
                "<presence xmlns='jabber:client' type='unavailable'>\
                 <status>Heading Home</status><status xml:lang='fr'>Parti</status></presence>"
            )),
            Some("Heading Home".to_string())
        );
        assert_eq!(
            status_of(&p("<presence xmlns='jabber:client'><status/></presence>")),
            None
        );
        assert_eq!(status_of(&p("<presence xmlns='jabber:client'/>")), None);
    }
}
