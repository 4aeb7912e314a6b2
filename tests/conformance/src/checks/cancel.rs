//! Cancel: SIGTERM to the whole group, the grace period, then SIGKILL of the
//! group, grandchildren ignoring SIGTERM included; and a leader's exit takes
//! its group with it.
use std::time::Duration;

use kruntimes_proto::runtime::v1::CancelRequest;

use crate::client::{AttachReader, Client, Ended, ended, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure, procfs};

/// How long a killed process may take to disappear from /proc (it must be
/// reaped too); generous, this is not a speed test.
pub const GONE_LIMIT: Duration = Duration::from_secs(10);

/// Starts `script` (which prints a pid on its first line), checks that pid is
/// alive, and returns (reader, pid, starttime).
async fn start_with_child(
    c: &mut Client,
    id: &str,
    script: &str,
    timeout_ms: u64,
    grace_ms: u64,
) -> Result<(AttachReader, i32, u64), Failure> {
    let mut req = sh(id, script);
    req.timeout_ms = timeout_ms;
    req.grace_period_ms = grace_ms;
    start(c, req).await?;
    let mut r = AttachReader::open(c, id, 0, 0).await?;
    r.read_stdout_until(|o| o.contains(&b'\n')).await?;
    let pid = super::first_line_pid(id, &r.stdout)?;
    let st = procfs::stat(pid)
        .ok_or_else(|| Failure::Violation(format!("{id}: grandchild {pid} is not running")))?;
    ensure!(
        st.state != 'Z',
        "{id}: grandchild {pid} is already a zombie"
    );
    Ok((r, pid, st.starttime))
}

async fn cancel(c: &mut Client, id: &str, grace_ms: u64) -> Result<(), Failure> {
    c.cancel(CancelRequest {
        execution_id: id.to_string(),
        grace_period_ms: grace_ms,
    })
    .await
    .map_err(Failure::rpc(format!("Cancel {id}")))?;
    Ok(())
}

/// Cancel with a 300 ms grace:
/// - a leader and grandchild that both ignore SIGTERM are SIGKILLed after the
///   grace: Exit reports signal 9 and cancelled; the grandchild is gone;
/// - a leader that dies of SIGTERM while its grandchild ignores it: Exit
///   reports signal 15 and cancelled; the grandchild is still killed.
///
/// A second Cancel after the exit succeeds and changes nothing.
pub async fn cancel_kills_grandchild(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let cases = [
        (
            "trap '' TERM; (trap '' TERM; exec sleep 1000) & echo $!; wait",
            Ended::Signal(9),
        ),
        (
            "(trap '' TERM; exec sleep 1000) & echo $!; wait",
            Ended::Signal(15),
        ),
    ];
    for (script, want) in cases {
        let id = unique_id("cancel");
        let (reader, pid, starttime) = start_with_child(&mut c, &id, script, 0, 0).await?;
        cancel(&mut c, &id, 300).await?;
        let out = reader.finish().await?;
        ensure!(
            ended(&out.exit)? == want,
            "{id}: `{script}` cancelled: leader reported {:?}, want {want:?}",
            out.exit.status
        );
        ensure!(
            out.exit.cancelled && !out.exit.timed_out,
            "{id}: Exit must say cancelled (not timed out): {:?}",
            out.exit
        );
        ensure!(
            procfs::wait_gone(pid, starttime, GONE_LIMIT).await,
            "{id}: grandchild {pid} ignoring SIGTERM survived Cancel (state {:?})",
            procfs::stat(pid).map(|s| s.state)
        );
        cancel(&mut c, &id, 0).await?;
        let st = super::status(&mut c, &id).await?;
        ensure!(
            st.exit.as_ref().map(|e| (e.status, e.cancelled)) == Some((out.exit.status, true)),
            "{id}: Cancel after exit changed the recorded exit: {:?}",
            st.exit
        );
    }
    super::reaping::assert_no_zombies(s).await
}

/// When the leader exits normally, processes it left in its group are killed
/// so nothing outlives the attempt: a background child holding stdout and
/// one detached from the pipes are both gone, and the exit code is the
/// leader's.
pub async fn leader_exit_kills_group(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    for (n, background) in [
        "sleep 1000 &",
        "(trap '' TERM HUP; exec sleep 1000) </dev/null >/dev/null 2>&1 &",
    ]
    .into_iter()
    .enumerate()
    {
        let id = unique_id("leader");
        // The leader waits for a gate so the child is seen alive first.
        let gate = s.scratch().join(format!("leader-{n}.gate"));
        let script = format!(
            "{background} echo $!; while [ ! -e '{}' ]; do sleep 0.05; done; exit 3",
            gate.display()
        );
        let (reader, pid, starttime) = start_with_child(&mut c, &id, &script, 0, 0).await?;
        std::fs::write(&gate, b"")
            .map_err(|e| Failure::Setup(format!("{}: {e}", gate.display())))?;
        let out = reader.finish().await?;
        ensure!(
            ended(&out.exit)? == Ended::Code(3),
            "{id}: `{script}`: {:?}",
            out.exit.status
        );
        ensure!(
            procfs::wait_gone(pid, starttime, GONE_LIMIT).await,
            "{id}: background process {pid} outlived its leader (`{script}`)"
        );
    }
    Ok(())
}
