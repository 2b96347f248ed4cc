//! IM costs on one node: loading a 500-item roster (RosterActor, sled), and one presence
//! change broadcast to 100 subscribed, online contacts (SessionActor → Router → RosterActor →
//! Router → 100 SessionActors, serialised into their send queues).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nodes::c2s::messages::FromClient;
use nodes::c2s::session::{QueueWork, SendQueue, SessionActor};
use nodes::config::ResourceConflict;
use nodes::ext::Extensions;
use nodes::im::messages::{AccountIq, Filters};
use nodes::im::{ImLimits, ImStores, RosterActor, RosterShards};
use nodes::router::messages::RegisterSession;
use nodes::router::Router;
use proto::element::Element;
use proto::jid::Jid;
use proto::sasl::StoredCredentials;
use storage::RosterItem;

const ROSTER_ITEMS: usize = 500;
const CONTACTS: usize = 100;

struct Peer {
    addr: Addr<SessionActor>,
    queue: Rc<SendQueue>,
}

async fn session(
    router: &Addr<Router>,
    jid: &Jid,
    id: u64,
    ext: &Arc<Extensions>,
    im: &RosterShards,
) -> Peer {
    let queue = SendQueue::new(usize::MAX / 2);
    let addr = SessionActor::new(
        jid.clone(),
        id,
        queue.clone(),
        router.clone(),
        ext.clone(),
        Arc::new(vec!["localhost".to_string()]),
        im.clone(),
        Filters::default(),
    )
    .start();
    router
        .send(RegisterSession {
            jid: jid.clone(),
            session_id: id,
            session: addr.clone(),
        })
        .await
        .expect("router alive")
        .expect("no conflict");
    Peer { addr, queue }
}

/// Wait until `peer` has been handed a stanza containing `needle`.
async fn wait_for(peer: &Peer, needle: &[u8]) {
    loop {
        peer.queue.wake.notified().await;
        if let QueueWork::Write(b) = peer.queue.take() {
            if b.windows(needle.len()).any(|w| w == needle) {
                return;
            }
        }
    }
}

fn item(jid: &str, subscription: &str) -> RosterItem {
    RosterItem {
        jid: jid.to_string(),
        name: Some(format!("Name of {jid}")),
        groups: vec!["Friends".to_string()],
        subscription: subscription.to_string(),
        pending_out: false,
        pending_in: false,
        approved: false,
    }
}

fn im(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sb-bench-im-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = storage::Store::open(&dir).expect("open store");
    let accounts = store.accounts().expect("accounts tree");
    let creds = StoredCredentials::derive("pw", 4096).expect("derive");
    let stores = ImStores::open(&store).expect("IM trees");
    let alice = Jid::parse("alice@localhost/bench").expect("jid");
    let alice_bare = alice.to_bare().to_string();
    accounts.create(&alice_bare, &creds).expect("create");
    for i in 0..ROSTER_ITEMS {
        // The first CONTACTS items are online subscribers; the rest only fill the roster.
        let sub = if i < CONTACTS { "from" } else { "both" };
        let contact = format!("contact{i}@localhost");
        accounts.create(&contact, &creds).expect("create");
        stores
            .rosters
            .put(&alice_bare, &item(&contact, sub))
            .expect("put");
    }

    let system = actix_rt::System::new();
    let (shard, alice_session, contacts) = system.block_on(async {
        let ext = Arc::new(Extensions::default());
        let domains = Arc::new(vec!["localhost".to_string()]);
        let router_ctx = Context::<Router>::new();
        let limits = ImLimits {
            max_roster_items: 1000,
            max_offline_messages: 100,
        };
        let shard = RosterActor::new(router_ctx.address(), stores, limits, domains.clone()).start();
        let shards = RosterShards::new(vec![shard.clone()]);
        shard.do_send(nodes::im::AttachShards(shards.clone()));
        let router = router_ctx.run(Router::new(
            domains,
            accounts,
            ResourceConflict::Replace,
            shards.clone(),
        ));
        let mut contacts = Vec::new();
        for i in 0..CONTACTS {
            let jid = Jid::parse(&format!("contact{i}@localhost/r")).expect("jid");
            let peer = session(&router, &jid, 100 + i as u64, &ext, &shards).await;
            peer.addr.do_send(FromClient(
                Element::parse("<presence xmlns='jabber:client'/>").expect("presence"),
            ));
            // Their own presence comes back to them: the session is available.
            wait_for(&peer, b"<presence").await;
            contacts.push(peer);
        }
        let alice_session = session(&router, &alice, 1, &ext, &shards).await;
        (shard, alice_session, contacts)
    });

    let roster_get = Element::parse(
        "<iq xmlns='jabber:client' type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
    )
    .expect("iq");
    let mut group = c.benchmark_group("im");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(ROSTER_ITEMS as u64));
    group.bench_function("roster_get_500_items", |b| {
        b.iter(|| {
            system.block_on(async {
                let replies = shard
                    .send(AccountIq {
                        from: alice.clone(),
                        to: alice.to_bare(),
                        iq: roster_get.clone(),
                    })
                    .await
                    .expect("shard alive");
                assert_eq!(
                    replies[0].children().next().map(|q| q.children().count()),
                    Some(ROSTER_ITEMS)
                );
            })
        })
    });

    group.throughput(Throughput::Elements(CONTACTS as u64));
    let mut n = 0u64;
    group.bench_function("presence_broadcast_to_100_contacts", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    n += 1;
                    let marker = format!("<status>{n}</status>");
                    alice_session.addr.do_send(FromClient(
                        Element::parse(&format!(
                            "<presence xmlns='jabber:client'>{marker}</presence>"
                        ))
                        .expect("presence"),
                    ));
                    for peer in &contacts {
                        wait_for(peer, marker.as_bytes()).await;
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, im);
criterion_main!(benches);
