//! Local routing: a chat message from one in-process session to another through the
//! SessionActor → Router → SessionActor path, including serialisation for the receiver.

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nodes::c2s::messages::FromClient;
use nodes::c2s::session::QueueWork;
use proto::element::Element;
use proto::jid::Jid;
use proto::sasl::StoredCredentials;
use support::Node;

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
        let node = Node::start(&store);
        let alice = node.session(&jid("alice@localhost/a"), 1).await;
        let bob = node.session(&jid("bob@localhost/b"), 2).await;
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

fn jid(s: &str) -> Jid {
    Jid::parse(s).expect("valid jid")
}

criterion_group!(benches, local_routing);
criterion_main!(benches);
