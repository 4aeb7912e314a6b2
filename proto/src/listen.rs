//! Binding the Unix socket one of our gRPC servers (runtimed, the bash
//! Runtime Server) listens on: private (mode 0600) and accepting from the
//! moment its path exists. A stale socket left by a dead server is replaced;
//! a live socket or any other kind of file never is.

use std::io::{Error, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use tokio::net::UnixListener;

/// Binds `path` (creating its parent directories). The socket is bound and
/// chmod-ed inside a staging directory only this user can enter, then renamed
/// to `path`: nobody can connect before it is private, and nobody who sees
/// `path` is refused because `listen` has not happened yet. Needs a tokio
/// runtime. Errors name the path.
pub fn bind_private_unix(path: &Path) -> std::io::Result<UnixListener> {
    let ctx = |what: &str, p: &Path| {
        let p = p.display().to_string();
        let what = what.to_string();
        move |e: Error| Error::new(e.kind(), format!("{what} {p}: {e}"))
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::new(
                ErrorKind::AddrInUse,
                format!("another server is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(ctx("removing stale socket", path))?;
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(ctx("creating", parent))?;
    // Short, so the staged path fits `sun_path` whenever `path` does.
    let stage = parent.join(format!(".bind-{}", std::process::id()));
    let staged = stage.join("s");
    if stage.is_dir() {
        // Left by a crashed process with our pid; only our own entry goes.
        let _ = std::fs::remove_file(&staged);
        std::fs::remove_dir(&stage).map_err(ctx("removing stale", &stage))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&stage)
        .map_err(ctx("creating", &stage))?;
    let bound = UnixListener::bind(&staged)
        .map_err(ctx("binding", &staged))
        .and_then(|l| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(ctx("setting mode 0600 on", &staged))?;
            std::fs::rename(&staged, path).map_err(ctx("moving the socket to", path))?;
            Ok(l)
        });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&stage);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn private_listening_and_nothing_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let sock = dir.join("sub/a.sock");

        // A stale socket (its listener gone) is replaced.
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let l = bind_private_unix(&sock).unwrap();
        let meta = std::fs::metadata(&sock).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(entries(sock.parent().unwrap()), ["a.sock"]);
        // It accepts from the moment it exists.
        let _c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        l.accept().await.unwrap();

        // A live one is not taken over.
        let e = bind_private_unix(&sock).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AddrInUse);
        assert!(e.to_string().contains("another server is listening"), "{e}");

        // Nor is any other file.
        let file = dir.join("data");
        std::fs::write(&file, "keep me").unwrap();
        let e = bind_private_unix(&file).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
