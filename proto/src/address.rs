//! Addresses of kruntimes gRPC servers (`unix:/path.sock` or `host:port`) and
//! lazily connecting channels to them, shared by runtimed, krt and the tests.

use crate::quiet::QuietUnixStream;
use hyper_util::rt::TokioIo;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest HTTP/2 frame a client of ours accepts (it tells the server so).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Where a gRPC server of ours listens: a Unix socket or a TCP host:port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// `unix:/path`, `unix:///path`, or `host:port` (an optional `http://` is accepted).
    pub fn parse(s: &str) -> Result<Address, String> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            if !p.starts_with('/') {
                return Err(format!("unix socket path {p:?} must be absolute"));
            }
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        if hostport.is_empty() || !hostport.contains(':') {
            return Err(format!(
                "address {s:?} must be unix:/path/to.sock or host:port"
            ));
        }
        Ok(Address::Tcp(hostport.to_string()))
    }

    /// A lazily connecting channel; it reconnects by itself after failures.
    ///
    /// Flow-control windows are fixed (1 MiB per stream, 2 MiB per
    /// connection): large enough for bulk output on a local link, and a bound
    /// on bytes in flight — runtimed relies on a Runtime Server still holding
    /// whatever was in flight when runtimed died, to replay it.
    pub fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let endpoint = |uri: String| {
            Endpoint::from_shared(uri).map(|e| {
                e.connect_timeout(Duration::from_secs(5))
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(2 << 20)
                    // Output arrives in messages of up to 256 KiB: in frames of
                    // the default 16 KiB, the receiver pays a read and a frame
                    // per 16 KiB.
                    .max_frame_size(MAX_FRAME_BYTES)
            })
        };
        match self {
            Address::Tcp(hp) => Ok(endpoint(format!("http://{hp}"))?
                .tcp_nodelay(true)
                .connect_lazy()),
            Address::Unix(path) => {
                let path = path.clone();
                Ok(
                    endpoint("http://localhost".to_string())?.connect_with_connector_lazy(
                        tower::service_fn(move |_| {
                            let path = path.clone();
                            async move {
                                let stream = tokio::net::UnixStream::connect(path).await?;
                                Ok::<_, std::io::Error>(TokioIo::new(QuietUnixStream::new(stream)?))
                            }
                        }),
                    ),
                )
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(hp) => f.write_str(hp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addresses() {
        assert_eq!(
            Address::parse("unix:/a/b.sock").unwrap(),
            Address::Unix("/a/b.sock".into())
        );
        assert_eq!(
            Address::parse("unix:///a/b.sock").unwrap(),
            Address::Unix("/a/b.sock".into())
        );
        assert_eq!(
            Address::parse("127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".into())
        );
        assert!(Address::parse("unix:rel.sock").is_err());
        assert!(Address::parse("nohostport").is_err());
    }
}
