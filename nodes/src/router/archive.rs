//! The Router's step for the message archive (XEP-0313 with XEP-0359 ids, `modules::mam`):
//! once routing decided where a message goes and before anything is delivered, it picks the
//! archives the message goes to (the recipient's when a local account gets it or stores it
//! offline, the sender's when a local account sends it elsewhere), gives the message one id
//! for both, stamps the recipient's `<stanza-id/>` on what is delivered (stripping forged
//! ones), and queues the archive writes for the accounts' shards (`router::archiver`).

use std::time::Instant;

use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;
use proto::stanza_id;
use storage::archive::ArchivedMessage;

use super::Router;
use crate::route::{Delivery, RoutingView};

impl Router {
    /// Archive `stanza` (from `from` to `to`, whose bare JID is `bare`) as `deliveries` say it
    /// goes. Returns the id it has in the sender's archive (for the sender's carbon copies,
    /// XEP-0280 §6 with XEP-0359), if it was archived there.
    pub(super) fn archive(
        &self,
        from: &Jid,
        to: &Jid,
        bare: &Jid,
        stanza: &mut Element,
        deliveries: &[Delivery],
        ctx: &mut Context<Self>,
    ) -> Option<String> {
        let archiver = self.archiver.as_ref()?;
        if stanza.name != "message" || !archiver.borrow().archivable(stanza) {
            return None;
        }
        let reaches_account = deliveries.iter().any(|d| {
            matches!(
                d,
                Delivery::Local { .. } | Delivery::Remote { .. } | Delivery::Offline
            )
        });
        let leaves = reaches_account
            || deliveries
                .iter()
                .any(|d| matches!(d, Delivery::S2s | Delivery::Component { .. }));
        let to_own_account = from.local() == bare.local() && from.domain() == bare.domain();
        let sender =
            (from.local().is_some() && self.is_local_domain(from.domain())).then(|| from.to_bare());
        // Between two resources of one account it is archived once, as received.
        let outgoing = leaves && !to_own_account && sender.is_some();
        if !reaches_account && !outgoing {
            return None;
        }
        let by = bare.text();
        // XEP-0359 §3: ours to assign; a sender's claim to them goes (looked for only when
        // the message carries a stanza-id at all: most do not).
        if stanza.get_child("stanza-id", proto::ns::SID).is_some() {
            if reaches_account {
                stanza_id::strip_forged(stanza, &by);
            }
            if let (true, Some(s)) = (outgoing, &sender) {
                stanza_id::strip_forged(stanza, &s.text());
            }
        }
        let xml: std::sync::Arc<str> = stanza.to_xml_string().into();
        let mut a = archiver.borrow_mut();
        let id = a.next_id();
        let id_text = id.to_string();
        if reaches_account {
            let shard = self.im.shard_index(bare);
            a.queue(
                shard,
                bare.clone(),
                ArchivedMessage {
                    id: id.0,
                    with: from.to_bare().text(),
                    with_resource: from.resource().unwrap_or_default().to_string(),
                    outgoing: false,
                    xml: xml.clone(),
                },
            );
            stanza_id::add(stanza, &by, &id_text);
        }
        let mut sender_id = None;
        if let (true, Some(sender)) = (outgoing, sender) {
            let shard = self.im.shard_index(&sender);
            a.queue(
                shard,
                sender,
                ArchivedMessage {
                    id: id.0,
                    with: by,
                    with_resource: to.resource().unwrap_or_default().to_string(),
                    outgoing: true,
                    xml,
                },
            );
            sender_id = Some(id_text);
        }
        drop(a);
        self.flush_archive(ctx);
        sender_id
    }

    /// A message another node routed to a session here carries the archive ids that node
    /// gave (the recipient's `<stanza-id/>`, XEP-0359): the ids this node gives next sort
    /// after them, so a reply routed here sorts after the message it answers even within
    /// one millisecond (ids of one millisecond otherwise sort by node).
    pub(super) fn observe_archive_ids(&self, stanza: &Element) {
        let Some(archiver) = &self.archiver else {
            return;
        };
        let ids = stanza
            .children()
            .filter(|c| c.is("stanza-id", proto::ns::SID))
            .filter(|c| {
                c.attr("by")
                    .and_then(|by| Jid::parse(by).ok())
                    .is_some_and(|by| by.local().is_some() && self.is_local_domain(by.domain()))
            })
            .filter_map(|c| c.attr("id").and_then(proto::stanza_id::ArchiveId::parse));
        let mut a = archiver.borrow_mut();
        for id in ids {
            a.observe(id);
        }
    }

    /// Send each shard's next archive batch, if it has none in flight and its linger is over;
    /// set the timer for the next one that waits.
    pub(super) fn flush_archive(&self, ctx: &mut Context<Self>) {
        let Some(archiver) = &self.archiver else {
            return;
        };
        let now = Instant::now();
        let ready = {
            let mut a = archiver.borrow_mut();
            let ready = a.take_ready(now);
            if !a.timer_set {
                if let Some(due) = a.next_due(now) {
                    a.timer_set = true;
                    ctx.run_later(due.saturating_duration_since(now), |router, ctx| {
                        if let Some(a) = &router.archiver {
                            a.borrow_mut().timer_set = false;
                        }
                        router.flush_archive(ctx);
                    });
                }
            }
            ready
        };
        for (shard, batch) in ready {
            let user = batch.user.clone();
            let request = self.im.ask(&user, batch);
            ctx.spawn(request.into_actor(self).map(move |result, router, ctx| {
                let ok = match result {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(shard, error = %e, "mam: archive batch failed; sending it again");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "mam: archive batch not confirmed; sending it again");
                        false
                    }
                };
                if let Some(a) = &router.archiver {
                    a.borrow_mut().done(shard, ok);
                }
                router.flush_archive(ctx);
            }));
        }
    }
}
