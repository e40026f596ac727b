//! Key layout helpers: names cannot contain NUL, so `a NUL b` keys never collide and
//! `a NUL` is a prefix of exactly a's entries; ids are big-endian so keys sort by id.

pub fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

pub fn prefix(a: &str) -> Vec<u8> {
    pair(a, "")
}

/// The first key after every `pair(a, _)` and `with_id(a, _)` key.
pub fn prefix_end(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(1);
    k
}

pub fn with_id(a: &str, id: u64) -> Vec<u8> {
    let mut k = prefix(a);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The id at the end of a `with_id` key.
pub fn id_of(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|i| &key[i..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The second part of a `pair` key.
pub fn second(key: &[u8]) -> Option<String> {
    let i = key.iter().position(|&b| b == 0)?;
    String::from_utf8(key[i + 1..].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_id() {
        assert_eq!(second(&pair("alice", "bob")).as_deref(), Some("bob"));
        assert_eq!(id_of(&with_id("alice", 258)), Some(258));
        assert!(with_id("a", 2) < with_id("a", 256));
        assert!(with_id("a", u64::MAX) < prefix_end("a"));
        assert!(prefix_end("a") <= prefix("a\u{1}"));
        assert!(!with_id("ab", 1).starts_with(&prefix("a")));
    }
}
