//! Tree `private`: private XML storage (XEP-0049). `user \0 namespace \0 element name` → the
//! stored child element, as XML.

use serde::{Deserialize, Serialize};

use crate::{decode, encode, key, prefix, Record, StorageError};

#[derive(Serialize, Deserialize)]
struct PrivateRecord {
    v: u8,
    xml: String,
}

impl Record for PrivateRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Clone)]
pub struct PrivateStore {
    pub(crate) tree: sled::Tree,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl PrivateStore {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        PrivateStore {
            tree,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// The element `name` in namespace `ns` that `user` stored.
    pub fn get(&self, user: &str, name: &str, ns: &str) -> Result<Option<String>, StorageError> {
        let k = key(user, &[ns, name])?;
        match self.tree.get(&k)? {
            Some(v) => Ok(Some(decode::<PrivateRecord>(&k, &v)?.xml)),
            None => Ok(None),
        }
    }

    /// How many elements `user` stores and their total size in bytes (serialised XML), for
    /// the per-account quota. A scan of the user's entries, which the quota keeps few.
    pub fn usage(&self, user: &str) -> Result<(usize, usize), StorageError> {
        let mut count = 0;
        let mut bytes = 0;
        for kv in self.tree.scan_prefix(prefix(user)?) {
            let (k, v) = kv?;
            bytes += decode::<PrivateRecord>(&k, &v)?.xml.len();
            count += 1;
        }
        Ok((count, bytes))
    }

    /// Store (replace) the element `name` in namespace `ns`; `xml` is the whole element.
    pub fn put(&self, user: &str, name: &str, ns: &str, xml: &str) -> Result<(), StorageError> {
        let record = PrivateRecord {
            v: PrivateRecord::V,
            xml: xml.to_string(),
        };
        self.tree
            .insert(key(user, &[ns, name])?, encode(&record)?)?;
        if self.durable {
            self.tree.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    #[test]
    fn usage_counts_elements_and_bytes_of_one_user() {
        let dir = TempDir::new("private-usage");
        let store = open(dir.path());
        let p = store.private().unwrap();
        assert_eq!(p.usage(U).unwrap(), (0, 0));
        p.put(U, "a", "urn:a", "<a xmlns='urn:a'/>").unwrap();
        p.put(U, "b", "urn:b", "<b xmlns='urn:b'>xx</b>").unwrap();
        p.put(U, "a", "urn:a", "<a xmlns='urn:a'>y</a>").unwrap();
        p.put("other@x", "a", "urn:a", "<a xmlns='urn:a'/>")
            .unwrap();
        assert_eq!(p.usage(U).unwrap(), (2, 22 + 23));
    }

    #[test]
    fn keyed_by_name_and_namespace_and_survives_reopen() {
        let dir = TempDir::new("private");
        let bookmarks = "<storage xmlns='storage:bookmarks'><conference jid='a@b'/></storage>";
        {
            let store = open(dir.path());
            let p = store.private().unwrap();
            assert_eq!(p.get(U, "storage", "storage:bookmarks").unwrap(), None);
            p.put(
                U,
                "storage",
                "storage:bookmarks",
                "<storage xmlns='storage:bookmarks'/>",
            )
            .unwrap();
            p.put(U, "storage", "storage:bookmarks", bookmarks).unwrap();
            p.put(
                U,
                "storage",
                "storage:rosternotes",
                "<storage xmlns='storage:rosternotes'/>",
            )
            .unwrap();
            p.put(
                U,
                "prefs",
                "storage:bookmarks",
                "<prefs xmlns='storage:bookmarks'/>",
            )
            .unwrap();
        }
        let store = open(dir.path());
        let p = store.private().unwrap();
        assert_eq!(
            p.get(U, "storage", "storage:bookmarks").unwrap().as_deref(),
            Some(bookmarks)
        );
        assert_eq!(
            p.get(U, "storage", "storage:rosternotes")
                .unwrap()
                .as_deref(),
            Some("<storage xmlns='storage:rosternotes'/>")
        );
        assert_eq!(
            p.get(U, "prefs", "storage:bookmarks").unwrap().as_deref(),
            Some("<prefs xmlns='storage:bookmarks'/>")
        );
        assert_eq!(
            p.get("romeo@x", "storage", "storage:bookmarks").unwrap(),
            None
        );
    }
}
