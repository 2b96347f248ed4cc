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
