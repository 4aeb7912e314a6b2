//! Concurrency: 50 Runs at the same time.
use kruntimes_proto::runtime::v1::{ExecutionState, ListRequest};
use tokio::task::JoinSet;

use crate::client::{AttachReader, Ended, ended, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

pub const RUNS: usize = 50;

/// 50 executions are started; all 50 print "started" and then wait for a
/// gate file, so they are provably running at the same time (List shows
/// them RUNNING); once the gate opens each finishes with code 0 and its own
/// output, delivered to its own Attach stream.
pub async fn concurrent_runs(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let gate = s.scratch().join("concurrency.gate");
    let script = format!(
        "echo started; while [ ! -e '{}' ]; do sleep 0.1; done; echo \"done $KRT_N\"",
        gate.display()
    );
    let mut ids = Vec::new();
    for n in 0..RUNS {
        let id = unique_id(&format!("conc{n}"));
        let mut req = sh(&id, &script);
        req.env.insert("KRT_N".into(), n.to_string());
        start(&mut c, req).await?;
        ids.push(id);
    }
    let mut readers = Vec::new();
    for id in &ids {
        let mut r = AttachReader::open(&mut c, id, 0, 0).await?;
        r.read_stdout_until(|o| o.ends_with(b"started\n")).await?;
        readers.push(r);
    }
    let list = c
        .list(ListRequest {})
        .await
        .map_err(Failure::rpc("List"))?
        .into_inner();
    let running = list
        .executions
        .iter()
        .filter(|e| ids.contains(&e.execution_id) && e.state == ExecutionState::Running as i32)
        .count();
    ensure!(
        running == RUNS,
        "List shows {running} of the {RUNS} gated executions RUNNING"
    );

    std::fs::write(&gate, b"").map_err(|e| Failure::Setup(format!("{}: {e}", gate.display())))?;
    let mut set = JoinSet::new();
    for (n, r) in readers.into_iter().enumerate() {
        set.spawn(async move { (n, r.id.clone(), r.finish().await) });
    }
    while let Some(joined) = set.join_next().await {
        let (n, id, out) = joined.map_err(|e| Failure::Setup(format!("join: {e}")))?;
        let out = out?;
        ensure!(ended(&out.exit)? == Ended::Code(0), "{id}: {:?}", out.exit);
        let want = format!("started\ndone {n}\n");
        ensure!(
            out.stdout_text() == want,
            "{id}: output {:?}, want {want:?}",
            out.stdout_text()
        );
    }
    super::reaping::assert_no_zombies(s).await
}
