//! The failure detector's memory of when each member came up: a node that was down and
//! resynced is up in the table before the leader's link to it has redialled, so its silence
//! counts from the moment it was seen up again, not from before it died.

use std::collections::BTreeMap;
use std::time::Duration;

use super::routing_table::{Member, MemberState, NodeId};

/// When this node first saw each member up in its current incarnation (the failure
/// detector's grace for a member that just came back).
#[derive(Default)]
pub struct UpSince(BTreeMap<NodeId, (u64, tokio::time::Instant)>);

impl UpSince {
    /// Note the members now up; one that went down, or came back as a new incarnation,
    /// starts again.
    pub fn observe(&mut self, members: &BTreeMap<NodeId, Member>) {
        let now = tokio::time::Instant::now();
        self.0.retain(|id, (incarnation, _)| {
            members
                .get(id)
                .is_some_and(|m| m.state == MemberState::Up && m.incarnation == *incarnation)
        });
        for (id, m) in members {
            if m.state == MemberState::Up {
                self.0.entry(*id).or_insert((m.incarnation, now));
            }
        }
    }

    /// How long `node` has been up as far as this node saw it.
    pub fn up_for(&self, node: NodeId) -> Duration {
        self.0
            .get(&node)
            .map_or(Duration::ZERO, |(_, since)| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(state: MemberState, incarnation: u64) -> Member {
        Member { state, incarnation }
    }

    #[test]
    fn a_member_back_as_a_new_incarnation_starts_its_grace_again() {
        let pause = Duration::from_millis(30);
        let mut up = UpSince::default();
        let mut members = BTreeMap::from([(2, member(MemberState::Up, 1))]);
        up.observe(&members);
        std::thread::sleep(pause);
        up.observe(&members);
        assert!(up.up_for(2) >= pause, "the same incarnation keeps its time");

        // Down, then up again as a new process: the grace starts over.
        members.insert(2, member(MemberState::Down, 1));
        up.observe(&members);
        assert_eq!(up.up_for(2), Duration::ZERO);
        members.insert(2, member(MemberState::Up, 2));
        up.observe(&members);
        assert!(up.up_for(2) < pause);
        std::thread::sleep(pause);
        assert!(up.up_for(2) >= pause);

        // A resync seen without the down in between (a restart faster than the detector).
        members.insert(2, member(MemberState::Up, 3));
        up.observe(&members);
        assert!(up.up_for(2) < pause);
    }
}
