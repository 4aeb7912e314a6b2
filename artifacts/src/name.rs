//! Artifact names: single path components, safe as a file name and as the last
//! segment of an object key.

use crate::limits::MAX_NAME_BYTES;

/// Prefix of the filesystem store's in-flight temp files; no artifact may use it.
pub(crate) const TMP_PREFIX: &str = ".kruntimes-tmp-";

/// Checks that `name` can be an artifact name; the error says which rule it breaks.
///
/// Rules: not empty, not `.` or `..`, no `/`, no NUL or other control
/// characters, at most [`MAX_NAME_BYTES`] bytes, not starting with the store's
/// reserved temp prefix.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err("must not be \".\" or \"..\"".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_NAME_BYTES} bytes",
            name.len()
        ));
    }
    if name.contains('/') {
        return Err("must be a single path component (no \"/\")".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters (found {:?})",
            c
        ));
    }
    if name.starts_with(TMP_PREFIX) {
        return Err(format!("must not start with {TMP_PREFIX:?} (reserved)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["a", "report.html", ".hidden", "x..y", "日本語.txt", "a b"] {
            assert!(validate_name(n).is_ok(), "{n}");
        }
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn rejects_traversal_and_bad_characters() {
        let cases = [
            ("", "empty"),
            (".", "\"..\""),
            ("..", "\"..\""),
            ("../etc", "single path component"),
            ("a/b", "single path component"),
            ("/abs", "single path component"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            (".kruntimes-tmp-x", "reserved"),
        ];
        for (name, want) in cases {
            let err = validate_name(name).unwrap_err();
            assert!(err.contains(want), "{name:?}: {err}");
        }
        let err = validate_name(&"a".repeat(256)).unwrap_err();
        assert!(err.contains("256 bytes") && err.contains("255"), "{err}");
    }
}
