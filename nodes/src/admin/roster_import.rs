//! Bulk roster import (`switchboard roster import`, `POST /api/rosters/import`): an operator
//! provisions roster items without the subscription handshake, e.g. a test population of
//! mutual contacts or a migration from another server.
//!
//! Items are checked here (the owner must be an account of this deployment, the contact a
//! valid JID), grouped by owner and written through the owner's shard as one
//! `ImportRoster` each, so a cluster commits one Raft entry per account, not per item.

use std::collections::BTreeMap;

use proto::im::Subscription;
use proto::jid::Jid;
use serde::{Deserialize, Serialize};
use storage::RosterItem;

use crate::im::messages::ImportRoster;
use crate::im::{AccountShards, MAX_ROSTER_NAME};
use crate::users::{UserAdmin, UserError};

/// One roster item as the operator gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RosterImportItem {
    /// The account whose roster gets the item.
    pub owner: String,
    /// The contact's bare JID (any domain).
    pub contact: String,
    /// `none`, `to`, `from` or `both` (the default).
    #[serde(default = "both")]
    pub subscription: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

fn both() -> String {
    "both".into()
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct RosterImportOutcome {
    /// Accounts whose roster was given items.
    pub accounts: usize,
    pub items: usize,
    /// Items that were new or differed from the stored ones.
    pub changed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RosterImportError {
    #[error("owner {0}: {1}")]
    Owner(String, UserError),
    #[error("owner {0}: no such account")]
    NoAccount(String),
    #[error("contact {0:?} is not a bare JID")]
    Contact(String),
    #[error("{owner} / {contact}: subscription {value:?} is not none, to, from or both")]
    Subscription {
        owner: String,
        contact: String,
        value: String,
    },
    #[error(
        "{owner} / {contact}: a name or group is empty or longer than {MAX_ROSTER_NAME} bytes"
    )]
    Name { owner: String, contact: String },
    #[error("the account's shard: {0}")]
    Shard(String),
}

/// Check every item and group them by owner; within one owner a later item for the same
/// contact replaces an earlier one.
pub fn prepare(
    users: &UserAdmin,
    items: &[RosterImportItem],
) -> Result<BTreeMap<Jid, Vec<RosterItem>>, RosterImportError> {
    let mut by_owner: BTreeMap<Jid, BTreeMap<String, RosterItem>> = BTreeMap::new();
    for i in items {
        let owner = users
            .account_jid(&i.owner)
            .map_err(|e| RosterImportError::Owner(i.owner.clone(), e))?;
        let known = by_owner.contains_key(&owner)
            || users
                .exists(&owner)
                .map_err(|e| RosterImportError::Owner(i.owner.clone(), e))?;
        if !known {
            return Err(RosterImportError::NoAccount(owner.to_string()));
        }
        let contact = Jid::parse(&i.contact)
            .ok()
            .filter(|j| j.resource().is_none())
            .ok_or_else(|| RosterImportError::Contact(i.contact.clone()))?;
        let subscription = Subscription::parse(&i.subscription).ok_or_else(|| {
            RosterImportError::Subscription {
                owner: owner.to_string(),
                contact: contact.to_string(),
                value: i.subscription.clone(),
            }
        })?;
        let bad_name = |s: &String| s.is_empty() || s.len() > MAX_ROSTER_NAME;
        if i.name.as_ref().is_some_and(bad_name) || i.groups.iter().any(bad_name) {
            return Err(RosterImportError::Name {
                owner: owner.to_string(),
                contact: contact.to_string(),
            });
        }
        let mut groups = i.groups.clone();
        groups.sort();
        groups.dedup();
        let item = RosterItem {
            jid: contact.to_string(),
            name: i.name.clone(),
            groups,
            subscription: subscription.as_str().to_string(),
            pending_out: false,
            pending_in: false,
            approved: false,
        };
        by_owner
            .entry(owner)
            .or_default()
            .insert(item.jid.clone(), item);
    }
    Ok(by_owner
        .into_iter()
        .map(|(owner, items)| (owner, items.into_values().collect()))
        .collect())
}

/// Write each owner's items through its shard. Owners in different shards go in parallel;
/// the first failure is reported (owners before it may have been imported: re-running the
/// same import is harmless, unchanged items are not written again).
pub async fn import(
    shards: &AccountShards,
    by_owner: BTreeMap<Jid, Vec<RosterItem>>,
) -> Result<RosterImportOutcome, RosterImportError> {
    let mut outcome = RosterImportOutcome::default();
    let mut pending = Vec::with_capacity(by_owner.len());
    for (user, items) in by_owner {
        outcome.accounts += 1;
        outcome.items += items.len();
        let shards = shards.clone();
        pending.push(actix_rt::spawn(async move {
            let owner = user.to_string();
            let msg = ImportRoster {
                user: user.clone(),
                items,
            };
            let r = shards.ask(&user, msg).await;
            r.map_err(|e| e.to_string())
                .and_then(|r| r)
                .map_err(|e| RosterImportError::Shard(format!("{owner}: {e}")))
        }));
    }
    let mut first_error = None;
    for p in pending {
        match p.await {
            Ok(Ok(changed)) => outcome.changed += changed,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(RosterImportError::Shard(e.to_string()));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}
