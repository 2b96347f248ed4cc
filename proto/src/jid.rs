//! JIDs prepared and compared per RFC 7622 (PRECIS): UsernameCaseMapped for the localpart,
//! OpaqueString for the resourcepart, and the domain lower-cased with a trailing dot removed.
//! The `jid` crate does RFC 6122 stringprep, so it is not used for canonical forms.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    #[error("empty JID")]
    Empty,
    #[error("invalid localpart")]
    InvalidLocal,
    #[error("invalid domainpart")]
    InvalidDomain,
    #[error("invalid resourcepart")]
    InvalidResource,
    #[error("part longer than 1023 bytes")]
    TooLong,
}

/// A prepared (canonical) JID. Two `Jid`s are equal iff they denote the same entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

impl Jid {
    /// Parse and prepare `localpart@domainpart/resourcepart`.
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        todo!()
    }
    /// Build from parts, preparing each.
    pub fn from_parts(
        local: Option<&str>,
        domain: &str,
        resource: Option<&str>,
    ) -> Result<Jid, JidError> {
        todo!()
    }
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }
    /// The same JID without resource.
    pub fn to_bare(&self) -> Jid {
        Jid { local: self.local.clone(), domain: self.domain.clone(), resource: None }
    }
    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }
    /// This bare JID with `resource` (prepared).
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        todo!()
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// Prepare a localpart alone (UsernameCaseMapped), e.g. for account names.
pub fn prepare_localpart(s: &str) -> Result<String, JidError> {
    todo!()
}

/// Prepare a domainpart alone.
pub fn prepare_domain(s: &str) -> Result<String, JidError> {
    todo!()
}
