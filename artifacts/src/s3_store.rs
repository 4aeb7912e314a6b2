//! The S3-compatible store (AWS S3, MinIO, versitygw, ...) via `object_store`:
//! objects at `[prefix/]namespaces/<ns>/runs/<uid>/<name>`; large files go up
//! as multipart uploads with a bounded number of parts in flight, so an
//! object appears whole or not at all.

use crate::config::{Credentials, StoreConfig};
use crate::content_type::content_type_for;
use crate::error::{ConfigError, StoreError};
use crate::key::RunKey;
use crate::store::{ArtifactStore, ByteStream};
use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Files up to this size go up in one PUT; larger ones as multipart.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Smallest part (S3's minimum is 5 MiB).
const MIN_PART: u64 = 8 << 20;
/// Parts per upload stay below S3's limit of 10000.
const MAX_PARTS: u64 = 9_000;
/// Parts uploading at once (memory: this many parts).
const PARTS_IN_FLIGHT: usize = 4;
/// Most objects listed or deleted per round for one Run.
const MAX_OBJECTS: usize = 10_000;
/// Most delete rounds per Run (each up to `MAX_OBJECTS`).
const MAX_DELETE_ROUNDS: usize = 100;

#[derive(Debug)]
pub struct S3Store {
    inner: AmazonS3,
    bucket: String,
    prefix: Option<String>,
    describe: String,
}

impl S3Store {
    /// Builds the client for an `s3://` configuration. Does no I/O: wrong
    /// credentials or a missing bucket show up on first use, with errors
    /// saying so.
    pub fn connect(config: &StoreConfig, credentials: Credentials) -> Result<Self, ConfigError> {
        let StoreConfig::S3 {
            bucket,
            prefix,
            region,
            endpoint,
            path_style,
            allow_http,
        } = config
        else {
            return Err(ConfigError::Invalid {
                input: config.to_string(),
                field: "driver",
                value: config.driver().into(),
                rule: "is not s3".into(),
            });
        };
        let mut b = match &credentials {
            Credentials::FromEnv => AmazonS3Builder::from_env(),
            Credentials::Static(_) => AmazonS3Builder::new(),
        };
        b = b
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(300))
                    .with_connect_timeout(Duration::from_secs(10)),
            )
            .with_allow_http(*allow_http)
            .with_virtual_hosted_style_request(!path_style)
            // object_store retries connection errors and 5xx itself; keep it
            // short, the collector retries whole uploads on top.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
            });
        if let Some(r) = region {
            b = b.with_region(r);
        }
        if let Some(e) = endpoint {
            b = b.with_endpoint(if *path_style {
                e.clone()
            } else {
                // Virtual-hosted style: object_store expects the bucket's
                // own endpoint, https://<bucket>.<host>.
                virtual_hosted(e, bucket)
            });
        }
        if let Credentials::Static(c) = credentials {
            b = b
                .with_access_key_id(c.access_key_id)
                .with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        }
        let inner = b.build().map_err(|source| ConfigError::Build {
            config: config.to_string(),
            source,
        })?;
        let where_ = endpoint.as_deref().unwrap_or("AWS");
        let describe = match prefix {
            Some(p) => format!("s3 store s3://{bucket}/{p} at {where_}"),
            None => format!("s3 store s3://{bucket} at {where_}"),
        };
        Ok(Self {
            inner,
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            describe,
        })
    }

    fn key_of(&self, key: &RunKey, name: &str) -> Result<ObjectPath, StoreError> {
        let k = key.object_key(self.prefix.as_deref(), name);
        ObjectPath::parse(&k).map_err(|e| StoreError::InvalidKey(format!("{k}: {e}")))
    }

    fn run_path(&self, key: &RunKey) -> Result<ObjectPath, StoreError> {
        let k = key.run_prefix(self.prefix.as_deref());
        ObjectPath::parse(&k).map_err(|e| StoreError::InvalidKey(format!("{k}: {e}")))
    }

    /// Turns an object_store error into one that says what to fix.
    fn error(&self, op: &'static str, key: &ObjectPath, e: object_store::Error) -> StoreError {
        let s = Summary::of(&e);
        let denied = matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || matches!(s.status, Some(401 | 403))
            || s.code.as_deref().is_some_and(|c| DENIED_CODES.contains(&c));
        if denied {
            return StoreError::Denied {
                store: self.describe.clone(),
                detail: format!("{op} {key}: {}", s.detail),
            };
        }
        if s.code.as_deref() == Some("NoSuchBucket") {
            return StoreError::BucketMissing {
                store: self.describe.clone(),
                bucket: self.bucket.clone(),
                detail: format!("{op} {key}: {}", s.detail),
            };
        }
        StoreError::S3 {
            store: self.describe.clone(),
            op,
            key: key.to_string(),
            status: s.status,
            detail: s.detail,
            source: Box::new(e),
        }
    }

    /// Size and ETag of a stored object (multipart uploads have a `-<parts>`
    /// ETag suffix on S3 and compatible servers).
    pub async fn head(
        &self,
        key: &RunKey,
        name: &str,
    ) -> Result<(u64, Option<String>), StoreError> {
        key.check(Some(name))?;
        let path = self.key_of(key, name)?;
        match self.inner.head(&path).await {
            Ok(m) => Ok((m.size, m.e_tag)),
            Err(e) => Err(self.not_found(key, name, self.error("HEAD", &path, e))),
        }
    }

    fn not_found(&self, key: &RunKey, name: &str, e: StoreError) -> StoreError {
        let missing = match &e {
            StoreError::S3 { source, status, .. } => {
                matches!(**source, object_store::Error::NotFound { .. }) || *status == Some(404)
            }
            _ => false,
        };
        if missing {
            StoreError::NotFound {
                store: self.describe.clone(),
                run: key.to_string(),
                name: name.to_string(),
            }
        } else {
            e
        }
    }

    async fn put_multipart(
        &self,
        path: &ObjectPath,
        file: &mut tokio::fs::File,
        src: &Path,
        size: u64,
        attributes: Attributes,
    ) -> Result<(), StoreError> {
        let part = part_size(size);
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = self
            .inner
            .put_multipart_opts(path, opts)
            .await
            .map_err(|e| self.error("CreateMultipartUpload", path, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, part);
        loop {
            let mut buf = BytesMut::with_capacity(part);
            let read = async {
                while buf.len() < part {
                    if file.read_buf(&mut buf).await? == 0 {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            }
            .await;
            if let Err(source) = read {
                let _ = w.abort().await;
                return Err(StoreError::Io {
                    store: self.describe.clone(),
                    path: src.to_path_buf(),
                    source,
                });
            }
            if buf.is_empty() {
                break;
            }
            if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = w.abort().await;
                return Err(self.error("UploadPart", path, e));
            }
            w.put(buf.freeze());
        }
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.error("CompleteMultipartUpload", path, e))
    }

    /// Object keys under the Run's prefix, at most `max`, plus whether there are more.
    async fn list_objects(
        &self,
        run: &ObjectPath,
        max: usize,
    ) -> Result<(Vec<object_store::ObjectMeta>, bool), StoreError> {
        let mut stream = self.inner.list(Some(run));
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let meta = item.map_err(|e| self.error("LIST", run, e))?;
            if out.len() == max {
                return Ok((out, true));
            }
            out.push(meta);
        }
        Ok((out, false))
    }
}

/// S3 error codes that mean "these credentials may not do this".
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
];
/// Longest error detail kept from a client error without an S3 error body.
const MAX_DETAIL: usize = 400;

/// The useful part of an object_store error. Its status and body are not
/// reachable through its public API, so they are read from its message:
/// `... status code: 403 Forbidden: <Error><Code>..</Code><Message>..</Message>`.
struct Summary {
    status: Option<u16>,
    code: Option<String>,
    detail: String,
}

impl Summary {
    fn of(e: &object_store::Error) -> Self {
        let full = e.to_string();
        let status = full
            .find("status code: ")
            .and_then(|i| full.get(i + 13..i + 16))
            .and_then(|s| s.parse().ok());
        let code = between(&full, "<Code>", "</Code>");
        let message = between(&full, "<Message>", "</Message>");
        let detail = match (&code, message) {
            (Some(c), Some(m)) => match status {
                Some(st) => format!("HTTP {st}, {c}: {m}"),
                None => format!("{c}: {m}"),
            },
            _ => {
                let mut d = full;
                if d.len() > MAX_DETAIL {
                    let mut end = MAX_DETAIL;
                    while !d.is_char_boundary(end) {
                        end -= 1;
                    }
                    d.truncate(end);
                    d.push_str("...");
                }
                d
            }
        };
        Self {
            status,
            code,
            detail,
        }
    }
}

fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(s[start..start + len].to_string())
}

fn virtual_hosted(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => endpoint.to_string(),
    }
}

/// Part size for a `size`-byte object: at least [`MIN_PART`], and large
/// enough to stay under [`MAX_PARTS`] parts; a whole number of MiB.
fn part_size(size: u64) -> usize {
    let mib = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(mib) * mib;
    usize::try_from(needed.max(MIN_PART)).unwrap_or(usize::MAX)
}

#[async_trait::async_trait]
impl ArtifactStore for S3Store {
    fn driver(&self) -> &'static str {
        "s3"
    }

    async fn put_file(
        &self,
        key: &RunKey,
        name: &str,
        src: &Path,
        _size_hint: u64,
    ) -> Result<String, StoreError> {
        key.check(Some(name))?;
        let path = self.key_of(key, name)?;
        let io = |source| StoreError::Io {
            store: self.describe.clone(),
            path: src.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(src)
            .await
            .map_err(io)?;
        let meta = file.metadata().await.map_err(io)?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile {
                store: self.describe.clone(),
                path: src.to_path_buf(),
                detail: "only regular files can be stored".into(),
            });
        }
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type_for(name).into());
        let size = meta.len();
        if size <= MULTIPART_THRESHOLD {
            // Bounded by the threshold: at most 16 MiB in memory.
            let mut buf = Vec::with_capacity(size as usize);
            (&mut file)
                .take(MULTIPART_THRESHOLD + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(io)?;
            if buf.len() as u64 <= MULTIPART_THRESHOLD {
                let opts = PutOptions {
                    attributes,
                    ..Default::default()
                };
                self.inner
                    .put_opts(&path, PutPayload::from(buf), opts)
                    .await
                    .map_err(|e| self.error("PUT", &path, e))?;
                return Ok(format!("s3://{}/{path}", self.bucket));
            }
            // It grew past the threshold after the stat: upload it in parts.
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        }
        self.put_multipart(&path, &mut file, src, size, attributes)
            .await?;
        Ok(format!("s3://{}/{path}", self.bucket))
    }

    async fn get(&self, key: &RunKey, name: &str, offset: u64) -> Result<ByteStream, StoreError> {
        key.check(Some(name))?;
        let path = self.key_of(key, name)?;
        if offset > 0 {
            // S3 answers a range starting at the end with 416; say what is wrong instead.
            let (size, _) = self.head(key, name).await?;
            if offset > size {
                return Err(StoreError::InvalidOffset {
                    name: name.to_string(),
                    offset,
                    size,
                });
            }
            if offset == size {
                return Ok(Box::pin(futures::stream::empty()));
            }
        }
        let opts = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let result = match self.inner.get_opts(&path, opts).await {
            Ok(r) => r,
            Err(e) => return Err(self.not_found(key, name, self.error("GET", &path, e))),
        };
        let describe = self.describe.clone();
        let key_text = path.to_string();
        Ok(Box::pin(result.into_stream().map_err(move |source| {
            let s = Summary::of(&source);
            StoreError::S3 {
                store: describe.clone(),
                op: "GET",
                key: key_text.clone(),
                status: s.status,
                detail: s.detail,
                source: Box::new(source),
            }
        })))
    }

    async fn list(&self, key: &RunKey) -> Result<Vec<(String, u64)>, StoreError> {
        key.check(None)?;
        let run = self.run_path(key)?;
        let (objects, more) = self.list_objects(&run, MAX_OBJECTS).await?;
        if more {
            return Err(StoreError::TooManyObjects {
                store: self.describe.clone(),
                run: key.to_string(),
                limit: MAX_OBJECTS,
            });
        }
        let depth = run.parts().count() + 1;
        let mut out: Vec<(String, u64)> = objects
            .into_iter()
            .filter(|m| m.location.parts().count() == depth)
            .filter_map(|m| m.location.filename().map(|f| (f.to_string(), m.size)))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn delete_run(&self, key: &RunKey) -> Result<usize, StoreError> {
        key.check(None)?;
        let run = self.run_path(key)?;
        let mut deleted = 0;
        for _ in 0..MAX_DELETE_ROUNDS {
            let (objects, more) = self.list_objects(&run, MAX_OBJECTS).await?;
            if objects.is_empty() {
                return Ok(deleted);
            }
            let paths = futures::stream::iter(objects.into_iter().map(|m| Ok(m.location))).boxed();
            let mut results = self.inner.delete_stream(paths);
            while let Some(r) = results.next().await {
                match r {
                    Ok(_) => deleted += 1,
                    // Gone meanwhile: that is what we wanted.
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.error("DELETE", &run, e)),
                }
            }
            if !more {
                return Ok(deleted);
            }
        }
        Err(StoreError::TooManyObjects {
            store: self.describe.clone(),
            run: key.to_string(),
            limit: MAX_OBJECTS * MAX_DELETE_ROUNDS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size(64 << 20), 8 << 20);
        let huge: u64 = 200 << 30;
        let p = part_size(huge) as u64;
        assert!(huge.div_ceil(p) <= MAX_PARTS, "{p}");
        assert_eq!(p % (1 << 20), 0);
    }

    #[test]
    fn summarizes_s3_error_bodies() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://h/b in 2ms - Server returned non-2xx status code: \
                     403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                     <Message>The request signature we calculated does not match.</Message>\
                     <CanonicalRequest>GET...</CanonicalRequest></Error>"
                .into(),
        };
        let s = Summary::of(&e);
        assert_eq!(s.status, Some(403));
        assert_eq!(s.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            s.detail,
            "HTTP 403, SignatureDoesNotMatch: The request signature we calculated does not match."
        );
        let long = object_store::Error::Generic {
            store: "S3",
            source: "x".repeat(2000).into(),
        };
        assert!(Summary::of(&long).detail.len() <= MAX_DETAIL + 3);
    }

    #[test]
    fn virtual_hosted_endpoint_carries_the_bucket() {
        assert_eq!(
            virtual_hosted("https://s3.example.com", "b"),
            "https://b.s3.example.com"
        );
    }
}
