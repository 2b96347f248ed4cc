//! Per-account state of a module, hosted by the account shards (`im::AccountShard`). A
//! module that keeps something per account (vcard-temp, private XML, last activity, and
//! later PEP, MAM, push registrations) implements [`AccountState`] and returns it from
//! [`Module::account`](super::Module::account). The shard that owns the account calls it for
//! the IQs in its namespaces addressed to the account's bare JID (RFC 6120 §10.3.3: the
//! server answers on the account's behalf) and when the account's availability changes.
//!
//! The module reads its own store through [`AccountCtx`] and states its writes there; the
//! shard commits them (through the shard's Raft log in a cluster) before the reply goes out,
//! so a write a client was told succeeded is durable. The writes are one generic
//! [`UserDataWrite::Module`] carrying the module's payload: the log, the snapshots, account
//! deletion and the NodeLink wire need no code of the module's own.

use proto::element::Element;
use proto::error::StanzaErrorCondition as Cond;
use proto::im::Subscription;
use proto::jid::Jid;
use storage::{ModuleStore, RosterItem, RosterStore, UserDataWrite};

use super::IqOutcome;
use crate::config::ImLimits;

/// The per-account half of a module.
pub trait AccountState: Send + Sync {
    /// IQ payload namespaces this state answers on an account's bare JID.
    fn namespaces(&self) -> &'static [&'static str];
    /// Answer an IQ get/set addressed to the account (the shard already refused senders the
    /// account blocks). Writes stated in `ctx` are committed only if the outcome is a result.
    fn iq(&self, ctx: &mut AccountCtx<'_>, req: &AccountIq<'_>) -> IqOutcome;
    /// The account got its first available resource (`available`) or lost its last one;
    /// `presence` is the presence that did it.
    fn availability(&self, _ctx: &mut AccountCtx<'_>, _presence: &Element, _available: bool) {}
    /// Whether [`contact_available`](AccountState::contact_available) does anything: the
    /// shards then tell the account of each contact's (and its own resources') initial
    /// presence, which costs a message per contact at every login.
    fn wants_contact_available(&self) -> bool {
        false
    }
    /// `who` (a full JID: one of the account's own resources, or a local contact's resource
    /// subscribed to the account's presence per the contact's roster) sent its initial
    /// presence (RFC 6121 §4.2); e.g. PEP sends it the last published items (XEP-0163 §4.3.2).
    fn contact_available(&self, _ctx: &mut AccountCtx<'_>, _who: &Jid) {}
    /// What a session of the account starts with, read when it binds (with its filters)
    /// and given to the session hooks as [`AccountSeeds`](crate::modules::AccountSeeds):
    /// e.g. PEP's avatar hash for presence (XEP-0398 §4).
    fn session_seed(&self, _ctx: &AccountCtx<'_>) -> Option<String> {
        None
    }
    /// Another module (`module`) answered an IQ set of the account's own with a result; what
    /// this hook writes is committed with that module's writes, as one batch. It is how one
    /// module keeps its view of data another module also serves in step: PEP's bookmarks
    /// with private XML (XEP-0402 §3) and its avatar with the vCard (XEP-0398 §3).
    fn after_own_set(
        &self,
        _ctx: &mut AccountCtx<'_>,
        _module: &'static str,
        _req: &AccountIq<'_>,
    ) {
    }
}

/// An IQ get/set addressed to an account's bare JID.
pub struct AccountIq<'a> {
    /// The sender's full JID.
    pub from: &'a Jid,
    /// Whether the sender is the account itself (any of its resources).
    pub own: bool,
    /// The whole IQ.
    pub iq: &'a Element,
}

impl AccountIq<'_> {
    pub fn is_set(&self) -> bool {
        self.iq.attr("type") == Some("set")
    }
}

/// What a module sees of the account while the shard serves it: its own entries, the
/// account's roster (for presence authorisation), the account caps, and a place to state
/// writes and the cap that refused a request.
pub struct AccountCtx<'a> {
    module: &'static str,
    account: &'a Jid,
    user: String,
    store: &'a ModuleStore,
    rosters: &'a RosterStore,
    limits: &'a ImLimits,
    online: bool,
    writes: Vec<UserDataWrite>,
    cap: Option<(&'static str, usize)>,
    outbox: Vec<Element>,
    app_error: Option<Element>,
    legacy_code: bool,
}

impl<'a> AccountCtx<'a> {
    pub(crate) fn new(
        module: &'static str,
        account: &'a Jid,
        store: &'a ModuleStore,
        rosters: &'a RosterStore,
        limits: &'a ImLimits,
        online: bool,
    ) -> Self {
        AccountCtx {
            module,
            account,
            user: account.to_string(),
            store,
            rosters,
            limits,
            online,
            writes: Vec::new(),
            cap: None,
            outbox: Vec::new(),
            app_error: None,
            legacy_code: false,
        }
    }

    /// The account (bare JID).
    pub fn account(&self) -> &Jid {
        self.account
    }

    /// The module's payload stored for the account under `key`.
    pub fn get(&self, key: &str) -> Result<Option<String>, Cond> {
        self.store
            .get(self.module, &self.user, key)
            .map_err(|_| Cond::InternalServerError)
    }

    /// What another module stores for the account under `key` (see
    /// [`AccountState::after_own_set`]: the views two modules keep of the same data).
    pub fn get_in(&self, module: &str, key: &str) -> Result<Option<String>, Cond> {
        self.store
            .get(module, &self.user, key)
            .map_err(|_| Cond::InternalServerError)
    }

    /// Store `payload` under `key` in another module's entries for the account, committed
    /// with this module's writes.
    pub fn put_in(&mut self, module: &str, key: impl Into<String>, payload: Option<String>) {
        self.writes.push(UserDataWrite::Module {
            module: module.to_string(),
            user: self.user.clone(),
            key: key.into(),
            payload,
        });
    }

    /// Every (key, payload) the module stores for the account.
    pub fn entries(&self) -> Result<Vec<(String, String)>, Cond> {
        self.store
            .entries(self.module, &self.user)
            .map_err(|_| Cond::InternalServerError)
    }

    /// Store `payload` under `key` (`None`: remove it), committed before the reply.
    pub fn put(&mut self, key: impl Into<String>, payload: Option<String>) {
        self.put_in(self.module, key, payload);
    }

    /// The store of every module (a module that keeps more than a few entries per account,
    /// as the archive does, reads its own trees through `storage`'s functions for them).
    pub fn module_store(&self) -> &ModuleStore {
        self.store
    }

    /// The per-account caps (`[im]`).
    pub fn limits(&self) -> &ImLimits {
        self.limits
    }

    /// Whether the account has an available resource.
    pub fn online(&self) -> bool {
        self.online
    }

    /// Whether `from` may see the account's presence: the account itself, or a contact with
    /// a subscription from or both in its roster (RFC 6121 §3).
    pub fn may_see_presence(&self, from: &Jid) -> Result<bool, Cond> {
        let requester = from.to_bare();
        if requester == *self.account {
            return Ok(true);
        }
        let item = self
            .rosters
            .item(&self.user, &requester.to_string())
            .map_err(|_| Cond::InternalServerError)?;
        Ok(item.as_ref().is_some_and(|i| {
            Subscription::parse(&i.subscription).is_some_and(Subscription::has_from)
        }))
    }

    /// The cap `key` of `[im]` (limit `limit`) refused the request: the error names it
    /// (RFC 6120 §8.3.2) and the shard logs it.
    pub fn over_cap(&mut self, key: &'static str, limit: usize) {
        self.cap = Some((key, limit));
    }

    /// The account's roster item for `contact` (a bare JID), if any.
    pub fn roster_item(&self, contact: &Jid) -> Result<Option<RosterItem>, Cond> {
        self.rosters
            .item(&self.user, &contact.to_bare().to_string())
            .map_err(|_| Cond::InternalServerError)
    }

    /// The account's whole roster.
    pub fn roster(&self) -> Result<Vec<RosterItem>, Cond> {
        self.rosters
            .get(&self.user)
            .map(|(_, items)| items)
            .map_err(|_| Cond::InternalServerError)
    }

    /// Route `stanza` (its `to` set; `from` becomes the account's bare JID) once the writes
    /// are committed, and only if the request succeeded: notifications (XEP-0060 §7.1.2).
    pub fn send(&mut self, mut stanza: Element) {
        stanza.set_attr("from", self.user.clone());
        self.outbox.push(stanza);
    }

    /// The application-specific error condition (RFC 6120 §8.3.3 last paragraph, e.g.
    /// XEP-0060's `pubsub#errors`) that goes with the condition of an `IqOutcome::Error`.
    pub fn app_error(&mut self, el: Element) {
        self.app_error = Some(el);
    }

    /// Give the `<error/>` of an `IqOutcome::Error` XEP-0086's numeric `code` attribute as
    /// well, for clients that read it instead of the condition (see
    /// `StanzaErrorCondition::legacy_code`).
    pub fn legacy_error_code(&mut self) {
        self.legacy_code = true;
    }

    /// The writes stated and the cap that refused the request, for the shard.
    pub(crate) fn finish(self) -> AccountEffects {
        AccountEffects {
            writes: self.writes,
            cap: self.cap,
            outbox: self.outbox,
            app_error: self.app_error,
            legacy_code: self.legacy_code,
        }
    }
}

/// What a module's account state asked for, for the shard to carry out.
pub(crate) struct AccountEffects {
    pub writes: Vec<UserDataWrite>,
    pub cap: Option<(&'static str, usize)>,
    pub outbox: Vec<Element>,
    pub app_error: Option<Element>,
    pub legacy_code: bool,
}
