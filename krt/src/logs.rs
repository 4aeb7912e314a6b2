//! `krt logs`: print a Run's output from an offset, optionally following and
//! resuming from the last offset received when the connection drops.

use crate::cli::{LogsArgs, StreamArg};
use crate::client::{Client, connect};
use crate::error::Result;
use crate::output::{exit_code, write_chunk};
use kruntimes_proto::runtimed::v1 as pb;
use std::time::Duration;
use tonic::Code;

/// How long a follower keeps trying to reconnect.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(300);

pub async fn logs(addr: &str, args: LogsArgs) -> Result<u8> {
    let mut client = connect(addr).await?;
    let stream = args.stream.map(|s| match s {
        StreamArg::Stdout => pb::Stream::Stdout,
        StreamArg::Stderr => pb::Stream::Stderr,
    });
    let mut req = pb::LogsRequest {
        run_id: args.run_id.clone(),
        offset: args.offset,
        follow: args.follow,
        stream: stream.map(|s| s as i32).unwrap_or(0),
        tail_lines: args.tail.unwrap_or(0),
        since: args
            .since
            .map(|d| kruntimes_proto::time::to_timestamp(std::time::SystemTime::now() - d)),
    };
    if args.follow {
        if req.tail_lines > 0 || req.since.is_some() {
            // Resolve the start once; reconnects then resume by offset.
            req.follow = false;
            let first = client.logs(req.clone()).await?.into_inner();
            let start = match first_offset(first).await? {
                Some(o) => o,
                None => {
                    let get = pb::GetRequest {
                        run_id: args.run_id.clone(),
                    };
                    client.get(get).await?.into_inner().log_length
                }
            };
            return follow(&mut client, &args.run_id, start, stream).await;
        }
        return follow(&mut client, &args.run_id, args.offset, stream).await;
    }
    let mut s = client.logs(req).await?.into_inner();
    while let Some(m) = s.message().await? {
        if let Some(pb::logs_response::Event::Output(o)) = m.event {
            write_chunk(&o)?;
        }
    }
    Ok(0)
}

/// The offset of the first output message of a stream (or its end).
async fn first_offset(mut s: tonic::Streaming<pb::LogsResponse>) -> Result<Option<u64>> {
    while let Some(m) = s.message().await? {
        if let Some(pb::logs_response::Event::Output(o)) = m.event {
            return Ok(Some(o.offset));
        }
    }
    Ok(None)
}

/// Follows until the log's end marker, reconnecting from the last offset
/// received. Returns the Run's exit code.
pub async fn follow(
    client: &mut Client,
    run_id: &str,
    mut offset: u64,
    stream: Option<pb::Stream>,
) -> Result<u8> {
    let mut lost_at: Option<std::time::Instant> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut s = client
                .logs(pb::LogsRequest {
                    run_id: run_id.to_string(),
                    offset,
                    follow: true,
                    stream: stream.map(|s| s as i32).unwrap_or(0),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while let Some(m) = s.message().await? {
                match m.event {
                    Some(pb::logs_response::Event::Output(o)) => {
                        offset = o.offset + o.data.len() as u64;
                        lost_at = None;
                        write_chunk(&o).map_err(|e| tonic::Status::aborted(e.to_string()))?;
                    }
                    Some(pb::logs_response::Event::End(end)) => {
                        return Ok(Some(end.run.unwrap_or_default()));
                    }
                    Some(pb::logs_response::Event::Truncated(t)) => {
                        eprintln!(
                            "krt: [{} bytes of output dropped here: the Run's log cap was reached]",
                            t.dropped_bytes
                        );
                    }
                    None => {}
                }
            }
            Ok::<_, tonic::Status>(None)
        };
        match attempt.await {
            Ok(Some(run)) => return Ok(exit_code(&run)),
            Err(s)
                if !matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ) =>
            {
                return Err(s.into());
            }
            Ok(None) | Err(_) => {
                let since = *lost_at.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > RECONNECT_PATIENCE {
                    return Err(crate::error::Error::Local(format!(
                        "lost the connection to runtimed for over {}s while following run {run_id}",
                        RECONNECT_PATIENCE.as_secs()
                    )));
                }
                eprintln!("krt: log stream interrupted; reconnecting at offset {offset}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
