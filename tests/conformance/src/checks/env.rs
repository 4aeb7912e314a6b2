//! Environment: the request's env overlays the server's own.
use crate::client::{Ended, command, ended, run, sh, unique_id};
use crate::server::SERVER_ENV;
use crate::{Failure, ServerUnderTest, ensure};

/// The child sees the server's env (KRT_CONF_SERVER_ONLY), the request's value
/// where both set a name (KRT_CONF_OVERRIDDEN), the request's new names, and
/// values with spaces, '=' and newlines byte for byte; argv[0] is resolved
/// through the PATH of the merged env (a tool only on the request's PATH).
pub async fn env_precedence(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("env");
    let mut req = sh(
        &id,
        r#"printf '%s|%s|%s|%s' "$KRT_CONF_SERVER_ONLY" "$KRT_CONF_OVERRIDDEN" "$KRT_CONF_REQUEST_ONLY" "$KRT_CONF_TRICKY""#,
    );
    let tricky = "a=b c\nd\t'\"$HOME";
    req.env
        .insert("KRT_CONF_OVERRIDDEN".into(), "from-request".into());
    req.env
        .insert("KRT_CONF_REQUEST_ONLY".into(), "from-request".into());
    req.env.insert("KRT_CONF_TRICKY".into(), tricky.into());
    let out = run(&mut c, req).await?;
    let want = format!("{}|from-request|from-request|{tricky}", SERVER_ENV[0].1);
    ensure!(
        out.stdout_text() == want,
        "{id}: env seen by the child {:?}, want {want:?} (server env must be inherited, request env must win{})",
        out.stdout_text(),
        if s.is_launched() {
            ""
        } else {
            "; with KRUNTIMES_CONFORMANCE_ADDR start the server with KRT_CONF_SERVER_ONLY=from-server KRT_CONF_OVERRIDDEN=from-server"
        }
    );

    // A program found only through the request's PATH.
    let bin = s.scratch().join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| Failure::Setup(format!("{}: {e}", bin.display())))?;
    let tool = bin.join("krt-conf-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool-ran \"$1\"\n")
        .map_err(|e| Failure::Setup(format!("{}: {e}", tool.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Failure::Setup(format!("{}: {e}", tool.display())))?;
    let id = unique_id("env-path");
    let mut req = command(&id, &["krt-conf-tool", "x y"]);
    let server_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    req.env
        .insert("PATH".into(), format!("{}:{server_path}", bin.display()));
    let out = run(&mut c, req).await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(0) && out.stdout_text() == "tool-ran x y\n",
        "{id}: argv[0] must be found through the request's PATH; got {:?}, stdout {:?}, stderr {:?}",
        out.exit.status,
        out.stdout_text(),
        out.stderr_text()
    );
    Ok(())
}
