//! Tree `accounts`: bare JID → SCRAM credentials (never a password).

use proto::sasl::{ScramCredential, StoredCredentials};
use serde::{Deserialize, Serialize};

use crate::StorageError;

#[derive(Clone)]
pub struct AccountStore {
    tree: sled::Tree,
}

/// On-disk form, versioned so the encoding can change.
#[derive(Serialize, Deserialize)]
struct AccountRecord {
    v: u8,
    sha1: CredentialRecord,
    sha256: CredentialRecord,
    sha512: CredentialRecord,
}

#[derive(Serialize, Deserialize)]
struct CredentialRecord {
    i: u32,
    salt: Vec<u8>,
    stored: Vec<u8>,
    server: Vec<u8>,
}

impl From<&ScramCredential> for CredentialRecord {
    fn from(c: &ScramCredential) -> Self {
        CredentialRecord {
            i: c.iterations,
            salt: c.salt.clone(),
            stored: c.stored_key.clone(),
            server: c.server_key.clone(),
        }
    }
}

impl From<CredentialRecord> for ScramCredential {
    fn from(c: CredentialRecord) -> Self {
        ScramCredential {
            iterations: c.i,
            salt: c.salt,
            stored_key: c.stored,
            server_key: c.server,
        }
    }
}

fn encode(creds: &StoredCredentials) -> Result<Vec<u8>, StorageError> {
    let record = AccountRecord {
        v: 1,
        sha1: (&creds.sha1).into(),
        sha256: (&creds.sha256).into(),
        sha512: (&creds.sha512).into(),
    };
    serde_json::to_vec(&record).map_err(|_| StorageError::Corrupt("encode".into()))
}

fn decode(key: &str, bytes: &[u8]) -> Result<StoredCredentials, StorageError> {
    let r: AccountRecord =
        serde_json::from_slice(bytes).map_err(|_| StorageError::Corrupt(key.to_string()))?;
    Ok(StoredCredentials {
        sha1: r.sha1.into(),
        sha256: r.sha256.into(),
        sha512: r.sha512.into(),
    })
}

impl AccountStore {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        AccountStore { tree }
    }

    /// Create an account; fails if it exists. `bare_jid` must already be prepared.
    pub fn create(&self, bare_jid: &str, creds: &StoredCredentials) -> Result<(), StorageError> {
        let value = encode(creds)?;
        self.tree
            .compare_and_swap(bare_jid, None as Option<&[u8]>, Some(value))?
            .map_err(|_| StorageError::AlreadyExists(bare_jid.to_string()))?;
        self.tree.flush()?;
        Ok(())
    }

    /// Replace the credentials of an existing account.
    pub fn set_credentials(
        &self,
        bare_jid: &str,
        creds: &StoredCredentials,
    ) -> Result<(), StorageError> {
        let value = encode(creds)?;
        let mut found = false;
        self.tree.fetch_and_update(bare_jid, |old| {
            found = old.is_some();
            old.map(|_| value.clone())
        })?;
        if !found {
            return Err(StorageError::NotFound(bare_jid.to_string()));
        }
        self.tree.flush()?;
        Ok(())
    }

    pub fn get(&self, bare_jid: &str) -> Result<Option<StoredCredentials>, StorageError> {
        match self.tree.get(bare_jid)? {
            Some(v) => Ok(Some(decode(bare_jid, &v)?)),
            None => Ok(None),
        }
    }

    pub fn exists(&self, bare_jid: &str) -> Result<bool, StorageError> {
        Ok(self.tree.contains_key(bare_jid)?)
    }

    /// Delete; `NotFound` if there was no such account.
    pub fn delete(&self, bare_jid: &str) -> Result<(), StorageError> {
        if self.tree.remove(bare_jid)?.is_none() {
            return Err(StorageError::NotFound(bare_jid.to_string()));
        }
        self.tree.flush()?;
        Ok(())
    }

    /// The account's record as stored (JSON text): what a cluster replicates.
    pub fn encode_record(creds: &StoredCredentials) -> Result<String, StorageError> {
        String::from_utf8(encode(creds)?).map_err(|_| StorageError::Corrupt("encode".into()))
    }

    /// Write a replicated record. `create_only`: leave an existing account alone. Returns
    /// whether the account existed before.
    pub fn put_record(
        &self,
        bare_jid: &str,
        record: &str,
        create_only: bool,
    ) -> Result<bool, StorageError> {
        decode(bare_jid, record.as_bytes())?;
        let existed = self.tree.contains_key(bare_jid)?;
        if !(existed && create_only) {
            self.tree.insert(bare_jid, record.as_bytes())?;
        }
        Ok(existed)
    }

    /// Remove without complaint if absent (replicated deletes apply on every node).
    pub fn remove_record(&self, bare_jid: &str) -> Result<bool, StorageError> {
        Ok(self.tree.remove(bare_jid)?.is_some())
    }

    /// Every account with its record, sorted: the accounts part of a cluster snapshot.
    pub fn records(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let k = String::from_utf8(k.to_vec())
                    .map_err(|_| StorageError::Corrupt("key".into()))?;
                let v =
                    String::from_utf8(v.to_vec()).map_err(|_| StorageError::Corrupt(k.clone()))?;
                Ok((k, v))
            })
            .collect()
    }

    /// Make the tree exactly `records` (installing a cluster snapshot).
    pub fn replace_all(&self, records: &[(String, String)]) -> Result<(), StorageError> {
        self.tree.clear()?;
        let mut batch = sled::Batch::default();
        for (k, v) in records {
            batch.insert(k.as_bytes(), v.as_bytes());
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.tree.flush()?;
        Ok(())
    }

    /// All account JIDs, sorted.
    pub fn list(&self) -> Result<Vec<String>, StorageError> {
        self.tree
            .iter()
            .keys()
            .map(|k| {
                let k = k?;
                String::from_utf8(k.to_vec()).map_err(|_| StorageError::Corrupt("key".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[test]
    fn create_get_update_delete_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("sb-acc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c1 = StoredCredentials::derive("one", 4096).unwrap();
        let c2 = StoredCredentials::derive("two", 4096).unwrap();
        {
            let store = Store::open(&dir).unwrap();
            let acc = store.accounts().unwrap();
            acc.create("juliet@localhost", &c1).unwrap();
            assert!(matches!(
                acc.create("juliet@localhost", &c2),
                Err(StorageError::AlreadyExists(_))
            ));
            assert!(matches!(
                acc.set_credentials("romeo@localhost", &c2),
                Err(StorageError::NotFound(_))
            ));
            acc.set_credentials("juliet@localhost", &c2).unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let acc = store.accounts().unwrap();
        assert_eq!(acc.get("juliet@localhost").unwrap(), Some(c2));
        assert_eq!(acc.list().unwrap(), vec!["juliet@localhost".to_string()]);
        acc.delete("juliet@localhost").unwrap();
        assert!(matches!(
            acc.delete("juliet@localhost"),
            Err(StorageError::NotFound(_))
        ));
        assert!(!acc.exists("juliet@localhost").unwrap());
        drop(acc);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
