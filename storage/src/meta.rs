//! Tree `meta`: node-wide values such as the secret that seeds fake SCRAM salts.

use crate::StorageError;

#[derive(Clone)]
pub struct MetaStore {
    tree: sled::Tree,
}

impl MetaStore {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        MetaStore { tree }
    }

    /// The 32-byte value under `key`, created from `fresh` on first use and kept forever.
    pub fn secret(
        &self,
        key: &str,
        fresh: impl FnOnce() -> [u8; 32],
    ) -> Result<[u8; 32], StorageError> {
        if let Some(v) = self.tree.get(key)? {
            return v
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::Corrupt(key.to_string()));
        }
        let value = fresh();
        let stored =
            match self
                .tree
                .compare_and_swap(key, None as Option<&[u8]>, Some(&value[..]))?
            {
                Ok(()) => value,
                Err(e) => e
                    .current
                    .as_deref()
                    .and_then(|c| c.try_into().ok())
                    .ok_or_else(|| StorageError::Corrupt(key.to_string()))?,
            };
        self.tree.flush()?;
        Ok(stored)
    }
}
