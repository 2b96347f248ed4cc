//! XEP-0202: Entity Time of the server. The node keeps its clock in UTC, so `tzo` is
//! `+00:00` and `utc` is the same instant (XEP-0082 DateTime).

use std::time::{SystemTime, UNIX_EPOCH};

use super::{IqOutcome, IqRequest, Module, Registry, Support};
use proto::element::Element;
use proto::error::StanzaErrorCondition;
use proto::ns;

pub fn module() -> Box<dyn Module> {
    Box::new(EntityTime)
}

struct EntityTime;

impl Module for EntityTime {
    fn name(&self) -> &'static str {
        "time"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0202",
            title: "Entity Time",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::TIME]
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::TIME]
    }
    fn iq(&self, req: &IqRequest<'_>, _: &Registry) -> IqOutcome {
        // §4: only get; the payload is an empty <time/>.
        if req.is_set {
            return IqOutcome::Error(StanzaErrorCondition::NotAllowed);
        }
        if req.payload.name != "time" {
            return IqOutcome::Error(StanzaErrorCondition::BadRequest);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        IqOutcome::Result(Some(
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(
                    Element::new("utc", ns::TIME).with_text(proto::datetime::utc_stamp(now)),
                ),
        ))
    }
}
