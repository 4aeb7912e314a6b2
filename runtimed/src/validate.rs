//! Bounds and syntax checks for everything a client sends. Each error names the
//! field, the offending value (shortened) and the limit.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Component, Path};

pub const MAX_ID_LEN: usize = 128;
pub const MAX_ARGS: usize = 4096;
/// Total bytes of argv/args + env, like the kernel's ARG_MAX but well below it.
pub const MAX_ARG_BYTES: usize = 1 << 20;
pub const MAX_ENV_VARS: usize = 1024;
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
pub const MAX_PATH_LEN: usize = 4096;

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Shortens a value for an error message.
pub fn show(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// Run ids become file and directory names: `[A-Za-z0-9._-]{1,128}`, no leading dot.
pub fn run_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "{field} {} must be 1 to {MAX_ID_LEN} bytes long",
            show(id)
        )));
    }
    if id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(format!(
            "{field} {} may contain only letters, digits, '.', '_' and '-', and must not start with '.'",
            show(id)
        )));
    }
    Ok(())
}

pub fn env(env: &HashMap<String, String>) -> Result<usize> {
    if env.len() > MAX_ENV_VARS {
        return Err(invalid(format!(
            "env has {} variables; the limit is {MAX_ENV_VARS}",
            env.len()
        )));
    }
    let mut bytes = 0;
    for (k, v) in env {
        if k.is_empty() {
            return Err(invalid("env: a variable name is empty".into()));
        }
        if k.contains('=') || k.contains('\0') {
            return Err(invalid(format!(
                "env name {} must not contain '=' or NUL",
                show(k)
            )));
        }
        if v.contains('\0') {
            return Err(invalid(format!("env {k} value must not contain NUL")));
        }
        bytes += k.len() + v.len() + 2;
    }
    Ok(bytes)
}

pub fn args(field: &str, args: &[String], env_bytes: usize) -> Result<()> {
    if args.len() > MAX_ARGS {
        return Err(invalid(format!(
            "{field} has {} entries; the limit is {MAX_ARGS}",
            args.len()
        )));
    }
    let mut total = env_bytes;
    for (i, a) in args.iter().enumerate() {
        if a.contains('\0') {
            return Err(invalid(format!("{field}[{i}] must not contain NUL")));
        }
        total += a.len() + 1;
    }
    if total > MAX_ARG_BYTES {
        return Err(invalid(format!(
            "{field} and env total {total} bytes; the limit is {MAX_ARG_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A path that must stay inside its base directory: relative, no `..`.
pub fn relative_path(field: &str, p: &str) -> Result<()> {
    if p.len() > MAX_PATH_LEN || p.contains('\0') {
        return Err(invalid(format!(
            "{field} {} must be at most {MAX_PATH_LEN} bytes without NUL",
            show(p)
        )));
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "{field} {} must be a relative path inside the Run's workspace (no leading '/', no '..')",
                    show(p)
                )));
            }
        }
    }
    Ok(())
}

/// A single path component such as a script file name.
pub fn file_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(invalid(format!(
            "{field} {} must be a single file name of 1 to 255 bytes (no '/', not '.' or '..')",
            show(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids() {
        assert!(run_id("run_id", "abc-1.2_x").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            let e = run_id("run_id", bad).unwrap_err().to_string();
            assert!(e.contains("run_id"), "{e}");
        }
    }

    #[test]
    fn env_names() {
        let mut m = HashMap::new();
        m.insert("A=B".to_string(), "v".to_string());
        assert!(env(&m).unwrap_err().to_string().contains("\"A=B\""));
        m.clear();
        m.insert("A".to_string(), "v\0".to_string());
        assert!(env(&m).is_err());
        m.clear();
        m.insert("A".to_string(), "ok".to_string());
        assert_eq!(env(&m).unwrap(), 5);
    }

    #[test]
    fn arg_bounds() {
        let many = vec!["a".to_string(); MAX_ARGS + 1];
        assert!(
            args("argv", &many, 0)
                .unwrap_err()
                .to_string()
                .contains("4096")
        );
        let big = vec!["a".repeat(MAX_ARG_BYTES)];
        assert!(
            args("argv", &big, 0)
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
    }

    #[test]
    fn paths() {
        assert!(relative_path("working_dir", "a/b/./c").is_ok());
        assert!(relative_path("working_dir", "").is_ok());
        assert!(relative_path("working_dir", "../x").is_err());
        assert!(relative_path("working_dir", "a/../../x").is_err());
        assert!(relative_path("working_dir", "/etc").is_err());
        assert!(file_name("filename", "a.py").is_ok());
        assert!(file_name("filename", "a/b").is_err());
        assert!(file_name("filename", "..").is_err());
    }
}
