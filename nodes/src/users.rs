//! Account administration shared by the CLI (node stopped) and the admin endpoint (node
//! running): JIDs are validated and prepared, passwords become SCRAM credentials.

use proto::jid::Jid;
use proto::sasl::{StoredCredentials, DEFAULT_ITERATIONS};
use storage::{AccountStore, StorageError, Store};

use crate::cluster::{AccountChange, AccountOutcome, Cluster, ClusterCommand};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0:?} is not a valid JID: {1}")]
    MalformedJid(String, proto::jid::JidError),
    #[error("{0} is not an account JID (expected user@domain, without resource)")]
    NotAccount(String),
    #[error("domain {0} is not served by this node (see `domains` in the configuration)")]
    UnknownDomain(String),
    #[error("the password is empty or not a valid OpaqueString")]
    BadPassword,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the cluster did not commit the change: {0}")]
    Cluster(String),
    #[error("deriving the SCRAM keys failed: {0}")]
    KeyDerivation(String),
}

/// What a bulk import did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ImportOutcome {
    pub created: usize,
    pub existing: usize,
}

pub struct UserAdmin {
    store: Store,
    accounts: AccountStore,
    domains: Vec<String>,
}

impl UserAdmin {
    pub fn new(store: Store, domains: Vec<String>) -> Result<Self, UserError> {
        Ok(UserAdmin {
            accounts: store.accounts()?,
            store,
            domains,
        })
    }

    /// Parse and prepare an account JID; it must be `local@served-domain`.
    pub fn account_jid(&self, jid: &str) -> Result<Jid, UserError> {
        let j = Jid::parse(jid).map_err(|e| UserError::MalformedJid(jid.to_string(), e))?;
        if j.local().is_none() || j.resource().is_some() {
            return Err(UserError::NotAccount(jid.to_string()));
        }
        if !self.domains.iter().any(|d| d == j.domain()) {
            return Err(UserError::UnknownDomain(j.domain().to_string()));
        }
        Ok(j)
    }

    pub fn exists(&self, account: &Jid) -> Result<bool, UserError> {
        Ok(self.accounts.exists(&account.to_string())?)
    }

    fn credentials(password: &str) -> Result<StoredCredentials, UserError> {
        if password.is_empty() {
            return Err(UserError::BadPassword);
        }
        StoredCredentials::derive(password, DEFAULT_ITERATIONS).map_err(|_| UserError::BadPassword)
    }

    pub fn add(&self, jid: &str, password: &str) -> Result<Jid, UserError> {
        let j = self.account_jid(jid)?;
        self.accounts
            .create(&j.to_string(), &Self::credentials(password)?)?;
        Ok(j)
    }

    pub fn passwd(&self, jid: &str, password: &str) -> Result<Jid, UserError> {
        let j = self.account_jid(jid)?;
        self.accounts
            .set_credentials(&j.to_string(), &Self::credentials(password)?)?;
        Ok(j)
    }

    /// Delete the account and everything stored for it (roster, offline messages, lists,
    /// vCard, ...). The data goes first: a crash in between leaves an account that can
    /// simply be deleted again.
    pub fn del(&self, jid: &str) -> Result<Jid, UserError> {
        let j = self.account_jid(jid)?;
        let key = j.to_string();
        if !self.accounts.exists(&key)? {
            return Err(UserError::Storage(StorageError::NotFound(key)));
        }
        self.store.delete_user_data(&key)?;
        self.accounts.delete(&key)?;
        Ok(j)
    }

    /// Create each account that does not exist yet. Every JID and password is checked before
    /// any account is created, so a typo in a file is reported, not skipped. Blocks for a few
    /// ms of CPU per new account (three PBKDF2 runs), spread over the cores this process may use: call it off
    /// the async threads.
    pub fn import(
        &self,
        users: &[(String, String)],
        shared_salt: bool,
    ) -> Result<ImportOutcome, UserError> {
        let mut outcome = ImportOutcome::default();
        let mut new = Vec::with_capacity(users.len());
        for (jid, password) in users {
            // Checked first: deriving credentials costs three PBKDF2 runs.
            let j = self.account_jid(jid)?;
            if self.exists(&j)? {
                outcome.existing += 1;
            } else {
                new.push((j, password.as_str()));
            }
        }
        let passwords: Vec<&str> = new.iter().map(|(_, p)| *p).collect();
        for ((j, _), credentials) in new.iter().zip(credentials_all(&passwords, shared_salt)?) {
            match self.accounts.create(&j.to_string(), &credentials) {
                Ok(()) => outcome.created += 1,
                Err(StorageError::AlreadyExists(_)) => outcome.existing += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(outcome)
    }

    /// In a cluster, account changes go through the Raft log so that every node applies
    /// them; the answer is the leader's outcome.
    async fn replicate(
        cluster: &Cluster,
        changes: Vec<AccountChange>,
    ) -> Result<Vec<AccountOutcome>, UserError> {
        // A large import goes as several entries, each well inside a NodeLink frame (an entry
        // too large for one could never reach the other nodes).
        let budget = crate::cluster::max_entry_bytes(cluster.links.max_frame()) / 2;
        let mut outcomes = Vec::with_capacity(changes.len());
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut rest = changes.into_iter().peekable();
        while let Some(change) = rest.next() {
            batch_bytes += Self::change_bytes(&change);
            batch.push(change);
            let full = rest
                .peek()
                .is_some_and(|next| batch_bytes + Self::change_bytes(next) > budget);
            if full || rest.peek().is_none() {
                let n = batch.len();
                let r = cluster
                    .write(ClusterCommand::Accounts(std::mem::take(&mut batch)))
                    .await
                    .map_err(|e| UserError::Cluster(e.to_string()))?;
                if r.accounts.len() != n {
                    return Err(UserError::Cluster("unexpected answer".into()));
                }
                outcomes.extend(r.accounts);
                batch_bytes = 0;
            }
        }
        Ok(outcomes)
    }

    /// About what a change takes in a log entry (JSON: the strings, escaped, and field names).
    fn change_bytes(change: &AccountChange) -> usize {
        let text = match change {
            AccountChange::Create { jid, record }
            | AccountChange::SetCredentials { jid, record } => jid.len() + record.len() * 2,
            AccountChange::Delete { jid } => jid.len(),
        };
        text + 64
    }

    fn outcome(jid: &Jid, o: AccountOutcome) -> Result<Jid, UserError> {
        match o {
            AccountOutcome::Done => Ok(jid.clone()),
            AccountOutcome::AlreadyExists => {
                Err(StorageError::AlreadyExists(jid.to_string()).into())
            }
            AccountOutcome::NotFound => Err(StorageError::NotFound(jid.to_string()).into()),
            AccountOutcome::Failed => Err(UserError::Cluster(
                "the leader could not store the change (see its log)".into(),
            )),
        }
    }

    pub async fn add_replicated(
        &self,
        cluster: &Cluster,
        jid: &str,
        password: &str,
    ) -> Result<Jid, UserError> {
        self.credentials_replicated(cluster, jid, password, true)
            .await
    }

    pub async fn passwd_replicated(
        &self,
        cluster: &Cluster,
        jid: &str,
        password: &str,
    ) -> Result<Jid, UserError> {
        self.credentials_replicated(cluster, jid, password, false)
            .await
    }

    /// Create the account (`create`) or change its password, on every node.
    async fn credentials_replicated(
        &self,
        cluster: &Cluster,
        jid: &str,
        password: &str,
        create: bool,
    ) -> Result<Jid, UserError> {
        let j = self.account_jid(jid)?;
        let record = AccountStore::encode_record(&Self::credentials(password)?)?;
        let jid = j.to_string();
        let change = if create {
            AccountChange::Create { jid, record }
        } else {
            AccountChange::SetCredentials { jid, record }
        };
        let o = Self::replicate(cluster, vec![change]).await?;
        Self::outcome(&j, o[0])
    }

    pub async fn del_replicated(&self, cluster: &Cluster, jid: &str) -> Result<Jid, UserError> {
        let j = self.account_jid(jid)?;
        let o =
            Self::replicate(cluster, vec![AccountChange::Delete { jid: j.to_string() }]).await?;
        Self::outcome(&j, o[0])
    }

    pub async fn import_replicated(
        &self,
        cluster: &Cluster,
        users: &[(String, String)],
        shared_salt: bool,
    ) -> Result<ImportOutcome, UserError> {
        let mut accounts = Vec::with_capacity(users.len());
        for (jid, password) in users {
            accounts.push((self.account_jid(jid)?.to_string(), password.clone()));
        }
        // Key derivation is CPU-bound: keep it off the node's async threads.
        let changes = tokio::task::spawn_blocking(move || {
            let passwords: Vec<&str> = accounts.iter().map(|(_, p)| p.as_str()).collect();
            let credentials = credentials_all(&passwords, shared_salt)?;
            accounts
                .iter()
                .zip(credentials)
                .map(|((jid, _), c)| {
                    Ok(AccountChange::Create {
                        jid: jid.clone(),
                        record: AccountStore::encode_record(&c)?,
                    })
                })
                .collect::<Result<Vec<_>, UserError>>()
        })
        .await
        .map_err(|e| UserError::KeyDerivation(e.to_string()))??;
        let mut outcome = ImportOutcome::default();
        for o in Self::replicate(cluster, changes).await? {
            match o {
                AccountOutcome::Done => outcome.created += 1,
                AccountOutcome::AlreadyExists => outcome.existing += 1,
                _ => return Err(UserError::Cluster("an account could not be stored".into())),
            }
        }
        Ok(outcome)
    }

    pub fn list(&self) -> Result<Vec<String>, UserError> {
        Ok(self.accounts.list()?)
    }
}

/// SCRAM credentials for many passwords. With `shared_salt`, each distinct password is
/// derived once and its credentials (salt included) reused.
fn credentials_all(
    passwords: &[&str],
    shared_salt: bool,
) -> Result<Vec<StoredCredentials>, UserError> {
    if !shared_salt {
        return derive_on_all_cores(passwords);
    }
    let mut distinct = passwords.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let derived: std::collections::HashMap<&str, StoredCredentials> = distinct
        .iter()
        .copied()
        .zip(derive_on_all_cores(&distinct)?)
        .collect();
    passwords
        .iter()
        .map(|p| {
            derived
                .get(p)
                .cloned()
                .ok_or_else(|| UserError::KeyDerivation("a password was not derived".into()))
        })
        .collect()
}

/// Derive on every core this process may use (its CPU affinity counts: a node pinned to one
/// CPU stays on it).
fn derive_on_all_cores(passwords: &[&str]) -> Result<Vec<StoredCredentials>, UserError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, passwords.len().max(1));
    let chunk = passwords.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = passwords
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|p| UserAdmin::credentials(p))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(passwords.len());
        for w in workers {
            match w.join() {
                Ok(part) => all.extend(part?),
                Err(_) => return Err(UserError::KeyDerivation("a worker thread panicked".into())),
            }
        }
        Ok(all)
    })
}
