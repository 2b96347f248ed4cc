//! The group chat component (XEP-0045): one actor per served domain, registered with the
//! Router for `conference.<domain>` (`[modules.muc] domain`) on every node. It answers the
//! service's own JID (disco, ping) and hands every stanza for a room to the leader of the
//! room's shard (`im::muc::MucStanza` through `AccountShards::tell`: the local shard actor,
//! or the leader over the NodeLink), which runs the room and routes what it sends. So a
//! room has one place where it acts, whichever node its occupants are on.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use proto::element::Element;
use proto::error::{stanza_error_reply, StanzaErrorCondition as Cond};
use proto::jid::Jid;
use proto::ns;

use crate::im::muc::{MucDirectory, MucStanza};
use crate::im::AccountShards;
use crate::modules::muc::room::DirectoryEntry;
use crate::route::to_router::RouteStanza;
use crate::router::messages::ToComponent;

pub struct MucService {
    /// The service's domain (`conference.example.com`).
    domain: String,
    /// The node's served domains (the creation policy `local`).
    served: Arc<Vec<String>>,
    shards: AccountShards,
    router: Recipient<RouteStanza>,
    /// One JID of the service per shard to ask for its part of the directory (a node alone
    /// has one store for all its shards: one).
    probes: Vec<Jid>,
}

impl MucService {
    pub fn new(
        domain: String,
        served: Arc<Vec<String>>,
        shards: AccountShards,
        router: Recipient<RouteStanza>,
    ) -> Self {
        let probes = probes(&shards, &domain);
        MucService {
            domain,
            served,
            shards,
            router,
            probes,
        }
    }

    /// A stanza to the service's own JID: disco and ping are answered, other requests get
    /// `service-unavailable` (RFC 6120 §8.4), the rest is ignored.
    fn service_stanza(&self, msg: ToComponent, ctx: &mut Context<Self>) {
        let ToComponent { from, to, stanza } = msg;
        if stanza.name != "iq" || !matches!(stanza.attr("type"), Some("get") | Some("set")) {
            return;
        }
        let payload = stanza.children().next();
        let get = stanza.attr("type") == Some("get");
        let answer = match payload.map(|p| (p.ns.as_str(), p.attr("node").is_some())) {
            Some((ns::DISCO_INFO, false)) if get => Ok(Some(self.disco_info())),
            Some((ns::DISCO_ITEMS, false)) if get => return self.directory(from, to, stanza, ctx),
            Some((ns::PING, _)) if get => Ok(None),
            Some((ns::DISCO_INFO | ns::DISCO_ITEMS, true)) if get => Err(Cond::ItemNotFound),
            _ => Err(Cond::ServiceUnavailable),
        };
        self.answer(from, to, &stanza, answer);
    }

    fn answer(&self, from: Jid, to: Jid, stanza: &Element, answer: Result<Option<Element>, Cond>) {
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
            Err(cond) => {
                let mut addressed = stanza.clone();
                addressed.set_attr("from", from.to_string());
                addressed.set_attr("to", to.to_string());
                stanza_error_reply(&addressed, cond, None)
            }
        };
        self.router.do_send(RouteStanza {
            from: to,
            to: from,
            stanza: reply,
        });
    }

    /// XEP-0045 §6.3: the public rooms, gathered from every shard (each keeps the entries of
    /// its rooms); a shard that does not answer leaves its rooms out.
    fn directory(&self, from: Jid, to: Jid, stanza: Element, ctx: &mut Context<Self>) {
        let gather = rooms(self.shards.clone(), self.probes.clone());
        ctx.spawn(gather.into_actor(self).map(move |rooms, service, _| {
            let mut q = Element::new("query", ns::DISCO_ITEMS);
            for (jid, entry) in rooms.into_iter().filter(|(_, e)| e.public) {
                q.push_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", jid)
                        .with_attr("name", entry.name),
                );
            }
            service.answer(from, to, &stanza, Ok(Some(q)));
        }));
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
            // XEP-0486 §3.1: rooms keep a vCard (their avatar).
            proto::avatar::NS_VCARD,
        ] {
            q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        q
    }
}

/// One JID of service `domain` per shard, to ask that shard for its part of the directory
/// (a node alone has one store for all its shards: one JID).
pub fn probes(shards: &AccountShards, domain: &str) -> Vec<Jid> {
    let count = shards.all().count().max(1);
    let wanted = if shards.clustered() { count } else { 1 };
    let mut probes: Vec<Option<Jid>> = vec![None; count];
    let mut found = 0;
    for n in 0..(count * 64) {
        if found == wanted {
            break;
        }
        let Ok(jid) = Jid::parse(&format!("directory{n}@{domain}")) else {
            break;
        };
        let i = shards.shard_index(&jid);
        if probes[i].is_none() {
            probes[i] = Some(jid);
            found += 1;
        }
    }
    probes.into_iter().flatten().collect()
}

/// Every room of the service whose `probes` these are (see [`probes`]), by JID, with its
/// directory entry; a shard that does not answer leaves its rooms out.
pub async fn rooms(shards: AccountShards, probes: Vec<Jid>) -> BTreeMap<String, DirectoryEntry> {
    let mut rooms = BTreeMap::new();
    for probe in probes {
        match shards
            .ask(
                &probe,
                MucDirectory {
                    probe: probe.clone(),
                },
            )
            .await
        {
            Ok(listed) => rooms.extend(listed.into_iter().filter_map(|(jid, entry)| {
                Some((jid, serde_json::from_str::<DirectoryEntry>(&entry).ok()?))
            })),
            Err(e) => tracing::warn!(error = %e, "muc: a shard's directory not read"),
        }
    }
    rooms
}

impl Actor for MucService {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tracing::info!(domain = %self.domain, "muc: service started");
    }
}

impl Handler<ToComponent> for MucService {
    type Result = ();
    fn handle(&mut self, msg: ToComponent, ctx: &mut Context<Self>) {
        if msg.to.local().is_none() {
            return self.service_stanza(msg, ctx);
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
                counted: false,
            },
        );
    }
}
