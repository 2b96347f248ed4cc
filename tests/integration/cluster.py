"""A real multi-process cluster on loopback: node N's NodeLink listens on 127.0.0.1N
(127.0.0.11, .12, .13, ...), so a firewall rule on that address cuts exactly that node off.
Clients reach each node's c2s listener on 127.0.0.1 and its own port.

Accounts are created on every node with the same password (each node authenticates
against its own account store; see README, "Cluster")."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from conftest import Account, Server, free_ports

SECRET = "test-cluster-secret-0123456789"


class Cluster:
    def __init__(self, workdir, size: int = 3, failure_timeout_ms: int = 2000):
        self.nodes: list[Server] = []
        self.failure_timeout_ms = failure_timeout_ms
        ports = free_ports(size)
        members = [f"{i + 1}@127.0.0.1{i + 1}:{ports[i]}" for i in range(size)]
        for i in range(size):
            node = Server(
                workdir / f"n{i + 1}",
                {
                    "c2s": {"require_tls": True},
                    "cluster": {
                        "node_id": i + 1,
                        "listen": f"127.0.0.1{i + 1}:{ports[i]}",
                        "secret": SECRET,
                        "members": members,
                        "failure_timeout_ms": failure_timeout_ms,
                        "heartbeat_ms": 100,
                    },
                },
                name=f"n{i + 1}",
            )
            self.nodes.append(node)
        self._counter = 0

    def account(self) -> Account:
        """A new account, created on every node."""
        self._counter += 1
        local = f"cu{self._counter:03d}"
        password = f"pw-{local}"
        for n in self.nodes:
            n.add_user(local, password)
        return Account(local, "localhost", password)

    def accounts(self, n: int) -> list[Account]:
        """`n` new accounts, created on every node with one `switchboard user import` per
        node (quicker than account() for many; the nodes need not be running)."""
        made = []
        for _ in range(n):
            self._counter += 1
            local = f"cu{self._counter:03d}"
            made.append(Account(local, "localhost", f"pw-{local}"))
        lines = "".join(f"{a.jid} {a.password}\n" for a in made)
        for node in self.nodes:
            r = node.cli("user", "import", "-", input=lines)
            assert r.returncode == 0, (
                f"`switchboard user import` on {node.name} failed ({r.returncode})\n"
                f"stdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return made

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        self.wait_formed()

    def status(self, node: Server) -> dict:
        r = node.cli("cluster", "status")
        assert r.returncode == 0, f"cluster status on {node.name}: {r.stderr}"
        return json.loads(r.stdout)

    def routes(self, node: Server) -> list[str]:
        r = node.cli("cluster", "routes")
        assert r.returncode == 0, f"cluster routes on {node.name}: {r.stderr}"
        return sorted(line for line in r.stdout.splitlines() if line.strip())

    def wait_for(self, what: str, pred, timeout: float = 15.0, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = pred()
                if last:
                    return last
            except AssertionError as e:
                last = e
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def wait_formed(self, nodes=None, timeout: float = 20.0) -> None:
        nodes = nodes or [n for n in self.nodes if n.alive()]
        want = {str(i + 1): "up" for i, n in enumerate(self.nodes) if n in nodes}

        def formed():
            for n in nodes:
                s = self.status(n)
                if s["leader"] is None:
                    return False
                if any(s["members"].get(k) != v for k, v in want.items()):
                    return False
            return True

        self.wait_for("the cluster to form with every node up", formed, timeout)

    def wait_routes_converge(self, nodes=None, timeout: float = 15.0) -> list[str]:
        nodes = nodes or [n for n in self.nodes if n.alive()]

        def same():
            tables = [self.routes(n) for n in nodes]
            return tables[0] if all(t == tables[0] for t in tables) else None

        return self.wait_for("the routing tables to converge", same, timeout) or []

    # -- IM shards (issue 6) ---------------------------------------------------
    #
    # `cluster status` lists the shard groups a node hosts:
    #   "shards": [{"shard": 0, "leader": 1, "voters": [1, 2, 3], "applied": 12}, ...]

    @staticmethod
    def node_id(node: Server) -> int:
        return int(node.config["cluster"]["node_id"])

    def node_by_id(self, node_id) -> Server | None:
        for n in self.nodes:
            if self.node_id(n) == int(node_id):
                return n
        return None

    def shards(self, node: Server) -> list[dict]:
        """The "shards" entries of `cluster status` on `node`, voters as sorted ints. Fails
        the test at once, with a clear message, when the status has no such key."""
        s = self.status(node)
        if "shards" not in s:
            pytest.fail(
                f"`switchboard cluster status` on {node.name} has no \"shards\" key: this "
                f"binary does not replicate IM data in shard groups (issue 6); status: {s}",
                pytrace=False,
            )
        out = []
        for e in s["shards"]:
            voters = e.get("voters") or []
            if isinstance(voters, dict):
                voters = list(voters)
            out.append({**e, "voters": sorted(int(v) for v in voters)})
        return out

    def shard_count(self, nodes=None) -> int:
        """How many shards the cluster has: one more than the highest shard any of
        `nodes` (default: the running ones) hosts."""
        nodes = nodes or [n for n in self.nodes if n.alive()]
        ids = [e["shard"] for n in nodes for e in self.shards(n)]
        assert ids, f"no node of {[n.name for n in nodes]} hosts any shard"
        return max(ids) + 1

    @staticmethod
    def shard_of(bare_jid: str, shards: int) -> int:
        """The shard of a bare JID: FNV-1a 64 of its UTF-8 bytes, modulo the shard count."""
        h = 0xCBF29CE484222325
        for b in bare_jid.encode():
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        return h % shards

    def shard_leaders(self, node: Server) -> dict[int, int | None]:
        return {e["shard"]: e.get("leader") for e in self.shards(node)}

    def removed_replicas(self, views: dict[str, list[dict]]) -> list[tuple[str, int, str]]:
        """(node name, shard, description) of each shard entry that the shard's own leader
        does not count among the voters (a replica moved away that still runs), from
        {node name: shard entries}."""
        current: dict[int, dict] = {}  # shard -> the entry of the node that leads it
        for name, entries in views.items():
            node = next(n for n in self.nodes if n.name == name)
            for e in entries:
                if e.get("leader") is not None and int(e["leader"]) == self.node_id(node):
                    prev = current.get(e["shard"])
                    if prev is None or e.get("term", 0) > prev.get("term", 0):
                        current[e["shard"]] = e
        out = []
        for name, entries in views.items():
            me = self.node_id(next(n for n in self.nodes if n.name == name))
            for e in entries:
                lead = current.get(e["shard"])
                if lead is not None and me not in lead["voters"]:
                    out.append((name, e["shard"],
                        f"{name} still runs a replica of shard {e['shard']} (voters "
                        f"{e['voters']}, leader {e.get('leader')}, term {e.get('term')}) that "
                        f"its leader {lead['leader']} no longer counts (voters {lead['voters']})"))
        return out

    def wait_shards_ready(self, nodes=None, timeout: float = 30.0,
                          ignore_removed: bool = False) -> dict[str, list[dict]]:
        """Wait until, on each of `nodes` (default: the running ones), every shard entry
        of `cluster status` has a leader that is a running node of this cluster and one of
        the shard's voters. Returns {node name: its shard entries}.

        With ignore_removed, entries for replicas the shard's leader no longer counts
        (moved away, see removed_replicas) are left out of the check."""
        nodes = nodes or [n for n in self.nodes if n.alive()]
        last: dict[str, list[dict]] = {}

        def ready():
            problems = []
            views = {n.name: self.shards(n) for n in nodes}
            last.clear()
            last.update(views)
            stale = set()
            if ignore_removed:
                everyone = dict(views)
                for n in self.nodes:
                    if n.alive() and n.name not in everyone:
                        everyone[n.name] = self.shards(n)
                stale = {(name, shard) for name, shard, _ in self.removed_replicas(everyone)}
            for n in nodes:
                for e in views[n.name]:
                    if (n.name, e["shard"]) in stale:
                        continue
                    leader = e.get("leader")
                    holder = self.node_by_id(leader) if leader is not None else None
                    if leader is None:
                        problems.append(
                            f"{n.name}: shard {e['shard']} has no leader (voters {e['voters']}, "
                            f"term {e.get('term')})"
                        )
                    elif holder is None or not holder.alive():
                        problems.append(
                            f"{n.name}: shard {e['shard']} has leader {leader}, not a running node"
                        )
                    elif int(leader) not in e["voters"]:
                        problems.append(
                            f"{n.name}: shard {e['shard']} leader {leader} not among its "
                            f"voters {e['voters']}"
                        )
            assert not problems, "; ".join(problems[:8])
            return dict(last)

        return self.wait_for(
            f"every shard hosted on {[n.name for n in nodes]} to have a running leader",
            ready,
            timeout,
        )

    def stop(self) -> list[str]:
        errors = []
        for n in self.nodes:
            if n.proc is None or n.exit_code is not None or not n.alive():
                continue
            try:
                n.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        return errors


def iptables_usable() -> bool:
    if shutil.which("iptables") is None:
        return False
    r = subprocess.run(["iptables", "-L", "OUTPUT", "-n"], capture_output=True)
    return r.returncode == 0


class Partition:
    """Drop every NodeLink packet to and from one node's address (its c2s stays up)."""

    def __init__(self, ip: str):
        self.rules = [
            ["OUTPUT", "-p", "tcp", "-s", ip, "-j", "DROP"],
            ["OUTPUT", "-p", "tcp", "-d", ip, "-j", "DROP"],
        ]
        self.active = False

    def __enter__(self):
        for r in self.rules:
            subprocess.run(["iptables", "-I", *r], check=True)
        self.active = True
        return self

    def heal(self):
        if self.active:
            for r in self.rules:
                subprocess.run(["iptables", "-D", *r], check=False)
            self.active = False

    def __exit__(self, *exc):
        self.heal()
