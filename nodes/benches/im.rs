//! IM costs on one node: loading a 500-item roster (AccountShard, sled), and one presence
//! change broadcast to 100 subscribed, online contacts (SessionActor → Router → AccountShard →
//! Router → 100 SessionActors, serialised into their send queues).

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nodes::c2s::messages::FromClient;
use nodes::im::messages::AccountIq;
use proto::element::Element;
use proto::jid::Jid;
use proto::sasl::StoredCredentials;
use storage::RosterItem;
use support::Node;

const ROSTER_ITEMS: usize = 500;
const CONTACTS: usize = 100;

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
    let rosters = store.rosters().expect("roster tree");
    let alice = Jid::parse("alice@localhost/bench").expect("jid");
    let alice_bare = alice.to_bare().to_string();
    accounts.create(&alice_bare, &creds).expect("create");
    for i in 0..ROSTER_ITEMS {
        // The first CONTACTS items are online subscribers; the rest only fill the roster.
        let sub = if i < CONTACTS { "from" } else { "both" };
        let contact = format!("contact{i}@localhost");
        accounts.create(&contact, &creds).expect("create");
        rosters.put(&alice_bare, &item(&contact, sub)).expect("put");
    }

    let system = actix_rt::System::new();
    let (shard, alice_session, contacts) = system.block_on(async {
        let node = Node::start(&store);
        let mut contacts = Vec::new();
        for i in 0..CONTACTS {
            let jid = Jid::parse(&format!("contact{i}@localhost/r")).expect("jid");
            let peer = node.session(&jid, 100 + i as u64).await;
            peer.addr.do_send(FromClient(
                Element::parse("<presence xmlns='jabber:client'/>").expect("presence"),
            ));
            // Their own presence comes back to them: the session is available.
            peer.wait_for(b"<presence").await;
            contacts.push(peer);
        }
        let alice_session = node.session(&alice, 1).await;
        (node.shard.clone(), alice_session, contacts)
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
                        exists: true,
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
                        peer.wait_for(marker.as_bytes()).await;
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
