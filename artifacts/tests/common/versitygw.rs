//! A real S3-compatible server for tests: versitygw (built by
//! `tests/controlplane/build.sh`) with a posix backend in a temp directory,
//! listening on a free 127.0.0.1 port; stopped (process group killed) on drop.

use kruntimes_artifacts::{ArtifactStore, Credentials, S3Credentials, StoreConfig};
use kruntimes_testenv::Binaries;
use kruntimes_testenv::ports::free_ports;
use kruntimes_testenv::process::{ManagedProcess, log_tail};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ACCESS: &str = "kruntimes-test-access";
pub const SECRET: &str = "kruntimes-test-secret-0123456789";

pub struct Versitygw {
    // Dropped first: the server stops before its directory goes.
    process: ManagedProcess,
    pub endpoint: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Versitygw {
    /// Starts the server; panics (failing the test) with a message naming
    /// `tests/controlplane/build.sh` when the binary is missing.
    pub fn start() -> Self {
        let bins = Binaries::locate().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let log = dir.path().join("versitygw.log");
        // Another process may grab the port between choosing and binding it.
        for _ in 0..5 {
            let port = free_ports(1).expect("free port")[0];
            let mut cmd = Command::new(&bins.versitygw);
            cmd.arg("--access")
                .arg(ACCESS)
                .arg("--secret")
                .arg(SECRET)
                .arg("--port")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--quiet")
                .arg("posix")
                .arg(&data);
            let mut process = ManagedProcess::spawn("versitygw", cmd, &log, "artifacts-s3-test")
                .unwrap_or_else(|e| panic!("{e}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        process,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        data,
                        _dir: dir,
                    };
                }
                if process.try_exit().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "versitygw did not come up on port {port}; retrying:\n{}",
                log_tail(&log, 20)
            );
        }
        panic!("versitygw would not start; log:\n{}", log_tail(&log, 40));
    }

    /// Creates a bucket: with the posix backend a bucket is a top-level directory.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir(self.data.join(name)).expect("create bucket directory");
    }

    /// Where the posix backend keeps an object.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.data.join(bucket).join(key)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn config(&self, bucket: &str, prefix: Option<&str>) -> StoreConfig {
        let location = match prefix {
            Some(p) => format!("{bucket}/{p}"),
            None => bucket.to_string(),
        };
        StoreConfig::parse(&format!(
            "s3://{location}?region=us-east-1&endpoint={}&path_style=true",
            self.endpoint
        ))
        .expect("valid config")
    }

    pub fn credentials(secret: &str) -> Credentials {
        Credentials::Static(S3Credentials {
            access_key_id: ACCESS.into(),
            secret_access_key: secret.into(),
            session_token: None,
        })
    }

    /// A store for `bucket` with the right credentials.
    pub fn store(&self, bucket: &str, prefix: Option<&str>) -> Arc<dyn ArtifactStore> {
        self.config(bucket, prefix)
            .open_with(Self::credentials(SECRET))
            .expect("open store")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
