//! Resolves the Python interpreter every python figure uses to its real path
//! (`sys.executable`), so no figure pays for a version-manager shim.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `sys.executable` of `python` (a name on PATH or a path), or why not.
pub fn resolve(python: &Path) -> Result<PathBuf, String> {
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -c 'import sys; print(sys.executable)' failed with {}: {}",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() || !Path::new(&path).is_absolute() {
        return Err(format!(
            "{} reports sys.executable {path:?}, not an absolute path",
            python.display()
        ));
    }
    Ok(PathBuf::from(path))
}

/// Whether `python` can import `module` (e.g. the runtime's package).
pub fn has_module(python: &Path, module: &str) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{} cannot import {module}: {}",
        python.display(),
        err.lines().last().unwrap_or("").trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_to_an_absolute_interpreter_or_explains() {
        match resolve(Path::new("python3")) {
            Ok(p) => {
                assert!(p.is_absolute(), "{}", p.display());
                assert!(has_module(&p, "sys").is_ok());
                let e = has_module(&p, "no_such_module_kruntimes")
                    .err()
                    .unwrap_or_default();
                assert!(e.contains("no_such_module_kruntimes"), "{e}");
            }
            Err(e) => assert!(e.contains("python3"), "{e}"),
        }
        let e = resolve(Path::new("/nonexistent/python"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/python"), "{e}");
    }
}
