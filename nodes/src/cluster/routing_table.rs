//! The cluster's routing table: which node holds each bound resource, and which nodes are up.
//! It is the Raft state machine's data: every node applies the same commands in the same
//! order and so holds the same table. `apply` is a pure function of (table, command); what
//! changed comes back as [`RouteEvent`]s for the node's Router.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// A command in the metadata group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// `node` (re)started as `incarnation`, or came back from a partition: it is up, and its
    /// routes become exactly `sessions` (routes of earlier incarnations are gone).
    Resync {
        node: NodeId,
        incarnation: u64,
        sessions: Vec<SessionRoute>,
    },
    /// `node` stopped answering or left: it is down and its routes are purged.
    NodeDown { node: NodeId },
    /// Account changes (see `state_machine`: applied to each node's account store).
    Accounts(Vec<AccountChange>),
    /// `node` is leaving (`draining`): IM data shards place no replica on it, so their
    /// leaders move its replicas away before it is removed.
    SetDraining { node: NodeId, draining: bool },
    /// Route changes of one node's sessions, batched.
    Routes {
        node: NodeId,
        incarnation: u64,
        changes: Vec<RouteChange>,
    },
}

/// A change to the replicated accounts. Records are the account store's JSON text (SCRAM
/// keys, never a password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountChange {
    Create {
        jid: String,
        record: String,
    },
    SetCredentials {
        jid: String,
        record: String,
    },
    /// Delete the account and all its IM data.
    Delete {
        jid: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountOutcome {
    Done,
    AlreadyExists,
    NotFound,
    Failed,
}

/// A bound session as a node reports it on resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRoute {
    pub jid: String,
    pub session: u64,
    pub priority: Option<i8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteChange {
    /// A session wants `jid` (a full JID). With `replace`, a holder elsewhere loses it
    /// (`<conflict/>`); without, the bind is refused while someone holds it.
    Bind {
        jid: String,
        session: u64,
        replace: bool,
    },
    Unbind {
        jid: String,
        session: u64,
    },
    /// Availability and priority changed (`None`: unavailable).
    Presence {
        jid: String,
        session: u64,
        priority: Option<i8>,
    },
    /// A stream-management session resumed on this node (XEP-0198 §5): `jid` moves here
    /// whoever held it, as session `session`, keeping its availability and priority. It
    /// did not go away and come back, so nobody is told it did (`RouteEvent::Moved`).
    Move {
        jid: String,
        session: u64,
        priority: Option<i8>,
    },
}

/// The outcome of each `Bind` of a command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse {
    pub binds: Vec<BindOutcome>,
    /// One per `AccountChange`, in order.
    #[serde(default)]
    pub accounts: Vec<AccountOutcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindOutcome {
    Bound,
    /// Held by another session and the bind did not replace it.
    Conflict,
    /// The node is marked down (or is an old incarnation): it must resync first.
    NodeNotUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub node: NodeId,
    pub session: u64,
    pub priority: Option<i8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub state: MemberState,
    pub incarnation: u64,
}

/// What applying a command changed, for the Router of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// `jid` is now routed to `route` (a new bind, or a priority change).
    Set { jid: String, route: Route },
    /// `jid`'s route `route` is gone. `replaced`: another session took the resource, so
    /// the session gets `<conflict/>` if its node still has it.
    Removed {
        jid: String,
        route: Route,
        replaced: bool,
    },
    /// `jid` moved from one session to another, as one resource (`RouteChange::Move`):
    /// the old holder retires its session without going unavailable.
    Moved {
        jid: String,
        from: Option<Route>,
        to: Route,
    },
    /// A member changed state or (on resync) incarnation.
    Member { node: NodeId, member: Member },
    /// A member started or stopped leaving.
    Draining { node: NodeId, draining: bool },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    pub members: BTreeMap<NodeId, Member>,
    pub routes: BTreeMap<String, Route>,
    /// Members that are leaving (see [`ClusterCommand::SetDraining`]).
    #[serde(default)]
    pub draining: BTreeSet<NodeId>,
}

impl RoutingTable {
    pub fn apply(&mut self, cmd: &ClusterCommand) -> (ClusterResponse, Vec<RouteEvent>) {
        let mut events = Vec::new();
        let mut response = ClusterResponse::default();
        match cmd {
            ClusterCommand::Resync {
                node,
                incarnation,
                sessions,
            } => {
                self.purge(*node, &mut events);
                let member = Member {
                    state: MemberState::Up,
                    incarnation: *incarnation,
                };
                if self.members.insert(*node, member) != Some(member) {
                    events.push(RouteEvent::Member {
                        node: *node,
                        member,
                    });
                }
                for s in sessions {
                    let outcome = self.bind(*node, &s.jid, s.session, false, &mut events);
                    if outcome == BindOutcome::Bound && s.priority.is_some() {
                        self.presence(*node, &s.jid, s.session, s.priority, &mut events);
                    }
                    response.binds.push(outcome);
                }
            }
            // Accounts are not routing state: the state machine applies them to storage.
            ClusterCommand::Accounts(_) => {}
            ClusterCommand::SetDraining { node, draining } => {
                let changed = if *draining {
                    self.draining.insert(*node)
                } else {
                    self.draining.remove(node)
                };
                if changed {
                    events.push(RouteEvent::Draining {
                        node: *node,
                        draining: *draining,
                    });
                }
            }
            ClusterCommand::NodeDown { node } => {
                self.purge(*node, &mut events);
                if let Some(m) = self.members.get_mut(node) {
                    if m.state != MemberState::Down {
                        m.state = MemberState::Down;
                        events.push(RouteEvent::Member {
                            node: *node,
                            member: *m,
                        });
                    }
                }
            }
            ClusterCommand::Routes {
                node,
                incarnation,
                changes,
            } => {
                let up = self
                    .members
                    .get(node)
                    .is_some_and(|m| m.state == MemberState::Up && m.incarnation == *incarnation);
                for change in changes {
                    match change {
                        RouteChange::Bind {
                            jid,
                            session,
                            replace,
                        } => response.binds.push(if up {
                            self.bind(*node, jid, *session, *replace, &mut events)
                        } else {
                            BindOutcome::NodeNotUp
                        }),
                        RouteChange::Unbind { jid, session }
                            if up
                                && self
                                    .routes
                                    .get(jid)
                                    .is_some_and(|r| r.node == *node && r.session == *session) =>
                        {
                            if let Some(route) = self.routes.remove(jid) {
                                events.push(RouteEvent::Removed {
                                    jid: jid.clone(),
                                    route,
                                    replaced: false,
                                });
                            }
                        }
                        RouteChange::Presence {
                            jid,
                            session,
                            priority,
                        } if up => self.presence(*node, jid, *session, *priority, &mut events),
                        RouteChange::Move {
                            jid,
                            session,
                            priority,
                        } => response.binds.push(if up {
                            let to = Route {
                                node: *node,
                                session: *session,
                                priority: *priority,
                            };
                            let from = self.routes.insert(jid.clone(), to);
                            events.push(RouteEvent::Moved {
                                jid: jid.clone(),
                                from,
                                to,
                            });
                            BindOutcome::Bound
                        } else {
                            BindOutcome::NodeNotUp
                        }),
                        _ => {}
                    }
                }
            }
        }
        (response, events)
    }

    fn bind(
        &mut self,
        node: NodeId,
        jid: &str,
        session: u64,
        replace: bool,
        events: &mut Vec<RouteEvent>,
    ) -> BindOutcome {
        let new = Route {
            node,
            session,
            priority: None,
        };
        if let Some(old) = self.routes.get(jid).copied() {
            if old.node == node && old.session == session {
                return BindOutcome::Bound;
            }
            if !replace {
                return BindOutcome::Conflict;
            }
            events.push(RouteEvent::Removed {
                jid: jid.to_string(),
                route: old,
                replaced: true,
            });
        }
        self.routes.insert(jid.to_string(), new);
        events.push(RouteEvent::Set {
            jid: jid.to_string(),
            route: new,
        });
        BindOutcome::Bound
    }

    fn presence(
        &mut self,
        node: NodeId,
        jid: &str,
        session: u64,
        priority: Option<i8>,
        events: &mut Vec<RouteEvent>,
    ) {
        if let Some(route) = self.routes.get_mut(jid) {
            if route.node == node && route.session == session && route.priority != priority {
                route.priority = priority;
                events.push(RouteEvent::Set {
                    jid: jid.to_string(),
                    route: *route,
                });
            }
        }
    }

    fn purge(&mut self, node: NodeId, events: &mut Vec<RouteEvent>) {
        let gone: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(j, _)| j.clone())
            .collect();
        for jid in gone {
            if let Some(route) = self.routes.remove(&jid) {
                events.push(RouteEvent::Removed {
                    jid,
                    route,
                    replaced: false,
                });
            }
        }
    }

    /// The nodes marked up.
    pub fn up_members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Up)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resync(node: NodeId, inc: u64) -> ClusterCommand {
        ClusterCommand::Resync {
            node,
            incarnation: inc,
            sessions: vec![],
        }
    }

    fn bind(node: NodeId, inc: u64, jid: &str, session: u64, replace: bool) -> ClusterCommand {
        ClusterCommand::Routes {
            node,
            incarnation: inc,
            changes: vec![RouteChange::Bind {
                jid: jid.into(),
                session,
                replace,
            }],
        }
    }

    #[test]
    fn a_bind_elsewhere_replaces_or_conflicts_by_policy() {
        let mut t = RoutingTable::default();
        t.apply(&resync(1, 10));
        t.apply(&resync(2, 20));
        let (r, _) = t.apply(&bind(1, 10, "a@x/r", 7, true));
        assert_eq!(r.binds, vec![BindOutcome::Bound]);
        let (r, _) = t.apply(&bind(2, 20, "a@x/r", 8, false));
        assert_eq!(r.binds, vec![BindOutcome::Conflict]);
        let (r, ev) = t.apply(&bind(2, 20, "a@x/r", 8, true));
        assert_eq!(r.binds, vec![BindOutcome::Bound]);
        assert!(ev.contains(&RouteEvent::Removed {
            jid: "a@x/r".into(),
            route: Route {
                node: 1,
                session: 7,
                priority: None
            },
            replaced: true
        }));
        assert_eq!(t.routes["a@x/r"].node, 2);
    }

    #[test]
    fn node_down_purges_its_routes_and_refuses_its_stale_changes() {
        let mut t = RoutingTable::default();
        t.apply(&resync(1, 10));
        t.apply(&resync(2, 20));
        t.apply(&bind(1, 10, "a@x/r", 7, true));
        t.apply(&bind(2, 20, "b@x/r", 8, true));
        let (_, ev) = t.apply(&ClusterCommand::NodeDown { node: 1 });
        assert!(!t.routes.contains_key("a@x/r"));
        assert!(t.routes.contains_key("b@x/r"));
        assert!(ev.contains(&RouteEvent::Member {
            node: 1,
            member: Member {
                state: MemberState::Down,
                incarnation: 10
            }
        }));
        let (r, _) = t.apply(&bind(1, 10, "c@x/r", 9, true));
        assert_eq!(r.binds, vec![BindOutcome::NodeNotUp]);
        // Coming back with its live sessions restores them, except where someone else
        // took the resource meanwhile.
        t.apply(&bind(2, 20, "a@x/r", 11, true));
        let (r, _) = t.apply(&ClusterCommand::Resync {
            node: 1,
            incarnation: 10,
            sessions: vec![
                SessionRoute {
                    jid: "a@x/r".into(),
                    session: 7,
                    priority: Some(0),
                },
                SessionRoute {
                    jid: "d@x/r".into(),
                    session: 12,
                    priority: Some(5),
                },
            ],
        });
        assert_eq!(r.binds, vec![BindOutcome::Conflict, BindOutcome::Bound]);
        assert_eq!(t.routes["d@x/r"].priority, Some(5));
        assert_eq!(t.routes["a@x/r"].node, 2);
    }

    #[test]
    fn a_restarted_node_loses_the_routes_of_its_previous_life() {
        let mut t = RoutingTable::default();
        t.apply(&resync(1, 10));
        t.apply(&bind(1, 10, "a@x/r", 7, true));
        t.apply(&resync(1, 11));
        assert!(t.routes.is_empty());
        let (r, _) = t.apply(&bind(1, 10, "a@x/r", 7, true));
        assert_eq!(r.binds, vec![BindOutcome::NodeNotUp]);
    }

    #[test]
    fn unbind_and_presence_only_touch_the_same_session() {
        let mut t = RoutingTable::default();
        t.apply(&resync(1, 1));
        t.apply(&bind(1, 1, "a@x/r", 7, true));
        let (_, ev) = t.apply(&ClusterCommand::Routes {
            node: 1,
            incarnation: 1,
            changes: vec![
                RouteChange::Presence {
                    jid: "a@x/r".into(),
                    session: 6,
                    priority: Some(1),
                },
                RouteChange::Unbind {
                    jid: "a@x/r".into(),
                    session: 6,
                },
            ],
        });
        assert!(ev.is_empty());
        t.apply(&ClusterCommand::Routes {
            node: 1,
            incarnation: 1,
            changes: vec![RouteChange::Presence {
                jid: "a@x/r".into(),
                session: 7,
                priority: Some(3),
            }],
        });
        assert_eq!(t.routes["a@x/r"].priority, Some(3));
    }
}
