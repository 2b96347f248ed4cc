#!/usr/bin/env python3
"""Writes dashboards/switchboard.json (run it after changing a panel; the JSON is committed so
Grafana can provision it as is). Metric names are the node's /metrics (README, "Monitoring and
the admin API"); tests/integration/test_deploy.py checks that a running cluster exports every
one the dashboard uses."""

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "switchboard-prometheus"}
SEL = 'instance=~"$instance"'


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(pid, title, exprs, x, y, w=12, h=8, unit="short", kind="timeseries", desc=""):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(exprs)],
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"}
    return p


def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


panels = [
    row(1, "Clients", 0),
    panel(2, "C2S sessions", [
        (f"sum by (instance) (switchboard_c2s_sessions{{{SEL}}})", "{{instance}}"),
        (f"sum(switchboard_c2s_sessions{{{SEL}}})", "total"),
    ], 0, 1, desc="Bound client sessions per node."),
    panel(3, "Logins/s by result", [
        (f"sum by (result) (rate(switchboard_logins_total{{{SEL}}}[$__rate_interval]))", "{{result}}"),
    ], 12, 1, unit="reqps", desc="SASL outcomes (all mechanisms)."),
    panel(4, "Login latency", [
        ("histogram_quantile(0.99, sum by (le) "
         f"(rate(switchboard_login_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p99"),
        ("histogram_quantile(0.5, sum by (le) "
         f"(rate(switchboard_login_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p50"),
    ], 0, 9, unit="s", desc="From stream open to bound resource."),
    panel(5, "Bounces/s by reason", [
        (f"sum by (reason) (rate(switchboard_bounces_total{{{SEL}}}[$__rate_interval]))", "{{reason}}"),
    ], 12, 9, unit="reqps"),
    row(6, "Stanzas and routing", 17),
    panel(7, "Stanzas/s in and out", [
        (f"sum by (direction) (rate(switchboard_stanzas_total{{{SEL}}}[$__rate_interval]))", "{{direction}}"),
        (f"sum by (direction, kind) (rate(switchboard_stanzas_total{{{SEL}}}[$__rate_interval]))",
         "{{direction}} {{kind}}"),
    ], 0, 18, unit="reqps"),
    panel(8, "Routed/s: local vs other node", [
        (f"sum by (destination) (rate(switchboard_routed_total{{{SEL}}}[$__rate_interval]))", "{{destination}}"),
    ], 12, 18, unit="reqps",
        desc="Stanzas delivered to a session on this node (local) or sent over a NodeLink (cluster)."),
    row(9, "Cluster", 26),
    panel(10, "Raft term", [
        (f"max by (instance) (switchboard_raft_term{{{SEL}}})", "{{instance}}"),
    ], 0, 27, w=6, kind="stat"),
    panel(11, "Raft leader (as each node sees it)", [
        (f"max by (instance) (switchboard_raft_leader{{{SEL}}})", "{{instance}}"),
    ], 6, 27, w=6, kind="stat", desc="The leader's node id; nodes that disagree for long are partitioned."),
    panel(12, "Members by state", [
        (f"max by (state) (switchboard_cluster_members{{{SEL}}})", "{{state}}"),
    ], 12, 27, w=6, kind="stat"),
    panel(16, "Elections", [
        (f"sum(increase(switchboard_raft_elections_total{{{SEL}}}[1h]))", "last hour"),
    ], 18, 27, w=6, kind="stat", desc="Raft elections started; more than a few per hour is a flapping leader."),
    panel(13, "Raft log: last index, applied index, apply lag", [
        (f"max by (instance) (switchboard_raft_last_log_index{{{SEL}}})", "last log {{instance}}"),
        (f"max by (instance) (switchboard_raft_applied_index{{{SEL}}})", "applied {{instance}}"),
        (f"max by (instance) (switchboard_raft_apply_lag{{{SEL}}})", "lag {{instance}}"),
    ], 0, 35, desc="Entries in the log and applied to the routing table; a growing lag is a slow node."),
    panel(14, "NodeLink RTT p99", [
        ("histogram_quantile(0.99, sum by (le, instance, peer) "
         f"(rate(switchboard_nodelink_rtt_seconds_bucket{{{SEL}}}[$__rate_interval])))",
         "{{instance}} -> {{peer}}"),
    ], 12, 35, w=6, unit="s", desc="Round trip of the NodeLink heartbeat, per peer."),
    panel(15, "NodeLink drops and links up", [
        (f"sum by (instance, peer) (rate(switchboard_nodelink_dropped_total{{{SEL}}}[$__rate_interval]))",
         "dropped/s {{instance}} -> {{peer}}"),
        (f"sum by (instance) (switchboard_nodelink_connected{{{SEL}}})", "links up {{instance}}"),
    ], 18, 35, w=6, desc="Frames dropped because a peer's queue was full; connected links."),
]

dashboard = {
    "uid": "switchboard",
    "title": "Switchboard",
    "tags": ["switchboard", "xmpp"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "editable": False,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [{
        "name": "instance",
        "label": "node",
        "type": "query",
        "datasource": DS,
        "query": {"query": "label_values(switchboard_raft_term, instance)", "refId": "instance"},
        "definition": "label_values(switchboard_raft_term, instance)",
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }]},
    "annotations": {"list": []},
    "panels": panels,
}

out = Path(__file__).resolve().parent / "dashboards" / "switchboard.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")
