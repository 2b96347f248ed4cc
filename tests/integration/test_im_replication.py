"""Replicated IM data (issue 6): each user's roster, privacy lists, block list and offline
messages live in one of the cluster's shard groups (a Raft group of three replicas), so
losing any one node loses nothing that a client was told was stored, and nodes can join
and leave under traffic.

The bookkeeping, in every test:

- an IQ write (roster set, privacy list set, block) is *acknowledged* only when its
  `type='result'` arrived; acknowledged writes must be readable afterwards, exactly once;
- `type='wait'` errors are retryable (the writer retries the same write a bounded number
  of times); any other error type, a reply that never comes on a surviving node, a stream
  error or a dropped connection on a surviving node fails the test;
- a write whose connection died with its node (kill -9) is *unknown*: present or absent,
  but never twice;
- a message to an offline account for which no error bounce came back, sent from a node
  that survived, must be delivered exactly once when the recipient comes online; a
  bounced message (only `type='wait'` bounces are allowed) or one sent through the
  killed node is unknown: at most once.

`cluster status` lists the shards a node hosts: `"shards": [{"shard": 0, "leader": 1,
"voters": [1, 2, 3], "applied": 12}, ...]`; an account's shard is FNV-1a 64 of its bare JID
modulo the number of shards (Cluster.shard_of)."""

from __future__ import annotations

import asyncio
import collections
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from cluster import SECRET, Cluster
from conftest import Account, Server, free_ports, render_toml
from rawxmpp import (
    STREAM_ERROR,
    XmppTestError,
    login,
    new_id,
    q,
    stanza_error,
    stream_error_condition,
    xml_str,
)

NS_ROSTER = "jabber:iq:roster"
NS_PRIVACY = "jabber:iq:privacy"
NS_BLOCKING = "urn:xmpp:blocking"

IQ_TIMEOUT = 15.0  # a surviving node must answer every IQ within this
WAIT_RETRIES = 6  # a write answered type='wait' this many times in a row stays unknown
KINDS_ALL = ("roster", "privacy", "block", "message")


def ns(uri: str, tag: str) -> str:
    return f"{{{uri}}}{tag}"


class ConnectionLost(Exception):
    pass


# ---------------------------------------------------------------------------
# A client connection with a reader task (IQ replies by id, bounces, messages)
# ---------------------------------------------------------------------------


class Conn:
    """A bound XmppClient whose incoming elements are read by one task: IQ replies go to
    the waiting request, message bounces and messages are recorded by id, stream errors
    and the end of the stream are noted."""

    def __init__(self, client, node: Server, account: Account, label: str):
        self.c = client
        self.node = node
        self.account = account
        self.label = label
        self.waiters: dict[str, asyncio.Future] = {}
        self.overdue: dict[str, float] = {}  # IQ id -> when it was sent (its wait timed out)
        self.late_replies: dict[str, tuple[float, str]] = {}  # id -> (seconds, reply type)
        self.bounces: dict[str, ET.Element] = {}
        self.bounce_at: dict[str, float] = {}
        self.messages: list[ET.Element] = []
        self.stream_errors: list[str] = []
        self.unexpected: list[str] = []
        self.lost = False
        self.lost_at: float | None = None
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, node: Server, account: Account, resource: str, attempts: int = 5):
        """Log in (retrying a bounded number of times: right after a node died, a bind may
        get resource-constraint until the metadata group has a leader again)."""
        last = None
        for i in range(attempts):
            try:
                c = await login(node, account, resource=resource,
                                label=f"{account.local}/{resource}@{node.name}", timeout=10)
                return cls(c, node, account, f"{account.jid}/{resource}@{node.name}")
            except (XmppTestError, ConnectionError, OSError) as exc:
                last = exc
                await asyncio.sleep(1.0 + i)
        raise AssertionError(
            f"{account.jid} could not log in on {node.name} after {attempts} attempts: {last}"
        )

    async def _read(self):
        try:
            while True:
                ev = await self.c.next_event(24 * 3600)
                if ev.kind != "element":
                    break
                el = ev.element
                if el.tag == q("iq") and el.get("type") in ("result", "error"):
                    fut = self.waiters.pop(el.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(el)
                    elif el.get("id") in self.overdue:
                        sent = self.overdue.pop(el.get("id"))
                        self.late_replies[el.get("id")] = (time.monotonic() - sent, el.get("type"))
                    elif fut is None:
                        self.unexpected.append(xml_str(el))
                elif el.tag == q("message"):
                    if el.get("type") == "error":
                        self.bounces[el.get("id")] = el
                        self.bounce_at[el.get("id")] = time.monotonic()
                    else:
                        self.messages.append(el)
                elif el.tag == STREAM_ERROR:
                    self.stream_errors.append(stream_error_condition(el) or "")
                # pushes (iq set), presence: nothing to do
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # parse errors, transport errors
            self.unexpected.append(f"reader stopped: {exc!r}")
        finally:
            self.lost = True
            self.lost_at = time.monotonic()
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionLost(self.label))
            self.waiters.clear()

    async def send(self, data: str) -> None:
        if self.lost:
            raise ConnectionLost(self.label)
        try:
            await self.c.send(data, timeout=10)
        except (ConnectionError, OSError, XmppTestError) as exc:
            raise ConnectionLost(f"{self.label}: {exc}") from exc

    async def iq(self, body: str, type_: str, timeout: float = IQ_TIMEOUT,
                 iq_id: str | None = None) -> ET.Element:
        """The reply (result or error); ConnectionLost, or asyncio.TimeoutError (a reply
        that comes later is noted in late_replies)."""
        iq_id = iq_id or new_id("w")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[iq_id] = fut
        sent = time.monotonic()
        try:
            await self.send(f"<iq type='{type_}' id='{iq_id}'>{body}</iq>")
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.overdue[iq_id] = sent
            raise
        finally:
            self.waiters.pop(iq_id, None)

    async def ping(self, timeout: float = IQ_TIMEOUT) -> ET.Element:
        return await self.iq("<ping xmlns='urn:xmpp:ping'/>", "get", timeout)

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except BaseException:
            pass
        try:
            self.c.abort()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# The ledger of writes
# ---------------------------------------------------------------------------


@dataclass
class Write:
    kind: str  # roster | privacy | block | message
    key: str  # c17@example.org | l17 | b17@example.org | m17
    owner: str  # whose data it is (for a message: the recipient's bare JID)
    conn: Conn  # the connection it was sent on
    state: str = "pending"  # acked | unknown | failed | sent | bounced
    detail: str = ""
    waits: int = 0
    acked_at: float = 0.0  # time.monotonic() of the result
    sent_at: float = 0.0  # time.monotonic() of the (last) attempt
    iq_id: str = ""  # of the last attempt

    def describe(self) -> str:
        what = {"roster": "roster item", "privacy": "privacy list", "block": "block list entry",
                "message": "offline message"}[self.kind]
        return f"{what} {self.key} of {self.owner} (written through {self.conn.node.name})"


class Ledger:
    def __init__(self):
        self.writes: list[Write] = []
        self._n = 0

    def next_n(self) -> int:
        self._n += 1
        return self._n

    def add(self, kind, key, owner, conn) -> Write:
        w = Write(kind, key, owner, conn)
        self.writes.append(w)
        return w

    def of(self, kind, owner=None, states=None):
        return [w for w in self.writes if w.kind == kind and (owner is None or w.owner == owner)
                and (states is None or w.state in states)]

    def summary(self) -> str:
        c = collections.Counter((w.kind, w.state) for w in self.writes)
        return ", ".join(f"{k}/{s}: {n}" for (k, s), n in sorted(c.items()))


def iq_body(kind: str, n: int) -> tuple[str, str]:
    """(key, IQ payload) of write number n."""
    if kind == "roster":
        key = f"c{n}@example.org"
        return key, f"<query xmlns='{NS_ROSTER}'><item jid='{key}' name='contact {n}'/></query>"
    if kind == "privacy":
        key = f"l{n}"
        return key, (
            f"<query xmlns='{NS_PRIVACY}'><list name='{key}'>"
            f"<item type='jid' value='x{n}@example.org' action='deny' order='1'><message/></item>"
            f"<item action='allow' order='2'/></list></query>"
        )
    if kind == "block":
        key = f"b{n}@example.org"
        return key, f"<block xmlns='{NS_BLOCKING}'><item jid='{key}'/></block>"
    raise ValueError(kind)


async def write_iq(conn: Conn, w: Write, body: str) -> None:
    for attempt in range(WAIT_RETRIES):
        w.sent_at, w.iq_id = time.monotonic(), new_id("w")
        try:
            resp = await conn.iq(body, "set", iq_id=w.iq_id)
        except ConnectionLost:
            w.state, w.detail = "unknown", "connection lost before the reply"
            return
        except asyncio.TimeoutError:
            if conn.lost:
                w.state, w.detail = "unknown", "connection lost before the reply"
            else:
                w.state, w.detail = "failed", f"no reply within {IQ_TIMEOUT}s"
            return
        if resp.get("type") == "result":
            w.state = "acked"
            w.acked_at = time.monotonic()
            return
        etype, cond = stanza_error(resp)
        if etype == "wait":
            w.waits += 1
            w.detail = f"type='wait' <{cond}/> x{w.waits}"
            await asyncio.sleep(0.25 * (attempt + 1))
            continue
        w.state = "failed"
        w.detail = f"error type={etype!r} <{cond}/>: {xml_str(resp)}"
        return
    w.state = "unknown"
    w.detail = f"answered type='wait' {WAIT_RETRIES} times"


async def writer(conn: Conn, ledger: Ledger, *, kinds, recipients: list[Account],
                 deadline: float, stop: asyncio.Event, max_iters: int, pace: float) -> None:
    """Write one of each kind per round, sequentially, until the deadline, the stop event,
    max_iters rounds or the loss of the connection."""
    for _ in range(max_iters):
        if stop.is_set() or time.monotonic() > deadline or conn.lost:
            return
        for kind in kinds:
            n = ledger.next_n()
            if kind == "message":
                rcpt = recipients[n % len(recipients)]
                w = ledger.add("message", f"m{n}", rcpt.jid, conn)
                w.sent_at = time.monotonic()
                try:
                    await conn.send(f"<message to='{rcpt.jid}' id='m{n}' type='chat'>"
                                    f"<body>m{n}</body></message>")
                except ConnectionLost:
                    w.state, w.detail = "unknown", "connection lost while sending"
                    return
                w.state = "sent"
            else:
                key, body = iq_body(kind, n)
                w = ledger.add(kind, key, conn.account.jid, conn)
                await write_iq(conn, w, body)
                if conn.lost:
                    return
        if pace:
            await asyncio.sleep(pace)


async def settle_bounces(conns: list[Conn], seconds: float = 3.0) -> None:
    """Give late bounces time to arrive on the connections still open: a ping round trip
    on each, then `seconds` more."""
    for c in conns:
        if not c.lost:
            try:
                await c.ping()
            except (ConnectionLost, asyncio.TimeoutError):
                pass
    await asyncio.sleep(seconds)


def classify_messages(ledger: Ledger, killed: set[str], event_at: float | None = None,
                      event: str = "") -> None:
    """sent + bounced → 'bounced'; sent through a killed node → 'unknown'. Timed-out IQ
    writes get the late reply, if one came, in their detail. Times are given relative to
    `event_at` (e.g. the kill) when it is set."""

    def rel(t):
        return f" {t - event_at:+.1f}s after {event}" if event_at is not None else ""

    for w in ledger.writes:
        if w.kind != "message" and w.state == "failed" and "no reply" in w.detail:
            late = w.conn.late_replies.get(w.iq_id)
            w.detail += (f" (sent{rel(w.sent_at)}; the reply, type={late[1]!r}, came after "
                         f"{late[0]:.1f}s)" if late else f" (sent{rel(w.sent_at)}; no reply ever)")
    for w in ledger.of("message"):
        bounce = w.conn.bounces.get(w.key)
        if bounce is not None:
            etype, cond = stanza_error(bounce)
            w.state = "bounced"
            w.detail = f"bounced type={etype!r} <{cond}/>"
            if etype != "wait":
                w.state = "failed"
                took = w.conn.bounce_at[w.key] - w.sent_at
                w.detail = (f"bounced with error type={etype!r} <{cond}/> {took:.1f}s after "
                            f"being sent{rel(w.sent_at)}: {xml_str(bounce)}")
        elif w.state == "sent" and w.conn.node.name in killed:
            w.state = "unknown"
            w.detail = "sent through the killed node"


def client_problems(conns: list[Conn], killed: set[str], ledger: Ledger) -> list[str]:
    """Everything a client saw that the tests do not allow."""
    out = []
    for w in ledger.writes:
        if w.state == "failed":
            out.append(f"{w.describe()}: {w.detail}")
    for c in conns:
        if c.node.name in killed:
            continue
        if c.stream_errors:
            out.append(f"{c.label} (on a surviving node) got stream error(s) {c.stream_errors}")
        elif c.lost:
            out.append(f"{c.label} (on a surviving node) lost its connection: {c.unexpected}")
    return out


# ---------------------------------------------------------------------------
# Reading the data back
# ---------------------------------------------------------------------------


async def read_iq(conn: Conn, body: str, what: str) -> ET.Element:
    """An IQ get; type='wait' errors are retried a bounded number of times."""
    last = None
    for attempt in range(8):
        try:
            resp = await conn.iq(body, "get")
        except asyncio.TimeoutError:
            raise AssertionError(f"{conn.label}: no reply to the {what} get within {IQ_TIMEOUT}s")
        except ConnectionLost:
            raise AssertionError(f"{conn.label}: connection lost while reading the {what}")
        if resp.get("type") == "result":
            return resp
        last = resp
        if stanza_error(resp)[0] != "wait":
            break
        await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError(f"{conn.label}: reading the {what} failed: {xml_str(last)}")


async def read_account(conn: Conn) -> dict[str, collections.Counter]:
    """The account's roster JIDs, privacy list names and blocked JIDs, each counted (a
    duplicate shows as a count of 2)."""
    r = await read_iq(conn, f"<query xmlns='{NS_ROSTER}'/>", "roster")
    query = r.find(ns(NS_ROSTER, "query"))
    roster = collections.Counter(
        i.get("jid") for i in (query.findall(ns(NS_ROSTER, "item")) if query is not None else [])
    )
    r = await read_iq(conn, f"<query xmlns='{NS_PRIVACY}'/>", "privacy lists")
    query = r.find(ns(NS_PRIVACY, "query"))
    lists = query.findall(ns(NS_PRIVACY, "list")) if query is not None else []
    privacy = collections.Counter(lst.get("name") for lst in lists)
    r = await read_iq(conn, f"<blocklist xmlns='{NS_BLOCKING}'/>", "block list")
    bl = r.find(ns(NS_BLOCKING, "blocklist"))
    block = collections.Counter(
        i.get("jid") for i in (bl.findall(ns(NS_BLOCKING, "item")) if bl is not None else [])
    )
    return {"roster": roster, "privacy": privacy, "block": block}


async def privacy_list_ok(conn: Conn, name: str) -> str | None:
    """None if the list reads back with the item it was written with, else why not."""
    r = await read_iq(conn, f"<query xmlns='{NS_PRIVACY}'><list name='{name}'/></query>",
                      f"privacy list {name}")
    lists = r.findall(f"{ns(NS_PRIVACY, 'query')}/{ns(NS_PRIVACY, 'list')}")
    want = f"x{name[1:]}@example.org"
    if len(lists) != 1 or lists[0].get("name") != name:
        return f"privacy list {name} read back as {xml_str(r)}"
    values = [i.get("value") for i in lists[0].findall(ns(NS_PRIVACY, "item"))]
    if want not in values:
        return f"privacy list {name} lost its item {want}: {xml_str(r)}"
    return None


async def check_account_data(ledger: Ledger, accounts: list[Account], node: Server,
                             context: str, resource: str) -> list[str]:
    """Log in as each account through `node` and compare what it reads with the ledger."""
    problems = []
    for acc in accounts:
        conn = await Conn.open(node, acc, resource)
        try:
            data = await read_account(conn)
            for kind in ("roster", "privacy", "block"):
                mine = ledger.of(kind, owner=acc.jid)
                attempted = {w.key for w in mine}
                for w in mine:
                    if w.state == "acked" and data[kind][w.key] == 0:
                        problems.append(
                            f"acknowledged {w.describe()} missing on {node.name} {context}"
                        )
                for key, count in data[kind].items():
                    if count > 1:
                        problems.append(
                            f"{kind} entry {key} of {acc.jid} appears {count} times on "
                            f"{node.name} {context}"
                        )
                    if key not in attempted:
                        problems.append(
                            f"{kind} entry {key} of {acc.jid} on {node.name} {context} was "
                            f"never written by this account"
                        )
            acked_lists = [w.key for w in ledger.of("privacy", acc.jid, {"acked"})]
            for name in {acked_lists[0], acked_lists[-1]} if acked_lists else ():
                why = await privacy_list_ok(conn, name)
                if why:
                    problems.append(f"{why} (account {acc.jid}, on {node.name} {context})")
        finally:
            await conn.close()
    return problems


async def collect_offline(node: Server, account: Account, expected: set[str],
                          timeout: float = 20.0, extra: float = 1.5) -> tuple[list[str], Conn]:
    """Log `account` in on `node` with initial presence; the bodies of the messages it
    gets, in arrival order, once every expected body arrived (or the timeout passed) and
    `extra` seconds more (a duplicate would come then)."""
    conn = await Conn.open(node, account, f"read-{node.name}")
    await conn.send("<presence/>")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not conn.lost:
        got = {m.findtext(q("body")) for m in conn.messages}
        if expected <= got:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(extra)
    return [m.findtext(q("body")) for m in conn.messages], conn


async def check_offline(ledger: Ledger, recipients: list[Account], nodes: list[Server],
                        context: str) -> list[str]:
    """Each recipient logs in (round robin over `nodes`): every stored message ('sent'
    from a surviving connection, no bounce) exactly once; nothing twice."""
    problems = []
    for i, acc in enumerate(recipients):
        node = nodes[i % len(nodes)]
        mine = ledger.of("message", owner=acc.jid)
        must = {w.key: w for w in mine if w.state == "sent"}
        attempted = {w.key for w in mine}
        bodies, conn = await collect_offline(node, acc, set(must))
        await conn.close()
        counts = collections.Counter(bodies)
        for key, w in must.items():
            if counts[key] == 0:
                problems.append(
                    f"{w.describe()}, sent without a bounce, was not delivered to {acc.jid} "
                    f"on {node.name} {context}"
                )
        for key, n in counts.items():
            if n > 1:
                problems.append(f"message {key} delivered {n} times to {acc.jid} on {node.name} "
                                f"{context}")
            if key not in attempted:
                problems.append(f"{acc.jid} received message {key!r} that nobody sent to it "
                                f"({context})")
    return problems


def fail_if(problems: list[str], ledger: Ledger | None = None, limit: int = 25) -> None:
    if problems:
        more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
        tally = f"\nwrites: {ledger.summary()}" if ledger is not None else ""
        pytest.fail("\n".join(problems[:limit]) + more + tally, pytrace=False)


# ---------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------


def shard_placement(cluster: Cluster, node: Server) -> tuple[int, dict[int, dict]]:
    """(number of shards, {shard: entry}) as `node` sees it; every shard must be hosted
    by some node with three voters."""
    count = cluster.shard_count()
    entries = {}
    for n in cluster.nodes:
        if n.alive():
            for e in cluster.shards(n):
                entries.setdefault(e["shard"], e)
    missing = sorted(set(range(count)) - set(entries))
    assert not missing, f"shards {missing} are hosted by no node (of {count})"
    view = {e["shard"]: e for e in cluster.shards(node)}
    return count, {s: view.get(s, entries[s]) for s in range(count)}


def pick_accounts(cluster: Cluster, pool: list[Account], victim: int, count: int,
                  leaders: dict[int, int], n_writers: int, n_recipients: int):
    """Writers (2 per node) and recipients from `pool`: each node's first writer and the
    first recipient preferably in a shard that `victim` leads, the others preferably not;
    distinct shards where possible."""
    pool = list(pool)
    used_shards: set[int] = set()

    def take(prefer_victim: bool) -> Account:
        def score(a):
            s = cluster.shard_of(a.jid, count)
            led = leaders.get(s) == victim
            return (led != prefer_victim, s in used_shards)

        pool.sort(key=score)
        a = pool.pop(0)
        used_shards.add(cluster.shard_of(a.jid, count))
        return a

    writers = [take(prefer_victim=(i % 2 == 0)) for i in range(n_writers)]
    recipients = [take(prefer_victim=(i == 0)) for i in range(n_recipients)]
    return writers, recipients, pool


def placement_note(cluster, accounts, count, leaders, victim) -> str:
    parts = []
    for a in accounts:
        s = cluster.shard_of(a.jid, count)
        parts.append(f"{a.local}: shard {s} led by {leaders.get(s)}"
                     + (" (victim)" if leaders.get(s) == victim else ""))
    return "; ".join(parts)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, failure_timeout_ms=2000)
    # The writers create hundreds of privacy lists and block entries per account, beyond
    # the per-account caps' defaults (test_account_caps.py tests those).
    for n in c.nodes:
        n.config.setdefault("im", {}).update(
            {"max_privacy_lists": 100000, "max_blocklist_items": 100000})
        n.config_path.write_text(render_toml(n.config))
    yield c
    errors = c.stop()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


# ---------------------------------------------------------------------------
# 1. kill -9 of any one node under writes of every kind
# ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("victim", [1, 2, 3], ids=["kill-n1", "kill-n2", "kill-n3"])
async def test_writes_survive_kill_of_each_node(cluster, victim):
    """Two writers per node write roster items, privacy lists, block entries and offline
    messages for 9 s; node `victim` is killed after 2.5 s. The survivors must then hold
    every acknowledged write once and deliver every unbounced message from a surviving
    client once; batches stored while the victim is down must reach their recipients when
    they log in through the restarted victim at once, and the victim then reads the same
    rosters, privacy lists and block lists. Writers and recipients are picked so that the
    victim leads their shards where it leads any."""
    pool = cluster.accounts(14)
    cluster.start()
    cluster.wait_shards_ready(timeout=30)
    nodes = cluster.nodes
    dead = nodes[victim - 1]
    survivors = [n for n in nodes if n is not dead]
    count, placement = shard_placement(cluster, nodes[0])
    for s, e in placement.items():
        assert len(e["voters"]) == 3, f"shard {s} has voters {e['voters']}, expected 3 replicas"
    leaders = {s: e["leader"] for s, e in placement.items()}
    writers_acc, recipients, rest = pick_accounts(cluster, pool, victim, count, leaders, 6, 3)
    lates = rest[:3]  # each receives a batch stored while the victim is down
    print(f"kill node {victim}; shard leaders {leaders}; writers "
          f"{placement_note(cluster, writers_acc, count, leaders, victim)}; recipients "
          f"{placement_note(cluster, recipients, count, leaders, victim)}")

    ledger = Ledger()
    conns = []
    for i, acc in enumerate(writers_acc):
        conns.append(await Conn.open(nodes[i // 2], acc, "writer"))
    stop = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(writer(c, ledger, kinds=KINDS_ALL, recipients=recipients,
                                        deadline=t0 + 9.0, stop=stop, max_iters=120, pace=0.02))
             for c in conns]
    problems: list[str] = []
    killed = {dead.name}
    try:
        await asyncio.sleep(2.5)
        acked_before = len(ledger.of("roster", states={"acked"}))
        assert acked_before > 0, f"no roster write was acknowledged in 2.5 s: {ledger.summary()}"
        await asyncio.to_thread(dead.kill9)
        t_kill = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), 9.0 + 2 * IQ_TIMEOUT + 10)
        t_written = time.monotonic() - t0
        await asyncio.to_thread(cluster.wait_shards_ready, survivors, 30)
        await settle_bounces([c for c in conns if c.node is not dead])
        classify_messages(ledger, killed, t_kill, f"the kill of {dead.name}")
        print(f"writes ({t_written:.1f}s): {ledger.summary()}")
        doomed = [c for c in conns if c.node is dead]
        assert all(c.lost for c in doomed), "the killed node's clients still have a connection"
        # Writes went on after the kill through the surviving nodes.
        after = [w for w in ledger.writes if w.state == "acked" and w.acked_at > t_kill + 0.5]
        if not after:
            problems.append(f"no write through a surviving node was acknowledged after the "
                            f"kill of {dead.name}")

        # Everything acknowledged is there, through either surviving node.
        ctx = f"after killing {dead.name}"
        for i, node in enumerate(survivors):
            accs = writers_acc[i::2]  # each account read through one survivor, by turns
            problems += await check_account_data(ledger, accs, node, ctx, f"check-{node.name}")
        problems += await check_offline(ledger, recipients, survivors, ctx)

        # Batches stored while the victim is down, for accounts that read them through the
        # victim as soon as it is back.
        sender = next(c for c in conns if c.node is not dead and not c.lost)
        late_ids = [f"late{k}" for k in range(5)]
        for late in lates:
            for mid in late_ids:
                await sender.send(f"<message to='{late.jid}' id='{mid}' type='chat'>"
                                  f"<body>{mid}</body></message>")
        await settle_bounces([sender], 1.0)
        bounced = [f"{b.get('from')}: {m}" for m, b in sender.bounces.items()
                   if m in late_ids]
        if bounced:
            problems.append(
                f"messages {bounced} to offline accounts bounced with the cluster at two "
                f"nodes: {[xml_str(b) for m, b in sender.bounces.items() if m in late_ids]}")

        # The victim comes back and serves the same data. The first logins through it are
        # the recipients of the batches stored meanwhile (users reconnecting at once).
        await asyncio.to_thread(dead.start)
        await asyncio.to_thread(cluster.wait_formed, None, 30)
        if not bounced:
            got = await asyncio.gather(*(collect_offline(dead, late, set(late_ids), 12.0)
                                         for late in lates))
            for _, conn in got:
                await conn.close()
            missed = [(late, bodies) for late, (bodies, _) in zip(lates, got)
                      if bodies != late_ids]
            # Lost, or only not delivered through the restarted node? Ask a survivor.
            again = await asyncio.gather(*(collect_offline(survivors[0], late, set(late_ids), 5.0)
                                           for late, _ in missed))
            for (late, bodies), (second, conn) in zip(missed, again):
                await conn.close()
                problems.append(
                    f"the {len(late_ids)} messages stored for {late.jid} while {dead.name} "
                    f"was down, read through {dead.name} right after its restart: expected "
                    f"{late_ids} once each in order, got {bodies} (a second login through "
                    f"{survivors[0].name} then got {second})")
        await asyncio.to_thread(cluster.wait_shards_ready, None, 30)
        ctx = f"through {dead.name} after its restart"
        problems += await check_account_data(ledger, writers_acc, dead, ctx, "check-restarted")
        for p in client_problems(conns, killed, ledger):
            if p not in problems:
                problems.append(p)
        fail_if(problems, ledger)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for c in conns:
            await c.close()


# ---------------------------------------------------------------------------
# 2. a node joins and another leaves while clients write
# ---------------------------------------------------------------------------


def removed_replicas_gone(cluster: Cluster, nodes: list[Server], timeout: float) -> list[str]:
    """Replicas moved away from a node must stop: [] once none of `nodes` runs one any
    more, else their descriptions after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        views = {n.name: cluster.shards(n) for n in cluster.nodes if n.alive()}
        stale = [d for name, _, d in cluster.removed_replicas(views)
                 if name in {n.name for n in nodes}]
        if not stale or time.monotonic() > deadline:
            return stale
        time.sleep(0.5)


@pytest.mark.timeout(200)
async def test_add_and_remove_node_under_traffic(cluster, tmp_path):
    """Two writers on n1 and two on n2 write roster items and offline messages while n4
    joins (and must get shard replicas), then `cluster leave --node 3` moves n3's replicas
    away (no shard may list 3 afterwards, each keeps 3 replicas) and n3 is stopped. Every
    acknowledged write must then read back once through n1, n2 and n4, and no replica moved
    off a node may keep running there."""
    writers_acc = cluster.accounts(4)
    recipients = cluster.accounts(4)
    cluster.start()
    cluster.wait_shards_ready(timeout=30)
    n1, n2, n3 = cluster.nodes
    (port,) = free_ports(1)
    seed = n1.config["cluster"]["members"][0]
    n4 = Server(tmp_path / "n4", {
        "c2s": {"require_tls": True},
        "cluster": {"node_id": 4, "listen": f"127.0.0.14:{port}", "secret": SECRET,
                    "seeds": [seed], "heartbeat_ms": 100, "failure_timeout_ms": 2000},
    }, name="n4")
    lines = "".join(f"{a.jid} {a.password}\n" for a in writers_acc + recipients)
    r = n4.cli("user", "import", "-", input=lines)
    assert r.returncode == 0, r.stderr

    ledger = Ledger()
    conns = [await Conn.open(node, acc, "writer")
             for node, acc in zip((n1, n1, n2, n2), writers_acc)]
    stop = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(writer(c, ledger, kinds=("roster", "message"),
                                        recipients=recipients, deadline=t0 + 120, stop=stop,
                                        max_iters=300, pace=0.1))
             for c in conns]
    timeline = []
    problems: list[str] = []

    def mark(what):
        timeline.append(f"{time.monotonic() - t0:5.1f}s {what}")

    try:
        await asyncio.sleep(1.5)
        cluster.nodes.append(n4)
        mark("n4 starting")
        await asyncio.to_thread(n4.start)

        def n4_member():
            s = cluster.status(n1)
            return "4" in {str(v) for v in s["voters"]} and s["members"].get("4") == "up"

        await asyncio.to_thread(cluster.wait_for, "node 4 to become a voter and be up",
                                n4_member, 30)
        mark("n4 voter and up")

        def n4_hosts_shards():
            return [e["shard"] for e in cluster.shards(n4)]

        hosted = await asyncio.to_thread(
            cluster.wait_for, "node 4 to host at least one shard replica", n4_hosts_shards, 45)
        await asyncio.to_thread(cluster.wait_shards_ready, [n1, n2, n3, n4], 45, True)
        mark(f"n4 hosts shards {hosted}")
        stale = await asyncio.to_thread(removed_replicas_gone, cluster, [n1, n2, n3], 10)
        if stale:
            problems.append("after node 4 joined, replicas moved to it keep running where "
                            "they were: " + "; ".join(stale[:6]))
        # Writes keep flowing with four nodes.
        await asyncio.sleep(2.0)

        t_leave = time.monotonic()
        r = await asyncio.to_thread(n1.cli, "cluster", "leave", "--node", "3", timeout=90)
        leave_s = time.monotonic() - t_leave
        mark(f"`cluster leave --node 3` exited {r.returncode} after {leave_s:.1f}s")
        assert r.returncode == 0, (
            f"`switchboard cluster leave --node 3` through n1 exited {r.returncode} after "
            f"{leave_s:.1f}s\nstdout: {r.stdout}\nstderr: {r.stderr}"
        )
        if leave_s > 60:
            problems.append(f"`cluster leave --node 3` took {leave_s:.1f}s (limit 60 s)")

        def no_shard_on_3():
            views = {n.name: cluster.shards(n) for n in (n1, n2, n4)}
            moved = {(name, shard) for name, shard, _ in cluster.removed_replicas(views)}
            bad = []
            for name, entries in views.items():
                for e in entries:
                    if (name, e["shard"]) in moved:
                        continue  # reported by removed_replicas_gone
                    if 3 in e["voters"] or len(e["voters"]) != 3:
                        bad.append(f"{name}: shard {e['shard']} voters {e['voters']}")
            assert not bad, "; ".join(bad[:8])
            return True

        await asyncio.to_thread(
            cluster.wait_for,
            "no shard to list node 3 among its voters (and each to keep 3 replicas) after "
            "`cluster leave --node 3`", no_shard_on_3, 15)
        await asyncio.to_thread(n3.stop)
        t_gone = time.monotonic()
        mark("n3 stopped")
        await asyncio.to_thread(cluster.wait_shards_ready, [n1, n2, n4], 30, True)
        # Writes go on with node 3 gone.
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 2 * IQ_TIMEOUT + 10)
        mark("writers stopped")
        await settle_bounces(conns)
        classify_messages(ledger, set(), t_leave, "the start of the leave")
        print("\n".join(timeline))
        print(f"writes: {ledger.summary()}")
        acked = ledger.of("roster", states={"acked"})
        during = [w for w in acked if t_leave < w.acked_at < t_leave + leave_s]
        after = [w for w in acked if w.acked_at > t_gone]
        print(f"roster writes acknowledged during the leave: {len(during)}, after node 3 "
              f"stopped: {len(after)}")
        if not after:
            problems.append("no roster write was acknowledged after node 3 stopped")

        for node in (n1, n2, n4):
            problems += await check_account_data(
                ledger, writers_acc, node, "after node 4 joined and node 3 left",
                f"check-{node.name}")
        problems += await check_offline(ledger, recipients, [n4, n1, n2],
                                        "after node 4 joined and node 3 left")
        stale = await asyncio.to_thread(removed_replicas_gone, cluster, [n1, n2, n4], 10)
        if stale:
            problems.append("after node 3 left, replicas moved away keep running: "
                            + "; ".join(stale[:6]))
        problems += client_problems(conns, set(), ledger)
        if problems:
            problems.append("timeline:\n" + "\n".join(timeline))
        fail_if(problems, ledger)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        for c in conns:
            await c.close()


# ---------------------------------------------------------------------------
# 3. the leader of an offline user's shard dies with messages stored
# ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_offline_message_not_lost_when_holder_dies(cluster):
    """20 messages to an offline user, then kill -9 of the leader of that user's shard (the
    sender is on another node); the user logs in on a survivor and gets all 20, once each,
    in order."""
    alice, bob = cluster.accounts(2)
    cluster.start()
    cluster.wait_shards_ready(timeout=30)
    nodes = cluster.nodes
    count = cluster.shard_count()
    shard = cluster.shard_of(bob.jid, count)
    notes = []

    def leader_of_bob(view: Server) -> int:
        entry = next((e for e in cluster.shards(view) if e["shard"] == shard), None)
        assert entry is not None, f"{view.name} does not host shard {shard} of {bob.jid}"
        return int(entry["leader"])

    leader = leader_of_bob(nodes[0])
    # A writes from node 1, unless node 1 leads bob's shard: killing A's own node could
    # lose a message that was still on its way, which no client could tell apart from a
    # loss, so A then writes from node 2 and the leader is still the one killed.
    a_node = nodes[0] if leader != 1 else nodes[1]
    if a_node is not nodes[0]:
        notes.append(f"n1 leads shard {shard} of {bob.jid}: alice writes from n2")
    a = await Conn.open(a_node, alice, "phone")
    try:
        ids = [f"o{k}" for k in range(1, 21)]
        for mid in ids:
            await a.send(f"<message to='{bob.jid}' id='{mid}' type='chat'><body>{mid}</body>"
                         f"</message>")
        await settle_bounces([a], 1.5)
        assert not a.bounces, (
            f"messages to offline {bob.jid} bounced in a healthy cluster: "
            f"{[xml_str(b) for b in a.bounces.values()]}"
        )
        leader = leader_of_bob(a_node)
        if leader != cluster.node_id(a_node):
            victim = cluster.node_by_id(leader)
        else:
            entry = next(e for e in cluster.shards(a_node) if e["shard"] == shard)
            other = next(v for v in entry["voters"] if v != leader)
            victim = cluster.node_by_id(other)
            notes.append(f"{a_node.name} (alice's node) leads shard {shard}: killed follower "
                         f"{victim.name} instead")
        notes.append(f"{bob.jid} is in shard {shard}, led by {leader}; killed {victim.name}")
        print("; ".join(notes))
        await asyncio.to_thread(victim.kill9)
        survivors = [n for n in nodes if n is not victim]
        await asyncio.to_thread(cluster.wait_shards_ready, survivors, 30)
        # bob reads through a surviving node other than alice's when there is one.
        b_node = next((n for n in survivors if n is not a_node), survivors[0])
        bodies, b = await collect_offline(b_node, bob, set(ids))
        await b.close()
        assert bodies == ids, (
            f"{bob.jid} (shard {shard}) logged in on {b_node.name} after {victim.name} "
            f"(shard leader {leader}) was killed: expected {ids} once each in order, got "
            f"{bodies} (missing {[i for i in ids if i not in bodies]}, "
            f"repeated {[i for i, n in collections.Counter(bodies).items() if n > 1]}); "
            f"{'; '.join(notes)}"
        )
        assert not a.lost and not a.stream_errors, (
            f"alice's connection on {a_node.name} did not survive: {a.stream_errors} "
            f"{a.unexpected}")
    finally:
        await a.close()
