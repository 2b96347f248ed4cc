//! The message archive's contract (`storage::archive`), run against both backends: the
//! embedded one (a temporary sled store, every write applied through `UserData::apply` as
//! the shard's Raft state machine would) and PostgreSQL (a private instance started with
//! `scripts/pg-instance.sh`). Every page either gives is compared with a reference model
//! (a plain filter over all messages, written from XEP-0313 §4 and XEP-0059 as the
//! `ArchiveQuery` docs state them), and the two backends' transcripts with each other.
//!
//! Without PostgreSQL's binaries the PostgreSQL half is skipped with a printed reason,
//! unless `SWITCHBOARD_REQUIRE_POSTGRES=1` (CI: `scripts/test.sh`), which makes it fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use proto::stanza_id::ArchiveId;
use storage::archive::postgres::PgArchive;
use storage::archive::{embedded, ArchivePage, ArchiveQuery, ArchivedMessage};
use storage::{Store, UserData, UserDataWrite};

const JULIET: &str = "juliet@capulet.lit";
const ROMEO: &str = "romeo@montague.lit";
/// A prefix of JULIET's JID: its keys sort right next to hers.
const NEIGHBOUR: &str = "juliet@capulet.li";
const NURSE: &str = "nurse@capulet.lit";
const TYBALT: &str = "tybalt@capulet.lit";
const T0: u64 = 1_700_000_000_000;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        // Tests run in parallel threads of one process: the counter keeps their dirs apart.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sb-archive-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private PostgreSQL server (`scripts/pg-instance.sh`), stopped on drop.
struct PgInstance {
    dir: TempDir,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-instance.sh")
}

impl PgInstance {
    /// The instance, or why there is none (PostgreSQL not installed).
    fn start() -> Result<PgInstance, String> {
        let dir = TempDir::new("pg");
        // A free loopback port: bound, read, released (the server takes it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir.0)
            .arg(port.to_string())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match out.status.code() {
            Some(0) => {}
            Some(3) => return Err(stderr),
            _ => panic!("scripts/pg-instance.sh start failed: {stderr}"),
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(PgInstance { dir, url })
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir.0)
            .status();
    }
}

/// One backend behind the calls the node makes.
enum Backend {
    Embedded {
        data: Box<UserData>,
        _store: Store,
        _dir: TempDir,
    },
    Postgres {
        pg: PgArchive,
        _instance: PgInstance,
    },
}

impl Backend {
    fn embedded() -> Backend {
        let dir = TempDir::new("embedded");
        let store = Store::open(&dir.0).unwrap();
        // A replicated shard's placement: what a cluster node applies its Raft log to.
        let data = store.shard_user_data(7).unwrap();
        Backend::Embedded {
            data: Box::new(data),
            _store: store,
            _dir: dir,
        }
    }

    async fn postgres() -> Option<Backend> {
        let required = std::env::var("SWITCHBOARD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let instance = match PgInstance::start() {
            Ok(i) => i,
            Err(why) if !required => {
                println!("skipping the PostgreSQL backend: {why}");
                return None;
            }
            Err(why) => panic!("SWITCHBOARD_REQUIRE_POSTGRES=1 but no PostgreSQL: {why}"),
        };
        let pg = PgArchive::connect(&instance.url, 4).await.unwrap();
        pg.migrate().await.unwrap();
        // Idempotent.
        pg.migrate().await.unwrap();
        Some(Backend::Postgres {
            pg,
            _instance: instance,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Embedded { .. } => "embedded",
            Backend::Postgres { .. } => "postgres",
        }
    }

    async fn append(&self, batch: &[(String, ArchivedMessage)]) {
        match self {
            Backend::Embedded { data, .. } => {
                let mut writes = Vec::new();
                for (user, m) in batch {
                    writes.push(embedded::append_writes(user, m).unwrap());
                }
                data.apply(&UserDataWrite::Batch(writes)).unwrap();
            }
            Backend::Postgres { pg, .. } => {
                assert_eq!(pg.append(batch).await.unwrap(), batch.len() as u64);
            }
        }
    }

    async fn query(&self, user: &str, q: &ArchiveQuery) -> ArchivePage {
        match self {
            Backend::Embedded { data, .. } => embedded::query(&data.modules, user, q).unwrap(),
            Backend::Postgres { pg, .. } => pg.query(user, q).await.unwrap(),
        }
    }

    async fn exists(&self, user: &str, id: u64) -> bool {
        match self {
            Backend::Embedded { data, .. } => embedded::exists(&data.modules, user, id).unwrap(),
            Backend::Postgres { pg, .. } => pg.exists(user, id).await.unwrap(),
        }
    }

    async fn bounds(&self, user: &str) -> Option<(u64, u64)> {
        match self {
            Backend::Embedded { data, .. } => embedded::bounds(&data.modules, user).unwrap(),
            Backend::Postgres { pg, .. } => pg.bounds(user).await.unwrap(),
        }
    }

    async fn delete_user(&self, user: &str) {
        match self {
            Backend::Embedded { data, .. } => {
                data.apply(&UserDataWrite::DeleteUser { user: user.into() })
                    .unwrap();
            }
            Backend::Postgres { pg, .. } => {
                pg.delete_user(user).await.unwrap();
            }
        }
    }

    /// Remove the given (account, id)s through the embedded backend's writes.
    fn remove(data: &UserData, found: &[(String, u64)]) -> u64 {
        let mut by_user: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (user, id) in found {
            by_user.entry(user).or_default().push(*id);
        }
        let mut writes = Vec::new();
        for (user, ids) in by_user {
            writes.extend(embedded::remove_writes(&data.modules, user, &ids).unwrap());
        }
        data.apply(&UserDataWrite::Batch(writes)).unwrap();
        found.len() as u64
    }

    async fn purge_before(&self, cutoff_ms: u64, limit: usize) -> u64 {
        match self {
            Backend::Embedded { data, .. } => {
                let (found, _) = embedded::expired(&data.modules, None, cutoff_ms, limit).unwrap();
                Backend::remove(data, &found)
            }
            Backend::Postgres { pg, .. } => pg.purge_before(cutoff_ms, limit as u64).await.unwrap(),
        }
    }

    async fn trim(&self, user: &str, cap: u64, limit: usize) -> u64 {
        match self {
            Backend::Embedded { data, .. } => {
                let ids = embedded::over_cap(&data.modules, user, cap, limit).unwrap();
                let found: Vec<_> = ids.into_iter().map(|id| (user.to_string(), id)).collect();
                Backend::remove(data, &found)
            }
            Backend::Postgres { pg, .. } => pg.trim(user, cap, limit as u64).await.unwrap(),
        }
    }
}

/// The reference: every message, and queries answered by filtering all of them.
#[derive(Default)]
struct Model {
    messages: BTreeMap<(String, u64), ArchivedMessage>,
}

impl Model {
    fn of(&self, user: &str) -> Vec<&ArchivedMessage> {
        self.messages
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, m)| m)
            .collect()
    }

    fn query(&self, user: &str, q: &ArchiveQuery) -> ArchivePage {
        let resource = q
            .with
            .as_ref()
            .and(q.with_resource.as_ref())
            .filter(|r| !r.is_empty());
        let set: Vec<&ArchivedMessage> = self
            .of(user)
            .into_iter()
            .filter(|m| q.with.as_ref().is_none_or(|w| *w == m.with))
            .filter(|m| resource.is_none_or(|r| *r == m.with_resource))
            .filter(|m| q.start_ms.is_none_or(|s| ArchiveId(m.id).millis() >= s))
            .filter(|m| q.end_ms.is_none_or(|e| ArchiveId(m.id).millis() <= e))
            .filter(|m| q.ids.is_empty() || q.ids.contains(&m.id))
            .collect();
        let count = q.count.then_some(set.len() as u64);
        let paged: Vec<&ArchivedMessage> = set
            .into_iter()
            .filter(|m| q.after_id.is_none_or(|a| m.id > a))
            .filter(|m| q.before_id.is_none_or(|b| m.id < b))
            .collect();
        let complete = paged.len() <= q.max;
        let page = if q.from_end {
            &paged[paged.len().saturating_sub(q.max)..]
        } else {
            &paged[..q.max.min(paged.len())]
        };
        ArchivePage {
            messages: page.iter().map(|m| (*m).clone()).collect(),
            complete,
            count,
        }
    }
}

/// A tiny deterministic PRNG (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The archives: JULIET's 240 messages with three peers and several resources (three per
/// millisecond at times, so ids differ in their sequence only), one with non-ASCII text
/// and one of 256 KiB; ROMEO's 50, with ids that JULIET has too; NEIGHBOUR's 5.
fn messages() -> Vec<(String, ArchivedMessage)> {
    let peers: &[(&str, &str)] = &[
        (ROMEO, "orchard"),
        (ROMEO, "balcony"),
        (ROMEO, ""),
        (NURSE, ""),
        (TYBALT, "sword"),
    ];
    let mut out = Vec::new();
    for i in 0..240u64 {
        let (with, resource) = peers[(i * 7 % 11 % 5) as usize];
        // Ten minutes' gap every 60 messages, which span 20 s: the embedded index's spans (65 s) differ.
        let ms = T0 + (i / 3) * 1000 + (i / 60) * 600_000;
        let body = match i {
            17 => "Ромео, Ромео! ☃ 🌹 ‹&amp;› 'quoted' \"double\"".to_string(),
            101 => "x".repeat(256 * 1024),
            _ => format!("message {i}"),
        };
        out.push((
            JULIET.to_string(),
            ArchivedMessage {
                id: ArchiveId::new(ms, 1, (i % 3) as u16).0,
                with: with.into(),
                with_resource: resource.into(),
                outgoing: i % 2 == 0,
                xml: format!(
                    "<message xmlns='jabber:client' id='m{i}'><body>{body}</body></message>"
                )
                .into(),
            },
        ));
    }
    for i in 0..50u64 {
        out.push((
            ROMEO.to_string(),
            ArchivedMessage {
                id: ArchiveId::new(T0 + (i / 3) * 1000, 1, (i % 3) as u16).0,
                with: JULIET.into(),
                with_resource: "balcony".into(),
                outgoing: i % 3 == 0,
                xml: format!("<message id='r{i}'/>").into(),
            },
        ));
    }
    for i in 0..5u64 {
        out.push((
            NEIGHBOUR.to_string(),
            ArchivedMessage {
                id: ArchiveId::new(T0 + i, 2, 0).0,
                with: ROMEO.into(),
                with_resource: String::new(),
                outgoing: false,
                xml: "<message/>".into(),
            },
        ));
    }
    out
}

/// Runs every scenario against `b`, checking each answer against the model; returns the
/// transcript (label, answer) to compare across backends.
async fn scenarios(b: &Backend) -> Vec<(String, String)> {
    let name = b.name();
    let mut model = Model::default();
    let mut transcript = Vec::new();
    let all = messages();
    for chunk in all.chunks(64) {
        b.append(chunk).await;
        for (user, m) in chunk {
            model.messages.insert((user.clone(), m.id), m.clone());
        }
    }
    let juliet: Vec<ArchivedMessage> = model.of(JULIET).into_iter().cloned().collect();
    let id = |i: usize| juliet[i].id;

    macro_rules! check {
        ($label:expr, $user:expr, $q:expr) => {{
            let q: &ArchiveQuery = &$q;
            let user: &str = $user;
            let got = b.query(user, q).await;
            let want = model.query(user, q);
            assert_eq!(got, want, "{name}: {} {q:?}", $label);
            transcript.push(($label.to_string(), format!("{got:?}")));
            got
        }};
    }

    // Forward paging to the end: the pages join into the whole archive, only the last is
    // complete.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = check!(
            "forward page",
            JULIET,
            ArchiveQuery {
                after_id: after,
                max: 7,
                ..Default::default()
            }
        );
        seen.extend(page.messages.iter().cloned());
        if page.complete {
            break;
        }
        after = page.messages.last().map(|m| m.id);
    }
    assert_eq!(seen, juliet, "{name}: forward paging");

    // Backward paging from the end (RSM <before/>): the same, newest page first.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = check!(
            "backward page",
            JULIET,
            ArchiveQuery {
                before_id: before,
                max: 11,
                from_end: true,
                ..Default::default()
            }
        );
        before = page.messages.first().map(|m| m.id);
        let complete = page.complete;
        pages.push(page.messages);
        if complete {
            break;
        }
    }
    let joined: Vec<ArchivedMessage> = pages.into_iter().rev().flatten().collect();
    assert_eq!(joined, juliet, "{name}: backward paging");

    // with: bare, full, a full JID with an empty resource (= bare), no such peer.
    for (with, resource) in [
        (ROMEO, None),
        (ROMEO, Some("orchard")),
        (ROMEO, Some("")),
        (ROMEO, Some("nobody")),
        (NURSE, None),
        (TYBALT, Some("sword")),
        ("mercutio@verona.lit", None),
    ] {
        for from_end in [false, true] {
            check!(
                "with",
                JULIET,
                ArchiveQuery {
                    with: Some(with.into()),
                    with_resource: resource.map(str::to_string),
                    max: 9,
                    from_end,
                    count: true,
                    ..Default::default()
                }
            );
        }
    }
    // A resource without a bare JID is ignored.
    check!(
        "resource alone",
        JULIET,
        ArchiveQuery {
            with_resource: Some("orchard".into()),
            max: 5,
            ..Default::default()
        }
    );

    // start/end (a millisecond holds up to three messages here).
    let mid = ArchiveId(id(120)).millis();
    for (start, end) in [
        (Some(mid), None),
        (None, Some(mid)),
        (Some(mid), Some(mid)),
        (Some(mid + 1), Some(mid + 999)),
        (Some(mid), Some(mid - 1)),
        (Some(0), Some(u64::MAX)),
    ] {
        for from_end in [false, true] {
            check!(
                "start/end",
                JULIET,
                ArchiveQuery {
                    start_ms: start,
                    end_ms: end,
                    max: 10,
                    from_end,
                    count: true,
                    ..Default::default()
                }
            );
        }
    }

    // after/before ids, with and without with; before at the first id, after at the last.
    for (after, before) in [
        (Some(id(10)), Some(id(50))),
        (Some(id(10)), Some(id(11))),
        (None, Some(id(0))),
        (Some(id(239)), None),
        (Some(id(50)), Some(id(10))),
    ] {
        for with in [None, Some(ROMEO.to_string())] {
            check!(
                "after/before",
                JULIET,
                ArchiveQuery {
                    with,
                    after_id: after,
                    before_id: before,
                    max: 8,
                    count: true,
                    ..Default::default()
                }
            );
        }
    }

    // ids: some of hers, one twice, one nobody has, one only ROMEO has.
    let romeo_only = ArchiveId::new(T0 + 999, 9, 9).0;
    model.messages.insert(
        (ROMEO.to_string(), romeo_only),
        ArchivedMessage {
            id: romeo_only,
            with: JULIET.into(),
            with_resource: String::new(),
            outgoing: true,
            xml: "<message/>".into(),
        },
    );
    b.append(&[(
        ROMEO.to_string(),
        model.messages[&(ROMEO.to_string(), romeo_only)].clone(),
    )])
    .await;
    let ids = vec![id(5), id(7), id(5), 12345, romeo_only, id(200), id(17)];
    for (with, max, from_end) in [
        (None, 10, false),
        (None, 2, false),
        (None, 2, true),
        (Some(ROMEO), 10, false),
    ] {
        check!(
            "ids",
            JULIET,
            ArchiveQuery {
                with: with.map(str::to_string),
                ids: ids.clone(),
                max,
                from_end,
                count: true,
                ..Default::default()
            }
        );
    }

    // max 0: a count only; complete only when the set is empty.
    check!(
        "count only",
        JULIET,
        ArchiveQuery {
            max: 0,
            count: true,
            ..Default::default()
        }
    );
    check!(
        "count only, empty",
        JULIET,
        ArchiveQuery {
            with: Some("nobody@x".into()),
            max: 0,
            count: true,
            ..Default::default()
        }
    );

    // Non-ASCII and large messages come back byte for byte.
    for i in [17, 101] {
        let page = check!(
            "unicode/large",
            JULIET,
            ArchiveQuery {
                ids: vec![id(i)],
                max: 1,
                ..Default::default()
            }
        );
        assert_eq!(page.messages, vec![juliet[i].clone()], "{name}");
    }

    // Random queries mixing every filter.
    let mut rng = Rng(0x05ee_d0fa_115a_1e00);
    let users = [JULIET, ROMEO, NEIGHBOUR, "nobody@x"];
    let peers = [ROMEO, NURSE, TYBALT, JULIET];
    for _ in 0..300 {
        let pick = |rng: &mut Rng| juliet[rng.below(juliet.len())].id;
        let q = ArchiveQuery {
            with: rng
                .chance(40)
                .then(|| peers[rng.below(peers.len())].to_string()),
            with_resource: rng
                .chance(20)
                .then(|| ["orchard", "balcony", "sword", ""][rng.below(4)].to_string()),
            start_ms: rng.chance(25).then(|| ArchiveId(pick(&mut rng)).millis()),
            end_ms: rng.chance(25).then(|| ArchiveId(pick(&mut rng)).millis()),
            after_id: rng.chance(30).then(|| pick(&mut rng)),
            before_id: rng.chance(30).then(|| pick(&mut rng)),
            ids: if rng.chance(10) {
                (0..rng.below(6)).map(|_| pick(&mut rng)).collect()
            } else {
                Vec::new()
            },
            max: rng.below(30),
            from_end: rng.chance(50),
            count: rng.chance(50),
        };
        check!("random", users[rng.below(users.len())], q);
    }

    // exists and bounds.
    assert!(b.exists(JULIET, id(0)).await);
    assert!(!b.exists(JULIET, romeo_only).await, "{name}");
    assert!(b.exists(ROMEO, romeo_only).await, "{name}");
    assert!(!b.exists("nobody@x", id(0)).await);
    assert_eq!(b.bounds(JULIET).await, Some((id(0), id(239))), "{name}");
    assert_eq!(b.bounds("nobody@x").await, None);

    // Deleting ROMEO's account leaves the others' archives alone.
    b.delete_user(ROMEO).await;
    model.messages.retain(|(u, _), _| u != ROMEO);
    assert_eq!(b.bounds(ROMEO).await, None, "{name}");
    for user in [JULIET, NEIGHBOUR, ROMEO] {
        check!(
            "after delete_user",
            user,
            ArchiveQuery {
                max: 1000,
                count: true,
                ..Default::default()
            }
        );
    }

    // Retention by age, in small steps, across accounts.
    let cutoff = ArchiveId(id(100)).millis();
    let expired = model
        .messages
        .keys()
        .filter(|(_, id)| ArchiveId(*id).millis() < cutoff)
        .count() as u64;
    let mut purged = 0;
    loop {
        let n = b.purge_before(cutoff, 25).await;
        assert!(n <= 25, "{name}");
        purged += n;
        if n == 0 {
            break;
        }
    }
    assert_eq!(purged, expired, "{name}: purge_before");
    model
        .messages
        .retain(|(_, id), _| ArchiveId(*id).millis() >= cutoff);
    for user in [JULIET, NEIGHBOUR] {
        check!(
            "after purge_before",
            user,
            ArchiveQuery {
                max: 1000,
                count: true,
                ..Default::default()
            }
        );
    }

    // Retention by size: the oldest go, in steps, until the cap.
    let before_trim = model.of(JULIET).len() as u64;
    assert_eq!(b.trim(JULIET, 50, 20).await, 20, "{name}: trim step");
    assert_eq!(b.trim(JULIET, 50, 1000).await, before_trim - 70, "{name}");
    assert_eq!(b.trim(JULIET, 50, 1000).await, 0, "{name}");
    assert_eq!(b.trim("nobody@x", 0, 1000).await, 0, "{name}");
    let keep: Vec<u64> = model
        .of(JULIET)
        .iter()
        .rev()
        .take(50)
        .map(|m| m.id)
        .collect();
    model
        .messages
        .retain(|(u, id), _| u != JULIET || keep.contains(id));
    check!(
        "after trim",
        JULIET,
        ArchiveQuery {
            max: 1000,
            count: true,
            ..Default::default()
        }
    );
    let first_kept = model.of(JULIET)[0].id;
    assert_eq!(
        b.bounds(JULIET).await,
        Some((first_kept, id(239))),
        "{name}"
    );
    println!("{name}: {} answers as the model's", transcript.len());
    transcript
}

#[tokio::test]
async fn both_backends_fulfil_the_archive_contract_alike() {
    let embedded = Backend::embedded();
    let embedded_transcript = scenarios(&embedded).await;
    assert!(embedded_transcript.len() > 300);
    if let Some(pg) = Backend::postgres().await {
        let pg_transcript = scenarios(&pg).await;
        assert_eq!(embedded_transcript.len(), pg_transcript.len());
        for (e, p) in embedded_transcript.iter().zip(&pg_transcript) {
            assert_eq!(e, p, "the backends differ");
        }
        if let Backend::Postgres { pg, .. } = &pg {
            // An estimate; at least it answers.
            pg.rows().await.unwrap();
        }
    }
}

/// The embedded retention walk goes on from its cursor and finds every expired message
/// of every account exactly once.
#[test]
fn the_expiry_walk_resumes_from_its_cursor() {
    let backend = Backend::embedded();
    let Backend::Embedded { data, .. } = &backend else {
        unreachable!()
    };
    let all = messages();
    let mut writes = Vec::new();
    for (user, m) in &all {
        writes.push(embedded::append_writes(user, m).unwrap());
    }
    data.apply(&UserDataWrite::Batch(writes)).unwrap();
    let cutoff = T0 + 20_000;
    let mut want: Vec<(String, u64)> = all
        .iter()
        .filter(|(_, m)| m.millis() < cutoff)
        .map(|(u, m)| (u.clone(), m.id))
        .collect();
    want.sort();
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut steps = 0;
    loop {
        let (found, next) = embedded::expired(&data.modules, cursor.as_deref(), cutoff, 4).unwrap();
        assert!(found.len() <= 4);
        got.extend(found);
        steps += 1;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    got.sort();
    assert_eq!(got, want);
    assert!(steps > want.len() / 4);
}

/// A connection refused names the URL, without its password.
#[tokio::test]
async fn a_refused_connection_names_the_url_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://sb:hunter2@127.0.0.1:{port}/sb");
    let err = match PgArchive::connect(&url, 2).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("postgres://sb:***@127.0.0.1:{port}/sb")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
}
