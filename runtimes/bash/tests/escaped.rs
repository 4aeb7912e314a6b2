//! A process that leaves the execution's process group (setsid) and keeps its
//! stdout open must not hold the Exit back forever: the server stops reading
//! that pipe after a bounded silence and says so in the Exit message.
use std::time::Duration;

use kruntimes_conformance::ServerUnderTest;
use kruntimes_conformance::client::{Ended, ended, run, sh};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test]
async fn escaped_process_holding_stdout_is_abandoned_with_a_note() {
    let bin = env!("CARGO_BIN_EXE_kruntimes-bash-runtime");
    let mut s = ServerUnderTest::launch(&format!("'{bin}'")).await.unwrap();
    let mut c = s.client();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            &mut c,
            // The leader waits until the child has left its group, so the
            // group kill at the leader's exit cannot catch it first.
            sh(
                "escaped",
                "setsid sh -c 'touch left; exec sleep 30' & while [ ! -e left ]; do sleep 0.01; done; echo $!",
            ),
        ),
    )
    .await
    .expect("Exit must come although an escaped process holds stdout")
    .unwrap();
    let pid: i32 = out.stdout_text().trim().parse().unwrap();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    s.stop().await;
    assert_eq!(ended(&out.exit).unwrap(), Ended::Code(0));
    assert!(
        out.exit.message.contains("stdout was held open"),
        "{}",
        out.exit.message
    );
}
