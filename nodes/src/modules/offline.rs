//! XEP-0160 offline messages, stamped with XEP-0203 delays. Storage and delivery live in the
//! account shards (`im::offline`) and the Router (`Router::offline_batch`); this module
//! declares them: the `msgoffline` feature (XEP-0160 §3) and the support table entries.

use super::{Module, Support};

pub fn module() -> Box<dyn Module> {
    Box::new(Offline)
}

struct Offline;

impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }
    fn specs(&self) -> &'static [Support] {
        &[
            Support {
                spec: "XEP-0160",
                title: "Best Practices for Handling Offline Messages",
            },
            Support {
                spec: "XEP-0203",
                title: "Delayed Delivery (offline messages)",
            },
        ]
    }
    fn features(&self) -> &'static [&'static str] {
        &["msgoffline"]
    }
    fn can_disable(&self) -> bool {
        false
    }
}
