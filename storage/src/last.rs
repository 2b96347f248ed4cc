//! Tree `last_activity`: when each user was last available, and their last status (XEP-0012).
//! `user` → seconds since the Unix epoch and the status text of the unavailable presence.

use serde::{Deserialize, Serialize};

use crate::{decode, encode, part, Record, StorageError};

#[derive(Serialize, Deserialize)]
struct LastRecord {
    v: u8,
    secs: u64,
    status: Option<String>,
}

impl Record for LastRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Clone)]
pub struct LastActivityStore {
    pub(crate) tree: sled::Tree,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl LastActivityStore {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        LastActivityStore {
            tree,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Record that `user`'s last session ended at `unix_secs` with `status`.
    pub fn set(
        &self,
        user: &str,
        unix_secs: u64,
        status: Option<String>,
    ) -> Result<(), StorageError> {
        let record = LastRecord {
            v: LastRecord::V,
            secs: unix_secs,
            status,
        };
        self.tree.insert(part(user)?, encode(&record)?)?;
        if self.durable {
            self.tree.flush()?;
        }
        Ok(())
    }

    /// `(unix_secs, status)`, or `None` if `user` never logged out.
    pub fn get(&self, user: &str) -> Result<Option<(u64, Option<String>)>, StorageError> {
        match self.tree.get(part(user)?)? {
            Some(v) => {
                let r: LastRecord = decode(user.as_bytes(), &v)?;
                Ok(Some((r.secs, r.status)))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    #[test]
    fn set_get_and_reopen() {
        let dir = TempDir::new("last");
        {
            let store = open(dir.path());
            let l = store.last_activity().unwrap();
            assert_eq!(l.get(U).unwrap(), None);
            l.set(U, 1_000, Some("Heading home".into())).unwrap();
            l.set(U, 2_000, None).unwrap();
            l.set("romeo@x", 5, Some("gone".into())).unwrap();
        }
        let store = open(dir.path());
        let l = store.last_activity().unwrap();
        assert_eq!(l.get(U).unwrap(), Some((2_000, None)));
        assert_eq!(l.get("romeo@x").unwrap(), Some((5, Some("gone".into()))));
    }
}
