//! Output streams: stdout and stderr apart and each in order, bytes passed
//! through untouched, large output complete, chatty output coalesced.
use crate::client::{AttachReader, Ended, ended, run, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

/// Interleaved writes to stdout and stderr (2000 lines each) arrive on their
/// own stream, complete and in order, with contiguous per-stream offsets.
pub async fn streams_apart_and_ordered(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("streams");
    let n = 2000;
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done"
    );
    let out = run(&mut c, sh(&id, &script)).await?;
    let want_out: String = (0..n).map(|i| format!("out {i}\n")).collect();
    let want_err: String = (0..n).map(|i| format!("err {i}\n")).collect();
    ensure!(ended(&out.exit)? == Ended::Code(0), "{id}: {:?}", out.exit);
    ensure!(
        out.stdout == want_out.as_bytes(),
        "{id}: stdout is not the {n} 'out' lines in order ({} bytes, want {}); first difference at byte {}",
        out.stdout.len(),
        want_out.len(),
        first_diff(&out.stdout, want_out.as_bytes())
    );
    ensure!(
        out.stderr == want_err.as_bytes(),
        "{id}: stderr is not the {n} 'err' lines in order ({} bytes, want {}); first difference at byte {}",
        out.stderr.len(),
        want_err.len(),
        first_diff(&out.stderr, want_err.as_bytes())
    );
    Ok(())
}

/// Every byte value 0..=255, including invalid UTF-8 sequences and NUL,
/// arrives byte-exact on stdout and (reversed) on stderr.
pub async fn binary_output(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("binary");
    let all: Vec<u8> = (0..=255u8)
        .chain([0xc3, 0x28, 0xff, 0xfe, 0xc0, 0x80])
        .collect();
    let rev: Vec<u8> = all.iter().rev().copied().collect();
    let fmt = |b: &[u8]| b.iter().map(|x| format!("\\{x:03o}")).collect::<String>();
    let mut req = sh(&id, r#"printf "$KRT_OUT"; printf "$KRT_ERR" >&2"#);
    req.env.insert("KRT_OUT".into(), fmt(&all));
    req.env.insert("KRT_ERR".into(), fmt(&rev));
    let out = run(&mut c, req).await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(0),
        "{id}: {:?} stderr {:?}",
        out.exit,
        out.stderr_text()
    );
    ensure!(
        out.stdout == all,
        "{id}: stdout bytes differ: got {:?}",
        out.stdout
    );
    ensure!(
        out.stderr == rev,
        "{id}: stderr bytes differ: got {:?}",
        out.stderr
    );
    Ok(())
}

/// Bytes of `seq 1 N` (the deterministic, non-periodic content the large
/// output check compares against).
pub fn seq_bytes(limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(limit + 16);
    let mut i: u64 = 1;
    while out.len() < limit {
        out.extend_from_slice(i.to_string().as_bytes());
        out.push(b'\n');
        i += 1;
    }
    out.truncate(limit);
    out
}

/// Size of the large output check.
pub const LARGE_BYTES: usize = 100 * 1024 * 1024;

/// 100 MiB written to stdout (`seq | head -c`) is delivered complete: the
/// byte count matches and the content is byte-identical to what was written
/// (which subsumes a checksum), with exit code 0.
pub async fn large_output(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("large");
    let expected = seq_bytes(LARGE_BYTES);
    // `seq 1 20000000` writes ~169 MB; head keeps the first 100 MiB.
    let out = run(
        &mut c,
        sh(&id, &format!("seq 1 20000000 | head -c {LARGE_BYTES}")),
    )
    .await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(0),
        "{id}: {:?} stderr {:?}",
        out.exit,
        out.stderr_text()
    );
    ensure!(
        out.stdout.len() == LARGE_BYTES,
        "{id}: received {} stdout bytes, want {LARGE_BYTES}",
        out.stdout.len()
    );
    ensure!(
        out.stdout == expected,
        "{id}: 100 MiB content differs from what was written; first difference at byte {}",
        first_diff(&out.stdout, &expected)
    );
    eprintln!(
        "large_output: {} bytes in {} messages (avg {} bytes)",
        out.stdout.len(),
        out.messages,
        out.stdout.len() / out.messages.max(1)
    );
    Ok(())
}

/// A child making 100 000 separate small writes, fully buffered before
/// anyone attaches, is delivered in large chunks: at most one message per
/// 64 KiB (plus slack), never one message per write or per read.
pub async fn chatty_output_coalesced(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let id = unique_id("chatty");
    let lines = 100_000;
    // The shell's echo builtin makes one write(2) per line.
    let script = format!("i=0; while [ $i -lt {lines} ]; do echo $i; i=$((i+1)); done");
    start(&mut c, sh(&id, &script)).await?;
    // Let it finish unattached (≈590 KB fits any sane buffer), then attach.
    super::wait_exited(&mut c, &id).await?;
    let out = AttachReader::open(&mut c, &id, 0, 0)
        .await?
        .finish()
        .await?;
    let want: String = (0..lines).map(|i| format!("{i}\n")).collect();
    ensure!(
        out.stdout == want.as_bytes(),
        "{id}: output differs ({} bytes, want {})",
        out.stdout.len(),
        want.len()
    );
    let bound = want.len() / (64 * 1024) + 3;
    ensure!(
        out.messages <= bound,
        "{id}: {} bytes of buffered output came in {} messages; coalesce up to 256 KiB per message (bound {bound})",
        want.len(),
        out.messages
    );
    Ok(())
}

pub fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}
