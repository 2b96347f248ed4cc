//! Resource flags set by modules (carbons enabled, ...) and delivery to the flagged resources
//! of an account on every node: what Message Carbons (XEP-0280) needs to reach "the user's
//! other interested resources" without the routing table knowing about carbons.

use actix::prelude::*;
use proto::element::Element;
use proto::jid::Jid;

use super::messages::{SetResourceFlag, ToFlaggedResources};
use super::Router;
use crate::cluster::messages::UserOp;
use crate::modules::ResourceFlag;

impl Handler<SetResourceFlag> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetResourceFlag, _: &mut Context<Self>) {
        let bare = msg.jid.to_bare();
        let Some(r) = self
            .sessions
            .get_mut(&bare)
            .and_then(|l| l.iter_mut().find(|r| r.session_id == msg.session_id))
        else {
            return;
        };
        if msg.on {
            r.flags |= msg.flag.bit();
        } else {
            r.flags &= !msg.flag.bit();
        }
    }
}

impl Handler<ToFlaggedResources> for Router {
    type Result = ();

    fn handle(&mut self, msg: ToFlaggedResources, _: &mut Context<Self>) {
        self.to_flagged(&msg.user, msg.flag, &msg.except, &msg.stanza);
    }
}

impl Router {
    /// `stanza` to each resource of `user` that has `flag` and is not in `except`: this
    /// node's, and through one `UserOp` per node, every other node's.
    pub(super) fn to_flagged(
        &self,
        user: &Jid,
        flag: ResourceFlag,
        except: &[Jid],
        stanza: &Element,
    ) {
        self.to_flagged_local(user, flag, except, stanza);
        // Serialised once, and only if another node holds a resource of the account.
        let xml = std::cell::OnceCell::new();
        self.remote.user_op(user, false, || UserOp::ToFlagged {
            user: user.clone(),
            flag: flag.bit(),
            except: except.to_vec(),
            stanza: xml.get_or_init(|| stanza.to_xml_string()).clone(),
        });
    }

    /// Whether a copy for `user`'s resources flagged `flag` (but those in `except`) could
    /// reach anyone: a flagged resource here, or any resource on another node (whose flags
    /// only that node knows). Checked before a copy is made: most accounts have one resource.
    pub(super) fn any_flagged(&self, user: &Jid, flag: ResourceFlag, except: &[Jid]) -> bool {
        self.sessions
            .get(user)
            .into_iter()
            .flatten()
            .any(|r| r.flags & flag.bit() != 0 && !except.contains(&r.jid))
            || self
                .remote
                .resources(user)
                .any(|r| !except.contains(&r.jid))
    }

    /// The local part of [`to_flagged`](Self::to_flagged).
    pub(super) fn to_flagged_local(
        &self,
        user: &Jid,
        flag: ResourceFlag,
        except: &[Jid],
        stanza: &Element,
    ) {
        for r in self.sessions.get(user).into_iter().flatten() {
            if r.flags & flag.bit() != 0 && !except.contains(&r.jid) {
                Self::deliver(r, stanza.clone());
            }
        }
    }
}
