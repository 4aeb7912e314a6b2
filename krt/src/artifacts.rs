//! `krt artifacts`: list a Run's artifacts, and download one into `PATH.part`
//! (resuming from what is already there, re-hashing it), verifying its sha256
//! against runtimed's metadata before renaming it to `PATH`. A mismatch
//! removes the part file and fails: nothing misleading is left on disk.

use crate::cli::OutputFormat;
use crate::client::connect;
use crate::error::{Error, Result};
use futures::{Stream, StreamExt};
use kruntimes_proto::runtimed::v1 as pb;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// Reconnects after a dropped download before giving up (each resumes).
const MAX_RESUMES: u32 = 5;
/// Files at least this large get a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Longest artifact name, as runtimed allows.
const MAX_NAME_BYTES: usize = 255;

pub async fn list(addr: &str, run_id: &str, output: OutputFormat) -> Result<u8> {
    let mut client = connect(addr).await?;
    let artifacts = client
        .list_artifacts(pb::ListArtifactsRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner()
        .artifacts;
    match output {
        OutputFormat::Json => {
            let v: Vec<_> = artifacts.iter().map(artifact_json).collect();
            println!("{}", serde_json::Value::Array(v));
        }
        OutputFormat::Text => print!("{}", table(&artifacts)),
    }
    Ok(0)
}

fn artifact_json(a: &pb::Artifact) -> serde_json::Value {
    serde_json::json!({
        "name": a.name,
        "kind": a.kind,
        "size": a.size,
        "digest": a.digest,
        "contentType": a.content_type,
        "driver": a.driver,
        "location": a.location,
    })
}

fn table(artifacts: &[pb::Artifact]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "KIND".into(),
        "SIZE".into(),
        "DIGEST".into(),
        "CONTENT-TYPE".into(),
    ]];
    for a in artifacts {
        rows.push([
            a.name.clone(),
            a.kind.clone(),
            a.size.to_string(),
            a.digest.clone(),
            a.content_type.clone(),
        ]);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Checks a name the server would also check, so the default output path
/// (the name itself) can never point outside the current directory.
fn validate_name(name: &str) -> Result<()> {
    let bad = |rule: &str| Err(Error::Usage(format!("artifact name {name:?} {rule}")));
    if name.is_empty() || name == "." || name == ".." {
        return bad("must be a file name (not empty, \".\" or \"..\")");
    }
    if name.contains('/') || name.chars().any(|c| c.is_control()) {
        return bad("must be a single path component without control characters");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad(&format!(
            "is {} bytes; the limit is {MAX_NAME_BYTES} bytes",
            name.len()
        ));
    }
    Ok(())
}

/// Where the download goes: `-o PATH` (into it if it is a directory), else
/// `./NAME`.
fn destination(name: &str, output: Option<&Path>) -> PathBuf {
    match output {
        Some(p) if p.is_dir() => p.join(name),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(name),
    }
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

pub async fn download(addr: &str, run_id: &str, name: &str, output: Option<&Path>) -> Result<u8> {
    validate_name(name)?;
    let dest = destination(name, output);
    let client = connect(addr).await?;
    let progress = Progress::new(name);
    let open = |offset: u64| {
        let mut client = client.clone();
        let req = pb::DownloadArtifactRequest {
            run_id: run_id.to_string(),
            name: name.to_string(),
            offset,
        };
        async move {
            let s = client.download_artifact(req).await?.into_inner();
            Ok::<_, tonic::Status>(s)
        }
    };
    let done = fetch(open, &dest, &progress).await;
    progress.finish();
    let done = done?;
    eprintln!(
        "krt: downloaded {name} ({} bytes, {}) to {}",
        done.size,
        done.digest,
        dest.display()
    );
    Ok(0)
}

/// What a finished, verified download was.
#[derive(Debug, PartialEq, Eq)]
struct Downloaded {
    size: u64,
    digest: String,
}

/// Progress on stderr when it is a terminal and the file is large.
struct Progress {
    name: String,
    bar: std::cell::OnceCell<indicatif::ProgressBar>,
}

impl Progress {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            bar: std::cell::OnceCell::new(),
        }
    }

    fn start(&self, size: u64, at: u64) {
        if size < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = self.bar.get_or_init(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(size),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.name.clone());
            bar
        });
        bar.set_position(at);
    }

    fn set(&self, at: u64) {
        if let Some(bar) = self.bar.get() {
            bar.set_position(at);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

/// The part file being written and the hash of everything in it.
struct Part {
    path: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    len: u64,
}

impl Part {
    /// Opens `path` for appending; what is already there is hashed again
    /// (it is not trusted to be anything but a prefix candidate).
    fn open(path: &Path) -> Result<Self> {
        let io = |e: std::io::Error| Error::Local(format!("{}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            hasher,
            len,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| Error::Local(format!("writing {}: {e}", self.path.display())))?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Empties the file (a stale part longer than the artifact).
    fn reset(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| Error::Local(format!("truncating {}: {e}", self.path.display())))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }
}

/// Why one attempt at receiving ended without the whole artifact.
enum Interrupted {
    /// The connection dropped (worth resuming).
    Transport(tonic::Status),
    /// The server broke the protocol or refused (not worth resuming).
    Fatal(Error),
}

/// Downloads into `dest.part`, resuming after drops, then verifies and
/// renames. `open(offset)` starts a DownloadArtifact stream at `offset`.
async fn fetch<F, Fut, S>(mut open: F, dest: &Path, progress: &Progress) -> Result<Downloaded>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = std::result::Result<S, tonic::Status>>,
    S: Stream<Item = std::result::Result<pb::DownloadArtifactResponse, tonic::Status>> + Unpin,
{
    let part_path = part_path(dest);
    let existed = part_path.exists();
    let mut part = Part::open(&part_path)?;
    let resumed_from = part.len;
    let mut expected: Option<pb::Artifact> = None;
    let mut resumes = 0;
    let failed = loop {
        let outcome = receive(&mut open, &mut part, &mut expected, progress).await;
        match outcome {
            Ok(()) => break None,
            Err(Interrupted::Fatal(e)) => break Some(e),
            Err(Interrupted::Transport(s)) if resumes < MAX_RESUMES => {
                resumes += 1;
                eprintln!(
                    "krt: download interrupted at byte {} ({}); resuming",
                    part.len,
                    s.message()
                );
                tokio::time::sleep(Duration::from_millis(200) * resumes).await;
            }
            Err(Interrupted::Transport(s)) => {
                let keep = if part.len > 0 {
                    format!(
                        "; {} keeps what arrived: run the same command again to resume",
                        part_path.display()
                    )
                } else {
                    String::new()
                };
                break Some(Error::Local(format!(
                    "download of {} interrupted at byte {} after {resumes} resumes: {} ({:?}){keep}",
                    dest.display(),
                    part.len,
                    s.message(),
                    s.code(),
                )));
            }
        }
    };
    if let Some(e) = failed {
        // An empty part file we created ourselves would only mislead.
        if part.len == 0 && !existed {
            drop(part);
            let _ = std::fs::remove_file(&part_path);
        }
        return Err(e);
    }
    // `receive` only returns Ok with the metadata set and every byte written.
    let meta = expected.unwrap_or_default();
    let got = format!("sha256:{}", hex::encode(part.hasher.clone().finalize()));
    part.file
        .sync_all()
        .map_err(|e| Error::Local(format!("{}: {e}", part_path.display())))?;
    drop(part);
    if !got.eq_ignore_ascii_case(&meta.digest) {
        let _ = std::fs::remove_file(&part_path);
        let hint = if resumed_from > 0 {
            format!(
                " (the download resumed an earlier {} of {resumed_from} bytes, which may \
                 have been of another artifact; it was removed, run again to start afresh)",
                part_path.display()
            )
        } else {
            " (the partial file was removed)".to_string()
        };
        return Err(Error::Local(format!(
            "digest mismatch for artifact {}: runtimed says {}, the {} bytes received hash to {got}; \
             nothing was saved{hint}",
            meta.name, meta.digest, meta.size
        )));
    }
    std::fs::rename(&part_path, dest).map_err(|e| {
        Error::Local(format!(
            "renaming {} to {}: {e}",
            part_path.display(),
            dest.display()
        ))
    })?;
    Ok(Downloaded {
        size: meta.size,
        digest: got,
    })
}

/// One stream: metadata, then chunks in order from `part.len`.
async fn receive<F, Fut, S>(
    open: &mut F,
    part: &mut Part,
    expected: &mut Option<pb::Artifact>,
    progress: &Progress,
) -> std::result::Result<(), Interrupted>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = std::result::Result<S, tonic::Status>>,
    S: Stream<Item = std::result::Result<pb::DownloadArtifactResponse, tonic::Status>> + Unpin,
{
    let fatal = |m: String| Interrupted::Fatal(Error::Local(m));
    let classify = |s: tonic::Status| match s.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
            Interrupted::Transport(s)
        }
        _ => Interrupted::Fatal(s.into()),
    };
    let mut stream = open(part.len).await.map_err(classify)?;
    let meta = match stream.next().await {
        Some(Ok(pb::DownloadArtifactResponse {
            event: Some(pb::download_artifact_response::Event::Metadata(m)),
        })) => m,
        Some(Ok(_)) => {
            return Err(fatal(
                "runtimed sent data before the artifact's metadata".into(),
            ));
        }
        Some(Err(s)) => return Err(classify(s)),
        None => {
            return Err(Interrupted::Transport(tonic::Status::unavailable(
                "stream ended before the metadata",
            )));
        }
    };
    if !meta.digest.starts_with("sha256:") {
        return Err(fatal(format!(
            "runtimed gave artifact {} the digest {:?}; expected sha256:<hex>",
            meta.name, meta.digest
        )));
    }
    if let Some(first) = expected.as_ref()
        && (first.digest != meta.digest || first.size != meta.size)
    {
        return Err(fatal(format!(
            "artifact {} changed while downloading ({} bytes {} became {} bytes {}); run again",
            meta.name, first.size, first.digest, meta.size, meta.digest
        )));
    }
    if part.len > meta.size {
        // A part file longer than the artifact cannot be its prefix.
        eprintln!(
            "krt: {} holds {} bytes but the artifact has {}; starting over",
            part.path.display(),
            part.len,
            meta.size
        );
        part.reset().map_err(Interrupted::Fatal)?;
        *expected = Some(meta);
        return Err(Interrupted::Transport(tonic::Status::unavailable(
            "restarting from byte 0",
        )));
    }
    progress.start(meta.size, part.len);
    let size = meta.size;
    *expected = Some(meta);
    while part.len < size {
        let chunk = match stream.next().await {
            Some(Ok(pb::DownloadArtifactResponse {
                event: Some(pb::download_artifact_response::Event::Chunk(c)),
            })) => c,
            Some(Ok(_)) => return Err(fatal("runtimed sent a second metadata message".into())),
            Some(Err(s)) => return Err(classify(s)),
            None => {
                return Err(Interrupted::Transport(tonic::Status::unavailable(format!(
                    "stream ended at byte {} of {size}",
                    part.len
                ))));
            }
        };
        if chunk.offset != part.len {
            return Err(fatal(format!(
                "runtimed sent bytes from offset {} when {} was expected",
                chunk.offset, part.len
            )));
        }
        if part.len + chunk.data.len() as u64 > size {
            return Err(fatal(format!(
                "runtimed sent more than the {size} bytes its metadata announced"
            )));
        }
        part.write(&chunk.data).map_err(Interrupted::Fatal)?;
        progress.set(part.len);
    }
    // Anything after the last byte is a protocol error, not more data.
    match stream.next().await {
        None | Some(Err(_)) => Ok(()),
        Some(Ok(pb::DownloadArtifactResponse {
            event: Some(pb::download_artifact_response::Event::Chunk(c)),
        })) if c.data.is_empty() => Ok(()),
        Some(Ok(_)) => Err(fatal(format!(
            "runtimed sent more than the {size} bytes its metadata announced"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    type Msg = std::result::Result<pb::DownloadArtifactResponse, tonic::Status>;

    fn meta(data: &[u8]) -> Msg {
        Ok(pb::DownloadArtifactResponse {
            event: Some(pb::download_artifact_response::Event::Metadata(
                pb::Artifact {
                    name: "out.bin".into(),
                    kind: "file".into(),
                    size: data.len() as u64,
                    digest: format!("sha256:{}", hex::encode(Sha256::digest(data))),
                    ..Default::default()
                },
            )),
        })
    }

    fn chunk(offset: usize, data: &[u8]) -> Msg {
        Ok(pb::DownloadArtifactResponse {
            event: Some(pb::download_artifact_response::Event::Chunk(
                pb::ArtifactChunk {
                    offset: offset as u64,
                    data: data.to_vec().into(),
                },
            )),
        })
    }

    /// A stand-in for runtimed: serves `data` from the requested offset in
    /// 1000-byte chunks, with per-attempt tweaks; records requested offsets.
    struct Fake {
        data: Vec<u8>,
        /// Per attempt: cut the stream after this many chunks (None = whole).
        cut_after: Vec<Option<usize>>,
        /// Served bytes are replaced by these (corruption), same length.
        served: Option<Vec<u8>>,
        offsets: RefCell<Vec<u64>>,
    }

    impl Fake {
        fn new(data: Vec<u8>) -> Self {
            Self {
                data,
                cut_after: Vec::new(),
                served: None,
                offsets: RefCell::new(Vec::new()),
            }
        }

        fn open(
            &self,
            offset: u64,
        ) -> futures::future::Ready<
            std::result::Result<futures::stream::Iter<std::vec::IntoIter<Msg>>, tonic::Status>,
        > {
            let attempt = self.offsets.borrow().len();
            self.offsets.borrow_mut().push(offset);
            let body = self.served.as_ref().unwrap_or(&self.data);
            let mut msgs = vec![meta(&self.data)];
            let mut at = offset as usize;
            let mut n = 0;
            while at < body.len() {
                if self.cut_after.get(attempt).copied().flatten() == Some(n) {
                    msgs.push(Err(tonic::Status::unavailable("connection reset")));
                    break;
                }
                let end = (at + 1000).min(body.len());
                msgs.push(chunk(at, &body[at..end]));
                at = end;
                n += 1;
            }
            futures::future::ready(Ok(futures::stream::iter(msgs)))
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 256) as u8).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn downloads_verifies_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let fake = Fake::new(data(5500));
        let done = fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap();
        assert_eq!(done.size, 5500);
        assert_eq!(std::fs::read(&dest).unwrap(), fake.data);
        assert!(!part_path(&dest).exists());
        assert_eq!(*fake.offsets.borrow(), vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn resumes_after_a_drop_from_the_bytes_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut fake = Fake::new(data(5500));
        fake.cut_after = vec![Some(2), Some(1), None];
        fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), fake.data);
        assert_eq!(*fake.offsets.borrow(), vec![0, 2000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn resumes_an_existing_part_file_rehashing_it() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let fake = Fake::new(data(5500));
        std::fs::write(part_path(&dest), &fake.data[..4321]).unwrap();
        fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap();
        assert_eq!(*fake.offsets.borrow(), vec![4321]);
        assert_eq!(std::fs::read(&dest).unwrap(), fake.data);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_part_file_is_caught_by_the_digest_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let fake = Fake::new(data(5500));
        // A leftover of some other download: right length class, wrong bytes.
        std::fs::write(part_path(&dest), vec![0xEEu8; 1000]).unwrap();
        let err = fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(err.contains("resumed"), "{err}");
        assert!(!dest.exists());
        assert!(!part_path(&dest).exists());
    }

    #[tokio::test(start_paused = true)]
    async fn corrupted_bytes_fail_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut fake = Fake::new(data(5500));
        let mut bad = fake.data.clone();
        bad[4000] ^= 1;
        fake.served = Some(bad);
        let err = fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("digest mismatch for artifact out.bin"),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "sha256:{}",
                hex::encode(Sha256::digest(&fake.data))
            )),
            "{err}"
        );
        assert!(!dest.exists() && !part_path(&dest).exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_longer_than_the_artifact_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let fake = Fake::new(data(1500));
        std::fs::write(part_path(&dest), vec![1u8; 4000]).unwrap();
        fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap();
        assert_eq!(*fake.offsets.borrow(), vec![4000, 0]);
        assert_eq!(std::fs::read(&dest).unwrap(), fake.data);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_bounded_resumes_keeping_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut fake = Fake::new(data(50_000));
        fake.cut_after = vec![Some(1); 10];
        let err = fetch(|o| fake.open(o), &dest, &Progress::new("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run the same command again to resume"),
            "{err}"
        );
        assert_eq!(fake.offsets.borrow().len() as u32, MAX_RESUMES + 1);
        // What arrived is a valid prefix, kept for next time.
        let kept = std::fs::read(part_path(&dest)).unwrap();
        assert_eq!(kept, &fake.data[..kept.len()]);
        assert!(!dest.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn protocol_violations_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let body = data(100);
        // Chunk at the wrong offset.
        let open = |_o: u64| {
            futures::future::ready(Ok::<_, tonic::Status>(futures::stream::iter(vec![
                meta(&body),
                chunk(50, &body[50..]),
            ])))
        };
        let err = fetch(open, &dest, &Progress::new("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("offset 50"), "{err}");
        // Data first.
        let open = |_o: u64| {
            futures::future::ready(Ok::<_, tonic::Status>(futures::stream::iter(vec![chunk(
                0, &body,
            )])))
        };
        let err = fetch(open, &dest, &Progress::new("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("before the artifact's metadata"), "{err}");
        // NotFound from runtimed is not retried.
        let calls = RefCell::new(0);
        let open = |_o: u64| {
            *calls.borrow_mut() += 1;
            futures::future::ready(Err::<futures::stream::Iter<std::vec::IntoIter<Msg>>, _>(
                tonic::Status::not_found("no artifact x"),
            ))
        };
        let err = fetch(open, &dest, &Progress::new("x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no artifact x"), "{err}");
        assert_eq!(*calls.borrow(), 1);
        assert!(!part_path(&dest).exists(), "empty part file left behind");
    }

    #[test]
    fn names_and_destinations() {
        for bad in ["", ".", "..", "../x", "a/b", "a\nb"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"n".repeat(256)).is_err());
        validate_name("report.tar.gz").unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(destination("a.txt", None), PathBuf::from("a.txt"));
        assert_eq!(
            destination("a.txt", Some(dir.path())),
            dir.path().join("a.txt")
        );
        assert_eq!(
            destination("a.txt", Some(Path::new("/tmp/x.bin"))),
            PathBuf::from("/tmp/x.bin")
        );
        assert_eq!(
            part_path(Path::new("/d/x.tar")),
            PathBuf::from("/d/x.tar.part")
        );
    }

    #[test]
    fn table_lines_up() {
        let a = pb::Artifact {
            name: "site.tar.gz".into(),
            kind: "directory".into(),
            content_type: "application/gzip".into(),
            size: 1234,
            digest: "sha256:ab".into(),
            ..Default::default()
        };
        let t = table(&[a]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("NAME         KIND       SIZE  DIGEST     CONTENT-TYPE"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("site.tar.gz  directory  1234  sha256:ab  application/gzip"),
            "{t}"
        );
    }
}
