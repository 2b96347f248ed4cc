//! The Router as an executor, driven through its mailbox with a stand-in component (no
//! sockets, no sessions): what `route::decide` decided reaches the right recipient.

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;

use super::messages::{RegisterComponent, RouteStanza, ToComponent};
use super::{OfflineBatch, Router};
use crate::config::ResourceConflict;
use crate::im::AccountShards;

/// Records what reaches it.
struct Recorder<M: Send> {
    got: Arc<Mutex<Vec<M>>>,
}

impl<M: Send + Unpin + 'static> Actor for Recorder<M> {
    type Context = Context<Self>;
}

impl Handler<ToComponent> for Recorder<ToComponent> {
    type Result = ();
    fn handle(&mut self, msg: ToComponent, _: &mut Context<Self>) {
        self.got.lock().expect("not poisoned").push(msg);
    }
}

fn jid(s: &str) -> Jid {
    Jid::parse(s).expect("valid jid")
}

fn stanza(xml: &str) -> Element {
    Element::parse(xml).expect("valid xml")
}

/// A router for `localhost` with no accounts stored and no shards: enough for what never
/// reaches an account (components).
fn router(dir: &std::path::Path) -> Addr<Router> {
    let store = storage::Store::open(dir).expect("store");
    Router::new(
        Arc::new(vec!["localhost".to_string()]),
        store.accounts().expect("accounts tree"),
        ResourceConflict::Replace,
        AccountShards::new(Vec::new(), None),
        None,
        OfflineBatch::for_send_queue(1 << 20),
    )
    .start()
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("sb-router-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Dir(dir)
}

#[test]
fn a_registered_component_gets_every_stanza_to_its_domain() {
    let dir = temp_dir("component");
    actix_rt::System::new().block_on(async {
        let router = router(&dir.0);
        let got = Arc::new(Mutex::new(Vec::new()));
        let component = Recorder::<ToComponent> { got: got.clone() }.start();
        router
            .send(RegisterComponent {
                domain: "conference.localhost".into(),
                handle: component.clone().recipient(),
            })
            .await
            .expect("router alive");
        for to in [
            "conference.localhost",
            "room@conference.localhost",
            "room@conference.localhost/nick",
        ] {
            router.do_send(RouteStanza {
                from: jid("alice@localhost/a"),
                to: jid(to),
                stanza: stanza(&format!(
                    "<presence xmlns='jabber:client' from='alice@localhost/a' to='{to}'/>"
                )),
            });
        }
        // A stanza to another domain is not the component's.
        router.do_send(RouteStanza {
            from: jid("alice@localhost/a"),
            to: jid("room@upload.localhost"),
            stanza: stanza("<message xmlns='jabber:client' type='error'/>"),
        });
        // Round trips through both mailboxes: every delivery has been handled.
        router
            .send(super::messages::ListSessions)
            .await
            .expect("router alive");
        component.send(Ping).await.expect("component alive");
        let got = got.lock().expect("not poisoned");
        let to: Vec<String> = got.iter().map(|m| m.to.to_string()).collect();
        assert_eq!(
            to,
            [
                "conference.localhost",
                "room@conference.localhost",
                "room@conference.localhost/nick"
            ]
        );
        assert!(got.iter().all(|m| m.from == jid("alice@localhost/a")));
    });
}

#[derive(Message)]
#[rtype(result = "()")]
struct Ping;

impl<M: Send + Unpin + 'static> Handler<Ping> for Recorder<M> {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

/// What the group chat sweep (`node::muc_sweep`) reads: which full JIDs are bound nowhere,
/// from the Router's copy of the routing table, and a number that moves when a member's
/// state changes (its routes may have gone without a word).
#[test]
fn absent_sessions_and_the_loss_epoch_follow_the_table() {
    use super::messages::{AbsentSessions, ClusterUpdate, SessionLossEpoch};
    use crate::cluster::routing_table::Member;
    use crate::cluster::{MemberState, Route, RouteEvent, TableUpdate};
    let dir = temp_dir("absent");
    actix_rt::System::new().block_on(async {
        let router = router(&dir.0);
        let epoch = router.send(SessionLossEpoch).await.expect("router alive");
        assert_eq!(epoch, 1, "a start counts as a loss");
        let route = Route {
            node: 2,
            session: 7,
            priority: Some(0),
        };
        let applied = |events| ClusterUpdate(TableUpdate::Applied(events));
        router.do_send(applied(vec![RouteEvent::Set {
            jid: "bob@localhost/b".into(),
            route,
        }]));
        let asked = vec![jid("bob@localhost/b"), jid("carol@localhost/c")];
        let absent = router
            .send(AbsentSessions(asked.clone()))
            .await
            .expect("router alive");
        assert_eq!(absent, [jid("carol@localhost/c")]);
        assert_eq!(router.send(SessionLossEpoch).await.expect("alive"), epoch);
        // Node 2 is marked down and its routes purged, in one entry.
        router.do_send(applied(vec![
            RouteEvent::Member {
                node: 2,
                member: Member {
                    state: MemberState::Down,
                    incarnation: 1,
                },
            },
            RouteEvent::Removed {
                jid: "bob@localhost/b".into(),
                route,
                replaced: false,
            },
        ]));
        let absent = router
            .send(AbsentSessions(asked))
            .await
            .expect("router alive");
        assert_eq!(absent, [jid("bob@localhost/b"), jid("carol@localhost/c")]);
        assert!(router.send(SessionLossEpoch).await.expect("alive") > epoch);
    });
}
