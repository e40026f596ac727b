//! Encryption at rest: the trees that hold user content (the message journal,
//! contacts, groups and their members, persistent sessions with their wills, retained
//! messages) keep every value sealed with XChaCha20-Poly1305 under the data key.
//!
//! A sealed value is `[1][24-byte random nonce][ciphertext + 16-byte tag]`, and its
//! associated data is the tree's name and the record's key: a value copied to another
//! key or tree does not open. Keys (user and group names, ids) stay in the clear:
//! they are what the store looks records up by.

use std::fmt;
use std::ops::RangeBounds;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::RngCore;
use sled::IVec;

use super::StoreError;

/// The format byte of a sealed value.
const SEALED_V1: u8 = 1;
const NONCE: usize = 24;

/// The 32-byte data key.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Why a data key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("a data key is 64 hexadecimal digits (32 bytes)")]
pub struct BadKey;

impl DataKey {
    /// A new random key.
    pub fn generate() -> DataKey {
        let mut k = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut k);
        DataKey(k)
    }

    /// From its text form (64 hex digits; surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`BadKey`] for anything else.
    pub fn from_hex(text: &str) -> Result<DataKey, BadKey> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err(BadKey);
        }
        let mut k = [0u8; 32];
        for (i, byte) in k.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| BadKey)?;
        }
        Ok(DataKey(k))
    }

    /// Its text form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Seals values under the data key and opens them under it, or under the keys
/// before it (while a `rekey` is finishing).
#[derive(Clone)]
pub(crate) struct Sealer {
    /// The current key's first.
    ciphers: Vec<XChaCha20Poly1305>,
}

impl Sealer {
    pub fn new(key: &DataKey) -> Sealer {
        Sealer::with_old(key, &[])
    }

    /// Seals under `key`, opens under it or any of `old`.
    pub fn with_old(key: &DataKey, old: &[DataKey]) -> Sealer {
        let ciphers = std::iter::once(key)
            .chain(old)
            .map(|k| XChaCha20Poly1305::new((&k.0).into()))
            .collect();
        Sealer { ciphers }
    }

    fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(tree.len() + 1 + key.len());
        aad.extend_from_slice(tree.as_bytes());
        aad.push(0);
        aad.extend_from_slice(key);
        aad
    }

    pub fn seal(&self, tree: &'static str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let aad = Sealer::aad(tree, key);
        let sealed = self.ciphers[0]
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
            .map_err(|_| StoreError::Corrupt {
                tree,
                reason: "cannot encrypt a record".into(),
            })?;
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, tree: &'static str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let undecryptable = || StoreError::Undecryptable { tree };
        let (&format, rest) = sealed.split_first().ok_or_else(undecryptable)?;
        if format != SEALED_V1 || rest.len() < NONCE {
            return Err(undecryptable());
        }
        let (nonce, body) = rest.split_at(NONCE);
        let aad = Sealer::aad(tree, key);
        self.ciphers
            .iter()
            .find_map(|c| {
                c.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: &aad })
                    .ok()
            })
            .ok_or_else(undecryptable)
    }
}

/// A sled tree whose values are sealed (or, for a store opened without a key in
/// tests and tools, plain).
#[derive(Clone)]
pub(crate) struct SealedTree {
    pub(super) tree: sled::Tree,
    name: &'static str,
    sealer: Option<Sealer>,
}

type Entry = Result<(IVec, IVec), StoreError>;

impl SealedTree {
    pub fn new(tree: sled::Tree, name: &'static str, sealer: Option<Sealer>) -> SealedTree {
        SealedTree { tree, name, sealer }
    }

    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_ref()
    }

    fn seal(&self, key: &[u8], value: &[u8]) -> Result<IVec, StoreError> {
        match &self.sealer {
            Some(s) => s.seal(self.name, key, value).map(IVec::from),
            None => Ok(IVec::from(value)),
        }
    }

    fn open(&self, key: &[u8], value: IVec) -> Result<IVec, StoreError> {
        match &self.sealer {
            Some(s) => s.open(self.name, key, &value).map(IVec::from),
            None => Ok(value),
        }
    }

    fn open_entry(&self, kv: Result<(IVec, IVec), sled::Error>) -> Entry {
        let (k, v) = kv?;
        let v = self.open(&k, v)?;
        Ok((k, v))
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, StoreError> {
        let key = key.as_ref();
        self.tree.get(key)?.map(|v| self.open(key, v)).transpose()
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StoreError> {
        let key = key.as_ref();
        let sealed = self.seal(key, value.as_ref())?;
        self.tree.insert(key, sealed)?;
        Ok(())
    }

    /// Inserts only when the key has no value; false when it had one.
    pub fn insert_new(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        let key = key.as_ref();
        let sealed = self.seal(key, value.as_ref())?;
        Ok(self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(sealed))?
            .is_ok())
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Entry> + '_ {
        self.tree.iter().map(|kv| self.open_entry(kv))
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> impl DoubleEndedIterator<Item = Entry> + '_ {
        self.tree.range(range).map(|kv| self.open_entry(kv))
    }

    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> impl DoubleEndedIterator<Item = Entry> + '_ {
        self.tree.scan_prefix(prefix).map(|kv| self.open_entry(kv))
    }

    /// Keys only (nothing is opened).
    pub fn keys_with_prefix(&self, prefix: impl AsRef<[u8]>) -> impl Iterator<Item = Result<IVec, StoreError>> + '_ {
        self.tree
            .scan_prefix(prefix)
            .keys()
            .map(|k| k.map_err(StoreError::from))
    }

    pub fn last(&self) -> Result<Option<(IVec, IVec)>, StoreError> {
        self.tree.last()?.map(|kv| self.open_entry(Ok(kv))).transpose()
    }

    /// Re-seals every value under `to` (opened with this tree's sealer, or read as
    /// plain when it has none); returns how many.
    pub fn reseal(&self, to: &Sealer) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let plain = self.open(&k, v)?;
            self.tree.insert(&k, to.seal(self.name, &k, &plain)?)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_under_its_own_key_and_tree_only() {
        let key = DataKey::generate();
        let s = Sealer::new(&key);
        let sealed = s.seal("journal", b"k1", b"hello bob").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"hello bob"), "not in the clear");
        assert_eq!(s.open("journal", b"k1", &sealed).unwrap(), b"hello bob");
        assert!(
            matches!(s.open("journal", b"k2", &sealed), Err(StoreError::Undecryptable { .. })),
            "moved"
        );
        assert!(s.open("groups", b"k1", &sealed).is_err(), "another tree");
        let other = Sealer::new(&DataKey::generate());
        assert!(other.open("journal", b"k1", &sealed).is_err(), "another key");
        let rotating = Sealer::with_old(&DataKey::generate(), std::slice::from_ref(&key));
        assert_eq!(
            rotating.open("journal", b"k1", &sealed).unwrap(),
            b"hello bob",
            "an old key still opens"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(s.open("journal", b"k1", &tampered).is_err(), "tampered");
        assert!(s.open("journal", b"k1", b"").is_err() && s.open("journal", b"k1", b"\x01short").is_err());
        assert_ne!(
            s.seal("journal", b"k1", b"hello bob").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn keys_read_back_from_their_text_and_refuse_anything_else() {
        let key = DataKey::generate();
        assert_eq!(DataKey::from_hex(&format!(" {}\n", key.to_hex())).unwrap(), key);
        assert!(DataKey::from_hex("abc").is_err());
        assert!(DataKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(DataKey::from_hex(&"é".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "DataKey(..)", "never printed");
    }
}
