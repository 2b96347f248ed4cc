//! Tree `vcards`: each user's vCard (XEP-0054), as XML. `user` → the `<vCard/>` element.

use serde::{Deserialize, Serialize};

use crate::{decode, encode, part, Record, StorageError};

#[derive(Serialize, Deserialize)]
struct VCardRecord {
    v: u8,
    xml: String,
}

impl Record for VCardRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Clone)]
pub struct VCardStore {
    pub(crate) tree: sled::Tree,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl VCardStore {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        VCardStore {
            tree,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    pub fn get(&self, user: &str) -> Result<Option<String>, StorageError> {
        match self.tree.get(part(user)?)? {
            Some(v) => Ok(Some(decode::<VCardRecord>(user.as_bytes(), &v)?.xml)),
            None => Ok(None),
        }
    }

    /// Replace `user`'s vCard.
    pub fn put(&self, user: &str, xml: &str) -> Result<(), StorageError> {
        let record = VCardRecord {
            v: VCardRecord::V,
            xml: xml.to_string(),
        };
        self.tree.insert(part(user)?, encode(&record)?)?;
        if self.durable {
            self.tree.flush()?;
        }
        Ok(())
    }

    pub fn delete_user(&self, user: &str) -> Result<(), StorageError> {
        if self.tree.remove(part(user)?)?.is_some() && self.durable {
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
    fn crud_and_reopen() {
        let dir = TempDir::new("vcard");
        {
            let store = open(dir.path());
            let v = store.vcards().unwrap();
            assert_eq!(v.get(U).unwrap(), None);
            v.put(U, "<vCard xmlns='vcard-temp'><FN>J</FN></vCard>")
                .unwrap();
            v.put(U, "<vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard>")
                .unwrap();
            v.put("romeo@x", "<vCard xmlns='vcard-temp'/>").unwrap();
        }
        let store = open(dir.path());
        let v = store.vcards().unwrap();
        assert_eq!(
            v.get(U).unwrap().as_deref(),
            Some("<vCard xmlns='vcard-temp'><FN>Juliet</FN></vCard>")
        );
        v.delete_user(U).unwrap();
        v.delete_user(U).unwrap();
        assert_eq!(v.get(U).unwrap(), None);
        assert!(v.get("romeo@x").unwrap().is_some());
    }
}
