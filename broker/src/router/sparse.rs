//! A map that costs one pointer while it is empty.
//!
//! Most nodes of the subscription and retained tries are leaves (a user's
//! `presence/{user}`, a device's `inbox/{user}`), and most filters have no shared
//! group: an empty hash map inline is 40 bytes in every one of them, and in every
//! bucket of its parent's map. Boxed on first insert, it is 8.

use std::borrow::Borrow;
use std::hash::Hash;

use crate::FastMap;

pub struct SparseMap<K, V>(Option<Box<FastMap<K, V>>>);

impl<K, V> Default for SparseMap<K, V> {
    fn default() -> Self {
        SparseMap(None)
    }
}

impl<K: Hash + Eq, V> SparseMap<K, V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.as_ref().is_some_and(|m| m.contains_key(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.as_ref()?.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.as_mut()?.get_mut(key)
    }

    /// The value at `key`, inserted as `V::default()` when absent.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.0.get_or_insert_with(Box::default).entry(key).or_default()
    }

    /// Removes `key`; the map's allocation goes with its last entry.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.0.as_mut()?;
        let removed = map.remove(key);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_with_its_first_entry_and_frees_with_its_last() {
        assert_eq!(size_of::<SparseMap<Box<str>, u8>>(), size_of::<usize>());
        let mut m: SparseMap<Box<str>, u32> = SparseMap::default();
        assert!(m.is_empty() && m.get("a").is_none() && m.remove("a").is_none());
        *m.get_or_default("a".into()) += 1;
        *m.get_or_default("a".into()) += 1;
        *m.get_or_default("b".into()) += 5;
        assert_eq!(
            (m.get("a"), m.contains_key("b"), m.contains_key("c")),
            (Some(&2), true, false)
        );
        *m.get_mut("b").unwrap() += 1;
        let mut all: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        all.sort();
        assert_eq!(all, [("a".to_string(), 2), ("b".to_string(), 6)]);
        assert_eq!(m.remove("a"), Some(2));
        assert!(!m.is_empty());
        assert_eq!(m.remove("b"), Some(6));
        assert!(m.is_empty() && m.0.is_none(), "the last entry takes the map with it");
    }
}
