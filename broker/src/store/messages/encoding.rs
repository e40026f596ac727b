//! The index records' encoding: varint bincode, and id lists as deltas.

use bincode::Options;
use serde::Serialize;

use super::Slot;
use crate::store::StoreError;

pub(super) fn corrupt(tree: &'static str, e: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        reason: e.to_string(),
    }
}

/// Varint encoding: ids, times and lengths take the bytes they need.
pub(super) fn opts() -> impl Options {
    bincode::DefaultOptions::new()
}

pub(super) fn encode<T: Serialize>(tree: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    opts().serialize(v).map_err(|e| corrupt(tree, e))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    opts().deserialize(v).map_err(|e| corrupt(tree, e))
}

/// A mailbox index chunk: first id and time, then deltas.
pub(super) fn encode_slots(slots: &[Slot]) -> Result<Vec<u8>, StoreError> {
    let mut prev = Slot { id: 0, ts: 0, bytes: 0 };
    let deltas: Vec<(u64, i64, u32)> = slots
        .iter()
        .map(|s| {
            let d = (s.id - prev.id, s.ts as i64 - prev.ts as i64, s.bytes);
            prev = *s;
            d
        })
        .collect();
    encode("mailbox_index", &deltas)
}

pub(super) fn decode_slots(v: &[u8]) -> Result<Vec<Slot>, StoreError> {
    let deltas: Vec<(u64, i64, u32)> = decode("mailbox_index", v)?;
    let (mut id, mut ts) = (0u64, 0i64);
    Ok(deltas
        .into_iter()
        .map(|(di, dt, bytes)| {
            id = id.wrapping_add(di);
            ts = ts.wrapping_add(dt);
            Slot {
                id,
                ts: ts.max(0) as u64,
                bytes,
            }
        })
        .collect())
}

pub(super) fn encode_ids(ids: &[u64]) -> Result<Vec<u8>, StoreError> {
    let mut prev = 0;
    let deltas: Vec<u64> = ids
        .iter()
        .map(|&id| {
            let d = id - prev;
            prev = id;
            d
        })
        .collect();
    encode("history_index", &deltas)
}

pub(super) fn decode_ids(v: &[u8]) -> Result<Vec<u64>, StoreError> {
    let deltas: Vec<u64> = decode("history_index", v)?;
    let mut id = 0u64;
    Ok(deltas
        .into_iter()
        .map(|d| {
            id = id.wrapping_add(d);
            id
        })
        .collect())
}
