//! Answering an archive query (XEP-0313 §4) and the metadata request (§5, extended) from the
//! account's shard: the query's filters and RSM paging become one [`ArchiveQuery`], the page
//! becomes `<result/>` messages followed by the IQ result with `<fin/>`.

use std::time::Instant;

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::mam::{self, MamQuery};
use proto::rsm::{RsmBefore, RsmResponse};
use proto::stanza_id::ArchiveId;
use storage::archive::{ArchiveError, ArchiveQuery};

use super::backend::parse_id;
use super::{Mam, MAX_PAGE_CAP};

/// Most bytes of archived XML in one page (a stanza may be 256 KiB; 250 of them would not
/// fit a NodeLink frame).
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
use crate::metrics::METRICS;
use crate::modules::account::{AccountCtx, AccountIq};
use crate::modules::IqOutcome;

fn failed(e: ArchiveError) -> Cond {
    tracing::warn!(error = %e, "mam: archive read failed");
    Cond::InternalServerError
}

/// How long after its id was assigned a message may still be on its way to the archive.
const IN_FLIGHT_MS: u64 = 60_000;

/// An id the client names as a page boundary must be one of the archive's (§4.1.3 for
/// `after-id`/`before-id`, XEP-0059 §2.5 for RSM): `item-not-found` otherwise. Except a
/// well-formed id assigned within the last [`IN_FLIGHT_MS`]: the archive is written after
/// delivery (group-committed, milliseconds later), so a client paging on from the stanza-id
/// of the message it just received would otherwise be refused; such an id is a position.
fn known_id(mam: &Mam, ctx: &AccountCtx<'_>, text: &str) -> Result<u64, Cond> {
    let id = parse_id(text).ok_or(Cond::ItemNotFound)?;
    let user = ctx.account().to_string();
    match mam.backend().exists(ctx.module_store(), &user, id) {
        Ok(true) => Ok(id),
        Ok(false) if ArchiveId(id).millis() + IN_FLIGHT_MS >= now_ms() => Ok(id),
        Ok(false) => Err(Cond::ItemNotFound),
        Err(e) => Err(failed(e)),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The archive query a parsed XEP-0313 query asks for.
fn archive_query(mam: &Mam, ctx: &AccountCtx<'_>, q: &MamQuery) -> Result<ArchiveQuery, Cond> {
    let mut after = None;
    for text in [&q.after_id, &q.rsm.after].into_iter().flatten() {
        let id = known_id(mam, ctx, text)?;
        after = Some(after.map_or(id, |a: u64| a.max(id)));
    }
    let mut before = None;
    let rsm_before = match &q.rsm.before {
        Some(RsmBefore::Id(id)) => Some(id),
        _ => None,
    };
    for text in [&q.before_id, &rsm_before.cloned()].into_iter().flatten() {
        let id = known_id(mam, ctx, text)?;
        before = Some(before.map_or(id, |b: u64| b.min(id)));
    }
    // Ids this server never assigned match nothing (§4.1.4 returns what exists).
    let ids: Vec<u64> = q.ids.iter().filter_map(|t| parse_id(t)).collect();
    if !q.ids.is_empty() && ids.is_empty() {
        return Err(Cond::ItemNotFound);
    }
    let max = q.rsm.max.unwrap_or(mam.settings.max_page).min(MAX_PAGE_CAP);
    // Counting walks the result set (up to storage's COUNT_SCAN_LIMIT): done for a first page
    // and for a count-only request (`max` 0), not again for every later page.
    let count = max == 0 || (after.is_none() && before.is_none());
    Ok(ArchiveQuery {
        with: q.with.as_ref().map(|j| j.to_bare().to_string()),
        with_resource: q
            .with
            .as_ref()
            .and_then(|j| j.resource())
            .map(str::to_string),
        start_ms: q.start_ms,
        end_ms: q.end_ms,
        after_id: after,
        before_id: before,
        ids,
        max,
        // RSM <before/> (empty or with an id) pages backwards (XEP-0059 §2.5).
        from_end: q.rsm.before.is_some(),
        count,
    })
}

/// §4: the page as `<result/>` messages, then the IQ result with `<fin/>`.
pub(super) fn run(
    mam: &Mam,
    ctx: &mut AccountCtx<'_>,
    req: &AccountIq<'_>,
    query: &Element,
) -> IqOutcome {
    let q = match MamQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return IqOutcome::Error(e.condition()),
    };
    // §6.1.3: `node` addresses a pubsub node's archive; an account's archive has none.
    if q.node.is_some() {
        return IqOutcome::Error(Cond::ItemNotFound);
    }
    let aq = match archive_query(mam, ctx, &q) {
        Ok(aq) => aq,
        Err(c) => return IqOutcome::Error(c),
    };
    let user = ctx.account().to_string();
    let started = Instant::now();
    let page = match mam.backend().query(ctx.module_store(), &user, &aq) {
        Ok(p) => p,
        Err(e) => return IqOutcome::Error(failed(e)),
    };
    METRICS
        .mam_query_duration
        .with_label_values(&[mam.backend().name()])
        .observe(started.elapsed().as_secs_f64());
    let mut page = page;
    // A page crosses a NodeLink when the shard's leader is another node: its bytes are
    // bounded too (by the messages nearest to where the page starts), and a page cut short is
    // not complete.
    let mut bytes = 0;
    let fits = |m: &storage::archive::ArchivedMessage, bytes: &mut usize| {
        *bytes += m.xml.len();
        *bytes <= MAX_PAGE_BYTES
    };
    let keep = if aq.from_end {
        page.messages
            .iter()
            .rev()
            .take_while(|m| fits(m, &mut bytes))
            .count()
    } else {
        page.messages
            .iter()
            .take_while(|m| fits(m, &mut bytes))
            .count()
    }
    .max(1)
    .min(page.messages.len());
    if keep < page.messages.len() {
        if aq.from_end {
            page.messages.drain(..page.messages.len() - keep);
        } else {
            page.messages.truncate(keep);
        }
        page.complete = false;
    }
    let to = req.from.to_string();
    let mut results = Vec::with_capacity(page.messages.len());
    for m in &page.messages {
        let original = match Element::parse(&m.xml) {
            Ok(el) => el,
            Err(e) => {
                tracing::error!(%user, id = %ArchiveId(m.id), error = %e, "mam: unreadable archived message skipped");
                continue;
            }
        };
        let id = ArchiveId(m.id).to_string();
        let mut msg = mam::result_message(&to, q.query_id.as_deref(), &id, m.millis(), &original);
        msg.set_attr("from", user.as_str());
        results.push(msg);
    }
    let rsm = RsmResponse {
        first: page
            .messages
            .first()
            .map(|m| (ArchiveId(m.id).to_string(), None)),
        last: page.messages.last().map(|m| ArchiveId(m.id).to_string()),
        count: page.count,
    };
    // §4.3.4 (extended): flip-page changes the order of sending only.
    if q.flip_page {
        results.reverse();
    }
    IqOutcome::ResultAfter {
        stanzas: results,
        payload: Some(mam::fin(&rsm, page.complete)),
    }
}

/// §5 (extended): the first and last message of the archive.
pub(super) fn metadata(mam: &Mam, ctx: &AccountCtx<'_>) -> IqOutcome {
    let user = ctx.account().to_string();
    match mam.backend().bounds(ctx.module_store(), &user) {
        Ok(bounds) => {
            let ids = bounds.map(|(a, b)| (ArchiveId(a), ArchiveId(b)));
            let (first, last) = match &ids {
                Some((a, b)) => (
                    Some((a.to_string(), a.millis())),
                    Some((b.to_string(), b.millis())),
                ),
                None => (None, None),
            };
            IqOutcome::Result(Some(mam::metadata(
                first.as_ref().map(|(s, ms)| (s.as_str(), *ms)),
                last.as_ref().map(|(s, ms)| (s.as_str(), *ms)),
            )))
        }
        Err(e) => IqOutcome::Error(failed(e)),
    }
}
