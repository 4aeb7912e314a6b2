//! Attach: resuming from per-stream offsets, replay of retained output,
//! OUT_OF_RANGE for offsets no longer held, and a new Attach replacing the
//! previous one.
use std::time::Duration;

use tonic::Code;

use crate::client::{AttachReader, STEP_TIMEOUT, attach_raw, collect, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

use super::output::{first_diff, seq_bytes};

/// A client that disconnects mid-stream and re-attaches from its last
/// offsets (and from earlier ones) receives every remaining byte exactly
/// once, while the execution is still running and after it exited; an
/// Attach at the final lengths gets just the Exit.
pub async fn attach_resume(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("resume");
    let gate = s.scratch().join(format!("{id}.gate"));
    let script = format!(
        "seq 1 3000; seq 1 1000 >&2; while [ ! -e '{}' ]; do sleep 0.05; done; seq 3001 6000; seq 1001 2000 >&2",
        gate.display()
    );
    start(&mut c, sh(&id, &script)).await?;
    let full_out = seq_lines(1, 6000);
    let full_err = seq_lines(1, 2000);
    let first_out = seq_lines(1, 3000);
    let first_err = seq_lines(1, 1000);

    // First client: reads the first part, then goes away.
    let mut a = AttachReader::open(&mut c, &id, 0, 0).await?;
    while a.stdout.len() < first_out.len() || a.stderr.len() < first_err.len() {
        ensure!(a.step().await?, "{id}: exited before the gate opened");
    }
    ensure!(
        a.stdout == first_out && a.stderr == first_err,
        "{id}: first part differs"
    );
    drop(a);

    // Second client resumes in the middle of what was already sent.
    let (k, j) = (first_out.len() as u64 / 2, first_err.len() as u64 / 3);
    let b = AttachReader::open(&mut c, &id, k, j).await?;
    std::fs::write(&gate, b"").map_err(|e| Failure::Setup(format!("{}: {e}", gate.display())))?;
    let got = b.finish().await?;
    ensure!(
        got.stdout == full_out[k as usize..],
        "{id}: stdout resumed at {k} differs from the stream's remainder; first difference at byte {}",
        first_diff(&got.stdout, &full_out[k as usize..])
    );
    ensure!(
        got.stderr == full_err[j as usize..],
        "{id}: stderr resumed at {j} differs; first difference at byte {}",
        first_diff(&got.stderr, &full_err[j as usize..])
    );

    // After the exit: from the start, from the middle, and from the end.
    let all = collect(&mut c, &id).await?;
    ensure!(
        all.stdout == full_out && all.stderr == full_err,
        "{id}: replay from 0 after exit differs"
    );
    let tail = AttachReader::open(&mut c, &id, 100, 7)
        .await?
        .finish()
        .await?;
    ensure!(
        tail.stdout == full_out[100..] && tail.stderr == full_err[7..],
        "{id}: replay from (100, 7) after exit differs"
    );
    let end = AttachReader::open(&mut c, &id, full_out.len() as u64, full_err.len() as u64)
        .await?
        .finish()
        .await?;
    ensure!(
        end.messages == 0,
        "{id}: Attach at the final lengths must send only the Exit, got {} chunks",
        end.messages
    );
    Ok(())
}

/// Output produced in a run of this size must overflow any bounded buffer.
pub const EVICT_BYTES: usize = 48 * 1024 * 1024;

/// After 48 MiB were delivered, an Attach at offset 0 fails OUT_OF_RANGE and
/// the message names the oldest offset still held: Attach there succeeds
/// and replays exactly the retained tail, while one byte earlier fails.
pub async fn attach_out_of_range(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("evict");
    let expected = seq_bytes(EVICT_BYTES);
    start(
        &mut c,
        sh(&id, &format!("seq 1 20000000 | head -c {EVICT_BYTES}")),
    )
    .await?;
    let all = collect(&mut c, &id).await?;
    ensure!(
        all.stdout == expected,
        "{id}: {} bytes delivered, want {EVICT_BYTES}",
        all.stdout.len()
    );

    let status = match attach_raw(&mut c, &id, 0, 0).await {
        // Some servers report the error on the first message instead.
        Ok(mut stream) => match stream.message().await {
            Err(st) => st,
            Ok(m) => {
                return Err(Failure::Violation(format!(
                    "{id}: Attach at 0 after {EVICT_BYTES} bytes must fail OUT_OF_RANGE (bounded buffer), got {:?}",
                    m.map(|e| e.event.is_some())
                )));
            }
        },
        Err(st) => st,
    };
    ensure!(
        status.code() == Code::OutOfRange,
        "{id}: Attach at an evicted offset: want OUT_OF_RANGE, got {:?}: {}",
        status.code(),
        status.message()
    );
    // Find the oldest held offset among the numbers in the message.
    let numbers: Vec<u64> = status
        .message()
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .filter(|n| *n > 0 && *n < EVICT_BYTES as u64)
        .collect();
    let mut oldest = None;
    for n in numbers {
        if let Ok(mut stream) = attach_raw(&mut c, &id, n, 0).await
            && let Ok(Some(_)) = tokio::time::timeout(STEP_TIMEOUT, stream.message())
                .await
                .unwrap_or(Ok(None))
        {
            oldest = Some(n);
            break;
        }
    }
    let Some(oldest) = oldest else {
        return Err(Failure::Violation(format!(
            "{id}: the OUT_OF_RANGE message must name the oldest offset held, as a number Attach accepts: {:?}",
            status.message()
        )));
    };
    let tail = AttachReader::open(&mut c, &id, oldest, 0)
        .await?
        .finish()
        .await?;
    ensure!(
        tail.stdout == expected[oldest as usize..],
        "{id}: replay from the oldest offset {oldest} differs from the stream"
    );
    let before = match attach_raw(&mut c, &id, oldest - 1, 0).await {
        Ok(mut st) => st.message().await.map(|_| ()),
        Err(st) => Err(st),
    };
    ensure!(
        matches!(&before, Err(st) if st.code() == Code::OutOfRange),
        "{id}: Attach at {} (one before the oldest held, {oldest}) must fail OUT_OF_RANGE, got {before:?}",
        oldest - 1
    );
    Ok(())
}

/// A second Attach to a running execution ends the first stream (cleanly or
/// with an error, but it must end), and the second one receives the output
/// and the Exit.
pub async fn attach_replaces_previous(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("replace");
    let gate = s.scratch().join(format!("{id}.gate"));
    let script = format!(
        "echo one; while [ ! -e '{}' ]; do sleep 0.05; done; echo two",
        gate.display()
    );
    start(&mut c, sh(&id, &script)).await?;
    let mut first = attach_raw(&mut c, &id, 0, 0)
        .await
        .map_err(Failure::rpc("first Attach"))?;
    let m = tokio::time::timeout(STEP_TIMEOUT, first.message()).await;
    ensure!(
        matches!(m, Ok(Ok(Some(_)))),
        "{id}: first Attach got no output: {m:?}"
    );

    let second = AttachReader::open(&mut c, &id, 0, 0).await?;
    // The first stream must end now, before the execution does.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match first.message().await {
                Ok(Some(ev))
                    if matches!(
                        ev.event,
                        Some(kruntimes_proto::runtime::v1::execution_event::Event::Exited(_))
                    ) =>
                {
                    return Err("got Exited while the execution was still running");
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Ok(()),
            }
        }
    })
    .await;
    ensure!(
        matches!(ended, Ok(Ok(()))),
        "{id}: the first Attach stream must end once a new Attach replaces it ({ended:?})"
    );
    std::fs::write(&gate, b"").map_err(|e| Failure::Setup(format!("{}: {e}", gate.display())))?;
    let got = second.finish().await?;
    ensure!(
        got.stdout == b"one\ntwo\n",
        "{id}: second Attach got {:?}",
        got.stdout_text()
    );
    Ok(())
}

fn seq_lines(from: u64, to: u64) -> Vec<u8> {
    (from..=to)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}
