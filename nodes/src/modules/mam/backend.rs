//! Where the archive is kept: the account shard's module store (embedded, the default) or a
//! PostgreSQL database (`backend = "postgres"`). Both answer the same calls from the account
//! shard's thread; the shard commits the embedded backend's writes itself (through its Raft
//! log in a cluster, one group-committed entry per batch), while PostgreSQL is written and
//! read through its own connection pool on a small runtime of the module's own.

use std::future::Future;

use proto::stanza_id::ArchiveId;
use storage::archive::postgres::PgArchive;
use storage::archive::{embedded, ArchiveError, ArchivePage, ArchiveQuery, ArchivedMessage};
use storage::{ModuleStore, UserDataWrite};

/// The backend a node runs with.
pub enum Backend {
    Embedded,
    Postgres(Pg),
}

/// The PostgreSQL archive and the runtime its futures run on.
pub struct Pg {
    archive: PgArchive,
    /// Leaked on purpose: the runtime lives as long as the process (dropping a runtime
    /// inside another one's thread panics).
    runtime: &'static tokio::runtime::Runtime,
}

/// What a retention step found to delete.
pub enum Removal {
    /// Embedded: the writes that remove the messages, for the shard to commit, and how many.
    Writes(Vec<UserDataWrite>, u64),
    /// PostgreSQL: deleted already, how many.
    Done(u64),
}

impl Pg {
    /// Connect (one connection now, so a wrong URL fails the start) and bring the schema up
    /// to date.
    pub fn open(url: &str, pool: usize) -> Result<Pg, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mam-postgres")
            .enable_all()
            .build()
            .map_err(|e| ArchiveError::Database(format!("cannot start the runtime: {e}")))?;
        let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
        let url = url.to_string();
        let archive = run(runtime, async move {
            let archive = PgArchive::connect(&url, pool).await?;
            archive.migrate().await?;
            Ok::<_, ArchiveError>(archive)
        })??;
        Ok(Pg { archive, runtime })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(PgArchive) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
    ) -> Result<T, ArchiveError> {
        run(self.runtime, f(self.archive.clone()))
    }
}

/// Run `fut` on `runtime` and wait for it from this (any) thread, inside a runtime or not.
fn run<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, ArchiveError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| ArchiveError::Database("the archive's runtime stopped".into()))
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Archive `messages` (account, message), all of one shard. Embedded: the writes for the
    /// shard to commit as one batch; PostgreSQL: written now (none to commit).
    pub fn append(
        &self,
        messages: &[(String, &ArchivedMessage)],
    ) -> Result<Vec<UserDataWrite>, ArchiveError> {
        match self {
            Backend::Embedded => {
                let mut writes = Vec::with_capacity(messages.len());
                for (user, msg) in messages {
                    match embedded::append_writes(user, msg) {
                        Ok(w) => writes.push(w),
                        // One message that cannot be a key (a peer JID with NUL) is skipped,
                        // not the batch.
                        Err(e) => tracing::warn!(%user, error = %e, "mam: message not archived"),
                    }
                }
                Ok(writes)
            }
            Backend::Postgres(pg) => {
                let messages: Vec<(String, ArchivedMessage)> = messages
                    .iter()
                    .map(|(user, msg)| (user.clone(), (*msg).clone()))
                    .collect();
                pg.run(|a| Box::pin(async move { a.append(&messages).await }))??;
                Ok(Vec::new())
            }
        }
    }

    pub fn query(
        &self,
        store: &ModuleStore,
        user: &str,
        q: &ArchiveQuery,
    ) -> Result<ArchivePage, ArchiveError> {
        match self {
            Backend::Embedded => Ok(embedded::query(store, user, q)?),
            Backend::Postgres(pg) => {
                let (user, q) = (user.to_string(), q.clone());
                pg.run(|a| Box::pin(async move { a.query(&user, &q).await }))?
            }
        }
    }

    pub fn exists(&self, store: &ModuleStore, user: &str, id: u64) -> Result<bool, ArchiveError> {
        match self {
            Backend::Embedded => Ok(embedded::exists(store, user, id)?),
            Backend::Postgres(pg) => {
                let user = user.to_string();
                pg.run(|a| Box::pin(async move { a.exists(&user, id).await }))?
            }
        }
    }

    pub fn bounds(
        &self,
        store: &ModuleStore,
        user: &str,
    ) -> Result<Option<(u64, u64)>, ArchiveError> {
        match self {
            Backend::Embedded => Ok(embedded::bounds(store, user)?),
            Backend::Postgres(pg) => {
                let user = user.to_string();
                pg.run(|a| Box::pin(async move { a.bounds(&user).await }))?
            }
        }
    }

    /// Up to `limit` of `user`'s messages, oldest first, for removal (purge, and the
    /// account's deletion with PostgreSQL).
    pub fn remove_oldest(
        &self,
        store: &ModuleStore,
        user: &str,
        limit: usize,
    ) -> Result<Removal, ArchiveError> {
        self.trim(store, user, 0, limit)
    }

    /// With an account's deletion: its archive where the account's trees do not hold it
    /// (PostgreSQL: the account's rows, in one statement); the embedded archive goes with
    /// the shard's trees (0 here). How many messages went.
    pub fn delete_account(&self, user: &str) -> Result<u64, ArchiveError> {
        match self {
            Backend::Embedded => Ok(0),
            Backend::Postgres(pg) => {
                let user = user.to_string();
                pg.run(move |a| Box::pin(async move { a.delete_user(&user).await }))?
            }
        }
    }

    /// Retention by size: up to `limit` of `user`'s oldest messages beyond its newest `cap`.
    pub fn trim(
        &self,
        store: &ModuleStore,
        user: &str,
        cap: u64,
        limit: usize,
    ) -> Result<Removal, ArchiveError> {
        match self {
            Backend::Embedded => {
                let ids = embedded::over_cap(store, user, cap, limit)?;
                let n = ids.len() as u64;
                Ok(Removal::Writes(
                    embedded::remove_writes(store, user, &ids)?,
                    n,
                ))
            }
            // The whole archive: the account's rows, in one statement.
            Backend::Postgres(_) if cap == 0 => Ok(Removal::Done(self.delete_account(user)?)),
            Backend::Postgres(pg) => {
                let user = user.to_string();
                let n = pg.run(move |a| {
                    Box::pin(async move { a.trim(&user, cap, limit as u64).await })
                })??;
                Ok(Removal::Done(n))
            }
        }
    }

    /// Retention by age: up to `limit` messages archived before `cutoff_ms`, walking the
    /// embedded store from `cursor`; the removal and where the next step goes on from
    /// (`None`: the pass is over).
    pub fn expire(
        &self,
        store: &ModuleStore,
        cursor: Option<&str>,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<(Removal, Option<String>), ArchiveError> {
        match self {
            Backend::Embedded => {
                let (found, next) = embedded::expired(store, cursor, cutoff_ms, limit)?;
                let n = found.len() as u64;
                let mut writes = Vec::new();
                // An account's ids together (`expired` finds them in key order): the
                // by-peer spans they empty go with them.
                for group in found.chunk_by(|a, b| a.0 == b.0) {
                    let ids: Vec<u64> = group.iter().map(|(_, id)| *id).collect();
                    writes.extend(embedded::remove_writes(store, &group[0].0, &ids)?);
                }
                Ok((Removal::Writes(writes, n), next))
            }
            Backend::Postgres(pg) => {
                let n = pg.run(move |a| {
                    Box::pin(async move { a.purge_before(cutoff_ms, limit as u64).await })
                })??;
                let more = n >= limit as u64;
                Ok((Removal::Done(n), more.then(String::new)))
            }
        }
    }

    /// About how many messages the archive holds (PostgreSQL's estimate; `None` embedded).
    pub fn rows(&self) -> Option<u64> {
        match self {
            Backend::Embedded => None,
            Backend::Postgres(pg) => pg
                .run(|a| Box::pin(async move { a.rows().await }))
                .ok()
                .and_then(Result::ok),
        }
    }
}

/// The archive id of `text` if it is one this server assigns.
pub fn parse_id(text: &str) -> Option<u64> {
    ArchiveId::parse(text).map(|id| id.0)
}
