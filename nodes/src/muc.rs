//! The group chat component (XEP-0045): one actor per served domain, registered with the
//! Router for `conference.<domain>` (`[modules.muc] domain`) on every node. It answers the
//! service's own JID (disco, ping) and hands every stanza for a room to the leader of the
//! room's shard (`im::muc::MucStanza` through `AccountShards::tell`: the local shard actor,
//! or the leader over the NodeLink), which runs the room and routes what it sends. So a
//! room has one place where it acts, whichever node its occupants are on.

use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition as Cond};
use proto::ns;

use crate::im::muc::MucStanza;
use crate::im::AccountShards;
use crate::route::to_router::RouteStanza;
use crate::router::messages::ToComponent;

pub struct MucService {
    /// The service's domain (`conference.example.com`).
    domain: String,
    /// The node's served domains (the creation policy `local`).
    served: Arc<Vec<String>>,
    shards: AccountShards,
    router: Recipient<RouteStanza>,
}

impl MucService {
    pub fn new(
        domain: String,
        served: Arc<Vec<String>>,
        shards: AccountShards,
        router: Recipient<RouteStanza>,
    ) -> Self {
        MucService {
            domain,
            served,
            shards,
            router,
        }
    }

    /// A stanza to the service's own JID: disco and ping are answered, other requests get
    /// `service-unavailable` (RFC 6120 §8.4), the rest is ignored.
    fn service_stanza(&self, msg: ToComponent) {
        let ToComponent { from, to, stanza } = msg;
        if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("get") | Some("set")) {
            return;
        }
        let payload = stanza.children().next();
        let get = stanza.attr("type") == Some("get");
        let answer = match payload.map(|p| p.ns.as_str()) {
            Some(ns::DISCO_INFO) if get => Ok(Some(self.disco_info())),
            // Public rooms are not listed yet (a room directory across shards).
            Some(ns::DISCO_ITEMS) if get => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
            Some(ns::PING) if get => Ok(None),
            _ => Err(Cond::ServiceUnavailable),
        };
        let mut addressed = stanza.clone();
        addressed.set_attr("from", from.to_string());
        addressed.set_attr("to", to.to_string());
        let reply = match answer {
            Ok(payload) => {
                let mut r = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", stanza.attr("id").unwrap_or_default())
                    .with_attr("from", to.to_string())
                    .with_attr("to", from.to_string());
                if let Some(p) = payload {
                    r.push_child(p);
                }
                r
            }
            Err(cond) => stanza_error_reply(&addressed, cond, None),
        };
        self.router.do_send(RouteStanza {
            from: to,
            to: from,
            stanza: reply,
        });
    }

    /// XEP-0045 §6.2: the service's identity and features.
    fn disco_info(&self) -> Element {
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", "Chatrooms"),
        );
        for f in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::MUC,
            ns::MUC_SELF_PING,
            ns::OCCUPANT_ID,
            ns::PING,
        ] {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q
    }
}

impl Actor for MucService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tracing::info!(domain = %self.domain, "muc: service started");
    }
}

impl Handler<ToComponent> for MucService {
    type Result = ();
    fn handle(&mut self, msg: ToComponent, _: &mut Context<Self>) {
        if msg.to.local().is_none() {
            return self.service_stanza(msg);
        }
        let room = msg.to.to_bare();
        let local_sender = self.served.iter().any(|d| d == msg.from.domain());
        self.shards.tell(
            &room.clone(),
            MucStanza {
                room,
                from: msg.from,
                to: msg.to,
                stanza: msg.stanza,
                local_sender,
            },
        );
    }
}
