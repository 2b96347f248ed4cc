//! The message archive in PostgreSQL (see the [`crate::archive`] contract), for a cluster
//! whose archives outgrow its nodes' disks or that wants them in a database its operators
//! already run. One table, shared by every node:
//!
//! ```sql
//! mam_message(user_jid text, id bigint, with_jid text, with_resource text, outgoing bool,
//!             xml text, primary key (user_jid, id))
//! index (user_jid, with_jid, id)
//! ```
//!
//! An [`ArchiveId`] is a u64 and `bigint` is signed: the stored value is the id with its top
//! bit flipped (`(id ^ 1 << 63) as i64`), which orders as the id does, so `start`/`end`,
//! `after-id`/`before-id` and the page order are ranges and index order of the primary key
//! (or, with `with`, of the second index). A page is one indexed `LIMIT max + 1` query.
//!
//! Connections: a bounded `deadpool-postgres` pool of `tokio-postgres` connections (plain
//! TCP or a Unix socket; no TLS yet: keep the database on a trusted network or a socket),
//! statements prepared once per connection. The schema is created and upgraded by
//! [`PgArchive::migrate`], versioned in the table `switchboard_schema` (component `mam`),
//! under an advisory lock so that nodes starting together migrate once.
//!
//! PostgreSQL text cannot hold NUL, which XML cannot either: such a message is refused
//! ([`ArchiveError::Invalid`]).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use proto::stanza_id::ArchiveId;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::COUNT_SCAN_LIMIT;
use super::{redact_url, ArchiveError, ArchivePage, ArchiveQuery, ArchivedMessage};

/// The schema version this build writes; [`MIGRATIONS`]`[n]` goes from version n to n + 1.
const SCHEMA_VERSION: i32 = 1;

const MIGRATIONS: &[&str] = &[
    // 1: the table and its by-peer index.
    "CREATE TABLE mam_message (
        user_jid text NOT NULL,
        id bigint NOT NULL,
        with_jid text NOT NULL,
        with_resource text NOT NULL DEFAULT '',
        outgoing boolean NOT NULL,
        xml text NOT NULL,
        PRIMARY KEY (user_jid, id)
    );
    CREATE INDEX mam_message_with ON mam_message (user_jid, with_jid, id);",
];

/// The advisory lock key migrations hold (any constant; "sbmam" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_626d_616d;

/// How long a connection attempt, or a wait for a free pooled connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The stored form of an id: order-preserving from u64 to i64.
fn to_pg(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

fn from_pg(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// An error and its causes, `a: b: c` (tokio-postgres puts the useful part, such as
/// "Connection refused" or the server's message, in the causes).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

fn db(e: tokio_postgres::Error) -> ArchiveError {
    ArchiveError::Database(match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => chain(&e),
    })
}

/// The archive in one PostgreSQL database. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgArchive {
    pool: Pool,
    /// The URL without its password, for errors.
    url: String,
}

impl PgArchive {
    /// A pool of at most `pool_size` connections to `url` (`postgres://user:pw@host:port/db`
    /// or `host=… user=… dbname=…`), with one connection made now, so that a wrong URL or
    /// a database that is down shows at start rather than at the first query.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgArchive, ArchiveError> {
        let shown = redact_url(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| ArchiveError::BadUrl {
            url: shown.clone(),
            reason: chain(&e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("switchboard");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| ArchiveError::BadUrl {
                url: shown.clone(),
                reason: chain(&e),
            })?;
        let archive = PgArchive { pool, url: shown };
        drop(archive.client().await?);
        Ok(archive)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, ArchiveError> {
        self.pool.get().await.map_err(|e| ArchiveError::Connect {
            url: self.url.clone(),
            reason: chain(&e),
        })
    }

    /// Create the schema, or upgrade it to this build's version; idempotent, and safe
    /// when several nodes run it at once. Refuses a schema newer than this build.
    pub async fn migrate(&self) -> Result<(), ArchiveError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS switchboard_schema (
                component text PRIMARY KEY,
                version integer NOT NULL
            )",
        )
        .await
        .map_err(db)?;
        let found: i32 = tx
            .query_opt(
                "SELECT version FROM switchboard_schema WHERE component = 'mam'",
                &[],
            )
            .await
            .map_err(db)?
            .map(|row| row.get(0))
            .unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(ArchiveError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for migration in MIGRATIONS.iter().skip(found.max(0) as usize) {
            tx.batch_execute(migration).await.map_err(db)?;
        }
        tx.execute(
            "INSERT INTO switchboard_schema (component, version) VALUES ('mam', $1)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Archive `messages` (account, message) in one statement; a message whose (account,
    /// id) is there already is left as it is, so a batch retried after a lost answer does
    /// not duplicate. How many rows were inserted.
    pub async fn append(
        &self,
        messages: &[(String, ArchivedMessage)],
    ) -> Result<u64, ArchiveError> {
        if messages.is_empty() {
            return Ok(0);
        }
        let n = messages.len();
        let (mut users, mut ids, mut withs, mut resources, mut outgoing, mut xmls) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (user, m) in messages {
            for text in [user.as_str(), &m.with, &m.with_resource, &m.xml] {
                if text.contains('\0') {
                    return Err(ArchiveError::Invalid(format!(
                        "message {} of {user} contains NUL",
                        ArchiveId(m.id)
                    )));
                }
            }
            users.push(user.as_str());
            ids.push(to_pg(m.id));
            withs.push(m.with.as_str());
            resources.push(m.with_resource.as_str());
            outgoing.push(m.outgoing);
            xmls.push(&*m.xml);
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO mam_message (user_jid, id, with_jid, with_resource, outgoing, xml)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[],
                                      $5::boolean[], $6::text[])
                 ON CONFLICT (user_jid, id) DO NOTHING",
            )
            .await
            .map_err(db)?;
        client
            .execute(
                &statement,
                &[&users, &ids, &withs, &resources, &outgoing, &xmls],
            )
            .await
            .map_err(db)
    }

    /// One page of `user`'s archive (see [`ArchiveQuery`]).
    pub async fn query(&self, user: &str, q: &ArchiveQuery) -> Result<ArchivePage, ArchiveError> {
        let client = self.client().await?;
        let count = if q.count {
            self.count(&client, user, q).await?
        } else {
            None
        };
        let Some((lo, hi)) = q.page_range() else {
            return Ok(ArchivePage::from_fetched(
                Vec::new(),
                q.max,
                q.from_end,
                count,
            ));
        };
        let filter = Filter::new(user, q, lo, hi);
        let limit = i64::try_from(q.max.saturating_add(1)).unwrap_or(i64::MAX);
        let mut params = filter.params();
        params.push(&limit);
        let sql = format!(
            "SELECT id, with_jid, with_resource, outgoing, xml FROM mam_message WHERE {}
             ORDER BY id {} LIMIT ${}",
            filter.sql,
            if q.from_end { "DESC" } else { "ASC" },
            params.len()
        );
        let statement = client.prepare_cached(&sql).await.map_err(db)?;
        let rows = client.query(&statement, &params).await.map_err(db)?;
        let fetched = rows
            .iter()
            .map(|row| {
                Ok(ArchivedMessage {
                    id: from_pg(row.try_get(0)?),
                    with: row.try_get(1)?,
                    with_resource: row.try_get(2)?,
                    outgoing: row.try_get(3)?,
                    xml: row.try_get::<_, String>(4)?.into(),
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db)?;
        Ok(ArchivePage::from_fetched(fetched, q.max, q.from_end, count))
    }

    /// The size of the result set, or `None` past [`COUNT_SCAN_LIMIT`].
    async fn count(
        &self,
        client: &deadpool_postgres::Client,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<Option<u64>, ArchiveError> {
        let Some((lo, hi)) = q.result_range() else {
            return Ok(Some(0));
        };
        let filter = Filter::new(user, q, lo, hi);
        let limit = (COUNT_SCAN_LIMIT + 1) as i64;
        let mut params = filter.params();
        params.push(&limit);
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM mam_message WHERE {} LIMIT ${}) AS s",
            filter.sql,
            params.len()
        );
        let statement = client.prepare_cached(&sql).await.map_err(db)?;
        let n: i64 = client
            .query_one(&statement, &params)
            .await
            .map_err(db)?
            .get(0);
        let n = n.max(0) as u64;
        Ok((n <= COUNT_SCAN_LIMIT).then_some(n))
    }

    /// Whether `user`'s archive holds message `id`.
    pub async fn exists(&self, user: &str, id: u64) -> Result<bool, ArchiveError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT 1 FROM mam_message WHERE user_jid = $1 AND id = $2")
            .await
            .map_err(db)?;
        let row = client
            .query_opt(&statement, &[&user, &to_pg(id)])
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }

    /// The first and the last id of `user`'s archive.
    pub async fn bounds(&self, user: &str) -> Result<Option<(u64, u64)>, ArchiveError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT min(id), max(id) FROM mam_message WHERE user_jid = $1")
            .await
            .map_err(db)?;
        let row = client.query_one(&statement, &[&user]).await.map_err(db)?;
        let first: Option<i64> = row.try_get(0).map_err(db)?;
        let last: Option<i64> = row.try_get(1).map_err(db)?;
        Ok(first.zip(last).map(|(a, b)| (from_pg(a), from_pg(b))))
    }

    /// Remove `user`'s whole archive (account deletion); how many messages went.
    pub async fn delete_user(&self, user: &str) -> Result<u64, ArchiveError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("DELETE FROM mam_message WHERE user_jid = $1")
            .await
            .map_err(db)?;
        client.execute(&statement, &[&user]).await.map_err(db)
    }

    /// Retention by age: remove up to `limit` messages of any account archived before
    /// `cutoff_ms`; how many went. Call again while it returns `limit`: small deletes keep
    /// locks and WAL bursts short on a busy table.
    pub async fn purge_before(&self, cutoff_ms: u64, limit: u64) -> Result<u64, ArchiveError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM mam_message WHERE ctid IN (
                    SELECT ctid FROM mam_message WHERE id < $1 LIMIT $2)",
            )
            .await
            .map_err(db)?;
        let cutoff = to_pg(ArchiveId::floor(cutoff_ms).0);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .execute(&statement, &[&cutoff, &limit])
            .await
            .map_err(db)
    }

    /// Retention by size: remove the oldest of `user`'s messages beyond its newest `cap`, at
    /// most `limit` of them; how many went.
    pub async fn trim(&self, user: &str, cap: u64, limit: u64) -> Result<u64, ArchiveError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM mam_message WHERE user_jid = $1 AND id IN (
                    SELECT id FROM mam_message WHERE user_jid = $1 AND id <= (
                        SELECT id FROM mam_message WHERE user_jid = $1
                        ORDER BY id DESC OFFSET $2 LIMIT 1)
                    ORDER BY id LIMIT $3)",
            )
            .await
            .map_err(db)?;
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .execute(&statement, &[&user, &cap, &limit])
            .await
            .map_err(db)
    }

    /// About how many messages the table holds (the planner's estimate, as of the last
    /// VACUUM or ANALYZE: free to ask at any size).
    pub async fn rows(&self) -> Result<u64, ArchiveError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = 'mam_message'::regclass",
                &[],
            )
            .await
            .map_err(db)?;
        let n: i64 = row.try_get(0).map_err(db)?;
        Ok(n.max(0) as u64)
    }
}

/// The WHERE clause of a result set or page (`user`, the id range, `with`, its resource,
/// `ids`) and its parameters.
struct Filter<'a> {
    sql: String,
    user: &'a str,
    lo: i64,
    hi: i64,
    with: Option<&'a str>,
    resource: Option<&'a str>,
    ids: Option<Vec<i64>>,
}

impl<'a> Filter<'a> {
    fn new(user: &'a str, q: &'a ArchiveQuery, lo: u64, hi: u64) -> Filter<'a> {
        let mut f = Filter {
            sql: "user_jid = $1 AND id BETWEEN $2 AND $3".to_string(),
            user,
            lo: to_pg(lo),
            hi: to_pg(hi),
            with: q.with.as_deref(),
            resource: q.resource(),
            ids: None,
        };
        let mut n = 3;
        if f.with.is_some() {
            n += 1;
            f.sql.push_str(&format!(" AND with_jid = ${n}"));
        }
        if f.resource.is_some() {
            n += 1;
            f.sql.push_str(&format!(" AND with_resource = ${n}"));
        }
        if !q.ids.is_empty() {
            n += 1;
            f.sql.push_str(&format!(" AND id = ANY(${n})"));
            f.ids = Some(q.ids.iter().map(|id| to_pg(*id)).collect());
        }
        f
    }

    /// In the order of their `$n`.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.user, &self.lo, &self.hi];
        if let Some(w) = &self.with {
            p.push(w);
        }
        if let Some(r) = &self.resource {
            p.push(r);
        }
        if let Some(ids) = &self.ids {
            p.push(ids);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ids_order_as_ids() {
        let ids = [0, 1, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        for pair in ids.windows(2) {
            assert!(to_pg(pair[0]) < to_pg(pair[1]), "{pair:?}");
        }
        for id in ids {
            assert_eq!(from_pg(to_pg(id)), id);
        }
    }
}
