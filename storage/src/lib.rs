//! Every sled tree Switchboard keeps, and its encoding. One module per tree.
//!
//! Writes that a client or operator is told succeeded are flushed before this crate returns.

pub mod accounts;
pub mod meta;

use std::path::Path;

pub use accounts::AccountStore;
pub use meta::MetaStore;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the database at {0} is in use by another process (is the node running?)")]
    Locked(String),
    #[error("account {0} already exists")]
    AlreadyExists(String),
    #[error("account {0} does not exist")]
    NotFound(String),
    #[error("corrupt record under key {0}")]
    Corrupt(String),
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
}

/// The node's database: one sled instance under `<data_dir>/db`.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StorageError::Locked(path.display().to_string())
                }
                sled::Error::Io(ref io) if io.to_string().contains("lock") => {
                    StorageError::Locked(path.display().to_string())
                }
                other => StorageError::Sled(other),
            })?;
        Ok(Store { db })
    }

    pub fn accounts(&self) -> Result<AccountStore, StorageError> {
        Ok(AccountStore::new(self.db.open_tree("accounts")?))
    }

    pub fn meta(&self) -> Result<MetaStore, StorageError> {
        Ok(MetaStore::new(self.db.open_tree("meta")?))
    }

    /// Make everything written so far durable (shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        Ok(())
    }
}
