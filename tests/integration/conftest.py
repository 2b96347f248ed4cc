"""Fixtures that run the real `switchboard` binary on loopback ports.

`server` (one per test module) is a node with the default configuration and a pool
of accounts created with the CLI before the node starts.  `make_server` starts a
dedicated node with configuration overrides, for tests that need other limits or
that stop the node.  Every node is stopped with SIGTERM at the end and must exit 0
within 10 s; its log is attached to the report of any test that fails.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_bin = Path(os.environ.get("SWITCHBOARD_BIN", "target/debug/switchboard"))
SWITCHBOARD_BIN = _bin if _bin.is_absolute() else REPO_ROOT / _bin

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0

_LIVE_SERVERS: list["Server"] = []


@dataclass
class Account:
    local: str
    domain: str
    password: str

    @property
    def jid(self) -> str:
        return f"{self.local}@{self.domain}"


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_ports(n: int) -> list[int]:
    """`n` listener ports that are free now, taken below the kernel's ephemeral range: a
    port the kernel may hand to any outgoing connection (a client, a NodeLink redial) could
    be taken between this call and the server's bind. Never the same port twice per run."""
    lo, _ = _ephemeral_range()
    candidates = list(range(max(1024, lo - 12000), lo))
    random.shuffle(candidates)
    ports = []
    for port in candidates:
        if len(ports) == n:
            break
        if port in _HANDED_OUT:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            s.close()
        _HANDED_OUT.add(port)
        ports.append(port)
    assert len(ports) == n, f"only {len(ports)} of {n} free ports below {lo}"
    return ports


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def render_toml(cfg: dict) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    out = "\n".join(top) + "\n"
    for k, v in cfg.items():
        if isinstance(v, dict):
            out += f"\n[{k}]\n" + "".join(f"{kk} = {_toml_value(vv)}\n" for kk, vv in v.items())
    return out


def _child_env() -> dict[str, str]:
    # SWITCHBOARD_* variables are configuration overrides for the node: never leak ours
    # (SWITCHBOARD_BIN would read as a config key `bin`).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.setdefault("RUST_BACKTRACE", "1")
    env["NO_COLOR"] = "1"  # plain logs in failure reports
    return env


class Server:
    domain = "localhost"

    def __init__(self, workdir: Path, overrides: dict | None = None, name: str = "node"):
        self.name = name
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.dir / "node.toml"
        self.log_path = self.dir / "node.log"
        self.c2s_port, self.tls_port, self.http_port, self.s2s_port = free_ports(4)
        self.proc: subprocess.Popen | None = None
        # Added to the node's environment at each start (a test's libfaketime, say).
        self.extra_env: dict[str, str] = {}
        self.exit_code: int | None = None
        self._pool: list[Account] = []
        self._counter = 0
        self.config = {
            "domains": [self.domain],
            "data_dir": str(self.data_dir),
            "c2s": {
                "listen": f"127.0.0.1:{self.c2s_port}",
                "tls_listen": f"127.0.0.1:{self.tls_port}",
            },
            # Every node of a test run gets its own s2s port (the default, 5269, is shared).
            "s2s": {"listen": f"127.0.0.1:{self.s2s_port}"},
            "log": {"level": os.environ.get("SWITCHBOARD_TEST_LOG_LEVEL", "info,openraft=warn")},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
        }
        for key, value in (overrides or {}).items():
            if isinstance(value, dict):
                self.config.setdefault(key, {}).update(value)
            else:
                self.config[key] = value
        self.config_path.write_text(render_toml(self.config))

    # -- paths --------------------------------------------------------------

    @property
    def cafile(self) -> str:
        return str(self.data_dir / "tls" / "cert.pem")

    # -- CLI ----------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, timeout: float = CLI_TIMEOUT):
        cmd = [str(SWITCHBOARD_BIN), *args, "--config", str(self.config_path)]
        try:
            return subprocess.run(
                cmd,
                input=input if input is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.dir,
                env=_child_env(),
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`{' '.join(cmd)}` did not finish within {timeout}s: {exc}")

    @staticmethod
    def _password(local: str) -> str:
        return f"pw-{local}-{secrets.token_hex(4)}"

    def add_user(self, local: str, password: str | None = None) -> Account:
        password = password or self._password(local)
        jid = f"{local}@{self.domain}"
        r = self.cli("user", "add", jid, "--password", password)
        assert r.returncode == 0, (
            f"`switchboard user add {jid}` failed with exit code {r.returncode}\n"
            f"stdout: {r.stdout}\nstderr: {r.stderr}"
        )
        return Account(local, self.domain, password)

    def prepare_accounts(self, n: int) -> None:
        """`n` accounts for `account()`, made by one `switchboard user import` (a process per
        account made fixtures with many accounts take tens of seconds)."""
        if n <= 0:
            return
        made = []
        for _ in range(n):
            local = self._next_local()
            made.append(Account(local, self.domain, self._password(local)))
        lines = "".join(f"{a.jid} {a.password}\n" for a in made)
        r = self.cli("user", "import", "-", input=lines)
        assert r.returncode == 0, (
            f"`switchboard user import` failed with exit code {r.returncode}\n"
            f"stdout: {r.stdout}\nstderr: {r.stderr}"
        )
        self._pool.extend(made)

    def _next_local(self) -> str:
        self._counter += 1
        return f"{self.name}u{self._counter:03d}"

    def account(self) -> Account:
        """A fresh account no other test uses (from the pool, else created now)."""
        if self._pool:
            return self._pool.pop(0)
        return self.add_user(self._next_local())

    # -- process ------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if not SWITCHBOARD_BIN.exists():
            pytest.fail(
                f"switchboard binary not found at {SWITCHBOARD_BIN} "
                "(run `cargo build -p nodes` or set SWITCHBOARD_BIN)"
            )
        self._log = open(self.log_path, "ab")
        # A restart starts a new process: forget how the previous one ended, or teardown
        # would take this one for already stopped and leave it running.
        self.exit_code = None
        self.proc = subprocess.Popen(
            [str(SWITCHBOARD_BIN), "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env={**_child_env(), **self.extra_env},
        )
        _LIVE_SERVERS.append(self)
        deadline = time.monotonic() + timeout
        pending = {self.c2s_port, self.tls_port}
        while pending or not Path(self.cafile).exists():
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                pytest.fail(
                    f"switchboard exited with code {self.exit_code} during start-up\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"switchboard did not accept connections on ports {sorted(pending)} "
                    f"(or did not write {self.cafile}) within {timeout}s\n{self.log_tail()}"
                )
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pending.discard(port)
                except OSError:
                    pass
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_term(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Exit code, or None if still running after `timeout` (then it is killed)."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            self.exit_code = None
        return self.exit_code

    def stop(self) -> None:
        """SIGTERM; the node must exit 0 within 10 s."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(
                    f"switchboard ({self.name}) was no longer running at teardown "
                    f"(exit code {code})\n{self.log_tail()}"
                )
            self.signal_term()
            code = self.wait_exit(STOP_TIMEOUT)
            if code is None:
                raise AssertionError(
                    f"switchboard ({self.name}) did not exit within {STOP_TIMEOUT}s of SIGTERM "
                    f"(killed)\n{self.log_tail()}"
                )
            if code != 0:
                raise AssertionError(
                    f"switchboard ({self.name}) exited with code {code} after SIGTERM, "
                    f"expected 0\n{self.log_tail()}"
                )
        finally:
            if self in _LIVE_SERVERS:
                _LIVE_SERVERS.remove(self)
            self._log.close()

    def metrics_text(self) -> str:
        """The node's Prometheus exposition (`/metrics`)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def kill9(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL (no shutdown code runs at all) and wait for the process to go.

        start() brings the node back on the same data dir and ports.  The exit is not
        recorded in exit_code, so a node left dead makes the fixture's teardown fail:
        restart it before the test ends."""
        assert self.alive(), f"switchboard ({self.name}) was not running before SIGKILL"
        self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self in _LIVE_SERVERS:
                _LIVE_SERVERS.remove(self)
            self._log.close()

    def pid_rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def log_tail(self, lines: int = 120) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """A node with the default configuration, shared by the tests of one module."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:10]
    srv = Server(tmp_path_factory.mktemp(f"sb-{name}"), name=name)
    srv.prepare_accounts(getattr(request.module, "ACCOUNT_POOL", 12))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path):
    """Factory: make_server(overrides, accounts=N, start=True) -> a dedicated Server."""
    made: list[Server] = []

    def _make(overrides: dict | None = None, accounts: int = 4, start: bool = True) -> Server:
        srv = Server(tmp_path / f"node{len(made)}", overrides, name=f"n{len(made)}")
        made.append(srv)
        srv.prepare_accounts(accounts)
        if start:
            srv.start()
        return srv

    yield _make
    errors = []
    for srv in made:
        if srv.proc is None or srv.exit_code is not None:
            continue  # never started, or the test already stopped it and checked
        try:
            srv.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture(autouse=True)
def _node_still_running(request):
    """A test must not leave a shared node dead (crashes show up where they happen)."""
    yield
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        if srv.proc is not None and srv.proc.poll() is not None and srv.exit_code is None:
            srv.exit_code = srv.proc.returncode
            pytest.fail(
                f"switchboard died during this test (exit code {srv.proc.returncode})\n"
                f"{srv.log_tail()}",
                pytrace=False,
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(_LIVE_SERVERS):
            report.sections.append((f"switchboard log ({srv.name})", srv.log_tail(80)))


@pytest.fixture
def cluster(tmp_path):
    """A three-node cluster (`cluster.Cluster`), not started; stopped at the end, and the test
    fails if a node did not stop cleanly."""
    from cluster import Cluster  # cluster.py imports this module

    c = Cluster(tmp_path)
    yield c
    errors = c.stop()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)
