//! Stale group chat occupants (XEP-0045, issue 21): an occupant whose session ended without
//! its unavailable presence reaching the room (its node was killed, or a node alone
//! restarted) is removed from the room with status 333 (§7.14 / §15.6, as Prosody does) as
//! soon as the routing table says the session is gone, rather than when the room's next
//! stanza to it bounces.
//!
//! When sessions may have gone silently ([`SessionLossEpoch`] changed: a member marked down
//! or resynced after a restart, a snapshot, this node's start) the sweep walks the rooms of
//! every shard this node serves; when this node starts serving a shard (a failover) it walks
//! that shard's. For each room it asks the Router which of its occupants' sessions at our
//! domains are bound nowhere ([`AbsentSessions`]), and in a cluster waits [`GRACE`] and asks
//! again, so that a route this node's copy of the table has not applied yet (a bind
//! committed a moment ago, a node catching up after its start) is not taken for a dead one.
//! A node alone sweeps once before it accepts clients (see [`start`]). What is still absent
//! goes to the room's shard as the bounce the room would have had for it (`<message
//! type='error'>` with `<recipient-unavailable/>` from the session's JID), so the room
//! removes it exactly as it removes an occupant whose stanza bounced: the session alone if
//! the occupant has others, otherwise the occupant, with 333 to everyone.
//!
//! What counts as present: any bound session, including a detached resumable one (XEP-0198
//! §5, waiting for its client), as Prosody keeps an occupant while its session hibernates;
//! if it expires, its unavailable presence reaches the room. Occupants at other servers are
//! not ours to judge: the bounce rule removes them. A node cut off by a partition longer
//! than `cluster.failure_timeout_ms` is marked down, so its occupants are removed like a
//! dead node's; when it comes back its sessions are bound again but no longer in the rooms
//! (XEP-0410 self-pings tell their clients to join again).
//!
//! A cluster node sweeps only while the applied table has it up with this process's
//! incarnation (`Cluster::is_up`): before its own resync is applied its copy of the table
//! may lack binds made while it was away, and a node marked down is the cut-off side.
//!
//! Bounded: a page of [`PAGE`] rooms per ask, so a shard's thread is never held for more
//! than one page, and at most [`MAX_CANDIDATES`] sessions per pass (the rest on the next).

use std::collections::HashSet;
use std::time::Duration;

use actix::Addr;
use proto::element::Element;
use proto::jid::Jid;

use crate::cluster::Cluster;
use crate::im::muc::{MucLocalOccupants, MucStanza};
use crate::im::{AccountShard, AccountShards};
use crate::router::messages::{AbsentSessions, SessionLossEpoch};
use crate::router::Router;

/// How often the epoch and the served shards are looked at.
const TICK: Duration = Duration::from_millis(250);
/// Between the two looks at a session's route.
const GRACE: Duration = Duration::from_secs(1);
/// Rooms per ask to a shard.
const PAGE: usize = 64;
/// Absent sessions one pass holds; past it the pass stops and the next tick sweeps again.
const MAX_CANDIDATES: usize = 10_000;

/// Start the sweep. A node alone first sweeps every room before it returns (the caller
/// starts accepting clients after it), so that after a restart no room lists a session of
/// the previous life to a client that joins; then it watches in the background.
pub async fn start(
    router: Addr<Router>,
    shards: AccountShards,
    cluster: Option<Cluster>,
    services: Vec<String>,
) {
    let mut swept_epoch = 0;
    if !shards.clustered() {
        let first = served(&shards);
        let first: Vec<&Addr<AccountShard>> = first.iter().map(|(_, a)| a).collect();
        if let Ok(epoch) = router.send(SessionLossEpoch).await {
            if sweep(&router, &shards, &services, &first).await {
                swept_epoch = epoch;
            }
        }
    }
    actix_rt::spawn(watch(router, shards, cluster, services, swept_epoch));
}

/// The shard actors whose rooms this node sweeps: those it serves; without a cluster every
/// local shard shares one store, and one lists every room.
fn served(shards: &AccountShards) -> Vec<(usize, Addr<AccountShard>)> {
    let clustered = shards.clustered();
    shards
        .serving_actors()
        .into_iter()
        .filter(|(i, _)| clustered || *i == 0)
        .map(|(i, a)| (i, a.clone()))
        .collect()
}

/// Watch for silent session losses and for shards this node starts serving, and sweep.
async fn watch(
    router: Addr<Router>,
    shards: AccountShards,
    cluster: Option<Cluster>,
    services: Vec<String>,
    mut swept_epoch: u64,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut served_before: HashSet<usize> = if swept_epoch == 0 {
        HashSet::new()
    } else {
        served(&shards).into_iter().map(|(i, _)| i).collect()
    };
    loop {
        tick.tick().await;
        // Until the table has this process's own resync applied, this node's copy may miss
        // binds made while it was away (or, marked down, it is the cut-off side): it judges
        // no one. What it comes to serve meanwhile is swept once it is up.
        if cluster.as_ref().is_some_and(|c| !c.is_up()) {
            continue;
        }
        let Ok(epoch) = router.send(SessionLossEpoch).await else {
            return;
        };
        let now_served = served(&shards);
        let to_sweep: Vec<&Addr<AccountShard>> = now_served
            .iter()
            .filter(|(i, _)| epoch != swept_epoch || !served_before.contains(i))
            .map(|(_, a)| a)
            .collect();
        served_before = now_served.iter().map(|(i, _)| *i).collect();
        if to_sweep.is_empty() {
            swept_epoch = epoch;
            continue;
        }
        // An incomplete pass (some sessions wait) sweeps again at the next tick.
        let complete = sweep(&router, &shards, &services, &to_sweep).await;
        swept_epoch = if complete { epoch } else { 0 };
    }
}

/// One pass over `actors`' rooms; false when it stopped at [`MAX_CANDIDATES`].
async fn sweep(
    router: &Addr<Router>,
    shards: &AccountShards,
    services: &[String],
    actors: &[&Addr<AccountShard>],
) -> bool {
    let mut candidates: Vec<(Jid, Jid)> = Vec::new();
    let mut complete = true;
    'shards: for actor in actors {
        for service in services {
            let mut after: Option<String> = None;
            loop {
                let ask = MucLocalOccupants {
                    service: service.clone(),
                    after: after.clone(),
                    limit: PAGE,
                };
                let Ok(page) = actor.send(ask).await else {
                    break;
                };
                let full = page.len() == PAGE;
                after = page.last().map(|(room, _)| room.to_string());
                let sessions: Vec<Jid> = page.iter().flat_map(|(_, s)| s.clone()).collect();
                if !sessions.is_empty() {
                    let absent: HashSet<Jid> = router
                        .send(AbsentSessions(sessions))
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .collect();
                    for (room, sessions) in page {
                        candidates.extend(
                            sessions
                                .into_iter()
                                .filter(|s| absent.contains(s))
                                .map(|s| (room.clone(), s)),
                        );
                    }
                }
                if candidates.len() >= MAX_CANDIDATES {
                    complete = false;
                    break 'shards;
                }
                if !full {
                    break;
                }
            }
        }
    }
    if candidates.is_empty() {
        return complete;
    }
    // A node alone has no copy of a table to lag behind: its Router is the truth.
    if shards.clustered() {
        tokio::time::sleep(GRACE).await;
    }
    let again: Vec<Jid> = candidates.iter().map(|(_, s)| s.clone()).collect();
    let Ok(absent) = router.send(AbsentSessions(again)).await else {
        return complete;
    };
    let absent: HashSet<Jid> = absent.into_iter().collect();
    let mut removed = 0usize;
    for (room, session) in candidates {
        if !absent.contains(&session) {
            continue;
        }
        removed += 1;
        shards.tell(&room.clone(), gone(room, session));
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "muc: occupants whose sessions are gone taken out of their rooms"
        );
    }
    complete
}

/// What the room hears for a session that is bound nowhere: the bounce its next stanza to
/// the session would have got (RFC 6120 §8.3.3.15 `recipient-unavailable`), from the
/// session's JID, which the room answers by removing it (`room::Room::error_from`).
fn gone(room: Jid, session: Jid) -> MucStanza {
    let stanza = Element::new("message", proto::ns::CLIENT)
        .with_attr("type", "error")
        .with_attr("from", session.to_string())
        .with_attr("to", room.to_string())
        .with_child(
            Element::new("error", proto::ns::CLIENT)
                .with_attr("type", "wait")
                .with_child(Element::new(
                    "recipient-unavailable",
                    proto::ns::STANZAS_ERRORS,
                )),
        );
    MucStanza {
        to: room.clone(),
        room,
        from: session,
        stanza,
        local_sender: true,
        counted: false,
    }
}
