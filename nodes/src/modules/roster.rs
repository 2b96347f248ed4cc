//! RFC 6121 instant messaging: rosters (with versioning), presence subscriptions (with
//! pre-approval) and presence. The state and its rules live in the account shards (`im`:
//! roster IQs, the subscription machine of `proto::im`, presence broadcast); this module
//! declares them to the registry, so the support table names them.

use super::{Module, Support};

pub fn module() -> Box<dyn Module> {
    Box::new(Roster)
}

struct Roster;

impl Module for Roster {
    fn name(&self) -> &'static str {
        "roster"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "RFC 6121",
            title: "XMPP IM: rosters with versioning, subscriptions with pre-approval, presence",
        }]
    }
    fn can_disable(&self) -> bool {
        false
    }
}
