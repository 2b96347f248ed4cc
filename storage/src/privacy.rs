//! Trees `privacy` and `privacy_default`: privacy lists (XEP-0016).
//!
//! - `privacy`: `user \0 list name` → the list's items, sorted by `order`.
//! - `privacy_default`: `user` → the name of the default list.
//!
//! Which list is active is session state and not stored. Validating items against the XEP is
//! the node's job; this module refuses only duplicate `order` values, and a default that names
//! no list.

use serde::{Deserialize, Serialize};
use sled::transaction::Transactional;

use crate::{abort, decode, encode, key, part, prefix, suffix, Record, StorageError};

/// One privacy list item as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyItem {
    /// `"jid"`, `"group"` or `"subscription"`; `None` for the fall-through item.
    pub kind: Option<String>,
    pub value: Option<String>,
    /// `action="allow"`; `false` is `deny`.
    pub allow: bool,
    pub order: u32,
    /// The stanza kinds the item applies to; all four `false` means every stanza.
    pub message: bool,
    pub iq: bool,
    pub presence_in: bool,
    pub presence_out: bool,
}

#[derive(Serialize, Deserialize)]
struct ListRecord {
    v: u8,
    items: Vec<ItemRecord>,
}

impl Record for ListRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Serialize, Deserialize)]
struct ItemRecord {
    kind: Option<String>,
    value: Option<String>,
    allow: bool,
    order: u32,
    message: bool,
    iq: bool,
    presence_in: bool,
    presence_out: bool,
}

impl From<&PrivacyItem> for ItemRecord {
    fn from(i: &PrivacyItem) -> Self {
        ItemRecord {
            kind: i.kind.clone(),
            value: i.value.clone(),
            allow: i.allow,
            order: i.order,
            message: i.message,
            iq: i.iq,
            presence_in: i.presence_in,
            presence_out: i.presence_out,
        }
    }
}

impl From<ItemRecord> for PrivacyItem {
    fn from(i: ItemRecord) -> Self {
        PrivacyItem {
            kind: i.kind,
            value: i.value,
            allow: i.allow,
            order: i.order,
            message: i.message,
            iq: i.iq,
            presence_in: i.presence_in,
            presence_out: i.presence_out,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DefaultRecord {
    v: u8,
    name: String,
}

impl Record for DefaultRecord {
    fn v(&self) -> u8 {
        self.v
    }
}

#[derive(Clone)]
pub struct PrivacyStore {
    pub(crate) lists: sled::Tree,
    pub(crate) default: sled::Tree,
    /// Flush after each write (off for replicated shards: their Raft log is durable).
    durable: bool,
}

impl PrivacyStore {
    pub(crate) fn new(lists: sled::Tree, default: sled::Tree) -> Self {
        PrivacyStore {
            lists,
            default,
            durable: true,
        }
    }

    /// Without flushes (see the `durable` field).
    pub(crate) fn volatile(mut self) -> Self {
        self.durable = false;
        self
    }

    /// The names of `user`'s lists, sorted.
    pub fn lists(&self, user: &str) -> Result<Vec<String>, StorageError> {
        let pfx = prefix(user)?;
        self.lists
            .scan_prefix(&pfx)
            .keys()
            .map(|k| suffix(&k?, pfx.len()))
            .collect()
    }

    /// The list's items, sorted by `order`.
    pub fn get(&self, user: &str, name: &str) -> Result<Option<Vec<PrivacyItem>>, StorageError> {
        let k = key(user, &[name])?;
        match self.lists.get(&k)? {
            Some(v) => {
                let r: ListRecord = decode(&k, &v)?;
                Ok(Some(r.items.into_iter().map(PrivacyItem::from).collect()))
            }
            None => Ok(None),
        }
    }

    /// Create or replace a list. `DuplicateOrder` (and nothing stored) if two items share an
    /// `order`.
    pub fn put(&self, user: &str, name: &str, items: &[PrivacyItem]) -> Result<(), StorageError> {
        let mut records: Vec<ItemRecord> = items.iter().map(ItemRecord::from).collect();
        records.sort_by_key(|i| i.order);
        if let Some(w) = records.windows(2).find(|w| w[0].order == w[1].order) {
            return Err(StorageError::DuplicateOrder {
                list: name.to_string(),
                order: w[0].order,
            });
        }
        let record = ListRecord {
            v: ListRecord::V,
            items: records,
        };
        self.lists.insert(key(user, &[name])?, encode(&record)?)?;
        if self.durable {
            self.lists.flush()?;
        }
        Ok(())
    }

    /// Remove a list; `false` if there was none. If it was the default list, there is no
    /// default any more (in the same transaction).
    pub fn remove(&self, user: &str, name: &str) -> Result<bool, StorageError> {
        let k = key(user, &[name])?;
        let removed = (&self.lists, &self.default).transaction(|(lists, default)| {
            if lists.remove(k.as_slice())?.is_none() {
                return Ok(false);
            }
            if let Some(d) = default.get(user.as_bytes())? {
                let d: DefaultRecord = decode(user.as_bytes(), &d).map_err(abort)?;
                if d.name == name {
                    default.remove(user.as_bytes())?;
                }
            }
            Ok(true)
        })?;
        if removed && self.durable {
            self.lists.flush()?;
        }
        Ok(removed)
    }

    /// The name of `user`'s default list.
    pub fn default_list(&self, user: &str) -> Result<Option<String>, StorageError> {
        match self.default.get(part(user)?)? {
            Some(v) => Ok(Some(decode::<DefaultRecord>(user.as_bytes(), &v)?.name)),
            None => Ok(None),
        }
    }

    /// Make `name` the default list, or decline the default with `None`. `NoSuchList` if
    /// `name` is not one of `user`'s lists.
    pub fn set_default(&self, user: &str, name: Option<&str>) -> Result<(), StorageError> {
        let Some(name) = name else {
            self.default.remove(part(user)?)?;
            if self.durable {
                self.default.flush()?;
            }
            return Ok(());
        };
        let k = key(user, &[name])?;
        let value = encode(&DefaultRecord {
            v: DefaultRecord::V,
            name: name.to_string(),
        })?;
        (&self.lists, &self.default).transaction(|(lists, default)| {
            if lists.get(k.as_slice())?.is_none() {
                return Err(abort(StorageError::NoSuchList(name.to_string())));
            }
            default.insert(user.as_bytes(), value.as_slice())?;
            Ok(())
        })?;
        if self.durable {
            self.default.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{open, TempDir};

    const U: &str = "juliet@example.com";

    fn item(kind: Option<&str>, value: Option<&str>, allow: bool, order: u32) -> PrivacyItem {
        PrivacyItem {
            kind: kind.map(str::to_string),
            value: value.map(str::to_string),
            allow,
            order,
            message: false,
            iq: false,
            presence_in: false,
            presence_out: false,
        }
    }

    #[test]
    fn crud_sorted_by_order() {
        let dir = TempDir::new("privacy-crud");
        let store = open(dir.path());
        let p = store.privacy().unwrap();
        assert!(p.lists(U).unwrap().is_empty());
        assert_eq!(p.get(U, "public").unwrap(), None);
        let mut tybalt = item(Some("jid"), Some("tybalt@example.com"), false, 1);
        tybalt.message = true;
        tybalt.presence_out = true;
        let friends = item(Some("group"), Some("Friends"), true, 5);
        let rest = item(None, None, false, 10);
        p.put(
            U,
            "public",
            &[rest.clone(), tybalt.clone(), friends.clone()],
        )
        .unwrap();
        p.put(U, "empty", &[]).unwrap();
        p.put("juliet@example.co", "other", &[]).unwrap();
        assert_eq!(
            p.get(U, "public").unwrap(),
            Some(vec![tybalt.clone(), friends, rest])
        );
        assert_eq!(p.get(U, "empty").unwrap(), Some(vec![]));
        assert_eq!(p.lists(U).unwrap(), vec!["empty", "public"]);
        p.put(U, "public", std::slice::from_ref(&tybalt)).unwrap();
        assert_eq!(p.get(U, "public").unwrap(), Some(vec![tybalt]));
        assert!(p.remove(U, "empty").unwrap());
        assert!(!p.remove(U, "empty").unwrap());
        assert_eq!(p.lists(U).unwrap(), vec!["public"]);
    }

    #[test]
    fn duplicate_order_rejected() {
        let dir = TempDir::new("privacy-dup");
        let store = open(dir.path());
        let p = store.privacy().unwrap();
        let err = p
            .put(
                U,
                "bad",
                &[
                    item(Some("jid"), Some("a@x"), true, 3),
                    item(None, None, false, 7),
                    item(Some("jid"), Some("b@x"), false, 3),
                ],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            StorageError::DuplicateOrder { ref list, order: 3 } if list == "bad"
        ));
        assert_eq!(p.get(U, "bad").unwrap(), None, "nothing stored");
    }

    #[test]
    fn default_list() {
        let dir = TempDir::new("privacy-default");
        let store = open(dir.path());
        let p = store.privacy().unwrap();
        assert_eq!(p.default_list(U).unwrap(), None);
        assert!(matches!(
            p.set_default(U, Some("nope")),
            Err(StorageError::NoSuchList(_))
        ));
        p.put(U, "a", &[item(None, None, true, 1)]).unwrap();
        p.put(U, "b", &[item(None, None, false, 1)]).unwrap();
        p.set_default(U, Some("a")).unwrap();
        assert_eq!(p.default_list(U).unwrap().as_deref(), Some("a"));
        assert!(p.remove(U, "b").unwrap());
        assert_eq!(p.default_list(U).unwrap().as_deref(), Some("a"));
        assert!(p.remove(U, "a").unwrap());
        assert_eq!(
            p.default_list(U).unwrap(),
            None,
            "removing the default clears it"
        );
        p.put(U, "c", &[]).unwrap();
        p.set_default(U, Some("c")).unwrap();
        p.set_default(U, None).unwrap();
        assert_eq!(p.default_list(U).unwrap(), None);
        assert!(p.get(U, "c").unwrap().is_some(), "declining keeps the list");
    }

    #[test]
    fn survives_reopen() {
        let dir = TempDir::new("privacy-reopen");
        let items = vec![
            item(Some("subscription"), Some("none"), false, 2),
            item(None, None, true, 9),
        ];
        {
            let store = open(dir.path());
            let p = store.privacy().unwrap();
            p.put(U, "strict", &items).unwrap();
            p.set_default(U, Some("strict")).unwrap();
        }
        let store = open(dir.path());
        let p = store.privacy().unwrap();
        assert_eq!(p.get(U, "strict").unwrap(), Some(items));
        assert_eq!(p.default_list(U).unwrap().as_deref(), Some("strict"));
    }
}
