//! Local routing: a chat message from one in-process session to another through the
//! SessionActor → Router → SessionActor path, including serialisation for the receiver.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nodes::c2s::messages::FromClient;
use nodes::c2s::session::{QueueWork, SendQueue, SessionActor};
use nodes::config::ResourceConflict;
use nodes::ext::Extensions;
use nodes::im::messages::Filters;
use nodes::im::{ImLimits, ImStores, RosterActor, RosterShards};
use nodes::router::messages::RegisterSession;
use nodes::router::Router;
use proto::element::Element;
use proto::jid::Jid;
use proto::sasl::StoredCredentials;

struct Peer {
    addr: Addr<SessionActor>,
    queue: Rc<SendQueue>,
}

async fn session(
    router: &Addr<Router>,
    jid: &str,
    id: u64,
    ext: &Arc<Extensions>,
    im: &RosterShards,
) -> Peer {
    let queue = SendQueue::new(usize::MAX / 2);
    let jid = Jid::parse(jid).expect("valid jid");
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
            jid,
            session_id: id,
            session: addr.clone(),
        })
        .await
        .expect("router alive")
        .expect("no conflict");
    Peer { addr, queue }
}

fn local_routing(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sb-bench-routing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = storage::Store::open(&dir).expect("open store");
    let accounts = store.accounts().expect("accounts tree");
    let creds = StoredCredentials::derive("pw", 4096).expect("derive");
    for u in ["alice@localhost", "bob@localhost"] {
        accounts.create(u, &creds).expect("create");
    }
    let system = actix_rt::System::new();
    let (alice, bob) = system.block_on(async {
        let ext = Arc::new(Extensions::default());
        let domains = Arc::new(vec!["localhost".to_string()]);
        let router_ctx = Context::<Router>::new();
        let limits = ImLimits {
            max_roster_items: 1000,
            max_offline_messages: 100,
        };
        let shard = RosterActor::new(
            router_ctx.address(),
            ImStores::open(&store).expect("IM trees"),
            limits,
            domains.clone(),
        )
        .start();
        let im = RosterShards::new(vec![shard]);
        let router = router_ctx.run(Router::new(
            domains,
            accounts,
            ResourceConflict::Replace,
            im.clone(),
        ));
        let alice = session(&router, "alice@localhost/a", 1, &ext, &im).await;
        let bob = session(&router, "bob@localhost/b", 2, &ext, &im).await;
        (alice, bob)
    });
    let message = Element::parse(
        "<message xmlns='jabber:client' to='bob@localhost/b' type='chat' id='m1'>\
         <body>Hello Bob, this is a hundred-byte chat message body used for the benchmark.</body></message>",
    )
    .expect("valid message");

    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("chat_message_between_local_sessions", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    alice.addr.do_send(FromClient(message.clone()));
                }
                // Each message ends with `</message>`: count them as the I/O task would
                // find them in the queue.
                let mut received = 0;
                while received < iters {
                    bob.queue.wake.notified().await;
                    match bob.queue.take() {
                        QueueWork::Write(b) => {
                            received += b.windows(10).filter(|w| w == b"</message>").count() as u64;
                        }
                        QueueWork::Nothing => {}
                        _ => panic!("bob's session ended"),
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    drop(alice.queue);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, local_routing);
criterion_main!(benches);
