//! A benchmark of the message archive's backends (not a test): fills an archive with
//! batched appends as the node commits them, then times page queries of the kinds clients
//! send (XEP-0313 with a peer, the newest page, pages after an id in the middle, pages back
//! from an id), and prints the fill rate and the queries' p50/p99.
//!
//! ```text
//! cargo run --release -p storage --example archive_bench -- \
//!     --backend embedded --messages 1000000 --users 1 --page 50 --queries 2000
//! cargo run --release -p storage --example archive_bench -- --backend postgres \
//!     [--url postgres://…]   # without --url: a private instance (scripts/pg-instance.sh)
//! ```
//!
//! Other options: `--batch N` messages per commit (default 1000), `--peers N` distinct
//! peers per account (default 50), `--xml-bytes N` (default 300), `--volatile` (embedded:
//! a replicated shard's placement, not flushed per commit; the Raft log is the durable
//! copy there), `--dir DIR` (embedded: keep the database there instead of a temp dir).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use proto::stanza_id::ArchiveId;
use storage::archive::postgres::PgArchive;
use storage::archive::{embedded, ArchivePage, ArchiveQuery, ArchivedMessage};
use storage::{Store, UserData, UserDataWrite};

/// The node's allocator (nodes' `main.rs`): the archive's cost is mostly allocation and
/// copies, so a benchmark under glibc's malloc measured another program.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Options {
    backend: String,
    messages: u64,
    users: u64,
    page: usize,
    queries: usize,
    batch: usize,
    peers: u64,
    xml_bytes: usize,
    volatile: bool,
    url: Option<String>,
    dir: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        backend: "embedded".into(),
        messages: 100_000,
        users: 1,
        page: 50,
        queries: 1000,
        batch: 1000,
        peers: 50,
        xml_bytes: 300,
        volatile: false,
        url: None,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--volatile" {
            o.volatile = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{arg} {v}: {e}"));
        match arg.as_str() {
            "--backend" => o.backend = value,
            "--messages" => o.messages = num(&value)?,
            "--users" => o.users = num(&value)?.max(1),
            "--page" => o.page = num(&value)? as usize,
            "--queries" => o.queries = num(&value)? as usize,
            "--batch" => o.batch = (num(&value)? as usize).max(1),
            "--peers" => o.peers = num(&value)?.max(1),
            "--xml-bytes" => o.xml_bytes = num(&value)? as usize,
            "--url" => o.url = Some(value),
            "--dir" => o.dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.backend != "embedded" && o.backend != "postgres" {
        return Err(format!("--backend {}: embedded or postgres", o.backend));
    }
    Ok(o)
}

/// xorshift64*: deterministic, so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn user(i: u64) -> String {
    format!("user{i}@bench.example")
}

fn peer(i: u64) -> String {
    format!("peer{i}@remote.example")
}

/// Message `i` of the run: round-robin over the users, one id per millisecond.
fn message(o: &Options, i: u64, base_ms: u64, filler: &str) -> (String, ArchivedMessage) {
    let id = ArchiveId::new(base_ms + i, 1, 0).0;
    (
        user(i % o.users),
        ArchivedMessage {
            id,
            with: peer((i / o.users) % o.peers),
            with_resource: if i.is_multiple_of(3) { "phone".into() } else { String::new() },
            outgoing: i.is_multiple_of(2),
            xml: format!(
                "<message xmlns='jabber:client' type='chat' id='b{i}'><body>{filler}</body></message>"
            )
            .into(),
        },
    )
}

// One value per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Embedded(UserData, Store),
    Postgres(PgArchive),
}

impl Backend {
    async fn append(&self, batch: &[(String, ArchivedMessage)]) -> Result<(), String> {
        match self {
            Backend::Embedded(data, _) => {
                let mut writes = Vec::with_capacity(batch.len() * 3);
                for (u, m) in batch {
                    writes.push(embedded::append_writes(u, m).map_err(|e| e.to_string())?);
                }
                data.apply(&UserDataWrite::Batch(writes))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Backend::Postgres(pg) => pg.append(batch).await.map(drop).map_err(|e| e.to_string()),
        }
    }

    async fn query(&self, user: &str, q: &ArchiveQuery) -> Result<ArchivePage, String> {
        match self {
            Backend::Embedded(data, _) => {
                embedded::query(&data.modules, user, q).map_err(|e| e.to_string())
            }
            Backend::Postgres(pg) => pg.query(user, q).await.map_err(|e| e.to_string()),
        }
    }
}

/// A private PostgreSQL (scripts/pg-instance.sh), stopped on drop.
struct PgInstance(PathBuf);

impl Drop for PgInstance {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-instance.sh")
}

fn start_postgres() -> Result<(PgInstance, String), String> {
    let dir = std::env::temp_dir().join(format!("sb-archive-bench-pg-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // A benchmark keeps fsync on: the figures should be those of a real server.
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(&dir)
        .arg(port.to_string())
        .env("PG_INSTANCE_FSYNC", "on")
        .output()
        .map_err(|e| e.to_string())?;
    let instance = PgInstance(dir);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok((
        instance,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let o = options()?;
    let mut _pg_instance = None;
    let mut temp_dir = None;
    let backend = if o.backend == "embedded" {
        let dir = match &o.dir {
            Some(d) => d.clone(),
            None => {
                let d =
                    std::env::temp_dir().join(format!("sb-archive-bench-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&d);
                temp_dir = Some(d.clone());
                d
            }
        };
        let store = Store::open(&dir).map_err(|e| e.to_string())?;
        let data = if o.volatile {
            store.shard_user_data(0)
        } else {
            store.user_data()
        }
        .map_err(|e| e.to_string())?;
        Backend::Embedded(data, store)
    } else {
        let url = match &o.url {
            Some(u) => u.clone(),
            None => {
                let (instance, url) = start_postgres()?;
                _pg_instance = Some(instance);
                url
            }
        };
        let pg = PgArchive::connect(&url, 4)
            .await
            .map_err(|e| e.to_string())?;
        pg.migrate().await.map_err(|e| e.to_string())?;
        Backend::Postgres(pg)
    };

    // Fill, in commits of `batch` messages; ids are one millisecond apart, ending now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as u64;
    let base_ms = now - o.messages;
    let filler = "x".repeat(o.xml_bytes.saturating_sub(80));
    let started = Instant::now();
    let mut i = 0;
    let mut last_report = Instant::now();
    while i < o.messages {
        let n = (o.messages - i).min(o.batch as u64);
        let batch: Vec<_> = (i..i + n)
            .map(|k| message(&o, k, base_ms, &filler))
            .collect();
        backend.append(&batch).await?;
        i += n;
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {i} messages, {:.0}/s",
                i as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let fill = started.elapsed();
    println!(
        "backend {}{}: {} messages, {} users, {} peers each, ~{} B each, commits of {}",
        o.backend,
        if o.volatile { " (volatile)" } else { "" },
        o.messages,
        o.users,
        o.peers,
        o.xml_bytes,
        o.batch
    );
    println!(
        "fill: {:.1} s, {:.0} messages/s",
        fill.as_secs_f64(),
        o.messages as f64 / fill.as_secs_f64()
    );
    if let Backend::Embedded(_, store) = &backend {
        store.flush().map_err(|e| e.to_string())?;
        if let Ok(bytes) = store.size_on_disk() {
            println!("on disk: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
        }
    }

    // Queries: four kinds, in turn, on random accounts, peers and ids.
    let kinds = [
        "with peer, first page",
        "newest page (from end)",
        "after an id in the middle",
        "with peer, back from an id",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut returned = 0usize;
    for k in 0..o.queries {
        let kind = k % kinds.len();
        let u = rng.below(o.users);
        let per_user = o.messages / o.users;
        let middle = ArchiveId::new(base_ms + u + rng.below(per_user.max(1)) * o.users, 1, 0).0;
        let with = Some(peer(rng.below(o.peers)));
        let q = match kind {
            0 => ArchiveQuery {
                with,
                max: o.page,
                ..Default::default()
            },
            1 => ArchiveQuery {
                max: o.page,
                from_end: true,
                ..Default::default()
            },
            2 => ArchiveQuery {
                after_id: Some(middle),
                max: o.page,
                ..Default::default()
            },
            _ => ArchiveQuery {
                with,
                before_id: Some(middle),
                max: o.page,
                from_end: true,
                ..Default::default()
            },
        };
        let t = Instant::now();
        let page = backend.query(&user(u), &q).await?;
        times[kind].push(t.elapsed());
        returned += page.messages.len();
    }
    let mut all: Vec<Duration> = times.iter().flatten().copied().collect();
    all.sort();
    println!(
        "{} page queries of {} (avg {:.1} messages returned): p50 {}, p99 {}",
        o.queries,
        o.page,
        returned as f64 / o.queries.max(1) as f64,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99))
    );
    for (name, t) in kinds.iter().zip(times.iter_mut()) {
        t.sort();
        println!(
            "  {name:<28} p50 {}, p99 {}",
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.99))
        );
    }
    // The count a client may ask for with its first page: bounded, so it stays cheap.
    let t = Instant::now();
    let page = backend
        .query(
            &user(0),
            &ArchiveQuery {
                max: 0,
                count: true,
                ..Default::default()
            },
        )
        .await?;
    println!(
        "count of the whole archive of {}: {:?} in {}",
        user(0),
        page.count,
        ms(t.elapsed())
    );
    drop(backend);
    if let Some(d) = temp_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}
