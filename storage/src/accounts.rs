//! Tree `accounts`: bare JID → SCRAM credentials (never a password).

use proto::sasl::{ScramCredential, StoredCredentials};
use serde::{Deserialize, Serialize};

use crate::StorageError;

#[derive(Clone)]
pub struct AccountStore {
    tree: sled::Tree,
}

/// The replicated form (JSON text, what cluster nodes exchange), and the on-disk form before
/// records went binary: databases written then are still read.
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

/// First byte of a binary record. A JSON record starts with `{`, so the two cannot be confused.
const BINARY_V2: u8 = 2;

/// The on-disk form: `2`, then per hash (SHA-1, SHA-256, SHA-512) the iteration count (u32 LE)
/// and salt, stored key and server key, each a u16 LE length and its bytes. About 300 bytes
/// where the JSON took about 1,000: sled keeps the record of every account that logged in in
/// its page cache, so this is memory per online user, not only disk.
fn encode(creds: &StoredCredentials) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(320);
    out.push(BINARY_V2);
    for c in [&creds.sha1, &creds.sha256, &creds.sha512] {
        out.extend_from_slice(&c.iterations.to_le_bytes());
        for part in [&c.salt, &c.stored_key, &c.server_key] {
            let len = u16::try_from(part.len())
                .map_err(|_| StorageError::Corrupt("credential part too long".into()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}

fn decode(key: &str, bytes: &[u8]) -> Result<StoredCredentials, StorageError> {
    let corrupt = || StorageError::Corrupt(key.to_string());
    match bytes.first() {
        Some(&BINARY_V2) => decode_binary(&bytes[1..]).ok_or_else(corrupt),
        Some(b'{') => from_json(bytes).ok_or_else(corrupt),
        _ => Err(corrupt()),
    }
}

fn decode_binary(mut rest: &[u8]) -> Option<StoredCredentials> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head)
    }
    let credential = |rest: &mut &[u8]| -> Option<ScramCredential> {
        let iterations = u32::from_le_bytes(take(rest, 4)?.try_into().ok()?);
        let mut part = || -> Option<Vec<u8>> {
            let len = u16::from_le_bytes(take(rest, 2)?.try_into().ok()?);
            Some(take(rest, usize::from(len))?.to_vec())
        };
        let (salt, stored_key, server_key) = (part()?, part()?, part()?);
        Some(ScramCredential {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    };
    let creds = StoredCredentials {
        sha1: credential(&mut rest)?,
        sha256: credential(&mut rest)?,
        sha512: credential(&mut rest)?,
    };
    rest.is_empty().then_some(creds)
}

fn to_json(creds: &StoredCredentials) -> Result<String, StorageError> {
    let record = AccountRecord {
        v: 1,
        sha1: (&creds.sha1).into(),
        sha256: (&creds.sha256).into(),
        sha512: (&creds.sha512).into(),
    };
    serde_json::to_string(&record).map_err(|_| StorageError::Corrupt("encode".into()))
}

fn from_json(bytes: &[u8]) -> Option<StoredCredentials> {
    let r: AccountRecord = serde_json::from_slice(bytes).ok()?;
    (r.v == 1).then(|| StoredCredentials {
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

    /// The account's record as a cluster replicates it (JSON text; stored binary).
    pub fn encode_record(creds: &StoredCredentials) -> Result<String, StorageError> {
        to_json(creds)
    }

    /// Write a replicated record. `create_only`: leave an existing account alone. Returns
    /// whether the account existed before.
    pub fn put_record(
        &self,
        bare_jid: &str,
        record: &str,
        create_only: bool,
    ) -> Result<bool, StorageError> {
        let value = encode(&decode(bare_jid, record.as_bytes())?)?;
        let existed = self.tree.contains_key(bare_jid)?;
        if !(existed && create_only) {
            self.tree.insert(bare_jid, value)?;
        }
        Ok(existed)
    }

    /// Remove without complaint if absent (replicated deletes apply on every node).
    pub fn remove_record(&self, bare_jid: &str) -> Result<bool, StorageError> {
        Ok(self.tree.remove(bare_jid)?.is_some())
    }

    /// Every account with its record (replicated form), sorted: the accounts part of a
    /// cluster snapshot.
    pub fn records(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let k = String::from_utf8(k.to_vec())
                    .map_err(|_| StorageError::Corrupt("key".into()))?;
                let v = to_json(&decode(&k, &v)?)?;
                Ok((k, v))
            })
            .collect()
    }

    /// Make the tree exactly `records` (installing a cluster snapshot).
    pub fn replace_all(&self, records: &[(String, String)]) -> Result<(), StorageError> {
        self.tree.clear()?;
        let mut batch = sled::Batch::default();
        for (k, v) in records {
            batch.insert(k.as_bytes(), encode(&decode(k, v.as_bytes())?)?);
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

    #[test]
    fn records_are_stored_binary_and_json_records_of_older_databases_still_read() {
        let dir = std::env::temp_dir().join(format!("sb-acc-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let creds = StoredCredentials::derive("secret", 4096).unwrap();
        let store = Store::open(&dir).unwrap();
        let acc = store.accounts().unwrap();
        acc.create("juliet@localhost", &creds).unwrap();
        let stored = acc.tree.get("juliet@localhost").unwrap().unwrap();
        assert_eq!(stored[0], BINARY_V2);
        assert!(
            stored.len() < 400,
            "binary record is {} bytes",
            stored.len()
        );

        // What earlier versions wrote: the JSON record, straight into the tree.
        let json = AccountStore::encode_record(&creds).unwrap();
        acc.tree.insert("romeo@localhost", json.as_bytes()).unwrap();
        assert_eq!(acc.get("romeo@localhost").unwrap(), Some(creds.clone()));

        // The replicated form stays JSON both ways, and lands binary.
        let records = acc.records().unwrap();
        assert_eq!(
            records,
            vec![
                ("juliet@localhost".into(), json.clone()),
                ("romeo@localhost".into(), json.clone())
            ]
        );
        acc.put_record("nurse@localhost", &json, true).unwrap();
        assert_eq!(
            acc.tree.get("nurse@localhost").unwrap().unwrap()[0],
            BINARY_V2
        );

        // Truncated, padded or unknown records are refused, not misread.
        for bad in [
            &stored[..stored.len() - 1],
            &[stored.as_ref(), b"x"].concat()[..],
            b"\x03abc",
            b"",
        ] {
            acc.tree.insert("bad@localhost", bad).unwrap();
            assert!(
                matches!(acc.get("bad@localhost"), Err(StorageError::Corrupt(_))),
                "{bad:?}"
            );
        }
        drop(acc);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
