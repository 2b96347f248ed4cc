//! Server-side SASL over rsasl: SCRAM-SHA-1/256/512 (and -PLUS), PLAIN over TLS.
//!
//! Accounts hold SCRAM credentials only (salt, iterations, StoredKey, ServerKey per hash), never
//! a password. An unknown user is given a fake credential derived from a server secret and the
//! prepared username, so its salt and iteration count are stable (and, since a cluster's nodes
//! share the secret, the same on every node) and its failure is the same `not-authorized` a
//! wrong password gets; PLAIN does the same PBKDF2 for it as for a real account: nobody can
//! enumerate accounts.

use std::sync::Arc;

use rand::RngCore;
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::scram::tools::derive_keys;
use rsasl::prelude::*;
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, ValidationError};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::jid;

/// PBKDF2 rounds for newly derived credentials (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;

/// The hash a SCRAM credential belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
    Sha512,
}

impl ScramHash {
    fn of_mechanism(mechanism: &str) -> Option<ScramHash> {
        let base = mechanism.strip_suffix("-PLUS").unwrap_or(mechanism);
        match base {
            "SCRAM-SHA-1" => Some(ScramHash::Sha1),
            "SCRAM-SHA-256" => Some(ScramHash::Sha256),
            "SCRAM-SHA-512" => Some(ScramHash::Sha512),
            _ => None,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            ScramHash::Sha1 => b"sha1",
            ScramHash::Sha256 => b"sha256",
            ScramHash::Sha512 => b"sha512",
        }
    }
}

/// One SCRAM credential (RFC 5802 §3): what the server needs to verify a proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// The credentials kept for an account, one per supported hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    pub sha1: ScramCredential,
    pub sha256: ScramCredential,
    pub sha512: ScramCredential,
}

impl StoredCredentials {
    /// Derive fresh credentials (new random salts) from a password.
    /// The password is prepared with the PRECIS OpaqueString profile (RFC 8265 §4.2).
    pub fn derive(password: &str, iterations: u32) -> Result<StoredCredentials, SaslError> {
        let prepared = prepare_password(password)?;
        let mut rng = rand::thread_rng();
        let mut salt = || {
            let mut s = vec![0u8; SALT_LEN];
            rng.fill_bytes(&mut s);
            s
        };
        Ok(StoredCredentials {
            sha1: derive_one(ScramHash::Sha1, prepared.as_bytes(), iterations, salt()),
            sha256: derive_one(ScramHash::Sha256, prepared.as_bytes(), iterations, salt()),
            sha512: derive_one(ScramHash::Sha512, prepared.as_bytes(), iterations, salt()),
        })
    }

    pub fn for_hash(&self, hash: ScramHash) -> &ScramCredential {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
            ScramHash::Sha512 => &self.sha512,
        }
    }

    /// Check a plaintext password (PLAIN) against the SHA-256 credential.
    pub fn verify_password(&self, password: &str) -> bool {
        verify_plain(&self.sha256, password)
    }
}

/// Check a plaintext password against one SHA-256 credential: one PBKDF2 at the credential's
/// iteration count, whatever the password. A password that fails PRECIS preparation is still
/// hashed (as sent), so a malformed password costs what a wrong one does.
fn verify_plain(c: &ScramCredential, password: &str) -> bool {
    let (prepared, valid) = match prepare_password(password) {
        Ok(p) => (p, true),
        Err(_) => (password.to_string(), false),
    };
    let candidate = derive_one(
        ScramHash::Sha256,
        prepared.as_bytes(),
        c.iterations,
        c.salt.clone(),
    );
    valid
        && constant_time_eq(&candidate.stored_key, &c.stored_key)
        && constant_time_eq(&candidate.server_key, &c.server_key)
}

fn prepare_password(password: &str) -> Result<String, SaslError> {
    use precis_core::profile::Profile;
    precis_profiles::OpaqueString::new()
        .prepare(password)
        .map(|p| p.into_owned())
        .map_err(|_| SaslError::InvalidPassword)
}

#[cfg(test)]
thread_local! {
    /// The (hash, iterations) of every PBKDF2 run on this thread, so tests can check that
    /// unknown and known users cost the same.
    static PBKDF2_RUNS: std::cell::RefCell<Vec<(ScramHash, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn derive_one(hash: ScramHash, password: &[u8], iterations: u32, salt: Vec<u8>) -> ScramCredential {
    #[cfg(test)]
    PBKDF2_RUNS.with(|r| r.borrow_mut().push((hash, iterations)));
    fn keys<D>(
        pbkdf2: ring::pbkdf2::Algorithm,
        password: &[u8],
        iterations: u32,
        salt: &[u8],
    ) -> (Vec<u8>, Vec<u8>)
    where
        D: Digest
            + sha2::digest::core_api::BlockSizeUser
            + sha2::digest::FixedOutputReset
            + Clone
            + Sync,
    {
        // SaltedPassword (RFC 5802 §3); zero rounds is not SCRAM, one is the least.
        let rounds = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
        let mut salted = sha2::digest::Output::<D>::default();
        ring::pbkdf2::derive(pbkdf2, rounds, salt, password, &mut salted);
        let (client_key, server_key) = derive_keys::<D>(salted.as_slice());
        (D::digest(client_key).to_vec(), server_key.to_vec())
    }
    use ring::pbkdf2::{PBKDF2_HMAC_SHA1, PBKDF2_HMAC_SHA256, PBKDF2_HMAC_SHA512};
    let (stored_key, server_key) = match hash {
        ScramHash::Sha1 => keys::<Sha1>(PBKDF2_HMAC_SHA1, password, iterations, &salt),
        ScramHash::Sha256 => keys::<Sha256>(PBKDF2_HMAC_SHA256, password, iterations, &salt),
        ScramHash::Sha512 => keys::<Sha512>(PBKDF2_HMAC_SHA512, password, iterations, &salt),
    };
    ScramCredential {
        iterations,
        salt,
        stored_key,
        server_key,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the authenticator finds an account's credentials. `username` is already a prepared
/// localpart; return `None` for an unknown account.
pub trait CredentialLookup: Send + Sync {
    fn credentials(&self, username: &str) -> Option<StoredCredentials>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("password is not valid under the OpaqueString profile")]
    InvalidPassword,
    #[error("SASL setup failed: {0}")]
    Setup(String),
}

/// RFC 6120 §6.5 failure conditions the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// Channel-binding data of the TLS connection the exchange runs over (RFC 9266, RFC 5929).
#[derive(Debug, Clone, Default)]
pub struct ChannelBinding {
    pub tls_exporter: Option<Vec<u8>>,
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl ChannelBinding {
    /// RFC 5929 §4.1 `tls-server-end-point` data for our certificate (DER): its SHA-256 hash
    /// (the hash for SHA-1 and SHA-256 signed certificates alike).
    pub fn server_end_point(cert_der: &[u8]) -> Vec<u8> {
        Sha256::digest(cert_der).to_vec()
    }

    pub fn types(&self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.tls_exporter.is_some() {
            t.push("tls-exporter");
        }
        if self.tls_server_end_point.is_some() {
            t.push("tls-server-end-point");
        }
        t
    }
}

impl ChannelBindingCallback for ChannelBinding {
    fn get_cb_data(&self, cbname: &str) -> Option<&[u8]> {
        match cbname {
            "tls-exporter" => self.tls_exporter.as_deref(),
            "tls-server-end-point" => self.tls_server_end_point.as_deref(),
            _ => None,
        }
    }
}

/// Who authenticated: the prepared localpart.
struct XmppAuth;
impl Validation for XmppAuth {
    type Value = String;
}

struct Callback {
    lookup: Arc<dyn CredentialLookup>,
    secret: [u8; 32],
}

impl Callback {
    fn credential_for(&self, username: &str, hash: ScramHash) -> ScramCredential {
        // The fake credential is derived from the PREPARED name (RFC 8265 §3.3,
        // UsernameCaseMapped), as the real lookup is: `Alice` and `alice` name one account,
        // so they must get one salt whether or not the account exists. A name that does not
        // prepare has no account; it is hashed as sent.
        let prepared = jid::prepare_localpart(username).ok();
        let known = prepared.as_deref().and_then(|u| self.lookup.credentials(u));
        match known {
            Some(creds) => creds.for_hash(hash).clone(),
            None => self.fake_credential(prepared.as_deref().unwrap_or(username), hash),
        }
    }

    /// A stable credential for a name that has no account: the same salt every time, so two
    /// attempts cannot tell it from a real account; keys no password can match.
    fn fake_credential(&self, username: &str, hash: ScramHash) -> ScramCredential {
        let digest = |tag: &[u8]| {
            let mut h = Sha512::new();
            h.update(self.secret);
            h.update(tag);
            h.update(hash.label());
            h.update(username.as_bytes());
            h.finalize().to_vec()
        };
        let len = match hash {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        };
        let salt = digest(b"salt")[..SALT_LEN].to_vec();
        ScramCredential {
            iterations: DEFAULT_ITERATIONS,
            salt,
            stored_key: digest(b"stored")[..len].to_vec(),
            server_key: digest(b"server")[..len].to_vec(),
        }
    }
}

impl SessionCallback for Callback {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let mechanism = session_data.mechanism().mechanism.as_str();
        if let (Some(hash), true) = (
            ScramHash::of_mechanism(mechanism),
            request.is::<ScramStoredPassword>(),
        ) {
            let username = context.get_ref::<AuthId>().unwrap_or_default();
            let c = self.credential_for(username, hash);
            request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                c.iterations,
                &c.salt,
                &c.stored_key,
                &c.server_key,
            ))?;
        }
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let Some(username) = context.get_ref::<AuthId>() else {
            return Ok(());
        };
        let Ok(username) = jid::prepare_localpart(username) else {
            return Ok(());
        };
        // An authzid other than the user's own bare JID would mean acting for someone else,
        // which no account may do.
        if let Some(authzid) = context.get_ref::<AuthzId>() {
            if !authzid.is_empty() && !authzid_matches(authzid, &username) {
                return Ok(());
            }
        }
        let mechanism = session_data.mechanism().mechanism.as_str();
        if mechanism == "PLAIN" {
            let password = context
                .get_ref::<Password>()
                .and_then(|p| std::str::from_utf8(p).ok());
            // An unknown user is checked against its fake credential through the very same
            // code (password preparation, one PBKDF2 of the same hash and iteration count,
            // the comparison), so the time PLAIN takes does not tell whether the account
            // exists. The fake keys match no password, so the check always fails.
            let (credential, known) = match self.lookup.credentials(&username) {
                Some(c) => (c.sha256, true),
                None => (self.fake_credential(&username, ScramHash::Sha256), false),
            };
            let ok = password.is_some_and(|p| verify_plain(&credential, p));
            if !(ok && known) {
                return Ok(());
            }
        } else if self.lookup.credentials(&username).is_none() {
            return Ok(());
        }
        validate.with::<XmppAuth, _>(|| Ok(username))?;
        Ok(())
    }
}

fn authzid_matches(authzid: &str, username: &str) -> bool {
    match jid::Jid::parse(authzid) {
        Ok(j) => j.is_bare() && j.local() == Some(username),
        Err(_) => false,
    }
}

static MECHS_TLS: &[Mechanism] = &[
    rsasl::mechanisms::scram::SCRAM_SHA512_PLUS,
    rsasl::mechanisms::scram::SCRAM_SHA256_PLUS,
    rsasl::mechanisms::scram::SCRAM_SHA1_PLUS,
    rsasl::mechanisms::scram::SCRAM_SHA512,
    rsasl::mechanisms::scram::SCRAM_SHA256,
    rsasl::mechanisms::scram::SCRAM_SHA1,
    rsasl::mechanisms::plain::PLAIN,
];
static MECHS_TLS_NO_BINDING: &[Mechanism] = &[
    rsasl::mechanisms::scram::SCRAM_SHA512,
    rsasl::mechanisms::scram::SCRAM_SHA256,
    rsasl::mechanisms::scram::SCRAM_SHA1,
    rsasl::mechanisms::plain::PLAIN,
];
static MECHS_PLAINTEXT: &[Mechanism] = &[
    rsasl::mechanisms::scram::SCRAM_SHA512,
    rsasl::mechanisms::scram::SCRAM_SHA256,
    rsasl::mechanisms::scram::SCRAM_SHA1,
];

/// Built once per node; starts one exchange per authentication attempt.
///
/// Which registry an exchange uses matters beyond the offer: a SCRAM server whose registry
/// holds -PLUS treats a client's "y" flag (client can bind, thinks the server cannot) as a
/// downgrade attack, so streams that are not offered -PLUS use a registry without it.
pub struct Authenticator {
    /// TLS with channel-binding data: -PLUS, SCRAM and PLAIN.
    tls_binding: Arc<SASLConfig>,
    /// TLS without channel-binding data we can offer: SCRAM and PLAIN.
    tls_no_binding: Arc<SASLConfig>,
    /// Unencrypted (only when TLS is not required): SCRAM only.
    plaintext: Arc<SASLConfig>,
}

impl Authenticator {
    /// `secret` seeds fake credentials for unknown users; keep it stable across restarts so the
    /// fake salt of a name does not change.
    pub fn new(lookup: Arc<dyn CredentialLookup>, secret: [u8; 32]) -> Result<Self, SaslError> {
        let build = |mechs: &'static [Mechanism]| {
            SASLConfig::builder()
                .with_registry(Registry::with_mechanisms(mechs))
                .with_callback(Callback {
                    lookup: lookup.clone(),
                    secret,
                })
                .map_err(|e| SaslError::Setup(e.to_string()))
        };
        Ok(Authenticator {
            tls_binding: build(MECHS_TLS)?,
            tls_no_binding: build(MECHS_TLS_NO_BINDING)?,
            plaintext: build(MECHS_PLAINTEXT)?,
        })
    }

    fn registry(
        &self,
        secured: bool,
        cb: &ChannelBinding,
    ) -> (&'static [Mechanism], &Arc<SASLConfig>) {
        match (secured, cb.types().is_empty()) {
            (true, false) => (MECHS_TLS, &self.tls_binding),
            (true, true) => (MECHS_TLS_NO_BINDING, &self.tls_no_binding),
            (false, _) => (MECHS_PLAINTEXT, &self.plaintext),
        }
    }

    /// Mechanism names to advertise, strongest first.
    pub fn mechanisms(&self, secured: bool, cb: &ChannelBinding) -> Vec<&'static str> {
        self.registry(secured, cb)
            .0
            .iter()
            .map(|m| m.mechanism.as_str())
            .collect()
    }

    /// Start an exchange for `mechanism`; `cb` is the stream's channel binding (empty when
    /// the stream is not TLS).
    pub fn start(
        &self,
        mechanism: &str,
        secured: bool,
        cb: ChannelBinding,
    ) -> Result<SaslExchange, SaslFailure> {
        if !self.mechanisms(secured, &cb).contains(&mechanism) {
            let needs_tls = MECHS_TLS.iter().any(|m| m.mechanism.as_str() == mechanism);
            return Err(if needs_tls && !secured {
                SaslFailure::EncryptionRequired
            } else {
                SaslFailure::InvalidMechanism
            });
        }
        let config = self.registry(secured, &cb).1.clone();
        let name =
            Mechname::parse(mechanism.as_bytes()).map_err(|_| SaslFailure::InvalidMechanism)?;
        let session = SASLServer::<XmppAuth, ChannelBinding>::with_cb(config, cb)
            .start_suggested(name)
            .map_err(|_| SaslFailure::InvalidMechanism)?;
        Ok(SaslExchange {
            session,
            scram: ScramHash::of_mechanism(mechanism).is_some(),
            messages: 0,
        })
    }
}

/// One authenticator per served domain: the SCRAM username is only a localpart, so the
/// stream's domain picks the account namespace.
#[derive(Default)]
pub struct DomainAuthenticators {
    by_domain: std::collections::HashMap<String, Authenticator>,
}

impl DomainAuthenticators {
    pub fn insert(&mut self, domain: &str, auth: Authenticator) {
        self.by_domain.insert(domain.to_string(), auth);
    }

    pub fn get(&self, domain: &str) -> Option<&Authenticator> {
        self.by_domain.get(domain)
    }
}

/// One SASL exchange in progress.
pub struct SaslExchange {
    session: Session<XmppAuth, ChannelBinding>,
    scram: bool,
    /// Client messages seen so far.
    messages: u32,
}

/// rsasl 2.3's SCRAM parsers slice `field[0..2]` without checking the length, so a short
/// field from a client panics; refuse such messages before they reach it. First message:
/// `gs2-cbind-flag,[a=authzid],n=user,r=nonce[,...]`; final: `c=..,r=..[,..],p=..`.
fn scram_fields_are_sound(message: &[u8], first: bool) -> bool {
    let fields: Vec<&[u8]> = message.split(|b| *b == b',').collect();
    if first {
        fields.len() >= 4
            && (fields[1].is_empty() || fields[1].len() >= 2)
            && fields[2..].iter().all(|f| f.len() >= 2)
    } else {
        fields.len() >= 3 && fields.iter().all(|f| f.len() >= 2)
    }
}

/// What to tell the client after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `<challenge>` with this payload and wait for `<response>`.
    Challenge(Vec<u8>),
    /// Send `<success>` (with additional data, e.g. SCRAM's server-final message).
    Success {
        username: String,
        additional: Option<Vec<u8>>,
    },
    Failure(SaslFailure),
}

impl SaslExchange {
    /// Feed the client's data (`None` when `<auth>` carried no initial response).
    pub fn step(&mut self, input: Option<&[u8]>) -> SaslStep {
        if self.scram && input.is_none() && self.messages == 0 {
            // `<auth/>` without an initial response (RFC 6120 §6.4.2): answer with an empty
            // challenge and wait for client-first in `<response/>`. rsasl's SCRAM server
            // would consume its state on an empty step and panic at the next one.
            return SaslStep::Challenge(Vec::new());
        }
        if let (true, Some(data)) = (self.scram, input) {
            self.messages += 1;
            if self.messages <= 2 && !scram_fields_are_sound(data, self.messages == 1) {
                return SaslStep::Failure(SaslFailure::MalformedRequest);
            }
        }
        let mut out = Vec::new();
        match self.session.step(input, &mut out) {
            Ok(State::Running) => SaslStep::Challenge(out),
            Ok(State::Finished(sent)) => match self.session.validation() {
                Some(username) => SaslStep::Success {
                    username,
                    additional: matches!(sent, MessageSent::Yes).then_some(out),
                },
                None => SaslStep::Failure(SaslFailure::NotAuthorized),
            },
            Err(SessionError::InputDataRequired) => SaslStep::Challenge(Vec::new()),
            Err(_) => SaslStep::Failure(SaslFailure::NotAuthorized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Accounts(HashMap<String, StoredCredentials>);
    impl CredentialLookup for Accounts {
        fn credentials(&self, username: &str) -> Option<StoredCredentials> {
            self.0.get(username).cloned()
        }
    }

    fn authenticator() -> Authenticator {
        let mut m = HashMap::new();
        m.insert(
            "juliet".to_string(),
            StoredCredentials::derive("r0m30myr0m30", DEFAULT_ITERATIONS).unwrap(),
        );
        Authenticator::new(Arc::new(Accounts(m)), [7; 32]).unwrap()
    }

    fn plain(user: &str, pass: &str) -> Vec<u8> {
        format!("\0{user}\0{pass}").into_bytes()
    }

    #[test]
    fn plain_accepts_right_password_only() {
        let a = authenticator();
        let cb = ChannelBinding::default();
        let mut ex = a.start("PLAIN", true, cb.clone()).unwrap();
        assert!(matches!(
            ex.step(Some(&plain("juliet", "r0m30myr0m30"))),
            SaslStep::Success { ref username, .. } if username == "juliet"
        ));
        let mut ex = a.start("PLAIN", true, cb.clone()).unwrap();
        assert_eq!(
            ex.step(Some(&plain("juliet", "wrong"))),
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
        let mut ex = a.start("PLAIN", true, cb).unwrap();
        assert_eq!(
            ex.step(Some(&plain("nobody", "r0m30myr0m30"))),
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
    }

    /// Credentials stored before the switch to ring's PBKDF2 must still verify: the keys
    /// equal those of rsasl's portable implementation, for every hash.
    #[test]
    fn derived_keys_match_the_portable_pbkdf2() {
        use rsasl::mechanisms::scram::tools::hash_password;
        fn portable<D>(password: &[u8], salt: &[u8]) -> (Vec<u8>, Vec<u8>)
        where
            D: Digest
                + sha2::digest::core_api::BlockSizeUser
                + sha2::digest::FixedOutputReset
                + Clone
                + Sync,
        {
            let mut salted = Default::default();
            hash_password::<D>(password, 4096, salt, &mut salted);
            let (client_key, server_key) = derive_keys::<D>(salted.as_slice());
            (D::digest(client_key).to_vec(), server_key.to_vec())
        }
        let salt = b"0123456789abcdef".to_vec();
        for (hash, expected) in [
            (ScramHash::Sha1, portable::<Sha1>(b"pencil", &salt)),
            (ScramHash::Sha256, portable::<Sha256>(b"pencil", &salt)),
            (ScramHash::Sha512, portable::<Sha512>(b"pencil", &salt)),
        ] {
            let c = derive_one(hash, b"pencil", 4096, salt.clone());
            assert_eq!((c.stored_key, c.server_key), expected);
        }
    }

    #[test]
    fn plain_needs_tls() {
        let a = authenticator();
        assert_eq!(
            a.start("PLAIN", false, ChannelBinding::default()).err(),
            Some(SaslFailure::EncryptionRequired)
        );
        assert_eq!(
            a.start("DIGEST-MD5", true, ChannelBinding::default()).err(),
            Some(SaslFailure::InvalidMechanism)
        );
    }

    #[test]
    fn plus_offered_only_with_channel_binding() {
        let a = authenticator();
        let none = a.mechanisms(true, &ChannelBinding::default());
        assert!(!none.iter().any(|m| m.ends_with("-PLUS")));
        let cb = ChannelBinding {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        let with = a.mechanisms(true, &cb);
        assert_eq!(with[0], "SCRAM-SHA-512-PLUS");
        assert!(with.contains(&"PLAIN"));
        let plaintext = a.mechanisms(false, &cb);
        assert!(!plaintext.contains(&"PLAIN"));
    }

    fn scram_login(a: &Authenticator, mech: &str, user: &str, pass: &str) -> SaslStep {
        let cfg = SASLConfig::with_credentials(None, user.into(), pass.into()).unwrap();
        let name = Mechname::parse(mech.as_bytes()).unwrap();
        let mut client = SASLClient::new(cfg).start_suggested(&[name]).unwrap();
        let mut server = a.start(mech, true, ChannelBinding::default()).unwrap();
        let mut to_server = Vec::new();
        client.step(None, &mut to_server).unwrap();
        loop {
            match server.step(Some(&to_server)) {
                SaslStep::Challenge(c) => {
                    to_server.clear();
                    client.step(Some(&c), &mut to_server).unwrap();
                }
                other => return other,
            }
        }
    }

    #[test]
    fn scram_logins_succeed_with_the_right_password_only() {
        let a = authenticator();
        for mech in ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            match scram_login(&a, mech, "juliet", "r0m30myr0m30") {
                SaslStep::Success {
                    username,
                    additional: Some(v),
                } => {
                    assert_eq!(username, "juliet");
                    assert!(
                        v.starts_with(b"v="),
                        "{mech}: server-final carries the verifier"
                    );
                }
                other => panic!("{mech}: {other:?}"),
            }
            assert_eq!(
                scram_login(&a, mech, "juliet", "wrong"),
                SaslStep::Failure(SaslFailure::NotAuthorized),
                "{mech}"
            );
            assert_eq!(
                scram_login(&a, mech, "ghost", "r0m30myr0m30"),
                SaslStep::Failure(SaslFailure::NotAuthorized),
                "{mech}"
            );
        }
    }

    /// A client that can bind but was not offered -PLUS says "y"; that is no downgrade when
    /// the stream really has no binding to offer, so the exchange goes on.
    #[test]
    fn y_flag_accepted_without_channel_binding() {
        let a = authenticator();
        let mut ex = a
            .start("SCRAM-SHA-256", true, ChannelBinding::default())
            .unwrap();
        assert!(matches!(
            ex.step(Some(b"y,,n=juliet,r=abcdefgh")),
            SaslStep::Challenge(_)
        ));
        // With binding offered, "y" is a downgrade and refused.
        let cb = ChannelBinding {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        };
        let mut ex = a.start("SCRAM-SHA-256", true, cb).unwrap();
        assert_eq!(
            ex.step(Some(b"y,,n=juliet,r=abcdefgh")),
            SaslStep::Failure(SaslFailure::NotAuthorized)
        );
    }

    /// Short SCRAM fields (which panic rsasl 2.3's parser) are refused, not passed on. The
    /// first case was found by the c2s_negotiation fuzz target.
    #[test]
    fn malformed_scram_messages_are_refused() {
        let a = authenticator();
        for first in [
            &b"n,,"[..],
            b"n,a,n=x,r=y",
            b"n,,n,r=abc",
            b"n,,n=juliet,r",
            b"",
            b",",
        ] {
            let mut ex = a
                .start("SCRAM-SHA-256", true, ChannelBinding::default())
                .unwrap();
            assert_eq!(
                ex.step(Some(first)),
                SaslStep::Failure(SaslFailure::MalformedRequest),
                "{first:?}"
            );
        }
        for last in [&b"c=biws,r"[..], b"c=biws,r=x,,p=abc", b"c=biws,r=x,p"] {
            let mut ex = a
                .start("SCRAM-SHA-256", true, ChannelBinding::default())
                .unwrap();
            assert!(matches!(
                ex.step(Some(b"n,,n=juliet,r=abcdefgh")),
                SaslStep::Challenge(_)
            ));
            assert_eq!(
                ex.step(Some(last)),
                SaslStep::Failure(SaslFailure::MalformedRequest),
                "{last:?}"
            );
        }
    }

    /// The server-first message of an unknown user carries a salt that is stable across
    /// attempts and the same iteration count a real account has.
    #[test]
    fn unknown_user_gets_stable_fake_salt() {
        let a = authenticator();
        let first = |user: &str| {
            let mut ex = a
                .start("SCRAM-SHA-256", true, ChannelBinding::default())
                .unwrap();
            match ex.step(Some(format!("n,,n={user},r=abcdefgh").as_bytes())) {
                SaslStep::Challenge(c) => String::from_utf8(c).unwrap(),
                other => panic!("expected challenge, got {other:?}"),
            }
        };
        let field = |msg: &str, k: &str| {
            msg.split(',')
                .find_map(|f| f.strip_prefix(k))
                .unwrap()
                .to_string()
        };
        let (u1, u2, real) = (first("ghost"), first("ghost"), first("juliet"));
        assert_eq!(field(&u1, "s="), field(&u2, "s="));
        assert_eq!(field(&u1, "i="), field(&real, "i="));
        // The fake salt follows the prepared name (RFC 8265 §3.3 case mapping), as a real
        // account's lookup does: `Ghost` and `ghost` are one name.
        assert_eq!(field(&first("Ghost"), "s="), field(&u1, "s="));
        assert_eq!(field(&first("GHOST"), "s="), field(&u1, "s="));
        assert_ne!(field(&first("ghost2"), "s="), field(&u1, "s="));
        // A real account's salt is its own under any case of its name.
        assert_eq!(field(&first("Juliet"), "s="), field(&real, "s="));
    }

    /// The fake credential depends on the server secret: nodes of one cluster share it (and
    /// so give an unknown user one salt), other servers do not.
    #[test]
    fn fake_salt_depends_on_the_secret_only() {
        let lookup = Arc::new(Accounts(HashMap::new()));
        let cb = |secret: [u8; 32]| Callback {
            lookup: lookup.clone(),
            secret,
        };
        let salt = |c: &Callback| c.credential_for("ghost", ScramHash::Sha256).salt;
        assert_eq!(salt(&cb([1; 32])), salt(&cb([1; 32])));
        assert_ne!(salt(&cb([1; 32])), salt(&cb([2; 32])));
    }

    /// PLAIN runs exactly one PBKDF2 of the same hash and iteration count for an unknown
    /// user and a known user with a wrong password, and the same work for both when the
    /// password is refused: the time it takes does not reveal whether the account exists.
    #[test]
    fn plain_costs_the_same_for_unknown_and_known_users() {
        let a = authenticator();
        let cb = ChannelBinding::default();
        let runs = |user: &str, pass: &str| {
            PBKDF2_RUNS.with(|r| r.borrow_mut().clear());
            let mut ex = a.start("PLAIN", true, cb.clone()).unwrap();
            let step = ex.step(Some(&plain(user, pass)));
            assert!(matches!(step, SaslStep::Failure(_)), "{user}: {step:?}");
            PBKDF2_RUNS.with(|r| r.borrow().clone())
        };
        let known = runs("juliet", "wrong");
        assert_eq!(known, vec![(ScramHash::Sha256, DEFAULT_ITERATIONS)]);
        assert_eq!(runs("nobody", "wrong"), known);
        assert_eq!(runs("Nobody", "r0m30myr0m30"), known);
        // U+0007 is not allowed in a password: refused (by rsasl's PLAIN before it asks us),
        // at the same cost for both.
        assert_eq!(runs("juliet", "bell\u{7}"), runs("nobody", "bell\u{7}"));
    }
    /// Found by the `sasl` fuzz target: `<auth mechanism='SCRAM-…'/>` without an initial
    /// response, then client-first in `<response/>`, used to panic inside rsasl.
    #[test]
    fn scram_without_initial_response_waits_for_client_first() {
        let a = authenticator();
        let cb = ChannelBinding {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: Some(vec![2; 32]),
        };
        for mech in a.mechanisms(true, &cb) {
            if mech == "PLAIN" {
                continue;
            }
            let mut ex = a.start(mech, true, cb.clone()).unwrap();
            assert_eq!(ex.step(None), SaslStep::Challenge(Vec::new()), "{mech}");
            let flag = if mech.ends_with("-PLUS") {
                "p=tls-exporter"
            } else {
                "n"
            };
            let first = format!("{flag},,n=juliet,r=abcdefghijklmnop");
            match ex.step(Some(first.as_bytes())) {
                SaslStep::Challenge(c) => assert!(c.starts_with(b"r=abcdefghijklmnop"), "{mech}"),
                other => panic!("{mech}: {other:?}"),
            }
            // Garbage after an empty first step is a failure, not a panic.
            let mut ex = a.start(mech, true, cb.clone()).unwrap();
            let _ = ex.step(None);
            assert!(matches!(
                ex.step(Some(b"\x01\x02,,v\xf0,\x84|")),
                SaslStep::Failure(_) | SaslStep::Challenge(_)
            ));
        }
    }
}
