//! An in-process node for benchmarks: a Router, one AccountShard shard and sessions whose
//! send queues the benchmark reads instead of a socket.
// Each benchmark binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use nodes::c2s::session::{QueueWork, SendQueue, SessionActor, SessionParts};
use nodes::config::{ImLimits, ResourceConflict};
use nodes::im::messages::Filters;
use nodes::im::{AccountShard, AccountShards, AttachShards, DataWriter};
use nodes::modules::Registry;
use nodes::route::to_router::RouterHandle;
use nodes::router::messages::RegisterSession;
use nodes::router::Router;
use proto::jid::Jid;

pub struct Peer {
    pub addr: Addr<SessionActor>,
    pub queue: Rc<SendQueue>,
}

impl Peer {
    /// Wait until the session has been handed a stanza containing `needle`.
    pub async fn wait_for(&self, needle: &[u8]) {
        loop {
            self.queue.wake.notified().await;
            if let QueueWork::Write(b) = self.queue.take() {
                if b.windows(needle.len()).any(|w| w == needle) {
                    return;
                }
            }
        }
    }
}

pub struct Node {
    pub router: Addr<Router>,
    pub shard: Addr<AccountShard>,
    shards: AccountShards,
    modules: Arc<Registry>,
    domains: Arc<Vec<String>>,
}

impl Node {
    /// Start the actors on the current actix system (call inside `System::block_on`).
    pub fn start(store: &storage::Store) -> Node {
        let domains = Arc::new(vec!["localhost".to_string()]);
        let router_ctx = Context::<Router>::new();
        let limits = ImLimits {
            max_roster_items: 1000,
            max_offline_messages: 100,
            max_offline_bytes: 10 << 20,
            ..ImLimits::default()
        };
        let data = store.user_data().expect("IM trees");
        let (router, shard_domains) = (RouterHandle::new(&router_ctx.address()), domains.clone());
        let shard = SyncArbiter::start(1, move || {
            AccountShard::new(
                router.clone(),
                data.clone(),
                DataWriter::Local(data.clone()),
                limits,
                shard_domains.clone(),
                Arc::new(Registry::with_defaults()),
            )
        });
        let shards = AccountShards::new(vec![shard.clone()], None);
        shard.do_send(AttachShards(shards.clone()));
        let accounts = store.accounts().expect("accounts tree");
        let router = router_ctx.run(Router::new(
            domains.clone(),
            accounts,
            ResourceConflict::Replace,
            shards.clone(),
            None,
            nodes::router::OfflineBatch::for_send_queue(1 << 20),
        ));
        Node {
            router,
            shard,
            shards,
            modules: Arc::new(Registry::with_defaults()),
            domains,
        }
    }

    /// Bind a session for `jid` (its send queue never overflows).
    pub async fn session(&self, jid: &Jid, id: u64) -> Peer {
        let queue = SendQueue::new(usize::MAX / 2);
        let parts = SessionParts {
            queue: queue.clone(),
            router: self.router.clone(),
            modules: self.modules.clone(),
            domains: self.domains.clone(),
            im: self.shards.clone(),
        };
        let addr = SessionActor::new(jid.clone(), id, parts, Filters::default()).start();
        self.router
            .send(RegisterSession {
                jid: jid.clone(),
                session_id: id,
                session: SessionActor::handle(&addr),
            })
            .await
            .expect("router alive")
            .expect("no conflict");
        Peer { addr, queue }
    }
}
