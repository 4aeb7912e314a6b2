//! Back-pressure: with nobody attached, a child writing a lot is blocked by
//! the server instead of the server buffering everything.
use std::time::{Duration, Instant};

use kruntimes_proto::runtime::v1::ExecutionState;

use crate::client::{AttachReader, Ended, STEP_TIMEOUT, ended, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure, procfs};

/// What the child tries to write with nobody reading.
pub const TOTAL_BYTES: u64 = 64 * 1024 * 1024;

/// A child writing 64 MiB with nobody attached stalls: the bytes the server
/// took (Status stdout_length) stop growing well below 64 MiB while the
/// execution stays RUNNING, and the server's VmRSS grows by less than
/// 32 MiB (when its pid is known). Attaching afterwards then delivers all
/// 64 MiB: nothing was lost while the child was held back.
pub async fn back_pressure(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let rss_before = s.pid().and_then(procfs::vm_rss_kib);
    let id = unique_id("backpressure");
    start(&mut c, sh(&id, &format!("head -c {TOTAL_BYTES} /dev/zero"))).await?;

    // Wait until the amount taken is stable for a second.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let (mut last, mut stable_polls) = (u64::MAX, 0);
    let taken = loop {
        let st = super::status(&mut c, &id).await?;
        ensure!(
            st.state == ExecutionState::Running as i32,
            "{id}: with nobody attached the writer finished: the server took all {} bytes instead of back-pressuring",
            st.stdout_length
        );
        if st.stdout_length == last {
            stable_polls += 1;
            if stable_polls >= 10 {
                break last;
            }
        } else {
            stable_polls = 0;
            last = st.stdout_length;
        }
        ensure!(
            Instant::now() < deadline,
            "{id}: stdout_length never settled (last {last})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        taken < TOTAL_BYTES / 2,
        "{id}: the server took {taken} of {TOTAL_BYTES} bytes with nobody attached; its buffer must be bounded"
    );
    if let (Some(pid), Some(before)) = (s.pid(), rss_before) {
        let now = procfs::vm_rss_kib(pid).unwrap_or(0);
        let grown = now.saturating_sub(before);
        ensure!(
            grown < TOTAL_BYTES / 2 / 1024,
            "{id}: server VmRSS grew by {grown} KiB ({before} -> {now}) while a child wrote {TOTAL_BYTES} bytes nobody read"
        );
        eprintln!("back_pressure: server took {taken} bytes, VmRSS {before} -> {now} KiB");
    } else {
        eprintln!(
            "back_pressure: server pid unknown, VmRSS part skipped (set KRUNTIMES_CONFORMANCE_PID)"
        );
    }

    let out = AttachReader::open(&mut c, &id, 0, 0)
        .await?
        .finish()
        .await?;
    ensure!(ended(&out.exit)? == Ended::Code(0), "{id}: {:?}", out.exit);
    ensure!(
        out.stdout.len() as u64 == TOTAL_BYTES && out.stdout.iter().all(|b| *b == 0),
        "{id}: after back-pressure, {} bytes were delivered, want {TOTAL_BYTES} zero bytes",
        out.stdout.len()
    );
    Ok(())
}
