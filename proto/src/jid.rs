//! JIDs prepared and compared per RFC 7622 (PRECIS): UsernameCaseMapped for the localpart,
//! OpaqueString for the resourcepart, and the domain lower-cased with a trailing dot removed.
//! The `jid` crate does RFC 6122 stringprep, so it is not used for canonical forms.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use precis_core::profile::Profile;
use precis_profiles::{OpaqueString, UsernameCaseMapped};

/// RFC 7622 §3.1: every part is 1..=1023 octets once prepared.
const MAX_PART: usize = 1023;
/// Inputs longer than this cannot prepare to ≤1023 bytes (a character shrinks at most 4:1
/// through width mapping and normalisation), so they are refused before any work is done.
const MAX_RAW_PART: usize = 4 * MAX_PART;

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
        if s.is_empty() {
            return Err(JidError::Empty);
        }
        // RFC 7622 §3.1: the resourcepart starts at the first '/', the localpart ends at the
        // first '@' before it.
        let (rest, resource) = match s.split_once('/') {
            Some((rest, res)) => (rest, Some(res)),
            None => (s, None),
        };
        let (local, domain) = match rest.split_once('@') {
            Some((local, domain)) => (Some(local), domain),
            None => (None, rest),
        };
        Jid::from_parts(local, domain, resource)
    }
    /// Build from parts, preparing each.
    pub fn from_parts(
        local: Option<&str>,
        domain: &str,
        resource: Option<&str>,
    ) -> Result<Jid, JidError> {
        Ok(Jid {
            local: local.map(prepare_localpart).transpose()?,
            domain: prepare_domain(domain)?,
            resource: resource.map(prepare_resource).transpose()?,
        })
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
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }
    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }
    /// This bare JID with `resource` (prepared).
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        Ok(Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: Some(prepare_resource(resource)?),
        })
    }
}

impl Jid {
    /// The JID as text (`local@domain/resource`), what `to_string` gives, allocated once at
    /// its length: the formatter grows its string piece by piece, a reallocation or more
    /// per part, and the router writes a JID into nearly every stanza it passes on.
    pub fn text(&self) -> String {
        use fmt::Write;
        let len = self.local.as_ref().map_or(0, |l| l.len() + 1)
            + self.domain.len()
            + self.resource.as_ref().map_or(0, |r| r.len() + 1);
        let mut out = String::with_capacity(len);
        // Display is the one definition of the layout; with room for all of it, writing
        // never reallocates (and into a String it cannot fail).
        let _ = write!(out, "{self}");
        out
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(local) = &self.local {
            f.write_str(local)?;
            f.write_str("@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(resource) = &self.resource {
            f.write_str("/")?;
            f.write_str(resource)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

/// Prepare a localpart alone (UsernameCaseMapped), e.g. for account names.
pub fn prepare_localpart(s: &str) -> Result<String, JidError> {
    if s.len() > MAX_RAW_PART {
        return Err(JidError::TooLong);
    }
    // Printable ASCII is the common case and PRECIS maps it by lower-casing alone; skip the
    // Unicode tables for it (the routing hot path parses every `to`).
    let prepared = if !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Cow::<str>::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Owned(
            stable(|x| UsernameCaseMapped::new().enforce(x).ok(), s)
                .ok_or(JidError::InvalidLocal)?,
        )
    };
    // RFC 7622 §3.3.1: characters that would make the JID ambiguous are excluded.
    if prepared.contains(['"', '&', '\'', '/', ':', '<', '>', '@']) {
        return Err(JidError::InvalidLocal);
    }
    checked_len(prepared)
}

/// Prepare a resourcepart alone (OpaqueString, case preserved).
pub fn prepare_resource(s: &str) -> Result<String, JidError> {
    if s.len() > MAX_RAW_PART {
        return Err(JidError::TooLong);
    }
    // OpaqueString leaves printable ASCII (space included) unchanged.
    let prepared = if !s.is_empty() && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            stable(|x| OpaqueString::new().enforce(x).ok(), s).ok_or(JidError::InvalidResource)?,
        )
    };
    checked_len(prepared)
}

/// Prepare a domainpart alone.
///
/// IP literals (`127.0.0.1`, `[::1]`) come out in canonical form. Names are split into labels
/// (also at the full stops U+3002, U+FF0E, U+FF61); ASCII labels are lower-cased and must consist
/// of letters, digits, `-` and `_`; other labels are width-mapped, case-mapped and NFC-normalised
/// (UsernameCaseMapped), an approximation of IDNA2008 without Punycode conversion.
pub fn prepare_domain(s: &str) -> Result<String, JidError> {
    let once = prepare_domain_once(s)?;
    // Mapping can turn a label into something the rules for its new form refuse (a fullwidth
    // `４` becomes `4`, and an all-digit name must be an IPv4 address): the prepared domain
    // must prepare to itself (RFC 8264 §7), found by the `jid` fuzz target.
    if once != s && prepare_domain_once(&once).ok().as_ref() != Some(&once) {
        return Err(JidError::InvalidDomain);
    }
    Ok(once)
}

fn prepare_domain_once(s: &str) -> Result<String, JidError> {
    if s.len() > MAX_RAW_PART {
        return Err(JidError::TooLong);
    }
    // RFC 7622 §3.2: one trailing dot is removed before any other processing.
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(JidError::InvalidDomain);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let addr: Ipv6Addr = inner.parse().map_err(|_| JidError::InvalidDomain)?;
        return Ok(format!("[{addr}]"));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let addr: Ipv4Addr = s.parse().map_err(|_| JidError::InvalidDomain)?;
        return Ok(addr.to_string());
    }
    let mut out = String::with_capacity(s.len());
    for label in s.split(['.', '\u{3002}', '\u{FF0E}', '\u{FF61}']) {
        if !out.is_empty() {
            out.push('.');
        }
        if label.is_empty() {
            return Err(JidError::InvalidDomain);
        }
        if label.is_ascii() {
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(JidError::InvalidDomain);
            }
            out.extend(label.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            let prepared = stable(|x| UsernameCaseMapped::new().enforce(x).ok(), label)
                .ok_or(JidError::InvalidDomain)?;
            // Mapping may not produce ASCII punctuation (e.g. a fullwidth '@').
            if prepared
                .chars()
                .any(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(JidError::InvalidDomain);
            }
            out.push_str(&prepared);
        }
    }
    checked_len(Cow::Owned(out))
}

/// Apply a PRECIS profile and insist that the result is stable: RFC 8264 §7 requires
/// enforcement to be idempotent, and a string whose normalisation creates a disallowed
/// character (`=` followed by U+0338 composes to `≠`, a symbol) would otherwise yield a JID
/// that does not parse again (found by the `jid` fuzz target). Such input is refused.
fn stable(enforce: impl Fn(&str) -> Option<Cow<'_, str>>, s: &str) -> Option<String> {
    let once = enforce(s)?.into_owned();
    let twice = enforce(&once)?;
    (twice == once.as_str()).then_some(once)
}

fn checked_len(s: Cow<'_, str>) -> Result<String, JidError> {
    if s.is_empty() {
        Err(JidError::Empty)
    } else if s.len() > MAX_PART {
        Err(JidError::TooLong)
    } else {
        Ok(s.into_owned())
    }
}

/// JIDs travel between cluster nodes as their string form, prepared again on arrival.
impl serde::Serialize for Jid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Jid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Jid, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Jid::parse(&s).map_err(serde::de::Error::custom)
    }
}
