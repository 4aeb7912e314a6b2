//! Content types of artifacts, guessed from the name's extension.

/// Extension (lowercase, without dot) → content type. `.tar.gz` is matched
/// on its last extension (`gz`).
const TABLE: &[(&str, &str)] = &[
    ("txt", "text/plain; charset=utf-8"),
    ("log", "text/plain; charset=utf-8"),
    ("out", "text/plain; charset=utf-8"),
    ("md", "text/markdown; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("tsv", "text/tab-separated-values; charset=utf-8"),
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("json", "application/json"),
    ("jsonl", "application/jsonl"),
    ("ndjson", "application/x-ndjson"),
    ("xml", "application/xml"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("toml", "application/toml"),
    ("py", "text/x-python; charset=utf-8"),
    ("sh", "application/x-sh"),
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("svg", "image/svg+xml"),
    ("webp", "image/webp"),
    ("tar", "application/x-tar"),
    ("gz", "application/gzip"),
    ("tgz", "application/gzip"),
    ("zip", "application/zip"),
    ("zst", "application/zstd"),
    ("xz", "application/x-xz"),
    ("bz2", "application/x-bzip2"),
    ("wasm", "application/wasm"),
    ("parquet", "application/vnd.apache.parquet"),
];

const DEFAULT: &str = "application/octet-stream";

/// The content type for a stored artifact name (`application/octet-stream`
/// when the extension is unknown).
pub fn content_type_for(name: &str) -> &'static str {
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return DEFAULT;
    };
    if stem.is_empty() {
        // A dotfile such as ".env" has no extension.
        return DEFAULT;
    }
    let ext = ext.to_ascii_lowercase();
    TABLE
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, t)| *t)
        .unwrap_or(DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_extension() {
        assert_eq!(content_type_for("report.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("out.tar"), "application/x-tar");
        assert_eq!(content_type_for("out.tar.gz"), "application/gzip");
        assert_eq!(content_type_for("blob"), DEFAULT);
        assert_eq!(content_type_for(".json"), DEFAULT);
        assert_eq!(content_type_for("x.unknownext"), DEFAULT);
    }
}
