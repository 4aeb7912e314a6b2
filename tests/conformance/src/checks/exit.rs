//! Exit statuses: codes 0, 1 and 255 as codes; death by a signal as the
//! signal number with no code.
use crate::client::{Ended, ended, run, sh, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

/// `exit N` for N in 0, 1, 255 is reported as code N, not timed out, not
/// cancelled; Status agrees with the Exit delivered by Attach.
pub async fn exit_codes(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    for code in [0, 1, 255] {
        let id = unique_id("exit");
        let out = run(&mut c, sh(&id, &format!("exit {code}"))).await?;
        ensure!(
            ended(&out.exit)? == Ended::Code(code),
            "{id}: `exit {code}` reported as {:?}",
            out.exit.status
        );
        ensure!(
            !out.exit.timed_out && !out.exit.cancelled,
            "{id}: flagged timed_out/cancelled: {:?}",
            out.exit
        );
        let st = super::wait_exited(&mut c, &id).await?;
        ensure!(
            st.exit.as_ref().map(|e| e.status) == Some(out.exit.status),
            "{id}: Status exit {:?} differs from Attach exit {:?}",
            st.exit,
            out.exit
        );
    }
    Ok(())
}

/// A process killed by a signal is reported with that signal number and no
/// exit code: SIGKILL (9), SIGTERM (15) and SIGSEGV (11) sent to itself.
pub async fn death_by_signal(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    for (name, num) in [("KILL", 9), ("TERM", 15), ("SEGV", 11)] {
        let id = unique_id("signal");
        let out = run(&mut c, sh(&id, &format!("kill -{name} $$; sleep 5"))).await?;
        ensure!(
            ended(&out.exit)? == Ended::Signal(num),
            "{id}: death by SIG{name} reported as {:?}, want signal {num}",
            out.exit.status
        );
        ensure!(
            !out.exit.cancelled && !out.exit.timed_out,
            "{id}: flagged timed_out/cancelled: {:?}",
            out.exit
        );
    }
    Ok(())
}
