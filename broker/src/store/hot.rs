//! Read-mostly answers the IM path asks for every message (does the account exist,
//! whom did the recipient block, who is in the group), kept in memory. Every write to
//! what they mirror goes through the one [`Store`](super::Store) handle open on the
//! database and through [`Cache::write`], so they cannot go stale.

use std::sync::RwLock;

use super::StoreError;

/// Most names one cache holds; past it, an arbitrary one is forgotten (and read
/// again when next asked), so memory stays bounded whatever the number of accounts.
const MAX_ENTRIES: usize = 65_536;

/// Values by name, read from the store on first use and forgotten by writes.
pub(super) struct Cache<V> {
    map: RwLock<crate::FastMap<String, V>>,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache { map: RwLock::default() }
    }
}

impl<V: Clone> Cache<V> {
    /// The value for `key`; on a miss `load` reads it (under the write lock, so a
    /// write cannot interleave). A `None` from `load` is answered but not kept.
    pub(super) fn get_or_load(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<Option<V>, StoreError>,
    ) -> Result<Option<V>, StoreError> {
        if let Some(v) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(Some(v.clone()));
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let loaded = load()?;
        if let Some(v) = &loaded {
            if map.len() >= MAX_ENTRIES {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
            map.insert(key.to_owned(), v.clone());
        }
        Ok(loaded)
    }

    /// Runs a write to what `key` mirrors with the cache locked, then forgets `key`
    /// (reloaded on the next question rather than patched).
    pub(super) fn write<R>(&self, key: &str, write: impl FnOnce() -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let result = write();
        map.remove(key);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_once_keeps_only_found_values_and_forgets_on_write() {
        let c: Cache<u32> = Cache::default();
        let mut loads = 0;
        for _ in 0..2 {
            let v = c
                .get_or_load("a", || {
                    loads += 1;
                    Ok(Some(1))
                })
                .unwrap();
            assert_eq!(v, Some(1));
        }
        assert_eq!(loads, 1, "the second answer came from memory");
        assert_eq!(c.get_or_load("b", || Ok(None)).unwrap(), None);
        assert_eq!(
            c.get_or_load("b", || Ok(Some(2))).unwrap(),
            Some(2),
            "a miss is not kept"
        );
        c.write("a", || Ok(())).unwrap();
        assert_eq!(
            c.get_or_load("a", || Ok(Some(3))).unwrap(),
            Some(3),
            "reloaded after a write"
        );
    }

    #[test]
    fn a_cache_holds_at_most_its_bound() {
        let c: Cache<u32> = Cache::default();
        for n in 0..MAX_ENTRIES + 100 {
            c.get_or_load(&n.to_string(), || Ok(Some(1))).unwrap();
        }
        assert_eq!(c.map.read().unwrap().len(), MAX_ENTRIES);
        assert_eq!(c.get_or_load("last", || Ok(Some(7))).unwrap(), Some(7));
    }
}
