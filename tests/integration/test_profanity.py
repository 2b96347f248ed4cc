"""A real terminal client: profanity (Debian package `profanity`), driven in a private tmux
server, logs in to the node over STARTTLS (`tls trust`: the node's certificate is
self-signed) and must not report "Error enabling message carbons" (profanity enables
XEP-0280 carbons right after login; before the carbons module existed the node answered
service-unavailable and the pane showed that error). A second run with the carbons module
disabled shows the error, so the check can fail.

Skipped only when profanity or tmux is missing AND SWITCHBOARD_TEST_NO_INSTALL=1 (without
that flag a missing client is a failure: scripts/test-deps.sh installs both)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

PROFANITY = shutil.which("profanity")
TMUX = shutil.which("tmux")

if (PROFANITY is None or TMUX is None) and os.environ.get("SWITCHBOARD_TEST_NO_INSTALL") == "1":
    pytestmark = pytest.mark.skip(reason="profanity/tmux not installed and SWITCHBOARD_TEST_NO_INSTALL=1")

CARBONS_ERROR = re.compile(r"error enabling message carbons", re.IGNORECASE)


class Profanity:
    """profanity in a tmux server of its own (its own socket: no other tmux is touched),
    with HOME and the XDG directories in the test's tmp dir."""

    def __init__(self, workdir):
        if PROFANITY is None or TMUX is None:
            pytest.fail("profanity and tmux are needed (scripts/test-deps.sh installs them)")
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket = str(workdir / "tmux.sock")
        env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "TERM": "xterm-256color",
        }
        env_args = [f"{k}={v}" for k, v in env.items()]
        self._tmux("new-session", "-d", "-s", "prof", "-x", "200", "-y", "50",
                   "env", *env_args, PROFANITY)

    def _tmux(self, *args: str) -> str:
        r = subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, f"tmux {args[0]} failed: {r.stderr}"
        return r.stdout

    def send(self, text: str) -> None:
        self._tmux("send-keys", "-t", "prof", "-l", text)
        self._tmux("send-keys", "-t", "prof", "Enter")

    def pane(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "prof", "-S", "-200")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.pane()
            if re.search(pattern, text, re.IGNORECASE):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in profanity's pane within {timeout}s:\n{text}")
            time.sleep(0.2)

    def connect(self, server, account) -> str:
        self.wait_for(r"Type '/help'")
        # `tls trust`: STARTTLS required, the self-signed certificate accepted.
        self.send(f"/connect {account.jid} server 127.0.0.1 port {server.c2s_port} tls trust")
        self.wait_for(r"password")
        self.send(account.password)
        return self.wait_for(rf"{re.escape(account.jid)}/\S+ logged in successfully")

    def close(self) -> None:
        subprocess.run([TMUX, "-S", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def profanity(tmp_path):
    made = []

    def _make():
        p = Profanity(tmp_path / f"prof{len(made)}")
        made.append(p)
        return p

    yield _make
    for p in made:
        p.close()


def test_profanity_logs_in_without_a_carbons_error(make_server, profanity):
    srv = make_server(accounts=1)
    acc = srv.account()
    p = profanity()
    p.connect(srv, acc)
    # Carbons are enabled right after the roster arrives; give the answer time to land.
    time.sleep(2.0)
    pane = p.pane()
    assert "[online]" in pane or "online (priority" in pane, pane
    assert not CARBONS_ERROR.search(pane), pane
    # The node saw the session and profanity's carbons request succeed.
    assert f"session bound jid={acc.jid}/" in srv.log_path.read_text(errors="replace")


def test_profanity_reports_the_error_when_carbons_are_disabled(make_server, profanity):
    """The control: the same client against a node without the carbons module shows the
    error the first test must not see."""
    srv = make_server({"modules.carbons": {"enabled": False}}, accounts=1)
    acc = srv.account()
    p = profanity()
    p.connect(srv, acc)
    p.wait_for(CARBONS_ERROR.pattern, timeout=10)
