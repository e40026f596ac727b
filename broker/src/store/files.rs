//! Files: a record per file (its manifest, owner and audience) in the sealed tree
//! `files`, and its chunks in the sealed tree `file_chunks` under `{id}/{index}`
//! (the index big-endian, so a file's chunks sort in order). Both are encrypted at
//! rest like messages and go into backups with the rest of the store.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Who a file is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// A DM's recipient.
    User(String),
    /// A group's members (checked when they fetch).
    Group(String),
}

/// A file's manifest and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub owner: String,
    pub to: Audience,
    pub name: String,
    pub size: u64,
    pub mime: String,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
    pub chunk_size: u32,
    pub chunks: u32,
    /// Seconds since 1970.
    pub created_at: u64,
    /// Set once the broker checked size and hash and delivered the file message.
    pub finished_at: Option<u64>,
}

impl FileRecord {
    /// The length chunk `index` must have.
    pub fn chunk_len(&self, index: u32) -> Option<u64> {
        if index >= self.chunks {
            return None;
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        Some((self.size - start).min(u64::from(self.chunk_size)))
    }
}

fn chunk_key(id: &str, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 5);
    k.extend_from_slice(id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn corrupt(reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        tree: "files",
        reason: reason.into(),
    }
}

impl Store {
    /// Writes a file's record (new or changed).
    ///
    /// # Errors
    /// Store errors.
    pub fn put_file(&self, id: &str, rec: &FileRecord) -> Result<(), StoreError> {
        self.check_writable()?;
        let bytes = bincode::serialize(rec).map_err(|e| corrupt(e.to_string()))?;
        self.files.insert(id.as_bytes(), bytes)
    }

    /// A file's record.
    ///
    /// # Errors
    /// Store errors, an undecodable record.
    pub fn file(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        match self.files.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => bincode::deserialize(&v).map(Some).map_err(|e| corrupt(e.to_string())),
        }
    }

    /// Every file, for quotas and expiry.
    ///
    /// # Errors
    /// Store errors, undecodable records.
    pub fn all_files(&self) -> Result<Vec<(String, FileRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.files.iter() {
            let (k, v) = entry?;
            let id = String::from_utf8(k.to_vec()).map_err(|_| corrupt("a file id is not UTF-8"))?;
            out.push((id, bincode::deserialize(&v).map_err(|e| corrupt(e.to_string()))?));
        }
        Ok(out)
    }

    /// Stores chunk `index` of file `id`.
    ///
    /// # Errors
    /// Store errors.
    pub fn put_chunk(&self, id: &str, index: u32, data: &[u8]) -> Result<(), StoreError> {
        self.check_writable()?;
        self.file_chunks.insert(chunk_key(id, index), data)
    }

    /// Chunk `index` of file `id`.
    ///
    /// # Errors
    /// Store errors.
    pub fn chunk(&self, id: &str, index: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.file_chunks.get(chunk_key(id, index))?.map(|v| v.to_vec()))
    }

    /// The indexes of the chunks of `id` stored so far, in order.
    ///
    /// # Errors
    /// Store errors.
    pub fn chunk_indexes(&self, id: &str) -> Result<Vec<u32>, StoreError> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(b'/');
        let mut out = Vec::new();
        for k in self.file_chunks.keys_with_prefix(&prefix) {
            let k = k?;
            let tail: [u8; 4] = k[prefix.len()..]
                .try_into()
                .map_err(|_| corrupt("a chunk key is not id/index"))?;
            out.push(u32::from_be_bytes(tail));
        }
        Ok(out)
    }

    /// Removes a file and its chunks.
    ///
    /// # Errors
    /// Store errors.
    pub fn delete_file(&self, id: &str) -> Result<(), StoreError> {
        for i in self.chunk_indexes(id)? {
            self.file_chunks.remove(chunk_key(id, i))?;
        }
        self.files.remove(id.as_bytes())
    }

    /// Removes the chunks of `id`, keeping its record (an upload starting over).
    ///
    /// # Errors
    /// Store errors.
    pub fn delete_chunks(&self, id: &str) -> Result<(), StoreError> {
        for i in self.chunk_indexes(id)? {
            self.file_chunks.remove(chunk_key(id, i))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_chunks_round_trip_and_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let rec = FileRecord {
            owner: "alice".into(),
            to: Audience::User("bob".into()),
            name: "a.txt".into(),
            size: 10,
            mime: "text/plain".into(),
            sha256: "00".repeat(32),
            chunk_size: 4,
            chunks: 3,
            created_at: 1,
            finished_at: None,
        };
        assert_eq!(
            (rec.chunk_len(0), rec.chunk_len(2), rec.chunk_len(3)),
            (Some(4), Some(2), None)
        );
        s.put_file("f1", &rec).unwrap();
        s.put_chunk("f1", 2, b"ij").unwrap();
        s.put_chunk("f1", 0, b"abcd").unwrap();
        s.put_chunk("f10", 0, b"other").unwrap();
        assert_eq!(s.chunk_indexes("f1").unwrap(), [0, 2]);
        assert_eq!(s.chunk("f1", 0).unwrap().as_deref(), Some(&b"abcd"[..]));
        assert_eq!(s.file("f1").unwrap(), Some(rec));
        s.delete_file("f1").unwrap();
        assert!(s.file("f1").unwrap().is_none());
        assert!(s.chunk_indexes("f1").unwrap().is_empty());
        assert_eq!(s.chunk_indexes("f10").unwrap(), [0], "another file is left alone");
    }
}
