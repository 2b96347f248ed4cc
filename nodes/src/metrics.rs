//! Prometheus metrics of the node. Counters are statics so that the hot path bumps an atomic
//! and never looks anything up (the labelled children every stanza bumps are looked up once,
//! [`HOT`]); gauges that mirror other state (Raft, links, storage) are
//! read when `/metrics` is scraped (`gather`). Labels take only values from fixed sets (never
//! a JID, never a client-chosen string).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub c2s_connections: IntGaugeVec,
    pub c2s_refused: IntCounterVec,
    pub c2s_sessions: IntGauge,
    pub logins: IntCounterVec,
    pub login_duration: Histogram,
    pub stanzas: IntCounterVec,
    pub routed: IntCounterVec,
    pub bounces: IntCounterVec,
    pub bytes: IntCounterVec,
    pub routing_duration: HistogramVec,
    pub raft_term: IntGauge,
    pub raft_leader: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_apply_lag: IntGauge,
    pub raft_voters: IntGauge,
    pub raft_elections: IntCounter,
    pub cluster_members: IntGaugeVec,
    pub cluster_members_marked_down: IntCounterVec,
    pub nodelink_connected: IntGaugeVec,
    pub nodelink_dropped: IntGaugeVec,
    pub nodelink_rtt: HistogramVec,
    pub storage_bytes: IntGauge,
    pub s2s_links: IntGaugeVec,
    pub c2s_queued_bytes: IntGauge,
    pub nodelink_queue: IntGaugeVec,
    pub s2s_authentications: IntCounterVec,
    pub s2s_limited: IntCounterVec,
    pub shard_replicas: IntGaugeVec,
    pub shard_writes: IntCounterVec,
    pub shard_snapshots: IntCounterVec,
    pub sm_sessions: IntCounterVec,
    pub sm_stanzas: IntCounterVec,
    pub mam_archived: IntCounterVec,
    pub mam_not_archived: IntCounterVec,
    pub mam_queries: IntCounterVec,
    pub multicast: IntCounterVec,
    pub mam_query_duration: HistogramVec,
    pub mam_deleted: IntCounterVec,
    pub mam_rows: IntGauge,
    pub mam_pending_bytes: IntGauge,
    pub muc_rooms: IntCounterVec,
    pub muc_occupants: IntCounterVec,
    pub muc_messages: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
        // Names and labels are constants of this file: a failure is a bug caught by tests.
        panic!("metric {name}: {e}")
    });
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(h.clone()));
    h
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let latency = vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5,
    ];
    let login_duration = Histogram::with_opts(
        HistogramOpts::new(
            "switchboard_login_duration_seconds",
            "From TCP accept to a bound resource (TLS, SASL and bind), successful logins.",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
    )
    .unwrap_or_else(|e| panic!("metric: {e}"));
    let _ = r.register(Box::new(login_duration.clone()));
    let raft_elections = IntCounter::new(
        "switchboard_raft_elections_total",
        "Raft terms this node has seen start (each new term is an election).",
    )
    .unwrap_or_else(|e| panic!("metric: {e}"));
    let _ = r.register(Box::new(raft_elections.clone()));
    Metrics {
        c2s_connections: gauge_vec(
            &r,
            "switchboard_c2s_connections",
            "Open client connections by state (connected: not yet authenticated; authenticated; bound) and transport.",
            &["state", "tls"],
        ),
        c2s_refused: counter(
            &r,
            "switchboard_c2s_connections_refused_total",
            "Client connections refused at accept by an admission cap (node: c2s.max_unauthenticated_connections; address: c2s.max_unauthenticated_per_address).",
            &["cap"],
        ),
        c2s_sessions: gauge(
            &r,
            "switchboard_c2s_sessions",
            "Bound client sessions (resources) on this node.",
        ),
        logins: counter(
            &r,
            "switchboard_logins_total",
            "SASL authentications by result, mechanism and (for failures) the SASL condition.",
            &["result", "mechanism", "reason"],
        ),
        login_duration,
        stanzas: counter(
            &r,
            "switchboard_stanzas_total",
            "Stanzas from clients (in) and to clients (out) by kind and type.",
            &["direction", "kind", "type"],
        ),
        routed: counter(
            &r,
            "switchboard_routed_total",
            "Stanzas the router delivered, by destination: local session, another cluster node, another server (s2s), offline storage.",
            &["destination"],
        ),
        bounces: counter(
            &r,
            "switchboard_bounces_total",
            "Stanzas answered with an error or dropped by the router, by condition.",
            &["reason"],
        ),
        sm_sessions: counter(
            &r,
            "switchboard_sm_sessions_total",
            "Stream management (XEP-0198) sessions by event: enabled, detached, resumed_local, \
             resumed_remote, resume_failed, expired, ended_unresumed.",
            &["event"],
        ),
        sm_stanzas: counter(
            &r,
            "switchboard_sm_stanzas_total",
            "Unacknowledged stanzas: retransmitted after a resumption, or handled at a \
             session's end without resumption (rerouted to the account, bounced, dropped).",
            &["outcome"],
        ),
        muc_rooms: counter(
            &r,
            "switchboard_muc_rooms_total",
            "Group chat rooms (XEP-0045) created and destroyed by the shards this node leads, \
             by event (created, destroyed).",
            &["event"],
        ),
        muc_occupants: counter(
            &r,
            "switchboard_muc_occupants_total",
            "Occupants that entered and left rooms served by this node, by event (joined, \
             left).",
            &["event"],
        ),
        muc_messages: counter(
            &r,
            "switchboard_muc_messages_total",
            "Groupchat messages reflected by rooms served by this node (received), and the \
             stanzas the rooms sent (delivered: one per occupant and reflection, presence \
             and errors included).",
            &["kind"],
        ),
        mam_archived: counter(
            &r,
            "switchboard_mam_archived_total",
            "Messages written to an archive (XEP-0313) by this node's account shards, by \
             direction (incoming, outgoing; groupchat: a room's archive).",
            &["direction"],
        ),
        mam_not_archived: counter(
            &r,
            "switchboard_mam_not_archived_total",
            "Archivable messages not archived, by reason: prefs (the account's preferences), \
             overload (the node's archive queue was full), failed (the write failed).",
            &["reason"],
        ),
        multicast: counter(
            &r,
            "switchboard_multicast_total",
            "XEP-0033 per-domain stanzas: sent (one stanza to a remote domain for several \
             contacts), contacts_sent (the contacts those named), received (stanzas with \
             addresses to our domains), copies (what they were copied to), refused (too many \
             or bad addresses), not_subscribed (a remote presence's addressee not subscribed \
             to the sender: not delivered).",
            &["event"],
        ),
        mam_queries: counter(
            &r,
            "switchboard_mam_queries_total",
            "Archive requests answered, by kind (query, prefs, metadata, form) and outcome \
             (ok, error).",
            &["kind", "outcome"],
        ),
        mam_query_duration: histogram_vec(
            &r,
            "switchboard_mam_query_duration_seconds",
            "Time to read one page of an archive, by backend.",
            &["backend"],
            latency.clone(),
        ),
        mam_deleted: counter(
            &r,
            "switchboard_mam_deleted_total",
            "Archived messages deleted, by reason: retention (age), cap (per-account cap), \
             purge (operator's `mam purge`).",
            &["reason"],
        ),
        mam_rows: gauge(
            &r,
            "switchboard_mam_rows",
            "Messages in the PostgreSQL archive (the planner's estimate, refreshed with the \
             retention pass; 0 with the embedded archive).",
        ),
        mam_pending_bytes: gauge(
            &r,
            "switchboard_mam_pending_bytes",
            "Archive writes this node has queued or in flight to the account shards, in bytes.",
        ),
        bytes: counter(
            &r,
            "switchboard_c2s_bytes_total",
            "Bytes read from (in) and written to (out) client connections.",
            &["direction"],
        ),
        routing_duration: histogram_vec(
            &r,
            "switchboard_routing_duration_seconds",
            "Time the router spends on one stanza, by stanza kind.",
            &["kind"],
            latency.clone(),
        ),
        shard_replicas: gauge_vec(
            &r,
            "switchboard_shard_replicas",
            "IM data shards this node holds a replica of (role: leader or follower).",
            &["role"],
        ),
        shard_writes: counter(
            &r,
            "switchboard_shard_writes_total",
            "IM data writes this node led (committed, refused by the data, or unavailable: no quorum or moved).",
            &["result"],
        ),
        shard_snapshots: counter(
            &r,
            "switchboard_shard_snapshots_total",
            "IM data shard snapshots this node built or installed from a leader.",
            &["event"],
        ),
        raft_term: gauge(&r, "switchboard_raft_term", "Current Raft term."),
        raft_leader: gauge(
            &r,
            "switchboard_raft_leader",
            "Node id of the current Raft leader (0: none known).",
        ),
        raft_is_leader: gauge(&r, "switchboard_raft_is_leader", "1 if this node is the leader."),
        raft_last_log_index: gauge(
            &r,
            "switchboard_raft_last_log_index",
            "Index of the last entry in this node's Raft log.",
        ),
        raft_applied_index: gauge(
            &r,
            "switchboard_raft_applied_index",
            "Index of the last entry applied to the routing table.",
        ),
        raft_apply_lag: gauge(
            &r,
            "switchboard_raft_apply_lag",
            "Entries in the log not yet applied.",
        ),
        raft_voters: gauge(&r, "switchboard_raft_voters", "Voters in the membership."),
        raft_elections,
        cluster_members: gauge_vec(
            &r,
            "switchboard_cluster_members",
            "Cluster members by state in the routing table.",
            &["state"],
        ),
        cluster_members_marked_down: counter(
            &r,
            "switchboard_cluster_members_marked_down_total",
            "Members this node, as the leader, marked down for staying silent.",
            &["node"],
        ),
        nodelink_connected: gauge_vec(
            &r,
            "switchboard_nodelink_connected",
            "1 while the outbound NodeLink to a peer is up.",
            &["peer"],
        ),
        nodelink_dropped: gauge_vec(
            &r,
            "switchboard_nodelink_dropped_total",
            "Pushes dropped because the link to a peer was down or its queue full.",
            &["peer"],
        ),
        nodelink_rtt: histogram_vec(
            &r,
            "switchboard_nodelink_rtt_seconds",
            "Round-trip time of NodeLink pings, by peer.",
            &["peer"],
            latency,
        ),
        storage_bytes: gauge(
            &r,
            "switchboard_storage_bytes",
            "Size of the node's database on disk.",
        ),
        c2s_queued_bytes: gauge(
            &r,
            "switchboard_c2s_queued_bytes",
            "Bytes serialised for clients and not yet written (all send queues of the node).",
        ),
        nodelink_queue: gauge_vec(
            &r,
            "switchboard_nodelink_queue_frames",
            "Frames waiting in the outbound NodeLink queue to a peer.",
            &["peer"],
        ),
        s2s_links: gauge_vec(
            &r,
            "switchboard_s2s_links",
            "Federation links by direction (outbound, inbound) and state (negotiating, authenticated).",
            &["direction", "state"],
        ),
        s2s_authentications: counter(
            &r,
            "switchboard_s2s_authentications_total",
            "Federation peers authenticated, by direction and method (dialback, SASL EXTERNAL).",
            &["direction", "method"],
        ),
        s2s_limited: counter(
            &r,
            "switchboard_s2s_limited_total",
            "Federation limits that tripped, by limit: inbound_connections, inbound_connections_per_address, pending_dialback, link_queue_bytes, link_queue_stanzas, total_queue_bytes, connecting_links, waiting_links, private_target, failed_links_evicted.",
            &["limit"],
        ),
        registry: r,
    }
});

/// The stanza kind label: one of a fixed set.
pub fn kind_label(name: &str) -> &'static str {
    match name {
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        _ => "other",
    }
}

/// The stanza type label: the RFC's values, anything else is "other".
pub fn type_label(kind: &str, ty: Option<&str>) -> &'static str {
    match (kind, ty) {
        (_, None) => "none",
        (_, Some("error")) => "error",
        ("message", Some("chat")) => "chat",
        ("message", Some("normal")) => "normal",
        ("message", Some("groupchat")) => "groupchat",
        ("message", Some("headline")) => "headline",
        ("presence", Some("unavailable")) => "unavailable",
        ("presence", Some("subscribe")) => "subscribe",
        ("presence", Some("subscribed")) => "subscribed",
        ("presence", Some("unsubscribe")) => "unsubscribe",
        ("presence", Some("unsubscribed")) => "unsubscribed",
        ("presence", Some("probe")) => "probe",
        ("iq", Some("get")) => "get",
        ("iq", Some("set")) => "set",
        ("iq", Some("result")) => "result",
        _ => "other",
    }
}

/// The children of labelled metrics that nearly every stanza bumps, looked up once: a
/// lookup hashes the label values under a lock, and a chat message otherwise took six.
pub struct Hot {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub routed_local: IntCounter,
    chat_in: IntCounter,
    chat_out: IntCounter,
    presence_in: IntCounter,
    presence_out: IntCounter,
    routing_message: Histogram,
    routing_presence: Histogram,
}

pub static HOT: LazyLock<Hot> = LazyLock::new(|| {
    let m = &*METRICS;
    Hot {
        bytes_in: m.bytes.with_label_values(&["in"]),
        bytes_out: m.bytes.with_label_values(&["out"]),
        routed_local: m.routed.with_label_values(&["local"]),
        chat_in: m.stanzas.with_label_values(&["in", "message", "chat"]),
        chat_out: m.stanzas.with_label_values(&["out", "message", "chat"]),
        presence_in: m.stanzas.with_label_values(&["in", "presence", "none"]),
        presence_out: m.stanzas.with_label_values(&["out", "presence", "none"]),
        routing_message: m.routing_duration.with_label_values(&["message"]),
        routing_presence: m.routing_duration.with_label_values(&["presence"]),
    }
});

/// Count a stanza to or from a client.
pub fn stanza(direction: &'static str, el: &proto::element::Element) {
    let kind = kind_label(&el.name);
    let ty = type_label(kind, el.attr("type"));
    let hot = &*HOT;
    match (direction, kind, ty) {
        ("in", "message", "chat") => hot.chat_in.inc(),
        ("out", "message", "chat") => hot.chat_out.inc(),
        ("in", "presence", "none") => hot.presence_in.inc(),
        ("out", "presence", "none") => hot.presence_out.inc(),
        _ => METRICS
            .stanzas
            .with_label_values(&[direction, kind, ty])
            .inc(),
    }
}

/// Record the router's time on one stanza of `kind` ([`kind_label`]).
pub fn routing_duration(kind: &'static str, secs: f64) {
    match kind {
        "message" => HOT.routing_message.observe(secs),
        "presence" => HOT.routing_presence.observe(secs),
        _ => METRICS
            .routing_duration
            .with_label_values(&[kind])
            .observe(secs),
    }
}

/// The exposition, after refreshing the gauges that mirror other state.
pub fn render(refresh: impl FnOnce(&Metrics)) -> String {
    let m = &*METRICS;
    refresh(m);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Keeps a two-label gauge right for one connection or link as it moves through its
/// states: counted under its current labels, and taken out when dropped.
pub struct GaugeGuard {
    gauge: &'static IntGaugeVec,
    labels: [&'static str; 2],
}

impl GaugeGuard {
    pub fn new(gauge: &'static IntGaugeVec, labels: [&'static str; 2]) -> Self {
        gauge.with_label_values(&labels).inc();
        GaugeGuard { gauge, labels }
    }

    /// Change label `i` (in the order the gauge declares them).
    pub fn set(&mut self, i: usize, value: &'static str) {
        if self.labels[i] == value {
            return;
        }
        self.gauge.with_label_values(&self.labels).dec();
        self.labels[i] = value;
        self.gauge.with_label_values(&self.labels).inc();
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.with_label_values(&self.labels).dec();
    }
}

/// A c2s connection's entry in `switchboard_c2s_connections{state, tls}`.
pub fn c2s_connection(tls: &'static str) -> GaugeGuard {
    GaugeGuard::new(&METRICS.c2s_connections, ["connected", tls])
}

/// An s2s link's entry in `switchboard_s2s_links{direction, state}`.
pub fn s2s_link(direction: &'static str) -> GaugeGuard {
    GaugeGuard::new(&METRICS.s2s_links, [direction, "negotiating"])
}
