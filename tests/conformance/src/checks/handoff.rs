//! Output handoff, for servers whose handshake names a `handoff_socket`
//! (optional in the protocol; a server without one passes by saying so): a
//! fast, plentiful stream is handed to the client, which reads the rest from
//! the pipe itself.
use std::path::PathBuf;

use kruntimes_proto::runtime::v1::StartRequest;

use crate::Failure;
use crate::client::{AttachReader, Ended, ended, sh, start, unique_id};
use crate::ensure;
use crate::server::ServerUnderTest;

use super::output::{first_diff, seq_bytes};

/// Written by the checks: well past any sensible handoff threshold.
const BYTES: usize = 64 * 1024 * 1024;

fn socket(s: &ServerUnderTest) -> Option<PathBuf> {
    let p = &s.handshake.handoff_socket;
    if p.is_empty() {
        eprintln!("handoff: the server offers no handoff_socket; nothing to check");
        return None;
    }
    Some(PathBuf::from(p))
}

fn fast_writer(id: &str) -> StartRequest {
    StartRequest {
        output_handoff: true,
        ..sh(
            id,
            &format!("echo begin >&2; seq 1 20000000 | head -c {BYTES}; echo end >&2"),
        )
    }
}

/// A Start with `output_handoff` of a fast writer (64 MiB to stdout, a line
/// to stderr before and after): the server hands stdout off after some
/// chunks; what the chunks and the taken pipe deliver together is exactly
/// what was written, in order; stderr is intact; the Exit's stdout length
/// is the handoff's offset.
pub async fn fast_writer_handed_off(s: &ServerUnderTest) -> Result<(), Failure> {
    let Some(socket) = socket(s) else {
        return Ok(());
    };
    let mut c = s.client();
    let id = unique_id("handoff");
    let started = start(&mut c, fast_writer(&id)).await?;
    let out = started.events.with_handoff(socket).finish().await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(0),
        "{id}: {:?} stderr {:?}",
        out.exit,
        out.stderr_text()
    );
    let expected = seq_bytes(BYTES);
    ensure!(
        out.stdout == expected,
        "{id}: got {} stdout bytes, want {BYTES}; first difference at byte {}",
        out.stdout.len(),
        first_diff(&out.stdout, &expected)
    );
    ensure!(
        out.stderr == b"begin\nend\n",
        "{id}: stderr {:?}",
        out.stderr_text()
    );
    ensure!(
        out.exit.stdout_length < BYTES as u64,
        "{id}: {BYTES} bytes of a fast writer went through the server (stdout_length {}): \
         the handoff_socket is offered but stdout was never handed off",
        out.exit.stdout_length
    );
    Ok(())
}

/// The handoff survives the client going away: after a Handoff, the client
/// reads part of the pipe, drops everything and Attaches again from what it
/// has; the new stream hands off again at once and the pipe continues
/// exactly where the client stopped: nothing lost, nothing repeated.
pub async fn handoff_survives_reattach(s: &ServerUnderTest) -> Result<(), Failure> {
    let Some(socket) = socket(s) else {
        return Ok(());
    };
    let mut c = s.client();
    let id = unique_id("handoff-again");
    let mut first = start(&mut c, fast_writer(&id)).await?.events;
    // Chunks until the Handoff (the reader must not take the pipe itself).
    let handoff = first.next_handoff().await?;
    let mut have = first.stdout.clone();
    let stderr_have = first.stderr.len() as u64;
    // Take the pipe once and read 1 MiB of it, then drop it and the stream.
    {
        use std::io::Read;
        let fd = kruntimes_proto::handoff::take(
            &socket,
            &id,
            kruntimes_proto::runtime::v1::Stream::Stdout,
        )
        .await
        .map_err(|e| Failure::Violation(format!("{id}: {e}")))?;
        let mut f = std::fs::File::from(fd);
        let mut part = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < part.len() {
            match f.read(&mut part[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(e) => return Err(Failure::Violation(format!("{id}: reading the pipe: {e}"))),
            }
        }
        have.extend_from_slice(&part[..got]);
    }
    drop(first);
    ensure!(
        handoff <= have.len() as u64,
        "{id}: Handoff at {handoff} beyond the {} bytes delivered",
        have.len()
    );
    let again = AttachReader::open(&mut c, &id, have.len() as u64, stderr_have)
        .await?
        .with_handoff(socket);
    let rest = again.finish().await?;
    have.extend_from_slice(&rest.stdout);
    let expected = seq_bytes(BYTES);
    ensure!(
        have == expected,
        "{id}: after re-attaching, {} stdout bytes in all, want {BYTES}; first difference at byte {}",
        have.len(),
        first_diff(&have, &expected)
    );
    ensure!(
        rest.exit.stdout_length == handoff,
        "{id}: Exit stdout_length {} is not the handoff offset {handoff}",
        rest.exit.stdout_length
    );
    Ok(())
}
