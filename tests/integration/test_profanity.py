"""A real terminal client: profanity (Debian package `profanity`), driven in a private tmux
server, logs in to the node over STARTTLS (`tls trust`: the node's certificate is
self-signed) and must not report "Error enabling message carbons" (profanity enables
XEP-0280 carbons right after login; before the carbons module existed the node answered
service-unavailable and the pane showed that error). A second run with the carbons module
disabled shows the error, so the check can fail.

Two profanity instances then exchange an OMEMO (XEP-0384, the `eu.siacs.conversations.axolotl`
namespace profanity 0.13 speaks) message over the node's PEP service (XEP-0163): `/omemo gen`
on each, `/msg` and `/omemo start` on the sender, and the recipient's pane shows the decrypted
text. Before PEP existed the sender's pane said "Can't find a OMEMO device id"; the same flow
against a node with the pep module disabled still says so, so the check can fail.

Skipped only when profanity or tmux is missing AND SWITCHBOARD_TEST_NO_INSTALL=1 (without
that flag a missing client is a failure: scripts/test-deps.sh installs both)."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import time

import pytest

from test_pep import mutual_contacts

PROFANITY = shutil.which("profanity")
TMUX = shutil.which("tmux")

if (PROFANITY is None or TMUX is None) and os.environ.get("SWITCHBOARD_TEST_NO_INSTALL") == "1":
    pytestmark = pytest.mark.skip(reason="profanity/tmux not installed and SWITCHBOARD_TEST_NO_INSTALL=1")

CARBONS_ERROR = re.compile(r"error enabling message carbons", re.IGNORECASE)
# What profanity 0.13 prints when it has no device list for the recipient (omemo.c,
# omemo_on_message_send), and the body it puts in an OMEMO message for clients without OMEMO.
NO_DEVICE_ID = "Can't find a OMEMO device id"
OMEMO_FALLBACK_BODY = "encrypted with OMEMO but your client"


class Profanity:
    """profanity in a tmux server of its own (its own socket: no other tmux is touched),
    with HOME and the XDG directories in the test's tmp dir, logging at DEBUG (every stanza
    it sends and receives) to `log_path`."""

    def __init__(self, workdir):
        if PROFANITY is None or TMUX is None:
            pytest.fail("profanity and tmux are needed (scripts/test-deps.sh installs them)")
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket = str(workdir / "tmux.sock")
        self.log_path = self.home / ".local" / "share" / "profanity" / "logs" / "profanity.log"
        env = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "TERM": "xterm-256color",
        }
        env_args = [f"{k}={v}" for k, v in env.items()]
        self._tmux("new-session", "-d", "-s", "prof", "-x", "200", "-y", "50",
                   "env", *env_args, PROFANITY, "-l", "DEBUG")

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

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

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


def omemo_setup(srv, profanity):
    """alice and bob, subscribed to each other, each logged in to a profanity that trusts
    every OMEMO key it sees (`trustmode blind`: nobody is there to compare fingerprints)."""
    alice, bob = asyncio.run(mutual_contacts(srv))
    pa, pb = profanity(), profanity()
    for p in (pa, pb):
        p.wait_for(r"Type '/help'")
        p.send("/omemo trustmode blind")
        p.wait_for(r"ALL OMEMO fingerprints will be trusted automatically")
    pa.connect(srv, alice)
    pb.connect(srv, bob)
    return alice, bob, pa, pb


def omemo_gen(p) -> int:
    """`/omemo gen` (it asks nothing: the keys go to the data dir unencrypted); the device id."""
    p.send("/omemo gen")
    pane = p.wait_for(r"Your Device ID is \d+", timeout=30)
    return int(re.findall(r"Your Device ID is (\d+)", pane)[-1])


def test_profanity_exchanges_an_omemo_message(make_server, profanity):
    srv = make_server(accounts=2)
    alice, bob, pa, pb = omemo_setup(srv, profanity)
    # bob first, so alice finds his device list and bundle at her own `/omemo gen`.
    bob_device = omemo_gen(pb)
    # profanity asks for its own device list and publishes one with its device only when
    # the answer is item-not-found with code='404' (the pep module's errors carry it).
    pb.wait_for(rf"Going to publish own device ID: {bob_device}")
    alice_device = omemo_gen(pa)
    pa.wait_for(rf"Going to publish own device ID: {alice_device}")
    # alice fetched bob's device list and bundle from his PEP service and built a session
    # with that device (the console says so when it trusts a new key).
    pa.wait_for(rf"Blind trust for {re.escape(bob.jid)} device {bob_device} ")

    text = f"attack at dawn {secrets.token_hex(4)}"
    pb.send(f"/msg {alice.jid}")  # bob's chat window with alice, where the message lands
    pb.wait_for(rf"{re.escape(alice.jid)} \[online\]")
    pa.send(f"/msg {bob.jid}")
    pa.wait_for(rf"{re.escape(bob.jid)} \[online\]")
    pa.send("/omemo start")
    pa.wait_for(rf"{re.escape(bob.jid)} \[online\] \[OMEMO\]")
    pa.send(text)
    # `~` is profanity's mark for an OMEMO message (`-` for plaintext).
    sent = pa.wait_for(rf"~ me: {text}")
    received = pb.wait_for(rf"~ {re.escape(alice.jid)}/\S+: {text}", timeout=30)
    assert NO_DEVICE_ID not in sent, sent
    assert "cannot be decrypted" not in sent, sent
    assert OMEMO_FALLBACK_BODY not in received, received
    # On the wire the message was OMEMO-encrypted: the text is in no stanza alice sent.
    sent_stanzas = [ln for ln in pa.log_text().splitlines() if "SENT: <message" in ln]
    assert any("eu.siacs.conversations.axolotl" in ln and "<payload>" in ln for ln in sent_stanzas), sent_stanzas
    assert not any(text in ln for ln in sent_stanzas), sent_stanzas


def test_profanity_omemo_fails_without_pep(make_server, profanity):
    """The control: without the pep module nobody's device list can be published or found,
    and the sender's pane shows the error the test above must not see."""
    srv = make_server({"modules.pep": {"enabled": False}}, accounts=2)
    alice, bob, pa, pb = omemo_setup(srv, profanity)
    omemo_gen(pb)
    omemo_gen(pa)
    pa.send(f"/msg {bob.jid}")
    pa.wait_for(rf"{re.escape(bob.jid)} \[online\]")
    pa.send("/omemo start")
    pa.wait_for(r"\[OMEMO\]")
    pa.send("attack at dusk")
    pa.wait_for(re.escape(NO_DEVICE_ID) + rf" for {re.escape(bob.jid)}")
