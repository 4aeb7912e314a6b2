//! Bounded retries with exponential backoff for uploads: transient store
//! errors are retried a fixed number of times, permanent ones at once
//! returned; never an endless loop.

use crate::error::StoreError;
use std::future::Future;
use std::time::Duration;

/// Most attempts a policy may ask for.
const MAX_ATTEMPTS: u32 = 20;
/// Longest single wait a policy may ask for.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How often and how patiently to retry an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry); clamped to 1..=20.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time.
    pub initial_backoff: Duration,
    /// Longest wait between attempts; clamped to 60 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 0.5 + 1 + 2 + 4 s of waiting at most.
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails permanently or the attempts are
    /// used up; the error carries the number of attempts made.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, (u32, StoreError)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let attempts = self.attempts.clamp(1, MAX_ATTEMPTS);
        let max_backoff = self.max_backoff.min(MAX_BACKOFF);
        let mut backoff = self.initial_backoff.min(max_backoff);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < attempts && e.is_transient() => {
                    tracing::warn!(what, attempt, error = %e, "retrying after {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                    attempt += 1;
                }
                Err(e) => return Err((attempt, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn transient() -> StoreError {
        StoreError::Io {
            store: "test".into(),
            path: "/x".into(),
            source: std::io::Error::other("disk hiccup"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_bounded_attempts() {
        let calls = Cell::new(0);
        let policy = RetryPolicy {
            attempts: 3,
            ..Default::default()
        };
        let r: Result<(), _> = policy
            .run("x", || {
                calls.set(calls.get() + 1);
                async { Err(transient()) }
            })
            .await;
        let (attempts, e) = r.unwrap_err();
        assert_eq!((attempts, calls.get()), (3, 3));
        assert!(e.to_string().contains("disk hiccup"));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried_and_success_stops() {
        let calls = Cell::new(0);
        let r: Result<(), _> = RetryPolicy::default()
            .run("x", || {
                calls.set(calls.get() + 1);
                async { Err(StoreError::InvalidKey("bad".into())) }
            })
            .await;
        assert_eq!(r.unwrap_err().0, 1);
        assert_eq!(calls.get(), 1);

        let calls = Cell::new(0);
        let r = RetryPolicy::default()
            .run("x", || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 3 { Err(transient()) } else { Ok(n) } }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_policies_are_clamped() {
        let calls = Cell::new(0);
        let policy = RetryPolicy {
            attempts: u32::MAX,
            initial_backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
        };
        let r: Result<(), _> = policy
            .run("x", || {
                calls.set(calls.get() + 1);
                async { Err(transient()) }
            })
            .await;
        assert_eq!(r.unwrap_err().0, MAX_ATTEMPTS);
    }
}
