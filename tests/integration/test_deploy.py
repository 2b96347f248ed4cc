"""The deployment artefacts under deploy/, exercised for real.

- The container image (deploy/build-image.sh: FROM scratch, no base image pulled) and the
  three-node docker-compose cluster: the cluster forms, clients on sb1 and sb2 exchange
  messages through the published loopback ports, sb3 is stopped and sb1/sb2 keep routing,
  /readyz on sb1 says ready while sb3's port no longer answers. Skipped only when docker
  is missing or its daemon unreachable.
- The Helm chart (deploy/helm/switchboard): linted and rendered with Helm's own Go SDK
  (PyPI helm-python-sdk), the manifests validated against the Kubernetes OpenAPI schemas
  (PyPI kubernetes-validate). Skipped when those packages are not installed
  (deploy/requirements.txt).

Every container, volume and network is removed at the end (`docker compose down -v`), and
the image, built under a tag unique to the run, is deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SWITCHBOARD_BIN, Account, free_ports
from rawxmpp import login, q, xml_str

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
CHART = DEPLOY / "helm" / "switchboard"
NODES = ("sb1", "sb2", "sb3")
DOCKER_TIMEOUT = 120


# ---------------------------------------------------------------------------
# docker helpers
# ---------------------------------------------------------------------------


def _docker_unusable() -> str | None:
    """Why docker cannot be used here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        r = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer `docker info` within 30 s"
    if r.returncode != 0:
        return f"the Docker daemon is unreachable: {r.stderr.strip() or r.stdout.strip()}"
    return None


def _compose_command() -> list[str]:
    """`docker compose` (v2 plugin) if present, else `docker-compose` (v1.28+)."""
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if r.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("docker works but neither `docker compose` nor `docker-compose` is installed")


def _run(cmd: list[str], *, input: str | None = None, env=None, timeout=DOCKER_TIMEOUT, check=True):
    try:
        r = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {timeout} s")
    if check and r.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited with {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        )
    return r


@dataclass
class Node:
    """One compose service, as rawxmpp.login() wants a server."""

    name: str
    c2s_port: int
    tls_port: int
    http_port: int
    cafile: str = ""
    container: str = ""
    domain: str = "localhost"


class Deployment:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        run_id = secrets.token_hex(4)
        self.project = f"sbdeploy{run_id}"
        self.image = f"switchboard:test-{run_id}"
        self.compose = _compose_command()
        ports = free_ports(9)
        self.nodes = {
            name: Node(name, ports[3 * i], ports[3 * i + 1], ports[3 * i + 2])
            for i, name in enumerate(NODES)
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        self.env.update(
            SWITCHBOARD_IMAGE=self.image,
            SB_CLUSTER_SECRET=secrets.token_hex(16),
            SB_HTTP_TOKEN=secrets.token_hex(16),
            SB_FAILURE_TIMEOUT_MS="2000",
        )
        for i, name in enumerate(NODES, start=1):
            n = self.nodes[name]
            self.env[f"SB{i}_C2S_PORT"] = str(n.c2s_port)
            self.env[f"SB{i}_TLS_PORT"] = str(n.tls_port)
            self.env[f"SB{i}_HTTP_PORT"] = str(n.http_port)
        self.image_built = False
        self.up_started = False

    # -- lifecycle ----------------------------------------------------------

    def build_image(self) -> str:
        env = dict(self.env, SWITCHBOARD_BIN=str(SWITCHBOARD_BIN))
        r = _run([str(DEPLOY / "build-image.sh"), "-t", self.image], env=env, timeout=300)
        self.image_built = True
        return r.stdout.strip()

    def compose_cmd(self, *args: str, check=True, timeout=DOCKER_TIMEOUT):
        return _run(
            [*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args],
            env=self.env,
            check=check,
            timeout=timeout,
        )

    def up(self) -> None:
        self.up_started = True
        self.compose_cmd("up", "-d")
        for name, node in self.nodes.items():
            cid = self.compose_cmd("ps", "-q", name).stdout.strip()
            assert cid, f"no container for {name}"
            node.container = cid

    def logs(self) -> str:
        if not self.up_started:
            return ""
        r = self.compose_cmd("logs", "--no-color", "--tail", "60", check=False)
        return r.stdout + r.stderr

    def down(self) -> list[str]:
        errors = []
        if self.up_started:
            r = self.compose_cmd("down", "-v", "--remove-orphans", "-t", "10", check=False)
            if r.returncode != 0:
                errors.append(f"compose down: {r.stderr}")
        if self.image_built:
            r = _run(["docker", "image", "rm", "-f", self.image], check=False)
            if r.returncode != 0:
                errors.append(f"docker image rm {self.image}: {r.stderr}")
        return errors

    # -- nodes --------------------------------------------------------------

    def exec(self, name: str, *args: str, input: str | None = None, check=True):
        node = self.nodes[name]
        cmd = ["docker", "exec", *(["-i"] if input is not None else []), node.container, *args]
        return _run(cmd, input=input, check=check, timeout=30)

    def status(self, name: str) -> dict | None:
        r = self.exec(name, "switchboard", "cluster", "status", check=False)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)

    def import_accounts(self, accounts: list[Account]) -> None:
        """Accounts are per node (README, "Cluster"): create them on each one, through the
        running node's admin socket."""
        lines = "".join(f"{a.jid} {a.password}\n" for a in accounts)
        for name in NODES:
            self.exec(name, "switchboard", "user", "import", "-", input=lines)

    def fetch_cert(self, name: str) -> None:
        node = self.nodes[name]
        dest = self.workdir / f"{name}-cert.pem"
        _run(["docker", "cp", f"{node.container}:/var/lib/switchboard/tls/cert.pem", str(dest)])
        node.cafile = str(dest)

    def http_get(self, name: str, path: str, timeout: float = 3.0, token: str | None = None):
        """(status, body); raises OSError when nothing answers."""
        url = f"http://127.0.0.1:{self.nodes[name].http_port}{path}"
        req = urllib.request.Request(url)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except urllib.error.URLError as e:
            raise OSError(str(e.reason)) from e

    def wait_for(self, what: str, pred, timeout: float = 30.0, interval: float = 0.3):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = pred()
                if last:
                    return last
            except (AssertionError, OSError, ValueError) as e:
                last = e
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n{self.logs()}")

    def wait_formed(self, names=NODES, down=(), timeout: float = 45.0) -> None:
        want = {str(NODES.index(n) + 1): "up" for n in names}
        want.update({str(NODES.index(n) + 1): "down" for n in down})

        def formed():
            for n in names:
                s = self.status(n)
                if s is None or s.get("leader") is None:
                    return False
                if any(s["members"].get(k) != v for k, v in want.items()):
                    return s
            return True

        self.wait_for(f"{', '.join(names)} to agree on a leader and members {want}",
                      lambda: formed() is True, timeout)


def http_supported() -> bool:
    """The node serves /healthz, /readyz and /metrics once the HTTP listener has landed;
    until then the compose file's SWITCHBOARD_HTTP__* settings are ignored by the node."""
    try:
        return b"/readyz" in SWITCHBOARD_BIN.read_bytes()
    except OSError:
        return False


@pytest.fixture
def deployment(tmp_path):
    reason = _docker_unusable()
    if reason:
        pytest.skip(reason)
    if not SWITCHBOARD_BIN.exists():
        pytest.fail(f"switchboard binary not found at {SWITCHBOARD_BIN}")
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        errors = d.down()
        if errors:
            pytest.fail("teardown: " + "\n".join(errors), pytrace=False)


def is_msg(id_):
    return lambda e: e.tag == q("message") and e.get("id") == id_


async def exchange(a, b, tag: str) -> None:
    """A chat message a -> b and one b -> a, each checked for body and stamped `from`."""
    for src, dst, n in ((a, b, 1), (b, a, 2)):
        mid = f"{tag}-{n}"
        await src.send(
            f"<message to='{dst.jid}' id='{mid}' type='chat'><body>{mid}</body></message>"
        )
        got = await dst.expect(is_msg(mid), timeout=10, what=f"message {mid}")
        assert got.get("from") == src.jid, xml_str(got)
        body = got.find(q("body"))
        assert body is not None and body.text == mid, xml_str(got)


# ---------------------------------------------------------------------------
# the compose cluster
# ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_compose_cluster_routes_across_nodes_and_survives_losing_one(deployment):
    d = deployment
    started = time.monotonic()

    def step(what: str) -> None:  # shown with the failure: where it stopped, and when
        print(f"[{time.monotonic() - started:5.1f} s] {what}")

    step("building the image")
    built = d.build_image()
    print(built)
    size = int(
        _run(["docker", "image", "inspect", "-f", "{{.Size}}", d.image]).stdout.strip()
    )
    # FROM scratch: the binary, libc/libm/libgcc_s and the loader. A debug build stripped
    # of its debug info is ~30 MB, a release build less.
    assert size < 80 * 1024 * 1024, f"image is {size} bytes"
    user = _run(["docker", "image", "inspect", "-f", "{{.Config.User}}", d.image]).stdout.strip()
    assert user == "10001:10001", user

    step("compose up")
    d.up()
    try:
        step("waiting for the cluster to form")
        d.wait_formed()
        http = http_supported()
        if http:
            for name in NODES:
                d.wait_for(f"/readyz on {name}",
                           lambda name=name: d.http_get(name, "/readyz")[0] == 200)

        step("creating accounts on every node")
        alice = Account("alice", "localhost", "pw-alice-" + secrets.token_hex(4))
        bob = Account("bob", "localhost", "pw-bob-" + secrets.token_hex(4))
        d.import_accounts([alice, bob])
        for name in NODES:
            d.fetch_cert(name)
        sb1, sb2 = d.nodes["sb1"], d.nodes["sb2"]

        step("logging in alice@sb1 and bob@sb2")
        a = await login(sb1, alice, resource="deploy", label="alice@sb1")
        b = await login(sb2, bob, resource="deploy", label="bob@sb2")
        try:
            # Each bind is committed through Raft before the client hears `result`, but
            # the other node learns the route when it applies the entry: wait for it.
            d.wait_for(
                "sb1 and sb2 to know both routes",
                lambda: all(
                    len(d.exec(n, "switchboard", "cluster", "routes").stdout.splitlines()) >= 2
                    for n in ("sb1", "sb2")
                ),
            )
            step("messages both ways, and one to nobody")
            await exchange(a, b, "before")
            await a.send("<message to='nobody@localhost' id='nobody' type='chat'><body>?</body></message>")
            err = await a.expect(is_msg("nobody"), timeout=10, what="the bounce from nobody@localhost")
            assert err.get("type") == "error", xml_str(err)

            # Lose sb3: docker stop sends SIGTERM, the node must exit 0.
            step("stopping sb3")
            d.compose_cmd("stop", "-t", "10", "sb3")
            code = _run(
                ["docker", "inspect", "-f", "{{.State.ExitCode}}", d.nodes["sb3"].container]
            ).stdout.strip()
            assert code == "0", f"sb3 exited with {code} on SIGTERM\n{d.logs()}"
            step("waiting for sb1 and sb2 to mark sb3 down")
            d.wait_formed(names=("sb1", "sb2"), down=("sb3",))
            step("messages both ways, then a new bind, without sb3")

            await exchange(a, b, "after")
            # Binds still commit with two of three voters.
            b2 = await login(sb2, bob, resource="second", label="bob/second@sb2")
            try:
                await exchange(a, b2, "after-bind")
            finally:
                await b2.close()

            if http:
                step("readiness and metrics over HTTP")
                status, body = d.http_get("sb1", "/readyz")
                assert status == 200, f"sb1 /readyz: {status} {body}"
                assert d.http_get("sb1", "/healthz")[0] == 200
                status, metrics = d.http_get("sb1", "/metrics")
                assert status == 200, metrics[:500]
                exported = {
                    line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE ")
                }
                missing = dashboard_metric_families() - exported
                assert not missing, f"the dashboard queries metrics sb1 does not export: {missing}"
                with pytest.raises(OSError):
                    d.http_get("sb3", "/readyz", timeout=2)
                # The admin API, published beyond loopback inside the container, wants the
                # token compose passed from SB_HTTP_TOKEN.
                assert d.http_get("sb1", "/api/cluster")[0] == 401
                status, body = d.http_get("sb1", "/api/cluster", token=d.env["SB_HTTP_TOKEN"])
                assert status == 200, body
                reply = json.loads(body)
                assert reply["ok"] is True and reply["result"]["members"]["3"] == "down", body
            else:
                print("the binary has no HTTP listener yet: /readyz checks skipped")
        finally:
            await a.close()
            await b.close()
    except BaseException:
        print(d.logs())
        raise
    step("done")


# ---------------------------------------------------------------------------
# the Helm chart
# ---------------------------------------------------------------------------

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema
# kubernetes-validate ships.
KUBE_VERSIONS = ("1.28.0", "1.31.0")


def _helm():
    try:
        import helm_python
    except ImportError:
        pytest.skip("helm-python-sdk is not installed (pip install -r deploy/requirements.txt)")
    return helm_python


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install -r deploy/requirements.txt)")
    return kubernetes_validate


def render(values: dict | None = None, namespace: str = "xmpp") -> list[dict]:
    """The chart rendered offline by Helm's Go SDK, as a list of Kubernetes objects."""
    helm = _helm()
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (deploy/requirements.txt)")
    chart = helm.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="switchboard", namespace=namespace, is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_chart_lints_clean():
    helm = _helm()
    for kube in KUBE_VERSIONS:
        report = helm.lint(str(CHART), strict=True, kube_version=f"v{kube}", namespace="xmpp")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"helm lint (Kubernetes {kube}): {problems}"


CHART_VARIANTS = {
    "defaults": {},
    "everything-on": {
        "replicas": 5,
        "serviceMonitor": {"enabled": True},
        "tls": {"existingSecret": "xmpp-example-com-tls"},
        "cluster": {"existingSecret": "sb-cluster", "secretKey": "secret"},
        "http": {"token": "0123456789abcdef0123"},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
        "persistence": {"storageClassName": "fast-ssd"},
        "podAntiAffinity": "hard",
        "domains": ["example.com", "example.net"],
        "config": {"c2s": {"max_connections": 200000}, "im": {"shards": 8}},
        "extraEnv": [{"name": "RUST_LOG", "value": "info"}],
    },
}


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_helm_chart_renders_valid_kubernetes_objects(variant):
    kv = _kubernetes_validate()
    values = CHART_VARIANTS[variant]
    docs = render(values)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "ServiceAccount",
                "StatefulSet"]
    if variant == "defaults":
        expected.append("Secret")
    else:
        expected += ["Secret", "ServiceMonitor"]  # the token is still the chart's Secret
    assert kinds == sorted(expected), kinds

    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate
        for kube in KUBE_VERSIONS:
            try:
                kv.validate(doc, kube, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is not a valid "
                            f"Kubernetes {kube} object: {e.message} at {list(e.path)}")

    (sts,) = by_kind(docs, "StatefulSet")
    spec = sts["spec"]
    replicas = values.get("replicas", 3)
    assert spec["replicas"] == replicas
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["ordinals"]["start"] == 1
    headless = next(s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None")
    assert spec["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] == "http" and ports["http"] == 9090
    env = {e["name"]: e for e in container["env"]}
    assert env["SWITCHBOARD_CLUSTER__NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert "secretKeyRef" in env["SWITCHBOARD_CLUSTER__SECRET"]["valueFrom"]
    assert "secretKeyRef" in env["SWITCHBOARD_HTTP__TOKEN"]["valueFrom"]
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1

    # The members the ConfigMap lists are exactly the pods' stable names.
    import tomllib

    (cm,) = by_kind(docs, "ConfigMap")
    config = tomllib.loads(cm["data"]["switchboard.toml"])
    name, svc = sts["metadata"]["name"], headless["metadata"]["name"]
    assert config["cluster"]["members"] == [
        f"{n}@{name}-{n}.{svc}.xmpp.svc.cluster.local:7100" for n in range(1, replicas + 1)
    ]


def test_helm_chart_config_is_accepted_by_the_node(tmp_path):
    """The rendered switchboard.toml plus the environment the StatefulSet gives pod 2 is a
    configuration the real binary loads (it refuses unknown keys and invalid clusters)."""
    import subprocess as sp

    docs = render({"config": {"im": {"shards": 2}}})
    (cm,) = by_kind(docs, "ConfigMap")
    path = tmp_path / "switchboard.toml"
    path.write_text(cm["data"]["switchboard.toml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        SWITCHBOARD_DATA_DIR=str(tmp_path / "data"),
        SWITCHBOARD_CLUSTER__NODE_ID="2",
        SWITCHBOARD_CLUSTER__ADVERTISE="switchboard-2.switchboard-headless.xmpp.svc.cluster.local:7100",
        SWITCHBOARD_CLUSTER__SECRET="0123456789abcdef0123",
        SWITCHBOARD_HTTP__LISTEN="0.0.0.0:9090",
        SWITCHBOARD_HTTP__TOKEN="0123456789abcdef0123",
    )
    r = sp.run([str(SWITCHBOARD_BIN), "user", "list", "--config", str(path)],
               capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, f"the node refused the chart's configuration: {r.stderr}"


def test_helm_chart_refuses_node_id_zero():
    helm = _helm()
    with pytest.raises(helm.HelmError, match="ordinalStart must be at least 1"):
        render({"ordinalStart": 0})


# ---------------------------------------------------------------------------
# monitoring files (the profile itself cannot run here: no images to pull)
# ---------------------------------------------------------------------------

# The node's metric families (README, "Monitoring and the admin API").
METRICS = {
    "switchboard_c2s_connections", "switchboard_c2s_sessions", "switchboard_logins_total",
    "switchboard_login_duration_seconds", "switchboard_stanzas_total", "switchboard_routed_total",
    "switchboard_bounces_total", "switchboard_c2s_bytes_total", "switchboard_routing_duration_seconds",
    "switchboard_storage_bytes", "switchboard_raft_term", "switchboard_raft_leader",
    "switchboard_raft_is_leader", "switchboard_raft_last_log_index", "switchboard_raft_applied_index",
    "switchboard_raft_apply_lag", "switchboard_raft_voters", "switchboard_raft_elections_total",
    "switchboard_cluster_members", "switchboard_nodelink_connected",
    "switchboard_nodelink_dropped_total", "switchboard_nodelink_rtt_seconds",
}


def dashboard_metric_families() -> set[str]:
    """The metric families the Grafana dashboard queries (histogram series -> family)."""
    import re

    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "switchboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = {m for e in exprs for m in re.findall(r"\bswitchboard_[a-z0-9_]+", e)}
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_grafana_dashboard_and_prometheus_config_are_consistent():
    """The files of the monitoring profile. That a running node exports every family the
    dashboard queries is checked by the compose test."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (deploy/requirements.txt)")
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "switchboard.json").read_text())
    assert sum(len(p.get("targets", [])) for p in dash["panels"]) >= 12
    used = dashboard_metric_families()
    assert used <= METRICS, f"metrics the node does not document: {used - METRICS}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    ds_uid = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p} == {ds_uid}
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "switchboard.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] for g in sc["static_configs"] for t in g["targets"]]
    assert targets == [f"{n}:9090" for n in NODES]
