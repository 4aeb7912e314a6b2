//! When a finished Run's bookkeeping runs (its short log written to the
//! spool files, the saved end, the workspace cleanup, its log line, the
//! `Forget`): at a quiet moment, once another Run's process has started
//! (runtimed then waits for that one's exit), or after `PATIENCE`. Done
//! right after the result, or on a short timer, it landed on the next Run's
//! path when Runs come back to back. At shutdown every waiting Run does it
//! at once, and runtimed waits for them (`finish_all`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest a finished Run's bookkeeping waits for a quiet moment.
const PATIENCE: Duration = Duration::from_millis(5);

#[derive(Default)]
pub struct Tidy {
    /// Wakes every waiting Run: a quiet moment, or shutdown.
    now: Notify,
    /// Runs waiting or doing their bookkeeping.
    pending: AtomicUsize,
    /// Notified as each of them is done.
    done: Notify,
    /// Set at shutdown: nothing waits any more.
    hurry: AtomicBool,
}

/// Held by a Run from `Tidy::enter` until its bookkeeping is done.
pub struct Pending<'a>(&'a Tidy);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.done.notify_waiters();
    }
}

impl Tidy {
    /// Counts a finished Run's bookkeeping as pending until the guard drops.
    pub fn enter(&self) -> Pending<'_> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Pending(self)
    }

    /// Waits for a quiet moment (see the module doc).
    pub async fn wait(&self) {
        let now = self.now.notified();
        tokio::pin!(now);
        now.as_mut().enable();
        if self.hurry.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            _ = now => {}
            _ = tokio::time::sleep(PATIENCE) => {}
        }
    }

    /// A Run's process has started: the waiting Runs' bookkeeping runs now,
    /// beside it.
    pub fn quiet(&self) {
        self.now.notify_waiters();
    }

    /// At shutdown: every waiting Run does its bookkeeping now; returns once
    /// all have (or after `patience`), so no finished Run is left unsaved.
    pub async fn finish_all(&self, patience: Duration) {
        self.hurry.store(true, Ordering::Release);
        self.now.notify_waiters();
        let all_done = async {
            loop {
                let done = self.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if self.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(patience, all_done).await.is_err() {
            tracing::warn!(
                runs = self.pending.load(Ordering::Acquire),
                "finished runs' bookkeeping did not complete before shutdown"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn bookkeeping_waits_for_a_start_or_the_patience() {
        let tidy = Arc::new(Tidy::default());
        let t = tidy.clone();
        let woken = tokio::spawn(async move { t.wait().await });
        tokio::task::yield_now().await;
        tidy.quiet();
        woken.await.unwrap();

        // Nothing starts: the patience ends the wait (paused clock).
        let before = tokio::time::Instant::now();
        tidy.wait().await;
        assert_eq!(before.elapsed(), PATIENCE);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_every_pending_bookkeeping() {
        let tidy = Arc::new(Tidy::default());
        let saved = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (t, saved) = (tidy.clone(), saved.clone());
            tokio::spawn(async move {
                let _pending = t.enter();
                t.wait().await;
                tokio::task::yield_now().await;
                saved.fetch_add(1, Ordering::AcqRel);
            });
        }
        tokio::task::yield_now().await;
        let before = tokio::time::Instant::now();
        tidy.finish_all(Duration::from_secs(1)).await;
        assert_eq!(saved.load(Ordering::Acquire), 3);
        assert!(before.elapsed() < PATIENCE, "{:?}", before.elapsed());
        // After shutdown began, nothing waits.
        tidy.wait().await;
        assert!(before.elapsed() < PATIENCE);
    }
}
