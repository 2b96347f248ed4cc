//! Node configuration: built-in defaults, then an optional TOML file, then `SWITCHBOARD_*`
//! environment variables (`__` separates nested keys: `SWITCHBOARD_C2S__LISTEN=...`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Domains served by this node.
    pub domains: Vec<String>,
    /// Where the database, generated certificate and admin socket live.
    pub data_dir: PathBuf,
    pub c2s: C2sSettings,
    pub tls: TlsSettings,
    pub im: ImSettings,
    pub log: LogSettings,
    pub cluster: ClusterSettings,
    pub http: HttpSettings,
    pub s2s: S2sSettings,
    /// `[modules.<name>]`: each extension module's section, as written; `modules::config`
    /// lays it over the modules' declarations and refuses what they do not declare.
    #[serde(default)]
    pub modules: ModulesConfig,
}

/// The `[modules]` table as the operator wrote it (and `SWITCHBOARD_MODULES__*`): one raw
/// table per module name. The modules declare their options and defaults in their own files
/// (`modules::config`), so this layer keeps the tables unparsed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ModulesConfig(BTreeMap<String, Map<String, Value>>);

impl ModulesConfig {
    /// The module names that have a section.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// `name`'s section as written, if the operator wrote one.
    pub fn section(&self, name: &str) -> Option<&Map<String, Value>> {
        self.0.get(name)
    }

    /// A configuration with one section set (tests).
    #[cfg(test)]
    pub fn with(mut self, module: &str, key: &str, value: Value) -> ModulesConfig {
        self.0
            .entry(module.to_string())
            .or_default()
            .insert(key.to_string(), value);
        self
    }
}

/// The operator's HTTP endpoint: /metrics, /healthz, /readyz and the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address; "" disables the endpoint.
    pub listen: String,
    /// Bearer token for /api; required when `listen` is not a loopback address.
    pub token: String,
    /// DNS names /api answers to in `Host`, besides the listen address and loopback names
    /// (anything else is refused as a DNS-rebinding attempt).
    pub allowed_hosts: Vec<String>,
}

/// Clustering (see README, "Cluster"). `node_id = 0` runs a single node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster and never reused; 0 disables clustering.
    pub node_id: u64,
    /// NodeLink listener (Raft and stanzas between nodes).
    pub listen: String,
    /// The NodeLink address peers dial; defaults to `listen`.
    pub advertise: String,
    /// Shared secret every node proves it holds when links come up.
    pub secret: String,
    /// The initial voters, `ID@HOST:PORT`; the lowest id forms the cluster on first start.
    pub members: Vec<String>,
    /// Running members (`ID@HOST:PORT`) a new node asks for admission.
    pub seeds: Vec<String>,
    /// A member silent this long is marked down and its routes purged.
    pub failure_timeout_ms: u64,
    /// Raft heartbeat; elections start after 4–8 heartbeats without a leader.
    pub heartbeat_ms: u64,
    /// IM data shards (each a Raft group); the same on every node, fixed for the
    /// cluster's life.
    pub shards: u16,
    /// Replicas of each shard (at most the number of nodes).
    pub replicas: usize,
    /// A shard snapshots its data and compacts its log after this many entries; a replica
    /// that fell further behind catches up from the snapshot.
    pub shard_snapshot_entries: u64,
    /// The largest NodeLink frame (a request, an answer or a push) a node sends or accepts;
    /// larger ones are refused with an error and the link stays up. Raft batches and snapshot
    /// chunks are cut to fit. The same on every node.
    pub max_frame_bytes: usize,
    /// Inbound NodeLink connections that may be in handshake (not yet proven to hold the
    /// secret) at once; more are closed on accept.
    pub max_pending_handshakes: usize,
}

/// Federation (server-to-server).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S2sSettings {
    /// Inbound listener (STARTTLS offered); empty string disables inbound s2s.
    pub listen: String,
    /// Inbound direct-TLS listener (XEP-0368); empty string disables it.
    pub tls_listen: String,
    /// No authentication or stanzas before TLS, in both directions.
    pub require_tls: bool,
    /// Offer and use Server Dialback (XEP-0220) for peers whose certificate does not verify.
    pub dialback: bool,
    /// Offer and use SASL EXTERNAL (XEP-0178) when a certificate verifies for the domain.
    pub sasl_external: bool,
    /// PEM bundle of the CAs that peer certificates must chain to; empty: the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`) when present.
    pub ca_file: String,
    /// Static routes, `domain = "host:port"` (`tls://host:port` for direct TLS); they take
    /// precedence over DNS.
    pub routes: std::collections::HashMap<String, String>,
    /// An outbound link with no stanza for this long is closed (inbound streams: twice as
    /// long, so that the initiating side normally closes first).
    pub idle_timeout_secs: u64,
    /// TCP connect (and TLS handshake) timeout per target.
    pub connect_timeout_secs: u64,
    /// Time for a stream to authenticate, in either direction.
    pub auth_timeout_secs: u64,
    pub max_stanza_bytes: usize,
    /// Stanzas queued for a link that is coming up; beyond it they bounce.
    pub max_queue: usize,
    /// Bytes (of memory, roughly what the stanzas take as element trees) queued for one
    /// outbound link, while it comes up and once it is up but the peer reads slower than
    /// we send. Beyond it stanzas bounce with `resource-constraint` and the inbound streams
    /// from that domain are not read until the queue drained below half of it.
    pub max_queue_bytes: usize,
    /// Bytes all outbound link queues may hold together; beyond it stanzas to any remote
    /// domain bounce with `resource-constraint`.
    pub max_total_queue_bytes: usize,
    /// Inbound s2s connections open at once, over all s2s listeners; beyond it a new one
    /// gets `<resource-constraint/>` and is closed.
    pub max_inbound_connections: usize,
    /// Inbound s2s connections open at once from one IPv4 address or IPv6 /64; beyond it a
    /// new one gets `<policy-violation/>` and is closed.
    pub max_inbound_connections_per_address: usize,
    /// Dialback verifications one inbound stream may have outstanding; beyond it a
    /// `<db:result/>` is answered with a `resource-constraint` dialback error.
    pub max_pending_dialback: usize,
    /// Outbound links resolving, connecting or negotiating at once; links needed beyond it
    /// wait for a free slot.
    pub max_connecting_links: usize,
    /// Links waiting for a slot (above); beyond it stanzas for yet another domain bounce
    /// with `resource-constraint`.
    pub max_waiting_links: usize,
    /// Remote domains remembered as unreachable (their stanzas bounce for 10 s instead of
    /// redialling); the oldest is forgotten first.
    pub max_failed_links: usize,
    /// Connect to loopback, private, link-local, CGNAT, multicast and other non-global
    /// addresses learned from DNS. Off, such targets are refused, so that remote users
    /// cannot make the node probe its own network; static routes are always allowed.
    pub allow_private_targets: bool,
    /// DNS server for SRV lookups, `ip:port`; empty: the system's (`/etc/resolv.conf`).
    pub nameserver: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImSettings {
    /// Items one roster may hold; a roster set beyond it gets `not-allowed`.
    pub max_roster_items: usize,
    /// Offline messages kept per account; beyond it senders get `service-unavailable`.
    pub max_offline_messages: usize,
    /// Unanswered inbound subscription requests kept per account; beyond it a new request
    /// bounces with `resource-constraint`.
    pub max_pending_subscriptions: usize,
    /// Groups one roster item may name; beyond it the roster set gets `policy-violation`.
    pub max_roster_groups: usize,
    /// Blocklist entries per account (XEP-0191); beyond it `policy-violation`.
    pub max_blocklist_items: usize,
    /// Privacy lists per account (XEP-0016); beyond it `policy-violation`.
    pub max_privacy_lists: usize,
    /// Items per privacy list; beyond it `policy-violation`.
    pub max_privacy_items: usize,
    /// Private XML elements per account (XEP-0049); beyond it `policy-violation`.
    pub max_private_entries: usize,
    /// Bytes of private XML per account, all elements together; beyond it `policy-violation`.
    pub max_private_bytes: usize,
    /// Bytes of one account's vCard (XEP-0054), serialised; beyond it `not-acceptable`.
    pub max_vcard_bytes: usize,
    /// Account IQs (roster, blocking, privacy, private, vCard, last) one session may have
    /// waiting for the account's shard; beyond it `resource-constraint` (type `wait`).
    pub max_iqs_in_flight: usize,
    /// Bytes (stanza XML) of offline messages kept per account; beyond it senders get
    /// `service-unavailable` too.
    pub max_offline_bytes: u64,
    /// account shards (`AccountShard` actors) (each owns the IM state of the accounts that hash to it).
    pub shards: usize,
}

/// Limits on what an account can accumulate: everything a client or a remote peer can make
/// the node store for an account is bounded by one of these (`[im]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct ImLimits {
    pub max_roster_items: usize,
    pub max_offline_messages: usize,
    pub max_pending_subscriptions: usize,
    pub max_roster_groups: usize,
    pub max_blocklist_items: usize,
    pub max_privacy_lists: usize,
    pub max_privacy_items: usize,
    pub max_private_entries: usize,
    pub max_private_bytes: usize,
    pub max_vcard_bytes: usize,
    /// Bytes (stored XML) of offline messages kept per account (`im.max_offline_bytes`).
    pub max_offline_bytes: u64,
}

impl ImLimits {
    pub fn from_settings(im: &ImSettings) -> ImLimits {
        ImLimits {
            max_roster_items: im.max_roster_items,
            max_offline_messages: im.max_offline_messages,
            max_offline_bytes: im.max_offline_bytes,
            max_pending_subscriptions: im.max_pending_subscriptions,
            max_roster_groups: im.max_roster_groups,
            max_blocklist_items: im.max_blocklist_items,
            max_privacy_lists: im.max_privacy_lists,
            max_privacy_items: im.max_privacy_items,
            max_private_entries: im.max_private_entries,
            max_private_bytes: im.max_private_bytes,
            max_vcard_bytes: im.max_vcard_bytes,
        }
    }
}

/// The configuration's defaults (benches and tests).
impl Default for ImLimits {
    fn default() -> ImLimits {
        ImLimits {
            max_roster_items: 1000,
            max_offline_messages: 500,
            max_offline_bytes: 10 << 20,
            max_pending_subscriptions: 1000,
            max_roster_groups: 32,
            max_blocklist_items: 1000,
            max_privacy_lists: 50,
            max_privacy_items: 250,
            max_private_entries: 100,
            max_private_bytes: 1024 * 1024,
            max_vcard_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2sSettings {
    /// Plain TCP listener; STARTTLS is offered there.
    pub listen: String,
    /// Direct-TLS listener (XEP-0368); empty string disables it.
    pub tls_listen: String,
    pub require_tls: bool,
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub auth_timeout_secs: u64,
    pub max_auth_failures: u32,
    /// Bytes queued for one client before it is disconnected as too slow.
    pub send_queue_max_bytes: usize,
    pub resource_conflict: ResourceConflict,
    /// Connections accepted at once, over all c2s listeners.
    pub max_connections: usize,
    /// Connections not yet authenticated at once, node-wide; beyond it new ones are refused
    /// with `<resource-constraint/>`.
    pub max_unauthenticated_connections: usize,
    /// Connections not yet authenticated at once from one address (IPv6: one /64); beyond
    /// it new ones are refused with `<policy-violation/>`.
    pub max_unauthenticated_per_address: usize,
    /// Largest stanza before authentication (STARTTLS and SASL need a few hundred bytes).
    pub max_unauthenticated_stanza_bytes: usize,
    /// A bound client silent this long gets an XEP-0199 ping (or, under stream
    /// management, an `<r/>`); 0 disables.
    pub idle_ping_secs: u64,
    /// No answer (nor anything else) within this long after the ping: the connection is
    /// dead and ends (a resumable session detaches).
    pub idle_ping_timeout_secs: u64,
    /// TCP keepalive probes after this long without traffic (then every 10 s, 3 of them),
    /// so that a peer that vanished is noticed by the kernel too; 0 disables.
    pub tcp_keepalive_secs: u64,
}

/// What happens when a client binds a resource that is already online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceConflict {
    /// The new session wins; the old one gets a `<conflict/>` stream error.
    Replace,
    /// The new bind is refused with a `conflict` stanza error.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain; when unset a self-signed one is generated under data_dir/tls.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter, e.g. `info` or `switchboard=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

const DEFAULTS: &str = r#"
domains = ["localhost"]
data_dir = "./data"

[c2s]
listen = "0.0.0.0:5222"
tls_listen = "0.0.0.0:5223"
require_tls = true
max_stanza_bytes = 262144
max_depth = 32
auth_timeout_secs = 30
max_auth_failures = 3
send_queue_max_bytes = 1048576
resource_conflict = "replace"
max_connections = 100000
max_unauthenticated_connections = 10000
max_unauthenticated_per_address = 500
max_unauthenticated_stanza_bytes = 16384
idle_ping_secs = 300
idle_ping_timeout_secs = 60
tcp_keepalive_secs = 120

[tls]

[im]
max_roster_items = 1000
max_offline_messages = 500
max_pending_subscriptions = 1000
max_roster_groups = 32
max_blocklist_items = 1000
max_privacy_lists = 50
max_privacy_items = 250
max_private_entries = 100
max_private_bytes = 1048576
max_vcard_bytes = 65536
max_iqs_in_flight = 32
max_offline_bytes = 10485760
shards = 4

[log]
level = "info,openraft=warn"
format = "text"

[http]
listen = "127.0.0.1:9090"
token = ""
allowed_hosts = []

[cluster]
node_id = 0
listen = ""
advertise = ""
secret = ""
members = []
seeds = []
failure_timeout_ms = 3000
heartbeat_ms = 150
shards = 16
replicas = 3
shard_snapshot_entries = 2000
max_frame_bytes = 16777216
max_pending_handshakes = 64
[s2s]
listen = "0.0.0.0:5269"
tls_listen = ""
require_tls = true
dialback = true
sasl_external = true
ca_file = ""
idle_timeout_secs = 600
connect_timeout_secs = 10
auth_timeout_secs = 30
max_stanza_bytes = 262144
max_queue = 1000
max_queue_bytes = 4194304
max_total_queue_bytes = 67108864
max_inbound_connections = 1000
max_inbound_connections_per_address = 50
max_pending_dialback = 32
max_connecting_links = 64
max_waiting_links = 1024
max_failed_links = 10000
allow_private_targets = false
nameserver = ""

[s2s.routes]
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Top-level keys of [`Settings`]; environment variables under other names
/// (`SWITCHBOARD_CONFIG`, or a test harness's `SWITCHBOARD_BIN`) are not settings.
const TOP_LEVEL_KEYS: &[&str] = &[
    "domains", "data_dir", "c2s", "tls", "im", "log", "cluster", "http", "s2s",
];

/// The `SWITCHBOARD_*` variables that name a setting. A misspelt key inside a known section
/// (`SWITCHBOARD_C2S__LISEN`) still reaches the loader and is refused there.
fn settings_env(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
    vars.filter(|(k, _)| {
        k.strip_prefix("SWITCHBOARD_").is_some_and(|rest| {
            let top = rest
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            TOP_LEVEL_KEYS.contains(&top.as_str())
        })
    })
    .collect()
}

/// The smallest `cluster.max_frame_bytes`: a stanza (c2s stanza limit) and its envelope, and
/// a Raft entry carrying one, must fit in a frame.
const MIN_CLUSTER_FRAME_BYTES: usize = 1024 * 1024;

impl ClusterSettings {
    pub fn enabled(&self) -> bool {
        self.node_id != 0
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_empty() {
            return invalid("cluster.listen must be set when cluster.node_id is".into());
        }
        if self.advertise.is_empty() {
            self.advertise = self.listen.clone();
        }
        if self.secret.len() < 16 {
            return invalid("cluster.secret must be at least 16 characters".into());
        }
        for m in self.members.iter().chain(&self.seeds) {
            if parse_member(m).is_none() {
                return invalid(format!("cluster member {m:?} is not ID@HOST:PORT"));
            }
        }
        if self.members.is_empty() && self.seeds.is_empty() {
            return invalid("cluster.members or cluster.seeds must name the cluster".into());
        }
        if self.shard_snapshot_entries < 8 {
            return invalid("cluster.shard_snapshot_entries must be at least 8".into());
        }
        if !(MIN_CLUSTER_FRAME_BYTES..=u32::MAX as usize).contains(&self.max_frame_bytes) {
            return invalid(format!(
                "cluster.max_frame_bytes must be between {MIN_CLUSTER_FRAME_BYTES} and {}",
                u32::MAX
            ));
        }
        if self.max_pending_handshakes == 0 {
            return invalid("cluster.max_pending_handshakes must be at least 1".into());
        }
        if self.shards == 0 || self.replicas == 0 {
            return invalid("cluster.shards and cluster.replicas must be at least 1".into());
        }
        if self.heartbeat_ms == 0 || self.failure_timeout_ms < self.heartbeat_ms * 4 {
            return invalid(
                "cluster.failure_timeout_ms must be at least 4 heartbeats (cluster.heartbeat_ms)"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Settings {
    /// Load defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("SWITCHBOARD")
                .source(Some(settings_env(std::env::vars())))
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("domains")
                .with_list_parse_key("cluster.members")
                .with_list_parse_key("cluster.seeds")
                .with_list_parse_key("http.allowed_hosts")
                .try_parsing(true),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(ConfigError::Invalid(
                "`domains` must name at least one domain".into(),
            ));
        }
        let mut prepared = Vec::new();
        for d in &self.domains {
            let p = proto::jid::prepare_domain(d)
                .map_err(|e| ConfigError::Invalid(format!("domain {d:?}: {e}")))?;
            prepared.push(p);
        }
        self.domains = prepared;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "tls.cert and tls.key must be set together".into(),
            ));
        }
        if self.c2s.max_stanza_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "c2s.max_stanza_bytes must be at least 4096".into(),
            ));
        }
        if self.c2s.max_depth < 4 {
            return Err(ConfigError::Invalid(
                "c2s.max_depth must be at least 4".into(),
            ));
        }
        if self.c2s.max_unauthenticated_stanza_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "c2s.max_unauthenticated_stanza_bytes must be at least 1024".into(),
            ));
        }
        if self.c2s.max_unauthenticated_connections == 0
            || self.c2s.max_unauthenticated_per_address == 0
        {
            return Err(ConfigError::Invalid(
                "c2s.max_unauthenticated_connections and c2s.max_unauthenticated_per_address must be at least 1".into(),
            ));
        }
        if self.c2s.max_auth_failures == 0 {
            return Err(ConfigError::Invalid(
                "c2s.max_auth_failures must be at least 1".into(),
            ));
        }
        if self.im.max_offline_bytes == 0 {
            return Err(ConfigError::Invalid(
                "im.max_offline_bytes must be at least 1 (use max_offline_messages = 0 to store nothing)".into(),
            ));
        }
        if self.im.shards == 0 {
            return Err(ConfigError::Invalid("im.shards must be at least 1".into()));
        }
        let im = &self.im;
        for (key, value) in [
            ("max_pending_subscriptions", im.max_pending_subscriptions),
            ("max_roster_groups", im.max_roster_groups),
            ("max_blocklist_items", im.max_blocklist_items),
            ("max_privacy_lists", im.max_privacy_lists),
            ("max_privacy_items", im.max_privacy_items),
            ("max_private_entries", im.max_private_entries),
            ("max_iqs_in_flight", im.max_iqs_in_flight),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("im.{key} must be at least 1")));
            }
        }
        // Room for a bookmark list and a small avatar-less vCard.
        for (key, value) in [
            ("max_private_bytes", im.max_private_bytes),
            ("max_vcard_bytes", im.max_vcard_bytes),
        ] {
            if value < 1024 {
                return Err(ConfigError::Invalid(format!(
                    "im.{key} must be at least 1024"
                )));
            }
        }
        self.cluster.validate()?;
        if !self.http.listen.is_empty()
            && !is_loopback(&self.http.listen)
            && self.http.token.is_empty()
        {
            return Err(ConfigError::Invalid(format!(
                "http.listen {} is not a loopback address: set http.token to protect the admin API",
                self.http.listen
            )));
        }
        if let Some(bad) = self
            .http
            .allowed_hosts
            .iter()
            .find(|h| h.is_empty() || h.contains([':', '/', ' ', '[']))
        {
            return Err(ConfigError::Invalid(format!(
                "http.allowed_hosts: {bad:?} is not a DNS name (no port, no scheme)"
            )));
        }
        if !self.s2s.dialback && !self.s2s.sasl_external {
            return Err(ConfigError::Invalid(
                "s2s.dialback and s2s.sasl_external cannot both be off".into(),
            ));
        }
        // A stanza crosses the cluster inside a frame (a push, a Raft entry, a reply that
        // carries several): leave it room.
        let stanza = self.c2s.max_stanza_bytes.max(self.s2s.max_stanza_bytes);
        if self.cluster.enabled() && self.cluster.max_frame_bytes < stanza.saturating_mul(4) {
            return Err(ConfigError::Invalid(format!(
                "cluster.max_frame_bytes must be at least 4 times the largest max_stanza_bytes ({stanza})"
            )));
        }
        if self.s2s.max_stanza_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "s2s.max_stanza_bytes must be at least 4096".into(),
            ));
        }
        for (key, value) in [
            ("s2s.max_queue", self.s2s.max_queue),
            (
                "s2s.max_inbound_connections",
                self.s2s.max_inbound_connections,
            ),
            (
                "s2s.max_inbound_connections_per_address",
                self.s2s.max_inbound_connections_per_address,
            ),
            ("s2s.max_pending_dialback", self.s2s.max_pending_dialback),
            ("s2s.max_connecting_links", self.s2s.max_connecting_links),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if self.s2s.max_queue_bytes < self.s2s.max_stanza_bytes {
            return Err(ConfigError::Invalid(
                "s2s.max_queue_bytes must be at least s2s.max_stanza_bytes".into(),
            ));
        }
        if self.s2s.max_total_queue_bytes < self.s2s.max_queue_bytes {
            return Err(ConfigError::Invalid(
                "s2s.max_total_queue_bytes must be at least s2s.max_queue_bytes".into(),
            ));
        }
        if !self.s2s.nameserver.is_empty()
            && self.s2s.nameserver.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "s2s.nameserver {:?} is not \"ip:port\"",
                self.s2s.nameserver
            )));
        }
        let mut routes = std::collections::HashMap::new();
        for (domain, target) in &self.s2s.routes {
            let d = proto::jid::prepare_domain(domain)
                .map_err(|e| ConfigError::Invalid(format!("s2s.routes: domain {domain:?}: {e}")))?;
            let hostport = target.strip_prefix("tls://").unwrap_or(target);
            let valid = hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "s2s.routes: {domain:?} = {target:?} is not \"host:port\""
                )));
            }
            routes.insert(d, target.clone());
        }
        self.s2s.routes = routes;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log.format must be \"text\" or \"json\"".into(),
            ));
        }
        Ok(())
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }
}

/// A cluster member as `cluster.members` and `cluster.seeds` name it: `ID@HOST:PORT`.
pub fn parse_member(s: &str) -> Option<(u64, String)> {
    let (id, addr) = s.split_once('@')?;
    Some((id.trim().parse().ok()?, addr.trim().to_string()))
}

/// Whether `http.listen` is on loopback (then the API may run without a token).
fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_setting_variables_are_read_from_the_environment() {
        let vars = [
            ("SWITCHBOARD_C2S__LISTEN", "127.0.0.1:1"),
            ("SWITCHBOARD_DATA_DIR", "/x"),
            ("SWITCHBOARD_CONFIG", "/etc/switchboard.toml"),
            ("SWITCHBOARD_BIN", "target/debug/switchboard"),
            ("OTHER", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let mut kept: Vec<String> = settings_env(vars.into_iter()).into_keys().collect();
        kept.sort();
        assert_eq!(
            kept,
            vec!["SWITCHBOARD_C2S__LISTEN", "SWITCHBOARD_DATA_DIR"]
        );
    }

    #[test]
    fn defaults_need_no_file() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.domains, vec!["localhost".to_string()]);
        assert_eq!(s.c2s.listen, "0.0.0.0:5222");
        assert!(s.c2s.require_tls);
        assert_eq!(s.c2s.resource_conflict, ResourceConflict::Replace);
        assert_eq!(s.s2s.listen, "0.0.0.0:5269");
        assert!(s.s2s.require_tls && s.s2s.dialback && s.s2s.sasl_external);
        assert!(s.s2s.routes.is_empty());
        assert_eq!(s.im.max_pending_subscriptions, 1000);
        assert_eq!(s.im.max_iqs_in_flight, 32);
        assert_eq!(s.http.allowed_hosts, Vec::<String>::new());
        assert!(!s.s2s.allow_private_targets);
        assert_eq!(s.s2s.max_pending_dialback, 32);
    }

    #[test]
    fn s2s_limits_are_validated() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-s2s-lim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s2s.toml");
        for bad in [
            "max_inbound_connections = 0",
            "max_pending_dialback = 0",
            "max_connecting_links = 0",
            "max_queue_bytes = 4096",
            "max_total_queue_bytes = 1048576",
        ] {
            std::fs::write(&f, format!("[s2s]\n{bad}\n")).unwrap();
            assert!(Settings::load(Some(&f)).is_err(), "{bad}");
        }
        std::fs::write(&f, "[s2s]\nmax_waiting_links = 0\nmax_failed_links = 0\n").unwrap();
        assert!(Settings::load(Some(&f)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn s2s_routes_keep_dotted_domains() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-s2s-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s2s.toml");
        std::fs::write(
            &f,
            "[s2s]\nidle_timeout_secs = 5\n[s2s.routes]\n\"Prosody.Example\" = \"127.0.0.2:5269\"\n\"b.example\" = \"tls://[::1]:5270\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&f)).unwrap();
        assert_eq!(s.s2s.idle_timeout_secs, 5);
        assert_eq!(
            s.s2s.routes.get("prosody.example").map(String::as_str),
            Some("127.0.0.2:5269")
        );
        assert_eq!(
            s.s2s.routes.get("b.example").map(String::as_str),
            Some("tls://[::1]:5270")
        );
        std::fs::write(&f, "[s2s.routes]\n\"x.example\" = \"nowhere\"\n").unwrap();
        assert!(Settings::load(Some(&f)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.toml");
        std::fs::write(
            &f,
            "domains = [\"Example.COM.\"]\n[c2s]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&f)).unwrap();
        assert_eq!(s.domains, vec!["example.com".to_string()]);
        assert_eq!(s.c2s.listen, "127.0.0.1:1");
        assert_eq!(s.c2s.tls_listen, "0.0.0.0:5223");
        std::fs::write(&f, "[c2s]\nlisen = \"x\"\n").unwrap();
        assert!(Settings::load(Some(&f)).is_err());
        assert!(Settings::load(Some(&dir.join("missing.toml"))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn offline_byte_quota_has_a_default_and_refuses_zero() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.im.max_offline_bytes, 10 << 20);
        let dir = std::env::temp_dir().join(format!("sb-cfg-offline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("o.toml");
        std::fs::write(&f, "[im]\nmax_offline_bytes = 4096\n").unwrap();
        assert_eq!(Settings::load(Some(&f)).unwrap().im.max_offline_bytes, 4096);
        std::fs::write(&f, "[im]\nmax_offline_bytes = 0\n").unwrap();
        assert!(Settings::load(Some(&f)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
