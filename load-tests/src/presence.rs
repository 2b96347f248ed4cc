//! Scenario `presence`: users in groups of K mutual contacts change their presence; measure
//! the fan-out to the contacts.
//!
//! With `--rosters protocol` (the default) setup goes through the protocol: every user sends
//! `subscribe` to each other member of its group and answers each `subscribe` it receives with
//! `subscribed` (the server adds the roster items), then polls its roster until every contact
//! shows `subscription='both'`. With `--rosters provisioned` the rosters were imported before
//! the run (`switchboard roster import`): no subscription is sent, the users only poll.
//! Once all users are ready (or `--setup-secs` ran out), each one sends `--changes` presence
//! updates whose `<status>` is `lg FROM SEQ SENT_MICROS`; contacts measure the latency.
//!
//! With `--csi-inactive-percent P`, P % of the sessions (spread evenly) send XEP-0352's
//! `<inactive/>` when the changes start: the server holds and coalesces the presence it
//! would send them. Their deliveries are counted apart from the expected ones, and the
//! bytes received by inactive and active sessions are reported.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn::Failure;
use crate::login::Target;
use crate::probe;
use crate::ramp::{login_all, stopped, tally, End, Plan, Session};
use crate::report::{CsiSummary, Distribution, Outcome, PresenceSummary};
use crate::timeline::{rate, Progress, Recorder};
use crate::xml;

/// Where the groups' rosters come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rosters {
    /// The run subscribes the members of each group to each other.
    Protocol,
    /// Imported beforehand (`ROSTER_GROUP=K load-tests/provision.sh`): only checked.
    Provisioned,
}

impl Rosters {
    pub fn name(self) -> &'static str {
        match self {
            Rosters::Protocol => "protocol",
            Rosters::Provisioned => "provisioned",
        }
    }
}

pub struct PresencePlan {
    /// Users per group of mutual contacts.
    pub group: u32,
    pub rosters: Rosters,
    pub changes: u32,
    pub interval: Duration,
    /// Upper bound on setting up the subscriptions.
    pub setup: Duration,
    /// Upper bound on the presence changes and their deliveries.
    pub duration: Duration,
    /// Share of the sessions (0-100) that send `<inactive/>` (XEP-0352).
    pub csi_inactive_percent: u32,
}

/// Whether the session at `pos` is one of the `percent` % inactive ones: exactly
/// ⌊n·percent/100⌋ of the first n positions are, spread evenly.
fn is_inactive(pos: usize, percent: u32) -> bool {
    let p = u64::from(percent);
    let pos = pos as u64;
    (pos + 1) * p / 100 > pos * p / 100
}

/// How often the coordinator checks progress, and at most how often a user polls its roster
/// during setup (one poll in flight at a time: with thousands of users, polls that do not
/// wait for their answer swamp the server with roster requests it then refuses).
const POLL: Duration = Duration::from_millis(20);
const ROSTER_POLL: Duration = Duration::from_millis(500);

struct Shared {
    target: Arc<Target>,
    groups: Groups,
    plan: PresencePlan,
    epoch: Instant,
    ready: AtomicU64,
    sent: AtomicU64,
    senders_done: AtomicU64,
}

impl Shared {
    fn group_of(&self, index: u32) -> u32 {
        self.groups.group_of(index)
    }
}

/// Users in groups of `size` mutual contacts from user `first` on: `user<first>..`,
/// `user<first+size>..`. Shared with `pep`.
#[derive(Debug, Clone, Copy)]
pub struct Groups {
    pub first: u32,
    pub size: u32,
}

impl Groups {
    pub fn group_of(&self, index: u32) -> u32 {
        index.saturating_sub(self.first) / self.size.max(1)
    }

    /// The logged-in members of `index`'s group but itself.
    pub fn contacts_of(&self, online: &[u32], index: u32) -> Vec<u32> {
        let group = self.group_of(index);
        online
            .iter()
            .copied()
            .filter(|&o| o != index && self.group_of(o) == group)
            .collect()
    }
}

/// Wait until `ready` users of `users` are set up, at most `limit`; the count then and the
/// seconds waited.
pub async fn wait_ready(ready: &AtomicU64, users: u64, limit: Duration) -> (u64, f64) {
    let start = Instant::now();
    while start.elapsed() < limit && ready.load(Ordering::Relaxed) < users {
        tokio::time::sleep(POLL).await;
    }
    (ready.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Received {
    delivered: u64,
    duplicates: u64,
    latencies_us: Vec<u64>,
    /// The session sent `<inactive/>`; its deliveries are counted in `delivered_inactive`.
    inactive: bool,
    delivered_inactive: u64,
    /// Bytes received during the exchange.
    bytes: u64,
}

pub async fn run(plan: &Plan, presence: PresencePlan) -> anyhow::Result<Outcome> {
    let ramp = login_all(plan).await;
    let shared = Arc::new(Shared {
        target: plan.target.clone(),
        groups: Groups {
            first: plan.first,
            size: presence.group,
        },
        plan: presence,
        epoch: Instant::now(),
        ready: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
    });
    let online: Vec<u32> = ramp.sessions.iter().map(|s| s.index).collect();
    let percent = shared.plan.csi_inactive_percent;
    let contacts_of = |index: u32| shared.groups.contacts_of(&online, index);
    // Every change reaches each active contact; inactive ones get what the server flushes.
    let expected: u64 = online
        .iter()
        .enumerate()
        .filter(|&(pos, _)| !is_inactive(pos, percent))
        .map(|(_, &i)| contacts_of(i).len() as u64 * u64::from(shared.plan.changes))
        .sum();
    let users = online.len() as u64;
    let (go, go_rx) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (pos, session) in ramp.sessions.into_iter().enumerate() {
        let contacts = contacts_of(session.index);
        tasks.spawn(user(
            session,
            is_inactive(pos, percent),
            contacts,
            shared.clone(),
            go_rx.clone(),
            stop_rx.clone(),
            plan.close_grace,
        ));
    }
    eprintln!(
        "  {} in groups of {} ({users} users)",
        match shared.plan.rosters {
            Rosters::Protocol => "setting up subscriptions",
            Rosters::Provisioned => "checking the provisioned rosters",
        },
        shared.plan.group
    );
    let (ready, setup_secs) = wait_ready(&shared.ready, users, shared.plan.setup).await;
    eprintln!(
        "  {ready}/{users} users ready after {setup_secs:.2} s; {} presence changes each",
        shared.plan.changes
    );

    let recorder = Recorder::new();
    let progress = Progress::start("deliveries", recorder.clone());
    let _ = go.send(Some(recorder.clone()));
    let start = Instant::now();
    while start.elapsed() < shared.plan.duration {
        tokio::time::sleep(POLL).await;
        if shared.senders_done.load(Ordering::Relaxed) == users && recorder.ok_count() >= expected {
            break;
        }
    }
    let elapsed = start.elapsed();
    let _ = stop.send(true);
    let mut total = Received::default();
    let mut ends = Vec::new();
    let (mut inactive_sessions, mut bytes_inactive, mut bytes_active) = (0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((end, received)) => {
                ends.push(end);
                total.delivered += received.delivered;
                total.duplicates += received.duplicates;
                total.latencies_us.extend(received.latencies_us);
                total.delivered_inactive += received.delivered_inactive;
                total.bytes += received.bytes;
                if received.inactive {
                    inactive_sessions += 1;
                    bytes_inactive += received.bytes;
                } else {
                    bytes_active += received.bytes;
                }
            }
            Err(e) => ends.push(End::Dropped(Failure::Protocol(format!("internal: {e}")))),
        }
    }
    progress.finish().await;
    let (dropped, close) = tally(ends);
    let p = &shared.plan;
    Ok(Outcome {
        login: ramp.summary,
        presence: Some(PresenceSummary {
            group_size: p.group,
            rosters: p.rosters.name(),
            changes: p.changes,
            interval_ms: p.interval.as_millis() as u64,
            ready,
            not_ready: users - ready,
            setup_secs,
            sent: shared.sent.load(Ordering::Relaxed),
            expected,
            delivered: total.delivered,
            lost: expected.saturating_sub(total.delivered),
            duplicates: total.duplicates,
            elapsed_secs: elapsed.as_secs_f64(),
            deliveries_per_sec: rate(total.delivered, elapsed),
            latency_ms: Distribution::from_micros(total.latencies_us),
            bytes_received: total.bytes,
            csi: (p.csi_inactive_percent > 0).then(|| {
                let active_sessions = users.saturating_sub(inactive_sessions);
                let mean = |bytes: u64, n: u64| if n == 0 { 0.0 } else { bytes as f64 / n as f64 };
                CsiSummary {
                    inactive_percent: p.csi_inactive_percent,
                    inactive_sessions,
                    active_sessions,
                    bytes_received_active: bytes_active,
                    bytes_received_inactive: bytes_inactive,
                    bytes_per_active_session: mean(bytes_active, active_sessions),
                    bytes_per_inactive_session: mean(bytes_inactive, inactive_sessions),
                    delivered_to_inactive: total.delivered_inactive,
                }
            }),
        }),
        timeline: recorder.series(),
        dropped,
        close,
        ..Outcome::default()
    })
}

type Go = watch::Receiver<Option<Arc<Recorder>>>;

/// One user: set up its subscriptions, then change presence and receive its contacts'.
async fn user(
    mut session: Session,
    inactive: bool,
    contacts: Vec<u32>,
    shared: Arc<Shared>,
    mut go: Go,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (End, Received) {
    let mut received = Received {
        inactive,
        ..Received::default()
    };
    let how = Setup {
        target: &shared.target,
        rosters: shared.plan.rosters,
        ready: &shared.ready,
    };
    let failure = match setup(&mut session, &contacts, &how, &mut go, &|_| None).await {
        Err(failure) => Some(failure),
        Ok(recorder) => exchange(&mut session, &shared, &recorder, &mut stop, &mut received)
            .await
            .err(),
    };
    (session.end(failure, grace).await, received)
}

/// What [`setup`] needs besides the session: shared with `pep`.
pub struct Setup<'a> {
    pub target: &'a Target,
    pub rosters: Rosters,
    /// Counts the users whose contacts are all `both`.
    pub ready: &'a AtomicU64,
}

/// Subscribe to every contact (unless the rosters are provisioned), approve their requests,
/// and poll the roster until all are `both`; then wait for the start signal (its value is
/// returned), still approving requests. `reply` answers what else the scenario's client must
/// answer meanwhile (`pep`: the server's caps queries).
pub async fn setup<T: Clone>(
    session: &mut Session,
    contacts: &[u32],
    how: &Setup<'_>,
    go: &mut watch::Receiver<Option<T>>,
    reply: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<T, Failure> {
    let target = how.target;
    let mut wanted: HashSet<String> = contacts.iter().map(|&c| bare_jid(target, c)).collect();
    let subscribe = how.rosters == Rosters::Protocol;
    for jid in wanted.iter().filter(|_| subscribe) {
        session
            .conn
            .send(&format!(
                "<presence to='{}' type='subscribe'/>",
                xml::escape(jid)
            ))
            .await?;
    }
    let mut ready = false;
    let mut poll = tokio::time::interval(ROSTER_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polling = false;
    loop {
        if !ready && wanted.is_empty() {
            ready = true;
            how.ready.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            // The start signal first: once it is given, what arrives belongs to the exchange
            // (a contact that started earlier may already have sent), and must not be read
            // and dropped here.
            biased;
            _ = started(go) => break,
            _ = poll.tick(), if !ready && !polling => {
                polling = true;
                session
                    .conn
                    .send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
                    .await?;
            }
            el = session.conn.next_element() => {
                let el = el?;
                answer_setup(session, &el).await?;
                if let Some(answer) = reply(&el) {
                    session.conn.send(&answer).await?;
                }
                if xml::name(&el) == "iq" && xml::attr(&el, "id").as_deref() == Some("roster") {
                    polling = false;
                    for (jid, subscription) in roster_items(&el) {
                        if subscription == "both" {
                            wanted.remove(&jid);
                        }
                    }
                }
            }
        }
    }
    let value = go.borrow().clone();
    value.ok_or_else(|| Failure::Protocol("internal: no start value".into()))
}

/// Resolves once the start signal is given (or its sender is gone).
async fn started<T>(go: &mut watch::Receiver<Option<T>>) {
    let _ = go.wait_for(Option::is_some).await;
}

/// Approve subscription requests and acknowledge roster pushes.
pub async fn answer_setup(session: &mut Session, el: &str) -> Result<(), Failure> {
    let kind = xml::attr(el, "type");
    match (xml::name(el), kind.as_deref()) {
        ("presence", Some("subscribe")) => {
            if let Some(from) = xml::attr(el, "from") {
                session
                    .conn
                    .send(&format!(
                        "<presence to='{}' type='subscribed'/>",
                        xml::escape(&from)
                    ))
                    .await?;
            }
        }
        ("iq", Some("set")) if xml::child(el, "query").is_some() => {
            if let Some(id) = xml::attr(el, "id") {
                session
                    .conn
                    .send(&format!("<iq type='result' id='{}'/>", xml::escape(&id)))
                    .await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `(jid, subscription)` of each item of a roster result.
fn roster_items(iq: &str) -> Vec<(String, String)> {
    let Some(query) = xml::child(iq, "query") else {
        return Vec::new();
    };
    xml::children(query)
        .into_iter()
        .filter(|i| xml::name(i) == "item")
        .filter_map(|i| {
            Some((
                xml::attr(i, "jid")?,
                xml::attr(i, "subscription").unwrap_or_else(|| "none".into()),
            ))
        })
        .collect()
}

fn bare_jid(target: &Target, index: u32) -> String {
    format!("{}@{}", target.username(index), target.domain)
}

/// Send the presence changes on schedule and receive the contacts' until told to stop.
async fn exchange(
    session: &mut Session,
    shared: &Shared,
    recorder: &Recorder,
    stop: &mut watch::Receiver<bool>,
    received: &mut Received,
) -> Result<(), Failure> {
    let plan = &shared.plan;
    let mut seen = HashSet::new();
    let my_group = shared.group_of(session.index);
    let bytes_before = session.conn.received_bytes;
    let offset = rand::thread_rng().gen_range(0..plan.interval.as_micros().max(1) as u64);
    let mut next_send = tokio::time::Instant::now() + Duration::from_micros(offset);
    let mut seq = 0u32;
    let mut sending = plan.changes > 0;
    if !sending {
        shared.senders_done.fetch_add(1, Ordering::Relaxed);
    }
    if received.inactive {
        if let Err(failure) = session
            .conn
            .send("<inactive xmlns='urn:xmpp:csi:0'/>")
            .await
        {
            if sending {
                shared.senders_done.fetch_add(1, Ordering::Relaxed);
            }
            return Err(failure);
        }
    }
    let result = loop {
        tokio::select! {
            _ = stopped(stop) => break Ok(()),
            _ = tokio::time::sleep_until(next_send), if sending => {
                seq += 1;
                let sent_us = shared.epoch.elapsed().as_micros() as u64;
                let change = format!(
                    "<presence><status>{}</status></presence>",
                    probe::format(session.index, seq, sent_us)
                );
                if let Err(failure) = session.conn.send(&change).await {
                    break Err(failure);
                }
                shared.sent.fetch_add(1, Ordering::Relaxed);
                next_send += plan.interval;
                if seq == plan.changes {
                    sending = false;
                    shared.senders_done.fetch_add(1, Ordering::Relaxed);
                }
            }
            el = session.conn.next_element() => match el {
                Ok(el) => {
                    if let Err(failure) = answer_setup(session, &el).await {
                        break Err(failure);
                    }
                    let Some((from, seq, sent_us)) = parse_status(&el) else {
                        continue;
                    };
                    // Contacts left over from earlier runs with other groups do not count.
                    if from == session.index || shared.group_of(from) != my_group {
                        continue;
                    }
                    if !seen.insert((from, seq)) {
                        received.duplicates += 1;
                        continue;
                    }
                    if received.inactive {
                        received.delivered_inactive += 1;
                        continue;
                    }
                    let now_us = shared.epoch.elapsed().as_micros() as u64;
                    let latency = Duration::from_micros(now_us.saturating_sub(sent_us));
                    received.delivered += 1;
                    received.latencies_us.push(latency.as_micros() as u64);
                    recorder.ok(latency);
                }
                Err(failure) => break Err(failure),
            }
        }
    };
    if sending {
        shared.senders_done.fetch_add(1, Ordering::Relaxed);
    }
    if result.is_ok() && received.inactive {
        flush_held(session, shared, received).await?;
    }
    received.bytes = session.conn.received_bytes - bytes_before;
    result
}

/// At the end of an inactive session's exchange: `<active/>`, which makes the server send
/// what it held (XEP-0352 §5), then a ping whose answer comes after all of it; the flushed
/// changes are counted, so the bytes compared are those the session gets in all, not only
/// those it got while inactive.
async fn flush_held(
    session: &mut Session,
    shared: &Shared,
    received: &mut Received,
) -> Result<(), Failure> {
    session
        .conn
        .send(
            "<active xmlns='urn:xmpp:csi:0'/>\
             <iq type='get' id='lg-csi-flush'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await?;
    let my_group = shared.group_of(session.index);
    tokio::time::timeout(FLUSH_WAIT, async {
        loop {
            let el = session.conn.next_element().await?;
            if xml::name(&el) == "iq" && xml::attr(&el, "id").as_deref() == Some("lg-csi-flush") {
                return Ok(());
            }
            if let Some((from, _, _)) = parse_status(&el) {
                if from != session.index && shared.group_of(from) == my_group {
                    received.delivered_inactive += 1;
                }
            }
        }
    })
    .await
    .unwrap_or(Err(Failure::Timeout))
}

/// Longest wait for an inactive session's held stanzas after `<active/>`.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// `<presence><status>lg FROM SEQ SENT_US</status></presence>` (available presence only).
fn parse_status(el: &str) -> Option<(u32, u32, u64)> {
    if xml::name(el) != "presence" || xml::attr(el, "type").is_some() {
        return None;
    }
    probe::parse(&xml::text(xml::child(el, "status")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_sessions_are_spread_evenly() {
        let count = |n: usize, p: u32| (0..n).filter(|&i| is_inactive(i, p)).count();
        assert_eq!(count(100, 0), 0);
        assert_eq!(count(100, 100), 100);
        assert_eq!(count(20, 50), 10);
        assert_eq!(count(10, 25), 2);
        let half: Vec<bool> = (0..4).map(|i| is_inactive(i, 50)).collect();
        assert_eq!(half, [false, true, false, true]);
    }

    #[test]
    fn statuses() {
        let p = "<presence from='user2@localhost/lg'><status>lg 2 5 123</status></presence>";
        assert_eq!(parse_status(p), Some((2, 5, 123)));
        let gone = "<presence type='unavailable'><status>lg 2 5 123</status></presence>";
        assert_eq!(parse_status(gone), None);
        assert_eq!(parse_status("<presence/>"), None);
        assert_eq!(
            parse_status("<message><status>lg 2 5 1</status></message>"),
            None
        );
        assert_eq!(
            parse_status("<presence><status>lg 2 x 1</status></presence>"),
            None
        );
    }

    #[test]
    fn roster() {
        let iq = "<iq type='result' id='roster'><query xmlns='jabber:iq:roster'>\
                  <item jid='user2@localhost' subscription='both'/>\
                  <item jid='user3@localhost' subscription='to' ask='subscribe'><group>g</group></item>\
                  <item jid='user4@localhost'/></query></iq>";
        let items = roster_items(iq);
        let pairs: Vec<(&str, &str)> = items
            .iter()
            .map(|(j, s)| (j.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("user2@localhost", "both"),
                ("user3@localhost", "to"),
                ("user4@localhost", "none")
            ]
        );
    }
}
