//! Outputs: small `KEY=VALUE` results a Run writes to the file named by
//! `$KRUNTIMES_OUTPUTS`, parsed by runtimed after the process exits. Bounded;
//! every violation names the key, the size and the limit.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub const MAX_KEYS: usize = 64;
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
pub const MAX_TOTAL_BYTES: usize = 64 * 1024;

/// Reads and parses the outputs file; a missing file means no outputs.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read the outputs file: {e}")),
    };
    let mut buf = Vec::new();
    // Read one byte past the limit to tell "at the limit" from "over it"
    // without trusting the file's size (it may still be growing).
    file.take(MAX_TOTAL_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the outputs file: {e}"))?;
    if buf.len() > MAX_TOTAL_BYTES {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(buf.len() as u64);
        return Err(format!(
            "the outputs file is {size} bytes; the limit is {MAX_TOTAL_BYTES} bytes"
        ));
    }
    parse(&buf)
}

fn valid_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "the outputs file is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "outputs line {}: {:?} is not KEY=VALUE",
                n + 1,
                crate::validate::show(line)
            ));
        };
        let key = key.trim();
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "output key {} is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
                crate::validate::show(key),
                key.len()
            ));
        }
        if !valid_key(key) {
            return Err(format!(
                "outputs line {}: key {:?} must start with a letter or '_' and contain only letters, digits, '_', '-' and '.'",
                n + 1,
                key
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "output {key} is {} bytes; the limit is {MAX_VALUE_BYTES} bytes",
                value.len()
            ));
        }
        out.insert(key.to_string(), value.to_string());
        if out.len() > MAX_KEYS {
            return Err(format!(
                "outputs have more than {MAX_KEYS} keys (at {key}); the limit is {MAX_KEYS}"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blanks_and_equals_in_values() {
        let m = parse(b"# result\n\nA=1\nURL=http://x/?a=b\r\n  B = two\n").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["URL"], "http://x/?a=b");
        assert_eq!(m["B"], " two");
    }

    #[test]
    fn violations_name_key_size_and_limit() {
        let e = parse(format!("BIG={}", "x".repeat(MAX_VALUE_BYTES + 1)).as_bytes()).unwrap_err();
        assert!(
            e.contains("BIG") && e.contains("8193") && e.contains("8192"),
            "{e}"
        );
        let e = parse(format!("{}=1", "k".repeat(129)).as_bytes()).unwrap_err();
        assert!(e.contains("129") && e.contains("128"), "{e}");
        let many: String = (0..65).map(|i| format!("K{i}=v\n")).collect();
        let e = parse(many.as_bytes()).unwrap_err();
        assert!(e.contains("64"), "{e}");
        assert!(parse(b"novalue\n").unwrap_err().contains("line 1"));
        assert!(parse(b"A=\xff\n").unwrap_err().contains("UTF-8"));
        assert!(parse(b"1A=x\n").is_err());
    }

    #[test]
    fn file_size_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        assert!(read(&p).unwrap().is_empty());
        std::fs::write(&p, "A=1\n".repeat(20_000)).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("80000") && e.contains("65536"), "{e}");
    }
}
