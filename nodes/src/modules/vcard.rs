//! vcard-temp (XEP-0054): an account's vCard, set by the account, read by anyone. One
//! entry per account in the module's store (the `<vCard/>` element as XML).

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;

use super::account::{AccountCtx, AccountIq, AccountState};
use super::{IqOutcome, Module, Support};

pub const NS_VCARD: &str = "vcard-temp";

pub fn module() -> Box<dyn Module> {
    Box::new(VCard)
}

struct VCard;

impl Module for VCard {
    fn name(&self) -> &'static str {
        "vcard"
    }
    fn specs(&self) -> &'static [Support] {
        &[Support {
            spec: "XEP-0054",
            title: "vcard-temp",
        }]
    }
    fn features(&self) -> &'static [&'static str] {
        &[NS_VCARD]
    }
    fn account(&self) -> Option<&dyn AccountState> {
        Some(self)
    }
}

impl AccountState for VCard {
    fn namespaces(&self) -> &'static [&'static str] {
        &[NS_VCARD]
    }

    fn iq(&self, ctx: &mut AccountCtx<'_>, req: &AccountIq<'_>) -> IqOutcome {
        let Some(vcard) = req.iq.get_child("vCard", NS_VCARD) else {
            return IqOutcome::Error(Cond::BadRequest);
        };
        let outcome = match req.iq.attr("type") {
            Some("get") => get(ctx, req.own),
            // §3.2: only the account changes its vCard.
            Some("set") if !req.own => Err(Cond::Forbidden),
            Some("set") => set(ctx, vcard).map(|()| None),
            _ => Err(Cond::BadRequest),
        };
        match outcome {
            Ok(payload) => IqOutcome::Result(payload),
            Err(cond) => IqOutcome::Error(cond),
        }
    }
}

fn get(ctx: &AccountCtx<'_>, own: bool) -> Result<Option<Element>, Cond> {
    match ctx.get("")? {
        Some(xml) => Element::parse(&xml)
            .map(Some)
            .map_err(|_| Cond::InternalServerError),
        // §3.1: the account itself may get an empty vCard (or an error); §3.3: anyone else
        // gets an error, "the same error condition" as for a user that does not exist
        // (against directory harvesting): service-unavailable, which RFC 6121 §8.5.1
        // requires for the latter.
        None if own => Ok(Some(Element::new("vCard", NS_VCARD))),
        None => Err(Cond::ServiceUnavailable),
    }
}

/// §3.2: the whole vCard is replaced. Its size is capped by `im.max_vcard_bytes` (the
/// default, 64 KiB, leaves room for a small avatar; XEP-0153 asks for small ones); a larger
/// one is `not-acceptable` (the request does not meet the server's criteria, RFC 6120
/// §8.3.3.11) and the stored vCard is kept.
fn set(ctx: &mut AccountCtx<'_>, vcard: &Element) -> Result<(), Cond> {
    let xml = vcard.to_xml_string();
    let limit = ctx.limits().max_vcard_bytes;
    if xml.len() > limit {
        ctx.over_cap("max_vcard_bytes", limit);
        return Err(Cond::NotAcceptable);
    }
    ctx.put("", Some(xml));
    Ok(())
}
