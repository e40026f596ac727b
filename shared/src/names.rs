//! Names of accounts (and, later, groups): lowercase `[a-z0-9][a-z0-9_.-]{0,31}`.

/// Longest allowed name, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// True when `name` is a valid user or group name: 1 to 32 characters, the first a
/// lowercase ASCII letter or digit, the rest lowercase letters, digits, `_`, `.` or `-`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= MAX_NAME_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["a", "alice", "bob_2", "x.y-z", "0day", &"a".repeat(32)] {
            assert!(is_valid_name(n), "{n}");
        }
    }

    #[test]
    fn refuses_invalid_names() {
        for n in [
            "",
            "Alice",
            "_x",
            ".x",
            "-x",
            "a b",
            "a/b",
            "a+",
            "a#",
            "é",
            &"a".repeat(33),
        ] {
            assert!(!is_valid_name(n), "{n}");
        }
    }
}
