//! Account administration shared by the CLI (node stopped) and the admin endpoint (node
//! running): JIDs are validated and prepared, passwords become SCRAM credentials.

use proto::jid::Jid;
use proto::sasl::{StoredCredentials, DEFAULT_ITERATIONS};
use storage::{AccountStore, StorageError};

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
}

pub struct UserAdmin {
    accounts: AccountStore,
    domains: Vec<String>,
}

impl UserAdmin {
    pub fn new(accounts: AccountStore, domains: Vec<String>) -> Self {
        UserAdmin { accounts, domains }
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

    pub fn del(&self, jid: &str) -> Result<Jid, UserError> {
        let j = self.account_jid(jid)?;
        self.accounts.delete(&j.to_string())?;
        Ok(j)
    }

    pub fn list(&self) -> Result<Vec<String>, UserError> {
        Ok(self.accounts.list()?)
    }
}
