//! Topic names and filters (MQTT 3.1.1 section 4.7, MQTT 5.0 section 4.7 and 4.8.2).

use thiserror::Error;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("'#' is not alone in the last level")]
    BadMultiLevelWildcard,
    #[error("'+' does not fill a whole level")]
    BadSingleLevelWildcard,
    #[error("malformed $share/ subscription")]
    BadSharedSubscription,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
}

/// Prefix of a shared subscription filter (`$share/{group}/{filter}`).
pub const SHARE_PREFIX: &str = "$share/";

/// Checks a topic name used in PUBLISH: not empty, no wildcard.
///
/// # Errors
/// The first rule the name breaks.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a subscription filter, including the `$share/{group}/{filter}` form.
///
/// # Errors
/// The first rule the filter breaks.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    match parse_shared(filter) {
        Some(Ok((_, inner))) => validate_plain_filter(inner),
        Some(Err(e)) => Err(e),
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Splits `$share/{group}/{filter}` into `(group, filter)`.
///
/// Returns `None` when `filter` is not a shared subscription, and an error when it
/// starts with `$share/` but the group name is empty or holds a wildcard, or the
/// inner filter is missing.
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::BadSharedSubscription));
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Some(Err(TopicError::BadSharedSubscription));
    }
    Some(Ok((group, inner)))
}

/// True when `filter` has a wildcard.
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// True when the (valid, non-shared) `filter` matches the (valid) topic name.
///
/// Topics starting with `$` are not matched by a filter starting with a wildcard
/// (MQTT-4.7.2-1).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("$SYS/x").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/c",
            "$share/g/a/#",
            "$share/g/#",
            "+/",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "a/b+/c",
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shared_parsing() {
        assert_eq!(parse_shared("$share/g/a/b"), Some(Ok(("g", "a/b"))));
        assert_eq!(parse_shared("a/b"), None);
    }

    #[test]
    fn matching() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("+", "/x", false),
            ("+/#", "a", true),
            ("a/b", "a/c", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
        ];
        for (f, t, m) in cases {
            assert_eq!(matches(f, t), m, "{f} vs {t}");
        }
    }
}
